//! Reading a request body into what the endpoint rules work on: in memory when it is small on
//! the wire and decoded (every SDK's errors, sessions and check-ins: the path is as before), else
//! streamed to a file under the spool's `bodies/` (see [`super::stream`]).

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH};
use http::{HeaderMap, StatusCode};
use hyper::body::Incoming;

use super::body::{self, Pace, Read};
use super::budget::Hold;
use super::stream::{self, Plan, Streamed, STREAM_BYTES};
use super::{Ingest, Refusal, MAX_STORE_EVENT};
use crate::clock::now_ms;
use crate::codec;
use crate::protocol::Endpoint;

/// A request body after reading and decoding: in memory, or (large) streamed to a file.
pub(super) enum Payload {
    /// In memory, decoded.
    Mem(Bytes),
    /// In a file, decoded, checked and compressed for the upstream.
    File(Streamed),
}

impl Ingest {
    /// Reads and decodes a request body: into memory when it is small, both on the wire and
    /// decoded (every SDK's errors, sessions and check-ins: the path is as before), else streamed
    /// to a file (see [`stream`]). Store bodies always stay in memory (Sentry caps them at
    /// 1 MiB decoded, and they are decoded again as a whole to sniff them).
    pub(super) async fn read_payload(
        &self,
        headers: &HeaderMap,
        incoming: Incoming,
        endpoint: Endpoint,
        hold: &mut Hold,
    ) -> Result<Payload, Refusal> {
        let content_length =
            headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
        let pace = Pace { stall: self.cfg.body_read_timeout, min_rate: self.cfg.body_min_rate };
        let codings =
            match headers.get(CONTENT_ENCODING) {
                None => Vec::new(),
                Some(v) => codec::codings(v.to_str().map_err(|_| {
                    Refusal::new(StatusCode::BAD_REQUEST, "encoding", "invalid Content-Encoding header")
                })?)
                .map_err(body::BodyError::from)?,
            };
        let max = self.cfg.max_request_bytes;
        let streams = endpoint != Endpoint::Store;
        let stream_above = if streams { STREAM_BYTES } else { usize::MAX };
        let plan = |codings: Vec<String>| Plan {
            dir: self.cfg.spool_dir.join("bodies"),
            codings,
            decoded_limit: self.cfg.max_decoded_bytes,
            envelope: matches!(endpoint, Endpoint::Envelope | Endpoint::Tunnel),
            algo: self.cfg.compression,
            level: self.cfg.gzip_level,
            now_ms: now_ms(),
            reserve: content_length.unwrap_or(0),
        };
        let raw = match body::read_or_stream(incoming, content_length, max, pace, &self.budget, hold, stream_above)
            .await?
        {
            Read::Whole(raw) => raw,
            Read::Large { prefix, rest } => {
                let plan = plan(codings);
                self.budget.take(hold, plan.state_bytes(), false).await.map_err(body::BodyError::from)?;
                let s = stream::stream(prefix, rest, plan, self.disk.clone(), self.decoders.permits(), &self.budget)
                    .await?;
                return Ok(Payload::File(s));
            }
        };
        if codings.is_empty() {
            return Ok(Payload::Mem(raw));
        }
        // Decoded in memory up to the threshold; a body that decodes to more is decoded again,
        // into a file. Store bodies decode to at most a few times Sentry's 1 MiB cap.
        let limit = if streams { STREAM_BYTES } else { 4 * MAX_STORE_EVENT }.min(self.cfg.max_decoded_bytes);
        // The codings go to the decoder as they are (no copy on the common path); the rare body
        // that decodes past the threshold has them read again from the header.
        let again = || codec::codings(headers.get(CONTENT_ENCODING).and_then(|v| v.to_str().ok()).unwrap_or(""));
        match body::decode_within(&self.decoders, codings, raw, limit, &self.budget, hold).await? {
            Ok(decoded) => Ok(Payload::Mem(decoded)),
            Err(wire) if streams && limit < self.cfg.max_decoded_bytes => {
                let slots = self.decoders.permits();
                let plan = plan(again().map_err(body::BodyError::from)?);
                let s = stream::stream_whole(wire, plan, self.disk.clone(), slots, &self.budget, hold).await?;
                Ok(Payload::File(s))
            }
            Err(_) => Err(body::BodyError::TooLarge(limit).into()),
        }
    }
}
