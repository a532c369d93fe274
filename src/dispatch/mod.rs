//! The pump from the spool to the upstreams.
//!
//! One loop leases due records in batches, runs each delivery as a task (bounded by the number of
//! free slots), and settles the results in batches: delivered or rejected-for-good records are
//! acked, everything else is rescheduled with backoff or for the rate limit's `Retry-After`.
//!
//! Each upstream has a [`Limiter`]. It starts with a single slot, so the first request opens one
//! connection and learns by ALPN whether the upstream speaks HTTP/2; only then does it widen, to
//! `h2_concurrency` streams over that one connection, or to `h1_connections` keep-alive
//! connections. The same single-slot probe is how a failing upstream is approached.

mod backoff;

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use metrics::{counter, gauge, histogram};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

pub use backoff::backoff;

use crate::capture::Capture;
use crate::config::{Config, UpstreamUrl};
use crate::spool::{now_ms, Queued, Spool, Target};
use crate::telemetry as t;
use crate::upstream::{Outcome, UpstreamClient};

/// Dispatch settings, taken from [`Config`].
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// Records leased per spool read.
    pub batch_size: usize,
    /// Deliveries in flight across all upstreams.
    pub max_in_flight: usize,
    /// Streams per HTTP/2 upstream.
    pub h2_concurrency: usize,
    /// Connections per HTTP/1.1 upstream.
    pub h1_connections: usize,
    /// First retry delay.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// How long shutdown waits for in-flight deliveries.
    pub shutdown_timeout: Duration,
}

impl DispatchConfig {
    /// Derives dispatch settings from the configuration.
    pub fn from_config(c: &Config) -> DispatchConfig {
        DispatchConfig {
            batch_size: c.batch_size,
            max_in_flight: c.h2_concurrency.max(c.h1_connections).max(1) * 2,
            h2_concurrency: c.h2_concurrency,
            h1_connections: c.h1_connections,
            retry_initial: c.retry_initial,
            retry_max: c.retry_max,
            shutdown_timeout: c.shutdown_timeout,
        }
    }
}

/// Per-upstream concurrency: one slot until the upstream has answered once, then widened.
struct Limiter {
    slots: Semaphore,
    widened: std::sync::atomic::AtomicBool,
}

