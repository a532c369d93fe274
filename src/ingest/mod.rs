//! The ingest listener: every route an SDK may call, validated and appended to the spool before the
//! answer.
//!
//! A request goes: route (path and method) -> auth (header, query, envelope `dsn`) -> body (wire
//! limit, content decoding with a decoded limit) -> endpoint rules (envelope grammar, store body
//! sniffing) -> target (per-project/per-key route, default upstream, or capture) -> compression for
//! the upstream (once, here) -> spool append -> `200 {"id": ...}`. Any refusal is a short JSON
//! error with the right status, counted by reason.
//!
//! Input is strict where Sentry is: a path with dot segments, a transfer coding other than
//! `chunked`, a `sentry_key` that is not 32 hex characters, or credentials whose keys disagree
//! are refused here rather than acknowledged and dropped upstream. An `/api/{id}/...` path the
//! sidecar does not know is passed through synchronously ([`Forward`]), so the client hears the
//! upstream's own answer.

pub mod body;
pub mod budget;
mod forward;
mod payload;
mod refusal;
pub mod route;
pub mod stream;

pub use forward::{Answer, Forward, ForwardError, Forwarding, Passthrough};

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::Request;
use metrics::counter;

use crate::clock::now_ms;
use crate::codec::{self, DecodePool, Encoding};
use crate::config::{Config, FullPolicy};
use crate::http::{response, Handler};
use crate::limits::{RateLimits, Scoping};
use crate::protocol::{store, Auth, AuthError, Categories, DataCategory, Dsn, Endpoint, Envelope, EnvelopeFacts};
use crate::routing::{Routes, Target};
use crate::spool::{Body, Record, Spool};
use crate::telemetry as t;
use body::Pace;
use budget::{Budget, Hold};
use payload::Payload;
pub use refusal::Refusal;
use stream::DiskGauge;

/// How long a request waits for memory budget before it is refused as overloaded.
const BUDGET_WAIT: std::time::Duration = std::time::Duration::from_millis(1500);

/// Legacy store events over this size are refused, as Sentry does.
const MAX_STORE_EVENT: usize = 1024 * 1024;

/// Headers forwarded upstream as the SDK sent them. Everything else (Host, Content-Length,
/// Content-Encoding, hop-by-hop headers) is the sidecar's own business.
const KEEP_HEADERS: &[&str] =
    &["x-sentry-auth", "authorization", "content-type", "user-agent", "origin", "referer", "x-forwarded-for"];

/// The ingest handler's state.
pub struct Ingest {
    cfg: Arc<Config>,
    routes: Arc<Routes>,
    spool: Arc<dyn Spool>,
    limits: Arc<RateLimits>,
    forward: Option<Arc<dyn Forward>>,
    decoders: DecodePool,
    budget: Budget,
    /// Body files being streamed, against the spool's byte bound.
    disk: Arc<DiskGauge>,
}

