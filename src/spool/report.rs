//! What the spool drops by its own policy (full, too old, rate-limit drop policy) is counted by
//! reason and data category, logged without flooding, and reported to Sentry as `client_report`
//! envelopes for the same DSN, so the loss shows up in the project's stats (Sentry's "dropped" outcomes) as it
//! would for an SDK that dropped them itself.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use metrics::counter;

use super::{Endpoint, Record, Target};
use crate::protocol::Categories;
use crate::telemetry as t;

/// Why the sidecar dropped an envelope itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The spool was at its byte bound (`drop-oldest`).
    SpoolFull,
    /// The envelope waited longer than the maximum age.
    TooOld,
    /// Its categories were rate limited and the policy is `drop` (or the hold ran out).
    RateLimited,
    /// Its stored body could not be read back.
    Unreadable,
}

impl DropReason {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::SpoolFull => "spool_full",
            DropReason::TooOld => "too_old",
            DropReason::RateLimited => "rate_limited",
            DropReason::Unreadable => "unreadable",
        }
    }

    /// The client-report reason Sentry knows.
    pub fn client_report_reason(self) -> &'static str {
        match self {
            DropReason::SpoolFull => "queue_overflow",
            DropReason::TooOld => "network_error",
            DropReason::RateLimited => "ratelimit_backoff",
            DropReason::Unreadable => "internal_sdk_error",
        }
    }
}

/// One dropped envelope, as far as reporting needs it.
#[derive(Debug, Clone)]
pub struct Dropped {
    /// Why.
    pub reason: DropReason,
    /// Where it would have gone.
    pub target: Target,
    /// Its project.
    pub project_id: u64,
    /// Its key.
    pub public_key: String,
    /// Its categories.
    pub categories: Categories,
    /// The auth headers it carried (to send the report with the same credentials).
    pub headers: Vec<(http::HeaderName, HeaderValue)>,
    /// The query string it carried (query auth), if any.
    pub query: Option<String>,
    /// Its event id, for the log.
    pub event_id: Option<String>,
}

impl Dropped {
    /// Describes a record being dropped for `reason`.
    pub fn of(record: &Record, reason: DropReason) -> Dropped {
        Dropped {
            reason,
            target: record.target.clone(),
            project_id: record.project_id,
            public_key: record.public_key.clone(),
            categories: record.categories,
            headers: record
                .headers
                .iter()
                .filter(|(k, _)| matches!(k.as_str(), "x-sentry-auth" | "authorization" | "user-agent"))
                .cloned()
                .collect(),
            query: record
                .path_and_query
                .split_once('?')
                .map(|(_, q)| q.to_owned())
                .filter(|q| q.contains("sentry_key")),
            event_id: record.event_id.clone(),
        }
    }
}

static LAST_LOG: Mutex<Option<Instant>> = Mutex::new(None);

/// Counts and logs `drops`, and returns the client-report records to queue for them (one per
/// target, project and key). Envelopes without categories (client reports themselves) are
/// counted but not reported, so reports never report on reports.
pub fn account(drops: &[Dropped], now_ms: u64) -> Vec<Record> {
    if drops.is_empty() {
        return Vec::new();
    }
    type Key = (Target, u64, String);
    type Counts = Vec<(&'static str, &'static str, u64)>;
    let mut groups: HashMap<Key, (Counts, &Dropped)> = HashMap::new();
    for d in drops {
        for c in d.categories.iter() {
            counter!(t::DROPPED, "reason" => d.reason.label(), "category" => c.name()).increment(1);
        }
        if d.categories.is_empty() {
            counter!(t::DROPPED, "reason" => d.reason.label(), "category" => "none").increment(1);
            continue;
        }
        let entry =
            groups.entry((d.target.clone(), d.project_id, d.public_key.clone())).or_insert_with(|| (Vec::new(), d));
        for c in d.categories.iter() {
            let reason = d.reason.client_report_reason();
            match entry.0.iter_mut().find(|(r, cat, _)| *r == reason && *cat == c.name()) {
                Some(e) => e.2 += 1,
                None => entry.0.push((reason, c.name(), 1)),
            }
        }
    }
    {
        let mut last = LAST_LOG.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|l| l.elapsed() > Duration::from_secs(10)) {
            *last = Some(Instant::now());
            let d = &drops[0];
            tracing::warn!(
                dropped = drops.len(),
                reason = d.reason.label(),
                project = d.project_id,
                event_id = %d.event_id.as_deref().unwrap_or("-"),
                "dropping envelopes (more may follow; see sidecar_dropped_total)"
            );
        }
    }
    groups
        .into_iter()
        .map(|((target, project_id, public_key), (counts, sample))| {
            client_report(target, project_id, public_key, &counts, sample, now_ms)
        })
        .collect()
}

fn client_report(
    target: Target,
    project_id: u64,
    public_key: String,
    counts: &[(&str, &str, u64)],
    sample: &Dropped,
    now_ms: u64,
) -> Record {
    let discarded: Vec<_> = counts
        .iter()
        .map(|(reason, category, quantity)| serde_json::json!({"reason": reason, "category": category, "quantity": quantity}))
        .collect();
    let payload = serde_json::json!({ "timestamp": now_ms as f64 / 1000.0, "discarded_events": discarded }).to_string();
    let body = format!("{{}}\n{{\"type\":\"client_report\",\"length\":{}}}\n{payload}\n", payload.len());
    let mut headers = sample.headers.clone();
    headers.push((CONTENT_TYPE, HeaderValue::from_static("application/x-sentry-envelope")));
    let path_and_query = match &sample.query {
        Some(q) => format!("/api/{project_id}/envelope/?{q}"),
        None => format!("/api/{project_id}/envelope/"),
    };
    Record {
        target,
        endpoint: Endpoint::Envelope,
        method: http::Method::POST,
        path_and_query,
        headers,
        body: Bytes::from(body).into(),
        encoding: crate::codec::Encoding::Identity,
        incompressible: false,
        project_id,
        public_key,
        event_id: None,
        categories: Categories::EMPTY,
        item_types: vec!["client_report".to_owned()],
        received_ms: now_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{DataCategory, Envelope};

    #[test]
    fn one_report_per_dsn_with_counts() {
        let mut cats = Categories::EMPTY;
        cats.insert(DataCategory::Error);
        let d = Dropped {
            reason: DropReason::SpoolFull,
            target: Target::Capture,
            project_id: 42,
            public_key: "k".into(),
            categories: cats,
            headers: vec![(
                http::HeaderName::from_static("x-sentry-auth"),
                HeaderValue::from_static("Sentry sentry_key=k"),
            )],
            query: None,
            event_id: None,
        };
        let mut old = d.clone();
        old.reason = DropReason::TooOld;
        let reports = account(&[d.clone(), d, old], 1_700_000_000_000);
        assert_eq!(reports.len(), 1);
        let r = &reports[0];
        assert_eq!(r.path_and_query, "/api/42/envelope/");
        assert!(r.categories.is_empty());
        let env = Envelope::parse(r.body.bytes().unwrap().clone()).unwrap();
        assert_eq!(env.items[0].ty.name(), "client_report");
        let v: serde_json::Value = serde_json::from_slice(&env.payload(&env.items[0])).unwrap();
        let ev = v["discarded_events"].as_array().unwrap();
        assert!(ev.contains(&serde_json::json!({"reason":"queue_overflow","category":"error","quantity":2})));
        assert!(ev.contains(&serde_json::json!({"reason":"network_error","category":"error","quantity":1})));
    }
}
