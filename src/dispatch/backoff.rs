//! Retry delays: exponential from `initial`, capped at `max`, with jitter so that many envelopes
//! failing together do not come back together.

use std::time::Duration;

/// The delay before attempt `attempt + 1` (attempt 0 = first retry): a random value in
/// `[d/2, d]` where `d = min(max, initial * 2^attempt)`.
pub fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let exp = initial.saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX));
    let d = exp.min(max);
    let half = d / 2;
    half + d.saturating_sub(half).mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_grow_and_cap() {
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(10));
        for attempt in 0..40 {
            let d = backoff(attempt, i, m);
            let ceiling = i.saturating_mul(1 << attempt.min(20)).min(m);
            assert!(d <= ceiling, "attempt {attempt}: {d:?} > {ceiling:?}");
            assert!(d >= ceiling / 2, "attempt {attempt}: {d:?} < {:?}", ceiling / 2);
        }
        assert!(backoff(100, i, m) <= m);
    }

    #[test]
    fn jitter_spreads() {
        let i = Duration::from_secs(1);
        let samples: std::collections::HashSet<_> = (0..50).map(|_| backoff(3, i, Duration::from_secs(60))).collect();
        assert!(samples.len() > 10);
    }
}
