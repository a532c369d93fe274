//! The writer thread's state and how the database is opened: pragmas, the schema, and what a
//! restart starts from (counts, due times, no leases).
//!
//! One process owns the spool. The state the writer keeps besides the rows (leases, the record
//! cache, failed writes to retry, the free-space check) lives here, in memory only: a restart
//! forgets it on purpose.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};

use super::cache::RecordCache;
use super::handoff::{Cmd, Out};
use super::space::{ensure_reserve, is_disk_full};
use super::wal::count_wal_pages;
use super::writer::Quiet;
use super::{Shared, SqliteOptions};
use crate::config::Durability;
use crate::spool::Reschedule;

/// The writer thread's state.
pub(super) struct Db {
    /// The connection, used by this thread only.
    pub(super) conn: Connection,
    /// Pages in the WAL after the last commit (set by the WAL hook).
    pub(super) wal_pages: Arc<AtomicI32>,
    /// When the writer last checkpointed (see `wal`).
    pub(super) last_checkpoint: Instant,
    /// The spool's settings. Its clock is not read here: the writer goes by the times it is
    /// handed, see `handoff`.
    pub(super) opts: SqliteOptions,
    /// Rows in the database (waiting or leased).
    pub(super) len: u64,
    /// Their body bytes.
    pub(super) bytes: u64,
    /// The earliest due time in the future at the last group (0: none).
    pub(super) next_due: u64,
    /// When rows were last expired by age (at most once a second, on reads).
    pub(super) last_expire: u64,
    /// Sequence of body file names in this process.
    pub(super) file_seq: u64,
    /// Whether the last group queued client reports (new work for dispatch).
    pub(super) queued_reports: bool,
    /// Rows handed to dispatch and not yet acked or rescheduled. Kept in memory, not in the
    /// database, so that reading needs no write (it must work on a full disk, to free it) and so
    /// that a restart forgets them: what was being sent is sent again.
    pub(super) leased: HashSet<i64>,
    /// When SQLite last said the disk is full.
    pub(super) last_full: u64,
    /// When the reserve file was last written again.
    pub(super) last_reserve_try: u64,
    /// Acks and reschedules whose transaction failed (a full disk): their rows stay leased, so
    /// they are not sent again, and the writes are retried until they commit.
    pub(super) failed_acks: Vec<u64>,
    pub(super) failed_reschedules: Vec<Reschedule>,
    /// Failed transactions not logged yet: one line per interval, with the count.
    pub(super) fail_log: Quiet,
    /// Last free-space check: (checked at, appends allowed).
    pub(super) space: (u64, bool),
    /// Free space is within a few watermarks of the limit: check it on every group of appends.
    pub(super) space_tight: bool,
    /// Records appended and not yet leased, so that dispatch gets them without reading the body
    /// back from the database (the common case: dispatch is milliseconds behind ingest).
    pub(super) cache: RecordCache,
    /// Answers of the group being applied, in command order, sent back after it.
    pub(super) answers: Vec<(Cmd, Out)>,
}

impl Db {
    /// The database file of the spool in `dir`.
    pub(super) fn db_path(dir: &Path) -> PathBuf {
        dir.join("spool.db")
    }

    /// The database's write-ahead log, beside it.
    pub(super) fn wal_path(dir: &Path) -> PathBuf {
        dir.join("spool.db-wal")
    }

    /// Opens (or creates) the database at `now`: pragmas, schema, the WAL hook, the reserve file,
    /// and the counts and due times a restart starts from.
    pub(super) fn open(opts: SqliteOptions, now: u64) -> Result<Db, rusqlite::Error> {
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
        // Checkpoints run after a group's answers are out, not inside the commit that crosses
        // the threshold: see `wal`.
        let wal_pages = count_wal_pages(&mut conn)?;
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
            last_checkpoint: Instant::now(),
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
            fail_log: Quiet::default(),
            space: (0, true),
            space_tight: true,
            cache: RecordCache::default(),
            answers: Vec::new(),
        };
        ensure_reserve(&db.opts.dir);
        // Waits decided by the previous process (circuit holds, per-envelope backoff, rate
        // limits) end with it: what they were based on is gone, and a held backlog would
        // otherwise sit out minutes of backoff after the restart that follows an outage. A
        // limit that still holds is learnt again from the first answer.
        match db.conn.execute("UPDATE envelopes SET due_ms = received_ms WHERE due_ms > ?1", params![now as i64]) {
            Ok(0) => {}
            Ok(released) => tracing::info!(
                envelopes = released,
                "envelopes waiting for a retry time are due again after the restart"
            ),
            // A full disk must not keep the sidecar from starting: delivering the backlog is what
            // frees it, and the waits only end a little later than they would have.
            Err(e) if is_disk_full(&e) => {
                tracing::warn!(error = %e, "disk full at start: envelopes keep the retry times they had");
            }
            Err(e) => return Err(e),
        }
        db.next_due = db.query_next_due(now)?;
        if len > 0 {
            tracing::info!(envelopes = len, bytes, "spool opened with a backlog; delivering it");
        }
        Ok(db)
    }

    /// Makes the counts and the next due time visible to the spool's callers.
    pub(super) fn publish(&self, shared: &Shared) {
        shared.len.store(self.len, Ordering::Release);
        shared.bytes.store(self.bytes, Ordering::Release);
        shared.next_due.store(self.next_due, Ordering::Release);
        // Rows are appended in the order they are accepted, so the lowest id is the oldest: one
        // seek on the primary key, not a scan.
        let oldest = self
            .conn
            .prepare_cached("SELECT received_ms FROM envelopes ORDER BY id LIMIT 1")
            .and_then(|mut st| st.query_row([], |r| r.get::<_, i64>(0)))
            .map_or(0, |ms| ms.max(1) as u64);
        shared.oldest.store(oldest, Ordering::Release);
    }
}
