//! The few calls into the C library that need `unsafe`, each behind a safe function: the crate
//! denies `unsafe_code` everywhere else.
#![allow(unsafe_code)]

use std::path::Path;

/// Bytes available to unprivileged writers on the filesystem holding `dir`, and its size.
pub fn disk_space(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a valid NUL-terminated string and `st` points to writable memory of the
    // right type, which statvfs fills in completely when it returns 0.
    let st = unsafe {
        if libc::statvfs(path.as_ptr(), st.as_mut_ptr()) != 0 {
            return None;
        }
        st.assume_init()
    };
    let frsize = st.f_frsize as u64;
    Some((st.f_bavail as u64 * frsize, st.f_blocks as u64 * frsize))
}

/// Takes an exclusive advisory lock (`flock`) on `file` without waiting: `Ok(true)` if taken,
/// `Ok(false)` if another open file holds it. The kernel drops it when the file is closed or the
/// process dies, however it dies, so a `kill -9` never leaves a stale lock behind.
pub fn try_lock_exclusive(file: &std::fs::File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is valid for the borrow of `file`; flock does not touch memory.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// glibc gives every thread that allocates its own malloc arena; for a small always-on process
/// with a writer thread and runtime workers that mostly shows up as RSS held by idle arenas.
///
/// Freed memory inside an arena goes back to the OS only from the arena's top, so after a burst
/// free pages in the middle stay resident; a small thread hands them back every few seconds.
/// Call it first thing in `main`, before any other thread exists. A no-op off glibc.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only tunes the allocator; it is called before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
            // Blocks of 1 MiB and more (a decoder's window: 16 MiB for brotli) are always mapped
            // on their own and unmapped when freed. By default glibc raises this threshold to the
            // size of the last such block freed, after which 16 MiB windows come from the arenas
            // and stay resident between bombs.
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        }
        let _ = std::thread::Builder::new().name("malloc-trim".into()).spawn(|| loop {
            std::thread::sleep(std::time::Duration::from_secs(5));
            // SAFETY: malloc_trim only releases free memory; it is thread-safe.
            unsafe {
                libc::malloc_trim(0);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn disk_space_of_a_real_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (avail, size) = super::disk_space(dir.path()).unwrap();
        assert!(size > 0 && avail <= size);
        assert!(super::disk_space(&dir.path().join("missing")).is_none());
    }

    #[test]
    fn an_exclusive_lock_is_taken_once_and_freed_on_close() {
        let dir = tempfile::tempdir().unwrap();
        let open =
            || std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.path().join("l")).unwrap();
        let first = open();
        assert!(super::try_lock_exclusive(&first).unwrap());
        assert!(!super::try_lock_exclusive(&open()).unwrap(), "a second open file is refused");
        drop(first);
        assert!(super::try_lock_exclusive(&open()).unwrap(), "free again once the holder closed it");
    }
}
