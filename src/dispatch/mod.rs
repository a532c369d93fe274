//! The pump from the spool to the upstreams.
//!
//! One loop leases due records in batches, runs each delivery as a task (bounded by free slots and,
//! while a backlog drains after an outage, by a token bucket), and settles the results in batches:
//! delivered or dropped records are acked, everything else is rescheduled.
//!
//! Before a record is sent, two gates apply:
//! - the rate-limit table ([`RateLimits`]): if every data category of the record is limited, it is
//!   held until the limit ends (or dropped, by policy), without an upstream request;
//! - the upstream's circuit: after `circuit_grace` of nothing but transient failures, sending
//!   stops; one record at a time probes the upstream with capped, jittered backoff, and the first
//!   real answer closes the circuit, releases the held records and starts a paced drain.
//!
//! Each upstream also starts with a single slot, so the first request opens one connection and
//! learns by ALPN whether the upstream speaks HTTP/2; only then does it widen, to `h2_concurrency`
//! streams over that one connection, or `h1_connections` keep-alive connections.

mod backoff;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use metrics::{counter, gauge};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

pub use backoff::backoff;

use crate::capture::Capture;
use crate::clock::now_ms;
use crate::config::{Config, RateLimitPolicy};
use crate::limits::{RateLimits, Scoping};
use crate::protocol::Endpoint;
use crate::routing::{Routes, Target, UpstreamUrl};
use crate::spool::report::{self, DropReason, Dropped};
use crate::spool::{Queued, Record, Reschedule, Spool};
use crate::telemetry as t;
use crate::upstream::{Outcome, UpstreamClient};

/// Dispatch settings, taken from [`Config`].
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// Records leased per spool read.
    pub batch_size: usize,
    /// Deliveries in flight across all upstreams.
    pub max_in_flight: usize,
    /// Streams per HTTP/2 upstream.
    pub h2_concurrency: usize,
    /// Connections per HTTP/1.1 upstream.
    pub h1_connections: usize,
    /// First retry delay.
    pub retry_initial: Duration,
    /// Longest retry delay (and probe interval).
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
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 4)
}

#[derive(Default)]
struct Circuit {
    failing_since: Option<u64>,
    open: bool,
    probe_at: u64,
    probe_attempt: u32,
    probing: bool,
    held: Vec<u64>,
}

enum Admit {
    Send,
    Hold(u64),
}

/// Per-upstream state: concurrency slots and the circuit.
struct UpstreamState {
    name: UpstreamUrl,
    slots: Semaphore,
    widened: AtomicBool,
    circuit: Mutex<Circuit>,
}

impl UpstreamState {
    fn new(name: UpstreamUrl) -> UpstreamState {
        UpstreamState { name, slots: Semaphore::new(1), widened: AtomicBool::new(false), circuit: Mutex::default() }
    }

    fn circuit(&self) -> std::sync::MutexGuard<'_, Circuit> {
        self.circuit.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn widen(&self, version: http::Version, cfg: &DispatchConfig) {
        if !self.widened.swap(true, Ordering::AcqRel) {
            let width = if version == http::Version::HTTP_2 { cfg.h2_concurrency } else { cfg.h1_connections };
            self.slots.add_permits(width.saturating_sub(1));
        }
    }

    fn admit(&self, id: u64, now: u64, cfg: &DispatchConfig) -> Admit {
        let mut c = self.circuit();
        if !c.open {
            return Admit::Send;
        }
        if c.probing || now < c.probe_at {
            c.held.push(id);
            return Admit::Hold(c.probe_at.max(now + ms(cfg.retry_initial)));
        }
        c.probing = true;
        Admit::Send
    }

