//! Reading request bodies under a wire limit and undoing `Content-Encoding` (with [`crate::codec`])
//! under a decoded limit.
//!
//! Both limits are hard: a body that grows past either stops being read (a zip bomb costs at most
//! the limit in memory) and is answered 413. A broken stream is a 400; a body that stalls or
//! trickles in below the minimum rate is a 408, so that a slow client cannot hold its connection
//! (and its slot of the connection cap) for long. Decoding runs on a [`DecodePool`], off the async
//! threads.
//!
//! Every body is paid for from the shared [`Budget`] before it is read (a large one with a
//! `Content-Length` whole, others piece by piece before the next piece is read), so a flood of
//! large bodies holds at most the budget in memory: past it, reading stops (back-pressure) and,
//! after the budget's wait, the request is refused as overloaded.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::budget::{Budget, Hold, Overloaded, SMALL_BYTES};
use crate::codec::{self, DecodeError, DecodePool};

/// Why a body could not be read or decoded.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Over the wire or decoded limit.
    #[error("request body exceeds {0} bytes")]
    TooLarge(usize),
    /// The client went away or sent a broken chunked stream.
    #[error("failed to read request body: {0}")]
    Read(String),
    /// The body stalled, or came in slower than the minimum rate.
    #[error("request body too slow: {0}")]
    Timeout(String),
    /// A `Content-Encoding` we do not know.
    #[error("unsupported content encoding `{0}`")]
    UnsupportedEncoding(String),
    /// A compressed stream that does not decode.
    #[error("invalid {0} body: {1}")]
    Corrupt(&'static str, std::io::Error),
    /// The memory budget for request bodies stayed used up for the whole wait.
    #[error(transparent)]
    Overloaded(#[from] Overloaded),
}

impl From<DecodeError> for BodyError {
    fn from(e: DecodeError) -> BodyError {
        match e {
            DecodeError::TooLarge(n) => BodyError::TooLarge(n),
            DecodeError::UnsupportedEncoding(c) => BodyError::UnsupportedEncoding(c),
            DecodeError::Corrupt(name, e) => BodyError::Corrupt(name, e),
            DecodeError::Interrupted(e) => BodyError::Read(e),
        }
    }
}

/// How slow a body may come in.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Longest wait for the next piece of the body.
    pub stall: Duration,
    /// Slowest average rate, in bytes per second, once the body has taken `stall`.
    pub min_rate: usize,
}

/// Whether a request of `content_length`, of which `read` bytes have come so far, may draw from
/// the budget's reserve.
pub fn is_small(content_length: Option<u64>, read: usize) -> bool {
    content_length.map_or(read <= SMALL_BYTES, |l| l <= SMALL_BYTES as u64)
}

/// Reads the whole body, refusing more than `limit` bytes and a body slower than `pace`, paying
/// for each piece from `budget` into `hold` before the next is read.
///
/// The rate is checked as pieces arrive, so a body that trickles a byte just inside each stall
/// window is still cut off once its average falls below the minimum.
pub async fn read(
    body: Incoming,
    content_length: Option<u64>,
    limit: usize,
    pace: Pace,
    budget: &Budget,
    hold: &mut Hold,
) -> Result<Bytes, BodyError> {
    match read_or_stream(body, content_length, limit, pace, budget, hold, usize::MAX).await? {
        Read::Whole(b) => Ok(b),
        Read::Large { .. } => Err(BodyError::TooLarge(limit)),
    }
}

/// A body read whole, or one too large to hold: what came of it so far and the rest, to be
/// streamed to a file.
#[derive(Debug)]
pub enum Read {
    /// The whole body.
    Whole(Bytes),
    /// Over the streaming threshold: the first bytes (paid for in the request's hold) and the
    /// rest of the body.
    Large {
        /// Bytes read already (empty when the `Content-Length` said so at once).
        prefix: Bytes,
        /// The rest.
        rest: Rest,
    },
}

