//! Inputs from the fuzz runs (`fuzz/`), kept in the ordinary suite so that stable `cargo test`
//! guards them without nightly: hostile bodies and headers that must end in a clear error (or a
//! bounded result), never a panic, a stack overflow or an allocation past the limit.
//!
//! Each input is inline as bytes; the comment says which target produced or inspired it.

use std::io::Write;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use sentry_sidecar::codec::{self, DecodeError, Encoding};
use sentry_sidecar::protocol::envelope_stream::MAX_LINE;
use sentry_sidecar::protocol::rate_limits::{parse_rate_limits, parse_retry_after};
use sentry_sidecar::protocol::rewrite::{shift_auth_timestamp, shift_sent_at};
use sentry_sidecar::protocol::store::{self, StoreError};
use sentry_sidecar::protocol::{Auth, AuthError, Dsn, Envelope, EnvelopeError, EnvelopeFacts, EnvelopeStream};

const LIMIT: usize = 1 << 20;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn nested(open: &str, depth: usize) -> Vec<u8> {
    open.repeat(depth).into_bytes()
}

// envelope target

#[test]
fn deeply_nested_envelope_headers_are_refused_without_overflowing_the_stack() {
    let mut body = b"{\"a\":".to_vec();
    body.extend(nested("[", 100_000));
    assert!(matches!(Envelope::parse(Bytes::from(body)), Err(EnvelopeError::InvalidHeader(_))));

    let mut body = b"{}\n{\"type\":\"event\",\"x\":".to_vec();
    body.extend(nested("{\"a\":", 100_000));
    assert!(matches!(Envelope::parse(Bytes::from(body)), Err(EnvelopeError::InvalidItemHeader { offset: 3, .. })));
}

#[test]
fn item_lengths_at_and_past_the_end_of_the_body() {
    for length in [u64::MAX, u64::MAX / 2, i64::MAX as u64 + 1, 1 << 32] {
        let body = format!("{{}}\n{{\"type\":\"attachment\",\"length\":{length}}}\nabc");
        let err = Envelope::parse(Bytes::from(body)).unwrap_err();
        assert!(matches!(err, EnvelopeError::LengthOverflow { offset: 36.., .. }), "{err:?}");
    }
    // One byte short of the end, exactly the end, one past it.
    let body = |n: usize| Bytes::from(format!("{{}}\n{{\"type\":\"attachment\",\"length\":{n}}}\nabc"));
    assert_eq!(Envelope::parse(body(2)).unwrap_err(), EnvelopeError::MissingNewline(38));
    let env = Envelope::parse(body(3)).unwrap();
    assert_eq!(env.items[0].payload, 36..39);
    assert_eq!(Envelope::parse(body(4)).unwrap_err(), EnvelopeError::LengthOverflow { offset: 36, length: 4 });
    // A negative or fractional length is not a length.
    for bad in ["-1", "1.5", "\"3\"", "1e2"] {
        let b = format!("{{}}\n{{\"type\":\"attachment\",\"length\":{bad}}}\nabc");
        assert!(Envelope::parse(Bytes::from(b)).is_err(), "{bad}");
    }
    // `null` is no length: the payload runs to the end of its line.
    let env = Envelope::parse(Bytes::from_static(b"{}\n{\"type\":\"attachment\",\"length\":null}\nabc")).unwrap();
    assert_eq!(env.items[0].payload, 39..42);
}