    /// Feeds an attempt's result to the circuit; returns the held records to release if it closed.
    fn observe(&self, transient: bool, now: u64, cfg: &DispatchConfig) -> Option<Vec<u64>> {
        let mut c = self.circuit();
        if !transient {
            c.failing_since = None;
            if c.open {
                c.open = false;
                c.probing = false;
                c.probe_attempt = 0;
                gauge!(t::CIRCUIT_OPEN, "upstream" => self.name.as_str().to_owned()).set(0.0);
                tracing::info!(
                    upstream = self.name.as_str(),
                    "upstream answers again; circuit closed, draining the backlog"
                );
                return Some(std::mem::take(&mut c.held));
            }
            return None;
        }
        if c.open {
            c.probing = false;
            c.probe_attempt = c.probe_attempt.saturating_add(1);
            c.probe_at = now + ms(backoff(c.probe_attempt, cfg.retry_initial, cfg.retry_max));
            return None;
        }
        let since = *c.failing_since.get_or_insert(now);
        if now.saturating_sub(since) >= ms(cfg.circuit_grace) {
            c.open = true;
            c.probe_attempt = 0;
            c.probe_at = now + ms(backoff(0, cfg.retry_initial, cfg.retry_max));
            gauge!(t::CIRCUIT_OPEN, "upstream" => self.name.as_str().to_owned()).set(1.0);
            tracing::warn!(
                upstream = self.name.as_str(),
                failing_for_ms = now - since,
                "upstream failing; circuit open: sending stops, probing with backoff, accepting into the spool"
            );
        }
        None
    }

    fn is_open(&self) -> bool {
        self.circuit().open
    }
}

/// Paces sends while a backlog drains after an outage (or at start with a backlog).
struct Pacer {
    rate: u32,
    active: bool,
    tokens: f64,
    last: std::time::Instant,
}

impl Pacer {
    fn new(rate: u32) -> Pacer {
        Pacer { rate, active: false, tokens: 0.0, last: std::time::Instant::now() }
    }

    fn start(&mut self) {
        if self.rate > 0 && !self.active {
            self.active = true;
            self.tokens = 0.0;
            self.last = std::time::Instant::now();
        }
    }

    /// How many sends may start now (usize::MAX when unpaced).
    fn available(&mut self) -> usize {
        if !self.active {
            return usize::MAX;
        }
        let now = std::time::Instant::now();
        let burst = (f64::from(self.rate) / 10.0).max(1.0);
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * f64::from(self.rate)).min(burst);
        self.last = now;
        self.tokens.floor() as usize
    }

    fn spend(&mut self, n: usize) {
        if self.active {
            self.tokens -= n as f64;
        }
    }

    fn next_token(&self) -> Duration {
        Duration::from_secs_f64(1.0 / f64::from(self.rate.max(1)))
    }
}

/// What a finished delivery asks of the spool.
enum Settle {
    /// Delivered, or rejected for good: remove.
    Ack(u64),
    /// Try again at this time; `bool`: counts as a failed attempt.
    Retry(u64, u64, bool),
    /// Dropped by the sidecar's policy: remove, count and report.
    Drop(u64, Box<Dropped>),
}

/// Failed attempts after which a refused envelope waits its backoff instead of going again at once.
const REFUSED_AT_ONCE: u32 = 3;

/// The dispatcher.
pub struct Dispatcher {
    spool: Arc<dyn Spool>,
    client: Option<Arc<UpstreamClient>>,
    capture: Arc<Capture>,
    upstreams: DashMap<UpstreamUrl, Arc<UpstreamState>>,
    limits: Arc<RateLimits>,
    recovered: AtomicBool,
    cfg: DispatchConfig,
    routes: Arc<Routes>,
}

impl Dispatcher {
    /// A dispatcher over `spool`; `client` is `None` when every record goes to the capture sink.
    pub fn new(
        spool: Arc<dyn Spool>,
        client: Option<Arc<UpstreamClient>>,
        capture: Arc<Capture>,
        limits: Arc<RateLimits>,
        routes: Arc<Routes>,
        cfg: DispatchConfig,
    ) -> Dispatcher {
        Dispatcher {
            spool,
            client,
            capture,
            upstreams: DashMap::new(),
            limits,
            recovered: AtomicBool::new(false),
            cfg,
            routes,
        }
    }

