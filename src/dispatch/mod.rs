//! The pump from the spool to the upstreams.
//!
//! One loop leases due records in batches, runs each delivery as a task (bounded by free slots and,
//! while a backlog drains after an outage, by a token bucket), and settles the results in batches:
//! delivered or dropped records are acked, everything else is rescheduled.
//!
//! Before a record is sent, two gates apply:
//! - the rate-limit table ([`RateLimits`]): if every data category of the record is limited, it is
//!   held until the limit ends (or dropped, by policy), without an upstream request;
//! - the end of a rate limit the upstream announced: one envelope of the scope probes, the rest
//!   wait for its answer (`expiry`);
//! - the upstream's circuit: after `circuit_failures` transient failures in a row, sending stops;
//!   one record at a time probes the upstream, backing off up to `probe_max_interval`, and the
//!   first real answer closes the circuit, releases the held records and starts a paced drain.
//!
//! Each upstream also starts with a single slot, so the first request opens one connection and
//! learns by ALPN whether the upstream speaks HTTP/2; only its first real answer widens it, to
//! `h2_concurrency` streams over that one connection, or, over HTTP/1.1, as many keep-alive
//! connections as the work needs, up to `h1_connections` (`width`).
//!
//! On shutdown nothing new starts: a delivery that has not reached the transport yet puts its
//! record back, and only the requests already in flight get the shutdown timeout.
//!
//! This file holds the loop and the side effects (spool, metrics, logs, the rate-limit table),
//! with `upstream_state` (one upstream's slots, circuit and gates behind their locks), `verdict`
//! (what an answer counts, logs and means) and `settings` (dispatch's part of the configuration)
//! beside it; the decisions live in files of their own, free of that state, so they are tested without a network or a
//! clock:
//! `circuit` (when to stop and probe), `expiry` (the probe at the end of a rate limit), `width`
//! (the slots), `pacer` (the drain's token bucket), `decide` (what a delivery asks of the spool),
//! `request` (a record as the request the transport sends), `quiet` (repeated log lines as one
//! line with a count), `story` (a backlog's start, progress and end, told at info level) and
//! [`backoff()`]. Every due time comes from the [`Clock`] the dispatcher is given, so its timing
//! tests run on tokio's paused clock.

mod backoff;
mod circuit;
mod decide;
mod expiry;
mod file_body;
mod pacer;
mod quiet;
mod request;
mod settings;
mod story;
mod upstream_state;
mod verdict;
mod width;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use metrics::{counter, gauge};
use tokio::sync::{watch, Semaphore, SemaphorePermit, TryAcquireError};
use tokio::task::JoinSet;
use tokio::time::Instant;

pub use backoff::backoff;
pub use settings::DispatchConfig;

use self::circuit::{Admit, Change, Circuit, Timing};
use self::decide::{decide, Policy, Settle, Verdict};
use self::expiry::{Answer, Gates};
use self::pacer::Pacer;
use self::quiet::Quiet;
use self::request::Compression;
use self::story::Drain;
use self::upstream_state::UpstreamState;
use self::width::Width;
use crate::capture::Capture;
use crate::clock::Clock;
use crate::limits::{RateLimits, Scoping};
use crate::protocol::Endpoint;
use crate::routing::{Routes, Target, UpstreamUrl};
use crate::spool::report;
use crate::spool::{Queued, Record, Reschedule, Spool};
use crate::status::UpstreamStatus;
use crate::telemetry as t;
use crate::upstream::{Attempt, Failure, Outcome, UpstreamClient};

/// A duration in milliseconds, saturating far below `u64::MAX` so that `now + ms(d)` cannot overflow.
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 4)
}

/// Locks `m`, going on with the data if a panicking thread poisoned it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Logs a failed spool write, summarised (on a full disk every one fails).
fn spool_failed(log: &Mutex<Quiet>, what: &'static str, e: &crate::spool::SpoolError, now: u64) {
    if let Some(failures) = lock(log).hit(now) {
        tracing::warn!(error = %e, what, failures, "spool write failed; the spool retries it, nothing is sent again");
    }
}

