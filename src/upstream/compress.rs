//! Outbound compression. gzip by default: it shrinks JSON envelopes to about half at level 1 and
//! every Sentry ingest endpoint accepts it. zstd is the option for upstreams that take it (Relay
//! does): a little smaller output at its default level.
//!
//! The deflate state (hash tables and window, a few hundred KB) is kept per thread and reset
//! between bodies instead of being allocated and zeroed for every envelope, which the profile
//! showed as a large share of the per-envelope cost.

use std::cell::RefCell;

use bytes::Bytes;
use flate2::{Compress, Crc, FlushCompress, Status};

use crate::config::Compression;

thread_local! {
    static DEFLATE: RefCell<Option<(u32, Compress)>> = const { RefCell::new(None) };
}

const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0, 0x00, 0xff];

/// Compresses `body`; returns the bytes to send and the `Content-Encoding` to declare, if any.
pub fn compress(body: &Bytes, algo: Compression, level: u32) -> (Bytes, Option<&'static str>) {
    match algo {
        Compression::None => (body.clone(), None),
        Compression::Gzip => match gzip(body, level) {
            Some(out) => (out, Some("gzip")),
            None => (body.clone(), None),
        },
        Compression::Zstd => match zstd::bulk::compress(body, zstd_level(level)) {
            Ok(out) => (Bytes::from(out), Some("zstd")),
            Err(_) => (body.clone(), None),
        },
    }
}

/// zstd levels for the gzip-style 0-9 setting: the default 1 becomes zstd's own default 3 (the
/// lowest level that is never larger than gzip level 1 on envelopes), 9 becomes 19.
fn zstd_level(level: u32) -> i32 {
    (level as i32 * 2 + 1).min(19)
}

fn gzip(body: &[u8], level: u32) -> Option<Bytes> {
    DEFLATE.with(|cell| {
        let mut slot = cell.borrow_mut();
        let fresh = !matches!(&*slot, Some((l, _)) if *l == level);
        if fresh {
            *slot = Some((level, Compress::new(flate2::Compression::new(level), false)));
        }
        let (_, deflate) = slot.as_mut()?;
        if !fresh {
            deflate.reset();
        }
        let mut out = Vec::with_capacity(body.len() + body.len() / 16 + 64);
        out.extend_from_slice(&GZIP_HEADER);
        loop {
            let consumed = deflate.total_in() as usize;
            match deflate.compress_vec(&body[consumed..], &mut out, FlushCompress::Finish).ok()? {
                Status::StreamEnd => break,
                Status::Ok | Status::BufError => out.reserve(out.capacity().max(64)),
            }
        }
        let mut crc = Crc::new();
        crc.update(body);
        out.extend_from_slice(&crc.sum().to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        Some(Bytes::from(out))
    })
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
            let (out, enc) = compress(&body, Compression::Gzip, level);
            assert_eq!(enc, Some("gzip"));
            assert_eq!(gunzip(&out), raw);
        }
        // Larger than the first output buffer, incompressible.
        let noise: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let (out, _) = compress(&Bytes::from(noise.clone()), Compression::Gzip, 1);
        assert_eq!(gunzip(&out), noise);
        let (out, _) = compress(&Bytes::new(), Compression::Gzip, 1);
        assert_eq!(gunzip(&out), b"");
        let (out, enc) = compress(&body, Compression::None, 3);
        assert_eq!((&out[..], enc), (&raw[..], None));
        let (out, enc) = compress(&body, Compression::Zstd, 1);
        assert_eq!(enc, Some("zstd"));
        assert_eq!(zstd::stream::decode_all(&out[..]).unwrap(), raw);
    }
}
