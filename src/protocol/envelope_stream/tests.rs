//! The streaming validator agrees with the whole-body parser, however the body is split.

use std::io::Read;

use bytes::Bytes;

use super::*;

/// Feeds `body` to a stream validator in pieces of `split` bytes (cycling through them).
fn streamed(body: &[u8], splits: &[usize]) -> Result<EnvelopeFacts, EnvelopeError> {
    let mut v = EnvelopeStream::new();
    let (mut at, mut i) = (0, 0);
    while at < body.len() {
        let n = splits[i % splits.len()].max(1).min(body.len() - at);
        v.feed(&body[at..at + n]);
        at += n;
        i += 1;
    }
    v.finish()
}

/// Every split agrees with `Envelope::parse` on `body`: the same facts, or the same error.
fn agrees(body: &[u8]) {
    let whole = Envelope::parse(Bytes::copy_from_slice(body)).map(|e| EnvelopeFacts::of(&e));
    let mut splits: Vec<Vec<usize>> = vec![vec![body.len().max(1)], vec![1], vec![2, 3], vec![7, 1, 64], vec![4096]];
    let mut x = body.len() as u64 | 1;
    splits.push(
        (0..32)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 97) as usize + 1
            })
            .collect(),
    );
    for s in &splits {
        assert_eq!(streamed(body, s), whole, "split {s:?} of {:?}", String::from_utf8_lossy(body));
    }
}

/// The decoded body of a fixture under tests/fixtures, by its `Content-Encoding`.
fn fixture_body(name: &str) -> Vec<u8> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let raw = std::fs::read(dir.join(format!("{name}.body"))).unwrap();
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.http.json"))).unwrap()).unwrap();
    let encoding = meta["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0].as_str().unwrap().eq_ignore_ascii_case("content-encoding"))
        .map(|h| h[1].as_str().unwrap().to_owned());
    let mut out = Vec::new();
    match encoding.as_deref() {
        None => out = raw,
        Some("gzip") => drop(flate2::read::MultiGzDecoder::new(&raw[..]).read_to_end(&mut out).unwrap()),
        Some("br") => drop(brotli_decompressor::Decompressor::new(&raw[..], 4096).read_to_end(&mut out).unwrap()),
        Some(other) => panic!("{other}"),
    }
    out
}

#[test]
fn agrees_with_the_whole_body_parser_on_every_envelope_fixture() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut checked = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        let Some(stem) = name.strip_suffix(".http.json") else { continue };
        let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join(&name)).unwrap()).unwrap();
        if !meta["path"].as_str().unwrap().contains("/envelope/") {
            continue;
        }
        let body = fixture_body(stem);
        assert!(streamed(&body, &[1]).is_ok(), "{stem}");
        agrees(&body);
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} envelope fixtures");
}

#[test]
fn agrees_on_valid_and_odd_envelopes() {
    for body in [
        &b"{\"event_id\":\"9ec79c33ec9942ab8353589fcb2e04dc\",\"dsn\":\"https://e12d836b15bb49d7bbf99e64295d995b@sentry.io/42\",\"sent_at\":\"2024-01-01T00:00:00Z\"}\n{\"type\":\"attachment\",\"length\":10,\"filename\":\"a.txt\"}\n\xef\xbb\xbfHello\r\n\n{\"type\":\"event\"}\n{\"message\":\"hi\"}\n"[..],
        b"{}\n{\"type\":\"session\"}\n{\"sid\":1}",
        b"{}\n{\"type\":\"attachment\",\"length\":0}",
        b"{}\n{\"type\":\"attachment\",\"length\":0}\n\n{\"type\":\"attachment\"}\n\n",
        b"{}",
        b"{}\n",
        b"{\"x\":{\"y\":1}}\n{\"type\":\"brand_new\",\"foo\":true,\"length\":3}\nabc\n",
        b"{}\n{\"type\":\"profile_chunk\",\"platform\":\"cocoa\"}\n{}\n{\"type\":\"profile_chunk\"}\n{}",
        b"{\"event_id\":\"c72dfba5-18ff-48fa-ae42-2b3759e7ba81\"}\n",
        b"{}\n{\"type\":\"attachment\",\"length\":3}\na\nb",
    ] {
        agrees(body);
    }
}

#[test]
fn agrees_on_bad_envelopes() {
    let mut too_large = b"{}\n{\"type\":\"client_report\"}\n".to_vec();
    too_large.extend(std::iter::repeat_n(b'x', 5000));
    // A rule broken early and a grammar error later: the grammar error wins, as in the parser.
    let mut both = too_large.clone();
    both.extend_from_slice(b"\nnot json\n");
    for body in [
        &b""[..],
        b"[1,2]\n",
        b"{\"sent_at\":\"a\",\"sent_at\":\"b\"}",
        b"{\"event_id\":\"nope\"}\n",
        b"{}\n{\"length\":1}\na",
        b"{}\nnot json\n",
        b"{}\n\n",
        b"{}\n{\"type\":\"event\",\"length\":100}\n{}",
        b"{}\n{\"type\":\"attachment\",\"length\":1}\nabc",
        b"{}\n{\"type\":\"attachment\",\"length\":1}\na\n\n",
        b"{}\n{\"type\":\"event\"}\n{}\n{\"type\":\"event\"}\n{}",
        b"{}\n{\"type\":\"event\"}\n{}\n{\"type\":\"transaction\"}\n{}",
        b"{}\n{\"type\":\"event\",\"length\":18446744073709551615}\n",
        b"{}\n{\"type\":\"event\",\"length\":5}",
        b"{}\n{\"type\":\"event\",\"length\":5}\n",
        b"{}\n{\"type\":\"event\",\"length\":2}\nab",
        &too_large,
        &both,
    ] {
        agrees(body);
    }
}

#[test]
fn a_large_attachment_is_counted_not_kept_and_long_header_lines_are_refused() {
    let mut body =
        b"{\"event_id\":\"9ec79c33ec9942ab8353589fcb2e04dc\"}\n{\"type\":\"attachment\",\"length\":3000000}\n".to_vec();
    body.extend(std::iter::repeat_n(b'\n', 3_000_000));
    body.push(b'\n');
    agrees(&body);
    let mut v = EnvelopeStream::new();
    v.feed(&body);
    assert!(v.line.capacity() < MAX_LINE, "payload bytes are not buffered");
    let long = [b"{\"a\":\"".as_slice(), &vec![b'x'; MAX_LINE], b"\"}\n"].concat();
    let mut v = EnvelopeStream::new();
    v.feed(&long);
    assert!(matches!(v.error(), Some(EnvelopeError::InvalidHeader(_))));
}
