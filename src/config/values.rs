//! What a setting's text means: the enum settings and the parsers for every other kind of value.
//!
//! A value reaches the sidecar as a flag, an environment variable, a TOML value or a built-in
//! default, and all four go through the parsers here, so `20MiB` or `2s` means the same thing
//! wherever it is written. The enums derive clap's `ValueEnum` and serde's `Deserialize` with the
//! same kebab-case names, so flags and the file accept exactly the same words.

use std::net::SocketAddr;
use std::time::Duration;

use crate::protocol::Dsn;
use crate::routing::UpstreamUrl;

/// How durable an acknowledged envelope is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// Written to the OS (SQLite WAL, `synchronous=NORMAL`) before the answer: survives `kill -9`.
    Process,
    /// fsync'd (group commit) before the answer: survives power loss.
    Power,
    /// Acknowledged from RAM; spilled to disk under pressure and on shutdown.
    Memory,
}

/// What a full spool does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FullPolicy {
    /// Drop the oldest waiting envelopes to make room (the freshest errors matter most).
    DropOldest,
    /// Refuse new envelopes with 503 and `Retry-After`.
    RejectNew,
}

/// Which envelopes are delivered first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryOrder {
    /// Oldest first.
    OldestFirst,
    /// Newest first.
    NewestFirst,
}

/// What happens to an envelope whose categories are all rate limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RateLimitPolicy {
    /// Keep it in the spool until the limit ends (up to `max_hold`).
    Hold,
    /// Drop it, count it and report it in a client report.
    Drop,
}

/// How `main` writes logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// An enum setting from its name, as clap reads it (for the built-in defaults).
pub(super) fn parse_enum<T: clap::ValueEnum>(s: &str) -> Result<T, String> {
    T::from_str(s, false)
}

pub(super) fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|_| format!("`{s}` is not an address like 127.0.0.1:3000"))
}

pub(super) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| format!("`{s}` is not a duration like 30s or 5m ({e})"))
}

pub(super) fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let n = match s.parse::<u64>() {
        Ok(n) => n,
        Err(_) => {
            s.parse::<bytesize::ByteSize>().map_err(|e| format!("`{s}` is not a size like 20MiB ({e})"))?.as_u64()
        }
    };
    if n == 0 {
        return Err("must be greater than zero".into());
    }
    usize::try_from(n).map_err(|_| "too large".into())
}

pub(super) fn parse_count(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be greater than zero".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{s}` is not a positive whole number")),
    }
}

pub(super) fn parse_gzip_level(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if n <= 9 => Ok(n),
        _ => Err(format!("`{s}` is not a gzip level from 0 to 9")),
    }
}

pub(super) fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        other => Err(format!("`{other}` is not true or false")),
    }
}

pub(super) fn parse_rate(s: &str) -> Result<u32, String> {
    s.trim().parse::<u32>().map_err(|_| format!("`{s}` is not a whole number of envelopes per second (0 = unpaced)"))
}

pub(super) fn parse_tunnel_path(s: &str) -> Result<String, String> {
    let s = s.trim();
    if !s.starts_with('/') || s.contains('?') || s.contains("/api/") {
        return Err(format!("`{s}` must be an absolute path without a query, outside /api/"));
    }
    Ok(s.to_owned())
}

pub(super) fn parse_dsn(s: &str) -> Result<Dsn, String> {
    Dsn::parse(s).map_err(|e| e.to_string())
}

pub(super) fn parse_upstream(s: &str) -> Result<UpstreamUrl, String> {
    UpstreamUrl::parse(s)
}

pub(super) fn parse_project(s: &str) -> Result<u64, String> {
    s.trim().parse::<u64>().map_err(|_| "expected a numeric project id".to_owned())
}

/// Text kept as written (paths, the log filter, a route's key).
pub(super) fn parse_text(s: &str) -> Result<String, String> {
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_take_the_same_names_from_flags_and_files() {
        #[derive(serde::Deserialize)]
        struct One<T> {
            v: T,
        }
        fn both<T: clap::ValueEnum + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(name: &str, want: T) {
            assert_eq!(parse_enum::<T>(name).unwrap(), want, "clap: {name}");
            let one: One<T> = toml::from_str(&format!("v = {name:?}")).unwrap();
            assert_eq!(one.v, want, "serde: {name}");
        }
        both("process", Durability::Process);
        both("power", Durability::Power);
        both("memory", Durability::Memory);
        both("drop-oldest", FullPolicy::DropOldest);
        both("reject-new", FullPolicy::RejectNew);
        both("oldest-first", DeliveryOrder::OldestFirst);
        both("newest-first", DeliveryOrder::NewestFirst);
        both("hold", RateLimitPolicy::Hold);
        both("drop", RateLimitPolicy::Drop);
        both("text", LogFormat::Text);
        both("json", LogFormat::Json);
        both("gzip", crate::codec::Encoding::Gzip);
        both("zstd", crate::codec::Encoding::Zstd);
        both("none", crate::codec::Encoding::Identity);
        assert!(parse_enum::<crate::codec::Encoding>("identity").is_err());
        assert!(parse_enum::<FullPolicy>("drop_oldest").is_err());
    }

    #[test]
    fn sizes_durations_and_booleans() {
        assert_eq!(parse_size("20MiB"), Ok(20 << 20));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert!(parse_size("0").is_err());
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_bool("yes"), Ok(true));
        assert!(parse_bool("maybe").is_err());
        assert!(parse_gzip_level("10").is_err());
        assert!(parse_tunnel_path("/api/x").is_err());
    }
}
