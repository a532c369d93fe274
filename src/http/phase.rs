//! Which time limit a connection is under, and when the connection loop next has to look.
//!
//! hyper's own header timer also runs while a keep-alive connection waits for its next request,
//! so a header limit shorter than the keep-alive limit closed idle connections early, and a
//! per-connection ticker (4 wake-ups a second for every open connection) did the idle check.
//! Here the phases are told apart by the bytes themselves: [`Watched`] notes when the first byte
//! of a request head arrives, the handler's start ends the head, and its end starts the idle
//! wait. The loop sleeps until the one deadline that can fall next ([`next`]).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the loop does when it wakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Due {
    /// Nothing yet: look again at this time (ms since the loop's epoch).
    Wait(u64),
    /// The request head took too long: drop the connection.
    Close,
    /// Idle past the keep-alive limit: close it gracefully.
    Idle,
}

/// Where a connection stands, as the loop reads it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Phase {
    /// A request is in the handler.
    pub(super) busy: bool,
    /// When the current request head began (ms since the epoch, plus one; 0: none begun).
    pub(super) head_since: u64,
    /// When the last answer went out (ms since the epoch).
    pub(super) idle_since: u64,
}

/// The decision at `now` (ms since the epoch) for a connection in `p`, with the limits in ms.
pub(super) fn next(p: Phase, now: u64, header_ms: u64, keep_alive_ms: u64) -> Due {
    if p.busy {
        // The body's own limits apply in the handler; look again later.
        return Due::Wait(now + header_ms.max(keep_alive_ms).max(1));
    }
    if p.head_since != 0 {
        let deadline = p.head_since - 1 + header_ms;
        return if now >= deadline { Due::Close } else { Due::Wait(deadline) };
    }
    let deadline = p.idle_since + keep_alive_ms;
    if now >= deadline {
        return Due::Idle;
    }
    // A head may begin at any moment of the wait without waking the loop: looking again within
    // the header limit bounds how late its deadline is seen (at most twice the limit).
    Due::Wait(deadline.min(now + header_ms.max(1)))
}

/// The connection's socket, noting when a request head begins: the first bytes read while no
/// request is in the handler.
pub(super) struct Watched<'a, S> {
    pub(super) inner: S,
    pub(super) busy: &'a AtomicBool,
    pub(super) head_since: &'a AtomicU64,
    pub(super) epoch: Instant,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<'_, S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before
            && !self.busy.load(Ordering::Acquire)
            && self.head_since.load(Ordering::Relaxed) == 0
        {
            self.head_since.store(self.epoch.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<'_, S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 5_000;
    const K: u64 = 10_000;

    fn phase(busy: bool, head_since: u64, idle_since: u64) -> Phase {
        Phase { busy, head_since, idle_since }
    }

    #[test]
    fn a_head_must_be_done_within_the_header_limit() {
        // Began at 1,000 (stored as 1,001).
        assert_eq!(next(phase(false, 1_001, 0), 2_000, H, K), Due::Wait(6_000));
        assert_eq!(next(phase(false, 1_001, 0), 6_000, H, K), Due::Close);
    }

    #[test]
    fn an_idle_connection_lives_for_the_keep_alive_limit_not_the_header_limit() {
        // Idle since 1,000: still open at 7,000 (past the header limit), closed at 11,000.
        assert_eq!(next(phase(false, 0, 1_000), 7_000, H, K), Due::Wait(11_000));
        assert_eq!(next(phase(false, 0, 1_000), 11_000, H, K), Due::Idle);
        // Early in the wait the loop looks again within the header limit, for a head begun meanwhile.
        assert_eq!(next(phase(false, 0, 1_000), 1_500, H, K), Due::Wait(6_500));
        // A keep-alive limit shorter than the header limit closes first.
        assert_eq!(next(phase(false, 0, 1_000), 1_500, H, 1_000), Due::Wait(2_000));
    }

    #[test]
    fn a_request_in_the_handler_is_left_to_its_body_limits() {
        assert_eq!(next(phase(true, 0, 0), 50_000, H, K), Due::Wait(60_000));
        assert_eq!(next(phase(true, 1, 0), 50_000, H, K), Due::Wait(60_000), "the head is done once busy");
    }
}
