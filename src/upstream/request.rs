//! What the transport is handed: one request, built in full by dispatch.
//!
//! The client only sends it, so everything about a record (its headers, the timestamp shifts, the
//! body's encoding) is decided where the record is known, and this module stays free of the spool.

use bytes::Bytes;

use crate::codec::Encoding;

/// One outgoing request: everything but the framing headers, which the client sets from `body`
/// and `encoding`.
#[derive(Debug, Clone)]
pub struct Request {
    /// The method (POST, or GET for cron check-ins).
    pub method: http::Method,
    /// The upstream's base URL plus the path and query.
    pub uri: http::Uri,
    /// The headers to send, as they came in (auth included), without `Content-Encoding` or
    /// `Content-Length`.
    pub headers: http::HeaderMap,
    /// The body, already encoded as `encoding` says.
    pub body: Bytes,
    /// How `body` is encoded (sent as `Content-Encoding`).
    pub encoding: Encoding,
}
