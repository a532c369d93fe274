//! What ingest stores for each accepted request: enough to rebuild the upstream request later, in
//! another process if need be, without re-parsing the body.

use bytes::Bytes;

use crate::config::UpstreamUrl;
use crate::protocol::Categories;

/// The ingest endpoint a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `/api/{id}/envelope/`
    Envelope,
    /// `/api/{id}/store/` and `/api/store/`
    Store,
    /// `/api/{id}/minidump/`
    Minidump,
    /// `/api/{id}/security/` and `/api/{id}/csp-report/`
    Security,
    /// `/api/{id}/nel/`
    Nel,
    /// `/api/{id}/events/{event_id}/attachments/`
    Attachments,
    /// `/api/{id}/unreal/{key}/`
    Unreal,
    /// `/api/{id}/cron/{slug}[/{key}]/`
    Cron,
    /// `/api/{id}/otlp/v1/traces/`
    Otlp,
    /// The browser tunnel.
    Tunnel,
    /// Any other `/api/{id}/...` path, passed through.
    Other,
}

impl Endpoint {
    /// The label used in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Envelope => "envelope",
            Endpoint::Store => "store",
            Endpoint::Minidump => "minidump",
            Endpoint::Security => "security",
            Endpoint::Nel => "nel",
            Endpoint::Attachments => "attachments",
            Endpoint::Unreal => "unreal",
            Endpoint::Cron => "cron",
            Endpoint::Otlp => "otlp",
            Endpoint::Tunnel => "tunnel",
            Endpoint::Other => "other",
        }
    }

    /// Every endpoint, in declaration order (`ALL[e as usize] == e`).
    pub const ALL: [Endpoint; 11] = [
        Endpoint::Envelope,
        Endpoint::Store,
        Endpoint::Minidump,
        Endpoint::Security,
        Endpoint::Nel,
        Endpoint::Attachments,
        Endpoint::Unreal,
        Endpoint::Cron,
        Endpoint::Otlp,
        Endpoint::Tunnel,
        Endpoint::Other,
    ];

    /// The inverse of [`Endpoint::name`].
    pub fn from_name(s: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| e.name() == s)
    }
}

/// Where a record goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// An upstream Sentry (or Relay) base URL.
    Upstream(UpstreamUrl),
    /// The local capture sink (no upstream configured).
    Capture,
}

/// How a record's `body` is stored: as the SDK sent it (after content decoding), or already
/// compressed for the upstream at ingest, so that the spool writes half the bytes and dispatch
/// sends them as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyEncoding {
    /// Not compressed (compression not tried yet).
    #[default]
    Identity,
    /// Not compressed: ingest tried and it did not shrink (small sessions, transactions, binary
    /// attachments), so dispatch does not try again.
    Incompressible,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl BodyEncoding {
    /// The `Content-Encoding` to send it with (`None` when not compressed).
    pub fn name(self) -> Option<&'static str> {
        match self {
            BodyEncoding::Identity | BodyEncoding::Incompressible => None,
            BodyEncoding::Gzip => Some("gzip"),
            BodyEncoding::Zstd => Some("zstd"),
        }
    }

    /// How it is written in the spool (`None` for identity).
    pub fn label(self) -> Option<&'static str> {
        match self {
            BodyEncoding::Incompressible => Some("incompressible"),
            other => other.name(),
        }
    }

    /// The inverse of [`BodyEncoding::label`].
    pub fn from_label(s: Option<&str>) -> Option<BodyEncoding> {
        match s {
            None => Some(BodyEncoding::Identity),
            Some("incompressible") => Some(BodyEncoding::Incompressible),
            Some("gzip") => Some(BodyEncoding::Gzip),
            Some("zstd") => Some(BodyEncoding::Zstd),
            Some(_) => None,
        }
    }
}

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
    /// The body after content decoding, stored as `encoding` says.
    pub body: Bytes,
    /// How `body` is stored.
    pub encoding: BodyEncoding,
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
            body: Bytes::from_static(body),
            encoding: BodyEncoding::Identity,
            project_id: 1,
            public_key: "k".into(),
            event_id: None,
            categories: Categories::default(),
            item_types: vec![],
            received_ms,
        }
    }

    /// The size of the body as the SDK sent it (after content decoding), where it is known
    /// without decoding: stored as it came, or gzip (the trailer says); `None` for zstd.
    pub fn decoded_len(&self) -> Option<usize> {
        match self.encoding {
            BodyEncoding::Identity | BodyEncoding::Incompressible => Some(self.body.len()),
            BodyEncoding::Gzip => gzip_isize(&self.body),
            BodyEncoding::Zstd => None,
        }
    }

    /// The body as the SDK sent it (after content decoding): `body` itself unless it was stored
    /// compressed.
    pub fn decoded_body(&self) -> std::io::Result<Bytes> {
        let Some(name) = self.encoding.name() else { return Ok(self.body.clone()) };
        if self.encoding == BodyEncoding::Gzip {
            if let Some(b) = gunzip_whole(&self.body) {
                return Ok(b);
            }
        }
        crate::ingest::body::decode_blocking(name, self.body.clone(), MAX_DECODED).map_err(std::io::Error::other)
    }
}

thread_local! {
    static INFLATE: std::cell::RefCell<libdeflater::Decompressor> =
        std::cell::RefCell::new(libdeflater::Decompressor::new());
}

/// One-shot gunzip of a body this process compressed (one gzip member, so the trailer's size is
/// the whole output's): the output is allocated once at its size, where a streaming decoder
/// allocates and zeroes its state for every body. `None` if the trailer does not fit the data;
/// the caller then uses ingest's streaming decoder. Not for bodies from the network, which may
/// hold several members.
fn gunzip_whole(gz: &[u8]) -> Option<Bytes> {
    let isize = gzip_isize(gz)?;
    if isize > MAX_DECODED {
        return None;
    }
    let mut out = vec![0u8; isize];
    let n = INFLATE.with(|d| d.borrow_mut().gzip_decompress(gz, &mut out)).ok()?;
    (n == isize).then(|| Bytes::from(out))
}

/// The size a gzip member declares in its trailer (its last four bytes, modulo 2^32); `None`
/// for a body too short to have one.
fn gzip_isize(gz: &[u8]) -> Option<usize> {
    let at = gz.len().checked_sub(4)?;
    Some(u32::from_le_bytes(gz[at..].try_into().ok()?) as usize)
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
        let (gz, enc) = crate::upstream::compress(&body, crate::config::Compression::Gzip, 1);
        assert_eq!(enc, Some("gzip"));
        let stored = Record { body: gz, encoding: BodyEncoding::Gzip, ..Record::for_test(b"", 0) };
        assert_eq!(stored.decoded_len(), Some(70_000));
        let short = Record { body: Bytes::from_static(b"abc"), ..stored };
        assert_eq!(short.decoded_len(), None);
        assert_eq!(Record::for_test(b"{}", 0).decoded_len(), Some(2));
    }

    #[test]
    fn endpoint_all_is_indexed_by_discriminant() {
        for (i, e) in Endpoint::ALL.iter().enumerate() {
            assert_eq!(*e as usize, i);
            assert_eq!(Endpoint::from_name(e.name()), Some(*e));
        }
    }
}
