//! `X-Sentry-Rate-Limits` and `Retry-After`, parsed as Sentry sends them.
//!
//! `X-Sentry-Rate-Limits` is `limit[, limit...]` with `limit = secs:categories:scope[:reason[:namespaces]]`:
//! `secs` may be fractional, `categories` is `;`-separated and empty means all, scope is
//! `organization`, `project` or `key`; unknown categories are ignored, and so is a limit whose
//! categories are all unknown. It may come on any answer, 200 included. Without it, a 429's
//! `Retry-After` (seconds or an HTTP date) limits every category, and a bare 429 means 60 s.
//!
//! Parsing is separate from the deadline table (the `limits` module) so that the grammar can be
//! tested (and fuzzed) on its own.

use std::time::{Duration, SystemTime};

use super::category::{Categories, DataCategory};

/// The scope a limit applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The whole organisation (so every project and key on that upstream).
    Organization,
    /// One project.
    Project,
    /// One DSN key.
    Key,
}

/// One parsed limit.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    /// How long it lasts.
    pub duration: Duration,
    /// The categories it covers; empty means all.
    pub categories: Categories,
    /// Its scope.
    pub scope: Scope,
    /// Sentry's reason code, if any.
    pub reason: Option<String>,
}

/// Parses an `X-Sentry-Rate-Limits` value. Malformed limits, and limits whose categories are all
/// unknown, are skipped (a partial header must not block everything).
pub fn parse_rate_limits(value: &str) -> Vec<RateLimit> {
    value.split(',').filter_map(|limit| parse_one(limit.trim())).collect()
}

fn parse_one(limit: &str) -> Option<RateLimit> {
    let mut parts = limit.split(':');
    let secs: f64 = parts.next()?.trim().parse().ok()?;
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    let cats_raw = parts.next().unwrap_or("").trim();
    let scope = match parts.next().unwrap_or("organization").trim() {
        "project" => Scope::Project,
        "key" => Scope::Key,
        _ => Scope::Organization,
    };
    let reason = parts.next().map(str::trim).filter(|r| !r.is_empty()).map(str::to_owned);
    let mut categories = Categories::EMPTY;
    if !cats_raw.is_empty() {
        let mut any_known = false;
        for name in cats_raw.split(';') {
            let name = name.trim();
            if name.is_empty() {
                continue;
            }
            if let Some(c) = DataCategory::from_name(name) {
                categories.insert(c);
                any_known = true;
            }
        }
        if !any_known {
            return None;
        }
    }
    Some(RateLimit { duration: Duration::from_secs_f64(secs.min(1e9)), categories, scope, reason })
}

/// Parses `Retry-After`: delta seconds (possibly fractional) or an HTTP date, relative to `now`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Some(Duration::from_secs_f64(secs.min(1e9)));
        }
        return None;
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_example() {
        let limits = parse_rate_limits("60:transaction:key, 2700:default;error;security:organization");
        assert_eq!(limits.len(), 2);
        assert_eq!(limits[0].duration, Duration::from_secs(60));
        assert!(limits[0].categories.contains(DataCategory::Transaction));
        assert_eq!(limits[0].scope, Scope::Key);
        assert_eq!(limits[1].duration, Duration::from_secs(2700));
        assert!(limits[1].categories.contains(DataCategory::Error));
        assert!(limits[1].categories.contains(DataCategory::Security));
        assert!(limits[1].categories.contains(DataCategory::Default));
        assert_eq!(limits[1].scope, Scope::Organization);
    }

    #[test]
    fn fractional_empty_unknown_and_reasons() {
        let limits = parse_rate_limits("2.5::project:quota_exceeded, 10:bogus:key, 5:bogus;error:key, x:error:key");
        assert_eq!(limits.len(), 2);
        assert_eq!(limits[0].duration, Duration::from_millis(2500));
        assert!(limits[0].categories.is_empty(), "empty means all categories");
        assert_eq!(limits[0].reason.as_deref(), Some("quota_exceeded"));
        assert_eq!(limits[1].categories, [DataCategory::Error].into_iter().collect());
        assert!(parse_rate_limits("").is_empty());
        let l = parse_rate_limits("60:error:key:reason:custom");
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("5", now), Some(Duration::from_secs(5)));
        assert_eq!(parse_retry_after(" 1.5 ", now), Some(Duration::from_millis(1500)));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(30)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }
}
