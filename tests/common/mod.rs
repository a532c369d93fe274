//! Test harness: an in-process HTTPS upstream (rcgen certificates made at test time), fixture
//! loading, a raw HTTP/1.1 client that replays requests byte for byte, and helpers to start the
//! sidecar on 127.0.0.1:0.
#![allow(dead_code)]

use std::collections::HashSet;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sentry_sidecar::config::Config;
use sentry_sidecar::routing::UpstreamUrl;
use sentry_sidecar::{Running, Sidecar};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const KEY: &str = "0123456789abcdef0123456789abcdef";

/// A CA and a server certificate for 127.0.0.1 and localhost, made fresh for each test.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca_file: PathBuf,
    pub chain: Vec<CertificateDer<'static>>,
    pub key_der: Vec<u8>,
}

impl Pki {
    pub fn new() -> Pki {
        Pki::for_names(&["127.0.0.1", "localhost"])
    }

    /// A fresh CA and a server certificate valid only for `names` (a name mismatch when the
    /// sidecar connects to 127.0.0.1 and 127.0.0.1 is not among them).
    pub fn for_names(names: &[&str]) -> Pki {
        Pki::build("sidecar test CA", names)
    }

    /// A CA of another name (and its certificate for 127.0.0.1): one the sidecar trusting
    /// [`Pki::new`]'s does not know at all (a same-named CA would be found, and fail on the
    /// signature instead).
    pub fn other_ca() -> Pki {
        Pki::build("another test CA", &["127.0.0.1", "localhost"])
    }

    fn build(ca_name: &str, names: &[&str]) -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, ca_name);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf_params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        Pki { ca_file, chain: vec![leaf.der().clone()], key_der: leaf_key.serialize_der(), dir }
    }

    /// A TLS acceptor with the leaf certificate, offering h2 (and http/1.1) or http/1.1 only.
    pub fn acceptor(&self, h2: bool) -> tokio_rustls::TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone())))
            .unwrap();
        tls.alpn_protocols = if h2 { vec![b"h2".to_vec(), b"http/1.1".to_vec()] } else { vec![b"http/1.1".to_vec()] };
        tokio_rustls::TlsAcceptor::from(Arc::new(tls))
    }
}

/// One request the upstream received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub raw_body: Bytes,
    /// The body with Content-Encoding undone.
    pub body: Bytes,
    pub conn: u64,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What the upstream answers: status and extra headers, decided per request.
