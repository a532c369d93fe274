//! The write-ahead log's upkeep: when the writer checkpoints, and the thread that writes the WAL's
//! dirty pages back ahead of it.
//!
//! Checkpoints (copying the WAL back into the database) are run by the writer after it has sent a
//! group's answers, not by SQLite inside the commit that crossed the threshold: that commit's
//! requests would all wait for the copy and its fsyncs. A WAL hook replaces SQLite's
//! auto-checkpoint and only counts pages. Checkpoints come at 1,000 WAL pages but at most every
//! 100 ms below 4,000 pages: at a few connections the WAL fills with copies of the same few pages
//! in a few tens of milliseconds, and each checkpoint was a stall every request saw. With
//! `durability = process` a small thread also writes the WAL's dirty pages back once
//! [`FLUSH_PAGES`] have been written since its last sync (at most every 20 ms, and never while
//! nothing is written), so the fsync that every checkpoint starts with finds little to do and
//! stalls the writer (and every request waiting on it) for a fraction of a millisecond instead of
//! several. The writer decides after each commit whether to wake it: at a few envelopes a second
//! a sync per write was a third of a thread hand-off per envelope and real disk writes of pages
//! that the next commits overwrite anyway.
//!
//! The spacing is measured on the monotonic clock of the writer's own thread, not the spool's
//! clock: it is about how fast the WAL really fills, which a test's paused clock says nothing of.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::db::Db;
use super::SqliteOptions;
use crate::config::Durability;

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

/// How often, at most, the WAL's dirty pages are written back ahead of a checkpoint.
const WAL_FLUSH_EVERY: Duration = Duration::from_millis(20);

/// WAL pages written since the last sync that make the writer wake the flusher (512 KiB: an
/// eighth of what a checkpoint copies, so its fsync never finds more than that to write).
pub(super) const FLUSH_PAGES: i32 = 128;

/// Whether a WAL of `pages`, `since` the last checkpoint, is to be checkpointed now.
fn checkpoint_due(pages: i32, since: Duration) -> bool {
    pages >= CHECKPOINT_MAX_PAGES || pages >= CHECKPOINT_PAGES && since >= CHECKPOINT_EVERY
}

/// Replaces SQLite's auto-checkpoint with a hook that only counts: returns the count of pages in
/// the WAL after the last commit.
pub(super) fn count_wal_pages(conn: &mut Connection) -> rusqlite::Result<Arc<AtomicI32>> {
    let wal_pages = Arc::new(AtomicI32::new(0));
    let counter = wal_pages.clone();
    conn.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages: std::os::raw::c_int| {
        counter.store(pages, Ordering::Relaxed);
        Ok(())
    }))?;
    Ok(wal_pages)
}

impl Db {
    /// Whether the writer has something to do while no hand-off comes: a checkpoint the spacing
    /// put off, or failed acks and reschedules to commit again.
    pub(super) fn idle_work(&self) -> bool {
        self.wal_pages.load(Ordering::Relaxed) >= CHECKPOINT_PAGES
            || !self.failed_acks.is_empty()
            || !self.failed_reschedules.is_empty()
    }

    /// Copies the WAL back into the database once it holds [`CHECKPOINT_PAGES`] and the last
    /// checkpoint is [`CHECKPOINT_EVERY`] old (or it holds [`CHECKPOINT_MAX_PAGES`]). Called after
    /// a group's answers are sent, so the requests of the commit that crossed the threshold do not
    /// wait for it, and when the writer is idle, so a WAL left behind by a burst is not kept.
    pub(super) fn checkpoint_if_due(&mut self) {
        if checkpoint_due(self.wal_pages.load(Ordering::Relaxed), self.last_checkpoint.elapsed()) {
            if let Err(e) = self.conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                tracing::debug!(error = %e, "WAL checkpoint failed; the next one retries");
            }
            self.wal_pages.store(0, Ordering::Relaxed);
            self.last_checkpoint = Instant::now();
        }
    }
}

/// The WAL flusher thread for `durability = process`: it sleeps until the writer wakes it
/// ([`FlushWaker`], [`Flusher::poke`]), waits [`WAL_FLUSH_EVERY`] so that one sync covers every
/// write of that window, syncs the WAL and sleeps again. An idle spool costs no wake-ups (it used to poll
/// every 20 ms whatever happened). Dropping it stops the thread.
pub(super) struct Flusher {
    state: Arc<FlushState>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct FlushState {
    /// A write was handed over since the last sync.
    pending: AtomicBool,
    stop: AtomicBool,
    /// Syncs done (for tests).
    syncs: AtomicU64,
}

impl Flusher {
    /// Starts the flusher, for `durability = process` only.
    pub(super) fn start(opts: &SqliteOptions) -> std::io::Result<Option<Flusher>> {
        if opts.durability != Durability::Process {
            return Ok(None);
        }
        Self::spawn(Db::wal_path(&opts.dir)).map(Some)
    }