/// The dispatcher.
pub struct Dispatcher {
    spool: Arc<dyn Spool>,
    client: Option<Arc<UpstreamClient>>,
    capture: Arc<Capture>,
    upstreams: DashMap<UpstreamUrl, Arc<UpstreamState>>,
    limits: Arc<RateLimits>,
    recovered: AtomicBool,
    cfg: DispatchConfig,
    policy: Policy,
    compression: Compression,
    routes: Arc<Routes>,
    clock: Clock,
    /// Set at shutdown: nothing new starts.
    stopping: AtomicBool,
    /// Failed spool writes since the last line about them.
    spool_log: Arc<Mutex<Quiet>>,
    /// What `/readyz` shows of each upstream's circuit.
    status: Arc<UpstreamStatus>,
    /// Records in delivery tasks, and whether they were released while there: a release must
    /// not reschedule a row a task holds (the row would be read and sent a second time while the
    /// task still has it), so the task's own retry is made due at once instead.
    in_tasks: Mutex<std::collections::HashMap<u64, bool>>,
}

impl Dispatcher {
    /// A dispatcher over `spool`; `client` is `None` when every record goes to the capture sink.
    /// `clock` gives every due time and age (the system's, or tokio's in timing tests).
    pub fn new(
        spool: Arc<dyn Spool>,
        client: Option<Arc<UpstreamClient>>,
        capture: Arc<Capture>,
        limits: Arc<RateLimits>,
        routes: Arc<Routes>,
        cfg: DispatchConfig,
        clock: Clock,
    ) -> Dispatcher {
        Dispatcher {
            spool,
            client,
            capture,
            upstreams: DashMap::new(),
            limits,
            recovered: AtomicBool::new(false),
            policy: cfg.policy(),
            compression: Compression { encoding: cfg.compression, level: cfg.gzip_level },
            cfg,
            routes,
            clock,
            stopping: AtomicBool::new(false),
            spool_log: Arc::new(Mutex::new(Quiet::default())),
            status: Arc::new(UpstreamStatus::new()),
            in_tasks: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Reports each upstream's circuit (open, why, since when) to `status`, which `/readyz` shows.
    pub fn with_status(mut self, status: Arc<UpstreamStatus>) -> Dispatcher {
        self.status = status;
        self
    }

    /// Runs until `shutdown` turns true, then waits up to the shutdown timeout for deliveries in
    /// flight; whatever is not delivered stays in the spool.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let notify = self.spool.notify();
        let mut tasks: JoinSet<Settle> = JoinSet::new();
        // Acks on their way to the spool (not awaited by the loop: see `settle`).
        let mut acking: JoinSet<()> = JoinSet::new();
        let mut pacer = Pacer::new(self.cfg.drain_rate, Instant::now());
        let mut drain = Drain::default();
        let batch = self.cfg.batch_size as u64;
        if self.spool.len() > batch {
            pacer.start(Instant::now());
            drain.start(self.clock.now_ms(), self.spool.len());
        }
        let mut last_prune = self.clock.now_ms();
        // Set when everything just read was held back by an open circuit: reading again before
        // then would only lease and hold the next fresh envelopes (a spool write each), however
        // fast the held deliveries settle.
        let mut blocked_until: Option<Instant> = None;
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            while acking.try_join_next().is_some() {}

            if self.recovered.swap(false, Ordering::AcqRel) {
                pacer.start(Instant::now());
                blocked_until = None;
                if self.spool.len() > batch {
                    drain.start(self.clock.now_ms(), self.spool.len());
                }
            }
            if let Some(line) = drain.tick(self.clock.now_ms(), self.spool.len(), batch) {
                Drain::log(line);
            }
            if pacer.is_active() && self.spool.len() as usize <= self.cfg.batch_size {
                pacer.stop();
            }
            let mut room = self.cfg.max_in_flight.saturating_sub(tasks.len()).min(self.cfg.batch_size);
            if room < (self.cfg.max_in_flight / 4).max(1) && !tasks.is_empty() {
                // Wait for a quarter of the slots instead of reading a few rows at a time: a read
                // that misses the cache walks past every leased row first, so with a backlog
                // under load tiny reads cost the writer more than the deliveries they feed.
                room = 0;
            }
            let blocked = blocked_until.is_some_and(|t| t > Instant::now());
            let allowed = if blocked { 0 } else { room.min(pacer.available(Instant::now())) };
            // Records the spool leased for us with an append (after `want_fresh`): they are ours
            // whatever the room now, and spare the read.
            let fresh = self.spool.take_fresh();
            let mut wait = None;
            if blocked && fresh.is_empty() {
                wait = blocked_until.map(|t| t.saturating_duration_since(Instant::now()));
            } else if allowed > 0 || !fresh.is_empty() {
                let read = if fresh.is_empty() {
                    self.spool.read_batch(allowed, 8 * 1024 * 1024, self.clock.now_ms()).await
                } else {
                    Ok(fresh)
                };
                match read {
                    Ok(batch) => {
                        if batch.len() < allowed {
                            // Everything due is taken: the next records may come with an append.
                            self.spool.want_fresh(allowed - batch.len());
                        }
                        pacer.spend(batch.len());
                        if !batch.is_empty() {
                            let oldest = batch.iter().map(|q| q.record.received_ms).min();
                            if let Some(line) = drain.read(self.clock.now_ms(), oldest) {
                                Drain::log(line);
                            }
                        }
                        let all_blocked = !batch.is_empty() && batch.iter().all(|q| self.is_blocked(q));
                        {
                            let mut in_tasks = lock(&self.in_tasks);
                            in_tasks.extend(batch.iter().map(|q| (q.id, false)));
                        }
                        for q in batch {
                            tasks.spawn(self.clone().deliver(q));
                        }
                        if all_blocked {
                            // Everything due is waiting on an open circuit: stop reading until
                            // the probe answers or the next probe time, instead of churning.
                            self.spool.want_fresh(0);
                            wait = Some(self.cfg.retry_initial);
                            blocked_until = Some(Instant::now() + self.cfg.retry_initial);
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
            let now = self.clock.now_ms();
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
                    drain.sent(self.settle(settled, &mut acking).await);
                }
                _ = &mut notified, if !reading_paused => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => break,
            }
        }
        // Nothing new starts from here: deliveries waiting for a slot put their records back.
        self.stopping.store(true, Ordering::Release);
        for u in self.upstreams.iter() {
            u.slots.close();
        }
        let deadline = Instant::now() + self.cfg.shutdown_timeout;
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
        self.settle(settled, &mut acking).await;
        // Every ack is in the spool before it closes: one left behind would send its record
        // again after the restart.
        while acking.join_next().await.is_some() {}
    }

    fn is_blocked(&self, q: &Queued) -> bool {
        match &self.target_of(&q.record) {
            Target::Upstream(u) => self.upstreams.get(u).is_some_and(|s| s.is_open()),
            Target::Capture => false,
        }
    }

    /// Acks, reschedules and reports what the finished deliveries ask; returns how many records
    /// left the spool for good.
    async fn settle(&self, done: Vec<Result<Settle, tokio::task::JoinError>>, acking: &mut JoinSet<()>) -> usize {
        let mut acks = Vec::new();
        let mut retries = Vec::new();
        let mut drops = Vec::new();
        let now = self.clock.now_ms();
        {
            let mut in_tasks = lock(&self.in_tasks);
            for d in done {
                match d {
                    Ok(Settle::Ack { id }) => {
                        in_tasks.remove(&id);
                        acks.push(id)
                    }
                    Ok(Settle::Retry { id, due_ms, count_attempt }) => {
                        let released = in_tasks.remove(&id).unwrap_or(false);
                        let due_ms = if released { due_ms.min(now) } else { due_ms };
                        retries.push(Reschedule { id, due_ms, count_attempt })
                    }
                    Ok(Settle::Drop { id, dropped }) => {
                        in_tasks.remove(&id);
                        acks.push(id);
                        drops.push(*dropped);
                    }
                    // A delivery task cannot panic on input; if one did, its record stays leased until
                    // restart rather than being lost.
                    Err(e) => tracing::error!(error = %e, "delivery task failed"),
                }
            }
        }
        // A failed ack or reschedule keeps its records leased in the spool, which retries the
        // write (not the send); the lines are summarised, as on a full disk every one fails.
        let finished = acks.len();
        if !acks.is_empty() {
            // Not awaited: the ack may wait to ride with the next append (`Spool::ack_soon`), and
            // the records stay leased until it commits, so nothing is read and sent again.
            let (spool, log) = (self.spool.clone(), self.spool_log.clone());
            acking.spawn(async move {
                if let Err(e) = spool.ack_soon(acks).await {
                    spool_failed(&log, "ack", &e, now);
                }
            });
        }
        if !retries.is_empty() {
            if let Err(e) = self.spool.reschedule(retries).await {
                spool_failed(&self.spool_log, "reschedule", &e, now);
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
        finished
    }

    fn upstream(&self, url: &UpstreamUrl) -> Arc<UpstreamState> {
        if let Some(l) = self.upstreams.get(url) {
            return l.clone();
        }
        let timing = self.cfg.timing();
        let now = self.clock.now_ms();
        self.upstreams
            .entry(url.clone())
            .or_insert_with(|| Arc::new(UpstreamState::new(url.clone(), timing, now)))
            .clone()
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

    /// Delivers one leased record and says what the spool should do with it.
    async fn deliver(self: Arc<Self>, q: Queued) -> Settle {
        let verdict = match self.target_of(&q.record) {
            Target::Capture => self.capture(&q.record).await,
            Target::Upstream(url) => self.send(&q, &url).await,
        };
        let settle = decide(verdict, &q, &self.policy, self.clock.now_ms());
        match (&settle, verdict) {
            (Settle::Retry { .. }, v) => {
                if let Some(reason) = v.retry_reason() {
                    counter!(t::RETRIES, "reason" => reason).increment(1);
                }
            }
            (Settle::Ack { .. }, Verdict::UpstreamLimited { .. }) => {
                // Sentry counted what it answered 429 to: count it here, report nothing.
                for c in q.record.categories.iter() {
                    counter!(t::DROPPED, "reason" => "upstream_rate_limited", "category" => c.name()).increment(1);
                }
            }
            _ => {}
        }
        settle
    }

    async fn capture(&self, rec: &Record) -> Verdict {
        match self.capture.write(rec).await {
            Ok(()) => {
                counter!(t::FORWARDED, "outcome" => "captured").increment(1);
                Verdict::Delivered
            }
            Err(e) => {
                tracing::warn!(error = %e, path = %self.capture.path().display(), "capture write failed");
                Verdict::Failed
            }
        }
    }

    /// Passes the record through the rate-limit table and the circuit, sends it if both let it,
    /// and feeds the answer back to them.
    async fn send(&self, q: &Queued, url: &UpstreamUrl) -> Verdict {
        let rec = &q.record;
        let Some(client) = &self.client else {
            // Unreachable by construction (a client exists whenever a target is an upstream), but
            // never drop data over it.
            return Verdict::Failed;
        };
        let now = self.clock.now_ms();
        let scoping = Scoping { upstream: url, project: rec.project_id, key: &rec.public_key };
        if let Some(until) = self.limits.blocked_until(scoping, rec.categories, now) {
            for c in rec.categories.iter() {
                counter!(t::RATE_LIMITED, "category" => c.name()).increment(1);
            }
            return Verdict::Limited { until };
        }
        let state = self.upstream(url);
        let (project, key) = (rec.project_id, &*rec.public_key);
        {
            let mut gates = lock(&state.gates);
            if !gates.is_empty() {
                if let expiry::Admit::Hold(until) = gates.admit(project, key, q.id, now) {
                    return Verdict::Held { until };
                }
            }
        }
        // Not sent after all (shutdown, or held by the circuit): if it was the gate's probe, the
        // next envelope probes instead.
        let unsent = |until: u64| {
            lock(&state.gates).abandon(q.id);
            Verdict::Held { until }
        };
        let Some(slot) = state.slot().await else {
            return unsent(self.clock.now_ms());
        };
        let now = self.clock.now_ms();
        if self.stopping.load(Ordering::Acquire) {
            return unsent(now);
        }
        // Admitted after the slot, not before: requests that queued for it while the circuit
        // opened are held then, instead of each failing on its own connection attempt.
        if let Admit::Hold(until) = state.admit(q.id, now) {
            return unsent(until);
        }
        let attempt = self.exchange(client, rec, url).await;
        let done = self.clock.now_ms();
        let real = !matches!(attempt.outcome, Outcome::Transient { .. } | Outcome::Refused { .. });
        if let (true, Some(v)) = (real, attempt.version) {
            state.learn(v, &self.cfg);
        }
        state.finished(slot, done.saturating_sub(now), done);
        let closed = state.observe(q.id, &attempt.outcome, done, &self.status, self.cfg.probe_max_interval);
        let recovered = closed.is_some();
        let mut released = closed.unwrap_or_default();
        let mut verdict = self.verdict(&state, attempt.outcome, scoping, q, done);
        if verdict == Verdict::Failed && state.is_open() {
            // In flight when the circuit opened: it waits with the held ones for the probe's
            // answer, not for its own backoff (minutes, after a few attempts).
            // Still a failed attempt, counted as the retry it is.
            counter!(t::RETRIES, "reason" => "transient").increment(1);
            verdict = Verdict::Held { until: state.circuit().hold(q.id, done) };
        }
        let answer = match verdict {
            Verdict::UpstreamLimited { until } => {
                lock(&state.gates).limited(project, key, until);
                Answer::Limited(until)
            }
            Verdict::Delivered | Verdict::Rejected => Answer::Accepted,
            _ => Answer::None,
        };
        {
            let mut gates = lock(&state.gates);
            if !gates.is_empty() {
                released.extend(gates.answered(project, key, q.id, answer));
            }
        }
        if recovered || !released.is_empty() {
            self.release(released, q.id, recovered).await;
        }
        verdict
    }

    /// Builds the request and sends it, counted as in flight and timed.
    async fn exchange(&self, client: &UpstreamClient, rec: &Record, url: &UpstreamUrl) -> Attempt {
        let hot = t::hot();
        hot.in_flight.increment(1.0);
        let started = std::time::Instant::now();
        let elapsed = Duration::from_millis(self.clock.now_ms().saturating_sub(rec.received_ms));
        let attempt = match request::build(rec, url, self.compression, elapsed).await {
            Ok(req) => client.send(req).await,
            Err(e) => Attempt::rejected(e.to_string()),
        };
        hot.in_flight.decrement(1.0);
        hot.upstream_latency.record(started.elapsed().as_secs_f64());
        hot.upstream_bytes.increment(attempt.sent_bytes as u64);
        attempt
    }

    /// Sends held records again at once (but `own`, which settles itself); after an outage
    /// (`recovered`), has the loop pace the drain.
    async fn release(&self, mut held: Vec<u64>, own: u64, recovered: bool) {
        if recovered {
            self.recovered.store(true, Ordering::Release);
        }
        held.retain(|i| *i != own);
        {
            let mut in_tasks = lock(&self.in_tasks);
            held.retain(|i| match in_tasks.get_mut(i) {
                Some(released) => {
                    *released = true;
                    false
                }
                None => true,
            });
        }
        if held.is_empty() {
            return;
        }
        let now = self.clock.now_ms();
        let items = held.into_iter().map(|id| Reschedule { id, due_ms: now, count_attempt: false }).collect();
        if let Err(e) = self.spool.reschedule(items).await {
            tracing::warn!(error = %e, "could not release held envelopes; they wait for their hold time");
        }
    }
}

#[cfg(test)]
mod tests;
