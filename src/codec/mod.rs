//! Content codings, both ways: decoding what SDKs send (gzip, deflate, br, zstd, under a decoded
//! limit) and compressing what goes upstream (gzip, or zstd for large bodies).
//!
//! One [`Encoding`] names how a body is encoded wherever it is: the `--compression` setting, a
//! body stored in the spool, and the `Content-Encoding` sent upstream. Ingest, the spool and
//! dispatch all use this module; it knows nothing of them.

mod decode;
mod encode;
mod pool;
mod stream;

pub use decode::{
    codings, decode, decode_codings, decode_stream, decoder_state_bytes, gunzip_whole, gzip_isize, looks_like_zlib,
    DecodeError, ZSTD_WINDOW_LOG_MAX,
};
pub use encode::{algorithm_for, compress, OFFLOAD_BYTES, ZSTD_MIN_BYTES};
pub use pool::DecodePool;
pub use stream::StreamEncoder;

/// How a body is encoded (also the `compression` setting: `gzip`, `zstd` or `none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Not compressed (the `none` setting).
    #[default]
    #[value(name = "none")]
    #[serde(rename = "none")]
    Identity,
    /// gzip: every Sentry ingest endpoint accepts it.
    Gzip,
    /// zstd (for bodies of 8 KiB and more; smaller than gzip there). Relay decodes it.
    Zstd,
}

impl Encoding {
    /// The `Content-Encoding` value (`None` for identity).
    pub fn content_encoding(self) -> Option<&'static str> {
        match self {
            Encoding::Identity => None,
            Encoding::Gzip => Some("gzip"),
            Encoding::Zstd => Some("zstd"),
        }
    }

    /// The inverse of [`Encoding::content_encoding`] for the codings the sidecar writes.
    pub fn from_content_encoding(s: Option<&str>) -> Option<Encoding> {
        match s {
            None => Some(Encoding::Identity),
            Some("gzip") => Some(Encoding::Gzip),
            Some("zstd") => Some(Encoding::Zstd),
            Some(_) => None,
        }
    }

    /// Decodes a body encoded this way (at most `limit` bytes out).
    pub fn decode(self, body: &bytes::Bytes, limit: usize) -> Result<bytes::Bytes, DecodeError> {
        match self {
            Encoding::Identity => Ok(body.clone()),
            Encoding::Gzip => match gunzip_whole(body, limit) {
                Some(b) => Ok(b),
                None => decode("gzip", body.clone(), limit),
            },
            Encoding::Zstd => decode("zstd", body.clone(), limit),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn every_encoding_round_trips_through_its_own_decoder() {
        let body = Bytes::from(br#"{"message":"hello hello hello hello hello"}"#.repeat(400));
        for algo in [Encoding::Identity, Encoding::Gzip, Encoding::Zstd] {
            let (out, enc) = compress(&body, algo, 1);
            assert_eq!(enc, algo);
            assert_eq!(Encoding::from_content_encoding(enc.content_encoding()), Some(enc));
            assert_eq!(enc.decode(&out, 1 << 20).unwrap(), body);
        }
        assert_eq!(Encoding::from_content_encoding(Some("br")), None);
    }
}
