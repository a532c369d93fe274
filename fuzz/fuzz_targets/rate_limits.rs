//! The upstream's `X-Sentry-Rate-Limits` and `Retry-After` parsers, on arbitrary header text.
//!
//! Beyond "no panic": a parsed limit holds only categories this build knows, and durations stay
//! under the parser's cap, so a hostile or garbled header can neither name a category that does
//! not exist nor block a category for centuries.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use sentry_sidecar::protocol::rate_limits::{parse_rate_limits, parse_retry_after};
use sentry_sidecar::protocol::DataCategory;

/// The parsers' cap on a duration (1e9 s).
const CAP: Duration = Duration::from_secs(1_000_000_000);

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    for limit in parse_rate_limits(&s) {
        assert!(limit.duration <= CAP);
        let known = DataCategory::ALL.iter().fold(0u32, |m, c| m | 1 << (*c as u32));
        assert_eq!(limit.categories.0 & !known, 0, "unknown category bit");
        for c in limit.categories.iter() {
            assert_eq!(DataCategory::from_name(c.name()), Some(c));
        }
        if let Some(r) = &limit.reason {
            assert!(!r.is_empty());
        }
    }
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    if let Some(d) = parse_retry_after(&s, now) {
        if s.trim().parse::<f64>().is_ok() {
            assert!(d <= CAP);
        }
    }
});