impl Limiter {
    fn new() -> Limiter {
        Limiter {
            slots: Semaphore::new(1),
            widened: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn observe(&self, version: http::Version, cfg: &DispatchConfig) {
        if !self.widened.swap(true, std::sync::atomic::Ordering::AcqRel) {
            let width = if version == http::Version::HTTP_2 {
                cfg.h2_concurrency
            } else {
                cfg.h1_connections
            };
            self.slots.add_permits(width.saturating_sub(1));
        }
    }
}

/// What a finished delivery asks of the spool.
enum Settle {
    Ack(u64),
    Retry(u64, u64),
}

/// The dispatcher.
pub struct Dispatcher {
    spool: Arc<dyn Spool>,
    client: Option<Arc<UpstreamClient>>,
    capture: Arc<Capture>,
    limiters: DashMap<UpstreamUrl, Arc<Limiter>>,
    cfg: DispatchConfig,
}

impl Dispatcher {
    /// A dispatcher over `spool`; `client` is `None` when every record goes to the capture sink.
    pub fn new(
        spool: Arc<dyn Spool>,
        client: Option<Arc<UpstreamClient>>,
        capture: Arc<Capture>,
        cfg: DispatchConfig,
    ) -> Dispatcher {
        Dispatcher {
            spool,
            client,
            capture,
            limiters: DashMap::new(),
            cfg,
        }
    }

    /// Runs until `shutdown` turns true, then waits up to the shutdown timeout for deliveries in
    /// flight; whatever is not delivered stays in the spool.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let notify = self.spool.notify();
        let mut tasks: JoinSet<Settle> = JoinSet::new();
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let room = self
                .cfg
                .max_in_flight
                .saturating_sub(tasks.len())
                .min(self.cfg.batch_size);
            if room > 0 {
                match self.spool.read_batch(room, 8 * 1024 * 1024, now_ms()).await {
                    Ok(batch) => {
                        for q in batch {
                            tasks.spawn(self.clone().deliver(q));
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "spool read failed"),
                }
            }
            let wait = match self.spool.next_due(now_ms()) {
                Some(due) => Duration::from_millis(due.saturating_sub(now_ms()).max(1)),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    let mut settled = vec![done];
                    while let Some(more) = tasks.try_join_next() {
                        settled.push(more);
                    }
                    self.settle(settled).await;
                }
                _ = &mut notified, if tasks.len() < self.cfg.max_in_flight => {}
                _ = tokio::time::sleep(wait), if tasks.len() < self.cfg.max_in_flight => {}
                _ = shutdown.changed() => break,
            }
        }
        let deadline = tokio::time::Instant::now() + self.cfg.shutdown_timeout;
        let mut settled = Vec::new();
        while !tasks.is_empty() {
            match tokio::time::timeout_at(deadline, tasks.join_next()).await {
                Ok(Some(done)) => settled.push(done),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        left = tasks.len(),
                        "shutdown timeout: abandoning in-flight deliveries; they stay spooled"
                    );
                    tasks.abort_all();
                    break;
                }
            }
        }
        self.settle(settled).await;
    }

    async fn settle(&self, done: Vec<Result<Settle, tokio::task::JoinError>>) {
        let mut acks = Vec::new();
        let mut retries = Vec::new();
        for d in done {
            match d {
                Ok(Settle::Ack(id)) => acks.push(id),
                Ok(Settle::Retry(id, at)) => retries.push((id, at)),
                // A delivery task cannot panic on input; if one did, its record stays leased until
                // restart rather than being lost.
                Err(e) => tracing::error!(error = %e, "delivery task failed"),
            }
        }
        if !acks.is_empty() {
            if let Err(e) = self.spool.ack(acks).await {
                tracing::warn!(error = %e, "spool ack failed");
            }
        }
        if !retries.is_empty() {
            if let Err(e) = self.spool.reschedule(retries).await {
                tracing::warn!(error = %e, "spool reschedule failed");
            }
        }
        gauge!(t::SPOOL_ENVELOPES).set(self.spool.len() as f64);
        gauge!(t::SPOOL_BYTES).set(self.spool.bytes() as f64);
    }

    fn limiter(&self, url: &UpstreamUrl) -> Arc<Limiter> {
        if let Some(l) = self.limiters.get(url) {
            return l.clone();
        }
        self.limiters
            .entry(url.clone())
            .or_insert_with(|| Arc::new(Limiter::new()))
            .clone()
    }

    async fn deliver(self: Arc<Self>, q: Queued) -> Settle {
        let rec = &q.record;
        let url = match &rec.target {
            Target::Capture => {
                return match self.capture.write(rec).await {
                    Ok(()) => {
                        counter!(t::FORWARDED, "outcome" => "captured").increment(1);
                        Settle::Ack(q.id)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, path = %self.capture.path().display(), "capture write failed");
                        self.retry(&q, "transient", None)
                    }
                };
            }
            Target::Upstream(url) => url,
        };
        let Some(client) = &self.client else {
            // Unreachable by construction (a client exists whenever a target is an upstream), but
            // never drop data over it.
            return self.retry(&q, "transient", None);
        };
        let limiter = self.limiter(url);
        let Ok(_slot) = limiter.slots.acquire().await else {
            return self.retry(&q, "transient", None);
        };
        gauge!(t::IN_FLIGHT).increment(1.0);
        let started = std::time::Instant::now();
        let attempt = client.send(url, rec, &rec.body).await;
        gauge!(t::IN_FLIGHT).decrement(1.0);
        histogram!(t::UPSTREAM_LATENCY).record(started.elapsed().as_secs_f64());
        counter!(t::UPSTREAM_BYTES).increment(attempt.sent_bytes as u64);
        if let Some(v) = attempt.version {
            limiter.observe(v, &self.cfg);
        }
        match attempt.outcome {
            Outcome::Delivered { .. } => {
                counter!(t::UPSTREAM_ATTEMPTS, "result" => "2xx").increment(1);
                counter!(t::FORWARDED, "outcome" => "delivered").increment(1);
                Settle::Ack(q.id)
            }
            Outcome::Rejected { status, detail, .. } => {
                counter!(t::UPSTREAM_ATTEMPTS, "result" => "4xx").increment(1);
                counter!(t::FORWARDED, "outcome" => "rejected").increment(1);
                for c in rec.categories.iter() {
                    counter!(t::DROPPED, "reason" => "upstream_rejected", "category" => c.name())
                        .increment(1);
                }
                tracing::warn!(
                    status,
                    detail = detail.as_deref().unwrap_or("-"),
                    project = rec.project_id,
                    event_id = rec.event_id.as_deref().unwrap_or("-"),
                    upstream = url.as_str(),
                    "upstream rejected the envelope for good; dropped"
                );
                Settle::Ack(q.id)
            }
            Outcome::RateLimited { retry_after, .. } => {
                counter!(t::UPSTREAM_ATTEMPTS, "result" => "429").increment(1);
                self.retry(&q, "rate_limited", Some(retry_after))
            }
            Outcome::Transient { reason } => {
                let label = if reason.starts_with("status") {
                    "5xx"
                } else {
                    "error"
                };
                counter!(t::UPSTREAM_ATTEMPTS, "result" => label).increment(1);
                tracing::debug!(
                    reason,
                    upstream = url.as_str(),
                    attempts = q.attempts,
                    "transient upstream failure"
                );
                self.retry(&q, "transient", None)
            }
        }
    }

    fn retry(&self, q: &Queued, reason: &'static str, after: Option<Duration>) -> Settle {
        counter!(t::RETRIES, "reason" => reason).increment(1);
        let delay = after
            .unwrap_or_else(|| backoff(q.attempts, self.cfg.retry_initial, self.cfg.retry_max));
        Settle::Retry(
            q.id,
            now_ms() + u64::try_from(delay.as_millis()).unwrap_or(u64::MAX / 2),
        )
    }
}
