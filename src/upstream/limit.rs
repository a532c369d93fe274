//! A connector wrapper that caps open connections per upstream host.
//!
//! hyper-util's pool has no such cap: a request that starts while the previous one's connection is
//! still on its way back to the pool opens a new one. Holding a semaphore permit inside every
//! connection makes "at most N TLS connections per upstream" hold at every instant, whatever the
//! timing; a connect that has to wait simply loses the race to the idle connection coming back.

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
pub struct LimitedConnector<C> {
    inner: C,
    per_host: usize,
    hosts: Arc<DashMap<String, Arc<Semaphore>>>,
}

impl<C> LimitedConnector<C> {
    /// Wraps `inner`.
    pub fn new(inner: C, per_host: usize) -> Self {
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
        let key = format!("{}:{}", dst.host().unwrap_or_default(), dst.port_u16().unwrap_or(0));
        let sem = self.hosts.entry(key).or_insert_with(|| Arc::new(Semaphore::new(self.per_host))).clone();
        // Service contract: the clone that was polled ready is the one we call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let permit = sem.acquire_owned().await.map_err(|e| Box::new(e) as Self::Error)?;
            let io = inner.call(dst).await.map_err(Into::into)?;
            Ok(LimitedConn { io: Coalesced::new(io), _permit: permit })
        })
    }
}

/// A connection holding its slot until it is dropped.
pub struct LimitedConn<T> {
    io: T,
    _permit: OwnedSemaphorePermit,
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
