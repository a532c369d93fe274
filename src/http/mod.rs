//! The HTTP server side shared by the ingest and admin listeners: the accept loop with its
//! connection cap, time limits and graceful drain ([`serve`]), the [`Handler`] trait both implement, and the
//! JSON, error and CORS answers ([`response`]).
//!
//! [`Layered`] puts the admin endpoints in front of ingest when they share a listener, so that
//! neither module needs to know the other.

mod phase;
pub mod response;
mod server;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::Request;

pub use server::{serve, Handler, ServeOptions};

/// A handler for a few fixed paths that may answer before another handler sees the request.
pub trait Prefix: Send + Sync + 'static {
    /// The answer for `path`, if it is one of this handler's.
    fn answer(&self, method: &Method, path: &str) -> Option<Response<Full<Bytes>>>;
}

/// `front` (if any) answers its own paths; `inner` everything else.
pub struct Layered<P, H> {
    front: Option<Arc<P>>,
    inner: Arc<H>,
}

impl<P, H> Layered<P, H> {
    /// `inner` behind an optional `front`.
    pub fn new(front: Option<Arc<P>>, inner: Arc<H>) -> Layered<P, H> {
        Layered { front, inner }
    }
}

impl<P: Prefix, H: Handler> Handler for Layered<P, H> {
    async fn handle(self: Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        if let Some(front) = &self.front {
            if let Some(r) = front.answer(req.method(), req.uri().path()) {
                return r;
            }
        }
        self.inner.clone().handle(req, peer).await
    }
}
