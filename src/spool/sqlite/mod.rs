//! The durable spool: SQLite in WAL mode, owned by one writer thread.
//!
//! Every operation is a command sent to that thread. The thread takes whatever commands are queued
//! (appends from many connections, reads, acks, reschedules) and applies them in one transaction,
//! then answers them all: appends are group-committed, and with `durability = process`
//! (`synchronous=NORMAL`) a commit reaches the OS before any of them is answered, which survives
//! `kill -9`; with `power` (`synchronous=FULL`) the WAL is fsync'd first.
//!
//! Commands are handed to the thread once per scheduler tick, not one by one: waking the thread
//! for each command made it preempt the runtime after every request on a single core (groups of
//! one, two context switches per envelope). A command is queued, and the first one of a tick
//! spawns a task that yields once (so it runs after every task that is ready now) and then sends
//! the whole queue in one message. The answers go back the same way: the writer sends them to
//! that task in one piece and it answers the callers on the runtime thread (one cross-thread
//! wake-up per tick, not one per command).
//!
//! Checkpoints (copying the WAL back into the database) are run by the writer after it has sent a
//! group's answers, not by SQLite inside the commit that crossed the threshold: that commit's
//! requests would all wait for the copy and its fsyncs. They come at 1,000 WAL pages but at most
//! every 100 ms below 4,000 pages: at a few connections the WAL fills with copies of the same
//! few pages in a few tens of milliseconds, and each checkpoint was a stall every request saw. With
//! `durability = process` a small thread also writes the WAL's dirty pages back every 20 ms, so
//! the fsync that every checkpoint starts with finds little to do and stalls the writer (and
//! every request waiting on it) for a fraction of a millisecond instead of several.
//!
//! Leases live in the writer's memory, not in the rows: reading needs no write, and a record
//! being sent when the process died is simply sent again after the restart; Sentry deduplicates
//! by event id. Bodies above `inline_limit` go to files beside the database, written before their
//! row commits, so the database stays small. A database that cannot be opened, or that turns out
//! corrupt, is renamed aside (`spool.db.corrupt-<time>`) and a fresh one started.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rusqlite::{params, Connection, ErrorCode, OptionalExtension};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, Notify};

use super::report::{self, DropReason, Dropped};
use super::{now_ms, BoxFuture, Endpoint, Queued, Record, Reschedule, Spool, SpoolError, Target};
use crate::config::{DeliveryOrder, Durability, FullPolicy};
use crate::protocol::Categories;
use crate::routing::UpstreamUrl;

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
}

type Reply<T> = oneshot::Sender<Result<T, SpoolError>>;

/// Answers for one hand-off, sent back in one piece, plus whether dispatch has new work.
type Answers = (Vec<(Cmd, Out)>, bool);

/// One tick's commands. With `relay`, the writer sends every answer back through it in one wake
/// and the runtime thread answers the callers: one cross-thread wake-up (an `eventfd` write on
/// a current-thread runtime) per tick instead of one per command.
struct Handoff {
    cmds: Vec<Cmd>,
    relay: Option<oneshot::Sender<Answers>>,
}

enum Cmd {
    Append(Vec<Arc<Record>>, Reply<()>),
    Read { max: usize, max_bytes: usize, now: u64, reply: Reply<Vec<Queued>> },
    Ack(Vec<u64>, Reply<()>),
    Reschedule(Vec<Reschedule>, Reply<()>),
}

#[derive(Default)]
struct Shared {
    len: AtomicU64,
    bytes: AtomicU64,
    next_due: AtomicU64,
    error: Mutex<Option<String>>,
}

/// The SQLite-backed spool.
pub struct SqliteSpool {
    submit: Arc<Mutex<Submit>>,
    shared: Arc<Shared>,
    notify: Arc<Notify>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Dropped to stop the WAL flusher thread (`durability = process` only).
    flusher: Mutex<Option<mpsc::Sender<()>>>,
    /// The spool's directory, for `disk_bytes`.
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    endpoint: String,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    project: u64,
    key: String,
    #[serde(default)]
    event_id: Option<String>,
    #[serde(default)]
    items: Vec<String>,
    /// `Content-Encoding` of the stored body (absent: as the SDK sent it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    encoding: Option<String>,
}

impl SqliteSpool {
    /// Opens (or creates) the spool in `opts.dir`, quarantining a database that cannot be used.
    pub fn open(opts: SqliteOptions) -> Result<SqliteSpool, SpoolError> {
        Self::open_with_notify(opts, Arc::new(Notify::new()))
    }

    /// Like [`SqliteSpool::open`], waking `notify` on appends and reschedules.
    pub fn open_with_notify(opts: SqliteOptions, notify: Arc<Notify>) -> Result<SqliteSpool, SpoolError> {
        std::fs::create_dir_all(opts.dir.join("bodies"))?;
        let flusher = if opts.durability == Durability::Process {
            let (stop, stopped) = mpsc::channel();
            let wal = Db::wal_path(&opts.dir);
            std::thread::Builder::new().name("spool-flush".into()).spawn(move || flush_wal(&wal, &stopped))?;
            Some(stop)
        } else {
            None
        };
        let dir = opts.dir.clone();
        let db = Db::open_or_quarantine(opts)?;
        let shared = Arc::new(Shared::default());
        db.publish(&shared);
        let (tx, rx) = mpsc::channel();
        let (s2, n2) = (shared.clone(), notify.clone());
        let thread = std::thread::Builder::new().name("spool-writer".into()).spawn(move || writer(db, rx, s2, n2))?;
        let submit = Arc::new(Mutex::new(Submit { queue: Vec::new(), tx: Some(tx) }));
        Ok(SqliteSpool { submit, shared, notify, thread: Mutex::new(Some(thread)), flusher: Mutex::new(flusher), dir })
    }

    fn call<T: Send + 'static>(&self, make: impl FnOnce(Reply<T>) -> Cmd) -> BoxFuture<'_, Result<T, SpoolError>> {
        let (reply, rx) = oneshot::channel();
        let (open, first) = {
            let mut s = lock(&self.submit);
            let open = s.tx.is_some();
            if open {
                s.queue.push(make(reply));
            }
            (open, s.queue.len() == 1)
        };
        if open && first {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    let submit = self.submit.clone();
                    let notify = self.notify.clone();
                    rt.spawn(async move {
                        tokio::task::yield_now().await;
                        let (relay, answers) = oneshot::channel();
                        lock(&submit).flush(Some(relay));
                        if let Ok((answers, wake)) = answers.await {
                            for (cmd, out) in answers {
                                answer(cmd, out);
                            }
                            if wake {
                                notify.notify_one();
                            }
                        }
                    });
                }
                Err(_) => lock(&self.submit).flush(None),
            }
        }
        Box::pin(async move {
            if !open {
                return Err(SpoolError::Closed);
            }
            rx.await.unwrap_or(Err(SpoolError::Closed))
        })
    }
}

/// WAL size (pages) from which the writer checkpoints: SQLite's own auto-checkpoint default.
const CHECKPOINT_PAGES: i32 = 1000;

/// Least time between two checkpoints, unless the WAL reaches [`CHECKPOINT_MAX_PAGES`].
///
/// A checkpoint costs two fsyncs plus a copy of the distinct pages in the WAL. At a few
/// envelopes in flight every commit rewrites the same few pages, so 1,000 WAL pages hold little
/// to copy and fill in 25-40 ms: 25-40 checkpoints a second, each a stall of a millisecond or
/// so that every waiting request sees (p99 at 2 connections: 2.9 ms). Under load 1,000 pages take
/// longer than this to fill, so the spacing changes nothing there.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// WAL size (pages, 16 MB) at which the writer checkpoints however recent the last one was.
const CHECKPOINT_MAX_PAGES: i32 = 4000;

