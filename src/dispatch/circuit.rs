//! One upstream's circuit: after a few consecutive transient failures (or a grace period of
//! nothing else, whichever comes first), sending stops; one record at a time probes the upstream,
//! the probe interval backing off up to its own cap, and the first real answer closes the circuit
//! and releases the records it held.
//!
//! A certificate that fails verification (an unknown CA, another name, expired) is a
//! configuration error, not a transient one: it opens the circuit at once and probes at the
//! probe cap, since no retry fixes it, while the spool keeps accepting.
//!
//! A count, not only a time: at full rate a grace of seconds was thousands of failing requests
//! (and TLS handshakes) against an upstream already in trouble. The probe's cap is its own and
//! short (seconds, not the per-envelope `retry_max` of minutes), so a recovered upstream sees its
//! backlog moving within seconds.
//!
//! It is plain state with `now` passed in (unix ms) and no metrics or logs: the caller reports the
//! [`Change`]s it returns, and the tests drive it through any timeline without a clock.

use std::time::Duration;

use super::backoff::backoff;
use super::ms;
use crate::upstream::{Failure, Outcome};

/// A probe out longer than this is taken as lost (its task went away without an answer), so the
/// circuit cannot stay "probing" forever.
const PROBE_LOST_MS: u64 = 120_000;

/// The circuit's timing, from the dispatch settings.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timing {
    /// Consecutive transient failures that open the circuit.
    pub(super) failures: u32,
    /// Transient failures for this long open the circuit (if the count did not first).
    pub(super) grace: Duration,
    /// First probe delay, and the least a held record waits.
    pub(super) retry_initial: Duration,
    /// Longest probe delay.
    pub(super) probe_max: Duration,
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
    /// Consecutive transient failures opened the circuit.
    Opened {
        /// How many failures in a row.
        failures: u32,
        /// How long the upstream had been failing.
        failing_for_ms: u64,
    },
    /// The open circuit's probe failed for another reason than the last one.
    Failing {
        /// The new reason.
        failure: Failure,
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
    failures: u32,
    failing_since: Option<u64>,
    open: bool,
    probe_at: u64,
    probe_attempt: u32,
    /// The record probing now, and since when.
    probe: Option<(u64, u64)>,
    held: Vec<u64>,
    /// The last transient failure, and when the circuit opened (while open).
    failure: Option<Failure>,
    opened_at: u64,
}

impl Circuit {
    /// A closed circuit.
    pub(super) fn new(timing: Timing) -> Circuit {
        Circuit {
            timing,
            failures: 0,
            failing_since: None,
            open: false,
            probe_at: 0,
            probe_attempt: 0,
            probe: None,
            held: Vec::new(),
            failure: None,
            opened_at: 0,
        }
    }

    /// Why the circuit is open and since when (unix ms); `None` while closed.
    pub(super) fn open_reason(&self) -> Option<(Failure, u64)> {
        if self.open {
            self.failure.map(|f| (f, self.opened_at))
        } else {
            None
        }
    }

    /// When the next probe may go after a failure of kind `failure` on probe attempt `attempt`:
    /// a certificate that does not verify waits the cap, as backing off from it is pointless.
    fn next_probe(&self, failure: Failure, attempt: u32, now: u64) -> u64 {
        let t = self.timing;
        if failure.is_certificate() {
            return now + ms(t.probe_max);
        }
        now + ms(backoff(attempt, t.retry_initial, t.probe_max))
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
        if self.probe.is_some_and(|(_, since)| now.saturating_sub(since) > PROBE_LOST_MS) {
            self.probe = None;
        }
        if self.probe.is_some() || now < self.probe_at {
            return Admit::Hold(self.hold(id, now));
        }
        self.probe = Some((id, now));
        Admit::Send
    }

    /// Holds record `id` (one that failed while the circuit was open, or that it did not admit)
    /// until the next probe time; it is released when the circuit closes. Returns its due time.
    pub(super) fn hold(&mut self, id: u64, now: u64) -> u64 {
        if !self.held.contains(&id) {
            self.held.push(id);
        }
        self.probe_at.max(now + ms(self.timing.retry_initial))
    }

