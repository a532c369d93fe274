//! What ingest stores for each accepted request: enough to rebuild the upstream request later, in
//! another process if need be, without re-parsing the body.

use std::io::Read;

use bytes::Bytes;

use super::Body;
use crate::codec::{self, Encoding};
use crate::protocol::{Categories, Endpoint};
use crate::routing::Target;

/// Decoded bodies are never larger than this (ingest refuses larger ones long before).
const MAX_DECODED: usize = 1 << 30;

/// One accepted request, as stored in the spool.
#[derive(Debug, Clone)]
pub struct Record {
    /// Where it goes.
    pub target: Target,
    /// The endpoint it came in on.
    pub endpoint: Endpoint,
    /// HTTP method to use upstream (POST, or GET for cron check-ins).
    pub method: http::Method,
    /// Path and query to request on the target (starts with `/`).
    pub path_and_query: String,
    /// Headers to send upstream as they came in (auth, content type, user agent, ...).
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// The body after content decoding, stored as `encoding` says: in memory, or (large ones) in
    /// a file under the spool's `bodies/`.
    pub body: Body,
    /// How `body` is stored: as the SDK sent it (after content decoding), or already compressed
    /// for the upstream at ingest, so that the spool writes half the bytes and dispatch sends them
    /// as they are.
    pub encoding: Encoding,
    /// Ingest tried to compress the body and it did not shrink (small sessions, binary
    /// attachments): stored as it came, and dispatch does not try again.
    pub incompressible: bool,
    /// Project id, for routing, rate limits and logs.
    pub project_id: u64,
    /// Public key, for routing and rate limits.
    pub public_key: String,
    /// Event id, if the request has one.
    pub event_id: Option<String>,
    /// Data categories of the content.
    pub categories: Categories,
    /// Item types, for the capture log.
    pub item_types: Vec<String>,
    /// When the sidecar accepted it (unix ms).
    pub received_ms: u64,
}

impl Record {
    /// A captured envelope record for unit tests.
    #[cfg(test)]
    pub(crate) fn for_test(body: &'static [u8], received_ms: u64) -> Record {
        Record {
            target: Target::Capture,
            endpoint: Endpoint::Envelope,
            method: http::Method::POST,
            path_and_query: "/api/1/envelope/".into(),
            headers: vec![],
            body: Body::Mem(Bytes::from_static(body)),
            encoding: Encoding::Identity,
            incompressible: false,
            project_id: 1,
            public_key: "k".into(),
            event_id: None,
            categories: Categories::default(),
            item_types: vec![],
            received_ms,
        }
    }

    /// The size of the body as the SDK sent it (after content decoding), where it is known
    /// without decoding: stored as it came, or gzip in memory (the trailer says); `None` for zstd
    /// and for a compressed file (always larger than any size rule cares about).
    pub fn decoded_len(&self) -> Option<usize> {
        match (self.encoding, &self.body) {
            (Encoding::Identity, b) => Some(b.len()),
            (Encoding::Gzip, Body::Mem(b)) => codec::gzip_isize(b),
            _ => None,
        }
    }

    /// A body kept in a file, as the SDK sent it (after content decoding), as a stream to read
    /// piece by piece; `None` for a body in memory.
    pub fn decoded_file(&self) -> std::io::Result<Option<Box<dyn std::io::Read + Send>>> {
        let Body::File(f) = &self.body else { return Ok(None) };
        let codings: Vec<String> = self.encoding.content_encoding().map(str::to_owned).into_iter().collect();
        let (_, reader) = codec::decode_stream(&codings, Box::new(f.open()?)).map_err(std::io::Error::other)?;
        Ok(Some(reader))
    }

    /// The body as the SDK sent it (after content decoding): `body` itself unless it was stored
    /// compressed. A file body is read whole (up to 1 GiB): callers with large bodies use
    /// [`Record::decoded_file`].
    pub fn decoded_body(&self) -> std::io::Result<Bytes> {
        match &self.body {
            Body::Mem(b) => self.encoding.decode(b, MAX_DECODED).map_err(std::io::Error::other),
            Body::File(f) => {
                let codings: Vec<String> = self.encoding.content_encoding().map(str::to_owned).into_iter().collect();
                let (_, mut reader) =
                    codec::decode_stream(&codings, Box::new(f.open()?)).map_err(std::io::Error::other)?;
                let mut out = Vec::new();
                (&mut reader).take(MAX_DECODED as u64).read_to_end(&mut out)?;
                Ok(Bytes::from(out))
            }
        }
    }

    /// How the body's storage is written in the spool (`None` for identity, not tried).
    pub fn stored_label(&self) -> Option<&'static str> {
        match (self.encoding, self.incompressible) {
            (Encoding::Identity, true) => Some("incompressible"),
            (e, _) => e.content_encoding(),
        }
    }

    /// The inverse of [`Record::stored_label`]: the encoding and whether it is incompressible.
    pub fn parse_stored_label(label: Option<&str>) -> Option<(Encoding, bool)> {
        match label {
            Some("incompressible") => Some((Encoding::Identity, true)),
            other => Encoding::from_content_encoding(other).map(|e| (e, false)),
        }
    }
}

/// A leased record, as handed to dispatch.
#[derive(Debug, Clone)]
pub struct Queued {
    /// The spool's id for it.
    pub id: u64,
    /// Attempts made so far.
    pub attempts: u32,
    /// The record.
    pub record: std::sync::Arc<Record>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoded_len_reads_the_gzip_trailer() {
        let body = Bytes::from(vec![b'a'; 70_000]);
        let (gz, enc) = codec::compress(&body, Encoding::Gzip, 1);
        assert_eq!(enc, Encoding::Gzip);
        let stored = Record { body: gz.into(), encoding: Encoding::Gzip, ..Record::for_test(b"", 0) };
        assert_eq!(stored.decoded_len(), Some(70_000));
        let short = Record { body: Bytes::from_static(b"abc").into(), ..stored };
        assert_eq!(short.decoded_len(), None);
        assert_eq!(Record::for_test(b"{}", 0).decoded_len(), Some(2));
    }

    #[test]
    fn stored_labels_round_trip() {
        for (encoding, incompressible) in
            [(Encoding::Identity, false), (Encoding::Identity, true), (Encoding::Gzip, false), (Encoding::Zstd, false)]
        {
            let r = Record { encoding, incompressible, ..Record::for_test(b"", 0) };
            assert_eq!(Record::parse_stored_label(r.stored_label()), Some((encoding, incompressible)));
        }
        assert_eq!(Record::parse_stored_label(Some("lzw")), None);
    }
}