/// How often the WAL's dirty pages are written back ahead of a checkpoint.
const WAL_FLUSH_EVERY: Duration = Duration::from_millis(20);

/// Writes the WAL's dirty pages back on a thread of its own, until `stop` is dropped.
///
/// With `synchronous=NORMAL` commits do not sync, but every checkpoint (at 1,000-4,000 WAL
/// pages) first fsyncs the WAL on the writer thread, and under load that fsync found ~4 MB
/// dirty and took 2.5-3.5 ms, several times a second: every request of those moments waited for
/// it (a large part of the p99). Syncing the same file from here every 20 ms leaves the
/// checkpoint's fsync little to do. Durability does not depend on this thread; it only moves
/// when the kernel writes.
fn flush_wal(wal: &Path, stop: &mpsc::Receiver<()>) {
    let mut file: Option<(std::fs::File, std::time::Instant)> = None;
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(WAL_FLUSH_EVERY) {
        // Reopened every second: the WAL is deleted at a clean close and a quarantined spool
        // starts a new one, so a kept descriptor could point at a file nobody writes.
        if file.as_ref().is_none_or(|(_, at)| at.elapsed() > Duration::from_secs(1)) {
            file = std::fs::File::open(wal).ok().map(|f| (f, std::time::Instant::now()));
        }
        if let Some((f, _)) = &file {
            if let Err(e) = f.sync_data() {
                tracing::debug!(error = %e, "WAL write-back failed; the checkpoint will sync it");
            }
        }
    }
}

/// Commands waiting for this tick's hand-off to the writer thread.
struct Submit {
    queue: Vec<Cmd>,
    /// `None` once the spool is closed.
    tx: Option<mpsc::Sender<Handoff>>,
}

impl Submit {
    fn flush(&mut self, relay: Option<oneshot::Sender<Answers>>) {
        if let (Some(tx), false) = (&self.tx, self.queue.is_empty()) {
            // A send fails only when the writer is gone; the dropped replies then answer Closed.
            let _ = tx.send(Handoff { cmds: std::mem::take(&mut self.queue), relay });
        }
    }
}

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

    fn disk_bytes(&self) -> Option<u64> {
        // The database, its WAL and the bodies kept as files; a stat per file, on a scrape.
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let bodies = std::fs::read_dir(self.dir.join("bodies"))
            .map(|d| d.filter_map(Result::ok).map(|e| e.metadata().map_or(0, |m| m.len())).sum::<u64>())
            .unwrap_or(0);
        Some(size(&Db::db_path(&self.dir)) + size(&Db::wal_path(&self.dir)) + bodies)
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        {
            let mut s = lock(&self.submit);
            s.flush(None);
            s.tx = None;
        }
        lock(&self.flusher).take();
        let handle = lock(&self.thread).take();
        Box::pin(async move {
            if let Some(h) = handle {
                let _ = tokio::task::spawn_blocking(move || h.join()).await;
            }
        })
    }
}

fn writer(mut db: Db, rx: mpsc::Receiver<Handoff>, shared: Arc<Shared>, notify: Arc<Notify>) {
    loop {
        let first = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(c) => c,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                db.checkpoint_if_due();
                if db.retry_backlog() {
                    db.publish(&shared);
                    notify.notify_one();
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        // Each hand-off's command count and relay, to send its answers back in one piece.
        let mut senders = vec![(first.cmds.len(), first.relay)];
        let mut group = first.cmds;
        while group.len() < 4096 {
            match rx.try_recv() {
                Ok(more) => {
                    senders.push((more.cmds.len(), more.relay));
                    group.extend(more.cmds);
                }
                Err(_) => break,
            }
        }
        let mut wake = group.iter().any(|c| matches!(c, Cmd::Append(..) | Cmd::Reschedule(..)));
        db.apply(group, &shared);
        // Client reports queued for drops are new work too.
        wake |= std::mem::take(&mut db.queued_reports);
        db.publish(&shared);
        let mut answers = std::mem::take(&mut db.answers).into_iter();
        for (n, relay) in senders {
            let mine: Vec<(Cmd, Out)> = answers.by_ref().take(n).collect();
            match relay {
                Some(relay) => {
                    // The relay's task notifies dispatch, so one wake-up serves both.
                    if let Err((mine, _)) = relay.send((mine, std::mem::take(&mut wake))) {
                        mine.into_iter().for_each(|(c, o)| answer(c, o));
                    }
                }
                None => mine.into_iter().for_each(|(c, o)| answer(c, o)),
            }
        }
        if wake {
            notify.notify_one();
        }
        db.checkpoint_if_due();
    }
    // Checkpoint so the WAL does not have to be replayed at the next start.
    let _ = db.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
}

/// The writer thread's state.
struct Db {
    conn: Connection,
    /// Pages in the WAL after the last commit (set by the WAL hook).
    wal_pages: Arc<std::sync::atomic::AtomicI32>,
    last_checkpoint: std::time::Instant,
    opts: SqliteOptions,
    len: u64,
    bytes: u64,
    next_due: u64,
    last_expire: u64,
    file_seq: u64,
    queued_reports: bool,
    /// Rows handed to dispatch and not yet acked or rescheduled. Kept in memory, not in the
    /// database, so that reading needs no write (it must work on a full disk, to free it) and so
    /// that a restart forgets them: what was being sent is sent again.
    leased: HashSet<i64>,
    last_full: u64,
    last_reserve_try: u64,
    /// Acks and reschedules whose transaction failed (a full disk): their rows stay leased, so
    /// they are not sent again, and the writes are retried until they commit.
    failed_acks: Vec<u64>,
    failed_reschedules: Vec<Reschedule>,
    /// Last free-space check: (checked at, appends allowed).
    space: (u64, bool),
    space_tight: bool,
    /// Records appended and not yet leased, so that dispatch gets them without reading the body
    /// back from the database (the common case: dispatch is milliseconds behind ingest).
    cache: RecordCache,
    /// Answers of the group being applied, in command order, sent back after it.
    answers: Vec<(Cmd, Out)>,
}

/// A byte-bounded FIFO of recently appended records, by row id.
#[derive(Default)]
struct RecordCache {
    map: std::collections::HashMap<i64, Arc<Record>>,
    order: std::collections::VecDeque<i64>,
    bytes: usize,
}

const CACHE_BYTES: usize = 4 * 1024 * 1024;

impl RecordCache {
    fn insert(&mut self, id: i64, r: Arc<Record>) {
        self.bytes += r.body.len();
        self.map.insert(id, r);
        self.order.push_back(id);
        while self.bytes > CACHE_BYTES {
            let Some(old) = self.order.pop_front() else { break };
            if let Some(r) = self.map.remove(&old) {
                self.bytes -= r.body.len();
            }
        }
        if self.order.len() > 4 * self.map.len() + 1024 {
            let map = &self.map;
            self.order.retain(|id| map.contains_key(id));
        }
    }

    fn take(&mut self, id: i64) -> Option<Arc<Record>> {
        let r = self.map.remove(&id)?;
        self.bytes -= r.body.len();
        Some(r)
    }

    /// Takes up to `max` records (and about `max_bytes`), oldest or newest first.
    fn take_in_order(
        &mut self,
        order: DeliveryOrder,
        max: usize,
        max_bytes: usize,
        leased: &HashSet<i64>,
    ) -> Vec<Queued> {
        let mut out = Vec::with_capacity(max.min(self.map.len()));
        let mut bytes = 0usize;
        while out.len() < max && (bytes < max_bytes || out.is_empty()) {
            let next = match order {
                DeliveryOrder::OldestFirst => self.order.pop_front(),
                DeliveryOrder::NewestFirst => self.order.pop_back(),
            };
            let Some(id) = next else { break };
            if leased.contains(&id) {
                self.take(id);
                continue;
            }
            if let Some(record) = self.take(id) {
                bytes += record.body.len();
                out.push(Queued { id: id as u64, attempts: 0, record });
            }
        }
        out
    }
}

/// Space kept in a file beside the database and given back when the disk fills up, so that the
/// deletes that free the disk can still commit.
const RESERVE_BYTES: usize = 512 * 1024;

fn reserve_path(dir: &Path) -> PathBuf {
    dir.join("spool.reserve")
}

fn write_reserve(path: &Path) {
    if let Err(e) = std::fs::write(path, vec![0u8; RESERVE_BYTES]) {
        let _ = std::fs::remove_file(path);
        tracing::debug!(error = %e, "cannot write the spool's reserve file");
    }
}

fn is_disk_full(e: &rusqlite::Error) -> bool {
    match e {
        rusqlite::Error::ToSqlConversionFailure(inner) => {
            inner.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::StorageFull)
        }
        other => is_full(other),
    }
}

