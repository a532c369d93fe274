//! Every metric name and the Prometheus recorder, in one place so that the README's metrics
//! reference and the code cannot drift apart.
//!
//! The recorder is process-global (the `metrics` facade is), so it is installed once and shared by
//! every `Sidecar` in the process; tests that start several sidecars see the sum of their counters.
//!
//! Every metric has a `# HELP` text ([`ALL`]) and is registered at zero when the recorder is
//! installed, with each value of its closed labels (endpoints, outcomes, reasons), so that a
//! dashboard or an alert on `rate(...)` or `absent(...)` works before the first request.
//!
//! The recorder is wrapped so that refusals and drops are also tallied by reason: the summary
//! line ([`summarize_trouble`]) reads those tallies once a minute while anything is refused or
//! dropped, and sleeps without a timer otherwise, as the first count wakes it (an idle sidecar is
//! never woken for it).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics::{
    counter, gauge, histogram, Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString,
    Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::protocol::Endpoint;

/// Requests answered by the ingest listener, by `endpoint` and `status`.
pub const REQUESTS: &str = "sidecar_requests_total";
/// Requests refused, by `endpoint` and `reason` (bad input, auth, size, ...).
pub const REJECTED: &str = "sidecar_rejected_total";
/// Envelopes (and store events, minidumps, ...) accepted into the spool, by `endpoint`.
pub const ACCEPTED: &str = "sidecar_accepted_total";
/// Bytes accepted into the spool (after content decoding), by `endpoint`.
pub const ACCEPTED_BYTES: &str = "sidecar_accepted_bytes_total";
/// Spooled envelopes whose delivery finished, by `outcome` (`delivered`, `rejected`, `captured`).
pub const FORWARDED: &str = "sidecar_forwarded_total";
/// Upstream attempts, by `result` (`2xx`, `429`, `4xx`, `5xx`, `error`, `refused`).
pub const UPSTREAM_ATTEMPTS: &str = "sidecar_upstream_attempts_total";
/// Upstream attempts that failed without a usable answer, by `reason` ([`FAILURE_REASONS`]).
pub const UPSTREAM_FAILURES: &str = "sidecar_upstream_failures_total";
/// Upstream request latency in seconds.
pub const UPSTREAM_LATENCY: &str = "sidecar_upstream_duration_seconds";
/// Bytes sent upstream (request bodies after compression).
pub const UPSTREAM_BYTES: &str = "sidecar_upstream_bytes_total";
/// Envelopes rescheduled for a later attempt, by `reason` (`transient`, `rate_limited`, `refused`).
pub const RETRIES: &str = "sidecar_retries_total";
/// Envelopes dropped by the sidecar, by `reason` and `category`.
pub const DROPPED: &str = "sidecar_dropped_total";
/// Envelopes waiting in the spool.
pub const SPOOL_ENVELOPES: &str = "sidecar_spool_envelopes";
/// Bytes waiting in the spool, as stored (bodies compressed for the upstream).
pub const SPOOL_BYTES: &str = "sidecar_spool_bytes";
/// Bytes the spool's files take on disk (database, WAL, body files), read at each scrape.
pub const SPOOL_DISK_BYTES: &str = "sidecar_spool_disk_bytes";
/// 1 while an upstream's circuit is open (sending stopped, probing), by `upstream`.
pub const CIRCUIT_OPEN: &str = "sidecar_upstream_circuit_open";
/// Envelopes held back because their categories are rate limited, by `category`.
pub const RATE_LIMITED: &str = "sidecar_rate_limited_total";
/// Upstream requests in flight.
pub const IN_FLIGHT: &str = "sidecar_upstream_in_flight";
/// Open upstream connections (the pool's, TLS or plain), by `upstream` (`host:port`).
pub const UPSTREAM_CONNECTIONS: &str = "sidecar_upstream_connections";
/// Time from a request's headers to its answer, in seconds (the SDK's wait).
pub const ACK_LATENCY: &str = "sidecar_ack_duration_seconds";
/// Age in seconds of the oldest envelope in the spool (0 when empty), read at each scrape.
pub const SPOOL_OLDEST_AGE: &str = "sidecar_spool_oldest_age_seconds";
/// The process's resident memory in bytes, read at each scrape.
pub const RESIDENT_MEMORY: &str = "sidecar_resident_memory_bytes";
/// Always 1, with the running `version` as a label.
pub const BUILD_INFO: &str = "sidecar_build_info";

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution in buckets.
    Histogram,
}

