#![allow(missing_docs, unreachable_pub)]
// A counting allocator needs `unsafe`; this test binary is its only user.
#![allow(unsafe_code)]
//! Histogram samples are drained even when nobody scrapes `/metrics`: before the fix every
//! upstream latency sample stayed in memory until a scrape (8 bytes per delivered envelope).
//! This binary counts live heap bytes with its own allocator, so it runs alone.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller upholds `alloc`'s contract, passed on unchanged.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` came from `alloc` above with the same layout.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

#[test]
fn histogram_samples_do_not_pile_up_without_a_scrape() {
    let _handle = sentry_sidecar::telemetry::metrics_handle();
    let before = LIVE.load(Ordering::Relaxed);
    let h = metrics::histogram!(sentry_sidecar::telemetry::UPSTREAM_LATENCY);
    for i in 0..1_000_000 {
        h.record(f64::from(i % 1000) / 1e4);
    }
    let grown = LIVE.load(Ordering::Relaxed) - before;
    assert!(grown > 4_000_000, "1M samples should be buffered first ({grown} bytes)");
    let deadline = Instant::now() + sentry_sidecar::telemetry::UPKEEP_INTERVAL * 5;
    // Traffic goes on (drained blocks are freed once the recorder moves on), and nobody scrapes.
    while LIVE.load(Ordering::Relaxed) - before > 1_000_000 {
        assert!(Instant::now() < deadline, "samples still held: {} bytes", LIVE.load(Ordering::Relaxed) - before);
        for i in 0..100 {
            h.record(f64::from(i) / 1e4);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
