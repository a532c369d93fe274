//! What `/readyz` tells about each upstream: whether its circuit is open, why, and since when.
//!
//! The dispatcher writes it when a circuit opens, closes or fails for a new reason; the admin
//! endpoint reads it. It is its own small module so that the admin side does not depend on
//! dispatch (nor dispatch on admin): both are handed the same [`UpstreamStatus`] by the wiring.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// One upstream's state as `/readyz` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Circuit {
    /// Whether sending is stopped (the circuit is open).
    pub open: bool,
    /// The last failure's label, while open.
    pub reason: Option<&'static str>,
    /// The last failure's detail, while open.
    pub detail: Option<String>,
    /// When the circuit opened (unix ms).
    pub since_ms: Option<u64>,
}

/// The state of every upstream the sidecar knows, by base URL.
#[derive(Debug, Default)]
pub struct UpstreamStatus {
    upstreams: Mutex<BTreeMap<String, Circuit>>,
}

/// The most of a failure's detail kept (an error chain can be long).
const DETAIL_CHARS: usize = 300;

impl UpstreamStatus {
    /// An empty status.
    pub fn new() -> UpstreamStatus {
        UpstreamStatus::default()
    }

    fn with(&self, upstream: &str, f: impl FnOnce(&mut Circuit)) {
        let mut map = self.upstreams.lock().unwrap_or_else(|p| p.into_inner());
        f(map.entry(upstream.to_owned()).or_default());
    }

    /// Lists `upstream` (closed) before its first request.
    pub fn register(&self, upstream: &str) {
        self.with(upstream, |_| {});
    }

    /// The circuit of `upstream` opened at `since_ms`, failing with `reason`.
    pub fn opened(&self, upstream: &str, reason: &'static str, detail: &str, since_ms: u64) {
        self.with(upstream, |c| {
            *c = Circuit {
                open: true,
                reason: Some(reason),
                detail: Some(detail.chars().take(DETAIL_CHARS).collect()),
                since_ms: Some(since_ms),
            }
        });
    }

    /// The circuit of `upstream` is still open, now failing with `reason`.
    pub fn failing(&self, upstream: &str, reason: &'static str, detail: &str) {
        self.with(upstream, |c| {
            c.reason = Some(reason);
            c.detail = Some(detail.chars().take(DETAIL_CHARS).collect());
        });
    }

    /// The circuit of `upstream` closed.
    pub fn closed(&self, upstream: &str) {
        self.with(upstream, |c| *c = Circuit::default());
    }

    /// The state of `upstream`, if known.
    pub fn get(&self, upstream: &str) -> Option<Circuit> {
        self.upstreams.lock().unwrap_or_else(|p| p.into_inner()).get(upstream).cloned()
    }

    /// `{"https://...": {"state": "open", "reason": ..., "detail": ..., "since_ms": ...}, ...}`.
    pub fn to_json(&self) -> serde_json::Value {
        let map = self.upstreams.lock().unwrap_or_else(|p| p.into_inner());
        let entries = map.iter().map(|(url, c)| {
            let v = if c.open {
                serde_json::json!({
                    "state": "open",
                    "reason": c.reason,
                    "detail": c.detail,
                    "since_ms": c.since_ms,
                })
            } else {
                serde_json::json!({ "state": "closed" })
            };
            (url.clone(), v)
        });
        serde_json::Value::Object(entries.collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_with_a_reason_and_closes_to_nothing() {
        let s = UpstreamStatus::new();
        s.register("https://a");
        assert_eq!(s.to_json(), serde_json::json!({"https://a": {"state": "closed"}}));
        s.opened("https://b", "refused", &"x".repeat(1000), 7);
        s.failing("https://b", "tls_unknown_issuer", "invalid peer certificate: UnknownIssuer");
        let b = &s.to_json()["https://b"];
        assert_eq!(b["state"], "open");
        assert_eq!(b["reason"], "tls_unknown_issuer");
        assert_eq!(b["since_ms"], 7);
        s.opened("https://a", "refused", &"x".repeat(1000), 9);
        assert_eq!(s.get("https://a").unwrap().detail.unwrap().len(), DETAIL_CHARS);
        s.closed("https://b");
        assert_eq!(s.get("https://b"), Some(Circuit::default()));
    }
}
