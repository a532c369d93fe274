//! The pass-through: an `/api/{id}/...` path the sidecar does not recognise is sent on to the
//! upstream at once and its answer handed back as it came (status and body), with nothing spooled.
//!
//! Ingest may not know the transport, so it defines this small trait and the wiring implements it
//! over the upstream client. A path the sidecar does not know is one it cannot validate or retry
//! sensibly; the client deserves the upstream's own verdict rather than a `200 {}` for a request
//! the upstream will refuse.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};

use crate::routing::UpstreamUrl;

/// One request to pass through.
#[derive(Debug)]
pub struct Passthrough {
    /// The upstream it goes to (from the routes).
    pub upstream: UpstreamUrl,
    /// The method as the client sent it.
    pub method: Method,
    /// The path and query as the client sent them.
    pub path_and_query: String,
    /// The headers worth forwarding (auth, content type and encoding, user agent).
    pub headers: HeaderMap,
    /// The body as it came on the wire (its `Content-Encoding` is in `headers`).
    pub body: Bytes,
}

/// The upstream's answer, handed back to the client.
#[derive(Debug)]
pub struct Answer {
    /// The upstream's status.
    pub status: StatusCode,
    /// The upstream's headers (the caller keeps only the end-to-end ones it knows).
    pub headers: HeaderMap,
    /// The upstream's body.
    pub body: Bytes,
}

/// Why a pass-through got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No answer within the upstream request timeout (504).
    #[error("the upstream did not answer in time")]
    Timeout,
    /// The upstream could not be reached or broke the exchange (502).
    #[error("cannot reach the upstream: {0}")]
    Unreachable(String),
}

/// A boxed future of a pass-through.
pub type Forwarding<'a> = Pin<Box<dyn Future<Output = Result<Answer, ForwardError>> + Send + 'a>>;

/// Sends a request to an upstream synchronously and returns its answer.
pub trait Forward: Send + Sync + 'static {
    /// Sends `req` and waits for the upstream's answer.
    fn forward(&self, req: Passthrough) -> Forwarding<'_>;
}

/// Headers of the upstream's answer handed back to the client: what the SDK reads.
pub(super) const ANSWER_HEADERS: &[&str] =
    &["content-type", "retry-after", "x-sentry-error", "x-sentry-rate-limits", "content-encoding"];
