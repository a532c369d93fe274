//! `/healthz` (the process answers), `/readyz` (listening and the spool accepts writes; a latch set
//! once the listeners are bound and cleared on shutdown) and `/metrics` (Prometheus text).
//!
//! `/readyz` also says how each upstream's circuit stands (open, why, since when), so a probe or
//! `send-test-event` sees why nothing is delivered; an open circuit does not fail readiness, as
//! the spool keeps accepting.
//!
//! Served on the ingest listener by default, or on `--admin-listen` to keep them off the port the
//! app talks to.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::Request;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::http::{response, Handler, Prefix};
use crate::spool::Spool;
use crate::status::UpstreamStatus;

/// State behind the admin endpoints.
pub struct Admin {
    ready: AtomicBool,
    spool: Arc<dyn Spool>,
    metrics: PrometheusHandle,
    upstreams: Arc<UpstreamStatus>,
}

impl Admin {
    /// Admin endpoints over `spool`, not ready until [`Admin::set_ready`].
    pub fn new(spool: Arc<dyn Spool>, metrics: PrometheusHandle) -> Admin {
        Admin { ready: AtomicBool::new(false), spool, metrics, upstreams: Arc::new(UpstreamStatus::new()) }
    }

    /// Shows `upstreams` (each circuit's state) in `/readyz`.
    pub fn with_upstreams(mut self, upstreams: Arc<UpstreamStatus>) -> Admin {
        self.upstreams = upstreams;
        self
    }

    /// Flips the readiness latch.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Answers `path` if it is an admin path.
    pub fn route(&self, method: &Method, path: &str) -> Option<Response<Full<Bytes>>> {
        let resp = match path {
            "/healthz" | "/readyz" | "/metrics" if method != Method::GET && method != Method::HEAD => {
                response::error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            "/healthz" => response::json(StatusCode::OK, Bytes::from_static(b"{\"status\":\"ok\"}")),
            "/readyz" => self.readiness(),
            "/metrics" => {
                // Read when scraped: a few `stat` calls, not worth a thread of their own.
                if let Some(b) = self.spool.disk_bytes() {
                    metrics::gauge!(crate::telemetry::SPOOL_DISK_BYTES).set(b as f64);
                }
                // Also current before dispatch's first settle (a backlog from the last run).
                let hot = crate::telemetry::hot();
                hot.spool_envelopes.set(self.spool.len() as f64);
                hot.spool_bytes.set(self.spool.bytes() as f64);
                let age_ms = self.spool.oldest_ms().map_or(0, |t| crate::clock::now_ms().saturating_sub(t));
                metrics::gauge!(crate::telemetry::SPOOL_OLDEST_AGE).set(age_ms as f64 / 1000.0);
                if let Some(rss) = resident_bytes() {
                    metrics::gauge!(crate::telemetry::RESIDENT_MEMORY).set(rss as f64);
                }
                let mut r = Response::new(Full::new(Bytes::from(self.metrics.render())));
                r.headers_mut()
                    .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; version=0.0.4"));
                r
            }
            _ => return None,
        };
        Some(resp)
    }

    fn readiness(&self) -> Response<Full<Bytes>> {
        let body = |status: &str, detail: Option<&str>| {
            serde_json::json!({
                "status": status,
                "detail": detail,
                "spool_envelopes": self.spool.len(),
                "spool_bytes": self.spool.bytes(),
                "upstreams": self.upstreams.to_json(),
            })
            .to_string()
        };
        if !self.ready.load(Ordering::Acquire) {
            return response::json(
                StatusCode::SERVICE_UNAVAILABLE,
                body("not ready", Some("starting or shutting down")),
            );
        }
        match self.spool.writable() {
            Ok(()) => response::json(StatusCode::OK, body("ready", None)),
            Err(e) => response::json(StatusCode::SERVICE_UNAVAILABLE, body("not ready", Some(&e))),
        }
    }
}

/// The process's resident set size (`VmRSS` of `/proc/self/status`), where there is a `/proc`.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.trim_start_matches("VmRSS:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

impl Prefix for Admin {
    fn answer(&self, method: &Method, path: &str) -> Option<Response<Full<Bytes>>> {
        self.route(method, path)
    }
}

impl Handler for Admin {
    async fn handle(self: Arc<Self>, req: Request<Incoming>, _peer: SocketAddr) -> Response<Full<Bytes>> {
        self.route(req.method(), req.uri().path())
            .unwrap_or_else(|| response::error(StatusCode::NOT_FOUND, "not found"))
    }
}