impl Ingest {
    /// An ingest handler that routes by `routes`, appends to `spool`, answers 429 by `limits` and
    /// passes unknown paths through `forward` (`None` in capture mode: they are 404).
    pub fn new(
        cfg: Arc<Config>,
        routes: Arc<Routes>,
        spool: Arc<dyn Spool>,
        limits: Arc<RateLimits>,
        forward: Option<Arc<dyn Forward>>,
    ) -> Ingest {
        let budget = Budget::new(cfg.max_inflight_bytes, BUDGET_WAIT);
        // With drop-oldest the spool makes room for what comes; with reject-new it refuses once
        // full, so the files being written count on top of what it holds.
        let holds = (cfg.spool_full_policy == FullPolicy::RejectNew).then(|| spool.clone());
        let disk = Arc::new(DiskGauge::new(cfg.spool_max_bytes, holds));
        Ingest { cfg, routes, spool, limits, forward, decoders: DecodePool::sized_for_host(), budget, disk }
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> (Endpoint, Result<Response<Full<Bytes>>, Refusal>) {
        let path = req.uri().path();
        if route::has_dot_segment(path) {
            return (
                Endpoint::Other,
                Err(Refusal::new(StatusCode::BAD_REQUEST, "dot_segment", "dot segments are not allowed in the path")),
            );
        }
        if let Err(refusal) = check_transfer_encoding(req.headers()) {
            return (Endpoint::Other, Err(refusal));
        }
        if path == self.cfg.tunnel_path {
            return (Endpoint::Tunnel, self.tunnel(req, peer).await);
        }
        let api = match route::parse(path) {
            Ok(api) => api,
            Err(route::PathError::NotFound) => {
                return (Endpoint::Other, Err(Refusal::new(StatusCode::NOT_FOUND, "not_found", "not found")))
            }
            Err(route::PathError::InvalidProject) => {
                return (
                    Endpoint::Other,
                    Err(Refusal::new(StatusCode::BAD_REQUEST, "invalid_project", "invalid project id in path")),
                )
            }
        };
        let endpoint = api.endpoint;
        let project_id = api.project_id;
        let path_key = api.path_key.map(str::to_owned);
        if endpoint == Endpoint::Other {
            return (endpoint, self.pass_through(req, project_id).await);
        }
        (endpoint, self.ingest(req, endpoint, project_id, path_key).await)
    }

    async fn ingest(
        &self,
        req: Request<Incoming>,
        endpoint: Endpoint,
        project_id: Option<u64>,
        path_key: Option<String>,
    ) -> Result<Response<Full<Bytes>>, Refusal> {
        if req.method() == Method::OPTIONS {
            return Ok(response::preflight());
        }
        let allowed = match endpoint {
            Endpoint::Cron | Endpoint::Other => req.method() == Method::POST || req.method() == Method::GET,
            _ => req.method() == Method::POST,
        };
        if !allowed {
            return Err(Refusal::new(StatusCode::METHOD_NOT_ALLOWED, "method", "method not allowed"));
        }
        let (parts, incoming) = req.into_parts();
        let auth = request_auth(&parts.headers, parts.uri.query().unwrap_or(""))?;
        let mut key = auth.as_ref().map(|(source, a)| (*source, a.public_key.clone()));
        if let Some(k) = &path_key {
            agree(&mut key, "the path", k)?;
        }
        // Held until the answer: the body (wire and decoded) is in memory that long; a body
        // streamed to a file holds only what its pipeline paid for.
        let mut hold = Hold::default();
        let payload = self.read_payload(&parts.headers, incoming, endpoint, &mut hold).await?;

        let mut headers = kept_headers(&parts.headers);
        let mut event_id = None;
        let mut item_types = Vec::new();
        let mut categories = Categories::EMPTY;
        let mut envelope_key = None;
        let mut encoding = Encoding::Identity;
        let mut decoded_len = None;
        let body = match (endpoint, payload) {
            (Endpoint::Envelope, payload) => {
                let (facts, body) = match payload {
                    Payload::Mem(b) => {
                        let (facts, bytes) = EnvelopeFacts::from_parsed(Envelope::parse(b)?);
                        (facts, Body::Mem(bytes))
                    }
                    Payload::File(s) => {
                        (encoding, decoded_len) = (s.encoding, Some(s.decoded_len));
                        (s.facts.ok_or_else(unvalidated)?, Body::File(Arc::new(s.file)))
                    }
                };
                match facts.dsn.as_deref().map(Dsn::parse) {
                    Some(Ok(dsn)) => {
                        agree(&mut key, "the envelope's dsn", &dsn.public_key)?;
                        envelope_key = Some(dsn.public_key);
                    }
                    // An unreadable dsn matters only when nothing else carries the key.
                    Some(Err(e)) if key.is_none() => return Err(e.into()),
                    _ => {}
                }
                event_id = facts.event_id;
                categories = facts.categories;
                item_types = facts.item_types;
                body
            }
            (Endpoint::Store, payload) => {
                let Payload::Mem(body) = payload else { return Err(unvalidated()) };
                let ev = store::decode(body, MAX_STORE_EVENT).map_err(|e| match e {
                    store::StoreError::TooLarge(_) => {
                        Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
                    }
                    _ => Refusal::new(StatusCode::BAD_REQUEST, "invalid_store", e.to_string()),
                })?;
                event_id = ev.event_id;
                categories.insert(if ev.is_transaction { DataCategory::Transaction } else { DataCategory::Error });
                item_types.push(if ev.is_transaction { "transaction" } else { "event" }.to_owned());
                // The body may have been base64 or octet-stream; it is JSON now.
                headers.retain(|(k, _)| k != CONTENT_TYPE);
                headers.push((CONTENT_TYPE, HeaderValue::from_static("application/json")));
                Body::Mem(ev.json)
            }
            (other, payload) => {
                let (cat, ty) = match other {
                    Endpoint::Minidump => (Some(DataCategory::Error), "minidump"),
                    Endpoint::Unreal => (Some(DataCategory::Error), "unreal_report"),
                    Endpoint::Security | Endpoint::Nel => (Some(DataCategory::Security), "security"),
                    Endpoint::Attachments => (Some(DataCategory::Attachment), "attachment"),
                    Endpoint::Cron => (Some(DataCategory::Monitor), "check_in"),
                    Endpoint::Otlp => (Some(DataCategory::Span), "otel_traces"),
                    _ => (None, "raw"),
                };
                if let Some(c) = cat {
                    categories.insert(c);
                }
                item_types.push(ty.to_owned());
                match payload {
                    Payload::Mem(b) => Body::Mem(b),
                    Payload::File(s) => {
                        (encoding, decoded_len) = (s.encoding, Some(s.decoded_len));
                        Body::File(Arc::new(s.file))
                    }
                }
            }
        };
        let public_key = match (auth, envelope_key, path_key) {
            (Some((_, a)), _, _) => a.public_key,
            (None, Some(k), _) | (None, None, Some(k)) => k,
            (None, None, None) => return Err(AuthError::Missing.into()),
        };
        let project_id = project_id.unwrap_or(0);
        let target = self.routes.target_for(project_id, &public_key);
        let path_and_query =
            parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
        let record = Record {
            target,
            endpoint,
            method: parts.method,
            path_and_query,
            headers,
            body,
            encoding,
            incompressible: false,
            project_id,
            public_key,
            event_id,
            categories,
            item_types,
            received_ms: now_ms(),
        };
        self.append(record, decoded_len).await
    }

    /// Compresses `record` for the upstream (unless it was streamed to a file, compressed on the
    /// way), appends it and answers; `decoded_len` is a file body's decoded size, for the metric
    /// of accepted bytes (which counts bytes as the SDK sent them, decoded).
    async fn append(&self, mut record: Record, decoded_len: Option<u64>) -> Result<Response<Full<Bytes>>, Refusal> {
        if self.cfg.answer_429 {
            self.check_rate_limit(&record)?;
        }
        let endpoint = record.endpoint;
        let bytes = decoded_len.unwrap_or(record.body.len() as u64);
        let event_id = record.event_id.clone();
        // Compressed once, here, for the upstream: the spool then writes (and dispatch sends)
        // about half the bytes. Captured records stay as they came, to be written readable. A
        // body streamed to a file was compressed on its way there.
        let raw = record.body.bytes().cloned();
        if let (Target::Upstream(_), Some(raw)) = (&record.target, raw) {
            let (algo, level) = (self.cfg.compression, self.cfg.gzip_level);
            // Large bodies (attachments, minidumps) are compressed off the runtime thread, which
            // serves every other connection meanwhile.
            let (body, enc) = if raw.len() > codec::OFFLOAD_BYTES {
                tokio::task::spawn_blocking(move || codec::compress(&raw, algo, level))
                    .await
                    .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
            } else {
                codec::compress(&raw, algo, level)
            };
            match enc {
                Encoding::Identity => record.incompressible = algo != Encoding::Identity,
                enc => (record.body, record.encoding) = (Body::Mem(body), enc),
            }
        }
        if let Some(b) = record.body.bytes().filter(|b| b.len() <= COPY_BODY_MAX) {
            if record.encoding == Encoding::Identity {
                record.body = Body::Mem(Bytes::copy_from_slice(b));
            }
        }
        self.spool.append(vec![record]).await?;
        let hot = t::hot();
        hot.accepted(endpoint).increment(1);
        hot.accepted_bytes(endpoint).increment(bytes);
        Ok(response::accepted(event_id.as_deref()))
    }

    /// An `/api/{id}/...` path the sidecar does not know: sent to the upstream now, its answer
    /// handed back as it came; nothing is spooled. Credentials are checked as on every route when
    /// present, but not required: the upstream decides what the path needs.
    async fn pass_through(
        &self,
        req: Request<Incoming>,
        project_id: Option<u64>,
    ) -> Result<Response<Full<Bytes>>, Refusal> {
        if req.method() == Method::OPTIONS {
            return Ok(response::preflight());
        }
        if req.method() != Method::POST && req.method() != Method::GET {
            return Err(Refusal::new(StatusCode::METHOD_NOT_ALLOWED, "method", "method not allowed"));
        }
        let (parts, incoming) = req.into_parts();
        let key = request_auth(&parts.headers, parts.uri.query().unwrap_or(""))?.map(|(_, a)| a.public_key);
        let not_found = || Refusal::new(StatusCode::NOT_FOUND, "not_found", "unknown ingest path");
        let Some(forward) = &self.forward else { return Err(not_found()) };
        let Target::Upstream(upstream) = self.routes.target_for(project_id.unwrap_or(0), key.as_deref().unwrap_or(""))
        else {
            return Err(not_found());
        };
        let content_length =
            parts.headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
        let pace = Pace { stall: self.cfg.body_read_timeout, min_rate: self.cfg.body_min_rate };
        let mut hold = Hold::default();
        let body =
            body::read(incoming, content_length, self.cfg.max_request_bytes, pace, &self.budget, &mut hold).await?;
        let mut headers = HeaderMap::new();
        for (k, v) in parts.headers.iter().filter(|(k, _)| KEEP_HEADERS.contains(&k.as_str()) || *k == CONTENT_ENCODING)
        {
            headers.append(k.clone(), v.clone());
        }
        let path_and_query =
            parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
        let answer =
            forward.forward(Passthrough { upstream, method: parts.method, path_and_query, headers, body }).await?;
        let mut r = Response::new(Full::new(answer.body));
        *r.status_mut() = answer.status;
        for name in forward::ANSWER_HEADERS {
            if let Some(v) = answer.headers.get(*name) {
                r.headers_mut().insert(*name, v.clone());
            }
        }
        Ok(r)
    }

    /// With `--answer-429`: refuses a record whose categories are all rate limited upstream, with
    /// both headers in whole seconds and Relay's category names, so the SDK backs off itself.
    fn check_rate_limit(&self, record: &Record) -> Result<(), Refusal> {
        let Target::Upstream(upstream) = &record.target else { return Ok(()) };
        let now = now_ms();
        let scoping = Scoping { upstream, project: record.project_id, key: &record.public_key };
        let Some(until) = self.limits.blocked_until(scoping, record.categories, now) else { return Ok(()) };
        let secs = until.saturating_sub(now).div_ceil(1000).max(1);
        let cats: Vec<&str> = record.categories.iter().map(|c| c.name()).collect();
        Err(Refusal::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "rate limited upstream; retry later")
            .with_header("retry-after", secs.to_string())
            .with_header("x-sentry-rate-limits", format!("{secs}:{}:key", cats.join(";"))))
    }

