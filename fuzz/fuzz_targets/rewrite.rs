//! The `sent_at` rewriter (`protocol::rewrite`): input is a big-endian `u16` of elapsed seconds,
//! then an envelope (which also serves as an `X-Sentry-Auth` value for the store variant).
//!
//! Beyond "no panic": a rewritten envelope keeps every byte from the end of its header line on,
//! its new header is one line (of JSON with a string `sent_at`, when the old one was JSON), and a
//! rewritten auth header keeps everything but the timestamp's digits.
#![no_main]

use std::time::Duration;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sentry_sidecar::protocol::rewrite::{shift_auth_timestamp, shift_sent_at};

fn header_end(b: &[u8]) -> usize {
    b.iter().position(|c| *c == b'\n').unwrap_or(b.len())
}

fuzz_target!(|data: &[u8]| {
    let Some((secs, body)) = data.split_first_chunk::<2>() else { return };
    let elapsed = Duration::from_secs(u64::from(u16::from_be_bytes(*secs)));
    let envelope = Bytes::copy_from_slice(body);
    if let Some(out) = shift_sent_at(&envelope, elapsed) {
        let (old_end, new_end) = (header_end(body), header_end(&out));
        assert_eq!(&out[new_end..], &body[old_end..], "bytes after the header changed");
        // Other header values are copied as raw text, which serde_json reads leniently (a lone
        // surrogate escape passes), so only a header that was valid JSON must stay valid JSON.
        if serde_json::from_slice::<serde_json::Value>(&body[..old_end]).is_ok() {
            let header: serde_json::Value = serde_json::from_slice(&out[..new_end]).expect("the new header is JSON");
            assert!(header["sent_at"].is_string());
        }
        assert!(!out[..new_end].contains(&b'\n'), "the new header is one line");
    }
    if let Ok(auth) = std::str::from_utf8(body) {
        if let Some(out) = shift_auth_timestamp(auth, elapsed) {
            let key = "sentry_timestamp=";
            let at = auth.find(key).expect("only shifted when present") + key.len();
            assert_eq!(&out[..at], &auth[..at], "text before the timestamp changed");
            let old_tail = auth[at..].find([',', ' ']).map_or("", |i| &auth[at + i..]);
            assert!(out.ends_with(old_tail), "text after the timestamp changed");
        }
    }
});