/// One metric's name, kind and `# HELP` text.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// The series name.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// The `# HELP` text.
    pub help: &'static str,
}

const fn m(name: &'static str, kind: Kind, help: &'static str) -> Metric {
    Metric { name, kind, help }
}

/// Every metric the sidecar exports.
pub const ALL: &[Metric] = &[
    m(REQUESTS, Kind::Counter, "Requests answered by the ingest listener, by endpoint and status."),
    m(REJECTED, Kind::Counter, "Requests refused, by endpoint and reason (bad input, auth, size, spool full, ...)."),
    m(ACCEPTED, Kind::Counter, "Requests accepted into the spool, by endpoint."),
    m(ACCEPTED_BYTES, Kind::Counter, "Bytes accepted into the spool (after content decoding), by endpoint."),
    m(
        FORWARDED,
        Kind::Counter,
        "Spooled envelopes whose delivery finished, by outcome (delivered, rejected, captured).",
    ),
    m(UPSTREAM_ATTEMPTS, Kind::Counter, "Upstream attempts, by result (2xx, 429, 4xx, 5xx, error, refused)."),
    m(
        UPSTREAM_FAILURES,
        Kind::Counter,
        "Upstream attempts that failed without a usable answer, by reason (dns, refused, tls_unknown_issuer, http_5xx, ...).",
    ),
    m(UPSTREAM_LATENCY, Kind::Histogram, "Upstream request latency in seconds."),
    m(UPSTREAM_BYTES, Kind::Counter, "Request bytes sent upstream (after compression)."),
    m(
        RETRIES,
        Kind::Counter,
        "Envelopes rescheduled for a later attempt, by reason (transient, rate_limited, refused).",
    ),
    m(DROPPED, Kind::Counter, "Envelopes dropped by the sidecar, by reason and data category."),
    m(SPOOL_ENVELOPES, Kind::Gauge, "Envelopes waiting in the spool."),
    m(SPOOL_BYTES, Kind::Gauge, "Bytes waiting in the spool, as stored (compressed for the upstream)."),
    m(SPOOL_DISK_BYTES, Kind::Gauge, "Bytes the spool's files take on disk (database, WAL, body files)."),
    m(CIRCUIT_OPEN, Kind::Gauge, "1 while an upstream's circuit is open (sending stopped, probing), by upstream."),
    m(RATE_LIMITED, Kind::Counter, "Envelopes held back or dropped by a cached rate limit, by data category."),
    m(IN_FLIGHT, Kind::Gauge, "Upstream requests in flight."),
    m(UPSTREAM_CONNECTIONS, Kind::Gauge, "Open upstream connections, by upstream (host:port)."),
    m(ACK_LATENCY, Kind::Histogram, "Time from a request's headers to the sidecar's answer, in seconds."),
    m(SPOOL_OLDEST_AGE, Kind::Gauge, "Age in seconds of the oldest envelope in the spool (0 when empty), read at each scrape."),
    m(RESIDENT_MEMORY, Kind::Gauge, "The process's resident memory (RSS) in bytes, read at each scrape."),
    m(BUILD_INFO, Kind::Gauge, "Always 1; the version label says which build runs."),
];

