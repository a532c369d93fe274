//! The token bucket that paces sends while a backlog drains after an outage (or at start with a
//! backlog), so a recovered upstream is not hit with everything at once.
//!
//! The bucket holds at most a tenth of a second's worth of sends (at least one) and starts empty.
//! Time is passed in, so the dispatch loop hands it tokio's clock and the tests step it by hand.

use std::time::Duration;

use tokio::time::Instant;

/// Paces sends at `rate` per second while active; unpaced otherwise (or with a rate of 0).
#[derive(Debug)]
pub(super) struct Pacer {
    rate: u32,
    active: bool,
    tokens: f64,
    last: Instant,
}

impl Pacer {
    /// An inactive pacer for `rate` sends per second (0 = never paced).
    pub(super) fn new(rate: u32, now: Instant) -> Pacer {
        Pacer { rate, active: false, tokens: 0.0, last: now }
    }

    /// Starts pacing at `now` with an empty bucket (no-op if already pacing or unpaced).
    pub(super) fn start(&mut self, now: Instant) {
        if self.rate > 0 && !self.active {
            self.active = true;
            self.tokens = 0.0;
            self.last = now;
        }
    }

    /// Stops pacing (the backlog is drained).
    pub(super) fn stop(&mut self) {
        self.active = false;
    }

    /// Whether sends are paced now.
    pub(super) fn is_active(&self) -> bool {
        self.active
    }

    /// How many sends may start at `now` (`usize::MAX` when unpaced).
    pub(super) fn available(&mut self, now: Instant) -> usize {
        if !self.active {
            return usize::MAX;
        }
        let burst = (f64::from(self.rate) / 10.0).max(1.0);
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * f64::from(self.rate)).min(burst);
        self.last = now;
        self.tokens.floor() as usize
    }

    /// Takes `n` tokens for sends that started.
    pub(super) fn spend(&mut self, n: usize) {
        if self.active {
            self.tokens -= n as f64;
        }
    }

    /// How long one token takes to come.
    pub(super) fn next_token(&self) -> Duration {
        Duration::from_secs_f64(1.0 / f64::from(self.rate.max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn unpaced_until_started_and_never_at_rate_zero() {
        let t0 = Instant::now();
        let mut p = Pacer::new(100, t0);
        assert_eq!(p.available(t0), usize::MAX);
        p.spend(1_000);
        assert_eq!(p.available(t0 + ms(1)), usize::MAX, "spending while unpaced takes nothing");
        let mut never = Pacer::new(0, t0);
        never.start(t0);
        assert!(!never.is_active());
        assert_eq!(never.available(t0 + ms(1)), usize::MAX);
    }

    #[test]
    fn starts_empty_refills_at_the_rate_and_caps_at_a_tenth_of_a_second() {
        let t0 = Instant::now();
        let mut p = Pacer::new(100, t0);
        p.start(t0);
        assert!(p.is_active());
        assert_eq!(p.available(t0), 0, "the bucket starts empty");
        assert_eq!(p.available(t0 + ms(50)), 5, "100/s: five in 50 ms");
        // However long it waits, the burst is 10 (a tenth of a second at 100/s).
        assert_eq!(p.available(t0 + ms(60_000)), 10);
        // A slow rate still lets one through at a time.
        let mut slow = Pacer::new(2, t0);
        slow.start(t0);
        assert_eq!(slow.available(t0 + ms(400)), 0);
        assert_eq!(slow.available(t0 + ms(10_000)), 1);
        assert_eq!(slow.next_token(), ms(500));
    }

    #[test]
    fn spending_takes_tokens_and_start_again_does_not_refill() {
        let t0 = Instant::now();
        let mut p = Pacer::new(100, t0);
        p.start(t0);
        assert_eq!(p.available(t0 + ms(100)), 10);
        p.spend(7);
        assert_eq!(p.available(t0 + ms(100)), 3);
        p.spend(3);
        p.start(t0 + ms(100));
        assert_eq!(p.available(t0 + ms(120)), 2, "already pacing: the bucket is kept, and refills");
        p.stop();
        assert_eq!(p.available(t0 + ms(120)), usize::MAX);
        // Started again after a stop: empty again.
        p.start(t0 + ms(200));
        assert_eq!(p.available(t0 + ms(200)), 0);
        assert_eq!(p.next_token(), ms(10));
    }
}
