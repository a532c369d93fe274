//! Every metric name and the Prometheus recorder, in one place so that the README's metrics
//! reference and the code cannot drift apart.
//!
//! The recorder is process-global (the `metrics` facade is), so it is installed once and shared by
//! every `Sidecar` in the process; tests that start several sidecars see the sum of their counters.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

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
/// Upstream attempts, by `result` (`2xx`, `429`, `4xx`, `5xx`, `error`).
pub const UPSTREAM_ATTEMPTS: &str = "sidecar_upstream_attempts_total";
/// Upstream request latency in seconds.
pub const UPSTREAM_LATENCY: &str = "sidecar_upstream_duration_seconds";
/// Bytes sent upstream (request bodies after compression).
pub const UPSTREAM_BYTES: &str = "sidecar_upstream_bytes_total";
/// Envelopes rescheduled for a later attempt, by `reason` (`transient`, `rate_limited`).
pub const RETRIES: &str = "sidecar_retries_total";
/// Envelopes dropped by the sidecar, by `reason` and `category`.
pub const DROPPED: &str = "sidecar_dropped_total";
/// Envelopes waiting in the spool.
pub const SPOOL_ENVELOPES: &str = "sidecar_spool_envelopes";
/// Bytes waiting in the spool, as stored (bodies compressed for the upstream).
pub const SPOOL_BYTES: &str = "sidecar_spool_bytes";
/// 1 while an upstream's circuit is open (sending stopped, probing), by `upstream`.
pub const CIRCUIT_OPEN: &str = "sidecar_upstream_circuit_open";
/// Envelopes held back because their categories are rate limited, by `category`.
pub const RATE_LIMITED: &str = "sidecar_rate_limited_total";
/// Upstream requests in flight.
pub const IN_FLIGHT: &str = "sidecar_upstream_in_flight";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often histogram samples are folded into their buckets.
pub const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Installs the Prometheus recorder (once per process) and returns the handle that renders it.
pub fn metrics_handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(&[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
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
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
