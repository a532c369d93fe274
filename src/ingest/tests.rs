//! Unit tests of ingest's helpers (the request path is tested on real sockets in tests/).

use super::*;

/// A header value parsed by hyper is a slice of the connection's read buffer; the copy kept
/// for the spool must not point into it (it would keep the whole buffer alive).
#[test]
fn kept_headers_do_not_share_the_read_buffer() {
    let buffer = Bytes::from(vec![b'a'; 8192]);
    let mut value = HeaderValue::from_maybe_shared(buffer.slice(10..40)).unwrap();
    value.set_sensitive(true);
    let mut map = HeaderMap::new();
    map.insert(HeaderName::from_static("x-sentry-auth"), value);
    let kept = kept_headers(&map);
    assert_eq!(kept.len(), 1);
    let (name, copy) = &kept[0];
    assert_eq!((name.as_str(), copy.as_bytes()), ("x-sentry-auth", &buffer[10..40]));
    assert!(copy.is_sensitive());
    let range = buffer.as_ptr_range();
    assert!(!range.contains(&copy.as_bytes().as_ptr()), "the kept value points into the read buffer");
}
