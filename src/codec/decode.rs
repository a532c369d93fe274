//! Undoing a `Content-Encoding` (a comma-separated list, applied in order, undone in reverse)
//! under a hard limit on the decoded size: a body that grows past it stops being decoded, so a
//! zip bomb costs at most the limit in memory.
//!
//! These are synchronous and may take a while (a 16 KB brotli bomb runs to the limit): async
//! callers run them off the runtime's threads, through [`super::DecodePool`], which also bounds
//! how many run at once.

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
    /// The decoding thread went away (the runtime is shutting down).
    #[error("decoding interrupted: {0}")]
    Interrupted(String),
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

/// Undoes `codings` (as [`codings`] returns them) in reverse order, as one chain of streaming
/// decoders: no stage holds its whole output, and decoding stops one byte past `limit`.
pub fn decode_codings(codings: &[String], body: Bytes, limit: usize) -> Result<Bytes, DecodeError> {
    if codings.is_empty() {
        return Ok(body);
    }
    decode_slice(codings, &body, limit)
}

/// [`decode_codings`] of a borrowed body with at least one coding.
pub(super) fn decode_slice(codings: &[String], body: &[u8], limit: usize) -> Result<Bytes, DecodeError> {
    let mut reader: Box<dyn Read + Send + '_> = Box::new(body);
    let mut last = "";
    for c in codings.iter().rev() {
        let (name, next) = decoder(c, reader)?;
        (reader, last) = (next, name);
    }
    let mut out = Vec::with_capacity((body.len() * 4).min(limit));
    reader.take(limit as u64 + 1).read_to_end(&mut out).map_err(|e| {
        // Which stage failed is not known once they are chained; the outermost names the body.
        DecodeError::Corrupt(last, e)
    })?;
    if out.len() > limit {
        return Err(DecodeError::TooLarge(limit));
    }
    Ok(Bytes::from(out))
}

/// The largest zstd window accepted from a client, as a power of two (8 MiB: what levels up to 19
/// use; only the "ultra" levels 20 to 22 need more).
pub const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// The chain of streaming decoders undoing `codings` (as [`codings`] returns them, in reverse)
/// over `input`, and the name of the outermost coding (for errors). Reading it yields the decoded
/// body; nothing is held whole. For bodies decoded as they arrive (see `ingest`).
pub fn decode_stream(
    codings: &[String],
    input: Box<dyn Read + Send>,
) -> Result<(&'static str, Box<dyn Read + Send>), DecodeError> {
    let (mut reader, mut last) = (input, "");
    for c in codings.iter().rev() {
        let (name, next) = decoder(c, reader)?;
        (reader, last) = (next, name);
    }
    Ok((last, reader))
}

/// Memory one streaming decoder of `coding` may allocate for its state, beyond what it is fed and
/// what it hands out (a brotli window is up to 16 MiB, a zstd one up to 8 MiB, inflate's 32 KiB).
pub fn decoder_state_bytes(coding: &str) -> usize {
    match coding {
        "br" => 16 << 20,
        "zstd" => (1 << ZSTD_WINDOW_LOG_MAX) + (1 << 20),
        _ => 64 << 10,
    }
}

/// The streaming decoder of one coding over `input`.
fn decoder<'a>(
    coding: &str,
    input: Box<dyn Read + Send + 'a>,
) -> Result<(&'static str, Box<dyn Read + Send + 'a>), DecodeError> {
    Ok(match coding {
        "gzip" | "x-gzip" => ("gzip", Box::new(flate2::read::MultiGzDecoder::new(input))),
        "deflate" => {
            // HTTP's "deflate" is zlib (RFC 1950), but some clients send a raw deflate stream.
            let mut input = std::io::BufReader::new(input);
            let head = std::io::BufRead::fill_buf(&mut input).map_err(|e| DecodeError::Corrupt("deflate", e))?;
            if looks_like_zlib(head) {
                ("deflate", Box::new(flate2::read::ZlibDecoder::new(input)))
            } else {
                ("deflate", Box::new(flate2::read::DeflateDecoder::new(input)))
            }
        }
        "br" => ("br", Box::new(brotli_decompressor::Decompressor::new(input, 4096))),
        "zstd" => {
            let mut d = zstd::stream::read::Decoder::new(input).map_err(|e| DecodeError::Corrupt("zstd", e))?;
            // A frame may ask for a window of up to 2 GiB (zstd's own default cap is 128 MiB),
            // which the decoder would allocate before producing a byte: a few bytes could cost
            // that much memory. Levels up to 19 never use more than 8 MiB.
            d.window_log_max(ZSTD_WINDOW_LOG_MAX).map_err(|e| DecodeError::Corrupt("zstd", e))?;
            ("zstd", Box::new(d))
        }
        other => return Err(DecodeError::UnsupportedEncoding(other.to_owned())),
    })
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
    fn a_chain_stops_at_the_limit_without_whole_stages() {
        // A gzip bomb inside zstd: the zstd stage is small, the gzip stage would be 10 MB.
        let inner = gzip(&vec![0u8; 10 << 20]);
        let outer = zstd::stream::encode_all(&inner[..], 3).unwrap();
        let codings = codings("gzip, zstd").unwrap();
        assert!(matches!(decode_codings(&codings, Bytes::from(outer), 4096), Err(DecodeError::TooLarge(4096))));
        // A brotli bomb (809 bytes of 1 GiB of zeros) stops at the limit too.
        let br = Bytes::from_static(include_bytes!("../../tests/data/zeros_1gib.br"));
        assert!(matches!(decode("br", br, 1 << 20), Err(DecodeError::TooLarge(_))));
    }

    /// A frame that declares a window past 8 MiB is refused before anything is decoded; one at
    /// the limit decodes.
    #[test]
    fn a_zstd_window_past_the_limit_is_refused() {
        let frame = |log: u32| {
            let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
            e.include_contentsize(false).unwrap();
            e.window_log(log).unwrap();
            std::io::Write::write_all(&mut e, &[7u8; 1000]).unwrap();
            Bytes::from(e.finish().unwrap())
        };
        assert_eq!(decode("zstd", frame(ZSTD_WINDOW_LOG_MAX), 1 << 20).unwrap().len(), 1000);
        assert!(matches!(
            decode("zstd", frame(ZSTD_WINDOW_LOG_MAX + 4), 1 << 20),
            Err(DecodeError::Corrupt("zstd", _))
        ));
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