pub type Responder = dyn Fn(&Received, usize) -> (u16, Vec<(&'static str, String)>) + Send + Sync;

/// An in-process HTTPS upstream that records everything.
pub struct Upstream {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub connections: Arc<AtomicU64>,
    pub attempts: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// An upstream that answers 200 `{"id":...}` and offers HTTP/2 by ALPN.
    pub async fn start(pki: &Pki) -> Upstream {
        Self::start_with(pki, true, Arc::new(|_, _| (200, vec![]))).await
    }

    pub async fn start_with(pki: &Pki, h2: bool, responder: Arc<Responder>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve_on(listener, pki, h2, responder)
    }

    pub fn serve_on(listener: TcpListener, pki: &Pki, h2: bool, responder: Arc<Responder>) -> Upstream {
        Self::serve_slow(listener, pki, h2, Duration::ZERO, responder)
    }

    /// An upstream that waits `delay` before each answer (a distant or slow upstream).
    pub async fn start_slow(pki: &Pki, h2: bool, delay: Duration, responder: Arc<Responder>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve_slow(listener, pki, h2, delay, responder)
    }

    pub fn serve_slow(
        listener: TcpListener,
        pki: &Pki,
        h2: bool,
        delay: Duration,
        responder: Arc<Responder>,
    ) -> Upstream {
        let addr = listener.local_addr().unwrap();
        let acceptor = pki.acceptor(h2);
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicU64::new(0));
        let attempts = Arc::new(AtomicU64::new(0));
        let (rec, conns, att) = (received.clone(), connections.clone(), attempts.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let conn_id = conns.fetch_add(1, Ordering::SeqCst) + 1;
                let (rec, att, responder) = (rec.clone(), att.clone(), responder.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let is_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (rec, att, responder) = (rec.clone(), att.clone(), responder.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let raw = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                            let decoded = match parts.headers.get("content-encoding").and_then(|v| v.to_str().ok()) {
                                Some("gzip") => {
                                    let mut out = Vec::new();
                                    flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut out).unwrap();
                                    Bytes::from(out)
                                }
                                Some("zstd") => Bytes::from(zstd::stream::decode_all(&raw[..]).unwrap()),
                                Some(other) => panic!("unexpected upstream encoding {other}"),
                                None => raw.clone(),
                            };
                            let r = Received {
                                method: parts.method.to_string(),
                                path: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
                                version: parts.version,
                                headers: parts.headers,
                                raw_body: raw,
                                body: decoded,
                                conn: conn_id,
                            };
                            // Counted on arrival, so a slow answer's request counts while in flight.
                            let n = att.fetch_add(1, Ordering::SeqCst) as usize;
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            let (status, headers) = responder(&r, n);
                            if (200..300).contains(&status) {
                                rec.lock().unwrap().push(r);
                            }
                            let mut resp = hyper::Response::new(Full::new(Bytes::from_static(
                                b"{\"id\":\"00000000000000000000000000000000\"}",
                            )));
                            *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            for (k, v) in headers {
                                resp.headers_mut().insert(k, v.parse().unwrap());
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let io = TokioIo::new(tls);
                    if is_h2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
                    }
                });
            }
        });
        Upstream { addr, received, connections, attempts, task }
    }

    /// The upstream coming back on `port` (where nothing listened until now), answering 200.
    pub async fn start_on(pki: &Pki, port: u16) -> Upstream {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        Self::serve_on(listener, pki, true, Arc::new(|_, _| (200, vec![])))
    }

    pub fn url(&self) -> UpstreamUrl {
        UpstreamUrl::parse(&format!("https://127.0.0.1:{}", self.addr.port())).unwrap()
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests were accepted (2xx), or panics after `secs`.
    pub async fn wait_for(&self, n: usize, secs: u64) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("upstream received {} of {n} requests within {secs}s", got.len());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A config for tests: port 0, a temp spool dir, fast retries.
pub fn test_config(dir: &Path) -> Config {
    let mut c = Config::with_defaults("127.0.0.1:0".parse().unwrap(), dir.join("spool"));
    c.retry_initial = Duration::from_millis(50);
    c.retry_max = Duration::from_millis(500);
    c.shutdown_timeout = Duration::from_secs(2);
    c
}

pub fn upstream_config(dir: &Path, pki: &Pki, up: &Upstream) -> Config {
    let mut c = test_config(dir);
    c.upstream = Some(up.url());
    c.ca_file = Some(pki.ca_file.clone());
    c
}

pub async fn start(cfg: Config) -> Running {
    init_logs();
    Sidecar::start(cfg).await.expect("sidecar starts")
}

/// A captured request from tests/fixtures.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub name: String,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub chunk_sizes: Option<Vec<usize>>,
}

impl Fixture {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body with Content-Encoding undone.
    pub fn decoded(&self) -> Vec<u8> {
        let b = &self.body[..];
        let mut out = Vec::new();
        match self.header("content-encoding") {
            Some("br") => {
                brotli_decompressor::Decompressor::new(b, 4096).read_to_end(&mut out).unwrap();
            }
            Some("gzip") => {
                flate2::read::GzDecoder::new(b).read_to_end(&mut out).unwrap();
            }
            Some("deflate") => {
                flate2::read::ZlibDecoder::new(b).read_to_end(&mut out).unwrap();
            }
            _ => out = b.to_vec(),
        }
        out
    }

