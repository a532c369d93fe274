//! How many requests one upstream gets in flight: its slots.
//!
//! The first request goes alone, to learn by ALPN what the upstream speaks, and the width is
//! settled only by a real answer (not by a 503 or a reset, so a failing upstream is never hit in
//! parallel). Over HTTP/2 every request shares one connection: `h2_concurrency` streams at once.
//! Over HTTP/1.1 each request in flight is a connection of its own, so the width is sized by the
//! work, by Little's law: in flight = rate x latency. A request that finds every slot busy is
//! that product outgrowing the width, so the width grows by one (up to `h1_connections`); and every
//! few seconds the width shrinks to what the window's requests needed, the sum of their latencies
//! over the window's length (the average number in flight), with headroom. Connections left idle
//! by a narrower width are closed by the pool's idle timeout.
//!
//! Plain state with `now` passed in (unix ms); the dispatcher applies what it returns to the
//! semaphore that holds the slots.

/// Length of the window the width is measured over before it may shrink.
const WINDOW_MS: u64 = 5_000;

/// What the upstream speaks, as far as known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// No real answer yet: one request at a time.
    Unknown,
    /// HTTP/2: a fixed number of streams on one connection.
    H2,
    /// HTTP/1.1: sized by the work.
    H1,
}

/// One upstream's width.
#[derive(Debug)]
pub(super) struct Width {
    mode: Mode,
    limit: usize,
    cap: usize,
    window_start: u64,
    /// Sum of the latencies of the requests that finished in the window.
    busy_ms: u64,
}

impl Width {
    /// One slot, mode unknown, the window starting at `now`.
    pub(super) fn new(now: u64) -> Width {
        Width { mode: Mode::Unknown, limit: 1, cap: 1, window_start: now, busy_ms: 0 }
    }

    /// The mode.
    #[cfg(test)]
    pub(super) fn mode(&self) -> Mode {
        self.mode
    }

    /// The slots now.
    #[cfg(test)]
    pub(super) fn limit(&self) -> usize {
        self.limit
    }

    /// A real answer came over HTTP/2 (`h2`) or HTTP/1.1: returns how many slots to add.
    pub(super) fn learn(&mut self, h2: bool, h2_concurrency: usize, h1_connections: usize) -> usize {
        if self.mode != Mode::Unknown {
            return 0;
        }
        if h2 {
            self.mode = Mode::H2;
            self.cap = h2_concurrency.max(1);
            let added = self.cap.saturating_sub(self.limit);
            self.limit = self.cap;
            added
        } else {
            self.mode = Mode::H1;
            self.cap = h1_connections.max(1);
            0
        }
    }

    /// A request found every slot busy: returns whether to add one.
    pub(super) fn queued(&mut self) -> bool {
        if self.mode == Mode::H1 && self.limit < self.cap {
            self.limit += 1;
            true
        } else {
            false
        }
    }

    /// A request took `latency_ms`; at the end of a window, returns how many slots to take away.
    pub(super) fn finished(&mut self, latency_ms: u64, now: u64) -> usize {
        if self.mode != Mode::H1 {
            return 0;
        }
        self.busy_ms = self.busy_ms.saturating_add(latency_ms);
        let span = now.saturating_sub(self.window_start);
        if span < WINDOW_MS {
            return 0;
        }
        // Average in flight over the window (Little's law), with half again as headroom and one
        // more, so a steady load does not sit on the edge of queueing.
        let needed = (self.busy_ms.saturating_mul(3) / 2).div_ceil(span) as usize + 1;
        self.window_start = now;
        self.busy_ms = 0;
        if needed >= self.limit {
            return 0;
        }
        let fewer = self.limit - needed;
        self.limit = needed;
        fewer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_at_a_time_until_a_real_answer_says_what_the_upstream_speaks() {
        let mut w = Width::new(0);
        assert!(!w.queued(), "unknown: no growth");
        assert_eq!(w.limit(), 1);
        assert_eq!(w.learn(true, 64, 32), 63);
        assert_eq!((w.mode(), w.limit()), (Mode::H2, 64));
        assert!(!w.queued() && w.finished(10_000, 60_000) == 0, "HTTP/2 is fixed");
        assert_eq!(w.learn(false, 64, 32), 0, "learnt once");
    }

    #[test]
    fn http1_grows_while_requests_queue_up_to_the_cap() {
        let mut w = Width::new(0);
        assert_eq!(w.learn(false, 64, 8), 0);
        assert_eq!(w.limit(), 1);
        let grown = (0..20).filter(|_| w.queued()).count();
        assert_eq!((grown, w.limit()), (7, 8));
    }

    #[test]
    fn http1_shrinks_to_rate_times_latency_at_the_end_of_a_window() {
        let mut w = Width::new(0);
        w.learn(false, 64, 64);
        while w.queued() {}
        assert_eq!(w.limit(), 64);
        // 200 requests/s of 50 ms for 5 s: 10 in flight on average; 16 with the headroom.
        let mut fewer = 0;
        for i in 0..1_000u64 {
            fewer += w.finished(50, i * 5);
        }
        assert_eq!(fewer, 0, "not before the window ends");
        fewer += w.finished(50, 5_000);
        assert_eq!((fewer, w.limit()), (47, 17));
        // Nearly idle: the headroom only.
        assert_eq!(w.finished(1, 60_000), 15);
        assert_eq!(w.limit(), 2);
    }
}
