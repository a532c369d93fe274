//! Differential: `protocol::EnvelopeStream` fed a body in pieces, against `protocol::Envelope::parse`
//! on the whole body. Ingest checks a large upload with the stream and a small one whole, so the two
//! must give one verdict: both accept with the same facts (event id, dsn, `sent_at`, item types,
//! data categories), or both refuse with the same error (kind, offset, reason).
//!
//! Input: a control byte, its parameters, then the body.
//! - bits 0-3: how many piece-size bytes follow (none: the body in one piece). The sizes are used
//!   in turn until the body is fed; a byte under 0xc0 is that many bytes (0: an empty feed), from
//!   0xc0 on it is (byte - 0xbf) KiB.
//! - bit 4, pad: three bytes follow (a big-endian `u16` position, an excess `e`); that many
//!   spaces, `MAX_LINE - 64 + e`, go into the body at the position (modulo its length + 1), so
//!   lines around the stream's 64 KiB limit are reached.
//! - bit 5, repeat: two bytes follow (a big-endian `u16` count, up to 2047, and up to 256 KiB
//!   repeated); everything after the body's first newline is repeated that many times, so envelopes of
//!   more than the 1,000 kept item type names are reached.
//! - bit 6: an empty feed before every piece.
//!
//! The documented differences are recognised and skipped, never reported: a header line longer
//! than `MAX_LINE` is refused by the stream (checked to be really that long: the skip names the
//! line), and only the first 1,000 item type names are kept (compared as such).
//!
//! Beyond "same verdict" and "no panic": an error the stream reports before the end
//! (`error()`) is a grammar error, never changes, and is the one `finish` gives; and the stream
//! holds no more memory than its header lines and facts need (payloads are counted, not kept),
//! measured after every piece by a counting global allocator, for every body the parser accepts.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sentry_sidecar::protocol::envelope_stream::MAX_LINE;
use sentry_sidecar::protocol::{Envelope, EnvelopeError, EnvelopeFacts, EnvelopeStream, ItemType};