    /// The raw HTTP/1.1 request, as the SDK sent it, addressed to `addr`.
    pub fn wire(&self, addr: SocketAddr) -> Vec<u8> {
        let mut w = format!("{} {} HTTP/1.1\r\n", self.method, self.path).into_bytes();
        for (k, v) in &self.headers {
            let v = if k.eq_ignore_ascii_case("host") { addr.to_string() } else { v.clone() };
            let v = if k.eq_ignore_ascii_case("connection") { "close".to_string() } else { v };
            w.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        w.extend_from_slice(b"\r\n");
        match &self.chunk_sizes {
            Some(sizes) => {
                let mut at = 0;
                for &n in sizes {
                    w.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                    w.extend_from_slice(&self.body[at..at + n]);
                    w.extend_from_slice(b"\r\n");
                    at += n;
                }
            }
            None => w.extend_from_slice(&self.body),
        }
        w
    }
}

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn load_fixtures() -> Vec<Fixture> {
    let mut names: Vec<_> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter_map(|n| n.strip_suffix(".http.json").map(str::to_owned))
        .collect();
    names.sort();
    assert_eq!(names.len(), 15, "expected the 15 captured fixtures");
    names.into_iter().map(|n| load_fixture(&n)).collect()
}

pub fn load_fixture(name: &str) -> Fixture {
    let dir = fixtures_dir();
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.http.json"))).unwrap()).unwrap();
    let body = std::fs::read(dir.join(format!("{name}.body"))).unwrap();
    let headers = meta["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().to_owned(), p[1].as_str().unwrap().to_owned()))
        .collect();
    let chunk_sizes = meta["chunk_sizes"].as_array().map(|a| a.iter().map(|n| n.as_u64().unwrap() as usize).collect());
    Fixture {
        name: name.to_owned(),
        method: meta["method"].as_str().unwrap().to_owned(),
        path: meta["path"].as_str().unwrap().to_owned(),
        headers,
        body,
        chunk_sizes,
    }
}

/// A parsed HTTP answer from the raw client.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Sends raw bytes on a fresh connection and reads one answer.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    read_response(&mut s).await
}

pub async fn read_response(s: &mut TcpStream) -> Resp {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before the answer's headers");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())).collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed mid-body");
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    Resp { status, headers, body }
}

/// Builds and sends a request with Content-Length.
pub async fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut w = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n").into_bytes();
    for (k, v) in headers {
        w.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    w.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    w.extend_from_slice(body);
    raw(addr, &w).await
}

pub fn auth_header() -> (&'static str, String) {
    ("X-Sentry-Auth", format!("Sentry sentry_key={KEY}, sentry_version=7, sentry_client=test/1.0"))
}

/// POSTs an envelope to project 42 with header auth.
pub async fn post_envelope(addr: SocketAddr, body: &[u8]) -> Resp {
    let (k, v) = auth_header();
    request(addr, "POST", "/api/42/envelope/", &[(k, &v), ("Content-Type", "application/x-sentry-envelope")], body)
        .await
}

/// A small error envelope with a fresh event id and a marker in the message.
pub fn error_envelope(marker: &str) -> (String, Vec<u8>) {
    let id = format!("{:032x}", fastrand::u128(..));
    let payload = format!(r#"{{"event_id":"{id}","message":"{marker}","level":"error","platform":"python"}}"#);
    let body = format!(
        "{{\"event_id\":\"{id}\",\"sent_at\":\"2026-11-26T04:48:54.888289Z\"}}\n{{\"type\":\"event\",\"length\":{}}}\n{payload}\n",
        payload.len()
    );
    (id, body.into_bytes())
}

pub fn distinct_conns(rs: &[Received]) -> usize {
    rs.iter().map(|r| r.conn).collect::<HashSet<_>>().len()
}

pub async fn metrics_text(addr: SocketAddr) -> String {
    let r = request(addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(r.status, 200);
    String::from_utf8(r.body).unwrap()
}

/// A port that nothing listens on (yet).
pub async fn dead_port() -> u16 {
    let probe = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    port
}

/// A config whose upstream is `https://127.0.0.1:port` (up or not), trusting `pki`.
pub fn config_for_port(dir: &Path, pki: &Pki, port: u16) -> Config {
    let mut c = test_config(dir);
    c.upstream = Some(UpstreamUrl::parse(&format!("https://127.0.0.1:{port}")).unwrap());
    c.ca_file = Some(pki.ca_file.clone());
    c
}

/// The value of one metric series (0 if absent).
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series).map(|v| v.trim().parse::<f64>().unwrap())).unwrap_or(0.0)
}

