//! Reading request bodies under a wire limit and undoing `Content-Encoding` (with [`crate::codec`])
//! under a decoded limit.
//!
//! Both limits are hard: a body that grows past either stops being read (a zip bomb costs at most
//! the limit in memory) and is answered 413. A broken stream is a 400.

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::codec::{self, DecodeError};

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

impl From<DecodeError> for BodyError {
    fn from(e: DecodeError) -> BodyError {
        match e {
            DecodeError::TooLarge(n) => BodyError::TooLarge(n),
            DecodeError::UnsupportedEncoding(c) => BodyError::UnsupportedEncoding(c),
            DecodeError::Corrupt(name, e) => BodyError::Corrupt(name, e),
        }
    }
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

/// Decodes `body` per a `Content-Encoding` value, producing at most `limit` bytes. Bodies over
/// 64 KiB are decoded off the async threads.
pub async fn decode(encoding: Option<String>, body: Bytes, limit: usize) -> Result<Bytes, BodyError> {
    let Some(enc) = encoding else { return Ok(body) };
    let codings = codec::codings(&enc)?;
    if codings.is_empty() {
        return Ok(body);
    }
    if body.len() <= 64 * 1024 {
        return Ok(codec::decode_codings(&codings, body, limit)?);
    }
    tokio::task::spawn_blocking(move || codec::decode_codings(&codings, body, limit))
        .await
        .map_err(|e| BodyError::Read(e.to_string()))?
        .map_err(BodyError::from)
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