/// Values of the closed labels that every series is registered with at start.
const REJECT_REASONS: &[&str] = &[
    "invalid_envelope",
    "invalid_store",
    "auth",
    "too_large",
    "encoding",
    "corrupt_body",
    "body_read",
    "not_found",
    "method",
    "invalid_project",
    "tunnel_off",
    "tunnel_no_dsn",
    "tunnel_bad_dsn",
    "tunnel_forbidden",
    "rate_limited",
    "spool_full",
    "disk_full",
    "spool",
    "invalid_key",
    "auth_conflict",
    "dot_segment",
    "transfer_encoding",
    "body_timeout",
    "upstream_unreachable",
    "upstream_timeout",
    "connection_limit",
    "header_timeout",
    "overloaded",
];
const OUTCOMES: &[&str] = &["delivered", "rejected", "captured"];
const RESULTS: &[&str] = &["2xx", "429", "4xx", "5xx", "error", "refused"];
/// The `reason` labels of [`UPSTREAM_FAILURES`], one per kind of upstream failure (the upstream
/// module's `Failure` labels, which a test there keeps equal to this list).
pub const FAILURE_REASONS: &[&str] = &[
    "dns",
    "refused",
    "connect_timeout",
    "tls_unknown_issuer",
    "tls_name_mismatch",
    "tls_expired",
    "tls_bad_certificate",
    "tls_handshake",
    "http_5xx",
    "http_408",
    "request_timeout",
    "reset",
    "other",
];
const RETRY_REASONS: &[&str] = &["transient", "rate_limited", "refused"];
const DROP_REASONS: &[&str] =
    &["spool_full", "too_old", "rate_limited", "upstream_rejected", "upstream_rate_limited", "unreadable"];

/// Buckets of the ack latency: it is well under a millisecond when all is well, so the low end
/// is fine-grained; the top catches a stalled disk.
const ACK_BUCKETS: &[f64] = &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];
/// Buckets of the upstream latency: a round trip to Sentry, up to the request timeout.
const UPSTREAM_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Describes every metric and registers its series at zero (hot ones through [`hot`]).
fn register() {
    for metric in ALL {
        match metric.kind {
            Kind::Counter => metrics::describe_counter!(metric.name, metric.help),
            Kind::Gauge => metrics::describe_gauge!(metric.name, metric.help),
            Kind::Histogram => metrics::describe_histogram!(metric.name, metric.help),
        }
    }
    // Not through `hot()`: this runs inside the recorder's one-time set-up, which `hot()` waits for.
    for e in Endpoint::ALL {
        counter!(ACCEPTED, "endpoint" => e.name()).absolute(0);
        counter!(ACCEPTED_BYTES, "endpoint" => e.name()).absolute(0);
        counter!(REQUESTS, "endpoint" => e.name(), "status" => "200").absolute(0);
        for r in REJECT_REASONS {
            counter!(REJECTED, "endpoint" => e.name(), "reason" => *r).absolute(0);
        }
    }
    for o in OUTCOMES {
        counter!(FORWARDED, "outcome" => *o).absolute(0);
    }
    for r in RESULTS {
        counter!(UPSTREAM_ATTEMPTS, "result" => *r).absolute(0);
    }
    for r in FAILURE_REASONS {
        counter!(UPSTREAM_FAILURES, "reason" => *r).absolute(0);
    }
    for r in RETRY_REASONS {
        counter!(RETRIES, "reason" => *r).absolute(0);
    }
    for c in crate::protocol::DataCategory::ALL {
        counter!(RATE_LIMITED, "category" => c.name()).absolute(0);
        for r in DROP_REASONS {
            counter!(DROPPED, "reason" => *r, "category" => c.name()).absolute(0);
        }
    }
    counter!(UPSTREAM_BYTES).absolute(0);
    for g in [SPOOL_ENVELOPES, SPOOL_BYTES, SPOOL_DISK_BYTES, SPOOL_OLDEST_AGE, RESIDENT_MEMORY, IN_FLIGHT] {
        gauge!(g).set(0.0);
    }
    let _ = histogram!(ACK_LATENCY);
    let _ = histogram!(UPSTREAM_LATENCY);
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Registers the per-upstream series of an upstream known from the configuration at zero, so
/// that its circuit and connections show before its first request.
pub fn register_upstream(base_url: &str) {
    gauge!(CIRCUIT_OPEN, "upstream" => base_url.to_owned()).set(0.0);
    if let Ok(uri) = base_url.parse::<http::Uri>() {
        gauge!(UPSTREAM_CONNECTIONS, "upstream" => host_port(&uri)).set(0.0);
    }
}

/// The `upstream` label of connection metrics: `host:port`, with the scheme's default port when
/// the URL has none.
pub fn host_port(uri: &http::Uri) -> String {
    let default = if uri.scheme_str() == Some("http") { 80 } else { 443 };
    format!("{}:{}", uri.host().unwrap_or_default(), uri.port_u16().unwrap_or(default))
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often histogram samples are folded into their buckets.
pub const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Installs the Prometheus recorder (once per process) and returns the handle that renders it.
pub fn metrics_handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            // Both bucket lists are non-empty constants, the only thing the builder checks.
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(ACK_LATENCY.into()), ACK_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(UPSTREAM_LATENCY.into()), UPSTREAM_BUCKETS))
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            let recorder = Tallying(recorder);
            // A recorder built this way keeps every histogram sample until something drains it;
            // without a scrape that is 8 bytes per delivered envelope, forever. Drain it on a
            // small thread of its own (not a task: the recorder outlives any one runtime).
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                upkeep.run_upkeep();
            });
            // Another recorder may already be installed by an embedding program; then we still
            // render our own handle, which simply stays empty.
            let installed = metrics::set_global_recorder(recorder).is_ok();
            if installed {
                register();
            }
            handle
        })
        .clone()
}

