//! Write coalescing for upstream HTTP/2 connections: many streams' frames, one TLS write.
//!
//! h2 keeps at most one DATA payload above 256 bytes in its encoder and flushes the IO before it
//! encodes the next, so every envelope (about 1.3 KB compressed) cost its own TLS record and its
//! own `writev`: on loopback each one also runs the receiver's TCP path, about a fifth of the
//! sidecar's CPU. This wrapper takes what h2 writes into one buffer and, when h2 flushes, wakes
//! the connection task instead of writing: the write happens at the start of the task's next
//! poll (its read), after the scheduler has run every delivery that was ready, so all of them go
//! out in one TLS write. A buffer above [`LIMIT`] is written at once, and a shutdown writes
//! first. HTTP/1.1 connections carry one request at a time and pass straight through.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};

/// Bytes held back at most before a write goes out regardless of the flush deferral.
pub(super) const LIMIT: usize = 64 * 1024;

/// An IO whose flushes are deferred to the next poll when `defer` is on.
pub(super) struct Coalesced<T> {
    io: T,
    defer: bool,
    buf: Vec<u8>,
    written: usize,
    woken: bool,
}

impl<T: Connection> Coalesced<T> {
    /// Wraps `io`, deferring flushes only if it negotiated HTTP/2.
    pub(super) fn new(io: T) -> Self {
        let defer = io.connected().is_negotiated_h2();
        Coalesced::with_defer(io, defer)
    }
}

impl<T> Coalesced<T> {
    /// Wraps `io` with deferral on or off.
    pub(super) fn with_defer(io: T, defer: bool) -> Self {
        Coalesced { io, defer, buf: Vec::new(), written: 0, woken: false }
    }
}

impl<T: Write + Unpin> Coalesced<T> {
    /// Writes everything held back (not flushing the inner IO).
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buf.clear();
        self.written = 0;
        self.woken = false;
        if self.buf.capacity() > LIMIT {
            // One burst of large bodies should not pin a large buffer for the connection's life.
            self.buf.shrink_to(LIMIT);
        }
        Poll::Ready(Ok(()))
    }

    /// Makes room for `n` more bytes: true if they go into the buffer, false if they are to be
    /// written straight through (no deferral, or more than the limit once the buffer is out).
    fn poll_room(&mut self, cx: &mut Context<'_>, n: usize) -> Poll<io::Result<bool>> {
        if !self.defer {
            return Poll::Ready(Ok(false));
        }
        if self.buf.len() + n > LIMIT {
            ready!(self.poll_drain(cx))?;
            if n > LIMIT {
                return Poll::Ready(Ok(false));
            }
        }
        Poll::Ready(Ok(true))
    }

    /// Writes what is held back and flushes the inner IO.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }
}

impl<T: Connection> Connection for Coalesced<T> {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl<T: Read + Write + Unpin> Read for Coalesced<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.buf.is_empty() {
            // A new poll of the connection task: what the last one held back goes out now. If the
            // socket is full the inner write has registered the waker and the read goes on.
            if let Poll::Ready(r) = this.poll_write_out(cx) {
                r?;
            }
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for Coalesced<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if !ready!(this.poll_room(cx, data.len()))? {
            return Pin::new(&mut this.io).poll_write(cx, data);
        }
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if !ready!(this.poll_room(cx, total))? {
            return Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        }
        for b in bufs {
            this.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        // Deferring copies slices into one buffer, so h2 may as well hand them over unjoined.
        self.defer || self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.defer || this.buf.is_empty() {
            return this.poll_write_out(cx);
        }
        if !this.woken {
            // Polled again after the tasks that are ready now; its read writes the buffer out.
            this.woken = true;
            cx.waker().wake_by_ref();
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    use super::*;

    /// Records every inner write and flush; reads are always pending.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        flushes: usize,
        shut: bool,
    }

    impl Read for Recorder {
        fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, _: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl Write for Recorder {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.writes.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let joined = bufs.iter().flat_map(|b| b.iter().copied()).collect::<Vec<u8>>();
            let n = joined.len();
            self.writes.push(joined);
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.shut = true;
            Poll::Ready(Ok(()))
        }
    }

    struct CountWakes(AtomicUsize);
    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Waker, Arc<CountWakes>) {
        let count = Arc::new(CountWakes(AtomicUsize::new(0)));
        (Waker::from(count.clone()), count)
    }