/// The rest of a body, read piece by piece under the wire limit and the pace.
#[derive(Debug)]
pub struct Rest {
    body: Incoming,
    started: Instant,
    total: usize,
    limit: usize,
    pace: Pace,
}

impl Rest {
    /// The next piece, `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Bytes>, BodyError> {
        loop {
            let frame = match tokio::time::timeout(self.pace.stall, self.body.frame()).await {
                Err(_) => {
                    return Err(BodyError::Timeout(format!("no data for {} s", self.pace.stall.as_secs_f32())));
                }
                Ok(None) => return Ok(None),
                Ok(Some(Err(e))) => return Err(BodyError::Read(e.to_string())),
                Ok(Some(Ok(f))) => f,
            };
            let Ok(data) = frame.into_data() else { continue };
            self.total += data.len();
            if self.total > self.limit {
                return Err(BodyError::TooLarge(self.limit));
            }
            let elapsed = self.started.elapsed();
            if elapsed > self.pace.stall && (self.total as f64) < self.pace.min_rate as f64 * elapsed.as_secs_f64() {
                return Err(BodyError::Timeout(format!(
                    "{} bytes in {:.1} s is below {} bytes/s",
                    self.total,
                    elapsed.as_secs_f64(),
                    self.pace.min_rate
                )));
            }
            return Ok(Some(data));
        }
    }
}

/// Reads the body like [`read`], unless it is larger than `stream_above` (by its
/// `Content-Length`, at once, or, without one, once that much has come): then hands back what
/// came and the rest, to be streamed.
#[allow(clippy::too_many_arguments)]
pub async fn read_or_stream(
    body: Incoming,
    content_length: Option<u64>,
    limit: usize,
    pace: Pace,
    budget: &Budget,
    hold: &mut Hold,
    stream_above: usize,
) -> Result<Read, BodyError> {
    if content_length.is_some_and(|l| l > limit as u64) {
        return Err(BodyError::TooLarge(limit));
    }
    let mut rest = Rest { body, started: Instant::now(), total: 0, limit, pace };
    if content_length.is_some_and(|l| l > stream_above as u64) {
        return Ok(Read::Large { prefix: Bytes::new(), rest });
    }
    // A large body with a length is admitted whole or not at all: paying piece by piece, many
    // large uploads would each get part of the budget and all stall, none finishing.
    let mut paid = 0usize;
    if let Some(len) = content_length.filter(|&l| l > SMALL_BYTES as u64) {
        let len = usize::try_from(len).map_err(|_| BodyError::TooLarge(limit))?;
        budget.take(hold, len, false).await?;
        paid = len;
    }
    // The first piece is kept as it came (no copy) unless another follows.
    let mut first: Option<Bytes> = None;
    let mut more: Option<BytesMut> = None;
    while let Some(data) = rest.next().await? {
        let total = rest.total;
        if total > paid {
            budget.take(hold, total - paid, is_small(content_length, total)).await?;
            paid = total;
        }
        match (&mut first, &mut more) {
            (None, None) => first = Some(data),
            (Some(f), None) => {
                let cap = content_length.map_or(f.len() + data.len(), |l| l as usize);
                let mut buf = BytesMut::with_capacity(cap);
                buf.extend_from_slice(f);
                buf.extend_from_slice(&data);
                first = None;
                more = Some(buf);
            }
            (_, Some(buf)) => buf.extend_from_slice(&data),
        }
        if total > stream_above {
            let prefix = match (first, more) {
                (_, Some(buf)) => buf.freeze(),
                (Some(f), None) => f,
                (None, None) => Bytes::new(),
            };
            return Ok(Read::Large { prefix, rest });
        }
    }
    Ok(Read::Whole(match (first, more) {
        (_, Some(buf)) => buf.freeze(),
        (Some(f), None) => f,
        (None, None) => Bytes::new(),
    }))
}

