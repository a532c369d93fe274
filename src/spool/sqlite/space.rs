//! A full disk, which the spool must survive: it refuses appends while the filesystem is nearly
//! full, keeps a reserve file that it gives back when SQLite says the disk is full (so that the
//! deletes that free the disk can still commit), and tells disk-full errors from the others.
//!
//! Reading needs no write (leases are in memory), so delivery goes on from a full disk and frees
//! it; the reserve and the refusal of appends keep room for the acks' deletes.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, ErrorCode};

use super::db::Db;
use super::Shared;

/// Space kept in a file beside the database and given back when the disk fills up, so that the
/// deletes that free the disk can still commit.
const RESERVE_BYTES: usize = 512 * 1024;

/// How long after the disk was last full the reserve is written again.
const RESERVE_AFTER_FULL_MS: u64 = 30_000;

/// Least time between two attempts to write the reserve again.
const RESERVE_RETRY_MS: u64 = 10_000;

fn reserve_path(dir: &Path) -> PathBuf {
    dir.join("spool.reserve")
}

fn write_reserve(path: &Path) {
    if let Err(e) = std::fs::write(path, vec![0u8; RESERVE_BYTES]) {
        let _ = std::fs::remove_file(path);
        tracing::debug!(error = %e, "cannot write the spool's reserve file");
    }
}

/// Writes the reserve file in `dir` unless it is there.
pub(super) fn ensure_reserve(dir: &Path) {
    let reserve = reserve_path(dir);
    if !reserve.exists() {
        write_reserve(&reserve);
    }
}

/// Whether `e` says the disk is full: from SQLite, or from writing a body file.
pub(super) fn is_disk_full(e: &rusqlite::Error) -> bool {
    match e {
        rusqlite::Error::ToSqlConversionFailure(inner) => {
            inner.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::StorageFull)
        }
        other => matches!(other.sqlite_error_code(), Some(ErrorCode::DiskFull)),
    }
}

/// Whether the reserve is to be written again at `now`: the disk has not been full for a while,
/// and the last attempt was not too recent.
fn reserve_due(now: u64, last_full: u64, last_try: u64) -> bool {
    now.saturating_sub(last_full) >= RESERVE_AFTER_FULL_MS && now.saturating_sub(last_try) >= RESERVE_RETRY_MS
}

impl Db {
    /// On a full disk: give back the reserve file and truncate the WAL, so that acks (deletes) can
    /// commit and free space. Returns whether anything was done that is worth a retry.
    pub(super) fn make_room(&mut self, now: u64) -> bool {
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
    pub(super) fn check_space(&mut self, now: u64, shared: &Shared) {
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

    /// Writes the reserve again once the disk has not been full for a while.
    pub(super) fn maybe_restore_reserve(&mut self, now: u64) {
        if !reserve_due(now, self.last_full, self.last_reserve_try) {
            return;
        }
        self.last_reserve_try = now;
        ensure_reserve(&self.opts.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DeliveryOrder;
    use crate::spool::sqlite::tests::options;

    #[test]
    fn the_reserve_comes_back_a_while_after_the_disk_was_full() {
        let full = 100_000;
        assert!(!reserve_due(full + RESERVE_AFTER_FULL_MS - 1, full, 0), "too soon after the disk was full");
        assert!(reserve_due(full + RESERVE_AFTER_FULL_MS, full, 0));
        let tried = full + RESERVE_AFTER_FULL_MS;
        assert!(!reserve_due(tried + RESERVE_RETRY_MS - 1, full, tried), "tried too recently");
        assert!(reserve_due(tried + RESERVE_RETRY_MS, full, tried));
    }

    /// The reserve is written at open, given back on a full disk, and written again later.
    #[test]
    fn the_reserve_file_is_released_on_a_full_disk_and_restored() {
        let dir = tempfile::tempdir().unwrap();
        let reserve = reserve_path(dir.path());
        let mut db = Db::open(options(dir.path(), DeliveryOrder::OldestFirst), 1_000).unwrap();
        assert_eq!(std::fs::metadata(&reserve).unwrap().len(), RESERVE_BYTES as u64);
        assert!(db.make_room(50_000), "releasing the reserve is worth a retry");
        assert!(!reserve.exists());
        assert_eq!(db.last_full, 50_000);
        db.maybe_restore_reserve(50_000 + RESERVE_AFTER_FULL_MS - 1);
        assert!(!reserve.exists(), "not while the disk was full moments ago");
        db.maybe_restore_reserve(50_000 + RESERVE_AFTER_FULL_MS);
        assert_eq!(std::fs::metadata(&reserve).unwrap().len(), RESERVE_BYTES as u64);
    }

    #[test]
    fn disk_full_is_told_from_other_errors() {
        let io = |kind| rusqlite::Error::ToSqlConversionFailure(Box::new(std::io::Error::from(kind)));
        assert!(is_disk_full(&io(std::io::ErrorKind::StorageFull)));
        assert!(!is_disk_full(&io(std::io::ErrorKind::PermissionDenied)));
        let sqlite = |code| rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
        assert!(is_disk_full(&sqlite(rusqlite::ffi::SQLITE_FULL)));
        assert!(!is_disk_full(&sqlite(rusqlite::ffi::SQLITE_CORRUPT)));
    }
}