    /// The browser tunnel: forwards an envelope to the DSN in its header, only if that DSN's host
    /// and project are on the allow-list (never an open proxy).
    async fn tunnel(&self, req: Request<Incoming>, peer: SocketAddr) -> Result<Response<Full<Bytes>>, Refusal> {
        if !self.routes.tunnel_enabled() {
            return Err(Refusal::new(StatusCode::NOT_FOUND, "tunnel_off", "the tunnel is not enabled"));
        }
        if req.method() == Method::OPTIONS {
            return Ok(response::preflight());
        }
        if req.method() != Method::POST {
            return Err(Refusal::new(StatusCode::METHOD_NOT_ALLOWED, "method", "method not allowed"));
        }
        let (parts, incoming) = req.into_parts();
        let mut hold = Hold::default();
        let payload = self.read_payload(&parts.headers, incoming, Endpoint::Tunnel, &mut hold).await?;
        let mut decoded_len = None;
        let (env, body, encoding) = match payload {
            Payload::Mem(b) => {
                let (facts, bytes) = EnvelopeFacts::from_parsed(Envelope::parse(b)?);
                (facts, Body::Mem(bytes), Encoding::Identity)
            }
            Payload::File(s) => {
                decoded_len = Some(s.decoded_len);
                (s.facts.ok_or_else(unvalidated)?, Body::File(Arc::new(s.file)), s.encoding)
            }
        };
        let dsn_str = env
            .dsn
            .as_deref()
            .ok_or_else(|| Refusal::new(StatusCode::BAD_REQUEST, "tunnel_no_dsn", "the envelope header has no dsn"))?;
        let dsn =
            Dsn::parse(dsn_str).map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, "tunnel_bad_dsn", e.to_string()))?;
        if crate::protocol::dsn::check_key(&dsn.public_key).is_err() {
            return Err(Refusal::new(StatusCode::BAD_REQUEST, "tunnel_bad_dsn", "invalid public key in dsn"));
        }
        // The allow-list entry, not the client, decides scheme and host.
        let base = self
            .routes
            .tunnel_target(&dsn)
            .ok_or_else(|| {
                Refusal::new(StatusCode::FORBIDDEN, "tunnel_forbidden", "dsn is not allowed by this tunnel")
            })?
            .map_err(|e| Refusal::new(StatusCode::FORBIDDEN, "tunnel_forbidden", e))?;
        let mut headers: Vec<(HeaderName, HeaderValue)> = parts
            .headers
            .iter()
            .filter(|(k, _)| matches!(k.as_str(), "user-agent" | "origin" | "referer"))
            .map(owned_header)
            .collect();
        headers.push((CONTENT_TYPE, HeaderValue::from_static("application/x-sentry-envelope")));
        // Only an address is passed on: anything else in the header is the client's say-so.
        let client_ip = parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|s| s.trim().parse::<std::net::IpAddr>().ok())
            .unwrap_or_else(|| peer.ip())
            .to_string();
        if let Ok(v) = HeaderValue::from_str(&client_ip) {
            headers.push((HeaderName::from_static("x-sentry-forwarded-for"), v));
        }
        let record = Record {
            target: Target::Upstream(base),
            endpoint: Endpoint::Tunnel,
            method: Method::POST,
            path_and_query: dsn.envelope_path_with_query_auth(),
            headers,
            project_id: dsn.project_id,
            public_key: dsn.public_key,
            event_id: env.event_id.clone(),
            categories: env.categories,
            item_types: env.item_types,
            body,
            encoding,
            incompressible: false,
            received_ms: now_ms(),
        };
        self.append(record, decoded_len).await
    }
}

