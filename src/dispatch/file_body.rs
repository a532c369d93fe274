//! A record whose body is a file (a large upload, streamed to the spool at ingest) becomes a
//! request body read from that file as it is sent, never read whole.
//!
//! Sent as stored when it was stored the way this upstream wants it and needs no `sent_at`
//! shift. Otherwise (it waited a second or more, or the compression setting changed across a
//! restart) it is decoded as a stream, its header line rewritten, and compressed again into a
//! temporary file beside it, unlinked at once and sent from its open handle, so nothing is left
//! behind whatever happens to the attempt. A file, rather than a channel feeding the request as
//! it is encoded: the request keeps a `Content-Length` (what every upstream and proxy takes), the
//! same sending path serves both cases, and the work is done on the blocking pool before the
//! attempt's timeout starts. It costs one more write of the body to disk, only for bodies that
//! waited.

use std::io::{BufRead, BufReader, BufWriter, Read, Seek, Write};
use std::time::Duration;

use bytes::Bytes;

use super::request::Compression;
use crate::codec::{self, Encoding, StreamEncoder};
use crate::protocol::envelope_stream::MAX_LINE;
use crate::protocol::{rewrite, Endpoint};
use crate::spool::{BodyFile, Record, TempBody};
use crate::upstream::Body;

/// The body of `record`, held in `file`, to send and its encoding; runs on the blocking pool.
pub(super) fn prepare(
    record: &Record,
    file: &BodyFile,
    compression: Compression,
    elapsed: Duration,
) -> std::io::Result<(Body, Encoding)> {
    let Compression { encoding: setting, level } = compression;
    let as_stored = record.incompressible || record.encoding == setting;
    let shift = matches!(record.endpoint, Endpoint::Envelope | Endpoint::Tunnel) && elapsed >= rewrite::MIN_SHIFT;
    let stored = || -> std::io::Result<(Body, Encoding)> {
        Ok((Body::File { file: file.open()?, len: file.len() }, record.encoding))
    };
    if as_stored && !shift {
        return stored();
    }
    let codings: Vec<String> = record.encoding.content_encoding().map(str::to_owned).into_iter().collect();
    let (_, decoded) =
        codec::decode_stream(&codings, Box::new(BufReader::new(file.open()?))).map_err(std::io::Error::other)?;
    let mut decoded = BufReader::with_capacity(64 * 1024, decoded);
    let mut head = Vec::new();
    if shift {
        (&mut decoded).take(MAX_LINE as u64).read_until(b'\n', &mut head)?;
        match rewrite::shift_sent_at(&Bytes::copy_from_slice(&head), elapsed) {
            Some(line) => head = line.to_vec(),
            // No `sent_at` to move: as stored, if it was stored for this setting.
            None if as_stored => return stored(),
            None => {}
        }
    }
    let dir = file.path().parent().map(std::path::Path::to_owned).unwrap_or_default();
    let (temp, out) = TempBody::create(&dir, 0)?;
    // Unlinked now: the open handle keeps the bytes until the attempt is done with them.
    drop(temp);
    let out = BufWriter::with_capacity(64 * 1024, out);
    let algo = if record.incompressible { Encoding::Identity } else { setting };
    let mut enc = StreamEncoder::new(algo, level, out)?;
    enc.write_all(&head)?;
    std::io::copy(&mut decoded, &mut enc)?;
    let encoding = enc.encoding();
    let mut out = enc.finish()?.into_inner().map_err(|e| e.into_error())?;
    let len = out.stream_position()?;
    out.rewind()?;
    Ok((Body::File { file: out, len }, encoding))
}
