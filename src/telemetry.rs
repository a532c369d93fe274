//! Every metric name and the Prometheus recorder, in one place so that the README's metrics
//! reference and the code cannot drift apart.
//!
//! The recorder is process-global (the `metrics` facade is), so it is installed once and shared by
//! every `Sidecar` in the process; tests that start several sidecars see the sum of their counters.

use std::sync::OnceLock;

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

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
        }
    })
}
