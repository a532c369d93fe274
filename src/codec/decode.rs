//! Undoing a `Content-Encoding` (a comma-separated list, applied in order, undone in reverse)
//! under a hard limit on the decoded size: a body that grows past it stops being decoded, so a
//! zip bomb costs at most the limit in memory.
//!
//! These are synchronous and may take a while on a large body: async callers run them on the
//! blocking pool (ingest does for bodies over 64 KiB).

use std::io::Read;

use bytes::Bytes;

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Decodes to more than the limit.
    #[error("request body exceeds {0} bytes")]
    TooLarge(usize),
    /// A `Content-Encoding` we do not know.
    #[error("unsupported content encoding `{0}`")]
    UnsupportedEncoding(String),
    /// A compressed stream that does not decode.
    #[error("invalid {0} body: {1}")]
    Corrupt(&'static str, std::io::Error),
}

/// The codings of a `Content-Encoding` value, lowercased, in the order they were applied, without
/// the no-op ones (`identity`, and `utf-8` which some clients send); refuses unknown codings.
pub fn codings(header: &str) -> Result<Vec<String>, DecodeError> {
    let list: Vec<String> = header
        .split(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "identity" && c != "utf-8")
        .collect();
    for c in &list {
        if !matches!(c.as_str(), "gzip" | "x-gzip" | "deflate" | "br" | "zstd") {
            return Err(DecodeError::UnsupportedEncoding(c.clone()));
        }
    }
    Ok(list)
}

/// Decodes `body` by a `Content-Encoding` value, producing at most `limit` bytes.
pub fn decode(content_encoding: &str, body: Bytes, limit: usize) -> Result<Bytes, DecodeError> {
    decode_codings(&codings(content_encoding)?, body, limit)
}

/// Undoes `codings` (as [`codings`] returns them) in reverse order.
pub fn decode_codings(codings: &[String], mut body: Bytes, limit: usize) -> Result<Bytes, DecodeError> {
    for c in codings.iter().rev() {
        body = decode_one(c, &body, limit)?;
    }
    Ok(body)
}

fn decode_one(coding: &str, input: &[u8], limit: usize) -> Result<Bytes, DecodeError> {
    let mut out = Vec::with_capacity((input.len() * 4).min(limit));
    let cap = limit as u64 + 1;
    let (name, res) = match coding {
        "gzip" | "x-gzip" => ("gzip", flate2::read::MultiGzDecoder::new(input).take(cap).read_to_end(&mut out)),
        "deflate" => {
            // HTTP's "deflate" is zlib (RFC 1950), but some clients send a raw deflate stream.
            if looks_like_zlib(input) {
                ("deflate", flate2::read::ZlibDecoder::new(input).take(cap).read_to_end(&mut out))
            } else {
                ("deflate", flate2::read::DeflateDecoder::new(input).take(cap).read_to_end(&mut out))
            }
        }
        "br" => ("br", brotli_decompressor::Decompressor::new(input, 4096).take(cap).read_to_end(&mut out)),
        "zstd" => ("zstd", zstd::stream::read::Decoder::new(input).and_then(|d| d.take(cap).read_to_end(&mut out))),
        other => return Err(DecodeError::UnsupportedEncoding(other.to_owned())),
    };
    res.map_err(|e| DecodeError::Corrupt(name, e))?;
    if out.len() > limit {
        return Err(DecodeError::TooLarge(limit));
    }
    Ok(Bytes::from(out))
}

/// Whether `b` starts with a zlib header (RFC 1950: deflate method, header checksum).
pub fn looks_like_zlib(b: &[u8]) -> bool {
    b.len() >= 2 && b[0] & 0x0f == 8 && (u16::from(b[0]) << 8 | u16::from(b[1])) % 31 == 0
}

thread_local! {
    static INFLATE: std::cell::RefCell<libdeflater::Decompressor> =
        std::cell::RefCell::new(libdeflater::Decompressor::new());
}

/// One-shot gunzip of a body this process compressed (one gzip member, so the trailer's size is
/// the whole output's): the output is allocated once at its size, where a streaming decoder
/// allocates and zeroes its state for every body. `None` if the trailer does not fit the data or
/// says more than `limit`; the caller then uses [`decode`]. Not for bodies from the network,
/// which may hold several members.
pub fn gunzip_whole(gz: &[u8], limit: usize) -> Option<Bytes> {
    let isize = gzip_isize(gz)?;
    if isize > limit {
        return None;
    }
    let mut out = vec![0u8; isize];
    let n = INFLATE.with(|d| d.borrow_mut().gzip_decompress(gz, &mut out)).ok()?;
    (n == isize).then(|| Bytes::from(out))
}

/// The size a gzip member declares in its trailer (its last four bytes, modulo 2^32); `None`
/// for a body too short to have one.
pub fn gzip_isize(gz: &[u8]) -> Option<usize> {
    let at = gz.len().checked_sub(4)?;
    Some(u32::from_le_bytes(gz[at..].try_into().ok()?) as usize)
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

    #[test]
    fn codings_round_trip() {
        let data = b"hello hello hello hello".repeat(10);
        assert_eq!(decode("gzip", gzip(&data), 1000).unwrap(), data);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&data).unwrap();
        assert_eq!(decode("deflate", Bytes::from(z.finish().unwrap()), 1000).unwrap(), data);
        let mut d = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        d.write_all(&data).unwrap();
        assert_eq!(decode("deflate", Bytes::from(d.finish().unwrap()), 1000).unwrap(), data);
        let zs = zstd::stream::encode_all(&data[..], 3).unwrap();
        assert_eq!(decode("zstd", Bytes::from(zs), 1000).unwrap(), data);
        assert_eq!(decode("UTF-8", Bytes::from_static(b"x"), 10).unwrap(), "x");
        assert_eq!(decode("", Bytes::from_static(b"x"), 10).unwrap(), "x");
        // Applied in order, undone in reverse.
        let twice = gzip(&zstd::stream::encode_all(&data[..], 3).unwrap());
        assert_eq!(decode("zstd, gzip", twice, 1000).unwrap(), data);
    }

    #[test]
    fn limits_and_garbage() {
        let bomb = gzip(&vec![0u8; 1_000_000]);
        assert!(matches!(decode("gzip", bomb, 1000), Err(DecodeError::TooLarge(1000))));
        assert!(matches!(decode("gzip", Bytes::from_static(b"not gzip"), 1000), Err(DecodeError::Corrupt("gzip", _))));
        assert!(matches!(
            decode("br", Bytes::from_static(b"\xff\xff\xff\xff"), 1000),
            Err(DecodeError::Corrupt("br", _))
        ));
        assert!(matches!(decode("compress", Bytes::from_static(b"x"), 1000), Err(DecodeError::UnsupportedEncoding(_))));
    }

    #[test]
    fn whole_gunzip_reads_the_trailer() {
        let body = gzip(&[b'a'; 70_000]);
        assert_eq!(gzip_isize(&body), Some(70_000));
        assert_eq!(gunzip_whole(&body, 1 << 20).unwrap().len(), 70_000);
        assert_eq!(gunzip_whole(&body, 1000), None, "over the limit");
        assert_eq!(gzip_isize(b"abc"), None);
    }
}
