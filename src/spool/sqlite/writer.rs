//! The writer thread: it takes whatever hand-offs are queued as one group, applies the group in
//! one transaction, sends the answers back, then checkpoints if due.
//!
//! Failures are handled here too. A failed group is retried command by command, so that one
//! failing append does not fail the acks that came with it. Failed acks and reschedules keep
//! their rows leased (so nothing is sent again in a loop) and are retried until they commit. On a
//! full disk the group is retried once after making room; a corrupt database is replaced.

use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::db::Db;
use super::handoff::{answer, Cmd, Handoff, Out};
use super::queries::{ack, append, begin, commit, expire, insert_all, read, reschedule, rollback, Pending};
use super::recovery::is_corruption;
use super::space::is_disk_full;
use super::wal::FlushWaker;
use super::{lock, Shared};
use crate::spool::report;
use crate::spool::SpoolError;

/// The writer thread: applies hand-offs until the spool closes, then checkpoints the WAL away.
/// `now` is the time the database was opened at.
/// `flush` wakes the WAL flusher once enough was written (`durability = process`).
pub(super) fn run(
    mut db: Db,
    now: u64,
    rx: mpsc::Receiver<Handoff>,
    shared: Arc<Shared>,
    notify: Arc<Notify>,
    mut flush: Option<FlushWaker>,
) {
    // The time of the last hand-off and when it came, to tell the time while idle: this thread
    // reads no clock of the spool's (see `handoff`), so it counts on from the last time it had.
    let mut last = (now, Instant::now());
    loop {
        // Idle, the writer wakes only for work that waits on it (a checkpoint the spacing put
        // off, acks to retry); otherwise it sleeps until the next hand-off.
        let received = if db.idle_work() {
            rx.recv_timeout(Duration::from_secs(1))
        } else {
            rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected)
        };
        let first = match received {
            Ok(c) => c,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                db.checkpoint_if_due();
                let idle = u64::try_from(last.1.elapsed().as_millis()).unwrap_or(u64::MAX / 4);
                if db.retry_backlog(last.0.saturating_add(idle)) {
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
        // The group goes by the latest time among its hand-offs.
        let mut now = first.now;
        while group.len() < 4096 {
            match rx.try_recv() {
                Ok(more) => {
                    now = now.max(more.now);
                    senders.push((more.cmds.len(), more.relay));
                    group.extend(more.cmds);
                }
                Err(_) => break,
            }
        }
        let appends = group.iter().any(|c| matches!(c, Cmd::Append(..)));
        let mut wake = appends || group.iter().any(|c| matches!(c, Cmd::Reschedule(..)));
        // Dispatch waits for records: lease them in this group, so that they reach it with the
        // append's answers instead of with a read of their own.
        let wanted = if appends { shared.wanted.swap(0, Ordering::AcqRel) } else { 0 };
        if wanted > 0 {
            group.push(Cmd::Offer { max: wanted });
        }
        last = (now, Instant::now());
        db.apply(group, now, &shared);
        if wanted > 0 {
            db.keep_offered(&shared);
        }
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
        if let Some(f) = &mut flush {
            f.committed(db.wal_pages.load(Ordering::Relaxed));
        }
        db.checkpoint_if_due();
    }
    // Checkpoint so the WAL does not have to be replayed at the next start.
    let _ = db.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
}

/// How many body bytes an offer leases at most (as dispatch's reads).
const OFFER_BYTES: usize = 8 * 1024 * 1024;

impl Db {
    /// Moves an offer's records from the answers to where dispatch takes them.
    fn keep_offered(&mut self, shared: &Shared) {
        let mut fresh = Vec::new();
        self.answers.retain_mut(|(cmd, out)| {
            if !matches!(cmd, Cmd::Offer { .. }) {
                return true;
            }
            if let Out::Batch(Ok(v)) = out {
                fresh.append(v);
            }
            false
        });
        if !fresh.is_empty() {
            lock(&shared.fresh).append(&mut fresh);
        }
    }

    /// Retries failed acks and reschedules; returns whether they committed.
    fn retry_backlog(&mut self, now: u64) -> bool {
        if self.failed_acks.is_empty() && self.failed_reschedules.is_empty() {
            return false;
        }
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

    /// Applies a group at `now` in one transaction; if the transaction fails, each command is
    /// retried on its own so that one failing append does not fail the acks that came with it.
    fn apply(&mut self, group: Vec<Cmd>, now: u64, shared: &Shared) {
        self.retry_backlog(now);
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
                        Err(e) => self.fail(single, e, now, shared),
                    }
                }
            }
            Err(e) => self.fail(group, e, now, shared),
        }
        if let Ok(d) = self.query_next_due(now) {
            self.next_due = d;
        }
        self.maybe_restore_reserve(now);
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

    /// After a failed transaction: answer the group with the error, keep its acks and
    /// reschedules for a retry, and recover if the database is corrupt.
    fn fail(&mut self, group: Vec<Cmd>, e: rusqlite::Error, now: u64, shared: &Shared) {
        if let Some(failures) = self.fail_log.hit(now) {
            tracing::error!(error = %e, failures, "spool transaction failed");
        }
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
            Cmd::Read { .. } | Cmd::Offer { .. } => Out::Batch(Err(to_spool_err(clone_err(&e)))),
            _ => Out::Unit(Err(to_spool_err(clone_err(&e)))),
        });
        let outs: Vec<Out> = outs.collect();
        self.answers.extend(group.into_iter().zip(outs));
        if corrupt {
            self.recover_from_corruption(now, shared);
        }
    }

    /// Readiness reports the last failed write until an append succeeds again.
    fn clear_error_if_appended(&self, group: &[Cmd], outs: &[Out], shared: &Shared) {
        let appended = group.iter().zip(outs).any(|(c, o)| matches!((c, o), (Cmd::Append(..), Out::Unit(Ok(())))));
        if appended {
            self.set_error(shared, None);
        }
    }

    /// Sets (or clears) the error readiness reports.
    pub(super) fn set_error(&self, shared: &Shared, e: Option<String>) {
        // Disk-full is reported through the failing appends; readiness reflects any other error.
        *lock(&shared.error) = e;
    }

    /// Applies a committed transaction's side effects to the writer's memory and the files.
    fn commit_effects(&mut self, p: Pending) {
        for id in &p.deleted {
            self.cache.take(*id);
        }
        for id in &p.lease_remove {
            self.leased.remove(id);
        }
        self.leased.extend(p.lease_add);
        self.len = (self.len as i64 + p.dlen).max(0) as u64;
        self.bytes = (self.bytes as i64 + p.dbytes).max(0) as u64;
        for f in p.to_delete {
            let _ = std::fs::remove_file(f);
        }
        drop(p.written);
    }

    /// Runs a group in one transaction (its drops' client reports included).
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
                    Cmd::Offer { max } => Out::Batch(Ok(read(
                        tx,
                        &self.opts,
                        unleased,
                        &self.leased,
                        &mut self.cache,
                        *max,
                        OFFER_BYTES,
                        now,
                        &mut pending,
                    )?)),
                    Cmd::Ack(ids, _) => {
                        ack(tx, &self.opts.dir, ids, &mut pending)?;
                        pending.lease_remove.extend(ids.iter().map(|i| *i as i64));
                        Out::Unit(Ok(()))
                    }
                    Cmd::Reschedule(items, _) => {
                        reschedule(tx, items)?;
                        pending.lease_remove.extend(items.iter().map(|r| r.id as i64));
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

/// Repeated failures logged at most once per [`Quiet::INTERVAL_MS`], with how many there were:
/// on a full disk every group fails, and a line each was hundreds of lines a second.
#[derive(Debug, Default)]
pub(super) struct Quiet {
    /// Failures since the last line.
    count: u64,
    /// When the last line was written (None: never).
    last: Option<u64>,
}

impl Quiet {
    /// Least time between two lines.
    pub(super) const INTERVAL_MS: u64 = 10_000;

    /// Counts a failure at `now`; returns the count to log if a line is due (the first failure
    /// is logged at once).
    pub(super) fn hit(&mut self, now: u64) -> Option<u64> {
        self.count += 1;
        if self.last.is_some_and(|t| now.saturating_sub(t) < Self::INTERVAL_MS) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.count))
    }
}