    /// Runs until `shutdown` turns true, then waits up to the shutdown timeout for deliveries in
    /// flight; whatever is not delivered stays in the spool.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let notify = self.spool.notify();
        let mut tasks: JoinSet<Settle> = JoinSet::new();
        let mut pacer = Pacer::new(self.cfg.drain_rate);
        if self.spool.len() as usize > self.cfg.batch_size {
            pacer.start();
        }
        let mut last_prune = now_ms();
        // Set when everything just read was held back by an open circuit: reading again before
        // then would only lease and hold the next fresh envelopes (a spool write each), however
        // fast the held deliveries settle.
        let mut blocked_until: Option<tokio::time::Instant> = None;
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            if self.recovered.swap(false, Ordering::AcqRel) {
                pacer.start();
                blocked_until = None;
            }
            if pacer.active && self.spool.len() as usize <= self.cfg.batch_size {
                pacer.active = false;
            }
            let mut room = self.cfg.max_in_flight.saturating_sub(tasks.len()).min(self.cfg.batch_size);
            if room < (self.cfg.max_in_flight / 4).max(1) && !tasks.is_empty() {
                // Wait for a quarter of the slots instead of reading a few rows at a time: a read
                // that misses the cache walks past every leased row first, so with a backlog
                // under load tiny reads cost the writer more than the deliveries they feed.
                room = 0;
            }
            let blocked = blocked_until.is_some_and(|t| t > tokio::time::Instant::now());
            let allowed = if blocked { 0 } else { room.min(pacer.available()) };
            let mut wait = None;
            if blocked {
                wait = blocked_until.map(|t| t.saturating_duration_since(tokio::time::Instant::now()));
            } else if allowed > 0 {
                match self.spool.read_batch(allowed, 8 * 1024 * 1024, now_ms()).await {
                    Ok(batch) => {
                        pacer.spend(batch.len());
                        let all_blocked = !batch.is_empty() && batch.iter().all(|q| self.is_blocked(q));
                        for q in batch {
                            tasks.spawn(self.clone().deliver(q));
                        }
                        if all_blocked {
                            // Everything due is waiting on an open circuit: stop reading until
                            // the probe answers or the next probe time, instead of churning.
                            wait = Some(self.cfg.retry_initial);
                            blocked_until = Some(tokio::time::Instant::now() + self.cfg.retry_initial);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "spool read failed");
                        wait = Some(Duration::from_millis(200));
                    }
                }
            } else if room > 0 {
                wait = Some(pacer.next_token());
            }
            let now = now_ms();
            if now.saturating_sub(last_prune) > 60_000 {
                self.limits.prune(now);
                last_prune = now;
            }
            let wait = wait.unwrap_or_else(|| match self.spool.next_due(now) {
                Some(due) => Duration::from_millis(due.saturating_sub(now).max(1)),
                None => Duration::from_secs(3600),
            });
            let reading_paused =
                allowed == 0 || wait < Duration::from_secs(3600) && tasks.len() >= self.cfg.max_in_flight;
            tokio::select! {
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    let mut settled = vec![done];
                    while let Some(more) = tasks.try_join_next() {
                        settled.push(more);
                    }
                    self.settle(settled).await;
                }
                _ = &mut notified, if !reading_paused => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => break,
            }
        }
        let deadline = tokio::time::Instant::now() + self.cfg.shutdown_timeout;
        let mut settled = Vec::new();
        while !tasks.is_empty() {
            match tokio::time::timeout_at(deadline, tasks.join_next()).await {
                Ok(Some(done)) => settled.push(done),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        left = tasks.len(),
                        "shutdown timeout: abandoning in-flight deliveries; they stay spooled"
                    );
                    tasks.abort_all();
                    break;
                }
            }
        }
        self.settle(settled).await;
    }

    fn is_blocked(&self, q: &Queued) -> bool {
        match &self.target_of(&q.record) {
            Target::Upstream(u) => self.upstreams.get(u).is_some_and(|s| s.is_open()),
            Target::Capture => false,
        }
    }

    async fn settle(&self, done: Vec<Result<Settle, tokio::task::JoinError>>) {
        let mut acks = Vec::new();
        let mut retries = Vec::new();
        let mut drops = Vec::new();
        let now = now_ms();
        for d in done {
            match d {
                Ok(Settle::Ack(id)) => acks.push(id),
                Ok(Settle::Retry(id, due_ms, count_attempt)) => retries.push(Reschedule { id, due_ms, count_attempt }),
                Ok(Settle::Drop(id, dropped)) => {
                    acks.push(id);
                    drops.push(*dropped);
                }
                // A delivery task cannot panic on input; if one did, its record stays leased until
                // restart rather than being lost.
                Err(e) => tracing::error!(error = %e, "delivery task failed"),
            }
        }
        if !acks.is_empty() {
            if let Err(e) = self.spool.ack(acks).await {
                tracing::warn!(error = %e, "spool ack failed");
            }
        }
        if !retries.is_empty() {
            if let Err(e) = self.spool.reschedule(retries).await {
                tracing::warn!(error = %e, "spool reschedule failed");
            }
        }
        let reports = report::account(&drops, now);
        if !reports.is_empty() {
            if let Err(e) = self.spool.append(reports).await {
                tracing::warn!(error = %e, "could not queue client reports");
            }
        }
        let hot = t::hot();
        hot.spool_envelopes.set(self.spool.len() as f64);
        hot.spool_bytes.set(self.spool.bytes() as f64);
    }

    fn upstream(&self, url: &UpstreamUrl) -> Arc<UpstreamState> {
        if let Some(l) = self.upstreams.get(url) {
            return l.clone();
        }
        self.upstreams.entry(url.clone()).or_insert_with(|| Arc::new(UpstreamState::new(url.clone()))).clone()
    }

    /// Where a record goes now: tunnel records keep their DSN's host; everything else follows the
    /// current routes, so a backlog follows a configuration change across a restart.
    fn target_of(&self, rec: &Record) -> Target {
        if rec.endpoint == Endpoint::Tunnel {
            rec.target.clone()
        } else {
            self.routes.target_for(rec.project_id, &rec.public_key)
        }
    }

    async fn deliver(self: Arc<Self>, q: Queued) -> Settle {
        let rec = &q.record;
        let target = self.target_of(rec);
        let url = match &target {
            Target::Capture => {
                return match self.capture.write(rec).await {
                    Ok(()) => {
                        counter!(t::FORWARDED, "outcome" => "captured").increment(1);
                        Settle::Ack(q.id)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, path = %self.capture.path().display(), "capture write failed");
                        self.retry(&q, "transient", None)
                    }
                };
            }
            Target::Upstream(url) => url,
        };
        let Some(client) = &self.client else {
            // Unreachable by construction (a client exists whenever a target is an upstream), but
            // never drop data over it.
            return self.retry(&q, "transient", None);
        };
        let now = now_ms();
        let scoping = Scoping { upstream: url, project: rec.project_id, key: &rec.public_key };
        if let Some(until) = self.limits.blocked_until(scoping, rec.categories, now) {
            return self.rate_limited(&q, until, now);
        }
        let state = self.upstream(url);
        if let Admit::Hold(until) = state.admit(q.id, now, &self.cfg) {
            return Settle::Retry(q.id, until, false);
        }
        let Ok(_slot) = state.slots.acquire().await else {
            return self.retry(&q, "transient", None);
        };
        let hot = t::hot();
        hot.in_flight.increment(1.0);
        let started = std::time::Instant::now();
        let elapsed = Duration::from_millis(now_ms().saturating_sub(rec.received_ms));
        let attempt = client.send(url, rec, elapsed).await;
        hot.in_flight.decrement(1.0);
        hot.upstream_latency.record(started.elapsed().as_secs_f64());
        hot.upstream_bytes.increment(attempt.sent_bytes as u64);
        if let Some(v) = attempt.version {
            state.widen(v, &self.cfg);
        }
        let now = now_ms();
        let transient = matches!(attempt.outcome, Outcome::Transient { .. });
        // A refusal says nothing about the upstream's health either way: the circuit stays as is.
        let released = match attempt.outcome {
            Outcome::Refused { .. } => None,
            _ => state.observe(transient, now, &self.cfg),
        };
        let settle = match attempt.outcome {
            Outcome::Delivered { limits } => {
                hot.attempts_2xx.increment(1);
                hot.delivered.increment(1);
                self.limits.apply(scoping, &limits, now);
                Settle::Ack(q.id)
            }
            Outcome::Rejected { status, detail, limits } => {
                counter!(t::UPSTREAM_ATTEMPTS, "result" => "4xx").increment(1);
                counter!(t::FORWARDED, "outcome" => "rejected").increment(1);
                self.limits.apply(scoping, &limits, now);
                for c in rec.categories.iter() {
                    counter!(t::DROPPED, "reason" => "upstream_rejected", "category" => c.name()).increment(1);
                }
                tracing::warn!(
                    status,
                    detail = detail.as_deref().unwrap_or("-"),
                    project = rec.project_id,
                    event_id = rec.event_id.as_deref().unwrap_or("-"),
                    upstream = url.as_str(),
                    "upstream rejected the envelope for good; dropped"
                );
                Settle::Ack(q.id)
            }
            Outcome::RateLimited { retry_after, limits } => {
                counter!(t::UPSTREAM_ATTEMPTS, "result" => "429").increment(1);
                if limits.is_empty() {
                    self.limits.apply_all(scoping, now + ms(retry_after));
                } else {
                    self.limits.apply(scoping, &limits, now);
                }
                let until = self.limits.blocked_until(scoping, rec.categories, now).unwrap_or(now + ms(retry_after));
                tracing::info!(
                    upstream = url.as_str(),
                    retry_after_ms = until.saturating_sub(now),
                    "rate limited by the upstream"
                );
                match self.cfg.rate_limit_policy {
                    RateLimitPolicy::Hold if until.saturating_sub(rec.received_ms) <= ms(self.cfg.max_hold) => {
                        counter!(t::RETRIES, "reason" => "rate_limited").increment(1);
                        Settle::Retry(q.id, until, false)
                    }
                    _ => {
                        // Sentry counted what it answered 429 to: count it here, report nothing.
                        for c in rec.categories.iter() {
                            counter!(t::DROPPED, "reason" => "upstream_rate_limited", "category" => c.name())
                                .increment(1);
                        }
                        Settle::Ack(q.id)
                    }
                }
            }
            Outcome::Refused { reason } => {
                counter!(t::UPSTREAM_ATTEMPTS, "result" => "refused").increment(1);
                tracing::debug!(reason, upstream = url.as_str(), attempts = q.attempts, "upstream did not process it");
                if q.attempts < REFUSED_AT_ONCE {
                    // Counted, so an upstream that refuses everything meets the normal backoff.
                    counter!(t::RETRIES, "reason" => "refused").increment(1);
                    Settle::Retry(q.id, now, true)
                } else {
                    self.retry(&q, "refused", None)
                }
            }
            Outcome::Transient { reason } => {
                let label = if reason.starts_with("status") { "5xx" } else { "error" };
                counter!(t::UPSTREAM_ATTEMPTS, "result" => label).increment(1);
                tracing::debug!(reason, upstream = url.as_str(), attempts = q.attempts, "transient upstream failure");
                self.retry(&q, "transient", None)
            }
        };
        if let Some(mut held) = released {
            self.recovered.store(true, Ordering::Release);
            held.retain(|i| *i != q.id);
            if !held.is_empty() {
                if let Err(e) = self.spool.reschedule(release(&held)).await {
                    tracing::warn!(error = %e, "could not release held envelopes; they wait for their hold time");
                }
            }
        }
        settle
    }

    fn rate_limited(&self, q: &Queued, until: u64, now: u64) -> Settle {
        let rec = &q.record;
        for c in rec.categories.iter() {
            counter!(t::RATE_LIMITED, "category" => c.name()).increment(1);
        }
        let within_hold = until.saturating_sub(rec.received_ms) <= ms(self.cfg.max_hold);
        match self.cfg.rate_limit_policy {
            RateLimitPolicy::Hold if within_hold => Settle::Retry(q.id, until.max(now + 1), false),
            _ => Settle::Drop(q.id, Box::new(Dropped::of(rec, DropReason::RateLimited))),
        }
    }

    fn retry(&self, q: &Queued, reason: &'static str, after: Option<Duration>) -> Settle {
        counter!(t::RETRIES, "reason" => reason).increment(1);
        let delay = after.unwrap_or_else(|| backoff(q.attempts, self.cfg.retry_initial, self.cfg.retry_max));
        Settle::Retry(q.id, now_ms() + ms(delay), true)
    }
}

fn release(ids: &[u64]) -> Vec<Reschedule> {
    let now = now_ms();
    ids.iter().map(|&id| Reschedule { id, due_ms: now, count_attempt: false }).collect()
}
