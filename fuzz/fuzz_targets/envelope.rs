//! `protocol::Envelope::parse` on arbitrary (already content-decoded) bodies.
//!
//! Beyond "no panic": every range the parser reports lies inside the body, in order, and a
//! payload ends where the grammar says (a newline or the end of the body), because dispatch and
//! the spool slice the body by these ranges without checking them again.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sentry_sidecar::protocol::envelope::is_valid_event_id;
use sentry_sidecar::protocol::Envelope;

fuzz_target!(|data: &[u8]| {
    let Ok(env) = Envelope::parse(Bytes::copy_from_slice(data)) else { return };
    let len = data.len();
    assert_eq!(env.header.start, 0);
    assert!(env.header.end <= len);
    assert!(!data[env.header.clone()].contains(&b'\n'), "the header is one line");
    if let Some(id) = &env.event_id {
        assert!(is_valid_event_id(id));
    }
    let mut at = env.header.end;
    for item in &env.items {
        assert!(at <= item.header.start, "items overlap or go backwards");
        assert!(item.header.start <= item.header.end && item.header.end <= len);
        assert!(item.header.end <= item.payload.start);
        assert!(item.payload.start <= item.payload.end && item.payload.end <= len, "payload past the body");
        assert!(item.payload.end == len || data[item.payload.end] == b'\n', "payload not ended by a newline");
        assert_eq!(env.payload(item).len(), item.payload.len());
        at = item.payload.end;
    }
    let _ = env.categories();
});
