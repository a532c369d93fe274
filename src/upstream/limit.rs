//! A connector wrapper that caps open connections per upstream host.
//!
//! hyper-util's pool has no such cap: a request that starts while the previous one's connection is
//! still on its way back to the pool opens a new one. Holding a semaphore permit inside every
//! connection makes "at most N TLS connections per upstream" hold at every instant, whatever the
//! timing; a connect that has to wait simply loses the race to the idle connection coming back.
//! The same wrapper counts the open connections per host (`sidecar_upstream_connections`), so an
//! operator sees the pool's size without sampling sockets.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use dashmap::DashMap;
use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::coalesce::Coalesced;

/// Wraps connector `C`, allowing at most `per_host` live connections to each `host:port`.
#[derive(Clone)]
pub(super) struct LimitedConnector<C> {
    inner: C,
    per_host: usize,
    hosts: Arc<DashMap<String, Arc<Semaphore>>>,
}

impl<C> LimitedConnector<C> {
    /// Wraps `inner`.
    pub(super) fn new(inner: C, per_host: usize) -> Self {
        LimitedConnector { inner, per_host: per_host.max(1), hosts: Arc::new(DashMap::new()) }
    }
}

impl<C> tower_service::Service<Uri> for LimitedConnector<C>
where
    C: tower_service::Service<Uri> + Clone + Send + 'static,
    C::Future: Send,
    C::Response: Connection,
    C::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = LimitedConn<Coalesced<C::Response>>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let key = crate::telemetry::host_port(&dst);
        let sem = self.hosts.entry(key.clone()).or_insert_with(|| Arc::new(Semaphore::new(self.per_host))).clone();
        // Service contract: the clone that was polled ready is the one we call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let permit = sem.acquire_owned().await.map_err(|e| Box::new(e) as Self::Error)?;
            let io = inner.call(dst).await.map_err(Into::into)?;
            let open = metrics::gauge!(crate::telemetry::UPSTREAM_CONNECTIONS, "upstream" => key);
            open.increment(1.0);
            Ok(LimitedConn { io: Coalesced::new(io), _permit: permit, open })
        })
    }
}

/// A connection holding its slot until it is dropped.
pub(super) struct LimitedConn<T> {
    io: T,
    _permit: OwnedSemaphorePermit,
    /// This host's `sidecar_upstream_connections` gauge, counted down when the connection goes.
    open: metrics::Gauge,
}

impl<T> Drop for LimitedConn<T> {
    fn drop(&mut self) {
        self.open.decrement(1.0);
    }
}

impl<T: Connection> Connection for LimitedConn<T> {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl<T: Read + Unpin> Read for LimitedConn<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for LimitedConn<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_service::Service;

    /// A connection that only says what it negotiated.
    struct Dummy;

    impl Connection for Dummy {
        fn connected(&self) -> Connected {
            Connected::new()
        }
    }

    #[derive(Clone)]
    struct Dial;

    impl Service<Uri> for Dial {
        type Response = Dummy;
        type Error = io::Error;
        type Future = std::future::Ready<io::Result<Dummy>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Uri) -> Self::Future {
            std::future::ready(Ok(Dummy))
        }
    }

    /// `sidecar_upstream_connections` counts a host's connections while they live.
    #[tokio::test]
    async fn open_connections_are_counted_until_dropped() {
        let metrics = crate::telemetry::metrics_handle();
        let open = || {
            let text = metrics.render();
            let series = r#"sidecar_upstream_connections{upstream="gauge-test.invalid:7"}"#;
            text.lines().find_map(|l| l.strip_prefix(series)).map_or(0.0, |v| v.trim().parse::<f64>().unwrap())
        };
        let mut connector = LimitedConnector::new(Dial, 4);
        let uri: Uri = "https://gauge-test.invalid:7/".parse().unwrap();
        let a = connector.call(uri.clone()).await.unwrap();
        let b = connector.call(uri).await.unwrap();
        assert_eq!(open(), 2.0);
        drop(a);
        assert_eq!(open(), 1.0);
        drop(b);
        assert_eq!(open(), 0.0);
    }
}
