//! One upstream's circuit: after a grace period of nothing but transient failures, sending stops;
//! one record at a time probes the upstream with capped, jittered backoff, and the first real
//! answer closes the circuit and releases the records it held.
//!
//! It is plain state with `now` passed in (unix ms) and no metrics or logs: the caller reports the
//! [`Change`]s it returns, and the tests drive it through any timeline without a clock.

use std::time::Duration;

use super::backoff::backoff;
use super::ms;
use crate::upstream::Outcome;

/// The circuit's timing, from the dispatch settings.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timing {
    /// Transient failures for this long open the circuit.
    pub(super) grace: Duration,
    /// First probe delay, and the least a held record waits.
    pub(super) retry_initial: Duration,
    /// Longest probe delay.
    pub(super) retry_max: Duration,
}

/// What the circuit says about sending one record now.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Admit {
    /// Send it (the circuit is closed, or this record is the probe).
    Send,
    /// Hold it until this time (unix ms); the circuit remembers it to release on closing.
    Hold(u64),
}

/// A change of state the caller reports (gauge and log).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Change {
    /// Failing for `failing_for_ms` past the grace: the circuit opened.
    Opened {
        /// How long the upstream had been failing.
        failing_for_ms: u64,
    },
    /// A real answer closed the circuit; these held records may go at once.
    Closed {
        /// The ids of the records held while it was open.
        held: Vec<u64>,
    },
}

/// The state of one upstream's circuit.
#[derive(Debug)]
pub(super) struct Circuit {
    timing: Timing,
    failing_since: Option<u64>,
    open: bool,
    probe_at: u64,
    probe_attempt: u32,
    probing: bool,
    held: Vec<u64>,
}

impl Circuit {
    /// A closed circuit.
    pub(super) fn new(timing: Timing) -> Circuit {
        Circuit {
            timing,
            failing_since: None,
            open: false,
            probe_at: 0,
            probe_attempt: 0,
            probing: false,
            held: Vec::new(),
        }
    }

    /// Whether sending is stopped.
    pub(super) fn is_open(&self) -> bool {
        self.open
    }

    /// Whether record `id` may be sent at `now`: always while closed; while open, only as the one
    /// probe once its time has come.
    pub(super) fn admit(&mut self, id: u64, now: u64) -> Admit {
        if !self.open {
            return Admit::Send;
        }
        if self.probing || now < self.probe_at {
            self.held.push(id);
            return Admit::Hold(self.probe_at.max(now + ms(self.timing.retry_initial)));
        }
        self.probing = true;
        Admit::Send
    }

