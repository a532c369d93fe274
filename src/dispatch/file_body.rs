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
        // The longest header line ingest accepts, and its newline.
        (&mut decoded).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut head)?;
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::spool::Body as SpoolBody;

    /// A record whose body is a gzip file of `raw` in `dir`.
    fn file_record(dir: &std::path::Path, raw: &[u8]) -> (Record, Arc<BodyFile>) {
        let (temp, f) = TempBody::create(dir, 0).unwrap();
        let mut enc = StreamEncoder::new(Encoding::Gzip, 1, f).unwrap();
        enc.write_all(raw).unwrap();
        let mut f = enc.finish().unwrap();
        let len = f.stream_position().unwrap();
        let file = Arc::new(temp.finish(len));
        let r = Record { body: SpoolBody::File(file.clone()), encoding: Encoding::Gzip, ..Record::for_test(b"", 0) };
        (r, file)
    }

    fn sent(body: Body) -> Vec<u8> {
        let Body::File { mut file, len } = body else { panic!("a file body") };
        let mut out = Vec::new();
        (&mut file).take(len).read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn a_file_goes_as_stored_or_is_re_encoded_as_a_stream() {
        let dir = tempfile::tempdir().unwrap();
        let mut raw = b"{\"sent_at\":\"2026-11-26T04:48:54Z\"}\n{\"type\":\"attachment\"}\n".to_vec();
        raw.extend(std::iter::repeat_n(b'a', 300_000));
        let (record, file) = file_record(dir.path(), &raw);
        let gzip = Compression { encoding: Encoding::Gzip, level: 1 };
        let stored = std::fs::read(file.path()).unwrap();
        // Fresh and stored for this setting: the file itself.
        let (body, enc) = prepare(&record, &file, gzip, Duration::ZERO).unwrap();
        assert_eq!((sent(body), enc), (stored.clone(), Encoding::Gzip));
        // Waited 90 s: decoded, `sent_at` moved, compressed again; nothing left beside it.
        let (body, enc) = prepare(&record, &file, gzip, Duration::from_secs(90)).unwrap();
        let back = Encoding::Gzip.decode(&Bytes::from(sent(body)), 1 << 20).unwrap();
        let want = String::from_utf8(raw.clone()).unwrap().replace("04:48:54", "04:50:24");
        assert_eq!((&back[..], enc), (want.as_bytes(), Encoding::Gzip));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "the re-encoded copy was unlinked");
        // Stored for another setting: re-encoded for this one.
        let zstd = Compression { encoding: Encoding::Zstd, level: 1 };
        let (body, enc) = prepare(&record, &file, zstd, Duration::ZERO).unwrap();
        assert_eq!(enc, Encoding::Zstd);
        assert_eq!(Encoding::Zstd.decode(&Bytes::from(sent(body)), 1 << 20).unwrap(), raw);
        // A store body is never shifted; a missing file is an error.
        let store = Record { endpoint: Endpoint::Store, ..record.clone() };
        let (body, _) = prepare(&store, &file, gzip, Duration::from_secs(90)).unwrap();
        assert_eq!(sent(body), stored);
        std::fs::remove_file(file.path()).unwrap();
        assert!(prepare(&record, &file, gzip, Duration::ZERO).is_err());
    }
}