/// Side effects of a transaction, applied only once it committed (or undone if it did not).
#[derive(Default)]
struct Pending {
    dlen: i64,
    dbytes: i64,
    written: Vec<PathBuf>,
    to_delete: Vec<PathBuf>,
    dropped: Vec<Dropped>,
    lease_add: Vec<i64>,
    inserted: Vec<i64>,
    /// Rows deleted in this transaction, to be evicted from the record cache once it commits.
    deleted: Vec<i64>,
    /// How many of them were not leased (dropped, expired, unreadable).
    deleted_unleased: usize,
}

enum Out {
    Unit(Result<(), SpoolError>),
    Batch(Result<Vec<Queued>, SpoolError>),
}

fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase))
}

fn is_full(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(ErrorCode::DiskFull))
}

fn to_spool_err(e: rusqlite::Error) -> SpoolError {
    if is_disk_full(&e) {
        SpoolError::Io(std::io::Error::new(std::io::ErrorKind::StorageFull, e.to_string()))
    } else {
        SpoolError::Io(std::io::Error::other(e.to_string()))
    }
}

impl Db {
    fn db_path(dir: &Path) -> PathBuf {
        dir.join("spool.db")
    }

    /// The database's write-ahead log, beside it.
    fn wal_path(dir: &Path) -> PathBuf {
        dir.join("spool.db-wal")
    }

    fn open_or_quarantine(opts: SqliteOptions) -> Result<Db, SpoolError> {
        match Db::open(opts.clone()) {
            Ok(db) => Ok(db),
            Err(e)
                if matches!(e, rusqlite::Error::SqliteFailure(..))
                    && !matches!(
                        e.sqlite_error_code(),
                        Some(
                            ErrorCode::CannotOpen
                                | ErrorCode::PermissionDenied
                                | ErrorCode::ReadOnly
                                | ErrorCode::DiskFull
                                | ErrorCode::DatabaseBusy
                                | ErrorCode::DatabaseLocked
                        )
                    ) =>
            {
                let moved = quarantine(&opts.dir)?;
                tracing::error!(error = %e, moved_to = %moved.display(), "spool database unusable; moved aside, starting a fresh one");
                Db::open(opts).map_err(to_spool_err)
            }
            Err(e) => Err(to_spool_err(e)),
        }
    }