/// A streamed envelope always has its facts; should one not, it is refused rather than stored.
fn unvalidated() -> Refusal {
    Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the body was not validated")
}

/// The credentials of the headers and the query, with where they came from: every
/// `X-Sentry-Auth`, a `Sentry` `Authorization` and the query may each carry a key; each must be
/// well formed, and they must all be the same key.
fn request_auth(headers: &HeaderMap, query: &str) -> Result<Option<(&'static str, Auth)>, Refusal> {
    let mut found: Option<(&'static str, Auth)> = None;
    let mut key = None;
    let mut take = |source: &'static str, auth: Auth| -> Result<(), Refusal> {
        agree(&mut key, source, &auth.public_key)?;
        found.get_or_insert((source, auth));
        Ok(())
    };
    for v in headers.get_all("x-sentry-auth") {
        let s = v.to_str().map_err(|_| AuthError::Invalid("not ASCII"))?;
        take("X-Sentry-Auth", Auth::from_header(s)?)?;
    }
    for v in headers.get_all("authorization") {
        let s = v.to_str().map_err(|_| AuthError::Invalid("not ASCII"))?;
        // Other schemes (Bearer, Basic) belong to someone else: a proxy in front, say.
        if s.trim_start().get(..7).is_some_and(|h| h.eq_ignore_ascii_case("sentry ")) {
            take("Authorization", Auth::from_header(s)?)?;
        }
    }
    if let Some(a) = Auth::from_query(query)? {
        take("the query", a)?;
    }
    Ok(found)
}

