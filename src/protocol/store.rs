//! Legacy `/store/` bodies: plain JSON, raven's zlib (`Content-Encoding: deflate`, decoded before this
//! point) and the older base64-of-zlib form sent by raven 5.5 and earlier with no encoding header.
//!
//! Like Sentry, the body is sniffed: `{` means JSON, anything else is base64 then zlib. The result is
//! the event JSON exactly as the SDK serialised it, which is what the sidecar forwards.

use std::io::Read;

use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;

/// Why a store body was refused.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Neither JSON nor base64.
    #[error("store body is neither JSON nor base64: {0}")]
    NotBase64(base64::DecodeError),
    /// base64 that does not hold a zlib stream.
    #[error("store body is base64 but not zlib: {0}")]
    NotZlib(std::io::Error),
    /// The decoded body is above the limit.
    #[error("decoded store body exceeds {0} bytes")]
    TooLarge(usize),
    /// The event is not a JSON object.
    #[error("invalid store event JSON: {0}")]
    InvalidJson(serde_json::Error),
    /// `event_id` is not 32 hex digits or a dashed UUID.
    #[error("invalid event_id in store event")]
    InvalidEventId,
}

/// A decoded legacy event.
#[derive(Debug, Clone)]
pub struct StoreEvent {
    /// The event JSON as the SDK wrote it.
    pub json: Bytes,
    /// The event's `event_id`, if it has one.
    pub event_id: Option<String>,
    /// Whether `type` is `transaction` (which counts as a transaction, not an error).
    pub is_transaction: bool,
}

#[derive(Deserialize)]
struct Peek {
    #[serde(default)]
    event_id: Option<serde_json::Value>,
    #[serde(default, rename = "type")]
    ty: Option<serde_json::Value>,
}

/// Decodes and validates a store body of at most `limit` decoded bytes.
pub fn decode(body: Bytes, limit: usize) -> Result<StoreEvent, StoreError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
    let json = if first == Some(b'{') {
        body
    } else {
        let compact: Vec<u8> = body.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
        let zlib = base64::engine::general_purpose::STANDARD.decode(&compact).map_err(StoreError::NotBase64)?;
        // A guess at the decoded size, never above what may be decoded at all.
        let mut out = Vec::with_capacity(zlib.len().saturating_mul(3).min(limit));
        flate2::read::ZlibDecoder::new(&zlib[..])
            .take(limit as u64 + 1)
            .read_to_end(&mut out)
            .map_err(StoreError::NotZlib)?;
        if out.len() > limit {
            return Err(StoreError::TooLarge(limit));
        }
        Bytes::from(out)
    };
    if json.len() > limit {
        return Err(StoreError::TooLarge(limit));
    }
    let first = json.iter().find(|b| !b.is_ascii_whitespace()).copied();
    if first != Some(b'{') {
        return Err(StoreError::InvalidJson(serde::de::Error::custom("not a JSON object")));
    }
    let peek: Peek = serde_json::from_slice(&json).map_err(StoreError::InvalidJson)?;
    let event_id = match peek.event_id {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) if super::envelope::is_valid_event_id(&s) => Some(s),
        Some(_) => return Err(StoreError::InvalidEventId),
    };
    let is_transaction = matches!(peek.ty, Some(serde_json::Value::String(ref t)) if t == "transaction");
    Ok(StoreEvent { json, event_id, is_transaction })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn plain_json() {
        let ev = decode(Bytes::from_static(b"{\"event_id\":\"0123456789abcdef0123456789abcdef\"}"), 1000).unwrap();
        assert_eq!(ev.event_id.as_deref(), Some("0123456789abcdef0123456789abcdef"));
        assert!(!ev.is_transaction);
    }

    #[test]
    fn base64_zlib() {
        let json = b"{\"message\":\"hi\",\"type\":\"transaction\"}";
        let b64 = base64::engine::general_purpose::STANDARD.encode(zlib(json));
        let ev = decode(Bytes::from(b64), 1000).unwrap();
        assert_eq!(&ev.json[..], json);
        assert!(ev.is_transaction);
        assert_eq!(ev.event_id, None);
    }

    #[test]
    fn rejects_garbage_and_bombs() {
        assert!(matches!(decode(Bytes::from_static(b"%%%"), 100), Err(StoreError::NotBase64(_))));
        assert!(matches!(decode(Bytes::from_static(b"aGVsbG8="), 100), Err(StoreError::NotZlib(_))));
        assert!(matches!(decode(Bytes::from_static(b"{\"a\":"), 100), Err(StoreError::InvalidJson(_))));
        let bomb = vec![b' '; 100_000];
        let b64 = base64::engine::general_purpose::STANDARD.encode(zlib(&bomb));
        assert!(matches!(decode(Bytes::from(b64), 1000), Err(StoreError::TooLarge(1000))));
        assert!(matches!(decode(Bytes::from_static(b"{\"event_id\":42}"), 100), Err(StoreError::InvalidEventId)));
    }
}
