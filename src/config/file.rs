//! The `--config` TOML file, read by serde into [`FileConfig`].
//!
//! Every field is an `Option` (absent = let the environment or the default decide) and unknown
//! keys are refused, at the top and in `[[routes]]`. Scalars accept a string, a number or a
//! boolean and go through the same parsers as flags, so `batch_size = 10` and
//! `batch_size = "10"` mean the same. serde's errors do not say where they happened, but toml's
//! carry the byte span of the key or value at fault; [`parse`] walks the document to that span
//! so that every message names its key (`routes[0].foo`), as a user would look for it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;
use toml::de::{DeTable, DeValue};

use super::values::*;
use super::ConfigError;
use crate::codec::Encoding;
use crate::protocol::Dsn;
use crate::routing::UpstreamUrl;

/// The file's settings: the flags' names with `_`, plus `[[routes]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct FileConfig {
    /// The top-level keys the file sets, for `check-config` to say where a value came from.
    #[serde(skip)]
    pub(super) keys: Vec<String>,
    #[serde(deserialize_with = "addr")]
    pub(super) listen: Option<SocketAddr>,
    #[serde(deserialize_with = "addr")]
    pub(super) admin_listen: Option<SocketAddr>,
    #[serde(deserialize_with = "upstream")]
    pub(super) upstream: Option<UpstreamUrl>,
    pub(super) routes: Option<Vec<RouteFile>>,
    #[serde(deserialize_with = "path")]
    pub(super) spool_dir: Option<PathBuf>,
    #[serde(deserialize_with = "path")]
    pub(super) ca_file: Option<PathBuf>,
    #[serde(deserialize_with = "tunnel_path")]
    pub(super) tunnel_path: Option<String>,
    #[serde(deserialize_with = "dsn_list")]
    pub(super) tunnel_allow: Option<Vec<Dsn>>,
    pub(super) compression: Option<Encoding>,
    #[serde(deserialize_with = "gzip_level")]
    pub(super) gzip_level: Option<u32>,
    #[serde(deserialize_with = "size")]
    pub(super) max_request_bytes: Option<usize>,
    #[serde(deserialize_with = "size")]
    pub(super) max_decoded_bytes: Option<usize>,
    #[serde(deserialize_with = "size")]
    pub(super) max_inflight_bytes: Option<usize>,
    #[serde(deserialize_with = "count")]
    pub(super) max_connections: Option<usize>,
    #[serde(deserialize_with = "duration")]
    pub(super) header_read_timeout: Option<Duration>,
    #[serde(deserialize_with = "duration")]
    pub(super) body_read_timeout: Option<Duration>,
    #[serde(deserialize_with = "size")]
    pub(super) body_min_rate: Option<usize>,
    #[serde(deserialize_with = "duration")]
    pub(super) keep_alive_timeout: Option<Duration>,
    #[serde(deserialize_with = "duration")]
    pub(super) connect_timeout: Option<Duration>,
    #[serde(deserialize_with = "duration")]
    pub(super) request_timeout: Option<Duration>,
    #[serde(deserialize_with = "duration")]
    pub(super) pool_idle_timeout: Option<Duration>,
    #[serde(deserialize_with = "count")]
    pub(super) h2_concurrency: Option<usize>,
    #[serde(deserialize_with = "count")]
    pub(super) h1_connections: Option<usize>,
    #[serde(deserialize_with = "count")]
    pub(super) batch_size: Option<usize>,
    #[serde(deserialize_with = "duration")]
    pub(super) retry_initial: Option<Duration>,
    #[serde(deserialize_with = "duration")]
    pub(super) retry_max: Option<Duration>,
    #[serde(deserialize_with = "duration")]
    pub(super) shutdown_timeout: Option<Duration>,
    #[serde(deserialize_with = "count")]
    pub(super) worker_threads: Option<usize>,
    pub(super) durability: Option<Durability>,
    #[serde(deserialize_with = "size")]
    pub(super) spool_max_bytes: Option<usize>,
    #[serde(deserialize_with = "duration")]
    pub(super) spool_max_age: Option<Duration>,
    pub(super) spool_full_policy: Option<FullPolicy>,
    pub(super) delivery_order: Option<DeliveryOrder>,
    #[serde(deserialize_with = "size")]
    pub(super) memory_spool_bytes: Option<usize>,
    pub(super) rate_limit_policy: Option<RateLimitPolicy>,
    #[serde(deserialize_with = "duration")]
    pub(super) max_hold: Option<Duration>,
    #[serde(deserialize_with = "boolean")]
    pub(super) answer_429: Option<bool>,
    #[serde(deserialize_with = "rate")]
    pub(super) drain_rate: Option<u32>,
    #[serde(deserialize_with = "duration")]
    pub(super) circuit_grace: Option<Duration>,
    #[serde(deserialize_with = "count")]
    pub(super) circuit_failures: Option<usize>,
    #[serde(deserialize_with = "duration")]
    pub(super) probe_max_interval: Option<Duration>,
    pub(super) log_format: Option<LogFormat>,
    #[serde(deserialize_with = "text")]
    pub(super) log_level: Option<String>,
}

/// One `[[routes]]` table; whether it is complete is checked by the resolver, which knows its
/// index.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RouteFile {
    #[serde(deserialize_with = "project")]
    pub(super) project: Option<u64>,
    #[serde(deserialize_with = "text")]
    pub(super) key: Option<String>,
    #[serde(deserialize_with = "upstream")]
    pub(super) upstream: Option<UpstreamUrl>,
}

/// Reads and parses the file at `path`.
pub(super) fn read(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    parse(&text, path)
}