/// Checks that `candidate` (from `source`) is a well-formed key and the same as the key seen so far,
/// then remembers it.
fn agree(seen: &mut Option<(&'static str, String)>, source: &'static str, candidate: &str) -> Result<(), Refusal> {
    crate::protocol::dsn::check_key(candidate)?;
    match seen {
        Some((first, k)) if k != candidate => Err(AuthError::Conflict(source, first).into()),
        Some(_) => Ok(()),
        None => {
            *seen = Some((source, candidate.to_owned()));
            Ok(())
        }
    }
}

/// Refuses a `Transfer-Encoding` with any coding but `chunked`. hyper refuses one that does not end
/// in `chunked` (400) but would pass `gzip, chunked` on with the gzip layer left in the body.
fn check_transfer_encoding(headers: &HeaderMap) -> Result<(), Refusal> {
    for v in headers.get_all(TRANSFER_ENCODING) {
        let ok = v.to_str().is_ok_and(|s| s.split(',').all(|c| c.trim().eq_ignore_ascii_case("chunked")));
        if !ok {
            return Err(Refusal::new(
                StatusCode::NOT_IMPLEMENTED,
                "transfer_encoding",
                "only the chunked transfer coding is supported",
            ));
        }
    }
    Ok(())
}

fn kept_headers(h: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    h.iter().filter(|(k, _)| KEEP_HEADERS.contains(&k.as_str())).map(owned_header).collect()
}

/// A header for a record that lives on in the spool. hyper's header values are slices of the
/// connection's read buffer; keeping one would keep the whole buffer (8 KB or more per cached
/// record, which was most of the RSS at c=256), so the few bytes are copied.
fn owned_header((k, v): (&HeaderName, &HeaderValue)) -> (HeaderName, HeaderValue) {
    let mut copy = HeaderValue::from_bytes(v.as_bytes()).unwrap_or_else(|_| v.clone());
    copy.set_sensitive(v.is_sensitive());
    (k.clone(), copy)
}

/// Bodies up to this size that are stored as they came are copied out of the read buffer for
/// the same reason (larger ones are collected into their own buffer by `body::read` anyway).
const COPY_BODY_MAX: usize = 64 * 1024;

impl Handler for Ingest {
    async fn handle(self: Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let started = std::time::Instant::now();
        let (endpoint, result) = self.route(req, peer).await;
        let mut resp = match result {
            Ok(r) => r,
            Err(refusal) => {
                counter!(t::REJECTED, "endpoint" => endpoint.name(), "reason" => refusal.reason).increment(1);
                tracing::debug!(endpoint = endpoint.name(), status = refusal.status.as_u16(), detail = %refusal.detail, "refused");
                let mut r = response::error(refusal.status, &refusal.detail);
                for (k, v) in refusal.headers {
                    if let Ok(v) = http::HeaderValue::from_str(&v) {
                        r.headers_mut().insert(k, v);
                    }
                }
                r
            }
        };
        response::add_cors(&mut resp);
        let hot = t::hot();
        hot.ack_latency.record(started.elapsed().as_secs_f64());
        if resp.status() == http::StatusCode::OK {
            hot.answered_200(endpoint).increment(1);
        } else {
            counter!(t::REQUESTS, "endpoint" => endpoint.name(), "status" => response::status_label(resp.status()))
                .increment(1);
        }
        resp
    }
}

#[cfg(test)]
mod tests;