/// Bytes live on the heap (Rust allocations only; libFuzzer runs the target on one thread).
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call is passed on to the system allocator unchanged; only the sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The kept item type names (`ITEM_TYPES_KEPT` in the stream's module, private).
const ITEM_TYPES_KEPT: usize = 1000;

/// Only-once item types (`ItemType::only_once`, private): at most this many in the stream's list.
const ONLY_ONCE_TYPES: usize = 11;

/// The input split into the body and how to feed it.
struct Plan {
    sizes: Vec<usize>,
    empty_feeds: bool,
    body: Vec<u8>,
}

fn plan(data: &[u8]) -> Option<Plan> {
    let (&control, mut rest) = data.split_first()?;
    let n = usize::from(control & 0x0f);
    if rest.len() < n {
        return None;
    }
    let sizes: Vec<usize> =
        rest[..n].iter().map(|&b| if b < 0xc0 { usize::from(b) } else { usize::from(b - 0xbf) * 1024 }).collect();
    rest = &rest[n..];
    let pad = if control & 0x10 != 0 {
        let (p, r) = rest.split_first_chunk::<3>()?;
        rest = r;
        Some((usize::from(u16::from_be_bytes([p[0], p[1]])), MAX_LINE - 64 + usize::from(p[2])))
    } else {
        None
    };
    let repeat = if control & 0x20 != 0 {
        let (c, r) = rest.split_first_chunk::<2>()?;
        rest = r;
        Some(usize::from(u16::from_be_bytes(*c) & 0x07ff))
    } else {
        None
    };
    let mut body = rest.to_vec();
    if let Some(count) = repeat {
        if let Some(nl) = body.iter().position(|b| *b == b'\n') {
            let tail = body.split_off(nl + 1);
            let count = count.min((1 << 18) / tail.len().max(1));
            for _ in 0..count {
                body.extend_from_slice(&tail);
            }
        }
    }
    if let Some((at, len)) = pad {
        let at = at % (body.len() + 1);
        body.splice(at..at, std::iter::repeat_n(b' ', len));
    }
    Some(Plan { sizes, empty_feeds: control & 0x40 != 0, body })
}

/// The stream's refusal of a header line past `MAX_LINE` (the documented difference).
fn too_long(e: &EnvelopeError) -> bool {
    let reason = match e {
        EnvelopeError::InvalidHeader(r) | EnvelopeError::InvalidItemHeader { reason: r, .. } => r,
        _ => return false,
    };
    *reason == format!("header line longer than {MAX_LINE} bytes")
}

fn line_len(body: &[u8], from: usize) -> usize {
    body[from..].iter().position(|b| *b == b'\n').unwrap_or(body.len() - from)
}

/// What the stream may hold after a piece of a body `env` the parser accepted: its longest header
/// line (a `Vec` at most doubles), the header strings, the kept item type names and the lists.
fn bound(env: &Envelope) -> isize {
    let longest = env.items.iter().map(|i| i.header.len()).chain([env.header.len()]).max().unwrap_or(0);
    let strings =
        [&env.event_id, &env.dsn, &env.sent_at].iter().filter_map(|s| s.as_ref()).map(String::len).sum::<usize>();
    let kept = env.items.len().min(ITEM_TYPES_KEPT);
    let names: usize = env.items.iter().take(kept).map(|i| i.ty.name().len()).sum();
    let widest = env.items.iter().map(|i| i.ty.name().len()).max().unwrap_or(0);
    let list = |n: usize, size: usize| (2 * n).max(4) * size;
    let total = (2 * longest).max(8)
        + strings
        + names
        + widest
        + list(kept, std::mem::size_of::<String>())
        + list(ONLY_ONCE_TYPES, std::mem::size_of::<ItemType>())
        + 256;
    total as isize
}

fuzz_target!(|data: &[u8]| {
    let Some(Plan { sizes, empty_feeds, body }) = plan(data) else { return };
    let whole = Envelope::parse(Bytes::copy_from_slice(&body));
    let limit = whole.as_ref().ok().map(bound);

    let base = LIVE.load(Relaxed);
    let mut stream = EnvelopeStream::new();
    // The early error, as its `Debug` text (`EnvelopeError` is not `Clone`).
    let mut early: Option<String> = None;
    let (mut at, mut i) = (0, 0);
    let all_empty = sizes.iter().all(|s| *s == 0);
    while at < body.len() {
        let n = if sizes.is_empty() || all_empty { body.len() } else { sizes[i % sizes.len()] };
        let n = n.min(body.len() - at);
        if empty_feeds {
            stream.feed(&[]);
        }
        stream.feed(&body[at..at + n]);
        at += n;
        i += 1;
        let held = LIVE.load(Relaxed) - base;
        match (stream.error(), &early) {
            (Some(e), None) => {
                assert!(
                    matches!(
                        e,
                        EnvelopeError::InvalidHeader(_)
                            | EnvelopeError::InvalidEventId
                            | EnvelopeError::InvalidItemHeader { .. }
                            | EnvelopeError::MissingNewline(_)
                    ),
                    "not a grammar error before the end: {e:?}"
                );
                early = Some(format!("{e:?}"));
            }
            (Some(e), Some(first)) => assert_eq!(&format!("{e:?}"), first, "the early error changed"),
            (None, Some(first)) => panic!("the early error went away: {first:?}"),
            (None, None) => {
                if let Some(limit) = limit {
                    assert!(held <= limit, "the stream holds {held} bytes after {at} of {}, bound {limit}", body.len());
                }
            }
        }
    }
    let streamed = stream.finish();
    if let Some(first) = &early {
        assert_eq!(
            streamed.as_ref().err().map(|e| format!("{e:?}")).as_ref(),
            Some(first),
            "finish changed the early error"
        );
    }

    if let Err(e) = &streamed {
        if too_long(e) {
            // Documented: the stream refuses a header line over MAX_LINE. It must be one.
            let from = match e {
                EnvelopeError::InvalidItemHeader { offset, .. } => *offset,
                _ => 0,
            };
            assert!(
                from <= body.len() && line_len(&body, from) > MAX_LINE,
                "refused a line of at most MAX_LINE: {e:?}"
            );
            return;
        }
    }
    match (&whole, &streamed) {
        (Ok(env), Ok(facts)) => {
            assert_eq!(facts.event_id, env.event_id, "event_id");
            assert_eq!(facts.dsn, env.dsn, "dsn");
            assert_eq!(facts.sent_at, env.sent_at, "sent_at");
            let names: Vec<&str> = env.items.iter().take(ITEM_TYPES_KEPT).map(|i| i.ty.name()).collect();
            assert_eq!(facts.item_types, names, "item types");
            assert_eq!(facts.categories, env.categories(), "categories");
            assert_eq!(facts, &EnvelopeFacts::of(env), "EnvelopeFacts::of");
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "different errors"),
        (Ok(_), Err(e)) => panic!("the parser accepts, the stream refuses: {e:?}"),
        (Err(e), Ok(_)) => panic!("the parser refuses ({e:?}), the stream accepts"),
    }
});