    /// Feeds an attempt's outcome at `now`: a transient failure says the upstream is unwell, any
    /// real answer that it is well. A refusal says nothing about its health either way, so the
    /// circuit stays as it is.
    pub(super) fn observe(&mut self, outcome: &Outcome, now: u64) -> Option<Change> {
        let transient = match outcome {
            Outcome::Refused { .. } => return None,
            Outcome::Transient { .. } => true,
            Outcome::Delivered { .. } | Outcome::Rejected { .. } | Outcome::RateLimited { .. } => false,
        };
        let t = self.timing;
        if !transient {
            self.failing_since = None;
            if !self.open {
                return None;
            }
            self.open = false;
            self.probing = false;
            self.probe_attempt = 0;
            return Some(Change::Closed { held: std::mem::take(&mut self.held) });
        }
        if self.open {
            self.probing = false;
            self.probe_attempt = self.probe_attempt.saturating_add(1);
            self.probe_at = now + ms(backoff(self.probe_attempt, t.retry_initial, t.retry_max));
            return None;
        }
        let since = *self.failing_since.get_or_insert(now);
        if now.saturating_sub(since) < ms(t.grace) {
            return None;
        }
        self.open = true;
        self.probe_attempt = 0;
        self.probe_at = now + ms(backoff(0, t.retry_initial, t.retry_max));
        Some(Change::Opened { failing_for_ms: now - since })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000;

    fn fail() -> Outcome {
        Outcome::Transient { reason: "status 503".into() }
    }

    fn ok() -> Outcome {
        Outcome::Delivered { limits: vec![] }
    }

    fn refused() -> Outcome {
        Outcome::Refused { reason: "REFUSED_STREAM".into() }
    }

    fn circuit() -> Circuit {
        Circuit::new(Timing {
            grace: Duration::from_secs(10),
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(8),
        })
    }

    /// Opens `c` at `t0 + 10 s` after transient failures since `t0`.
    fn open(c: &mut Circuit, t0: u64) -> u64 {
        assert_eq!(c.observe(&fail(), t0), None);
        let at = t0 + 10 * SEC;
        assert_eq!(c.observe(&fail(), at), Some(Change::Opened { failing_for_ms: 10 * SEC }));
        at
    }

    #[test]
    fn opens_only_after_the_grace_of_nothing_but_failures() {
        let mut c = circuit();
        assert_eq!(c.observe(&fail(), 0), None);
        assert_eq!(c.observe(&fail(), 9 * SEC), None, "still within the grace");
        assert!(!c.is_open());
        assert_eq!(c.admit(1, 9 * SEC), Admit::Send);
        // A real answer in between starts the grace again.
        assert_eq!(c.observe(&ok(), 9 * SEC + 1), None);
        assert_eq!(c.observe(&fail(), 12 * SEC), None);
        assert_eq!(c.observe(&fail(), 21 * SEC), None);
        assert!(!c.is_open());
        assert_eq!(c.observe(&fail(), 22 * SEC), Some(Change::Opened { failing_for_ms: 10 * SEC }));
        assert!(c.is_open());
    }

    #[test]
    fn an_open_circuit_holds_then_lets_one_probe_at_a_time() {
        let mut c = circuit();
        let opened = open(&mut c, 1_000 * SEC);
        // The first probe waits its backoff (0.5 s to 1 s); until then every record is held, at
        // least for the first retry delay.
        assert_eq!(c.admit(1, opened), Admit::Hold(c.probe_at.max(opened + SEC)));
        assert!((opened + SEC / 2..=opened + SEC).contains(&c.probe_at));
        let due = opened + SEC;
        assert_eq!(c.admit(2, due), Admit::Send, "the probe");
        assert_eq!(c.admit(3, due), Admit::Hold(due + SEC), "one probe at a time");
        // A failed probe backs off further (attempt 1: 1 s to 2 s) and lets the next one go then.
        assert_eq!(c.observe(&fail(), due + 10), None);
        assert!(c.is_open());
        assert!((due + 10 + SEC..=due + 10 + 2 * SEC).contains(&c.probe_at), "{}", c.probe_at - due);
        assert!(matches!(c.admit(4, due + 20), Admit::Hold(_)));
        assert_eq!(c.admit(5, due + 10 + 2 * SEC), Admit::Send);
    }

    #[test]
    fn a_real_answer_closes_and_releases_the_held_records() {
        let mut c = circuit();
        let opened = open(&mut c, 0);
        for id in [7, 8] {
            assert!(matches!(c.admit(id, opened), Admit::Hold(_)));
        }
        assert_eq!(c.admit(9, opened + 2 * SEC), Admit::Send);
        assert_eq!(c.observe(&ok(), opened + 2 * SEC), Some(Change::Closed { held: vec![7, 8] }));
        assert!(!c.is_open());
        assert_eq!(c.admit(10, opened + 2 * SEC), Admit::Send);
        // Closed, the grace starts over, and nothing is held twice.
        assert_eq!(c.observe(&fail(), opened + 3 * SEC), None);
        assert_eq!(c.observe(&ok(), opened + 4 * SEC), None);
        assert!(c.held.is_empty());
    }

    #[test]
    fn a_refusal_does_not_count_either_way() {
        let mut c = circuit();
        assert_eq!(c.observe(&fail(), 0), None);
        // It neither restarts the grace (as an answer would) ...
        assert_eq!(c.observe(&refused(), 5 * SEC), None);
        assert_eq!(c.observe(&fail(), 10 * SEC), Some(Change::Opened { failing_for_ms: 10 * SEC }));
        // ... nor closes an open circuit, nor opens a closed one.
        assert_eq!(c.observe(&refused(), 11 * SEC), None);
        assert!(c.is_open());
        let mut c = circuit();
        for t in 0..30 {
            assert_eq!(c.observe(&refused(), t * SEC), None);
        }
        assert!(!c.is_open());
        // Every other answer is a real one: a 429 or a 4xx closes the circuit too.
        let mut c = circuit();
        open(&mut c, 0);
        let limited = Outcome::RateLimited { retry_after: Duration::from_secs(1), limits: vec![] };
        assert_eq!(c.observe(&limited, 20 * SEC), Some(Change::Closed { held: vec![] }));
        open(&mut c, 30 * SEC);
        let rejected = Outcome::Rejected { status: 400, detail: None, limits: vec![] };
        assert_eq!(c.observe(&rejected, 50 * SEC), Some(Change::Closed { held: vec![] }));
    }

    #[test]
    fn probe_delays_grow_and_cap() {
        let mut c = circuit();
        let mut now = open(&mut c, 0);
        for _ in 0..10 {
            now = c.probe_at;
            assert_eq!(c.admit(1, now), Admit::Send);
            assert_eq!(c.observe(&fail(), now), None);
        }
        assert!(c.probe_at - now <= 8 * SEC && c.probe_at - now >= 4 * SEC, "capped at retry_max");
    }
}