    fn open(opts: SqliteOptions) -> Result<Db, rusqlite::Error> {
        let mut conn = Connection::open(Db::db_path(&opts.dir))?;
        conn.busy_timeout(Duration::from_secs(5))?;
        // One process owns the spool: exclusive locking keeps the WAL index in memory (no -shm
        // file, no file locks per transaction) and makes a second sidecar on the same directory
        // fail to start instead of sharing it.
        conn.query_row("PRAGMA locking_mode=EXCLUSIVE", [], |_| Ok(()))?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(mode, "SQLite refused WAL mode; durability still holds, throughput is lower");
        }
        let sync = if opts.durability == Durability::Power { "FULL" } else { "NORMAL" };
        conn.execute_batch(&format!(
            "PRAGMA synchronous={sync};
             PRAGMA temp_store=MEMORY;
             CREATE TABLE IF NOT EXISTS envelopes (
                 id INTEGER PRIMARY KEY,
                 received_ms INTEGER NOT NULL,
                 due_ms INTEGER NOT NULL,
                 attempts INTEGER NOT NULL DEFAULT 0,
                 size INTEGER NOT NULL,
                 categories INTEGER NOT NULL,
                 target TEXT NOT NULL,
                 meta BLOB NOT NULL,
                 body BLOB,
                 body_file TEXT
             );
             CREATE INDEX IF NOT EXISTS envelopes_due ON envelopes(due_ms, id);"
        ))?;
        // Checkpoints run after a group's answers are out (see `writer`), not inside the commit
        // that crosses the threshold: the hook replaces SQLite's auto-checkpoint and only counts.
        let wal_pages = Arc::new(std::sync::atomic::AtomicI32::new(0));
        let counter = wal_pages.clone();
        conn.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages: std::os::raw::c_int| {
            counter.store(pages, Ordering::Relaxed);
            Ok(())
        }))?;
        if let Some(pages) = opts.max_page_count {
            conn.query_row(&format!("PRAGMA max_page_count={pages}"), [], |_| Ok(()))?;
        }
        let (len, bytes): (i64, i64) =
            conn.query_row("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM envelopes", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        let mut db = Db {
            conn,
            wal_pages,
            last_checkpoint: std::time::Instant::now(),
            opts,
            len: len as u64,
            bytes: bytes as u64,
            next_due: 0,
            last_expire: 0,
            file_seq: 0,
            queued_reports: false,
            leased: HashSet::new(),
            last_full: 0,
            last_reserve_try: 0,
            failed_acks: Vec::new(),
            failed_reschedules: Vec::new(),
            space: (0, true),
            space_tight: true,
            cache: RecordCache::default(),
            answers: Vec::new(),
        };
        let reserve = reserve_path(&db.opts.dir);
        if !reserve.exists() {
            write_reserve(&reserve);
        }
        // Waits decided by the previous process (circuit holds, per-envelope backoff, rate
        // limits) end with it: what they were based on is gone, and a held backlog would
        // otherwise sit out minutes of backoff after the restart that follows an outage. A
        // limit that still holds is learnt again from the first answer.
        let now = now_ms();
        let released =
            db.conn.execute("UPDATE envelopes SET due_ms = received_ms WHERE due_ms > ?1", params![now as i64])?;
        if released > 0 {
            tracing::info!(envelopes = released, "envelopes waiting for a retry time are due again after the restart");
        }
        db.next_due = db.query_next_due(now)?;
        if len > 0 {
            tracing::info!(envelopes = len, bytes, "spool opened with a backlog; delivering it");
        }
        Ok(db)
    }

    /// Copies the WAL back into the database once it holds [`CHECKPOINT_PAGES`] and the last
    /// checkpoint is [`CHECKPOINT_EVERY`] old (or it holds [`CHECKPOINT_MAX_PAGES`]). Called after
    /// a group's answers are sent, so the requests of the commit that crossed the threshold do not
    /// wait for it, and when the writer is idle, so a WAL left behind by a burst is not kept.
    fn checkpoint_if_due(&mut self) {
        let pages = self.wal_pages.load(Ordering::Relaxed);
        let due = pages >= CHECKPOINT_MAX_PAGES
            || pages >= CHECKPOINT_PAGES && self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY;
        if due {
            if let Err(e) = self.conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                tracing::debug!(error = %e, "WAL checkpoint failed; the next one retries");
            }
            self.wal_pages.store(0, Ordering::Relaxed);
            self.last_checkpoint = std::time::Instant::now();
        }
    }

    fn publish(&self, shared: &Shared) {
        shared.len.store(self.len, Ordering::Release);
        shared.bytes.store(self.bytes, Ordering::Release);
        shared.next_due.store(self.next_due, Ordering::Release);
    }

    fn query_next_due(&self, now: u64) -> Result<u64, rusqlite::Error> {
        let d: Option<i64> = self
            .conn
            .prepare_cached("SELECT MIN(due_ms) FROM envelopes WHERE due_ms > ?1")?
            .query_row(params![now as i64], |r| r.get(0))?;
        Ok(d.map_or(0, |d| d as u64))
    }

    /// Applies a group in one transaction; if the transaction fails, each command is retried on its
    /// own so that one failing append does not fail the acks that came with it.
    /// Retries failed acks and reschedules; returns whether they committed.
    fn retry_backlog(&mut self) -> bool {
        if self.failed_acks.is_empty() && self.failed_reschedules.is_empty() {
            return false;
        }
        let now = now_ms();
        let acks = std::mem::take(&mut self.failed_acks);
        let rescheds = std::mem::take(&mut self.failed_reschedules);
        let attempt = |db: &mut Db| -> Result<Pending, rusqlite::Error> {
            let mut p = Pending::default();
            let tx = &db.conn;
            begin(tx)?;
            let done =
                ack(tx, &db.opts.dir, &acks, &mut p).and_then(|()| reschedule(tx, &rescheds)).and_then(|()| commit(tx));
            if done.is_err() {
                rollback(tx);
            }
            done.map(|()| p)
        };
        let result = match attempt(self) {
            Err(e) if is_disk_full(&e) && self.make_room(now) => attempt(self),
            other => other,
        };
        match result {
            Ok(p) => {
                for id in &acks {
                    self.leased.remove(&(*id as i64));
                }
                for r in &rescheds {
                    self.leased.remove(&(r.id as i64));
                }
                self.commit_effects(p);
                tracing::info!(
                    acks = acks.len(),
                    reschedules = rescheds.len(),
                    "spool writes that had failed are done"
                );
                if let Ok(d) = self.query_next_due(now) {
                    self.next_due = d;
                }
                true
            }
            Err(_) => {
                self.failed_acks = acks;
                self.failed_reschedules = rescheds;
                false
            }
        }
    }

    fn apply(&mut self, group: Vec<Cmd>, shared: &Shared) {
        self.retry_backlog();
        let now = now_ms();
        if group.iter().any(|c| matches!(c, Cmd::Append(..))) {
            self.check_space(now, shared);
        }
        match self.run_making_room(&group, now) {
            Ok((outs, pending)) => self.finish(group, outs, pending, shared),
            Err(e) if group.len() > 1 && !is_corruption(&e) => {
                for cmd in group {
                    let single = vec![cmd];
                    match self.run_making_room(&single, now) {
                        Ok((outs, pending)) => self.finish(single, outs, pending, shared),
                        Err(e) => self.fail(single, e, shared),
                    }
                }
            }
            Err(e) => self.fail(group, e, shared),
        }
        if let Ok(d) = self.query_next_due(now) {
            self.next_due = d;
        }
        self.maybe_restore_reserve(now);
    }

    /// On a full disk: give back the reserve file and truncate the WAL, so that acks (deletes) can
    /// commit and free space. Returns whether anything was done that is worth a retry.
    fn make_room(&mut self, now: u64) -> bool {
        self.last_full = now;
        let mut acted = false;
        let reserve = reserve_path(&self.opts.dir);
        if reserve.exists() && std::fs::remove_file(&reserve).is_ok() {
            tracing::warn!(dir = %self.opts.dir.display(), "disk full: released the spool's reserve space");
            acted = true;
        }
        if self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").is_ok() {
            acted = true;
        }
        acted
    }

    /// Refuses appends while the filesystem is nearly full, keeping the rest of the space for the
    /// deletes that free it. Checked every 100 ms, or on every group of appends once the free
    /// space is within a few watermarks of the limit.
    fn check_space(&mut self, now: u64, shared: &Shared) {
        if self.space.1 && !self.space_tight && now.saturating_sub(self.space.0) < 100 {
            return;
        }
        // Pages freed by deliveries stay in the database file for reuse: they count as free.
        let reusable = |conn: &Connection| -> u64 {
            let pages: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0)).unwrap_or(0);
            let size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap_or(4096);
            (pages.max(0) as u64) * (size.max(0) as u64)
        };
        let ok = match crate::sys::disk_space(&self.opts.dir) {
            Some((available, total)) => {
                let watermark = (total / 20).clamp(1 << 20, 64 << 20);
                self.space_tight = available < watermark.saturating_mul(4);
                if available + reusable(&self.conn) >= watermark {
                    true
                } else {
                    // A truncated WAL gives its space back to the filesystem.
                    let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
                    crate::sys::disk_space(&self.opts.dir).is_some_and(|(a, _)| a + reusable(&self.conn) >= watermark)
                }
            }
            None => true,
        };
        if ok && !self.space.1 {
            tracing::info!(dir = %self.opts.dir.display(), "disk space is back: accepting new envelopes");
        }
        if !ok && self.space.1 {
            tracing::warn!(dir = %self.opts.dir.display(), "disk nearly full: refusing new envelopes until deliveries free space");
            self.set_error(shared, Some("the spool's disk is nearly full".into()));
        }
        self.space = (now, ok);
    }

    fn maybe_restore_reserve(&mut self, now: u64) {
        if now.saturating_sub(self.last_full) < 30_000 || now.saturating_sub(self.last_reserve_try) < 10_000 {
            return;
        }
        self.last_reserve_try = now;
        let reserve = reserve_path(&self.opts.dir);
        if !reserve.exists() {
            write_reserve(&reserve);
        }
    }

    /// Runs a group; on a full disk, frees what it can and tries once more.
    fn run_making_room(&mut self, group: &[Cmd], now: u64) -> Result<(Vec<Out>, Pending), rusqlite::Error> {
        match self.run_group(group, now) {
            Err(e) if is_disk_full(&e) && self.make_room(now) => self.run_group(group, now),
            other => other,
        }
    }

    /// After a commit: cache the appended records, apply the side effects, answer the callers.
    fn finish(&mut self, group: Vec<Cmd>, outs: Vec<Out>, pending: Pending, shared: &Shared) {
        self.commit_effects(pending);
        self.clear_error_if_appended(&group, &outs, shared);
        self.answers.extend(group.into_iter().zip(outs));
    }

    fn fail(&mut self, group: Vec<Cmd>, e: rusqlite::Error, shared: &Shared) {
        tracing::error!(error = %e, "spool transaction failed");
        // Failed acks and reschedules keep their rows leased (so nothing is sent again in a
        // loop) and are retried until they commit; a restart in between means a resend, which
        // Sentry deduplicates by event id.
        for c in &group {
            match c {
                Cmd::Ack(ids, _) => self.failed_acks.extend(ids.iter().copied()),
                Cmd::Reschedule(items, _) => self.failed_reschedules.extend(items.iter().copied()),
                _ => {}
            }
        }
        self.set_error(shared, Some(e.to_string()));
        let corrupt = is_corruption(&e);
        let outs = group.iter().map(|c| match c {
            Cmd::Read { .. } => Out::Batch(Err(to_spool_err(clone_err(&e)))),
            _ => Out::Unit(Err(to_spool_err(clone_err(&e)))),
        });
        let outs: Vec<Out> = outs.collect();
        self.answers.extend(group.into_iter().zip(outs));
        if corrupt {
            self.recover_from_corruption(shared);
        }
    }

    fn recover_from_corruption(&mut self, shared: &Shared) {
        let placeholder = match Connection::open_in_memory() {
            Ok(c) => c,
            Err(_) => return,
        };
        drop(std::mem::replace(&mut self.conn, placeholder));
        match quarantine(&self.opts.dir).map_err(|e| e.to_string()).and_then(|moved| {
            tracing::error!(moved_to = %moved.display(), "spool database corrupt; moved aside, starting a fresh one");
            Db::open(self.opts.clone()).map_err(|e| e.to_string())
        }) {
            Ok(fresh) => {
                *self = fresh;
                self.set_error(shared, None);
            }
            Err(e) => self.set_error(shared, Some(format!("cannot reopen the spool: {e}"))),
        }
    }

    /// Readiness reports the last failed write until an append succeeds again.
    fn clear_error_if_appended(&self, group: &[Cmd], outs: &[Out], shared: &Shared) {
        let appended = group.iter().zip(outs).any(|(c, o)| matches!((c, o), (Cmd::Append(..), Out::Unit(Ok(())))));
        if appended {
            self.set_error(shared, None);
        }
    }

    fn set_error(&self, shared: &Shared, e: Option<String>) {
        // Disk-full is reported through the failing appends; readiness reflects any other error.
        *lock(&shared.error) = e;
    }

    fn commit_effects(&mut self, p: Pending) {
        for id in &p.deleted {
            self.cache.take(*id);
        }
        self.leased.extend(p.lease_add);
        self.len = (self.len as i64 + p.dlen).max(0) as u64;
        self.bytes = (self.bytes as i64 + p.dbytes).max(0) as u64;
        for f in p.to_delete {
            let _ = std::fs::remove_file(f);
        }
        drop(p.written);
    }

    fn run_group(&mut self, group: &[Cmd], now: u64) -> Result<(Vec<Out>, Pending), rusqlite::Error> {
        let mut pending = Pending::default();
        // Rows committed and not leased when the group starts; the cache's fast path compares
        // against this (acks in the group remove leases of rows it never counted).
        let unleased = self.len.saturating_sub(self.leased.len() as u64);
        let result = (|| {
            let tx = &self.conn;
            begin(tx)?;
            let mut outs = Vec::with_capacity(group.len());
            for cmd in group {
                outs.push(match cmd {
                    Cmd::Append(..) if !self.space.1 => Out::Unit(Err(SpoolError::DiskFull)),
                    Cmd::Append(records, _) => {
                        let first = pending.inserted.len();
                        let out = append(
                            tx,
                            &self.opts,
                            &self.leased,
                            self.bytes,
                            records,
                            now,
                            &mut pending,
                            &mut self.file_seq,
                        )?;
                        // Cached right away (taken out again if the transaction rolls back), so
                        // that a read later in this group can hand them out without a query.
                        for (id, r) in pending.inserted[first..].iter().zip(records) {
                            self.cache.insert(*id, r.clone());
                        }
                        Out::Unit(out)
                    }
                    Cmd::Read { max, max_bytes, now: at, .. } => {
                        if now.saturating_sub(self.last_expire) >= 1000 {
                            expire(tx, &self.opts, &self.leased, now, &mut pending)?;
                        }
                        Out::Batch(Ok(read(
                            tx,
                            &self.opts,
                            unleased,
                            &self.leased,
                            &mut self.cache,
                            *max,
                            *max_bytes,
                            *at,
                            &mut pending,
                        )?))
                    }
                    Cmd::Ack(ids, _) => {
                        ack(tx, &self.opts.dir, ids, &mut pending)?;
                        ids.iter().for_each(|i| {
                            self.leased.remove(&(*i as i64));
                        });
                        Out::Unit(Ok(()))
                    }
                    Cmd::Reschedule(items, _) => {
                        reschedule(tx, items)?;
                        items.iter().for_each(|r| {
                            self.leased.remove(&(r.id as i64));
                        });
                        Out::Unit(Ok(()))
                    }
                });
            }
            let reports = report::account(&std::mem::take(&mut pending.dropped), now);
            if !reports.is_empty() {
                insert_all(tx, &self.opts, &reports, now, &mut pending, &mut self.file_seq)?;
                self.queued_reports = true;
            }
            commit(tx)?;
            Ok(outs)
        })();
        if result.is_err() {
            rollback(&self.conn);
        }
        match result {
            Ok(outs) => {
                if group.iter().any(|c| matches!(c, Cmd::Read { .. })) && now.saturating_sub(self.last_expire) >= 1000 {
                    self.last_expire = now;
                }
                Ok((outs, pending))
            }
            Err(e) => {
                for id in &pending.inserted {
                    self.cache.take(*id);
                }
                for f in pending.written {
                    let _ = std::fs::remove_file(f);
                }
                Err(e)
            }
        }
    }
}