#[test]
fn envelope_lines_that_are_almost_json() {
    use EnvelopeError as E;
    let cases: &[&[u8]] =
        &[b"{", b"{\n", b"\n", b" \t\r\n", b"{}\n{", b"{}\n{\"type\":1}\n", b"{}\n{\"type\":\"a\"}\x00"];
    for case in cases {
        let r = Envelope::parse(Bytes::copy_from_slice(case));
        assert!(
            matches!(r, Err(E::InvalidHeader(_) | E::InvalidItemHeader { .. })),
            "{:?}: {r:?}",
            String::from_utf8_lossy(case)
        );
    }
    // A header that is a JSON object followed by garbage on the same line, and invalid UTF-8.
    assert!(matches!(Envelope::parse(Bytes::from_static(b"{} x\n")), Err(E::InvalidHeader(_))));
    assert!(matches!(Envelope::parse(Bytes::from_static(b"{\"dsn\":\"\xff\"}\n")), Err(E::InvalidHeader(_))));
    // Many empty items: parsed, each inside the body.
    let mut body = b"{}\n".to_vec();
    for _ in 0..10_000 {
        body.extend_from_slice(b"{\"type\":\"attachment\",\"length\":0}\n\n");
    }
    let env = Envelope::parse(Bytes::from(body)).unwrap();
    assert_eq!(env.items.len(), 10_000);
    assert!(env.items.iter().all(|i| i.payload.end < env.bytes.len() && env.bytes[i.payload.end] == b'\n'));
}

// envelope_stream target

/// Feeds `body` to an `EnvelopeStream` in `piece`-byte pieces, an empty feed before each.
fn streamed(body: &[u8], piece: usize) -> Result<EnvelopeFacts, EnvelopeError> {
    let mut s = EnvelopeStream::new();
    for p in body.chunks(piece) {
        s.feed(&[]);
        s.feed(p);
    }
    s.finish()
}

/// The seeds the `envelope_stream` target starts from at its documented edges: a header line of
/// exactly `MAX_LINE` bytes agrees with the whole-body parser, one byte more is refused by the
/// stream only; past 1,000 items both keep the first 1,000 type names.
#[test]
fn envelope_stream_at_its_documented_limits() {
    let item = |pad: usize| {
        let mut b = b"{}\n{".to_vec();
        b.extend(std::iter::repeat_n(b' ', pad));
        b.extend_from_slice(b"\"type\":\"event\",\"length\":2}\n{}\n");
        b
    };
    let at_max = item(MAX_LINE - 27);
    let whole = Envelope::parse(Bytes::from(at_max.clone())).map(|e| EnvelopeFacts::of(&e));
    assert!(whole.is_ok());
    for piece in [1, 1024, 64 * 1024, at_max.len()] {
        assert_eq!(streamed(&at_max, piece), whole, "{piece}");
    }
    let past = item(MAX_LINE - 26);
    assert!(Envelope::parse(Bytes::from(past.clone())).is_ok());
    let reason = format!("header line longer than {MAX_LINE} bytes");
    assert_eq!(streamed(&past, 1024), Err(EnvelopeError::InvalidItemHeader { offset: 3, reason }));

    let mut many = b"{}\n".to_vec();
    for _ in 0..1001 {
        many.extend_from_slice(b"{\"type\":\"attachment\"}\nx\n");
    }
    let env = Envelope::parse(Bytes::from(many.clone())).unwrap();
    assert_eq!(env.items.len(), 1001);
    let facts = streamed(&many, 64).unwrap();
    assert_eq!(facts.item_types.len(), 1000);
    assert_eq!(facts, EnvelopeFacts::of(&env));
}

// store target