/// Handles of the metrics touched for every envelope, registered once. A `counter!` call looks its
/// key up in the recorder's registry each time (hashing the labels and allocating a handle): ten
/// of those per envelope were a sixth of all allocations on the hot path.
pub struct Hot {
    accepted: [Counter; Endpoint::ALL.len()],
    accepted_bytes: [Counter; Endpoint::ALL.len()],
    answered_200: [Counter; Endpoint::ALL.len()],
    /// `sidecar_upstream_in_flight`.
    pub in_flight: Gauge,
    /// `sidecar_upstream_duration_seconds`.
    pub upstream_latency: Histogram,
    /// `sidecar_upstream_bytes_total`.
    pub upstream_bytes: Counter,
    /// `sidecar_upstream_attempts_total{result="2xx"}`.
    pub attempts_2xx: Counter,
    /// `sidecar_forwarded_total{outcome="delivered"}`.
    pub delivered: Counter,
    /// `sidecar_spool_envelopes`.
    pub spool_envelopes: Gauge,
    /// `sidecar_spool_bytes`.
    pub spool_bytes: Gauge,
    /// `sidecar_ack_duration_seconds`.
    pub ack_latency: Histogram,
}

impl Hot {
    /// `sidecar_accepted_total{endpoint}`.
    pub fn accepted(&self, e: Endpoint) -> &Counter {
        &self.accepted[e as usize]
    }

    /// `sidecar_accepted_bytes_total{endpoint}`.
    pub fn accepted_bytes(&self, e: Endpoint) -> &Counter {
        &self.accepted_bytes[e as usize]
    }

    /// `sidecar_requests_total{endpoint, status="200"}`.
    pub fn answered_200(&self, e: Endpoint) -> &Counter {
        &self.answered_200[e as usize]
    }
}