/// `BEGIN IMMEDIATE` with a cached statement (rusqlite's `Transaction` parses it on every call).
fn begin(conn: &Connection) -> rusqlite::Result<()> {
    conn.prepare_cached("BEGIN IMMEDIATE")?.execute([]).map(drop)
}

fn commit(conn: &Connection) -> rusqlite::Result<()> {
    conn.prepare_cached("COMMIT")?.execute([]).map(drop)
}

fn rollback(conn: &Connection) {
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
}

fn clone_err(e: &rusqlite::Error) -> rusqlite::Error {
    match e {
        rusqlite::Error::SqliteFailure(f, m) => rusqlite::Error::SqliteFailure(*f, m.clone()),
        other => rusqlite::Error::InvalidParameterName(other.to_string()),
    }
}

fn answer(cmd: Cmd, out: Out) {
    match (cmd, out) {
        (Cmd::Append(_, r) | Cmd::Ack(_, r) | Cmd::Reschedule(_, r), Out::Unit(res)) => {
            let _ = r.send(res);
        }
        (Cmd::Read { reply, .. }, Out::Batch(res)) => {
            let _ = reply.send(res);
        }
        (Cmd::Append(_, r) | Cmd::Ack(_, r) | Cmd::Reschedule(_, r), Out::Batch(_)) => {
            let _ = r.send(Err(SpoolError::Closed));
        }
        (Cmd::Read { reply, .. }, Out::Unit(_)) => {
            let _ = reply.send(Err(SpoolError::Closed));
        }
    }
}

fn quarantine(dir: &Path) -> Result<PathBuf, SpoolError> {
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let db = Db::db_path(dir);
    let moved = dir.join(format!("spool.db.corrupt-{stamp}"));
    if db.exists() {
        std::fs::rename(&db, &moved)?;
    }
    for ext in ["-wal", "-shm"] {
        let side = dir.join(format!("spool.db{ext}"));
        if side.exists() {
            let _ = std::fs::rename(&side, dir.join(format!("spool.db.corrupt-{stamp}{ext}")));
        }
    }
    Ok(moved)
}

fn target_text(t: &Target) -> &str {
    match t {
        Target::Upstream(u) => u.as_str(),
        Target::Capture => "",
    }
}

#[allow(clippy::too_many_arguments)]
fn append(
    tx: &Connection,
    opts: &SqliteOptions,
    leased: &HashSet<i64>,
    bytes_now: u64,
    records: &[Arc<Record>],
    now: u64,
    p: &mut Pending,
    seq: &mut u64,
) -> Result<Result<(), SpoolError>, rusqlite::Error> {
    let incoming: u64 = records.iter().map(|r| r.body.len() as u64).sum();
    let current = (bytes_now as i64 + p.dbytes).max(0) as u64;
    if current + incoming > opts.max_bytes {
        if opts.full_policy == FullPolicy::RejectNew || incoming > opts.max_bytes {
            return Ok(Err(SpoolError::Full));
        }
        let need = current + incoming - opts.max_bytes;
        let freed = drop_oldest(tx, &opts.dir, leased, need, p)?;
        if freed < need {
            return Ok(Err(SpoolError::Full));
        }
    }
    insert_all(tx, opts, records, now, p, seq)?;
    Ok(Ok(()))
}

