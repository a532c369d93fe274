//! The accept loop shared by the ingest and admin listeners: HTTP/1.1 with keep-alive, a time limit
//! on every phase of a connection, a connection cap that makes room by closing idle keep-alive
//! connections and otherwise answers 503 at once, and graceful shutdown bounded by a timeout.
//!
//! Every connection is registered with a [`ConnState`] (whether a request is in flight, since when
//! it has been idle, and its slot of the cap) so that the loop can pick the oldest idle one to
//! close without asking the connection tasks. A connection is accepted before a slot is sought:
//! a client past the cap hears 503 at once instead of waiting unanswered in the kernel's backlog.
//! The paths in [`ServeOptions::priority_paths`] (health and metrics) are served past the cap,
//! from a small overflow reserve, so that an orchestrator's probe is answered during a flood.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};

use super::phase::{self, Due, Phase, Watched};

/// Something that answers requests.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request from `peer`.
    fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response<Full<Bytes>>> + Send;
}

/// The limits of one listener.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Most connections open at once (the overflow reserve comes on top).
    pub max_connections: usize,
    /// How long shutdown waits for in-flight requests before closing what is left.
    pub drain: Duration,
    /// A request's headers must arrive within this (counted from the start of the wait).
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed.
    pub keep_alive_timeout: Duration,
    /// Paths answered even past the cap (health and metrics).
    pub priority_paths: &'static [&'static str],
    /// Called for each connection answered 503 at the cap (the caller counts it).
    pub on_overload: Option<fn()>,
    /// Called for each connection closed because a request head did not arrive in time.
    pub on_header_timeout: Option<fn()>,
}

impl ServeOptions {
    /// Options with the given cap and drain, and the built-in timeouts of a small listener.
    pub fn new(max_connections: usize, drain: Duration) -> ServeOptions {
        ServeOptions {
            max_connections,
            drain,
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(10),
            priority_paths: &[],
            on_overload: None,
            on_header_timeout: None,
        }
    }
}

/// Connections over the cap that may be looked at for a priority path at once; beyond these a
/// connection is answered 503 without reading anything.
const OVERFLOW_SLOTS: usize = 32;
/// How long an over-cap connection has to send its request line.
const OVERFLOW_PEEK: Duration = Duration::from_secs(1);
/// How long a request head must have stalled before a newcomer at the cap may take its slot.
const HEAD_STALL_MS: u64 = 1_000;
/// `Retry-After` of the 503 at the cap, in seconds.
const OVERLOAD_RETRY_AFTER: u32 = 1;

/// What the loop knows of one open connection.
struct ConnState {
    id: u64,
    /// A request is being handled (its headers are in, the answer is not).
    busy: AtomicBool,
    /// At least one request was answered: only such a connection is idle keep-alive and may be
    /// closed to make room. A new one whose first request is not read yet is not idle: evicting
    /// it would let every newcomer at the cap close the one before it, and none be answered. Only
    /// once its head has stalled for [`HEAD_STALL_MS`] may a newcomer take its slot.
    served: AtomicBool,
    /// When the connection last became idle, in ms since the loop started.
    idle_since_ms: AtomicU64,
    /// When the request head being read began, in ms since the loop started plus one (0: none).
    head_since_ms: AtomicU64,
    /// Its slot of the cap; taken away (and given to a newcomer) when it is evicted.
    permit: Mutex<Option<OwnedSemaphorePermit>>,
    /// Tells the connection to close once it is idle.
    close: Notify,
    /// Set with `close` when it was evicted with its request head stalled: close at once.
    hard: AtomicBool,
}

/// Marks a connection busy while a request is handled, and idle again when the handler is done
/// (or dropped).
struct Busy<'a> {
    state: &'a ConnState,
    epoch: Instant,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.state.idle_since_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.state.served.store(true, Ordering::Release);
        self.state.busy.store(false, Ordering::Release);
    }
}

/// Every open connection, for eviction and for the drain.
#[derive(Default)]
struct Registry {
    conns: Mutex<Vec<Arc<ConnState>>>,
}

impl Registry {
    fn add(&self, state: Arc<ConnState>) {
        if let Ok(mut c) = self.conns.lock() {
            c.push(state);
        }
    }