/// The hot-path handles, registered with the sidecar's recorder on first use.
pub fn hot() -> &'static Hot {
    static HOT: OnceLock<Hot> = OnceLock::new();
    HOT.get_or_init(|| {
        // Handles bind to the recorder installed when they are made: install it first.
        let _ = metrics_handle();
        let by_endpoint = |f: &dyn Fn(&'static str) -> Counter| Endpoint::ALL.map(|e| f(e.name()));
        Hot {
            accepted: by_endpoint(&|e| counter!(ACCEPTED, "endpoint" => e)),
            accepted_bytes: by_endpoint(&|e| counter!(ACCEPTED_BYTES, "endpoint" => e)),
            answered_200: by_endpoint(&|e| counter!(REQUESTS, "endpoint" => e, "status" => "200")),
            in_flight: gauge!(IN_FLIGHT),
            upstream_latency: histogram!(UPSTREAM_LATENCY),
            upstream_bytes: counter!(UPSTREAM_BYTES),
            attempts_2xx: counter!(UPSTREAM_ATTEMPTS, "result" => "2xx"),
            delivered: counter!(FORWARDED, "outcome" => "delivered"),
            spool_envelopes: gauge!(SPOOL_ENVELOPES),
            spool_bytes: gauge!(SPOOL_BYTES),
            ack_latency: histogram!(ACK_LATENCY),
        }
    })
}

/// Refusals and drops by reason, tallied beside their counters, and the wake-up of the summary.
struct Trouble {
    /// (`rejected` or `dropped`, reason) -> count since start.
    tallies: Mutex<BTreeMap<(&'static str, String), Arc<AtomicU64>>>,
    /// Set while a summary task sleeps until the next count.
    asleep: AtomicBool,
    wake: tokio::sync::Notify,
}

fn trouble() -> &'static Trouble {
    static TROUBLE: OnceLock<Trouble> = OnceLock::new();
    TROUBLE.get_or_init(|| Trouble {
        tallies: Mutex::new(BTreeMap::new()),
        asleep: AtomicBool::new(false),
        wake: tokio::sync::Notify::new(),
    })
}

impl Trouble {
    fn tally(&self, kind: &'static str, reason: &str) -> Arc<AtomicU64> {
        let mut t = self.tallies.lock().unwrap_or_else(|p| p.into_inner());
        t.entry((kind, reason.to_owned())).or_default().clone()
    }

    fn snapshot(&self) -> BTreeMap<(&'static str, String), u64> {
        let t = self.tallies.lock().unwrap_or_else(|p| p.into_inner());
        t.iter().map(|(k, v)| (k.clone(), v.load(Ordering::Relaxed))).filter(|(_, n)| *n > 0).collect()
    }

    /// Something was counted: wakes a sleeping summary (one atomic swap otherwise).
    fn poke(&self) {
        if self.asleep.swap(false, Ordering::SeqCst) {
            self.wake.notify_waiters();
        }
    }
}

/// A refusal or drop counter that also tallies what it counts.
struct Tallied {
    inner: Counter,
    tally: Arc<AtomicU64>,
}

impl CounterFn for Tallied {
    fn increment(&self, value: u64) {
        self.inner.increment(value);
        if value > 0 {
            self.tally.fetch_add(value, Ordering::SeqCst);
            trouble().poke();
        }
    }

    fn absolute(&self, value: u64) {
        self.inner.absolute(value);
    }
}

/// The Prometheus recorder, tallying [`REJECTED`] and [`DROPPED`] by reason on the side (every
/// other series is the recorder's own, untouched).
struct Tallying<R>(R);

impl<R: Recorder> Recorder for Tallying<R> {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        let counter = self.0.register_counter(key, metadata);
        let kind = match key.name() {
            REJECTED => "rejected",
            DROPPED => "dropped",
            _ => return counter,
        };
        let reason = key.labels().find(|l| l.key() == "reason").map_or("other", |l| l.value());
        Counter::from_arc(Arc::new(Tallied { inner: counter, tally: trouble().tally(kind, reason) }))
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.0.register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.0.register_histogram(key, metadata)
    }
}