fn insert_all<R: std::borrow::Borrow<Record>>(
    tx: &Connection,
    opts: &SqliteOptions,
    records: &[R],
    now: u64,
    p: &mut Pending,
    seq: &mut u64,
) -> Result<(), rusqlite::Error> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO envelopes (received_ms, due_ms, attempts, size, categories, target, meta, body, body_file)
         VALUES (?1, ?2, 0, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for r in records {
        let r: &Record = r.borrow();
        let meta = encode_meta(r);
        let (inline, file): (Option<&[u8]>, Option<String>) = if r.body.len() > opts.inline_limit {
            *seq += 1;
            let name = format!("{now}-{}-{}.body", std::process::id(), *seq);
            let path = opts.dir.join("bodies").join(&name);
            std::fs::write(&path, &r.body).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            p.written.push(path);
            (None, Some(name))
        } else {
            (Some(&r.body[..]), None)
        };
        stmt.execute(params![
            r.received_ms as i64,
            r.received_ms as i64,
            r.body.len() as i64,
            r.categories.0 as i64,
            target_text(&r.target),
            meta,
            inline,
            file,
        ])?;
        p.inserted.push(tx.last_insert_rowid());
        p.dlen += 1;
        p.dbytes += r.body.len() as i64;
    }
    Ok(())
}

/// [`Meta`] as written: borrowed from the record, so encoding copies nothing but the JSON.
#[derive(Serialize)]
struct MetaOut<'a> {
    endpoint: &'a str,
    method: &'a str,
    path: &'a str,
    headers: HeadersOut<'a>,
    project: u64,
    key: &'a str,
    event_id: Option<&'a str>,
    items: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<&'a str>,
}

/// Header pairs serialized as `[["name","value"],...]`, skipping values that are not UTF-8.
struct HeadersOut<'a>(&'a [(http::HeaderName, http::HeaderValue)]);

impl Serialize for HeadersOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v))))
    }
}

fn encode_meta(r: &Record) -> Vec<u8> {
    let meta = MetaOut {
        endpoint: r.endpoint.name(),
        method: r.method.as_str(),
        path: &r.path_and_query,
        headers: HeadersOut(&r.headers),
        project: r.project_id,
        key: &r.public_key,
        event_id: r.event_id.as_deref(),
        items: &r.item_types,
        encoding: r.stored_label(),
    };
    serde_json::to_vec(&meta).unwrap_or_default()
}

struct Row {
    id: i64,
    received_ms: i64,
    attempts: i64,
    categories: i64,
    target: String,
    meta: Vec<u8>,
    body: Option<Vec<u8>>,
    body_file: Option<String>,
}

fn decode_row(dir: &Path, row: Row) -> Option<Record> {
    let meta: Meta = serde_json::from_slice(&row.meta).ok()?;
    let body = match (row.body, &row.body_file) {
        (Some(b), _) => Bytes::from(b),
        (None, Some(f)) => Bytes::from(std::fs::read(dir.join("bodies").join(f)).ok()?),
        (None, None) => Bytes::new(),
    };
    let target =
        if row.target.is_empty() { Target::Capture } else { Target::Upstream(UpstreamUrl::parse(&row.target).ok()?) };
    let headers = meta
        .headers
        .into_iter()
        .filter_map(|(k, v)| Some((http::HeaderName::try_from(k).ok()?, http::HeaderValue::try_from(v).ok()?)))
        .collect();
    let (encoding, incompressible) = Record::parse_stored_label(meta.encoding.as_deref())?;
    Some(Record {
        target,
        encoding,
        incompressible,
        endpoint: Endpoint::from_name(&meta.endpoint)?,
        method: http::Method::from_bytes(meta.method.as_bytes()).ok()?,
        path_and_query: meta.path,
        headers,
        body,
        project_id: meta.project,
        public_key: meta.key,
        event_id: meta.event_id,
        categories: Categories(u32::try_from(row.categories).unwrap_or(0)),
        item_types: meta.items,
        received_ms: row.received_ms.max(0) as u64,
    })
}

const ROW_COLUMNS: &str = "id, received_ms, attempts, categories, target, meta, body, body_file, size";

fn map_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(Row, i64)> {
    Ok((
        Row {
            id: r.get(0)?,
            received_ms: r.get(1)?,
            attempts: r.get(2)?,
            categories: r.get(3)?,
            target: r.get(4)?,
            meta: r.get(5)?,
            body: r.get(6)?,
            body_file: r.get(7)?,
        },
        r.get(8)?,
    ))
}

#[allow(clippy::too_many_arguments)]
fn read(
    tx: &Connection,
    opts: &SqliteOptions,
    unleased: u64,
    leased: &HashSet<i64>,
    cache: &mut RecordCache,
    max: usize,
    max_bytes: usize,
    now: u64,
    p: &mut Pending,
) -> Result<Vec<Queued>, rusqlite::Error> {
    // The common case, dispatch keeping up with ingest: every row that was committed and not
    // leased when this group started, and every row appended in it so far, is a fresh append
    // still in the cache (the cache only ever holds such rows), so the answer is known without a
    // query. Rows rescheduled earlier in this group wait for the next read, which the reschedule's
    // wake-up triggers. Acks only delete leased rows; drops or an earlier read in the group take
    // the query path.
    if p.lease_add.is_empty() && p.deleted_unleased == 0 && cache.map.len() as u64 == unleased + p.inserted.len() as u64
    {
        let taken = cache.take_in_order(opts.order, max, max_bytes, leased);
        p.lease_add.extend(taken.iter().map(|q| q.id as i64));
        return Ok(taken);
    }
    // Oldest first walks the due index (fresh rows are due at arrival, so this is arrival order
    // for them, and retried rows come back when they are due); newest first walks the ids
    // backwards, which is arrival order reversed among the due rows.
    let order = match opts.order {
        DeliveryOrder::OldestFirst => "due_ms, id",
        DeliveryOrder::NewestFirst => "id DESC",
    };
    // Leased rows still match the query; ask for enough extra rows to skip them.
    let sql = format!("SELECT id FROM envelopes WHERE due_ms <= ?1 ORDER BY {order} LIMIT ?2");
    let skip = leased.len() + p.lease_add.len();
    let ids: Vec<i64> = tx
        .prepare_cached(&sql)?
        .query_map(params![now as i64, (max + skip) as i64], |r| r.get(0))?
        .collect::<Result<Vec<i64>, _>>()?
        .into_iter()
        .filter(|id| !leased.contains(id) && !p.lease_add.contains(id))
        .take(max)
        .collect();
    let mut out = Vec::with_capacity(ids.len());
    let mut bytes = 0usize;
    let mut stmt = tx.prepare_cached(&format!("SELECT {ROW_COLUMNS} FROM envelopes WHERE id = ?1"))?;
    for id in ids {
        if bytes >= max_bytes && !out.is_empty() {
            break;
        }
        if let Some(record) = cache.take(id) {
            bytes += record.body.len();
            p.lease_add.push(id);
            out.push(Queued { id: id as u64, attempts: 0, record });
            continue;
        }
        let Some((row, size)) = stmt.query_row(params![id], map_row).optional()? else { continue };
        bytes += size.max(0) as usize;
        let attempts = row.attempts;
        let file = row.body_file.clone();
        match decode_row(&opts.dir, row) {
            Some(record) => {
                p.lease_add.push(id);
                out.push(Queued { id: id as u64, attempts: attempts.max(0) as u32, record: Arc::new(record) });
            }
            None => {
                // Unreadable (missing body file, damaged meta): it can never be sent; count it.
                tracing::error!(id, "spooled envelope cannot be read back; dropping it");
                metrics::counter!(crate::telemetry::DROPPED, "reason" => DropReason::Unreadable.label(), "category" => "none")
                    .increment(1);
                tx.execute("DELETE FROM envelopes WHERE id = ?1", params![id])?;
                p.deleted_unleased += 1;
                p.dlen -= 1;
                p.dbytes -= size;
                if let Some(f) = file {
                    p.to_delete.push(opts.dir.join("bodies").join(f));
                }
            }
        }
    }
    Ok(out)
}

