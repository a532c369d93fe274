//! Reading request bodies under a wire limit and undoing `Content-Encoding` under a decoded limit.
//!
//! Both limits are hard: a body that grows past either stops being read (a zip bomb costs at most
//! the limit in memory) and is answered 413. A broken stream is a 400.

use std::io::Read;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

/// Why a body could not be read or decoded.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Over the wire or decoded limit.
    #[error("request body exceeds {0} bytes")]
    TooLarge(usize),
    /// The client went away or sent a broken chunked stream.
    #[error("failed to read request body: {0}")]
    Read(String),
    /// A `Content-Encoding` we do not know.
    #[error("unsupported content encoding `{0}`")]
    UnsupportedEncoding(String),
    /// A compressed stream that does not decode.
    #[error("invalid {0} body: {1}")]
    Corrupt(&'static str, std::io::Error),
}

/// Reads the whole body, refusing more than `limit` bytes.
pub async fn read(body: Incoming, content_length: Option<u64>, limit: usize) -> Result<Bytes, BodyError> {
    if content_length.is_some_and(|l| l > limit as u64) {
        return Err(BodyError::TooLarge(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge(limit)),
        Err(e) => Err(BodyError::Read(e.to_string())),
    }
}

/// Decodes `body` per a `Content-Encoding` value (a comma-separated list, applied in order, undone
/// in reverse), producing at most `limit` bytes. Bodies over 64 KiB are decoded off the async
/// threads.
pub async fn decode(encoding: Option<String>, body: Bytes, limit: usize) -> Result<Bytes, BodyError> {
    let Some(enc) = encoding else { return Ok(body) };
    let codings: Vec<String> = enc
        .split(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "identity" && c != "utf-8")
        .collect();
    if codings.is_empty() {
        return Ok(body);
    }
    for c in &codings {
        if !matches!(c.as_str(), "gzip" | "x-gzip" | "deflate" | "br" | "zstd") {
            return Err(BodyError::UnsupportedEncoding(c.clone()));
        }
    }
    if body.len() <= 64 * 1024 {
        return decode_all(&codings, body, limit);
    }
    tokio::task::spawn_blocking(move || decode_all(&codings, body, limit))
        .await
        .map_err(|e| BodyError::Read(e.to_string()))?
}

/// Decodes synchronously (for benches and callers already off the async threads).
pub fn decode_blocking(encoding: &str, body: Bytes, limit: usize) -> Result<Bytes, BodyError> {
    let codings: Vec<String> =
        encoding.split(',').map(|c| c.trim().to_ascii_lowercase()).filter(|c| !c.is_empty()).collect();
    decode_all(&codings, body, limit)
}

fn decode_all(codings: &[String], mut body: Bytes, limit: usize) -> Result<Bytes, BodyError> {
    for c in codings.iter().rev() {
        body = decode_one(c, &body, limit)?;
    }
    Ok(body)
}

fn decode_one(coding: &str, input: &[u8], limit: usize) -> Result<Bytes, BodyError> {
    let mut out = Vec::with_capacity((input.len() * 4).min(limit));
    let cap = limit as u64 + 1;
    let (name, res) = match coding {
        "gzip" | "x-gzip" => ("gzip", flate2::read::MultiGzDecoder::new(input).take(cap).read_to_end(&mut out)),
        "deflate" => {
            // HTTP's "deflate" is zlib (RFC 1950), but some clients send a raw deflate stream.
            if looks_like_zlib(input) {
                ("deflate", flate2::read::ZlibDecoder::new(input).take(cap).read_to_end(&mut out))
            } else {
                ("deflate", flate2::read::DeflateDecoder::new(input).take(cap).read_to_end(&mut out))
            }
        }
        "br" => ("br", brotli_decompressor::Decompressor::new(input, 4096).take(cap).read_to_end(&mut out)),
        "zstd" => ("zstd", zstd::stream::read::Decoder::new(input).and_then(|d| d.take(cap).read_to_end(&mut out))),
        other => return Err(BodyError::UnsupportedEncoding(other.to_owned())),
    };
    res.map_err(|e| BodyError::Corrupt(name, e))?;
    if out.len() > limit {
        return Err(BodyError::TooLarge(limit));
    }
    Ok(Bytes::from(out))
}

fn looks_like_zlib(b: &[u8]) -> bool {
    b.len() >= 2 && b[0] & 0x0f == 8 && (u16::from(b[0]) << 8 | u16::from(b[1])) % 31 == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Bytes {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        Bytes::from(e.finish().unwrap())
    }

    #[tokio::test]
    async fn codings() {
        let data = b"hello hello hello hello".repeat(10);
        assert_eq!(decode(Some("gzip".into()), gzip(&data), 1000).await.unwrap(), data);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&data).unwrap();
        assert_eq!(decode(Some("deflate".into()), Bytes::from(z.finish().unwrap()), 1000).await.unwrap(), data);
        let mut d = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        d.write_all(&data).unwrap();
        assert_eq!(decode(Some("deflate".into()), Bytes::from(d.finish().unwrap()), 1000).await.unwrap(), data);
        let zs = zstd::stream::encode_all(&data[..], 3).unwrap();
        assert_eq!(decode(Some("zstd".into()), Bytes::from(zs), 1000).await.unwrap(), data);
        assert_eq!(decode(Some("UTF-8".into()), Bytes::from_static(b"x"), 10).await.unwrap(), "x");
        assert_eq!(decode(Some("".into()), Bytes::from_static(b"x"), 10).await.unwrap(), "x");
        assert_eq!(decode(None, Bytes::from_static(b"x"), 10).await.unwrap(), "x");
    }

    #[tokio::test]
    async fn limits_and_garbage() {
        let bomb = gzip(&vec![0u8; 1_000_000]);
        assert!(matches!(decode(Some("gzip".into()), bomb, 1000).await, Err(BodyError::TooLarge(1000))));
        assert!(matches!(
            decode(Some("gzip".into()), Bytes::from_static(b"not gzip"), 1000).await,
            Err(BodyError::Corrupt("gzip", _))
        ));
        assert!(matches!(
            decode(Some("br".into()), Bytes::from_static(b"\xff\xff\xff\xff"), 1000).await,
            Err(BodyError::Corrupt("br", _))
        ));
        assert!(matches!(
            decode(Some("compress".into()), Bytes::from_static(b"x"), 1000).await,
            Err(BodyError::UnsupportedEncoding(_))
        ));
    }
}