/// A copy of `e` for each caller of a failed group (`rusqlite::Error` is not `Clone`).
fn clone_err(e: &rusqlite::Error) -> rusqlite::Error {
    match e {
        rusqlite::Error::SqliteFailure(f, m) => rusqlite::Error::SqliteFailure(*f, m.clone()),
        other => rusqlite::Error::InvalidParameterName(other.to_string()),
    }
}

/// The caller's error for a failed transaction: a full disk stays recognisable as one.
pub(super) fn to_spool_err(e: rusqlite::Error) -> SpoolError {
    if is_disk_full(&e) {
        SpoolError::Io(std::io::Error::new(std::io::ErrorKind::StorageFull, e.to_string()))
    } else {
        SpoolError::Io(std::io::Error::other(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::oneshot;

    use super::*;
    use crate::config::DeliveryOrder;
    use crate::spool::sqlite::tests::{options, rec};

    fn read(db: &mut Db, shared: &Shared, now: u64) -> Vec<u64> {
        let (reply, mut rx) = oneshot::channel();
        db.apply(vec![Cmd::Read { max: 10, max_bytes: usize::MAX, now, reply }], now, shared);
        std::mem::take(&mut db.answers).into_iter().for_each(|(c, o)| answer(c, o));
        rx.try_recv().unwrap().unwrap().iter().map(|q| q.id).collect()
    }

    /// An ack whose commit fails keeps its row leased (so it is not read and sent again) and
    /// commits later, once the cause is gone.
    #[test]
    fn an_ack_that_does_not_commit_keeps_the_row_leased_until_it_does() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(options(dir.path(), DeliveryOrder::OldestFirst), 1_000).unwrap();
        let shared = Shared::default();
        let (reply, _rx) = oneshot::channel();
        let now = crate::clock::now_ms();
        db.apply(vec![Cmd::Append(vec![Arc::new(rec(b"one"))], reply)], now, &shared);
        db.answers.clear();
        let ids = read(&mut db, &shared, now);
        assert_eq!(ids.len(), 1);
        // A deferred foreign key fails the transaction at COMMIT, after the DELETE went through,
        // as a WAL write on a full disk does.
        db.conn
            .execute_batch(
                "PRAGMA foreign_keys=ON;
                 CREATE TABLE parent (id INTEGER PRIMARY KEY);
                 CREATE TABLE child (p INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED);
                 CREATE TRIGGER fail_at_commit AFTER DELETE ON envelopes BEGIN INSERT INTO child VALUES (42); END;",
            )
            .unwrap();
        let (reply, mut ack_rx) = oneshot::channel();
        db.apply(vec![Cmd::Ack(ids.clone(), reply)], now, &shared);
        std::mem::take(&mut db.answers).into_iter().for_each(|(c, o)| answer(c, o));
        assert!(ack_rx.try_recv().unwrap().is_err(), "the ack failed");
        assert!(db.leased.contains(&(ids[0] as i64)), "still leased");
        assert_eq!(read(&mut db, &shared, now + 10), Vec::<u64>::new(), "not handed out again");
        assert_eq!(db.len, 1);

        db.conn.execute_batch("DROP TRIGGER fail_at_commit;").unwrap();
        assert!(db.retry_backlog(now + 20), "the ack is retried and commits");
        assert!(db.leased.is_empty() && db.failed_acks.is_empty());
        assert_eq!(db.len, 0);
    }

    #[test]
    fn repeated_failures_are_logged_once_per_interval_with_their_count() {
        let mut q = Quiet::default();
        assert_eq!(q.hit(0), Some(1), "the first at once");
        for t in 1..100 {
            assert_eq!(q.hit(t * 10), None);
        }
        assert_eq!(q.hit(Quiet::INTERVAL_MS), Some(100));
        assert_eq!(q.hit(Quiet::INTERVAL_MS + 1), None);
    }
}
