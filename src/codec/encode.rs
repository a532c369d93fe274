//! Compression for the upstream. gzip by default: it shrinks JSON envelopes to about half at level 1 and
//! every Sentry ingest endpoint accepts it. zstd is the option for upstreams that take it (Relay
//! does): smaller output on large envelopes.
//!
//! With zstd chosen, bodies under [`ZSTD_MIN_BYTES`] still go out as gzip: below about 8 KiB
//! libdeflate's gzip is smaller than zstd's default level on envelopes (2.7 KB error: 1,348 vs
//! 1,385 bytes; zstd needs level 12, seven times slower, to match it), from there zstd wins
//! (53 KB: 2,847 vs 3,842). Every Sentry ingest endpoint takes gzip, so the zstd option is never
//! larger than gzip, and the small majority of envelopes keeps the cheaper compressor.
//!
//! gzip is libdeflate's whole-buffer compressor: envelopes are small and already in memory, so a
//! streaming deflater buys nothing, and on the 2.7 KB error envelope of the end-to-end bench
//! libdeflate level 1 takes 6.9 us for 49.6 % where miniz_oxide took 10.6 us for 52.4 % (and
//! zlib-rs level 1, 7.6 us, only reaches 64.5 %). Compressor states (gzip and zstd) are kept per
//! thread: a fresh zstd context per envelope doubled its cost.
//!
//! A body that does not shrink (small transactions, sessions, binary attachments) goes out as it
//! came, without `Content-Encoding`.

use std::cell::RefCell;

use bytes::Bytes;
use libdeflater::{CompressionLvl, Compressor};

use super::Encoding;

thread_local! {
    static DEFLATE: RefCell<Option<(u32, Compressor)>> = const { RefCell::new(None) };
    static ZSTD: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
}

/// With `--compression zstd`, bodies smaller than this (before compression) are sent as gzip.
pub const ZSTD_MIN_BYTES: usize = 8 * 1024;

/// Bodies above this are compressed (at ingest) and prepared for sending (at dispatch) on the
/// blocking pool, so the runtime thread keeps serving every other connection meanwhile.
pub const OFFLOAD_BYTES: usize = 64 * 1024;

/// The algorithm a body of `raw_len` bytes gets under the `algo` setting.
pub fn algorithm_for(algo: Encoding, raw_len: usize) -> Encoding {
    match algo {
        Encoding::Zstd if raw_len < ZSTD_MIN_BYTES => Encoding::Gzip,
        other => other,
    }
}

/// Compresses `body` under the `algo` setting; returns the bytes to send and how they are encoded
/// ([`Encoding::Identity`] when compression did not shrink them: they are `body` itself).
pub fn compress(body: &Bytes, algo: Encoding, level: u32) -> (Bytes, Encoding) {
    let out = match algorithm_for(algo, body.len()) {
        Encoding::Identity => None,
        Encoding::Gzip => gzip(body, level).map(|b| (b, Encoding::Gzip)),
        Encoding::Zstd => zstd(body, zstd_level(level)).map(|b| (b, Encoding::Zstd)),
    };
    match out {
        Some((b, enc)) if b.len() < body.len() => (b, enc),
        _ => (body.clone(), Encoding::Identity),
    }
}

fn zstd(body: &[u8], level: i32) -> Option<Bytes> {
    ZSTD.with(|cell| {
        let mut slot = cell.borrow_mut();
        if !matches!(&*slot, Some((l, _)) if *l == level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        let (_, c) = slot.as_mut()?;
        c.compress(body).ok().map(Bytes::from)
    })
}

/// zstd levels for the gzip-style 0-9 setting: the default 1 becomes zstd's own default 3 (the
/// lowest level that is never larger than gzip level 1 on envelopes), 9 becomes 19.
pub(super) fn zstd_level(level: u32) -> i32 {
    (level as i32 * 2 + 1).min(19)
}

fn gzip(body: &[u8], level: u32) -> Option<Bytes> {
    DEFLATE.with(|cell| {
        let mut slot = cell.borrow_mut();
        if !matches!(&*slot, Some((l, _)) if *l == level) {
            let lvl = CompressionLvl::new(level as i32).ok()?;
            *slot = Some((level, Compressor::new(lvl)));
        }
        let (_, deflate) = slot.as_mut()?;
        let bound = deflate.gzip_compress_bound(body.len());
        if bound > SCRATCH_MAX {
            let mut out = vec![0u8; bound];
            let n = deflate.gzip_compress(body, &mut out).ok()?;
            out.truncate(n);
            out.shrink_to_fit();
            return Some(Bytes::from(out));
        }
        // Compressed into a reused buffer and copied out at its exact size: the result is kept
        // in the spool's cache, and an allocation sized for the worst case would hold twice
        // the memory.
        SCRATCH.with(|scratch| {
            let mut out = scratch.borrow_mut();
            if out.len() < bound {
                out.resize(bound, 0);
            }
            let n = deflate.gzip_compress(body, &mut out[..bound]).ok()?;
            Some(Bytes::copy_from_slice(&out[..n]))
        })
    })
}

/// Bodies whose worst-case output is larger than this get their own buffer.
const SCRATCH_MAX: usize = 256 * 1024;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn gunzip(b: &[u8]) -> Vec<u8> {
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(b).read_to_end(&mut back).unwrap();
        back
    }

    #[test]
    fn gzip_round_trip_with_a_reused_state() {
        let raw = br#"{"event_id":"0123456789abcdef0123456789abcdef","message":"hello hello hello hello"}"#;
        let body = Bytes::from_static(raw);
        for level in [1, 1, 6, 1] {
            let (out, enc) = compress(&body, Encoding::Gzip, level);
            assert_eq!(enc, Encoding::Gzip);
            assert_eq!(gunzip(&out), raw);
        }
        // Large and compressible, then incompressible (sent as it is).
        let big: Vec<u8> = (0..200_000u32).flat_map(|i| format!("{{\"n\":{}}}", i % 977).into_bytes()).collect();
        let (out, enc) = compress(&Bytes::from(big.clone()), Encoding::Gzip, 1);
        assert!(gunzip(&out) == big && enc == Encoding::Gzip);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..200_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        let (out, enc) = compress(&Bytes::from(noise.clone()), Encoding::Gzip, 1);
        assert!(out[..] == noise[..] && enc == Encoding::Identity, "noise went out as {enc:?}, {} bytes", out.len());
        let (out, enc) = compress(&Bytes::new(), Encoding::Gzip, 1);
        assert_eq!((&out[..], enc), (&b""[..], Encoding::Identity));
        let (out, enc) = compress(&body, Encoding::Identity, 3);
        assert_eq!((&out[..], enc), (&raw[..], Encoding::Identity));
        // Under zstd, the small body is gzip (smaller at that size), the large one zstd.
        let (out, enc) = compress(&body, Encoding::Zstd, 1);
        assert_eq!(enc, Encoding::Gzip);
        assert_eq!(gunzip(&out), raw);
        let big = Bytes::from(big);
        for level in [1, 4] {
            let (out, enc) = compress(&big, Encoding::Zstd, level);
            assert_eq!(enc, Encoding::Zstd);
            assert!(zstd::stream::decode_all(&out[..]).unwrap() == big);
        }
    }

    #[test]
    fn a_body_that_does_not_shrink_goes_out_as_it_came() {
        let body = Bytes::from_static(br#"{"sid":"5d6e"}"#);
        for algo in [Encoding::Gzip, Encoding::Zstd] {
            let (out, enc) = compress(&body, algo, 1);
            assert_eq!((&out[..], enc), (&body[..], Encoding::Identity));
        }
    }
}