/// Least time between two summary lines.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// Logs what was refused and dropped, by reason: a line at the first refusal or drop, then at
/// most one per [`SUMMARY_INTERVAL`] while they go on; asleep (no timer) while nothing is.
/// Returns when `shutdown` turns true.
pub async fn summarize_trouble(mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let t = trouble();
    let mut last = t.snapshot();
    loop {
        let woken = t.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        t.asleep.store(true, Ordering::SeqCst);
        if t.snapshot() == last {
            tokio::select! {
                _ = &mut woken => {}
                _ = shutdown.changed() => return,
            }
        }
        let now = t.snapshot();
        let (rejected, dropped) = summary(&last, &now);
        last = now;
        if rejected.is_some() || dropped.is_some() {
            tracing::info!(
                rejected = rejected.as_deref().unwrap_or("none"),
                dropped = dropped.as_deref().unwrap_or("none"),
                "refused or dropped since the last summary (by reason; see sidecar_rejected_total, sidecar_dropped_total)"
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(SUMMARY_INTERVAL) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// What grew from `before` to `after`: `reason=count ...` for refusals and for drops.
fn summary(
    before: &BTreeMap<(&'static str, String), u64>,
    after: &BTreeMap<(&'static str, String), u64>,
) -> (Option<String>, Option<String>) {
    let mut by_kind: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
    for ((kind, reason), n) in after {
        let grew = n.saturating_sub(before.get(&(*kind, reason.clone())).copied().unwrap_or(0));
        if grew > 0 {
            *by_kind.entry(kind).or_default().entry(reason).or_default() += grew;
        }
    }
    let text =
        |kind: &str| by_kind.get(kind).map(|m| m.iter().map(|(r, n)| format!("{r}={n}")).collect::<Vec<_>>().join(" "));
    (text("rejected"), text("dropped"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_labels_name_the_port_the_scheme_implies() {
        let label = |u: &str| host_port(&u.parse().unwrap());
        assert_eq!(label("https://o1.ingest.sentry.io"), "o1.ingest.sentry.io:443");
        assert_eq!(label("http://relay.internal/prefix"), "relay.internal:80");
        assert_eq!(label("https://127.0.0.1:8443"), "127.0.0.1:8443");
    }

    #[test]
    fn every_metric_is_described_once() {
        let mut names: Vec<&str> = ALL.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
        assert!(ALL.iter().all(|m| m.name.starts_with("sidecar_") && !m.help.is_empty()));
    }

    #[test]
    fn a_summary_counts_what_grew_by_reason() {
        let key = |k: &'static str, r: &str| (k, r.to_owned());
        let before = BTreeMap::from([(key("rejected", "auth"), 2), (key("dropped", "spool_full"), 5)]);
        let after = BTreeMap::from([
            (key("rejected", "auth"), 5),
            (key("rejected", "too_large"), 1),
            (key("dropped", "spool_full"), 5),
        ]);
        assert_eq!(summary(&before, &after), (Some("auth=3 too_large=1".into()), None));
        assert_eq!(summary(&after, &after), (None, None));
    }

    #[tokio::test(start_paused = true)]
    async fn the_summary_sleeps_until_a_refusal_then_tells_at_most_once_a_minute() {
        let _ = metrics_handle();
        let (stop, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(summarize_trouble(rx));
        // Other tests of this binary may refuse things too (the recorder is process-wide): then
        // the task tells it and is asleep again a minute later.
        for _ in 0..5 {
            tokio::task::yield_now().await;
            if trouble().asleep.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(SUMMARY_INTERVAL + Duration::from_secs(1)).await;
        }
        assert!(trouble().asleep.load(Ordering::SeqCst), "asleep (no timer) while nothing is refused");
        counter!(REJECTED, "endpoint" => "envelope", "reason" => "invalid_key").increment(1);
        assert!(!trouble().asleep.load(Ordering::SeqCst), "woken by the refusal");
        assert!(trouble().snapshot().get(&("rejected", "invalid_key".to_owned())).is_some_and(|n| *n >= 1));
        stop.send(true).unwrap();
        task.await.unwrap();
    }
}
