//! A database that cannot be used: one that does not open (damaged header, not a database), or
//! that turns out corrupt while running, is renamed aside (`spool.db.corrupt-<unix seconds>`, its
//! WAL beside it) and a fresh one started, so the sidecar keeps accepting data. What the old
//! file held is left for an operator to look at; it is not read again.
//!
//! Errors that say nothing about the file (permissions, a full disk, a second process holding it)
//! are not corruption: they fail the open instead of throwing a good backlog away.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, ErrorCode};

use super::db::Db;
use super::writer::to_spool_err;
use super::{Shared, SqliteOptions};
use crate::spool::SpoolError;

/// Whether `e` says the database file is damaged.
pub(super) fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase))
}

/// Renames the database and its side files aside, stamped with `now`; returns the new name.
fn quarantine(dir: &Path, now: u64) -> Result<PathBuf, SpoolError> {
    let stamp = now / 1000;
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

impl Db {
    /// Opens the database, or quarantines it and opens a fresh one if it cannot be used.
    pub(super) fn open_or_quarantine(opts: SqliteOptions, now: u64) -> Result<Db, SpoolError> {
        match Db::open(opts.clone(), now) {
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
                let moved = quarantine(&opts.dir, now)?;
                tracing::error!(error = %e, moved_to = %moved.display(), "spool database unusable; moved aside, starting a fresh one");
                Db::open(opts, now).map_err(to_spool_err)
            }
            Err(e) => Err(to_spool_err(e)),
        }
    }

    /// After a transaction found the database corrupt: closes it, moves it aside and goes on
    /// with a fresh one (or reports through readiness that it cannot).
    pub(super) fn recover_from_corruption(&mut self, now: u64, shared: &Shared) {
        let placeholder = match Connection::open_in_memory() {
            Ok(c) => c,
            Err(_) => return,
        };
        drop(std::mem::replace(&mut self.conn, placeholder));
        match quarantine(&self.opts.dir, now).map_err(|e| e.to_string()).and_then(|moved| {
            tracing::error!(moved_to = %moved.display(), "spool database corrupt; moved aside, starting a fresh one");
            Db::open(self.opts.clone(), now).map_err(|e| e.to_string())
        }) {
            Ok(fresh) => {
                *self = fresh;
                self.set_error(shared, None);
            }
            Err(e) => self.set_error(shared, Some(format!("cannot reopen the spool: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DeliveryOrder;
    use crate::spool::sqlite::tests::options;

    #[test]
    fn a_file_that_is_not_a_database_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("spool.db"), vec![7u8; 8192]).unwrap();
        let now = 1_700_000_123_456;
        let db = Db::open_or_quarantine(options(dir.path(), DeliveryOrder::OldestFirst), now).unwrap();
        assert_eq!(db.len, 0, "a fresh database");
        let moved = dir.path().join("spool.db.corrupt-1700000123");
        assert_eq!(std::fs::read(&moved).unwrap(), vec![7u8; 8192]);
        assert!(Db::db_path(dir.path()).exists());
    }

    #[test]
    fn errors_that_are_not_about_the_file_are_not_corruption() {
        let err = |code| rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
        assert!(is_corruption(&err(rusqlite::ffi::SQLITE_CORRUPT)));
        assert!(is_corruption(&err(rusqlite::ffi::SQLITE_NOTADB)));
        assert!(!is_corruption(&err(rusqlite::ffi::SQLITE_FULL)));
        assert!(!is_corruption(&err(rusqlite::ffi::SQLITE_BUSY)));
    }
}