/// Parses a config document; `path` is only for messages.
pub(super) fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
    let mut file: FileConfig = toml::from_str(text).map_err(|e| {
        let at = e.span().map(|s| s.start);
        let key = at.and_then(|at| DeTable::parse(text).ok().and_then(|doc| place(doc.get_ref(), at, "")));
        match key {
            Some(key) if e.message().starts_with("unknown field") => ConfigError::UnknownKey(key),
            Some(key) => ConfigError::Invalid { key, message: e.message().to_owned() },
            None => ConfigError::Toml {
                path: path.to_owned(),
                message: match at {
                    Some(at) => {
                        format!("line {}: {}", text.get(..at).unwrap_or(text).lines().count().max(1), e.message())
                    }
                    None => e.message().to_owned(),
                },
            },
        }
    })?;
    // The document parsed above, so this cannot fail; an empty list would only lose the sources.
    file.keys = DeTable::parse(text)
        .map(|doc| doc.get_ref().iter().map(|(k, _)| k.get_ref().to_string()).collect())
        .unwrap_or_default();
    Ok(file)
}

/// The key whose name or value is at byte `at`, as a user would name it: `listen`,
/// `routes[0].foo`. A scalar inside an array is named by the array's key.
fn place(table: &DeTable<'_>, at: usize, prefix: &str) -> Option<String> {
    for (k, v) in table.iter() {
        let name = if prefix.is_empty() { k.get_ref().to_string() } else { format!("{prefix}.{}", k.get_ref()) };
        if k.span().contains(&at) {
            return Some(name);
        }
        // Children first: the span of an array of tables need not cover its later tables.
        let inner = match v.get_ref() {
            DeValue::Table(t) => place(t, at, &name),
            DeValue::Array(items) => items.iter().enumerate().find_map(|(i, item)| match item.get_ref() {
                DeValue::Table(t) => {
                    let name = format!("{name}[{i}]");
                    place(t, at, &name).or_else(|| item.span().contains(&at).then_some(name))
                }
                _ => None,
            }),
            _ => None,
        };
        if inner.is_some() {
            return inner;
        }
        if v.span().contains(&at) {
            return Some(name);
        }
    }
    None
}

/// A scalar as text: what the user wrote, whether a string, a number or a boolean.
struct Scalar;

impl de::Visitor<'_> for Scalar {
    type Value = String;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string, number or boolean")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }
}

fn scalar<'de, D: Deserializer<'de>, T>(d: D, parse: fn(&str) -> Result<T, String>) -> Result<Option<T>, D::Error> {
    let text = d.deserialize_any(Scalar)?;
    parse(&text).map(Some).map_err(de::Error::custom)
}

/// One `deserialize_with` function per kind of value, each the matching flag parser.
macro_rules! scalars {
    ($($name:ident: $t:ty = $parse:expr;)*) => {$(
        fn $name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<$t>, D::Error> {
            scalar(d, $parse)
        }
    )*};
}

scalars! {
    addr: SocketAddr = parse_addr;
    upstream: UpstreamUrl = parse_upstream;
    path: PathBuf = |s| Ok(PathBuf::from(s));
    text: String = parse_text;
    tunnel_path: String = parse_tunnel_path;
    gzip_level: u32 = parse_gzip_level;
    size: usize = parse_size;
    count: usize = parse_count;
    duration: Duration = parse_duration;
    boolean: bool = parse_bool;
    rate: u32 = parse_rate;
    project: u64 = parse_project;
}

/// `tunnel_allow`: one DSN or a list of them.
fn dsn_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Dsn>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged, expecting = "a DSN or a list of DSNs")]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let list = match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    };
    list.iter().map(|s| parse_dsn(s).map_err(de::Error::custom)).collect::<Result<_, _>>().map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse(text, Path::new("c.toml")).unwrap_err().to_string()
    }

    #[test]
    fn scalars_take_strings_numbers_and_booleans() {
        let f = parse(
            "batch_size = \"10\"\nmax_connections = 7\nanswer_429 = \"yes\"\nrequest_timeout = 30\n\
             max_request_bytes = \"1MiB\"\ncompression = \"none\"\ntunnel_allow = \"https://k@o1.ingest.sentry.io/4\"\n",
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!(f.batch_size, Some(10));
        assert_eq!(f.max_connections, Some(7));
        assert_eq!(f.answer_429, Some(true));
        assert_eq!(f.request_timeout, Some(Duration::from_secs(30)));
        assert_eq!(f.max_request_bytes, Some(1 << 20));
        assert_eq!(f.compression, Some(Encoding::Identity));
        assert_eq!(f.tunnel_allow.map(|v| v.len()), Some(1));
        assert_eq!(f.listen, None);
    }

    #[test]
    fn errors_name_the_key_and_its_place() {
        assert_eq!(
            err("routes = [{ project = 1, upstreem = \"https://x\" }]"),
            "unknown configuration key `routes[0].upstreem`"
        );
        assert_eq!(
            err("[[routes]]\nkey = \"a\"\n[[routes]]\nproject = \"x\"\n"),
            "invalid value for `routes[1].project`: expected a numeric project id"
        );
        assert!(err("durability = \"fast\"").starts_with("invalid value for `durability`: unknown variant `fast`"));
        assert!(err("compression = \"identity\"").starts_with("invalid value for `compression`"));
        assert!(err("tunnel_allow = [\"https://k@o1.ingest.sentry.io/4\", 5]")
            .starts_with("invalid value for `tunnel_allow`"));
        assert_eq!(err("answer_429 = \"maybe\""), "invalid value for `answer_429`: `maybe` is not true or false");
        assert_eq!(err("routes = 3").split(':').next(), Some("invalid value for `routes`"));
        assert_eq!(
            err("a = 1\nlisten = \n"),
            "config file c.toml is not valid TOML: line 2: string values must be quoted, expected literal string"
        );
    }
}