    fn remove(&self, id: u64) {
        if let Ok(mut c) = self.conns.lock() {
            if let Some(i) = c.iter().position(|s| s.id == id) {
                c.swap_remove(i);
            }
        }
    }

    fn len(&self) -> usize {
        self.conns.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// Takes the slot of the connection idle the longest and tells it to close; if none is idle,
    /// the slot of the one whose request head has stalled longest, at least [`HEAD_STALL_MS`] at
    /// `now_ms`, which is closed at once (it would be at the header limit anyway; a client that
    /// is sending sends its head within milliseconds, so no newcomer can take a live one's slot).
    fn evict(&self, now_ms: u64) -> Option<OwnedSemaphorePermit> {
        let conns = self.conns.lock().ok()?;
        let mut idle: Vec<&Arc<ConnState>> =
            conns.iter().filter(|s| s.served.load(Ordering::Acquire) && !s.busy.load(Ordering::Acquire)).collect();
        idle.sort_by_key(|s| s.idle_since_ms.load(Ordering::Relaxed));
        let mut stalled: Vec<(u64, &Arc<ConnState>)> = conns
            .iter()
            .filter_map(|s| {
                let head = s.head_since_ms.load(Ordering::Relaxed);
                let late = head != 0 && now_ms.saturating_sub(head - 1) >= HEAD_STALL_MS;
                (late && !s.busy.load(Ordering::Acquire)).then_some((head, s))
            })
            .collect();
        stalled.sort_by_key(|(head, _)| *head);
        let candidates = idle.into_iter().map(|s| (s, false)).chain(stalled.into_iter().map(|(_, s)| (s, true)));
        for (s, hard) in candidates {
            let taken = s.permit.lock().ok().and_then(|mut p| p.take());
            if let Some(p) = taken {
                s.hard.store(hard, Ordering::Release);
                s.close.notify_one();
                return Some(p);
            }
        }
        None
    }
}

/// Serves `listener` with `handler` until `shutdown` turns true, then drains for at most
/// `opts.drain`.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    mut shutdown: watch::Receiver<bool>,
    opts: ServeOptions,
) {
    let epoch = Instant::now();
    let slots = Arc::new(Semaphore::new(opts.max_connections));
    let overflow = Arc::new(Semaphore::new(OVERFLOW_SLOTS));
    let registry = Arc::new(Registry::default());
    let (closing, _) = watch::channel(false);
    let opts = Arc::new(opts);
    let mut next_id = 0u64;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let permit =
            slots.clone().try_acquire_owned().ok().or_else(|| registry.evict(epoch.elapsed().as_millis() as u64));
        let Some(permit) = permit else {
            overloaded(stream, peer, handler.clone(), &overflow, &opts, closing.subscribe());
            continue;
        };
        next_id += 1;
        let state = Arc::new(ConnState {
            id: next_id,
            busy: AtomicBool::new(false),
            served: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(epoch.elapsed().as_millis() as u64),
            // Until its first byte, a new connection is under the header limit.
            head_since_ms: AtomicU64::new(epoch.elapsed().as_millis() as u64 + 1),
            permit: Mutex::new(Some(permit)),
            close: Notify::new(),
            hard: AtomicBool::new(false),
        });
        registry.add(state.clone());
        let (h, o, reg, closing) = (handler.clone(), opts.clone(), registry.clone(), closing.subscribe());
        tokio::spawn(async move {
            connection(stream, peer, h, &o, &state, epoch, closing, true).await;
            reg.remove(state.id);
        });
    }
    drop(listener);
    let _ = closing.send(true);
    let deadline = tokio::time::Instant::now() + opts.drain;
    while registry.len() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if registry.len() > 0 {
        tracing::warn!(open = registry.len(), "connections still open after the drain timeout; closing them");
        if let Ok(conns) = registry.conns.lock() {
            for s in conns.iter() {
                // A second notification after the graceful one: the task drops its connection.
                s.close.notify_one();
            }
        }
    }
}