/// Decodes `body` per a `Content-Encoding` value, producing at most `limit` bytes, on `pool`
/// (never on the async threads: a small bomb decodes for as long as a large body).
pub async fn decode(
    pool: &DecodePool,
    encoding: Option<String>,
    body: Bytes,
    limit: usize,
) -> Result<Bytes, BodyError> {
    let Some(enc) = encoding else { return Ok(body) };
    let codings = codec::codings(&enc)?;
    Ok(pool.decode(codings, body, limit).await?)
}

/// [`decode`], with the decoded bytes paid for from `budget` into `hold` (the wire bytes stay
/// held too: both are in memory until the request is done). The wire bytes are handed back when
/// the decoded ones would pass `limit`, to be decoded another way (into a file).
pub async fn decode_within(
    pool: &DecodePool,
    codings: Vec<String>,
    body: Bytes,
    limit: usize,
    budget: &Budget,
    hold: &mut Hold,
) -> Result<Result<Bytes, Bytes>, BodyError> {
    // A body without a coding is the same buffer, paid for already.
    if codings.is_empty() {
        return Ok(Ok(body));
    }
    let decoded = match pool.decode_keeping(codings, body, limit).await {
        (Err(DecodeError::TooLarge(_)), Some(wire)) => return Ok(Err(wire)),
        (out, _) => out?,
    };
    budget.take(hold, decoded.len(), is_small(Some(decoded.len() as u64), 0)).await?;
    Ok(Ok(decoded))
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

    fn pool() -> DecodePool {
        DecodePool::new(1)
    }

    #[tokio::test]
    async fn codings() {
        let data = b"hello hello hello hello".repeat(10);
        assert_eq!(decode(&pool(), Some("gzip".into()), gzip(&data), 1000).await.unwrap(), data);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&data).unwrap();
        assert_eq!(
            decode(&pool(), Some("deflate".into()), Bytes::from(z.finish().unwrap()), 1000).await.unwrap(),
            data
        );
        let mut d = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        d.write_all(&data).unwrap();
        assert_eq!(
            decode(&pool(), Some("deflate".into()), Bytes::from(d.finish().unwrap()), 1000).await.unwrap(),
            data
        );
        let zs = zstd::stream::encode_all(&data[..], 3).unwrap();
        assert_eq!(decode(&pool(), Some("zstd".into()), Bytes::from(zs), 1000).await.unwrap(), data);
        assert_eq!(decode(&pool(), Some("UTF-8".into()), Bytes::from_static(b"x"), 10).await.unwrap(), "x");
        assert_eq!(decode(&pool(), Some("".into()), Bytes::from_static(b"x"), 10).await.unwrap(), "x");
        assert_eq!(decode(&pool(), None, Bytes::from_static(b"x"), 10).await.unwrap(), "x");
    }

    #[test]
    fn small_is_by_content_length_or_by_what_was_read() {
        assert!(is_small(Some(SMALL_BYTES as u64), usize::MAX), "the length decides when there is one");
        assert!(!is_small(Some(SMALL_BYTES as u64 + 1), 0));
        assert!(is_small(None, SMALL_BYTES) && !is_small(None, SMALL_BYTES + 1), "chunked: what was read");
    }

    #[tokio::test]
    async fn limits_and_garbage() {
        let bomb = gzip(&vec![0u8; 1_000_000]);
        assert!(matches!(decode(&pool(), Some("gzip".into()), bomb, 1000).await, Err(BodyError::TooLarge(1000))));
        assert!(matches!(
            decode(&pool(), Some("gzip".into()), Bytes::from_static(b"not gzip"), 1000).await,
            Err(BodyError::Corrupt("gzip", _))
        ));
        assert!(matches!(
            decode(&pool(), Some("br".into()), Bytes::from_static(b"\xff\xff\xff\xff"), 1000).await,
            Err(BodyError::Corrupt("br", _))
        ));
        assert!(matches!(
            decode(&pool(), Some("compress".into()), Bytes::from_static(b"x"), 1000).await,
            Err(BodyError::UnsupportedEncoding(_))
        ));
    }
}