#[test]
fn store_bodies_that_are_neither_json_nor_base64_zlib() {
    let mut deep = b"{\"a\":".to_vec();
    deep.extend(nested("[", 100_000));
    assert!(matches!(store::decode(Bytes::from(deep), LIMIT), Err(StoreError::InvalidJson(_))));

    let b64 = |b: &[u8]| {
        use base64::Engine;
        Bytes::from(base64::engine::general_purpose::STANDARD.encode(b))
    };
    let whole = zlib(b"{\"message\":\"truncated on the wire\"}");
    let truncated = b64(&whole[..whole.len() / 2]);
    assert!(matches!(store::decode(truncated, LIMIT), Err(StoreError::NotZlib(_))));
    // zlib of something that is not an object, and of nothing at all.
    assert!(matches!(store::decode(b64(&zlib(b"[1,2,3]")), LIMIT), Err(StoreError::InvalidJson(_))));
    assert!(matches!(store::decode(b64(&zlib(b"")), LIMIT), Err(StoreError::InvalidJson(_))));
    assert!(store::decode(Bytes::from_static(b" \r\n\t "), LIMIT).is_err());
    assert!(matches!(store::decode(Bytes::from_static(b"\xff\xfe"), LIMIT), Err(StoreError::NotBase64(_))));
    // A zlib bomb stops at the limit.
    assert!(matches!(store::decode(b64(&zlib(&vec![b' '; 4 << 20])), LIMIT), Err(StoreError::TooLarge(LIMIT))));
    // event_id of every wrong shape.
    for id in ["42", "\"\"", "\"0123456789abcdef0123456789abcdeg\"", "[]", "{}"] {
        let body = format!("{{\"event_id\":{id}}}");
        assert!(matches!(store::decode(Bytes::from(body), LIMIT), Err(StoreError::InvalidEventId)), "{id}");
    }
}

// auth target

#[test]
fn dsns_and_auth_with_odd_bytes() {
    // A multi-byte character where the `Sentry ` prefix would end.
    assert!(Auth::from_header("Sentr\u{e9} sentry_key=k").is_err());
    assert_eq!(Auth::from_header("Sentry\u{e9}sentry_key=k").unwrap_err(), AuthError::Invalid("no sentry_key"));
    assert_eq!(
        Auth::from_header("Sentry sentry_key=k, sentry_version=99999999999999999999"),
        Err(AuthError::Invalid("sentry_version is not a number"))
    );
    assert_eq!(Auth::from_header("Sentry sentry_key=, sentry_key="), Err(AuthError::Invalid("no sentry_key")));
    assert_eq!(Auth::from_query("sentry_key=%ff%fe&sentry_version=7").unwrap().unwrap().public_key, "\u{fffd}\u{fffd}");
    assert_eq!(Auth::from_query("sentry_key&sentry_version"), Err(AuthError::Invalid("no sentry_key")));
    for bad in
        ["https://k@h/18446744073709551616", "https://k@h/-1", "https://k@h/", "https://\u{e9}@/1", "http://:@h/1"]
    {
        assert!(Dsn::parse(bad).is_err(), "{bad}");
    }
    // What it accepts prints back to itself.
    for good in ["http://k@h@x/+5", "https://a/b@h?q/p/007", "https:// k @h/1"] {
        let d = Dsn::parse(good).unwrap();
        assert_eq!(Dsn::parse(&d.to_string()).unwrap(), d, "{good}");
    }
}

// rate_limits target

#[test]
fn rate_limit_numbers_at_the_edges() {
    for value in
        ["NaN:error", "inf:error", "-inf:error", "1e309:error", "-1:error", "0x10:error", ":error", "-0.000001:"]
    {
        assert!(parse_rate_limits(value).is_empty(), "{value}");
    }
    let limits = parse_rate_limits("-0:error, 1e-400:error, 1e300:transaction:key");
    assert_eq!(limits.len(), 3);
    assert_eq!(limits[0].duration, Duration::ZERO);
    assert_eq!(limits[1].duration, Duration::ZERO);
    assert_eq!(limits[2].duration, Duration::from_secs(1_000_000_000), "capped");
    assert!(parse_rate_limits(&",".repeat(100_000)).is_empty());
    // Only separators name no category, so the limit is skipped like one of unknown categories.
    assert!(parse_rate_limits(&format!("60:{}:key", ";".repeat(100_000))).is_empty());

    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    assert_eq!(parse_retry_after("-0", now), Some(Duration::ZERO));
    assert_eq!(parse_retry_after("1e400", now), None);
    assert_eq!(parse_retry_after("NaN", now), None);
    assert_eq!(parse_retry_after("1e300", now), Some(Duration::from_secs(1_000_000_000)));
    assert_eq!(parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now).map(|d| d > Duration::ZERO), Some(true));
    assert_eq!(parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT", now), Some(Duration::ZERO));
}