fn delete_rows(
    tx: &Connection,
    ids: impl Iterator<Item = i64>,
    p: &mut Pending,
    dir: &Path,
) -> Result<u64, rusqlite::Error> {
    // A lookup and a plain delete, not `DELETE ... RETURNING`: SQLite materialises RETURNING rows
    // in an ephemeral table, opened (a b-tree, a pager, a page cache: a dozen allocations) for
    // every execution, so for every acked envelope.
    let mut look = tx.prepare_cached("SELECT size, body_file FROM envelopes WHERE id = ?1")?;
    let mut delete = tx.prepare_cached("DELETE FROM envelopes WHERE id = ?1")?;
    let mut freed = 0u64;
    for id in ids {
        let gone: Option<(i64, Option<String>)> =
            look.query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
        if let Some((size, file)) = gone {
            delete.execute(params![id])?;
            p.deleted.push(id);
            p.dlen -= 1;
            p.dbytes -= size;
            freed += size.max(0) as u64;
            if let Some(f) = file {
                p.to_delete.push(dir.join("bodies").join(f));
            }
        }
    }
    Ok(freed)
}

fn ack(tx: &Connection, dir: &Path, ids: &[u64], p: &mut Pending) -> Result<(), rusqlite::Error> {
    delete_rows(tx, ids.iter().map(|i| *i as i64), p, dir)?;
    Ok(())
}

fn reschedule(tx: &Connection, items: &[Reschedule]) -> Result<(), rusqlite::Error> {
    let mut stmt = tx.prepare_cached("UPDATE envelopes SET due_ms = ?1, attempts = attempts + ?2 WHERE id = ?3")?;
    for r in items {
        stmt.execute(params![r.due_ms as i64, i64::from(r.count_attempt), r.id as i64])?;
    }
    Ok(())
}

/// Deletes the waiting (not leased) rows that `sql` selects, recording why; returns the bytes freed
/// and how many rows were dropped.
fn drop_where(
    tx: &Connection,
    dir: &Path,
    leased: &HashSet<i64>,
    sql: &str,
    args: &[i64],
    reason: DropReason,
    p: &mut Pending,
) -> Result<(u64, usize), rusqlite::Error> {
    let mut victims = Vec::new();
    {
        let mut stmt = tx.prepare_cached(sql)?;
        let mut q = stmt.query(rusqlite::params_from_iter(args.iter()))?;
        while let Some(r) = q.next()? {
            let (row, _) = map_row(r)?;
            if !leased.contains(&row.id) && !p.lease_add.contains(&row.id) {
                victims.push(row);
            }
        }
    }
    let n = victims.len();
    p.deleted_unleased += n;
    let ids: Vec<i64> = victims.iter().map(|v| v.id).collect();
    for v in victims {
        // Only the meta is needed to report the drop; skip reading large body files.
        let v = Row { body: None, body_file: None, ..v };
        if let Some(rec) = decode_row(dir, v) {
            p.dropped.push(Dropped::of(&rec, reason));
        }
    }
    let freed = delete_rows(tx, ids.into_iter(), p, dir)?;
    Ok((freed, n))
}

fn drop_oldest(
    tx: &Connection,
    dir: &Path,
    leased: &HashSet<i64>,
    need: u64,
    p: &mut Pending,
) -> Result<u64, rusqlite::Error> {
    // Client reports (no categories) are never dropped to make room; they are tiny.
    let sql = format!("SELECT {ROW_COLUMNS} FROM envelopes WHERE categories != 0 AND id > ?1 ORDER BY id LIMIT 64");
    let mut freed = 0;
    let mut after = 0i64;
    while freed < need {
        let last: Option<i64> = tx
            .prepare_cached(
                "SELECT MAX(id) FROM (SELECT id FROM envelopes WHERE categories != 0 AND id > ?1 ORDER BY id LIMIT 64)",
            )?
            .query_row(params![after], |r| r.get(0))?;
        let Some(last) = last else { break };
        let (f, _) = drop_where(tx, dir, leased, &sql, &[after], DropReason::SpoolFull, p)?;
        freed += f;
        after = last;
    }
    Ok(freed)
}

