//! What a finished delivery asks of the spool, as a pure function of what happened to it, the
//! record's lease, the policy and the time.
//!
//! Kept apart from the sending so that every branch (hold or drop at the hold limit, the refused
//! retries, the backoff) is a table the tests walk through; the dispatcher counts and logs from
//! the [`Verdict`] and the [`Settle`] it gets back.

use std::time::Duration;

use super::backoff::backoff;
use super::ms;
use crate::config::RateLimitPolicy;
use crate::spool::report::{DropReason, Dropped};
use crate::spool::Queued;

/// Failed attempts after which a refused envelope waits its backoff instead of going again at once.
const REFUSED_AT_ONCE: u32 = 3;

/// What came of one delivery: the gates' or the answer's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Delivered upstream or written to the capture file.
    Delivered,
    /// Rejected for good by the upstream (or a request that could not be built).
    Rejected,
    /// Held by the local rate-limit table until this time, without a request.
    Limited {
        /// When the limit ends (unix ms).
        until: u64,
    },
    /// Answered 429 by the upstream; limited until this time.
    UpstreamLimited {
        /// When the limit ends (unix ms).
        until: u64,
    },
    /// Held by the upstream's open circuit until this time, without a request.
    Held {
        /// When to try again (unix ms).
        until: u64,
    },
    /// The upstream did not process the request (safe to send again at once).
    Refused,
    /// A transient failure: of the upstream, the capture file or the sidecar itself.
    Failed,
}

impl Verdict {
    /// The `reason` label of the retry counter, for verdicts whose retry is counted there.
    pub(super) fn retry_reason(self) -> Option<&'static str> {
        match self {
            Verdict::Failed => Some("transient"),
            Verdict::Refused => Some("refused"),
            Verdict::UpstreamLimited { .. } => Some("rate_limited"),
            _ => None,
        }
    }
}

/// The settings [`decide`] applies.
#[derive(Debug, Clone, Copy)]
pub(super) struct Policy {
    /// What rate-limited records do.
    pub(super) rate_limit: RateLimitPolicy,
    /// Longest hold for a rate limit, from the record's arrival.
    pub(super) max_hold: Duration,
    /// First retry delay.
    pub(super) retry_initial: Duration,
    /// Longest retry delay.
    pub(super) retry_max: Duration,
}

/// What a finished delivery asks of the spool.
#[derive(Debug)]
pub(super) enum Settle {
    /// Delivered, or rejected for good: remove.
    Ack {
        /// The record.
        id: u64,
    },
    /// Try again at `due_ms`.
    Retry {
        /// The record.
        id: u64,
        /// When it is due again (unix ms).
        due_ms: u64,
        /// Whether this counts as a failed attempt (a hold does not).
        count_attempt: bool,
    },
    /// Dropped by the sidecar's policy: remove, count and report.
    Drop {
        /// The record.
        id: u64,
        /// What the client report says of it.
        dropped: Box<Dropped>,
    },
}

