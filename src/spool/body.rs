//! A record's body: in memory ([`Bytes`], the zero-copy path every small envelope takes), or a
//! file under the spool's `bodies/` with its length, for bodies too large to hold whole.
//!
//! Ingest streams a large body into a [`TempBody`] (`<time>-<pid>-<seq>.part`) as it arrives;
//! the finished file becomes a [`BodyFile`], which removes its file when the last reference
//! goes unless the spool took it: the SQLite spool renames it to a row's body file (no copy)
//! before the row commits, and from then on removes it when the row is acked or dropped. A
//! `.part` file left by a crash mid-upload belongs to no row, and is removed when the spool opens.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// The name suffix of a body file being written (not yet a row's).
const PART_SUFFIX: &str = ".part";

/// A record's body.
#[derive(Debug, Clone)]
pub enum Body {
    /// Held in memory.
    Mem(Bytes),
    /// In a file; read in pieces when sent.
    File(Arc<BodyFile>),
}

impl Body {
    /// The body's length in bytes (as stored: compressed if it was).
    pub fn len(&self) -> usize {
        match self {
            Body::Mem(b) => b.len(),
            Body::File(f) => usize::try_from(f.len()).unwrap_or(usize::MAX),
        }
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes, when the body is in memory.
    pub fn bytes(&self) -> Option<&Bytes> {
        match self {
            Body::Mem(b) => Some(b),
            Body::File(_) => None,
        }
    }

    /// The file, when the body is one.
    pub fn file(&self) -> Option<&Arc<BodyFile>> {
        match self {
            Body::Mem(_) => None,
            Body::File(f) => Some(f),
        }
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Body {
        Body::Mem(b)
    }
}

/// A body held in a file.
#[derive(Debug)]
pub struct BodyFile {
    /// Where it is now (the spool renames it when it takes it).
    path: Mutex<PathBuf>,
    len: u64,
    /// The spool owns the file: it is not removed on drop.
    kept: AtomicBool,
}

impl BodyFile {
    /// A file the spool owns already (a row's body file read back).
    pub fn kept(path: PathBuf, len: u64) -> BodyFile {
        BodyFile { path: Mutex::new(path), len, kept: AtomicBool::new(true) }
    }

    /// The file's length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where the file is.
    pub fn path(&self) -> PathBuf {
        self.path.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Opens the file for reading.
    pub fn open(&self) -> std::io::Result<std::fs::File> {
        std::fs::File::open(self.path())
    }

    /// Moves the file to `to` (same filesystem: a rename, never a copy) and hands it to the spool,
    /// which removes it from then on.
    pub(super) fn adopt(&self, to: &Path) -> std::io::Result<()> {
        let mut path = self.path.lock().unwrap_or_else(|p| p.into_inner());
        std::fs::rename(&*path, to)?;
        *path = to.to_owned();
        self.kept.store(true, Ordering::Release);
        Ok(())
    }
}

impl Drop for BodyFile {
    fn drop(&mut self) {
        if !self.kept.load(Ordering::Acquire) {
            let _ = std::fs::remove_file(self.path.get_mut().unwrap_or_else(|p| p.into_inner()));
        }
    }
}

/// A body file being written; removed on drop unless it is [`TempBody::finish`]ed.
#[derive(Debug)]
pub struct TempBody {
    path: PathBuf,
    done: bool,
}

/// Per-process sequence of temporary body files.
static SEQ: AtomicU64 = AtomicU64::new(0);

impl TempBody {
    /// Creates an empty `.part` file, open for reading and writing, in `dir` (the spool's
    /// `bodies/`, created if need be).
    pub fn create(dir: &Path, now_ms: u64) -> std::io::Result<(TempBody, std::fs::File)> {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{now_ms}-{}-{seq}{PART_SUFFIX}", std::process::id()));
        let open = || std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path);
        let file = match open() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir)?;
                open()?
            }
            other => other?,
        };
        Ok((TempBody { path, done: false }, file))
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The finished file of `len` bytes, as a body.
    pub fn finish(mut self, len: u64) -> BodyFile {
        self.done = true;
        BodyFile { path: Mutex::new(std::mem::take(&mut self.path)), len, kept: AtomicBool::new(false) }
    }
}

impl Drop for TempBody {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Removes the `.part` files in `spool_dir/bodies/`: uploads a previous process did not finish
/// (called when the spool opens, under its lock, so no upload of this process is under way).
pub fn remove_parts(spool_dir: &Path) {
    let Ok(dir) = std::fs::read_dir(spool_dir.join("bodies")) else { return };
    for e in dir.filter_map(Result::ok) {
        if e.file_name().to_string_lossy().ends_with(PART_SUFFIX) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn files_are_removed_unless_the_spool_took_them() {
        let dir = tempfile::tempdir().unwrap();
        // Not finished: removed.
        let (t, _) = TempBody::create(&dir.path().join("bodies"), 1).unwrap();
        let p = t.path().to_owned();
        assert!(p.exists());
        drop(t);
        assert!(!p.exists());
        // Finished, not taken: removed when the last reference goes.
        let (t, mut f) = TempBody::create(&dir.path().join("bodies"), 1).unwrap();
        f.write_all(b"abc").unwrap();
        let body = Body::File(Arc::new(t.finish(3)));
        let copy = body.clone();
        let p = body.file().unwrap().path();
        assert_eq!((body.len(), body.bytes().is_none()), (3, true));
        drop(body);
        assert!(p.exists());
        drop(copy);
        assert!(!p.exists());
        // Taken by the spool: renamed, and left alone on drop.
        let (t, _) = TempBody::create(&dir.path().join("bodies"), 1).unwrap();
        let file = t.finish(0);
        let to = dir.path().join("bodies/x.body");
        file.adopt(&to).unwrap();
        assert_eq!(file.path(), to);
        drop(file);
        assert!(to.exists());
        // A crash's leftovers go when the spool opens; its own files stay.
        let (t, _) = TempBody::create(&dir.path().join("bodies"), 1).unwrap();
        let left = t.path().to_owned();
        std::mem::forget(t);
        remove_parts(dir.path());
        assert!(!left.exists() && to.exists());
    }
}