/// The event ids of every received envelope (header `event_id`), in arrival order.
pub fn event_ids(rs: &[Received]) -> Vec<String> {
    rs.iter()
        .filter_map(|r| {
            let line = r.body.split(|b| *b == b'\n').next()?;
            let v: serde_json::Value = serde_json::from_slice(line).ok()?;
            v["event_id"].as_str().map(str::to_owned)
        })
        .collect()
}

/// Polls `cond` every 20 ms until it holds, or panics after `secs` with `what`.
pub async fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A transaction envelope (category `transaction`) with a fresh event id.
pub fn transaction_envelope(marker: &str) -> (String, Vec<u8>) {
    let id = format!("{:032x}", fastrand::u128(..));
    let payload = format!(
        r#"{{"event_id":"{id}","type":"transaction","transaction":"{marker}","start_timestamp":1,"timestamp":2,"spans":[]}}"#
    );
    let body =
        format!("{{\"event_id\":\"{id}\"}}\n{{\"type\":\"transaction\",\"length\":{}}}\n{payload}\n", payload.len());
    (id, body.into_bytes())
}

/// Sends the sidecar's logs to the test output when RUST_LOG is set.
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Serialises the tests of one binary that assert on metrics (the recorder is process-wide).
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Metric values relative to a baseline taken when the test's sidecar started.
pub struct Metrics {
    addr: SocketAddr,
    base: String,
}

impl Metrics {
    pub async fn new(addr: SocketAddr) -> Metrics {
        Metrics { addr, base: metrics_text(addr).await }
    }

    /// How much `series` grew since the baseline.
    pub async fn delta(&self, series: &str) -> f64 {
        metric_value(&metrics_text(self.addr).await, series) - metric_value(&self.base, series)
    }

    /// The current value of a gauge.
    pub async fn gauge(&self, series: &str) -> f64 {
        metric_value(&metrics_text(self.addr).await, series)
    }

    /// Waits until `series` grew by at least `n`.
    pub async fn wait_delta(&self, series: &str, n: f64, secs: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        while self.delta(series).await < n {
            assert!(tokio::time::Instant::now() < deadline, "{series} did not grow by {n}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Like [`eventually`], with an async condition.
pub async fn eventually_async<F, Fut>(secs: u64, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `len` pseudo-random hex digits: filler that compression cannot shrink below half, for tests
/// that fill a byte-bounded spool (the spool stores bodies compressed).
pub fn noise(seed: u64, len: usize) -> String {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from_digit((x >> 60) as u32, 16).unwrap_or('0')
        })
        .collect()
}

/// Starts the real binary with `args` (no `SENTRY_SIDECAR_*` from the environment, output
/// discarded) and returns once it accepts connections on `listen`.
pub fn spawn_binary(listen: SocketAddr, args: &[std::ffi::OsString]) -> std::process::Child {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sentry-sidecar"));
    for (k, _) in std::env::vars() {
        if k.starts_with("SENTRY_SIDECAR_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        assert!(child.try_wait().unwrap().is_none(), "sidecar exited early");
        if std::net::TcpStream::connect(listen).is_ok() {
            return child;
        }
        assert!(std::time::Instant::now() < deadline, "sidecar did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A loopback address nothing listens on (yet).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}