/// Where `verdict` leaves the leased record `q` at `now` (unix ms).
pub(super) fn decide(verdict: Verdict, q: &Queued, policy: &Policy, now: u64) -> Settle {
    let id = q.id;
    let within_hold = |until: u64| until.saturating_sub(q.record.received_ms) <= ms(policy.max_hold);
    let hold = |until: u64| policy.rate_limit == RateLimitPolicy::Hold && within_hold(until);
    let backoff = || {
        let delay = backoff(q.attempts, policy.retry_initial, policy.retry_max);
        Settle::Retry { id, due_ms: now + ms(delay), count_attempt: true }
    };
    match verdict {
        Verdict::Delivered | Verdict::Rejected => Settle::Ack { id },
        Verdict::Limited { until } if hold(until) => {
            Settle::Retry { id, due_ms: until.max(now + 1), count_attempt: false }
        }
        Verdict::Limited { .. } => {
            Settle::Drop { id, dropped: Box::new(Dropped::of(&q.record, DropReason::RateLimited)) }
        }
        Verdict::UpstreamLimited { until } if hold(until) => Settle::Retry { id, due_ms: until, count_attempt: false },
        // Sentry counted what it answered 429 to: it goes without a client report.
        Verdict::UpstreamLimited { .. } => Settle::Ack { id },
        Verdict::Held { until } => Settle::Retry { id, due_ms: until, count_attempt: false },
        // Counted, so an upstream that refuses everything meets the normal backoff.
        Verdict::Refused if q.attempts < REFUSED_AT_ONCE => Settle::Retry { id, due_ms: now, count_attempt: true },
        Verdict::Refused | Verdict::Failed => backoff(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::spool::Record;

    const NOW: u64 = 1_000_000;
    const SEC: u64 = 1_000;

    fn policy(rate_limit: RateLimitPolicy) -> Policy {
        Policy {
            rate_limit,
            max_hold: Duration::from_secs(60),
            retry_initial: Duration::from_secs(2),
            retry_max: Duration::from_secs(30),
        }
    }

    /// Record 7, received 10 s ago, after `attempts` failed attempts.
    fn leased(attempts: u32) -> Queued {
        Queued { id: 7, attempts, record: Arc::new(Record::for_test(b"{}", NOW - 10 * SEC)) }
    }

    fn retry(s: &Settle) -> (u64, bool) {
        match s {
            Settle::Retry { id: 7, due_ms, count_attempt } => (*due_ms, *count_attempt),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn answers_that_end_the_record_ack_it_under_either_policy() {
        for p in [RateLimitPolicy::Hold, RateLimitPolicy::Drop] {
            for v in [Verdict::Delivered, Verdict::Rejected] {
                assert!(matches!(decide(v, &leased(5), &policy(p), NOW), Settle::Ack { id: 7 }), "{v:?}");
            }
        }
    }

    #[test]
    fn local_limits_hold_within_max_hold_and_drop_with_a_report_beyond_or_by_policy() {
        let hold = policy(RateLimitPolicy::Hold);
        let until = NOW + 20 * SEC;
        assert_eq!(retry(&decide(Verdict::Limited { until }, &leased(2), &hold, NOW)), (until, false));
        // A limit that already ended still waits a millisecond, so the record is not read back at once.
        assert_eq!(retry(&decide(Verdict::Limited { until: NOW }, &leased(0), &hold, NOW)), (NOW + 1, false));
        // Received 10 s ago with a 60 s hold: up to 50 s from now is held, beyond is dropped.
        assert!(matches!(
            decide(Verdict::Limited { until: NOW + 50 * SEC }, &leased(0), &hold, NOW),
            Settle::Retry { .. }
        ));
        for (p, until) in [(hold, NOW + 50 * SEC + 1), (policy(RateLimitPolicy::Drop), NOW + SEC)] {
            match decide(Verdict::Limited { until }, &leased(0), &p, NOW) {
                Settle::Drop { id: 7, dropped } => assert_eq!(dropped.reason, DropReason::RateLimited),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn upstream_429s_hold_within_max_hold_and_are_acked_without_a_report_otherwise() {
        let hold = policy(RateLimitPolicy::Hold);
        let until = NOW + 50 * SEC;
        assert_eq!(retry(&decide(Verdict::UpstreamLimited { until }, &leased(1), &hold, NOW)), (until, false));
        for (p, until) in [(hold, until + 1), (policy(RateLimitPolicy::Drop), NOW + SEC)] {
            assert!(matches!(decide(Verdict::UpstreamLimited { until }, &leased(0), &p, NOW), Settle::Ack { id: 7 }));
        }
    }

    #[test]
    fn a_circuit_hold_waits_uncounted_under_either_policy() {
        for p in [RateLimitPolicy::Hold, RateLimitPolicy::Drop] {
            let s = decide(Verdict::Held { until: NOW + 5 * SEC }, &leased(9), &policy(p), NOW);
            assert_eq!(retry(&s), (NOW + 5 * SEC, false));
        }
    }

    #[test]
    fn refused_goes_again_at_once_three_times_then_backs_off() {
        let p = policy(RateLimitPolicy::Hold);
        for attempts in 0..3 {
            assert_eq!(retry(&decide(Verdict::Refused, &leased(attempts), &p, NOW)), (NOW, true));
        }
        // The fourth waits its backoff: attempt 3 is 2 s * 8 = 16 s, jittered into [8 s, 16 s].
        let (due, counted) = retry(&decide(Verdict::Refused, &leased(3), &p, NOW));
        assert!(counted && (NOW + 8 * SEC..=NOW + 16 * SEC).contains(&due), "{}", due - NOW);
    }

    #[test]
    fn failures_back_off_by_attempts_up_to_the_cap() {
        let p = policy(RateLimitPolicy::Drop);
        let (due, counted) = retry(&decide(Verdict::Failed, &leased(0), &p, NOW));
        assert!(counted && (NOW + SEC..=NOW + 2 * SEC).contains(&due), "{}", due - NOW);
        let (due, _) = retry(&decide(Verdict::Failed, &leased(40), &p, NOW));
        assert!((NOW + 15 * SEC..=NOW + 30 * SEC).contains(&due), "{}", due - NOW);
    }

    #[test]
    fn only_failures_refusals_and_upstream_429s_count_as_retries() {
        assert_eq!(Verdict::Failed.retry_reason(), Some("transient"));
        assert_eq!(Verdict::Refused.retry_reason(), Some("refused"));
        assert_eq!(Verdict::UpstreamLimited { until: 0 }.retry_reason(), Some("rate_limited"));
        for v in [Verdict::Delivered, Verdict::Rejected, Verdict::Limited { until: 0 }, Verdict::Held { until: 0 }] {
            assert_eq!(v.retry_reason(), None, "{v:?}");
        }
    }
}
