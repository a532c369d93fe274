//! What the transport is handed: one request, built in full by dispatch.
//!
//! The client only sends it, so everything about a record (its headers, the timestamp shifts, the
//! body's encoding) is decided where the record is known, and this module stays free of the spool.
//! A large body is handed over as an open file and its length, and sent from it in pieces
//! ([`OutBody`]): no attempt, first or retry, holds it whole in memory.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncRead, ReadBuf};

use crate::codec::Encoding;

/// The piece of a file body read and sent at a time.
const FILE_CHUNK: usize = 64 * 1024;

/// One outgoing request: everything but the framing headers, which the client sets from `body`
/// and `encoding`.
#[derive(Debug)]
pub struct Request {
    /// The method (POST, or GET for cron check-ins).
    pub method: http::Method,
    /// The upstream's base URL plus the path and query.
    pub uri: http::Uri,
    /// The headers to send, as they came in (auth included), without `Content-Encoding` or
    /// `Content-Length`.
    pub headers: http::HeaderMap,
    /// The body, already encoded as `encoding` says.
    pub body: Body,
    /// How `body` is encoded (sent as `Content-Encoding`).
    pub encoding: Encoding,
}

/// A request body: bytes in memory, or an open file of known length read as it is sent.
#[derive(Debug)]
pub enum Body {
    /// In memory.
    Bytes(Bytes),
    /// `len` bytes of `file`, from its current position.
    File {
        /// The open file (a spool body file, or a rewritten copy already unlinked).
        file: std::fs::File,
        /// Its length: the `Content-Length`.
        len: u64,
    },
}

impl Body {
    /// The body's length (its `Content-Length`).
    pub fn len(&self) -> u64 {
        match self {
            Body::Bytes(b) => b.len() as u64,
            Body::File { len, .. } => *len,
        }
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Body {
        Body::Bytes(b)
    }
}

/// The hyper body of a request: whole bytes, or a file read in [`FILE_CHUNK`] pieces off the
/// runtime thread (tokio's file reads run on the blocking pool).
#[derive(Debug)]
pub enum OutBody {
    /// Whole bytes, sent as one frame.
    Bytes(Option<Bytes>),
    /// The rest of a file.
    File {
        /// The file.
        file: tokio::fs::File,
        /// Bytes still to send.
        left: u64,
        /// The read buffer (one piece).
        buf: Vec<u8>,
    },
}

impl From<Body> for OutBody {
    fn from(b: Body) -> OutBody {
        match b {
            Body::Bytes(b) => OutBody::Bytes(Some(b)),
            Body::File { file, len } => {
                OutBody::File { file: tokio::fs::File::from_std(file), left: len, buf: Vec::new() }
            }
        }
    }
}

impl hyper::body::Body for OutBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            OutBody::Bytes(b) => Poll::Ready(b.take().filter(|b| !b.is_empty()).map(|b| Ok(Frame::data(b)))),
            OutBody::File { file, left, buf } => {
                if *left == 0 {
                    return Poll::Ready(None);
                }
                let want = usize::try_from(*left).map_or(FILE_CHUNK, |l| l.min(FILE_CHUNK));
                buf.resize(want, 0);
                let mut rb = ReadBuf::new(&mut buf[..want]);
                match Pin::new(file).poll_read(cx, &mut rb) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
                    Poll::Ready(Ok(())) if rb.filled().is_empty() => Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("body file ended {left} bytes short"),
                    )))),
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        *left -= n as u64;
                        Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(&buf[..n])))))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            OutBody::Bytes(b) => b.as_ref().is_none_or(Bytes::is_empty),
            OutBody::File { left, .. } => *left == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            OutBody::Bytes(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            OutBody::File { left, .. } => SizeHint::with_exact(*left),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use hyper::body::Body as _;
    use std::io::Write;

    #[tokio::test]
    async fn a_file_body_is_sent_in_pieces_and_a_short_file_is_an_error() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&data).unwrap();
        let open = |f: &std::fs::File| {
            let mut f = f.try_clone().unwrap();
            std::io::Seek::rewind(&mut f).unwrap();
            f
        };
        let body = OutBody::from(Body::File { file: open(&f), len: data.len() as u64 });
        assert_eq!(body.size_hint().exact(), Some(data.len() as u64));
        let mut body = body;
        let mut got = Vec::new();
        let mut frames = 0;
        while let Some(frame) = body.frame().await {
            let d = frame.unwrap().into_data().unwrap();
            assert!(d.len() <= FILE_CHUNK);
            got.extend_from_slice(&d);
            frames += 1;
        }
        assert_eq!((got == data, frames), (true, 4));
        let short = OutBody::from(Body::File { file: open(&f), len: data.len() as u64 + 1 });
        assert!(short.collect().await.is_err());
        let bytes = OutBody::from(Body::from(Bytes::from_static(b"abc")));
        assert_eq!(bytes.collect().await.unwrap().to_bytes(), "abc");
    }
}
