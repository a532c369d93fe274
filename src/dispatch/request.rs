//! Turning a spooled record into the request the transport sends: the upstream's base URL plus
//! the record's path, its headers as they came in, and the body in the encoding the upstream gets.
//!
//! The two timestamp shifts happen here (the record knows how long it waited): a store request's
//! `sentry_timestamp` in its auth header, and an envelope's `sent_at`, which means decoding and
//! compressing the body again. Otherwise a body goes out exactly as the spool holds it whenever it
//! was stored the way this upstream wants it. Large bodies are decoded and compressed on the
//! blocking pool, off the runtime thread; a body in a file is sent from it (see `file_body`).

use std::time::Duration;

use bytes::Bytes;

use crate::codec::{algorithm_for, compress, Encoding, OFFLOAD_BYTES};
use crate::protocol::{rewrite, Endpoint};
use crate::routing::UpstreamUrl;
use crate::spool::{Body, Record};
use crate::upstream::{self, Request};

/// Why a record cannot become a request (it never will: the caller drops it as rejected).
#[derive(Debug, thiserror::Error)]
pub(super) enum RequestError {
    /// The stored body does not decode.
    #[error("stored body cannot be decoded: {0}")]
    Body(std::io::Error),
    /// Base URL plus path is not a URI.
    #[error("cannot build request: {0}")]
    Uri(#[from] http::uri::InvalidUri),
}

/// How bodies go upstream.
#[derive(Debug, Clone, Copy)]
pub(super) struct Compression {
    /// The configured encoding.
    pub(super) encoding: Encoding,
    /// The gzip level.
    pub(super) level: u32,
}

/// Builds the request for `record` to `base`; `elapsed` is how long the record has been in the
/// sidecar (the timestamp shifts).
pub(super) async fn build(
    record: &Record,
    base: &UpstreamUrl,
    compression: Compression,
    elapsed: Duration,
) -> Result<Request, RequestError> {
    let joined = |e: tokio::task::JoinError| Err(std::io::Error::other(e.to_string()));
    let prepared = match &record.body {
        // Opening, and any decoding and compressing, stay off the runtime thread.
        Body::File(file) => {
            let (owned, file) = (record.clone(), file.clone());
            tokio::task::spawn_blocking(move || super::file_body::prepare(&owned, &file, compression, elapsed))
                .await
                .unwrap_or_else(joined)
        }
        Body::Mem(b) if b.len() > OFFLOAD_BYTES => {
            let owned = record.clone();
            tokio::task::spawn_blocking(move || payload(&owned, compression, elapsed).map(|(b, e)| (b.into(), e)))
                .await
                .unwrap_or_else(joined)
        }
        Body::Mem(_) => payload(record, compression, elapsed).map(|(b, e)| (upstream::Body::Bytes(b), e)),
    };
    let (body, encoding) = prepared.map_err(RequestError::Body)?;
    let uri = http::Uri::try_from(format!("{}{}", base.as_str(), record.path_and_query))?;
    let mut headers = http::HeaderMap::with_capacity(record.headers.len() + 2);
    for (k, v) in &record.headers {
        let shifted = if record.endpoint == Endpoint::Store && k == "x-sentry-auth" {
            v.to_str()
                .ok()
                .and_then(|a| rewrite::shift_auth_timestamp(a, elapsed))
                .and_then(|a| http::HeaderValue::from_str(&a).ok())
        } else {
            None
        };
        headers.append(k.clone(), shifted.unwrap_or_else(|| v.clone()));
    }
    Ok(Request { method: record.method.clone(), uri, headers, body, encoding })
}

/// The body to send and its encoding. A body stored compressed the way this upstream wants goes
/// out as stored; one whose `sent_at` must be shifted (it waited a second or more) is decoded,
/// rewritten and compressed again.
fn payload(record: &Record, compression: Compression, elapsed: Duration) -> std::io::Result<(Bytes, Encoding)> {
    let Compression { encoding: setting, level } = compression;
    let body = record.body.bytes().ok_or_else(|| std::io::Error::other("the body is a file"))?;
    let is_envelope = matches!(record.endpoint, Endpoint::Envelope | Endpoint::Tunnel);
    if is_envelope && elapsed >= rewrite::MIN_SHIFT {
        let raw = record.decoded_body()?;
        if let Some(shifted) = rewrite::shift_sent_at(&raw, elapsed) {
            return Ok(compress(&shifted, setting, level));
        }
    }
    // The rule ingest compressed by, applied to the size the stored body had (unknown for zstd,
    // which ingest only uses for large bodies).
    let wanted = algorithm_for(setting, record.decoded_len().unwrap_or(usize::MAX));
    match record.encoding {
        // Ingest tried and it did not shrink.
        Encoding::Identity if record.incompressible => Ok((body.clone(), Encoding::Identity)),
        Encoding::Identity => Ok(compress(body, setting, level)),
        stored if stored == wanted => Ok((body.clone(), stored)),
        // Stored for another setting (the configuration changed across a restart).
        _ => Ok(compress(&record.decoded_body()?, setting, level)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::ZSTD_MIN_BYTES;

    fn record(body: &'static [u8], encoding: Encoding, incompressible: bool) -> Record {
        Record { encoding, incompressible, ..Record::for_test(body, 0) }
    }

    fn setting(encoding: Encoding) -> Compression {
        Compression { encoding, level: 1 }
    }

    /// The bytes of a request body, read from its file if it is one.
    pub(crate) fn bytes(b: upstream::Body) -> Bytes {
        match b {
            upstream::Body::Bytes(b) => b,
            upstream::Body::File { mut file, len } => {
                let mut out = Vec::new();
                std::io::Read::read_to_end(&mut std::io::Read::take(&mut file, len), &mut out).unwrap();
                Bytes::from(out)
            }
        }
    }

    fn base() -> UpstreamUrl {
        UpstreamUrl::parse("https://o1.ingest.example.com").unwrap()
    }

    #[test]
    fn payload_sends_stored_bodies_as_stored_and_compresses_only_what_was_not_tried() {
        let json = br#"{"message":"hello hello hello hello hello hello hello hello hello hello"}"#;
        let fresh = Duration::ZERO;
        let gzip = setting(Encoding::Gzip);
        // Not tried yet (a client report, a record from before): compressed now.
        let (out, enc) = payload(&record(json, Encoding::Identity, false), gzip, fresh).unwrap();
        assert!(enc == Encoding::Gzip && out.len() < json.len());
        // Tried at ingest and it did not shrink: sent as it is, even though it would shrink now.
        let (out, enc) = payload(&record(json, Encoding::Identity, true), gzip, fresh).unwrap();
        assert_eq!((&out[..], enc), (&json[..], Encoding::Identity));
        // Stored gzip for a gzip upstream: the stored bytes.
        let (gz, _) = compress(&Bytes::from_static(json), Encoding::Gzip, 1);
        let stored = Record { body: gz.clone().into(), ..record(b"", Encoding::Gzip, false) };
        let (out, enc) = payload(&stored, gzip, fresh).unwrap();
        assert_eq!((out, enc), (gz.clone(), Encoding::Gzip));
        // Stored gzip for an upstream without compression: decoded.
        let (out, enc) = payload(&stored, setting(Encoding::Identity), fresh).unwrap();
        assert_eq!((&out[..], enc), (&json[..], Encoding::Identity));
        // Under zstd a small body stays gzip (what ingest stores it as), a large one is zstd.
        let (out, enc) = payload(&stored, setting(Encoding::Zstd), fresh).unwrap();
        assert_eq!((out, enc), (gz, Encoding::Gzip));
        let large = Bytes::from(json.repeat(ZSTD_MIN_BYTES / json.len() + 1));
        let (gz_large, enc) = compress(&large, Encoding::Zstd, 1);
        assert_eq!(enc, Encoding::Zstd, "ingest stores large bodies as zstd");
        let (gz_large_stored, _) = compress(&large, Encoding::Gzip, 1);
        let stored = Record { body: gz_large_stored.into(), ..record(b"", Encoding::Gzip, false) };
        let (out, enc) = payload(&stored, setting(Encoding::Zstd), fresh).unwrap();
        assert_eq!((out, enc), (gz_large, Encoding::Zstd), "stored gzip from a gzip setting, sent as zstd");
    }

    #[tokio::test]
    async fn an_envelope_that_waited_is_sent_with_sent_at_shifted_and_recompressed() {
        let env = b"{\"sent_at\":\"2026-11-26T04:48:54Z\"}\n{\"type\":\"event\"}\n{\"message\":\"hello hello hello hello hello hello hello hello\"}\n";
        let (gz, enc) = compress(&Bytes::from_static(env), Encoding::Gzip, 1);
        assert_eq!(enc, Encoding::Gzip);
        let stored = Record { body: gz.clone().into(), ..record(b"", Encoding::Gzip, false) };
        let fresh = build(&stored, &base(), setting(Encoding::Gzip), Duration::from_millis(900)).await.unwrap();
        assert_eq!((bytes(fresh.body), fresh.encoding), (gz, Encoding::Gzip), "under a second: as stored");
        let req = build(&stored, &base(), setting(Encoding::Gzip), Duration::from_secs(90)).await.unwrap();
        assert_eq!(req.encoding, Encoding::Gzip);
        let sent = Encoding::Gzip.decode(&bytes(req.body), 1 << 20).unwrap();
        let want = std::str::from_utf8(env).unwrap().replace("04:48:54", "04:50:24");
        assert_eq!(&sent[..], want.as_bytes(), "sent_at moved by 90 s, the items as they were");
    }

    #[tokio::test]
    async fn the_request_has_the_method_uri_and_headers_with_the_store_timestamp_shifted() {
        let auth = "Sentry sentry_timestamp=100, sentry_key=k";
        let headers = vec![
            (http::HeaderName::from_static("x-sentry-auth"), http::HeaderValue::from_static(auth)),
            (http::header::USER_AGENT, http::HeaderValue::from_static("sdk/1")),
        ];
        let store = Record {
            endpoint: Endpoint::Store,
            path_and_query: "/api/1/store/?x=1".into(),
            headers,
            ..record(b"{}", Encoding::Identity, true)
        };
        let req = build(&store, &base(), setting(Encoding::Gzip), Duration::from_secs(5)).await.unwrap();
        assert_eq!(req.method, http::Method::POST);
        assert_eq!(req.uri, "https://o1.ingest.example.com/api/1/store/?x=1");
        assert_eq!(req.headers["x-sentry-auth"], "Sentry sentry_timestamp=105.000000, sentry_key=k");
        assert_eq!(req.headers["user-agent"], "sdk/1");
        assert_eq!((&bytes(req.body)[..], req.encoding), (&b"{}"[..], Encoding::Identity));
        // Envelopes keep their auth header as it is: their time is in `sent_at`.
        let env = Record { endpoint: Endpoint::Envelope, ..store };
        let req = build(&env, &base(), setting(Encoding::Gzip), Duration::from_secs(5)).await.unwrap();
        assert_eq!(req.headers["x-sentry-auth"], auth);
    }

    #[tokio::test]
    async fn large_bodies_are_prepared_off_the_runtime_thread_and_bad_ones_are_errors() {
        let large: &'static [u8] = Box::leak(b"{}\n".repeat(OFFLOAD_BYTES).into_boxed_slice());
        let req = build(&record(large, Encoding::Identity, false), &base(), setting(Encoding::Gzip), Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(req.encoding, Encoding::Gzip);
        assert_eq!(Encoding::Gzip.decode(&bytes(req.body), 1 << 24).unwrap(), large);
        let broken = record(b"not gzip", Encoding::Gzip, false);
        let err = build(&broken, &base(), setting(Encoding::Identity), Duration::ZERO).await.unwrap_err();
        assert!(err.to_string().starts_with("stored body cannot be decoded: "), "{err}");
        let bad_path =
            Record { path_and_query: "/api/1/envelope/ spaces".into(), ..record(b"{}", Encoding::Identity, true) };
        let err = build(&bad_path, &base(), setting(Encoding::Identity), Duration::ZERO).await.unwrap_err();
        assert!(err.to_string().starts_with("cannot build request: "), "{err}");
    }
}