// rewrite target

#[test]
fn sent_at_that_cannot_move_is_left_alone() {
    let hour = Duration::from_secs(3600);
    let env = |h: &'static [u8]| Bytes::from_static(h);
    // The shifted time does not fit RFC 3339's four-digit year.
    assert_eq!(shift_sent_at(&env(b"{\"sent_at\":\"9999-12-31T23:59:59Z\"}\nabc"), hour), None);
    assert_eq!(shift_sent_at(&env(b"{\"sent_at\":\"2026-01-01T00:00:00Z\"}\n"), Duration::MAX), None);
    // Not a string, escaped keys, duplicate keys, nested objects deep enough to hit the JSON limit.
    assert_eq!(shift_sent_at(&env(b"{\"sent_at\":12}\n"), hour), None);
    assert_eq!(shift_sent_at(&env(b"{\"sent\\u005fat\":\"2026-01-01T00:00:00Z\"}\n"), hour), None);
    assert_eq!(shift_sent_at(&env(b"{\"sent_at\":\"x\",\"sent_at\":\"y\"}\n"), hour), None);
    let mut deep = b"{\"sent_at\":\"2026-01-01T00:00:00Z\",\"a\":".to_vec();
    deep.extend(nested("[", 100_000));
    assert_eq!(shift_sent_at(&Bytes::from(deep), hour), None);
    // What follows the header line is kept byte for byte, binary included.
    let body = env(b"{\"sent_at\":\"2026-01-01T00:00:00Z\",\"k\":\"\\n\"}\n\x00\xff\n{\"type\":\"x\"}\n");
    let out = shift_sent_at(&body, hour).unwrap();
    assert_eq!(&out[..], b"{\"k\":\"\\n\",\"sent_at\":\"2026-01-01T01:00:00Z\"}\n\x00\xff\n{\"type\":\"x\"}\n");

    assert_eq!(shift_auth_timestamp("sentry_timestamp=", hour), None);
    assert_eq!(shift_auth_timestamp("sentry_timestamp=NaN", hour).as_deref(), Some("sentry_timestamp=NaN"));
    assert_eq!(
        shift_auth_timestamp("sentry_timestamp=\u{e9}, sentry_key=k sentry_timestamp=1", hour),
        None,
        "only the first timestamp is read"
    );
}

