//! `protocol::store::decode` (legacy `/store/` bodies: JSON, or base64 of zlib) under a 1 MiB limit.
//!
//! Beyond "no panic": what it accepts is at most the limit, is a JSON object, is the body itself
//! when the body is JSON, and carries only a well-formed `event_id`.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sentry_sidecar::protocol::envelope::is_valid_event_id;
use sentry_sidecar::protocol::store;

const LIMIT: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Ok(ev) = store::decode(Bytes::copy_from_slice(data), LIMIT) else { return };
    assert!(ev.json.len() <= LIMIT);
    assert_eq!(ev.json.iter().find(|b| !b.is_ascii_whitespace()), Some(&b'{'));
    if data.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        assert_eq!(&ev.json[..], data, "a JSON body is forwarded as sent");
    }
    if let Some(id) = &ev.event_id {
        assert!(is_valid_event_id(id));
    }
});
