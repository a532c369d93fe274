//! The durable spool: SQLite in WAL mode, owned by one writer thread.
//!
//! Every operation is a command sent to that thread. The thread takes whatever commands are queued
//! (appends from many connections, reads, acks, reschedules) and applies them in one transaction,
//! then answers them all: appends are group-committed, and with `durability = process`
//! (`synchronous=NORMAL`) a commit reaches the OS before any of them is answered, which survives
//! `kill -9`; with `power` (`synchronous=FULL`) the WAL is fsync'd first.
//!
//! Leases live in the writer's memory, not in the rows: reading needs no write, and a record
//! being sent when the process died is simply sent again after the restart; Sentry deduplicates
//! by event id. Bodies above `inline_limit` go to files beside the database, written before their
//! row commits, so the database stays small. A database that cannot be opened, or that turns out
//! corrupt, is renamed aside (`spool.db.corrupt-<time>`) and a fresh one started.
//!
//! The time the spool goes by (due times, ages, client reports' timestamps) is its
//! [`SqliteOptions::clock`], read where commands are sent and carried to the writer with them, so
//! that tests can run it on tokio's paused clock.
//!
//! The files, one concern each: `handoff` (commands to the writer and answers back, once per
//! tick), `writer` (the writer thread: groups, transactions, failures), `db` (the writer's state
//! and opening the database), `queries` (the SQL), `rows` (records as rows and body files),
//! `cache` (records appended and not yet read), `wal` (checkpoints and the WAL flusher), `space`
//! (a full disk) and `recovery` (a corrupt database).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::{BoxFuture, Queued, Record, Reschedule, Spool, SpoolError};
use crate::clock::Clock;
use crate::config::{DeliveryOrder, Durability, FullPolicy};
use db::Db;
use handoff::{Cmd, Submit};

mod cache;
mod db;
mod handoff;
mod queries;
mod recovery;
mod rows;
mod space;
mod wal;
mod writer;

#[cfg(test)]
mod tests;

/// Settings of the SQLite spool.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Directory holding `spool.db` and `bodies/`.
    pub dir: PathBuf,
    /// `Process` or `Power` (memory durability wraps this spool, see `tiered`).
    pub durability: Durability,
    /// Byte bound of everything waiting.
    pub max_bytes: u64,
    /// Age bound: older envelopes are dropped.
    pub max_age: Duration,
    /// What a full spool does with new data.
    pub full_policy: FullPolicy,
    /// Which due envelopes go first.
    pub order: DeliveryOrder,
    /// Bodies larger than this are stored as files.
    pub inline_limit: usize,
    /// Test hook: cap the database at this many pages, so that "disk full" can be produced.
    pub max_page_count: Option<u64>,
    /// Where "now" comes from ([`Clock::system`] but in tests).
    pub clock: Clock,
}

/// What the writer publishes for the spool's callers, read without asking it.
#[derive(Default)]
struct Shared {
    len: AtomicU64,
    bytes: AtomicU64,
    next_due: AtomicU64,
    /// `received_ms` of the oldest row (0: none).
    oldest: AtomicU64,
    /// The last failed write, for readiness.
    error: Mutex<Option<String>>,
    /// How many records dispatch waits for (0: it is not waiting); taken by the next group
    /// with appends, which leases them into `fresh`.
    wanted: AtomicUsize,
    /// Records leased for dispatch with an append's group, until it takes them.
    fresh: Mutex<Vec<Queued>>,
}

/// The SQLite-backed spool.
pub struct SqliteSpool {
    submit: Arc<Mutex<Submit>>,
    shared: Arc<Shared>,
    notify: Arc<Notify>,
    /// Read when commands are handed to the writer, which has no clock of its own.
    clock: Clock,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Writes the WAL back ahead of checkpoints when the writer wakes it (`durability =
    /// process` only); taken at close to stop its thread.
    flusher: Mutex<Option<wal::Flusher>>,
    /// The spool's directory, for `disk_bytes`.
    dir: PathBuf,
}

impl SqliteSpool {
    /// Opens (or creates) the spool in `opts.dir`, quarantining a database that cannot be used.
    pub fn open(opts: SqliteOptions) -> Result<SqliteSpool, SpoolError> {
        Self::open_with_notify(opts, Arc::new(Notify::new()))
    }

