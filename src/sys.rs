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
}
