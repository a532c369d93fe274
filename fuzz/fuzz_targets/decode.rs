//! The inbound decoder chain, `codec::decode(content_encoding, body, limit)`, with a 1 MiB limit;
//! and the spool's own gzip fast path (`Encoding::Gzip.decode`) on the same body.
//!
//! Input: a `Content-Encoding` value, a newline, then the body (no newline: all of it is the body,
//! with no encoding). Beyond "no panic": nothing ever decodes to more than the limit, and a
//! value naming no coding returns the body unchanged.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sentry_sidecar::codec::{self, Encoding};

const LIMIT: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let (header, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b""[..], data),
    };
    let Ok(header) = std::str::from_utf8(header) else { return };
    let body = Bytes::copy_from_slice(body);
    if let Ok(out) = codec::decode(header, body.clone(), LIMIT) {
        assert!(out.len() <= LIMIT, "decoded past the limit");
        if codec::codings(header).is_ok_and(|c| c.is_empty()) {
            assert_eq!(out, body);
        }
    }
    if let Ok(out) = Encoding::Gzip.decode(&body, LIMIT) {
        assert!(out.len() <= LIMIT, "gzip fast path past the limit");
    }
});