    /// Feeds record `id`'s outcome at `now`: a transient failure says the upstream is unwell, any
    /// real answer that it is well. A refusal says nothing about its health either way, so the
    /// circuit stays as it is; but a refused probe is over, and the next record probes at the
    /// same interval.
    pub(super) fn observe(&mut self, id: u64, outcome: &Outcome, now: u64) -> Option<Change> {
        let t = self.timing;
        let is_probe = self.probe.is_some_and(|(p, _)| p == id);
        let failed = match outcome {
            Outcome::Refused { .. } => {
                if is_probe {
                    self.probe = None;
                    self.probe_at = now + ms(backoff(self.probe_attempt, t.retry_initial, t.probe_max));
                }
                return None;
            }
            Outcome::Transient { failure, .. } => Some(*failure),
            Outcome::Delivered { .. } | Outcome::Rejected { .. } | Outcome::RateLimited { .. } => None,
        };
        let Some(failure) = failed else {
            self.failures = 0;
            self.failing_since = None;
            if !self.open {
                return None;
            }
            self.open = false;
            self.probe = None;
            self.probe_attempt = 0;
            self.failure = None;
            return Some(Change::Closed { held: std::mem::take(&mut self.held) });
        };
        if self.open {
            // Requests that were in flight when it opened fail too; only the probe's failure
            // moves the probe on (and tells whether the reason changed).
            if !is_probe {
                return None;
            }
            self.probe = None;
            self.probe_attempt = self.probe_attempt.saturating_add(1);
            self.probe_at = self.next_probe(failure, self.probe_attempt, now);
            if self.failure == Some(failure) {
                return None;
            }
            self.failure = Some(failure);
            return Some(Change::Failing { failure });
        }
        self.failures = self.failures.saturating_add(1);
        let since = *self.failing_since.get_or_insert(now);
        let enough = self.failures >= t.failures.max(1) || now.saturating_sub(since) >= ms(t.grace);
        if !enough && !failure.is_certificate() {
            return None;
        }
        self.open = true;
        self.probe = None;
        self.probe_attempt = 0;
        self.probe_at = self.next_probe(failure, 0, now);
        self.failure = Some(failure);
        self.opened_at = now;
        Some(Change::Opened { failures: self.failures, failing_for_ms: now - since })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000;

    fn fail() -> Outcome {
        Outcome::Transient { failure: Failure::Http5xx, reason: "status 503".into() }
    }

    fn failing(failure: Failure) -> Outcome {
        Outcome::Transient { failure, reason: failure.label().into() }
    }

    fn ok() -> Outcome {
        Outcome::Delivered { limits: vec![] }
    }

    fn refused() -> Outcome {
        Outcome::Refused { reason: "REFUSED_STREAM".into() }
    }

    fn circuit() -> Circuit {
        Circuit::new(Timing {
            failures: 3,
            grace: Duration::from_secs(10),
            retry_initial: Duration::from_secs(1),
            probe_max: Duration::from_secs(8),
        })
    }

    /// Opens `c` at `t0` with three failures in a row.
    fn open(c: &mut Circuit, t0: u64) -> u64 {
        assert_eq!(c.observe(90, &fail(), t0), None);
        assert_eq!(c.observe(91, &fail(), t0), None);
        assert_eq!(c.observe(92, &fail(), t0), Some(Change::Opened { failures: 3, failing_for_ms: 0 }));
        t0
    }

    #[test]
    fn opens_after_a_few_failures_in_a_row_or_the_grace_whichever_first() {
        let mut c = circuit();
        assert_eq!(c.observe(1, &fail(), 0), None);
        assert_eq!(c.observe(2, &fail(), 10), None);
        assert_eq!(c.admit(3, 20), Admit::Send);
        // A real answer in between starts the count again.
        assert_eq!(c.observe(3, &ok(), 20), None);
        assert_eq!(c.observe(4, &fail(), 30), None);
        assert_eq!(c.observe(5, &fail(), 40), None);
        assert!(!c.is_open());
        assert_eq!(c.observe(6, &fail(), 50), Some(Change::Opened { failures: 3, failing_for_ms: 20 }));
        assert!(c.is_open());
        // Slow failures (one per connect timeout) open it after the grace.
        let mut c = circuit();
        assert_eq!(c.observe(1, &fail(), 0), None);
        assert_eq!(c.observe(2, &fail(), 10 * SEC), Some(Change::Opened { failures: 2, failing_for_ms: 10 * SEC }));
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
        // A request that was in flight when it opened fails: nothing moves.
        let probe_at = c.probe_at;
        assert_eq!(c.observe(92, &fail(), due + 5), None);
        assert_eq!((c.probe_at, c.probe.map(|p| p.0)), (probe_at, Some(2)));
        // A failed probe backs off further (attempt 1: 1 s to 2 s) and lets the next one go then.
        assert_eq!(c.observe(2, &fail(), due + 10), None);
        assert!(c.is_open());
        assert!((due + 10 + SEC..=due + 10 + 2 * SEC).contains(&c.probe_at), "{}", c.probe_at - due);
        assert!(matches!(c.admit(4, due + 20), Admit::Hold(_)));
        assert_eq!(c.admit(5, due + 10 + 2 * SEC), Admit::Send);
    }

    #[test]
    fn a_real_answer_closes_and_releases_the_held_records() {
        let mut c = circuit();
        let opened = open(&mut c, 0);
        for id in [7, 8, 7] {
            assert!(matches!(c.admit(id, opened), Admit::Hold(_)));
        }
        assert_eq!(c.admit(9, opened + 2 * SEC), Admit::Send);
        assert_eq!(c.observe(9, &ok(), opened + 2 * SEC), Some(Change::Closed { held: vec![7, 8] }));
        assert!(!c.is_open());
        assert_eq!(c.admit(10, opened + 2 * SEC), Admit::Send);
        // Closed, the count starts over, and nothing is held twice.
        assert_eq!(c.observe(10, &fail(), opened + 3 * SEC), None);
        assert_eq!(c.observe(11, &ok(), opened + 4 * SEC), None);
        assert!(c.held.is_empty());
    }

    #[test]
    fn a_refusal_does_not_count_either_way_but_ends_the_probe() {
        let mut c = circuit();
        assert_eq!(c.observe(1, &fail(), 0), None);
        assert_eq!(c.observe(2, &fail(), 0), None);
        // It neither restarts the count (as an answer would) ...
        assert_eq!(c.observe(3, &refused(), 5), None);
        assert_eq!(c.observe(4, &fail(), 10), Some(Change::Opened { failures: 3, failing_for_ms: 10 }));
        // ... nor closes an open circuit, nor opens a closed one.
        assert_eq!(c.observe(5, &refused(), 11), None);
        assert!(c.is_open());
        // A refused probe is over: the next record probes after the same interval, not never.
        let t = c.probe_at;
        assert_eq!(c.admit(6, t), Admit::Send);
        assert_eq!(c.observe(6, &refused(), t + 1), None);
        assert!(c.probe.is_none());
        assert!((t + 1 + SEC / 2..=t + 1 + SEC).contains(&c.probe_at), "{}", c.probe_at - t);
        assert_eq!(c.admit(7, t + 1 + SEC), Admit::Send);
        let mut c = circuit();
        for t in 0..30 {
            assert_eq!(c.observe(t, &refused(), t * SEC), None);
        }
        assert!(!c.is_open());
        // Every other answer is a real one: a 429 or a 4xx closes the circuit too.
        let mut c = circuit();
        open(&mut c, 0);
        let limited = Outcome::RateLimited { retry_after: Duration::from_secs(1), limits: vec![] };
        assert_eq!(c.observe(1, &limited, 20 * SEC), Some(Change::Closed { held: vec![] }));
        open(&mut c, 30 * SEC);
        let rejected = Outcome::Rejected { status: 400, detail: None, limits: vec![] };
        assert_eq!(c.observe(1, &rejected, 50 * SEC), Some(Change::Closed { held: vec![] }));
    }

    #[test]
    fn a_probe_that_never_answers_is_given_up() {
        let mut c = circuit();
        open(&mut c, 0);
        let t = c.probe_at;
        assert_eq!(c.admit(1, t), Admit::Send);
        assert!(matches!(c.admit(2, t + PROBE_LOST_MS), Admit::Hold(_)));
        assert_eq!(c.admit(3, t + PROBE_LOST_MS + 1), Admit::Send);
    }

    #[test]
    fn probe_delays_grow_and_cap_at_their_own_maximum() {
        let mut c = circuit();
        let mut now = open(&mut c, 0);
        for _ in 0..10 {
            now = c.probe_at;
            assert_eq!(c.admit(1, now), Admit::Send);
            assert_eq!(c.observe(1, &fail(), now), None);
        }
        assert!(c.probe_at - now <= 8 * SEC && c.probe_at - now >= 4 * SEC, "capped at probe_max");
    }

    #[test]
    fn a_certificate_that_does_not_verify_opens_at_once_and_probes_at_the_cap() {
        let mut c = circuit();
        let bad = failing(Failure::TlsUnknownIssuer);
        assert_eq!(c.observe(1, &bad, 100), Some(Change::Opened { failures: 1, failing_for_ms: 0 }));
        assert_eq!(c.open_reason(), Some((Failure::TlsUnknownIssuer, 100)));
        assert_eq!(c.probe_at, 100 + 8 * SEC, "the first probe waits the cap, not the first backoff");
        assert_eq!(c.admit(2, 100 + 8 * SEC), Admit::Send);
        assert_eq!(c.observe(2, &bad, 100 + 8 * SEC), None, "the same reason: nothing to report");
        assert_eq!(c.probe_at, 100 + 16 * SEC);
        // Another reason on a probe is reported (and probes back off as usual again).
        assert_eq!(c.admit(3, 100 + 16 * SEC), Admit::Send);
        let refused = failing(Failure::Refused);
        assert_eq!(c.observe(3, &refused, 100 + 16 * SEC), Some(Change::Failing { failure: Failure::Refused }));
        assert_eq!(c.open_reason(), Some((Failure::Refused, 100)));
        assert!(c.probe_at - (100 + 16 * SEC) <= 8 * SEC);
        assert_eq!(c.observe(9, &ok(), 200 * SEC), Some(Change::Closed { held: vec![] }));
        assert_eq!(c.open_reason(), None);
        // A transient failure still needs the count (or the grace) to open it.
        let mut c = circuit();
        assert_eq!(c.observe(1, &failing(Failure::Refused), 0), None);
        assert_eq!(c.observe(2, &failing(Failure::ConnectTimeout), 0), None);
        assert_eq!(c.observe(3, &failing(Failure::Reset), 0), Some(Change::Opened { failures: 3, failing_for_ms: 0 }));
        assert_eq!(c.open_reason(), Some((Failure::Reset, 0)));
    }
}
