//! Outbound compression. gzip by default: it shrinks JSON envelopes to a third and every Sentry
//! ingest endpoint accepts it.

use std::io::Write;

use bytes::Bytes;

use crate::config::Compression;

/// Compresses `body`; returns the bytes to send and the `Content-Encoding` to declare, if any.
pub fn compress(body: &Bytes, algo: Compression, level: u32) -> (Bytes, Option<&'static str>) {
    match algo {
        Compression::None => (body.clone(), None),
        Compression::Gzip => {
            let mut enc =
                flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 3 + 64), flate2::Compression::new(level));
            // Writing into a Vec cannot fail.
            match enc.write_all(body).and_then(|()| enc.finish()) {
                Ok(out) => (Bytes::from(out), Some("gzip")),
                Err(_) => (body.clone(), None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn gzip_round_trip() {
        let raw = br#"{"event_id":"0123456789abcdef0123456789abcdef","message":"hello hello hello hello"}"#;
        let body = Bytes::from_static(raw);
        let (out, enc) = compress(&body, Compression::Gzip, 3);
        assert_eq!(enc, Some("gzip"));
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&out[..]).read_to_end(&mut back).unwrap();
        assert_eq!(back, raw);
        let (out, enc) = compress(&body, Compression::None, 3);
        assert_eq!((&out[..], enc), (&raw[..], None));
    }
}