    fn write_and_flush(c: &mut Coalesced<Recorder>, cx: &mut Context<'_>, data: &[u8]) {
        let io = [io::IoSlice::new(&data[..1]), io::IoSlice::new(&data[1..])];
        assert!(matches!(Pin::new(&mut *c).poll_write_vectored(cx, &io), Poll::Ready(Ok(n)) if n == data.len()));
        assert!(matches!(Pin::new(&mut *c).poll_flush(cx), Poll::Ready(Ok(()))));
    }

    fn read(c: &mut Coalesced<Recorder>, cx: &mut Context<'_>) {
        let mut storage = [0u8; 16];
        let mut buf = hyper::rt::ReadBuf::new(&mut storage);
        assert!(Pin::new(&mut *c).poll_read(cx, buf.unfilled()).is_pending());
    }

    #[test]
    fn flushes_of_one_poll_go_out_as_one_write_at_the_next_read() {
        let (w, wakes) = waker();
        let mut cx = Context::from_waker(&w);
        let mut c = Coalesced::with_defer(Recorder::default(), true);
        for frame in [&b"headers-1 data-1"[..], b"headers-2 data-2", b"headers-3 data-3"] {
            write_and_flush(&mut c, &mut cx, frame);
        }
        assert!(c.io.writes.is_empty(), "nothing is written during the poll");
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "the task is woken once to write");
        read(&mut c, &mut cx);
        assert_eq!(c.io.writes, vec![b"headers-1 data-1headers-2 data-2headers-3 data-3".to_vec()]);
        assert_eq!(c.io.flushes, 1);
        // The next poll's writes wake the task again.
        write_and_flush(&mut c, &mut cx, b"headers-4 data-4");
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);
        read(&mut c, &mut cx);
        assert_eq!(c.io.writes.len(), 2);
        read(&mut c, &mut cx);
        assert_eq!(c.io.writes.len(), 2, "an empty buffer writes nothing");
    }

    #[test]
    fn a_full_buffer_and_a_shutdown_write_at_once() {
        let (w, _) = waker();
        let mut cx = Context::from_waker(&w);
        let mut c = Coalesced::with_defer(Recorder::default(), true);
        let big = vec![7u8; LIMIT - 10];
        write_and_flush(&mut c, &mut cx, &big);
        assert!(c.io.writes.is_empty());
        write_and_flush(&mut c, &mut cx, b"twenty bytes, more..");
        assert_eq!(c.io.writes, vec![big.clone()], "the held bytes go out before the buffer would pass the limit");
        let huge = vec![8u8; LIMIT + 1];
        write_and_flush(&mut c, &mut cx, &huge);
        assert_eq!(c.io.writes.len(), 3, "held bytes, then the oversized write straight through");
        assert_eq!(c.io.writes[2], huge);
        assert!(matches!(Pin::new(&mut c).poll_shutdown(&mut cx), Poll::Ready(Ok(()))));
        assert!(c.io.shut);
        assert_eq!(c.io.writes.concat(), [big, b"twenty bytes, more..".to_vec(), huge].concat());
    }

    #[test]
    fn without_deferral_every_write_and_flush_passes_through() {
        let (w, wakes) = waker();
        let mut cx = Context::from_waker(&w);
        let mut c = Coalesced::with_defer(Recorder::default(), false);
        write_and_flush(&mut c, &mut cx, b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(c.io.writes.len(), 1);
        assert_eq!(c.io.flushes, 1);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
    }
}