    fn spawn(wal: std::path::PathBuf) -> std::io::Result<Flusher> {
        let state = Arc::new(FlushState::default());
        let s = state.clone();
        let thread = std::thread::Builder::new().name("spool-flush".into()).spawn(move || flush_wal(&wal, &s))?;
        Ok(Flusher { state, thread: Some(thread) })
    }

    /// Asks for a sync of the WAL. Costs an atomic swap, and a wake-up of the flusher only for
    /// the first ask of a window.
    #[cfg(test)]
    pub(super) fn poke(&self) {
        if let Some(t) = &self.thread {
            poke(&self.state, t.thread());
        }
    }

    /// The writer's handle: it wakes the flusher once enough pages were written.
    pub(super) fn waker(&self) -> Option<FlushWaker> {
        let thread = self.thread.as_ref()?.thread().clone();
        Some(FlushWaker { state: self.state.clone(), thread, synced_at: 0 })
    }
}

fn poke(state: &FlushState, thread: &std::thread::Thread) {
    if !state.pending.swap(true, Ordering::AcqRel) {
        thread.unpark();
    }
}

/// The writer's side of the flusher: after each commit it says how many pages the WAL holds, and
/// the flusher is woken only when [`FLUSH_PAGES`] were written since the last wake.
pub(super) struct FlushWaker {
    state: Arc<FlushState>,
    thread: std::thread::Thread,
    /// WAL pages at the last wake.
    synced_at: i32,
}

impl FlushWaker {
    /// Called after a commit with the WAL's page count.
    pub(super) fn committed(&mut self, pages: i32) {
        if pages < self.synced_at {
            // A checkpoint reset the WAL, and synced what was in it.
            self.synced_at = 0;
        }
        if pages - self.synced_at >= FLUSH_PAGES {
            self.synced_at = pages;
            poke(&self.state, &self.thread);
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// Writes the WAL's dirty pages back on a thread of its own, after each poke, until stopped.
///
/// With `synchronous=NORMAL` commits do not sync, but every checkpoint (at 1,000-4,000 WAL
/// pages) first fsyncs the WAL on the writer thread, and under load that fsync found ~4 MB
/// dirty and took 2.5-3.5 ms, several times a second: every request of those moments waited for
/// it (a large part of the p99). Syncing the same file from here at most every 20 ms while
/// writes come leaves the checkpoint's fsync little to do. Durability does not depend on this
/// thread; it only moves when the kernel writes.
fn flush_wal(wal: &Path, state: &FlushState) {
    let mut file: Option<(std::fs::File, Instant)> = None;
    loop {
        // Parked until a poke or the stop (unpark before park returns at once, so none is lost).
        while !state.pending.load(Ordering::Acquire) && !state.stop.load(Ordering::Acquire) {
            std::thread::park();
        }
        if state.stop.load(Ordering::Acquire) {
            return;
        }
        // One sync for every write of the window (and for the one just poked, which the writer
        // is committing meanwhile).
        std::thread::park_timeout(WAL_FLUSH_EVERY);
        if state.stop.load(Ordering::Acquire) {
            return;
        }
        state.pending.store(false, Ordering::Release);
        // Reopened after a second: the WAL is deleted at a clean close and a quarantined spool
        // starts a new one, so a kept descriptor could point at a file nobody writes.
        if file.as_ref().is_none_or(|(_, at)| at.elapsed() > Duration::from_secs(1)) {
            file = std::fs::File::open(wal).ok().map(|f| (f, Instant::now()));
        }
        if let Some((f, _)) = &file {
            if let Err(e) = f.sync_data() {
                tracing::debug!(error = %e, "WAL write-back failed; the checkpoint will sync it");
            }
        }
        state.syncs.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DeliveryOrder;
    use crate::spool::sqlite::tests::{open, options, rec};
    use crate::spool::{Record, Spool};
    use bytes::Bytes;

    #[test]
    fn the_checkpoint_rule_spaces_checkpoints_below_the_cap() {
        let (soon, late) = (CHECKPOINT_EVERY / 2, CHECKPOINT_EVERY);
        assert!(!checkpoint_due(CHECKPOINT_PAGES - 1, late), "below the threshold");
        assert!(!checkpoint_due(CHECKPOINT_PAGES, soon), "too soon");
        assert!(checkpoint_due(CHECKPOINT_PAGES, late), "due");
        assert!(checkpoint_due(CHECKPOINT_MAX_PAGES, Duration::ZERO), "at the cap");
    }

    /// The WAL flusher syncs after a poke, survives a WAL that comes and goes (it is removed at a
    /// clean close), sleeps while nothing is written, and stops when dropped.
    #[test]
    fn the_wal_flusher_syncs_when_poked_sleeps_when_idle_and_stops_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("spool.db-wal");
        let f = Flusher::spawn(wal.clone()).unwrap();
        let syncs = || f.state.syncs.load(Ordering::Relaxed);
        let wait_for = |n: u64| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while syncs() < n {
                assert!(Instant::now() < deadline, "no sync after a poke");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        f.poke();
        wait_for(1);
        std::fs::write(&wal, b"frames").unwrap();
        for _ in 0..10 {
            f.poke();
        }
        wait_for(2);
        // Nothing written: no more syncs (the thread is parked, not polling).
        let before = syncs();
        std::thread::sleep(WAL_FLUSH_EVERY * 5);
        assert_eq!(syncs(), before, "the flusher synced with nothing written");
        std::fs::remove_file(&wal).unwrap();
        f.poke();
        wait_for(before + 1);
        let thread = f.thread.as_ref().unwrap().thread().clone();
        drop(f);
        // Dropping joined the thread: unparking it now is harmless and nothing is left running.
        thread.unpark();
    }

    /// The writer wakes the flusher once per [`FLUSH_PAGES`] written, not per commit, and starts
    /// counting again after a checkpoint reset the WAL.
    #[test]
    fn the_flusher_is_woken_once_enough_pages_were_written() {
        let dir = tempfile::tempdir().unwrap();
        let f = Flusher::spawn(dir.path().join("spool.db-wal")).unwrap();
        let mut w = f.waker().unwrap();
        let pending = || f.state.pending.swap(false, Ordering::AcqRel);
        for pages in (3..FLUSH_PAGES).step_by(3) {
            w.committed(pages);
            assert!(!pending(), "woken at {pages} pages");
        }
        w.committed(FLUSH_PAGES + 1);
        assert!(pending(), "not woken at {} pages", FLUSH_PAGES + 1);
        w.committed(FLUSH_PAGES + 20);
        assert!(!pending(), "woken again 19 pages later");
        w.committed(5);
        assert!(!pending(), "woken after a reset with 5 pages");
        w.committed(FLUSH_PAGES + 5);
        assert!(pending(), "the count did not restart after the reset");
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
            let recs = (0..40).map(|_| Record { body: body.clone().into(), ..rec(b"") }).collect();
            s.append(recs).await.unwrap();
        }
        let wal = || std::fs::metadata(dir.path().join("spool.db-wal")).unwrap().len();
        let most = (CHECKPOINT_MAX_PAGES as u64 + 100) * (4096 + 24);
        assert!(wal() < most, "WAL of {} bytes: not checkpointed", wal());
        s.close().await;
    }

    /// Above the threshold a checkpoint waits for its spacing, unless the WAL reaches the cap.
    #[test]
    fn checkpoints_keep_their_spacing_below_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(options(dir.path(), DeliveryOrder::OldestFirst), 1).unwrap();
        let now = Instant::now();
        let long_ago = now.checked_sub(CHECKPOINT_EVERY).unwrap_or(now);
        let mut after = |pages: i32, last: Instant| {
            db.wal_pages.store(pages, Ordering::Relaxed);
            db.last_checkpoint = last;
            db.checkpoint_if_due();
            db.wal_pages.load(Ordering::Relaxed)
        };
        assert_eq!(after(CHECKPOINT_PAGES + 10, Instant::now()), CHECKPOINT_PAGES + 10, "too soon");
        assert_eq!(after(CHECKPOINT_PAGES - 1, long_ago), CHECKPOINT_PAGES - 1, "below the threshold");
        if long_ago < now {
            assert_eq!(after(CHECKPOINT_PAGES + 10, long_ago), 0, "due");
        }
        assert_eq!(after(CHECKPOINT_MAX_PAGES, Instant::now()), 0, "at the cap");
    }
}
