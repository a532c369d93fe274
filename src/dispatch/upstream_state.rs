//! One upstream's state in the dispatcher: its concurrency slots and their width, its circuit, its
//! rate-limit gates, and the quiet counters that keep its log lines few. The decisions are in
//! `circuit`, `width` and `expiry`; this file holds them together behind locks and says what
//! changed (gauges, status, log lines).

use super::*;

/// Per-upstream state: concurrency slots, the circuit and the rate-limit gates.
pub(super) struct UpstreamState {
    pub(super) name: UpstreamUrl,
    pub(super) slots: Semaphore,
    pub(super) width: Mutex<Width>,
    /// Slots to take away as their permits come back (those in use when the width shrank).
    pub(super) debt: AtomicUsize,
    pub(super) circuit: Mutex<Circuit>,
    pub(super) gates: Mutex<Gates>,
    /// 429 answers since the last line about them.
    pub(super) limited_log: Mutex<Quiet>,
    /// Circuit openings (and changes of reason) since the last line about them.
    pub(super) failing_log: Mutex<Quiet>,
}

impl UpstreamState {
    pub(super) fn new(name: UpstreamUrl, timing: Timing, now: u64) -> UpstreamState {
        UpstreamState {
            name,
            slots: Semaphore::new(1),
            width: Mutex::new(Width::new(now)),
            debt: AtomicUsize::new(0),
            circuit: Mutex::new(Circuit::new(timing)),
            gates: Mutex::new(Gates::default()),
            limited_log: Mutex::new(Quiet::default()),
            failing_log: Mutex::new(Quiet::default()),
        }
    }

    pub(super) fn circuit(&self) -> std::sync::MutexGuard<'_, Circuit> {
        lock(&self.circuit)
    }

    /// A slot, growing the width by one if every slot is busy and the width may grow; `None`
    /// once the slots are closed (shutdown).
    pub(super) async fn slot(&self) -> Option<SemaphorePermit<'_>> {
        match self.slots.try_acquire() {
            Ok(p) => return Some(p),
            Err(TryAcquireError::Closed) => return None,
            Err(TryAcquireError::NoPermits) => {}
        }
        if lock(&self.width).queued() {
            self.slots.add_permits(1);
        }
        self.slots.acquire().await.ok()
    }

    /// A real answer came over `version`: settles the width.
    pub(super) fn learn(&self, version: http::Version, cfg: &DispatchConfig) {
        let h2 = version == http::Version::HTTP_2;
        let added = lock(&self.width).learn(h2, cfg.h2_concurrency, cfg.h1_connections);
        self.slots.add_permits(added);
    }

    /// Gives `slot` back after a request that took `latency_ms`, shrinking the width if the
    /// window says it is wider than the work needs.
    pub(super) fn finished(&self, slot: SemaphorePermit<'_>, latency_ms: u64, now: u64) {
        let fewer = lock(&self.width).finished(latency_ms, now);
        if fewer > 0 {
            let forgotten = self.slots.forget_permits(fewer);
            self.debt.fetch_add(fewer - forgotten, Ordering::AcqRel);
        }
        if self.debt.fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1)).is_ok() {
            slot.forget();
        }
    }

    pub(super) fn admit(&self, id: u64, now: u64) -> Admit {
        self.circuit().admit(id, now)
    }

    /// Feeds record `id`'s outcome to the circuit, reports a change (gauge, `status`, a line);
    /// returns the held records to release if it closed.
    pub(super) fn observe(
        &self,
        id: u64,
        outcome: &Outcome,
        now: u64,
        status: &UpstreamStatus,
        probe_max: Duration,
    ) -> Option<Vec<u64>> {
        let (change, opened_at) = {
            let mut circuit = self.circuit();
            let opened_at = circuit.open_reason().map(|(_, since)| since);
            (circuit.observe(id, outcome, now)?, opened_at)
        };
        let upstream = self.name.as_str();
        let (failure, detail) = match outcome {
            Outcome::Transient { failure, reason } => (*failure, reason.as_str()),
            _ => (Failure::Other, ""),
        };
        match change {
            Change::Opened { failures, failing_for_ms } => {
                gauge!(t::CIRCUIT_OPEN, "upstream" => upstream.to_owned()).set(1.0);
                status.opened(upstream, failure.label(), detail, now);
                if let Some(lines) = lock(&self.failing_log).hit(now) {
                    if failure.is_certificate() {
                        self.certificate_error(failure, detail, probe_max, lines);
                    } else {
                        tracing::warn!(
                            upstream,
                            reason = failure.label(),
                            detail,
                            failures,
                            failing_for_ms,
                            "upstream failing; circuit open: sending stops, probing with backoff, accepting into the spool"
                        );
                    }
                }
                None
            }
            Change::Failing { failure } => {
                status.failing(upstream, failure.label(), detail);
                if let Some(lines) = lock(&self.failing_log).hit(now) {
                    if failure.is_certificate() {
                        self.certificate_error(failure, detail, probe_max, lines);
                    } else {
                        tracing::warn!(
                            upstream,
                            reason = failure.label(),
                            detail,
                            "upstream still failing, for another reason; circuit stays open"
                        );
                    }
                }
                None
            }
            Change::Closed { held } => {
                gauge!(t::CIRCUIT_OPEN, "upstream" => upstream.to_owned()).set(0.0);
                status.closed(upstream);
                let open_for_s = opened_at.map_or(0, |since| now.saturating_sub(since) / 1000);
                tracing::info!(
                    upstream,
                    open_for_s,
                    held = held.len(),
                    "upstream answers again; circuit closed, draining the backlog"
                );
                Some(held)
            }
        }
    }

    /// The one ERROR line of a certificate that does not verify, with the fix and the name it was
    /// checked against (the upstream URL's host, which is what rustls verifies).
    pub(super) fn certificate_error(&self, failure: Failure, detail: &str, probe_max: Duration, lines: u64) {
        let upstream = self.name.as_str();
        let name = upstream.parse::<http::Uri>().ok().and_then(|u| u.host().map(str::to_owned)).unwrap_or_default();
        let fix = match failure {
            Failure::TlsUnknownIssuer => format!(
                "it is signed by a CA this sidecar does not trust; if {name} uses a private CA, pass that CA's \
                 certificate (PEM) with --ca-file"
            ),
            Failure::TlsNameMismatch => format!(
                "it is not valid for the name {name} (see detail for the names it covers); point --upstream at a \
                 name the certificate covers or reissue it for {name} (--ca-file only adds trusted CAs)"
            ),
            Failure::TlsExpired => "it has expired or is not valid yet; renew it on the upstream or check this \
                 machine's clock (--ca-file cannot fix this)"
                .to_owned(),
            _ => "it is invalid (see detail); fix it on the upstream, or pass the CA that signed it with --ca-file"
                .to_owned(),
        };
        tracing::error!(
            upstream,
            reason = failure.label(),
            checked_name = %name,
            detail,
            lines,
            "upstream TLS certificate does not verify for {name}: {fix}; not retried as transient: sending stops, \
             probing every {}s, accepting into the spool",
            probe_max.as_secs()
        );
    }

    pub(super) fn is_open(&self) -> bool {
        self.circuit().is_open()
    }
}