    /// Like [`SqliteSpool::open`], waking `notify` on appends and reschedules.
    pub fn open_with_notify(opts: SqliteOptions, notify: Arc<Notify>) -> Result<SqliteSpool, SpoolError> {
        std::fs::create_dir_all(opts.dir.join("bodies"))?;
        // Uploads a previous process was streaming when it stopped belong to no row.
        super::remove_parts(&opts.dir);
        let flusher = wal::Flusher::start(&opts)?;
        let waker = flusher.as_ref().and_then(wal::Flusher::waker);
        let (dir, clock) = (opts.dir.clone(), opts.clock);
        let now = clock.now_ms();
        let db = Db::open_or_quarantine(opts, now)?;
        let shared = Arc::new(Shared::default());
        db.publish(&shared);
        let (tx, rx) = mpsc::channel();
        let (s2, n2) = (shared.clone(), notify.clone());
        let thread = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer::run(db, now, rx, s2, n2, waker))?;
        let submit = Arc::new(Mutex::new(Submit::new(tx)));
        Ok(SqliteSpool {
            submit,
            shared,
            notify,
            clock,
            thread: Mutex::new(Some(thread)),
            flusher: Mutex::new(flusher),
            dir,
        })
    }
}

/// Locks `m`, going on with the data if a panicking thread poisoned it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Spool for SqliteSpool {
    fn append(&self, records: Vec<Record>) -> BoxFuture<'_, Result<(), SpoolError>> {
        let records = records.into_iter().map(Arc::new).collect();
        self.call(|r| Cmd::Append(records, r))
    }

    fn read_batch(
        &self,
        max_count: usize,
        max_bytes: usize,
        now_ms: u64,
    ) -> BoxFuture<'_, Result<Vec<Queued>, SpoolError>> {
        self.call(|reply| Cmd::Read { max: max_count, max_bytes, now: now_ms, reply })
    }

    fn ack(&self, ids: Vec<u64>) -> BoxFuture<'_, Result<(), SpoolError>> {
        self.call(|r| Cmd::Ack(ids, r))
    }

    fn ack_soon(&self, ids: Vec<u64>) -> BoxFuture<'_, Result<(), SpoolError>> {
        self.call_lazy(|r| Cmd::Ack(ids, r))
    }

    fn want_fresh(&self, max_count: usize) {
        self.shared.wanted.store(max_count, Ordering::Release);
    }

    fn take_fresh(&self) -> Vec<Queued> {
        self.shared.wanted.store(0, Ordering::Release);
        std::mem::take(&mut *lock(&self.shared.fresh))
    }

    fn reschedule(&self, items: Vec<Reschedule>) -> BoxFuture<'_, Result<(), SpoolError>> {
        self.call(|r| Cmd::Reschedule(items, r))
    }

    fn len(&self) -> u64 {
        self.shared.len.load(Ordering::Acquire)
    }

    fn bytes(&self) -> u64 {
        self.shared.bytes.load(Ordering::Acquire)
    }

    fn next_due(&self, now_ms: u64) -> Option<u64> {
        let d = self.shared.next_due.load(Ordering::Acquire);
        (d != 0).then_some(d.max(now_ms + 1))
    }

    fn notify(&self) -> Arc<Notify> {
        self.notify.clone()
    }

    fn writable(&self) -> Result<(), String> {
        match lock(&self.shared.error).as_ref() {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn oldest_ms(&self) -> Option<u64> {
        let o = self.shared.oldest.load(Ordering::Acquire);
        (o != 0).then_some(o)
    }

    fn disk_bytes(&self) -> Option<u64> {
        // The database, its WAL and the bodies kept as files; a stat per file, on a scrape.
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let bodies = std::fs::read_dir(self.dir.join("bodies"))
            .map(|d| d.filter_map(Result::ok).map(|e| e.metadata().map_or(0, |m| m.len())).sum::<u64>())
            .unwrap_or(0);
        Some(size(&Db::db_path(&self.dir)) + size(&Db::wal_path(&self.dir)) + bodies)
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        let now = self.clock.now_ms();
        lock(&self.submit).close(now);
        lock(&self.flusher).take();
        let handle = lock(&self.thread).take();
        Box::pin(async move {
            if let Some(h) = handle {
                let _ = tokio::task::spawn_blocking(move || h.join()).await;
            }
        })
    }
}