/// Found by the `rewrite` target (its first run, after 98,026 executions): an envelope header
/// holding a lone surrogate escape (`\ud83d]`) deep in an unknown key. serde_json reads raw and
/// ignored values leniently, so the parser and the rewriter accept the header although it is not
/// strict JSON; the rewriter must then copy that value verbatim (it never re-encodes other keys)
/// and keep the rest of the envelope, not fail or "repair" it. The fuzz target wrongly demanded
/// valid JSON out of invalid JSON in; it now demands it only of headers that were valid.
#[test]
fn lone_surrogate_in_an_unknown_header_key_is_copied_verbatim() {
    let header: &[u8] = br#"{"sent_at":"2026-11-26T04:49:13.355Z","sdk":{"name":"00f8d\u00e9 \u2713 \ud83d\ude80 \"quotes\" \\\\ back\\\\slash <tag> & tab\\t'","m":"'fx-prefixed-0000'","exc":"AccepatrncEeror('accaptance error Au2713 \ud83d]ude80 \"quotes\" \\\\ back\\\\slash <tag> & tab\\t'","m":"'fx-prefixed-0000'","exc":"AccepatrncEe"}}"#;
    assert_eq!(u16::from_be_bytes([0x00, 0x5a]), 90, "the fuzz input's elapsed seconds");
    assert!(serde_json::from_slice::<serde_json::Value>(header).is_err(), "not strict JSON");
    assert!(
        Envelope::parse(Bytes::copy_from_slice(header)).is_ok(),
        "accepted: serde_json skips unknown keys without decoding their escapes"
    );

    let mut body = header.to_vec();
    body.extend_from_slice(b"\n{\"type\":\"event\",\"length\":2}\n{}\n");
    let out = shift_sent_at(&Bytes::from(body), Duration::from_secs(90)).unwrap();
    let end = out.iter().position(|b| *b == b'\n').unwrap();
    let new_header = std::str::from_utf8(&out[..end]).unwrap();
    assert!(new_header.contains(r#""sent_at":"2026-11-26T04:50:43.355Z""#), "{new_header}");
    assert!(new_header.contains(r#"\ud83d]ude80"#), "the odd escape is kept as sent");
    assert_eq!(&out[end..], b"\n{\"type\":\"event\",\"length\":2}\n{}\n");
}

// decode target

#[test]
fn decoder_chain_on_truncated_and_stacked_bodies() {
    let data = b"{\"message\":\"hello\"}".repeat(100);
    let gz = gzip(&data);
    for cut in [1, 10, gz.len() / 2, gz.len() - 4, gz.len() - 1] {
        let r = codec::decode("gzip", Bytes::copy_from_slice(&gz[..cut]), LIMIT);
        assert!(matches!(r, Err(DecodeError::Corrupt("gzip", _))), "cut at {cut}: {r:?}");
    }
    // A gzip member followed by garbage.
    let mut trailing = gz.clone();
    trailing.extend_from_slice(b"garbage");
    assert!(codec::decode("gzip", Bytes::from(trailing), LIMIT).is_err());
    // Many stacked codings over a body that is none of them.
    let many = vec!["gzip"; 1000].join(",");
    assert!(matches!(codec::decode(&many, Bytes::from_static(b"x"), LIMIT), Err(DecodeError::Corrupt("gzip", _))));
    // A bomb in every coding stops at the limit.
    let zeros = vec![0u8; 4 << 20];
    let zst = zstd::stream::encode_all(&zeros[..], 3).unwrap();
    for (coding, body) in [("gzip", gzip(&zeros)), ("deflate", zlib(&zeros)), ("zstd", zst)] {
        let r = codec::decode(coding, Bytes::from(body), LIMIT);
        assert!(matches!(r, Err(DecodeError::TooLarge(LIMIT))), "{coding}: {r:?}");
    }
    // A bomb two layers deep stops at the limit too, exactly at it is fine.
    let twice = gzip(&gzip(&zeros));
    assert!(matches!(codec::decode("gzip, gzip", Bytes::from(twice), LIMIT), Err(DecodeError::TooLarge(LIMIT))));
    let exact = gzip(&vec![b'a'; LIMIT]);
    assert_eq!(codec::decode("gzip", Bytes::from(exact), LIMIT).unwrap().len(), LIMIT);
    // A zstd frame header that asks for a huge window, and brotli that ends early.
    let r = codec::decode("zstd", Bytes::from_static(b"\x28\xb5\x2f\xfd\x00\xf8\x00\x00\x00\x00"), LIMIT);
    assert!(matches!(r, Err(DecodeError::Corrupt("zstd", _))), "{r:?}");
    let r = codec::decode("br", Bytes::from_static(b"\x1b\xff\xff\x00"), LIMIT);
    assert!(matches!(r, Err(DecodeError::Corrupt("br", _))), "{r:?}");
    assert!(matches!(codec::decode("gzip;q=1", Bytes::new(), LIMIT), Err(DecodeError::UnsupportedEncoding(_))));
    // The spool's gzip fast path believes a trailer only when the data agrees with it.
    let mut lying = gzip(b"small");
    let n = lying.len();
    lying[n - 4..].copy_from_slice(&(LIMIT as u32).to_le_bytes());
    assert!(Encoding::Gzip.decode(&Bytes::from(lying), LIMIT).is_err());
}