fn expire(
    tx: &Connection,
    opts: &SqliteOptions,
    leased: &HashSet<i64>,
    now: u64,
    p: &mut Pending,
) -> Result<(), rusqlite::Error> {
    let age = u64::try_from(opts.max_age.as_millis()).unwrap_or(u64::MAX / 4);
    let cutoff = now.saturating_sub(age) as i64;
    // Client reports (no categories) summarise losses; they get twice the age before they go.
    let report_cutoff = now.saturating_sub(age.saturating_mul(2)) as i64;
    let sql = format!(
        "SELECT {ROW_COLUMNS} FROM envelopes WHERE received_ms < ?1 \
         AND (categories != 0 OR received_ms < ?2) ORDER BY id LIMIT 1000"
    );
    drop_where(tx, &opts.dir, leased, &sql, &[cutoff, report_cutoff], DropReason::TooOld, p)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Encoding;

    fn rec(body: &'static [u8]) -> Record {
        Record::for_test(body, now_ms())
    }

    fn options(dir: &Path, order: DeliveryOrder) -> SqliteOptions {
        SqliteOptions {
            dir: dir.to_path_buf(),
            durability: Durability::Process,
            max_bytes: 1 << 30,
            max_age: Duration::from_secs(3600),
            full_policy: FullPolicy::DropOldest,
            order,
            inline_limit: 1 << 20,
            max_page_count: None,
        }
    }

    fn open(dir: &Path, order: DeliveryOrder) -> SqliteSpool {
        SqliteSpool::open(options(dir, order)).unwrap()
    }

    fn bodies(batch: &[Queued]) -> Vec<&[u8]> {
        batch.iter().map(|q| &q.record.body[..]).collect()
    }

    /// The borrowed meta encoder writes exactly what the owned `Meta` did, so spools written
    /// before it read back the same, and non-UTF-8 header values are still left out.
    #[test]
    fn meta_is_encoded_as_before() {
        for (event_id, encoding) in [(None, Encoding::Identity), (Some("ab".repeat(16)), Encoding::Gzip)] {
            let mut r = rec(b"{}");
            r.headers = vec![
                (http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/x-sentry-envelope")),
                (http::HeaderName::from_static("x-odd"), http::HeaderValue::from_bytes(b"\xff\xfe").unwrap()),
                (http::HeaderName::from_static("x-sentry-auth"), http::HeaderValue::from_static("Sentry sentry_key=k")),
            ];
            r.event_id = event_id.clone();
            r.encoding = encoding;
            r.item_types = vec!["event".into(), "attachment".into()];
            let owned = Meta {
                endpoint: r.endpoint.name().to_owned(),
                method: r.method.as_str().to_owned(),
                path: r.path_and_query.clone(),
                headers: vec![
                    ("content-type".into(), "application/x-sentry-envelope".into()),
                    ("x-sentry-auth".into(), "Sentry sentry_key=k".into()),
                ],
                project: r.project_id,
                key: r.public_key.clone(),
                event_id,
                items: r.item_types.clone(),
                encoding: r.stored_label().map(str::to_owned),
            };
            assert_eq!(
                String::from_utf8(encode_meta(&r)).unwrap(),
                String::from_utf8(serde_json::to_vec(&owned).unwrap()).unwrap()
            );
        }
    }

    /// The WAL flusher syncs a file that comes and goes (the WAL is removed at a clean close) and
    /// stops as soon as its spool lets go of the sender, so closed spools leave no thread behind.
    #[test]
    fn the_wal_flusher_survives_a_missing_wal_and_stops_with_its_spool() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("spool.db-wal");
        let (stop, stopped) = mpsc::channel::<()>();
        let (done_tx, done) = mpsc::channel();
        let w = wal.clone();
        std::thread::spawn(move || {
            flush_wal(&w, &stopped);
            let _ = done_tx.send(());
        });
        std::thread::sleep(WAL_FLUSH_EVERY * 3);
        std::fs::write(&wal, b"frames").unwrap();
        std::thread::sleep(WAL_FLUSH_EVERY * 3);
        std::fs::remove_file(&wal).unwrap();
        std::thread::sleep(WAL_FLUSH_EVERY * 3);
        assert!(done.try_recv().is_err(), "the flusher runs while its spool is open");
        drop(stop);
        assert!(done.recv_timeout(Duration::from_secs(5)).is_ok(), "the flusher stops with its spool");
    }

    /// An append and a read handed to the writer in the same group, where the read queries the
    /// database (an unleased row is not in the cache): the read leases the new row before its
    /// record reaches the cache, and the cache must not hand it out a second time.
    #[tokio::test]
    async fn a_record_read_in_its_append_group_is_leased_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), DeliveryOrder::OldestFirst);
        let now = || now_ms() + 1;
        s.append(vec![rec(b"x"), rec(b"y")]).await.unwrap();
        let xy = s.read_batch(10, usize::MAX, now()).await.unwrap();
        s.reschedule(vec![Reschedule { id: xy[1].id, due_ms: 0, count_attempt: true }]).await.unwrap();
        let (appended, read) = tokio::join!(s.append(vec![rec(b"a")]), s.read_batch(10, usize::MAX, now()));
        appended.unwrap();
        assert_eq!(bodies(&read.unwrap()), [b"y".as_ref(), b"a"]);
        // x comes back: an unleased row that is not in the cache, and the only one to read.
        s.reschedule(vec![Reschedule { id: xy[0].id, due_ms: 0, count_attempt: true }]).await.unwrap();
        let mut seen = Vec::new();
        for _ in 0..3 {
            for q in s.read_batch(10, usize::MAX, now()).await.unwrap() {
                seen.push(q.record.body.clone());
            }
        }
        assert_eq!(seen, [Bytes::from_static(b"x")]);
        s.close().await;
    }

    /// A read in the same group as appends, with nothing else changed, answers from the cache,
    /// new rows included.
    #[tokio::test]
    async fn a_read_in_the_append_group_gets_the_new_rows() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), DeliveryOrder::OldestFirst);
        let (appended, read) = tokio::join!(s.append(vec![rec(b"a")]), s.read_batch(10, usize::MAX, now_ms() + 1));
        appended.unwrap();
        assert_eq!(bodies(&read.unwrap()), [b"a".as_ref()]);
        assert!(s.read_batch(10, usize::MAX, now_ms() + 1).await.unwrap().is_empty());
        s.close().await;
    }

    /// SQLite's auto-checkpoint is replaced by a hook that only counts WAL pages; the writer
    /// checkpoints after answering, so the WAL stays near the threshold however much is written.
    #[tokio::test]
    async fn the_writer_checkpoints_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), DeliveryOrder::OldestFirst);
        let body = Bytes::from(vec![b'x'; 4000]);
        // 12,000 records of 4 KB: three times the largest WAL the writer lets grow, in pages.
        for _ in 0..300 {
            let recs = (0..40).map(|_| Record { body: body.clone(), ..rec(b"") }).collect();
            s.append(recs).await.unwrap();
        }
        let wal = || std::fs::metadata(dir.path().join("spool.db-wal")).unwrap().len();
        let most = (CHECKPOINT_MAX_PAGES as u64 + 100) * (4096 + 24);
        assert!(wal() < most, "WAL of {} bytes: not checkpointed", wal());
        s.close().await;
    }

    /// `disk_bytes` is what the spool's files take: the database, its WAL and the body files.
    #[tokio::test]
    async fn disk_bytes_counts_the_database_the_wal_and_body_files() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), DeliveryOrder::OldestFirst);
        let big = Bytes::from(vec![b'x'; 2 << 20]);
        s.append(vec![rec(b"small"), Record { body: big, ..rec(b"") }]).await.unwrap();
        let files: u64 = ["spool.db", "spool.db-wal"]
            .iter()
            .map(|f| std::fs::metadata(dir.path().join(f)).map_or(0, |m| m.len()))
            .sum();
        let bodies: u64 =
            std::fs::read_dir(dir.path().join("bodies")).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
        assert!(bodies >= 2 << 20, "the large body is a file of its own");
        assert_eq!(s.disk_bytes(), Some(files + bodies));
        s.close().await;
    }

    /// Above the threshold a checkpoint waits for its spacing, unless the WAL reaches the cap.
    #[test]
    fn checkpoints_keep_their_spacing_below_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(options(dir.path(), DeliveryOrder::OldestFirst)).unwrap();
        let now = std::time::Instant::now();
        let long_ago = now.checked_sub(CHECKPOINT_EVERY).unwrap_or(now);
        let mut after = |pages: i32, last: std::time::Instant| {
            db.wal_pages.store(pages, Ordering::Relaxed);
            db.last_checkpoint = last;
            db.checkpoint_if_due();
            db.wal_pages.load(Ordering::Relaxed)
        };
        assert_eq!(after(CHECKPOINT_PAGES + 10, std::time::Instant::now()), CHECKPOINT_PAGES + 10, "too soon");
        assert_eq!(after(CHECKPOINT_PAGES - 1, long_ago), CHECKPOINT_PAGES - 1, "below the threshold");
        if long_ago < now {
            assert_eq!(after(CHECKPOINT_PAGES + 10, long_ago), 0, "due");
        }
        assert_eq!(after(CHECKPOINT_MAX_PAGES, std::time::Instant::now()), 0, "at the cap");
    }

    #[tokio::test]
    async fn cached_reads_follow_the_delivery_order_and_the_bounds() {
        for (order, want) in [
            (DeliveryOrder::OldestFirst, [b"a".as_ref(), b"b", b"c"]),
            (DeliveryOrder::NewestFirst, [b"c".as_ref(), b"b", b"a"]),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let s = open(dir.path(), order);
            for b in [b"a", b"b", b"c"] {
                s.append(vec![rec(b)]).await.unwrap();
            }
            let now = now_ms() + 1;
            let first = s.read_batch(2, usize::MAX, now).await.unwrap();
            let second = s.read_batch(2, 1, now).await.unwrap();
            assert_eq!(bodies(&first), want[..2]);
            assert_eq!(bodies(&second), want[2..]);
            assert!(s.read_batch(2, usize::MAX, now).await.unwrap().is_empty());
            // Acked rows are gone; a rescheduled one comes back from the database.
            s.ack(vec![first[0].id, second[0].id]).await.unwrap();
            s.reschedule(vec![Reschedule { id: first[1].id, due_ms: now, count_attempt: true }]).await.unwrap();
            let again = s.read_batch(10, usize::MAX, now).await.unwrap();
            assert_eq!(bodies(&again), [b"b".as_ref()]);
            assert_eq!(again[0].attempts, 1);
            s.close().await;
        }
    }
}