/// Serves one connection until the client closes it, a time limit closes it, it is evicted, or
/// the listener shuts down.
#[allow(clippy::too_many_arguments)]
async fn connection<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    handler: Arc<H>,
    opts: &ServeOptions,
    state: &ConnState,
    epoch: Instant,
    mut closing: watch::Receiver<bool>,
    keep_alive: bool,
) {
    // The header limit is kept here, not by hyper, whose header timer also runs through the
    // keep-alive wait (see `phase`).
    let io = Watched { inner: stream, busy: &state.busy, head_since: &state.head_since_ms, epoch };
    let conn = http1::Builder::new()
        .keep_alive(keep_alive)
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .serve_connection(
            TokioIo::new(io),
            service_fn(|req| {
                let h = handler.clone();
                state.busy.store(true, Ordering::Release);
                state.head_since_ms.store(0, Ordering::Relaxed);
                let guard = Busy { state, epoch };
                async move {
                    let resp = h.handle(req, peer).await;
                    drop(guard);
                    Ok::<_, std::convert::Infallible>(resp)
                }
            }),
        );
    let mut conn = pin!(conn);
    let mut graceful = false;
    let (header_ms, keep_alive_ms) =
        (opts.header_read_timeout.as_millis() as u64, opts.keep_alive_timeout.as_millis() as u64);
    let ms_since_epoch = || epoch.elapsed().as_millis() as u64;
    let at = |ms: u64| tokio::time::Instant::from_std(epoch + Duration::from_millis(ms));
    let check = tokio::time::sleep_until(at(ms_since_epoch()));
    let mut check = pin!(check);
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = state.close.notified() => {
                if state.hard.load(Ordering::Acquire) {
                    if let Some(count) = opts.on_header_timeout {
                        count();
                    }
                    return;
                }
                if graceful {
                    return;
                }
                graceful = true;
                conn.as_mut().graceful_shutdown();
            }
            changed = closing.changed(), if !graceful => {
                let _ = changed;
                graceful = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = check.as_mut(), if !graceful => {
                let p = Phase {
                    busy: state.busy.load(Ordering::Acquire),
                    head_since: state.head_since_ms.load(Ordering::Relaxed),
                    idle_since: state.idle_since_ms.load(Ordering::Relaxed),
                };
                match phase::next(p, ms_since_epoch(), header_ms, keep_alive_ms) {
                    Due::Wait(ms) => check.as_mut().reset(at(ms)),
                    // A head that is not done in time: nothing to answer, the client is gone or stalling.
                    Due::Close => {
                        if let Some(count) = opts.on_header_timeout {
                            count();
                        }
                        return;
                    }
                    Due::Idle => {
                        graceful = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }
}

/// A connection past the cap: served if it asks for a priority path (from the overflow reserve,
/// one request), else answered 503 at once.
fn overloaded<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    handler: Arc<H>,
    overflow: &Arc<Semaphore>,
    opts: &Arc<ServeOptions>,
    closing: watch::Receiver<bool>,
) {
    let Ok(permit) = overflow.clone().try_acquire_owned() else {
        // Not even the reserve is free: answer without reading, best effort.
        if let Some(count) = opts.on_overload {
            count();
        }
        let _ = stream.try_write(&overload_response());
        return;
    };
    let opts = opts.clone();
    tokio::spawn(async move {
        let _permit = permit;
        if asks_for(&stream, opts.priority_paths).await {
            let state = ConnState {
                id: 0,
                busy: AtomicBool::new(false),
                served: AtomicBool::new(false),
                idle_since_ms: AtomicU64::new(0),
                head_since_ms: AtomicU64::new(1),
                permit: Mutex::new(None),
                close: Notify::new(),
                hard: AtomicBool::new(false),
            };
            connection(stream, peer, handler, &opts, &state, Instant::now(), closing, false).await;
        } else {
            if let Some(count) = opts.on_overload {
                count();
            }
            refuse(stream).await;
        }
    });
}

/// Whether the request line waiting on `stream` is for one of `paths` (peeked, so the bytes stay
/// for hyper).
async fn asks_for(stream: &TcpStream, paths: &[&str]) -> bool {
    if paths.is_empty() {
        return false;
    }
    let mut buf = [0u8; 256];
    let peek = async {
        loop {
            let n = stream.peek(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            if let Some(line_end) = buf[..n].iter().position(|b| *b == b'\n') {
                return Some(request_path(&buf[..line_end]).is_some_and(|p| paths.contains(&p)));
            }
            if n == buf.len() {
                return Some(false);
            }
            // Only part of the line is in: wait for more.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(OVERFLOW_PEEK, peek).await.ok().flatten().unwrap_or(false)
}

/// The path of a request line (`GET /healthz?x HTTP/1.1` -> `/healthz`).
fn request_path(line: &[u8]) -> Option<&str> {
    let line = std::str::from_utf8(line).ok()?;
    let target = line.split(' ').nth(1)?;
    Some(target.split('?').next().unwrap_or(target))
}

/// Answers 503 and closes; what the client already sent is read first (for a moment), so that
/// closing does not reset the connection before the client reads the answer.
async fn refuse(mut stream: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut sink = [0u8; 4096];
        while let Ok(n) = stream.try_read(&mut sink) {
            if n == 0 {
                break;
            }
        }
        stream.write_all(&overload_response()).await?;
        stream.shutdown().await?;
        // Wait for the client to close (or the timeout) so that unread bytes do not turn the
        // close into a reset.
        let mut sink = [0u8; 4096];
        loop {
            stream.readable().await?;
            match stream.try_read(&mut sink) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// The whole 503 of the cap, on the wire: the same `{"detail"}` and `X-Sentry-Error` as every
/// other refusal.
fn overload_response() -> Vec<u8> {
    let detail = "too many connections to the sidecar; retry later";
    let body = format!("{{\"detail\":\"{detail}\"}}");
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: {OVERLOAD_RETRY_AFTER}\r\n\
         x-sentry-error: {detail}\r\naccess-control-allow-origin: *\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_paths() {
        assert_eq!(request_path(b"GET /healthz HTTP/1.1\r"), Some("/healthz"));
        assert_eq!(request_path(b"GET /metrics?x=1 HTTP/1.1"), Some("/metrics"));
        assert_eq!(request_path(b"garbage"), None);
    }

    #[test]
    fn the_overload_answer_is_complete_http() {
        let r = String::from_utf8(overload_response()).unwrap();
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(head.contains("retry-after: 1"));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(v["detail"].as_str().unwrap().contains("too many connections"));
    }

    #[test]
    fn eviction_takes_the_oldest_idle_slot() {
        let sem = Arc::new(Semaphore::new(4));
        let reg = Registry::default();
        let mk = |id, busy, since| {
            Arc::new(ConnState {
                id,
                busy: AtomicBool::new(busy),
                served: AtomicBool::new(true),
                idle_since_ms: AtomicU64::new(since),
                head_since_ms: AtomicU64::new(0),
                permit: Mutex::new(sem.clone().try_acquire_owned().ok()),
                close: Notify::new(),
                hard: AtomicBool::new(false),
            })
        };
        let (a, b, c) = (mk(1, false, 50), mk(2, true, 0), mk(3, false, 10));
        // A new connection, its first request not read yet: not idle keep-alive, never evicted
        // (though it has waited longest).
        let fresh = mk(4, false, 0);
        fresh.served.store(false, Ordering::Release);
        for s in [&a, &b, &c, &fresh] {
            reg.add(s.clone());
        }
        // A new connection whose head began at 9,000 ms (stored plus one).
        fresh.head_since_ms.store(9_001, Ordering::Relaxed);
        let now = 9_500;
        assert!(reg.evict(now).is_some());
        assert!(c.permit.lock().unwrap().is_none(), "the longest idle one is evicted");
        assert!(!c.hard.load(Ordering::Acquire), "gracefully");
        assert!(b.permit.lock().unwrap().is_some(), "a busy one never is");
        assert!(reg.evict(now).is_some());
        assert!(a.permit.lock().unwrap().is_none());
        assert!(reg.evict(now).is_none(), "only a busy one and a new one, its head 0.5 s old, are left");
        assert!(fresh.permit.lock().unwrap().is_some(), "a new connection keeps its slot");
        // Its head stalled for a second: a newcomer takes its slot, and it is closed at once.
        assert!(reg.evict(10_000).is_some());
        assert!(fresh.permit.lock().unwrap().is_none() && fresh.hard.load(Ordering::Acquire));
        assert!(b.permit.lock().unwrap().is_some(), "a busy one never is");
    }
}
