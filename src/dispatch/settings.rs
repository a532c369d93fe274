//! What dispatch is told by the configuration: its own settings, taken from [`Config`] in one
//! place, and the views the pure deciders take of them (the circuit's [`Timing`], `decide`'s
//! [`Policy`]).

use std::time::Duration;

use super::circuit::Timing;
use super::decide::Policy;
use crate::codec::Encoding;
use crate::config::{Config, RateLimitPolicy};

/// Dispatch settings, taken from [`Config`].
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// Records leased per spool read.
    pub batch_size: usize,
    /// Deliveries in flight across all upstreams.
    pub max_in_flight: usize,
    /// Streams per HTTP/2 upstream.
    pub h2_concurrency: usize,
    /// Most connections per HTTP/1.1 upstream.
    pub h1_connections: usize,
    /// First retry delay.
    pub retry_initial: Duration,
    /// Longest retry delay of one envelope.
    pub retry_max: Duration,
    /// How long shutdown waits for in-flight deliveries.
    pub shutdown_timeout: Duration,
    /// What rate-limited records do.
    pub rate_limit_policy: RateLimitPolicy,
    /// Longest hold for a rate limit.
    pub max_hold: Duration,
    /// Envelopes per second while draining a backlog (0 = unpaced).
    pub drain_rate: u32,
    /// Transient failures for this long open the circuit.
    pub circuit_grace: Duration,
    /// This many transient failures in a row open the circuit.
    pub circuit_failures: usize,
    /// Longest wait between two probes of an open circuit.
    pub probe_max_interval: Duration,
    /// Outbound compression.
    pub compression: Encoding,
    /// The gzip level.
    pub gzip_level: u32,
}

impl DispatchConfig {
    /// Derives dispatch settings from the configuration.
    pub fn from_config(c: &Config) -> DispatchConfig {
        DispatchConfig {
            batch_size: c.batch_size,
            max_in_flight: c.h2_concurrency.max(c.h1_connections).max(1) * 2,
            h2_concurrency: c.h2_concurrency,
            h1_connections: c.h1_connections,
            retry_initial: c.retry_initial,
            retry_max: c.retry_max,
            shutdown_timeout: c.shutdown_timeout,
            rate_limit_policy: c.rate_limit_policy,
            max_hold: c.max_hold,
            drain_rate: c.drain_rate,
            circuit_grace: c.circuit_grace,
            circuit_failures: c.circuit_failures,
            probe_max_interval: c.probe_max_interval,
            compression: c.compression,
            gzip_level: c.gzip_level,
        }
    }

    pub(super) fn timing(&self) -> Timing {
        Timing {
            failures: u32::try_from(self.circuit_failures).unwrap_or(u32::MAX),
            grace: self.circuit_grace,
            retry_initial: self.retry_initial,
            probe_max: self.probe_max_interval,
        }
    }

    pub(super) fn policy(&self) -> Policy {
        Policy {
            rate_limit: self.rate_limit_policy,
            max_hold: self.max_hold,
            retry_initial: self.retry_initial,
            retry_max: self.retry_max,
        }
    }
}
