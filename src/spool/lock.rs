//! One sidecar per spool directory: two processes writing one SQLite spool would each deliver
//! the other's envelopes and fight over the WAL ("database is locked" after SQLite's busy wait).
//!
//! `spool.lock` in the directory is locked with `flock` before the database is opened, and holds
//! the holder's pid so that the second instance can say who has it. The kernel releases the
//! lock when the holder exits in any way, so a crashed sidecar never blocks its restart.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Why the spool directory could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the directory.
    #[error("another sentry-sidecar holds the spool {dir}{}", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Held {
        /// The spool directory.
        dir: PathBuf,
        /// The holder's pid, as it wrote it.
        pid: Option<u32>,
    },
    /// The lock file could not be opened or locked.
    #[error("cannot lock {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The claim on a spool directory; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct SpoolLock {
    _file: File,
}

impl SpoolLock {
    /// Claims `dir` for this process, or says who holds it.
    pub fn acquire(dir: &Path) -> Result<SpoolLock, LockError> {
        let path = dir.join("spool.lock");
        let io = |source| LockError::Io { path: path.clone(), source };
        let mut file =
            std::fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path).map_err(io)?;
        if !crate::sys::try_lock_exclusive(&file).map_err(io)? {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(LockError::Held { dir: dir.to_path_buf(), pid: text.trim().parse().ok() });
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(SpoolLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_second_claim_names_the_holder_and_the_first_release_frees_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = SpoolLock::acquire(dir.path()).unwrap();
        let pid = std::fs::read_to_string(dir.path().join("spool.lock")).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
        let err = SpoolLock::acquire(dir.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("another sentry-sidecar holds the spool {} (pid {})", dir.path().display(), std::process::id())
        );
        drop(first);
        SpoolLock::acquire(dir.path()).unwrap();
    }
}
