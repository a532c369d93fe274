//! Compressing for the upstream as a body streams through, for bodies too large to hold whole
//! (see `ingest`'s streaming path): gzip (flate2's streaming deflater, where small bodies use
//! libdeflate's whole-buffer one) or zstd, each writing into any `Write` (a file under the spool's
//! `bodies/`).
//!
//! A streamed body is compressed even when it does not shrink (it cannot be known before the
//! end, and the file is already written): on a binary attachment that costs a few bytes in a
//! million.

use std::io::{self, Write};

use super::Encoding;

/// A streaming compressor into `W`.
pub enum StreamEncoder<W: Write> {
    /// Not compressed: written through.
    Identity(W),
    /// gzip.
    Gzip(flate2::write::GzEncoder<W>),
    /// zstd.
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> StreamEncoder<W> {
    /// A compressor of the `algo` setting at the gzip-style `level` (0-9; zstd's is derived the
    /// same way as for whole bodies) into `out`. Streamed bodies are large, so zstd stays zstd.
    pub fn new(algo: Encoding, level: u32, out: W) -> io::Result<StreamEncoder<W>> {
        Ok(match algo {
            Encoding::Identity => StreamEncoder::Identity(out),
            Encoding::Gzip => StreamEncoder::Gzip(flate2::write::GzEncoder::new(out, flate2::Compression::new(level))),
            Encoding::Zstd => {
                StreamEncoder::Zstd(zstd::stream::write::Encoder::new(out, super::encode::zstd_level(level))?)
            }
        })
    }

    /// How the output is encoded.
    pub fn encoding(&self) -> Encoding {
        match self {
            StreamEncoder::Identity(_) => Encoding::Identity,
            StreamEncoder::Gzip(_) => Encoding::Gzip,
            StreamEncoder::Zstd(_) => Encoding::Zstd,
        }
    }

    /// Writes the end of the stream and hands back the writer.
    pub fn finish(self) -> io::Result<W> {
        match self {
            StreamEncoder::Identity(w) => Ok(w),
            StreamEncoder::Gzip(e) => e.finish(),
            StreamEncoder::Zstd(e) => e.finish(),
        }
    }

    /// Memory the compressor's state takes (zstd's default level keeps a 2 MiB window and its
    /// tables; deflate 32 KiB and its tables), for the in-flight budget.
    pub fn state_bytes(algo: Encoding) -> usize {
        match algo {
            Encoding::Identity => 0,
            Encoding::Gzip => 512 << 10,
            Encoding::Zstd => 4 << 20,
        }
    }
}

impl<W: Write> Write for StreamEncoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            StreamEncoder::Identity(w) => w.write(buf),
            StreamEncoder::Gzip(e) => e.write(buf),
            StreamEncoder::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            StreamEncoder::Identity(w) => w.flush(),
            StreamEncoder::Gzip(e) => e.flush(),
            StreamEncoder::Zstd(e) => e.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_bodies_decode_to_what_was_written() {
        let body: Vec<u8> = (0..300_000u32).flat_map(|i| format!("{} ", i % 977).into_bytes()).collect();
        for algo in [Encoding::Identity, Encoding::Gzip, Encoding::Zstd] {
            let mut e = StreamEncoder::new(algo, 1, Vec::new()).unwrap();
            assert_eq!(e.encoding(), algo);
            for piece in body.chunks(7_777) {
                e.write_all(piece).unwrap();
            }
            let out = e.finish().unwrap();
            assert_eq!(algo.decode(&bytes::Bytes::from(out), 1 << 24).unwrap(), body);
        }
    }
}
