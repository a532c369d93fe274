//! The rate-limit table: deadlines per upstream, scope (organisation, project, key) and data
//! category, in a concurrent map that dispatch consults before every send and ingest consults with
//! `--answer-429`.

use dashmap::DashMap;

use crate::protocol::{Categories, DataCategory, RateLimit, Scope};
use crate::routing::UpstreamUrl;

const N: usize = 19;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum LimitKey {
    Org(UpstreamUrl),
    Project(UpstreamUrl, u64),
    Key(UpstreamUrl, String),
}

/// Deadlines (unix ms) for "all categories" and for each category.
#[derive(Debug, Clone, Copy, Default)]
struct Deadlines {
    all: u64,
    per: [u64; N],
}

impl Deadlines {
    fn of(&self, c: DataCategory) -> u64 {
        self.all.max(self.per[c as usize])
    }
}

/// The table.
#[derive(Default)]
pub struct RateLimits {
    table: DashMap<LimitKey, Deadlines>,
}

/// Which project and key a request belongs to.
#[derive(Debug, Clone, Copy)]
pub struct Scoping<'a> {
    /// The upstream.
    pub upstream: &'a UpstreamUrl,
    /// The project id.
    pub project: u64,
    /// The public key.
    pub key: &'a str,
}

impl RateLimits {
    /// An empty table.
    pub fn new() -> RateLimits {
        RateLimits::default()
    }

    fn key(s: Scoping<'_>, scope: Scope) -> LimitKey {
        match scope {
            Scope::Organization => LimitKey::Org(s.upstream.clone()),
            Scope::Project => LimitKey::Project(s.upstream.clone(), s.project),
            Scope::Key => LimitKey::Key(s.upstream.clone(), s.key.to_owned()),
        }
    }

    /// Records limits announced by the upstream, keeping the longest deadline per category.
    pub fn apply(&self, s: Scoping<'_>, limits: &[RateLimit], now_ms: u64) {
        for l in limits {
            let until = now_ms + u64::try_from(l.duration.as_millis()).unwrap_or(u64::MAX / 4);
            let mut e = self.table.entry(Self::key(s, l.scope)).or_default();
            if l.categories.is_empty() {
                e.all = e.all.max(until);
            } else {
                for c in l.categories.iter() {
                    e.per[c as usize] = e.per[c as usize].max(until);
                }
            }
        }
    }

    /// Records a limit on every category for this key (a 429 without `X-Sentry-Rate-Limits`).
    pub fn apply_all(&self, s: Scoping<'_>, until_ms: u64) {
        let mut e = self.table.entry(Self::key(s, Scope::Key)).or_default();
        e.all = e.all.max(until_ms);
    }

    fn deadline(&self, s: Scoping<'_>, c: DataCategory) -> u64 {
        [Scope::Organization, Scope::Project, Scope::Key]
            .into_iter()
            .filter_map(|scope| self.table.get(&Self::key(s, scope)).map(|d| d.of(c)))
            .max()
            .unwrap_or(0)
    }

    /// If every one of `cats` is limited at `now_ms`, the time the first of them frees up.
    /// Envelopes without categories (client reports) are never limited.
    pub fn blocked_until(&self, s: Scoping<'_>, cats: Categories, now_ms: u64) -> Option<u64> {
        if cats.is_empty() || self.table.is_empty() {
            return None;
        }
        let mut earliest = u64::MAX;
        for c in cats.iter() {
            let d = self.deadline(s, c);
            if d <= now_ms {
                return None;
            }
            earliest = earliest.min(d);
        }
        Some(earliest)
    }

    /// Forgets deadlines that have passed (called now and then so the map stays small).
    pub fn prune(&self, now_ms: u64) {
        self.table.retain(|_, d| d.all > now_ms || d.per.iter().any(|p| *p > now_ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::rate_limits::parse_rate_limits;

    fn cats(list: &[DataCategory]) -> Categories {
        list.iter().copied().collect()
    }

    #[test]
    fn per_category_and_scope() {
        let up = UpstreamUrl::parse("https://o1.ingest.sentry.io").unwrap();
        let s = Scoping { upstream: &up, project: 42, key: "k" };
        let other_key = Scoping { upstream: &up, project: 42, key: "other" };
        let t = RateLimits::new();
        t.apply(s, &parse_rate_limits("60:transaction:key, 10:error:organization"), 1_000);
        assert_eq!(t.blocked_until(s, cats(&[DataCategory::Transaction]), 1_000), Some(61_000));
        assert_eq!(t.blocked_until(other_key, cats(&[DataCategory::Transaction]), 1_000), None, "key scope");
        assert_eq!(t.blocked_until(other_key, cats(&[DataCategory::Error]), 1_000), Some(11_000), "org scope");
        // An envelope with one free category flows.
        assert_eq!(t.blocked_until(s, cats(&[DataCategory::Transaction, DataCategory::Session]), 1_000), None);
        // Both limited: blocked until the first frees up.
        assert_eq!(t.blocked_until(s, cats(&[DataCategory::Transaction, DataCategory::Error]), 1_000), Some(11_000));
        assert_eq!(t.blocked_until(s, Categories::EMPTY, 1_000), None, "client reports are never limited");
        assert_eq!(t.blocked_until(s, cats(&[DataCategory::Error]), 11_000), None, "expired");
        t.apply_all(s, 5_000);
        assert_eq!(t.blocked_until(s, cats(&[DataCategory::Session]), 1_000), Some(5_000));
        // Longest deadline wins.
        t.apply(s, &parse_rate_limits("1:transaction:key"), 1_000);
        assert_eq!(t.blocked_until(s, cats(&[DataCategory::Transaction]), 1_000), Some(61_000));
        t.prune(100_000);
        assert!(t.table.is_empty());
    }
}
