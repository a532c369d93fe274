//! Configuration: command-line flags, `SENTRY_SIDECAR_*` environment variables and a TOML file, with
//! the precedence flag > env > file > default.
//!
//! clap reads flags and the environment (so `--help` documents both); the TOML file is read key by
//! key so that an unknown key or a bad value is refused with a one-line message that names the key.
//! Every value, whatever its source, goes through the same parser, and [`Config`] is the validated
//! result the rest of the crate consumes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::codec::Encoding;
use crate::protocol::Dsn;
use crate::routing::{RouteRule, UpstreamUrl};

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A bad flag or environment variable (clap's one-line message).
    #[error("{0}")]
    Cli(String),
    /// A key the sidecar does not know.
    #[error("unknown configuration key `{0}`")]
    UnknownKey(String),
    /// A value that does not parse or is out of range.
    #[error("invalid value for `{key}`: {message}")]
    Invalid {
        /// The key (file key or flag name).
        key: String,
        /// What is wrong.
        message: String,
    },
}

fn invalid(key: &str, message: impl ToString) -> ConfigError {
    ConfigError::Invalid { key: key.to_owned(), message: message.to_string() }
}

/// How durable an acknowledged envelope is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Written to the OS (SQLite WAL, `synchronous=NORMAL`) before the answer: survives `kill -9`.
    Process,
    /// fsync'd (group commit) before the answer: survives power loss.
    Power,
    /// Acknowledged from RAM; spilled to disk under pressure and on shutdown.
    Memory,
}

/// What a full spool does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullPolicy {
    /// Drop the oldest waiting envelopes to make room (the freshest errors matter most).
    DropOldest,
    /// Refuse new envelopes with 503 and `Retry-After`.
    RejectNew,
}

/// Which envelopes are delivered first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOrder {
    /// Oldest first.
    OldestFirst,
    /// Newest first.
    NewestFirst,
}

/// What happens to an envelope whose categories are all rate limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitPolicy {
    /// Keep it in the spool until the limit ends (up to `max_hold`).
    Hold,
    /// Drop it, count it and report it in a client report.
    Drop,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Ingest listener (and admin endpoints unless `admin_listen` is set).
    pub listen: SocketAddr,
    /// Optional separate listener for /healthz, /readyz and /metrics.
    pub admin_listen: Option<SocketAddr>,
    /// Default upstream; `None` means capture mode for requests no route matches.
    pub upstream: Option<UpstreamUrl>,
    /// Per-project and per-key routes.
    pub routes: Vec<RouteRule>,
    /// Directory for the spool and the capture file.
    pub spool_dir: PathBuf,
    /// Extra PEM root certificates trusted for upstream TLS.
    pub ca_file: Option<PathBuf>,
    /// Path of the browser tunnel endpoint.
    pub tunnel_path: String,
    /// DSNs the tunnel may forward to; empty turns the tunnel off.
    pub tunnel_allow: Vec<Dsn>,
    /// Outbound compression.
    pub compression: Encoding,
    /// gzip level, 0-9.
    pub gzip_level: u32,
    /// Largest request body accepted on the wire.
    pub max_request_bytes: usize,
    /// Largest body after content decoding.
    pub max_decoded_bytes: usize,
    /// Inbound connection cap.
    pub max_connections: usize,
    /// Upstream TCP+TLS connect timeout.
    pub connect_timeout: Duration,
    /// Upstream whole-request timeout.
    pub request_timeout: Duration,
    /// Close idle pooled upstream connections after this long.
    pub pool_idle_timeout: Duration,
    /// Upstream requests in flight per upstream when it speaks HTTP/2 (one connection).
    pub h2_concurrency: usize,
    /// Upstream connections (= requests in flight) per upstream when it speaks HTTP/1.1.
    pub h1_connections: usize,
    /// Envelopes read from the spool per batch.
    pub batch_size: usize,
    /// First retry delay after a transient failure.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// How long shutdown waits for in-flight work.
    pub shutdown_timeout: Duration,
    /// Async runtime threads: 1 (the default) runs ingest and dispatch on one thread, more use a
    /// work-stealing pool. The spool's writer always has a thread of its own.
    pub worker_threads: usize,
    /// Durability of acknowledged envelopes.
    pub durability: Durability,
    /// Byte bound of the spool.
    pub spool_max_bytes: u64,
    /// Age bound of the spool.
    pub spool_max_age: Duration,
    /// What a full spool does.
    pub spool_full_policy: FullPolicy,
    /// Delivery order.
    pub delivery_order: DeliveryOrder,
    /// RAM tier size with `durability = memory`.
    pub memory_spool_bytes: u64,
    /// What rate-limited envelopes do.
    pub rate_limit_policy: RateLimitPolicy,
    /// Longest an envelope is held for a rate limit before it is dropped.
    pub max_hold: Duration,
    /// Answer SDKs 429 while their categories are rate limited upstream.
    pub answer_429: bool,
    /// Envelopes per second while draining a backlog after an outage (0 = unpaced).
    pub drain_rate: u32,
    /// How long an upstream may fail with only transient errors before its circuit opens.
    pub circuit_grace: Duration,
    /// Log format for `main`.
    pub log_format: LogFormat,
    /// Log filter for `main` (`info`, `sentry_sidecar=debug`, ...).
    pub log_level: String,
}

/// How `main` writes logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Config {
    /// A configuration with every default, listening on `listen`: the base for tests and embedding.
    pub fn with_defaults(listen: SocketAddr, spool_dir: PathBuf) -> Config {
        // The built-in defaults are constants checked by the unit tests below.
        let mut c = Config::resolve(Cli::default(), None).expect("built-in defaults are valid");
        c.listen = listen;
        c.spool_dir = spool_dir;
        c
    }

    /// Reads flags and environment from the process, then the config file, and validates.
    pub fn load() -> Result<Config, ConfigError> {
        let cli = match Cli::try_parse() {
            Ok(cli) => cli,
            Err(e)
                if matches!(e.kind(), clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion) =>
            {
                e.exit()
            }
            Err(e) => {
                // clap's message runs over several lines (usage, hints); keep the one that says
                // what is wrong.
                let text = e.render().to_string();
                let first = text.lines().next().unwrap_or("invalid arguments");
                return Err(ConfigError::Cli(first.trim_start_matches("error: ").to_owned()));
            }
        };
        let file = match &cli.config {
            Some(path) => Some(read_file(path)?),
            None => None,
        };
        Config::resolve(cli, file)
    }

    /// Parses a TOML document as a config file would be (for tests and `--config`).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Toml {
            path: PathBuf::from("<inline>"),
            message: e.message().to_owned(),
        })?;
        Config::resolve(Cli::default(), Some(table))
    }

    fn resolve(cli: Cli, file: Option<toml::Table>) -> Result<Config, ConfigError> {
        let mut file = FileValues::new(file.unwrap_or_default());
        let routes = file.take_routes()?;
        macro_rules! pick {
            ($field:ident, $parse:expr, $default:expr) => {{
                // The file's value is always consumed, so that a key overridden by a flag is not
                // reported as unknown.
                let from_file = file.take_string(stringify!($field))?;
                match cli.$field {
                    Some(v) => v,
                    None => match from_file {
                        Some(s) => $parse(&s).map_err(|e| invalid(stringify!($field), e))?,
                        None => $default,
                    },
                }
            }};
        }
        let listen = pick!(listen, parse_addr, SocketAddr::from(([127, 0, 0, 1], 3000)));
        let admin_listen_file = file.take_string("admin_listen")?;
        let admin_listen = match cli.admin_listen {
            Some(v) => Some(v),
            None => admin_listen_file.map(|s| parse_addr(&s).map_err(|e| invalid("admin_listen", e))).transpose()?,
        };
        let upstream_file = file.take_string("upstream")?;
        let upstream = match cli.upstream {
            Some(v) => Some(v),
            None => upstream_file.map(|s| UpstreamUrl::parse(&s).map_err(|e| invalid("upstream", e))).transpose()?,
        };
        let spool_dir =
            pick!(spool_dir, |s: &str| Ok::<_, String>(PathBuf::from(s)), PathBuf::from("./sentry-sidecar-data"));
        let ca_file_file = file.take_string("ca_file")?;
        let ca_file = cli.ca_file.or(ca_file_file.map(PathBuf::from));
        let tunnel_path = pick!(tunnel_path, parse_tunnel_path, "/tunnel".to_owned());
        let tunnel_allow_file = file.take_string_list("tunnel_allow")?;
        let tunnel_allow = match cli.tunnel_allow {
            Some(v) => v,
            None => match tunnel_allow_file {
                Some(list) => list
                    .iter()
                    .map(|s| parse_dsn(s).map_err(|e| invalid("tunnel_allow", e)))
                    .collect::<Result<_, _>>()?,
                None => Vec::new(),
            },
        };
        let compression = pick!(compression, parse_compression, Encoding::Gzip);
        let gzip_level = pick!(gzip_level, parse_gzip_level, 1);
        let max_request_bytes = pick!(max_request_bytes, parse_size, 20 * 1024 * 1024);
        let max_decoded_bytes = pick!(max_decoded_bytes, parse_size, 100 * 1024 * 1024);
        let max_connections = pick!(max_connections, parse_count, 1024);
        let connect_timeout = pick!(connect_timeout, parse_duration, Duration::from_secs(5));
        let request_timeout = pick!(request_timeout, parse_duration, Duration::from_secs(30));
        let pool_idle_timeout = pick!(pool_idle_timeout, parse_duration, Duration::from_secs(50));
        let h2_concurrency = pick!(h2_concurrency, parse_count, 64);
        let h1_connections = pick!(h1_connections, parse_count, 4);
        let batch_size = pick!(batch_size, parse_count, 256);
        let retry_initial = pick!(retry_initial, parse_duration, Duration::from_secs(1));
        let retry_max = pick!(retry_max, parse_duration, Duration::from_secs(300));
        let shutdown_timeout = pick!(shutdown_timeout, parse_duration, Duration::from_secs(10));
        let worker_threads = pick!(worker_threads, parse_count, 1);
        let durability = pick!(durability, parse_durability, Durability::Process);
        let spool_max_bytes = pick!(spool_max_bytes, parse_size, 1024 * 1024 * 1024) as u64;
        let spool_max_age = pick!(spool_max_age, parse_duration, Duration::from_secs(24 * 3600));
        let spool_full_policy = pick!(spool_full_policy, parse_full_policy, FullPolicy::DropOldest);
        let delivery_order = pick!(delivery_order, parse_order, DeliveryOrder::OldestFirst);
        let memory_spool_bytes = pick!(memory_spool_bytes, parse_size, 32 * 1024 * 1024) as u64;
        let rate_limit_policy = pick!(rate_limit_policy, parse_rate_limit_policy, RateLimitPolicy::Hold);
        let max_hold = pick!(max_hold, parse_duration, Duration::from_secs(3600));
        let answer_429 = pick!(answer_429, parse_bool, false);
        let drain_rate = pick!(drain_rate, parse_rate, 1000);
        let circuit_grace = pick!(circuit_grace, parse_duration, Duration::from_secs(5));
        let log_format = pick!(log_format, parse_log_format, LogFormat::Text);
        let log_level = pick!(log_level, |s: &str| Ok::<_, String>(s.to_owned()), "info".to_owned());
        file.finish()?;

        if retry_initial > retry_max {
            return Err(invalid("retry_initial", "must not be larger than retry_max"));
        }
        if max_request_bytes > max_decoded_bytes {
            return Err(invalid("max_request_bytes", "must not be larger than max_decoded_bytes"));
        }
        Ok(Config {
            listen,
            admin_listen,
            upstream,
            routes,
            spool_dir,
            ca_file,
            tunnel_path,
            tunnel_allow,
            compression,
            gzip_level,
            max_request_bytes,
            max_decoded_bytes,
            max_connections,
            connect_timeout,
            request_timeout,
            pool_idle_timeout,
            h2_concurrency,
            h1_connections,
            batch_size,
            retry_initial,
            retry_max,
            shutdown_timeout,
            worker_threads,
            durability,
            spool_max_bytes,
            spool_max_age,
            spool_full_policy,
            delivery_order,
            memory_spool_bytes,
            rate_limit_policy,
            max_hold,
            answer_429,
            drain_rate,
            circuit_grace,
            log_format,
            log_level,
        })
    }
}

fn read_file(path: &PathBuf) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
    text.parse().map_err(|e: toml::de::Error| {
        let line = e.span().map(|s| text[..s.start].lines().count().max(1));
        ConfigError::Toml {
            path: path.clone(),
            message: match line {
                Some(l) => format!("line {l}: {}", e.message()),
                None => e.message().to_owned(),
            },
        }
    })
}

/// The TOML table, consumed key by key; whatever is left at the end is an unknown key.
struct FileValues(toml::Table);

impl FileValues {
    fn new(t: toml::Table) -> Self {
        FileValues(t)
    }

    fn take_string(&mut self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.0.remove(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s)),
            Some(toml::Value::Integer(i)) => Ok(Some(i.to_string())),
            Some(toml::Value::Boolean(b)) => Ok(Some(b.to_string())),
            Some(toml::Value::Float(f)) => Ok(Some(f.to_string())),
            Some(other) => Err(invalid(key, format!("expected a string or number, found {}", other.type_str()))),
        }
    }

    fn take_string_list(&mut self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        match self.0.remove(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(vec![s])),
            Some(toml::Value::Array(a)) => a
                .into_iter()
                .map(|v| match v {
                    toml::Value::String(s) => Ok(s),
                    other => Err(invalid(key, format!("expected strings, found {}", other.type_str()))),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(other) => Err(invalid(key, format!("expected a list of strings, found {}", other.type_str()))),
        }
    }

    fn take_routes(&mut self) -> Result<Vec<RouteRule>, ConfigError> {
        let Some(v) = self.0.remove("routes") else {
            return Ok(Vec::new());
        };
        let toml::Value::Array(list) = v else {
            return Err(invalid("routes", "expected an array of tables ([[routes]])"));
        };
        list.into_iter()
            .enumerate()
            .map(|(i, v)| {
                let toml::Value::Table(t) = v else {
                    return Err(invalid("routes", "expected an array of tables ([[routes]])"));
                };
                let mut t = FileValues(t);
                let at = |k: &str| format!("routes[{i}].{k}");
                let project = t
                    .take_string("project")?
                    .map(|s| s.parse::<u64>().map_err(|_| invalid(&at("project"), "expected a numeric project id")))
                    .transpose()?;
                let key = t.take_string("key")?;
                let upstream = t
                    .take_string("upstream")?
                    .ok_or_else(|| invalid(&at("upstream"), "every route needs an upstream"))?;
                let upstream = UpstreamUrl::parse(&upstream).map_err(|e| invalid(&at("upstream"), e))?;
                if project.is_none() && key.is_none() {
                    return Err(invalid(&at("project"), "a route needs a project, a key or both"));
                }
                if let Some(k) = t.0.keys().next() {
                    return Err(ConfigError::UnknownKey(format!("routes[{i}].{k}")));
                }
                Ok(RouteRule { project, key, upstream })
            })
            .collect()
    }

    fn finish(self) -> Result<(), ConfigError> {
        match self.0.keys().next() {
            Some(k) => Err(ConfigError::UnknownKey(k.clone())),
            None => Ok(()),
        }
    }
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|_| format!("`{s}` is not an address like 127.0.0.1:3000"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| format!("`{s}` is not a duration like 30s or 5m ({e})"))
}

fn parse_size(s: &str) -> Result<usize, String> {
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

fn parse_count(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be greater than zero".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{s}` is not a positive whole number")),
    }
}

fn parse_gzip_level(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if n <= 9 => Ok(n),
        _ => Err(format!("`{s}` is not a gzip level from 0 to 9")),
    }
}

fn parse_compression(s: &str) -> Result<Encoding, String> {
    match s.trim() {
        "gzip" => Ok(Encoding::Gzip),
        "zstd" => Ok(Encoding::Zstd),
        "none" => Ok(Encoding::Identity),
        other => Err(format!("`{other}` is not one of gzip, zstd, none")),
    }
}

fn parse_durability(s: &str) -> Result<Durability, String> {
    match s.trim() {
        "process" => Ok(Durability::Process),
        "power" => Ok(Durability::Power),
        "memory" => Ok(Durability::Memory),
        other => Err(format!("`{other}` is not one of process, power, memory")),
    }
}

fn parse_full_policy(s: &str) -> Result<FullPolicy, String> {
    match s.trim() {
        "drop-oldest" => Ok(FullPolicy::DropOldest),
        "reject-new" => Ok(FullPolicy::RejectNew),
        other => Err(format!("`{other}` is not one of drop-oldest, reject-new")),
    }
}

fn parse_order(s: &str) -> Result<DeliveryOrder, String> {
    match s.trim() {
        "oldest-first" => Ok(DeliveryOrder::OldestFirst),
        "newest-first" => Ok(DeliveryOrder::NewestFirst),
        other => Err(format!("`{other}` is not one of oldest-first, newest-first")),
    }
}

fn parse_rate_limit_policy(s: &str) -> Result<RateLimitPolicy, String> {
    match s.trim() {
        "hold" => Ok(RateLimitPolicy::Hold),
        "drop" => Ok(RateLimitPolicy::Drop),
        other => Err(format!("`{other}` is not one of hold, drop")),
    }
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        other => Err(format!("`{other}` is not true or false")),
    }
}

fn parse_rate(s: &str) -> Result<u32, String> {
    s.trim().parse::<u32>().map_err(|_| format!("`{s}` is not a whole number of envelopes per second (0 = unpaced)"))
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    match s.trim() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => Err(format!("`{other}` is not one of text, json")),
    }
}

fn parse_tunnel_path(s: &str) -> Result<String, String> {
    let s = s.trim();
    if !s.starts_with('/') || s.contains('?') || s.contains("/api/") {
        return Err(format!("`{s}` must be an absolute path without a query, outside /api/"));
    }
    Ok(s.to_owned())
}

fn parse_dsn(s: &str) -> Result<Dsn, String> {
    Dsn::parse(s).map_err(|e| e.to_string())
}

fn parse_upstream(s: &str) -> Result<UpstreamUrl, String> {
    UpstreamUrl::parse(s)
}

/// sentry-sidecar: a local relay for Sentry SDKs. Point your DSN at it
/// (http://KEY@127.0.0.1:3000/42); it acknowledges from a durable spool and forwards to Sentry
/// over one pool of TLS connections. Every setting is also an environment variable
/// SENTRY_SIDECAR_<NAME> and a key <name> in the --config TOML file (precedence: flag > env >
/// file > default).
#[derive(Parser, Debug, Default)]
#[command(name = "sentry-sidecar", version, about, long_about = None, max_term_width = 100)]
struct Cli {
    /// TOML config file; keys are the flag names with `_` (e.g. spool_dir), plus [[routes]].
    #[arg(long, env = "SENTRY_SIDECAR_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on for SDK traffic [default: 127.0.0.1:3000].
    #[arg(long, env = "SENTRY_SIDECAR_LISTEN", value_name = "ADDR", value_parser = parse_addr)]
    listen: Option<SocketAddr>,
    /// Separate address for /healthz, /readyz and /metrics [default: served on --listen].
    #[arg(long, env = "SENTRY_SIDECAR_ADMIN_LISTEN", value_name = "ADDR", value_parser = parse_addr)]
    admin_listen: Option<SocketAddr>,
    /// Default upstream, e.g. https://o1.ingest.sentry.io [default: none = capture mode, which
    /// writes every envelope to <spool-dir>/capture.jsonl instead of sending it].
    #[arg(long, env = "SENTRY_SIDECAR_UPSTREAM", value_name = "URL", value_parser = parse_upstream)]
    upstream: Option<UpstreamUrl>,
    /// Directory for the spool and the capture file [default: ./sentry-sidecar-data].
    #[arg(long, env = "SENTRY_SIDECAR_SPOOL_DIR", value_name = "DIR")]
    spool_dir: Option<PathBuf>,
    /// PEM file of extra root certificates to trust for the upstream (private CAs).
    #[arg(long, env = "SENTRY_SIDECAR_CA_FILE", value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// Path of the browser tunnel endpoint [default: /tunnel].
    #[arg(long, env = "SENTRY_SIDECAR_TUNNEL_PATH", value_name = "PATH", value_parser = parse_tunnel_path)]
    tunnel_path: Option<String>,
    /// DSN the tunnel may forward to (repeat, or comma-separate in the env var) [default: none,
    /// the tunnel is off].
    #[arg(long, env = "SENTRY_SIDECAR_TUNNEL_ALLOW", value_name = "DSN", value_delimiter = ',', value_parser = parse_dsn)]
    tunnel_allow: Option<Vec<Dsn>>,
    /// Outbound compression: gzip, zstd or none [default: gzip].
    #[arg(long, env = "SENTRY_SIDECAR_COMPRESSION", value_name = "ALGO", value_parser = parse_compression)]
    compression: Option<Encoding>,
    /// gzip level 0-9 [default: 1].
    #[arg(long, env = "SENTRY_SIDECAR_GZIP_LEVEL", value_name = "N", value_parser = parse_gzip_level)]
    gzip_level: Option<u32>,
    /// Largest request body on the wire, e.g. 20MiB [default: 20MiB].
    #[arg(long, env = "SENTRY_SIDECAR_MAX_REQUEST_BYTES", value_name = "SIZE", value_parser = parse_size)]
    max_request_bytes: Option<usize>,
    /// Largest body after decoding gzip/deflate/br/zstd (larger is a 413) [default: 100MiB].
    #[arg(long, env = "SENTRY_SIDECAR_MAX_DECODED_BYTES", value_name = "SIZE", value_parser = parse_size)]
    max_decoded_bytes: Option<usize>,
    /// Most inbound connections open at once [default: 1024].
    #[arg(long, env = "SENTRY_SIDECAR_MAX_CONNECTIONS", value_name = "N", value_parser = parse_count)]
    max_connections: Option<usize>,
    /// Upstream connect (TCP + TLS) timeout [default: 5s].
    #[arg(long, env = "SENTRY_SIDECAR_CONNECT_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    connect_timeout: Option<Duration>,
    /// Upstream request timeout [default: 30s].
    #[arg(long, env = "SENTRY_SIDECAR_REQUEST_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    request_timeout: Option<Duration>,
    /// Close pooled upstream connections idle this long [default: 50s].
    #[arg(long, env = "SENTRY_SIDECAR_POOL_IDLE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pool_idle_timeout: Option<Duration>,
    /// Requests in flight per upstream over its one HTTP/2 connection [default: 64].
    #[arg(long, env = "SENTRY_SIDECAR_H2_CONCURRENCY", value_name = "N", value_parser = parse_count)]
    h2_concurrency: Option<usize>,
    /// Connections per upstream when it only speaks HTTP/1.1 [default: 4].
    #[arg(long, env = "SENTRY_SIDECAR_H1_CONNECTIONS", value_name = "N", value_parser = parse_count)]
    h1_connections: Option<usize>,
    /// Envelopes taken from the spool per batch [default: 256].
    #[arg(long, env = "SENTRY_SIDECAR_BATCH_SIZE", value_name = "N", value_parser = parse_count)]
    batch_size: Option<usize>,
    /// First retry delay after a transient upstream failure [default: 1s].
    #[arg(long, env = "SENTRY_SIDECAR_RETRY_INITIAL", value_name = "DURATION", value_parser = parse_duration)]
    retry_initial: Option<Duration>,
    /// Longest retry delay (backoff doubles up to this, with jitter) [default: 5m].
    #[arg(long, env = "SENTRY_SIDECAR_RETRY_MAX", value_name = "DURATION", value_parser = parse_duration)]
    retry_max: Option<Duration>,
    /// How long SIGTERM waits for in-flight requests [default: 10s].
    #[arg(long, env = "SENTRY_SIDECAR_SHUTDOWN_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    shutdown_timeout: Option<Duration>,
    /// Async runtime threads; 1 runs everything but the spool writer on one thread [default: 1].
    #[arg(long, env = "SENTRY_SIDECAR_WORKER_THREADS", value_name = "N", value_parser = parse_count)]
    worker_threads: Option<usize>,
    /// Durability of acknowledged envelopes: process (survives kill -9), power (fsync before the
    /// answer), memory (fastest; lost on a crash) [default: process].
    #[arg(long, env = "SENTRY_SIDECAR_DURABILITY", value_name = "LEVEL", value_parser = parse_durability)]
    durability: Option<Durability>,
    /// Most bytes the spool holds [default: 1GiB].
    #[arg(long, env = "SENTRY_SIDECAR_SPOOL_MAX_BYTES", value_name = "SIZE", value_parser = parse_size)]
    spool_max_bytes: Option<usize>,
    /// Envelopes older than this are dropped and reported [default: 24h].
    #[arg(long, env = "SENTRY_SIDECAR_SPOOL_MAX_AGE", value_name = "DURATION", value_parser = parse_duration)]
    spool_max_age: Option<Duration>,
    /// When the spool is full: drop-oldest, or reject-new (503 + Retry-After) [default: drop-oldest].
    #[arg(long, env = "SENTRY_SIDECAR_SPOOL_FULL_POLICY", value_name = "POLICY", value_parser = parse_full_policy)]
    spool_full_policy: Option<FullPolicy>,
    /// Delivery order: oldest-first or newest-first [default: oldest-first].
    #[arg(long, env = "SENTRY_SIDECAR_DELIVERY_ORDER", value_name = "ORDER", value_parser = parse_order)]
    delivery_order: Option<DeliveryOrder>,
    /// RAM held before spilling to disk with --durability memory [default: 32MiB].
    #[arg(long, env = "SENTRY_SIDECAR_MEMORY_SPOOL_BYTES", value_name = "SIZE", value_parser = parse_size)]
    memory_spool_bytes: Option<usize>,
    /// Envelopes whose categories are all rate limited: hold (wait in the spool) or drop
    /// [default: hold].
    #[arg(long, env = "SENTRY_SIDECAR_RATE_LIMIT_POLICY", value_name = "POLICY", value_parser = parse_rate_limit_policy)]
    rate_limit_policy: Option<RateLimitPolicy>,
    /// Longest an envelope is held for a rate limit before it is dropped [default: 1h].
    #[arg(long, env = "SENTRY_SIDECAR_MAX_HOLD", value_name = "DURATION", value_parser = parse_duration)]
    max_hold: Option<Duration>,
    /// Answer SDKs 429 (Retry-After, X-Sentry-Rate-Limits) while their data is rate limited
    /// upstream, so they stop producing [default: false].
    #[arg(long, env = "SENTRY_SIDECAR_ANSWER_429", value_name = "BOOL", value_parser = parse_bool, num_args = 0..=1, default_missing_value = "true")]
    answer_429: Option<bool>,
    /// Envelopes per second sent while draining a backlog after an outage; 0 = unpaced
    /// [default: 1000].
    #[arg(long, env = "SENTRY_SIDECAR_DRAIN_RATE", value_name = "N", value_parser = parse_rate)]
    drain_rate: Option<u32>,
    /// An upstream failing with only transient errors this long has its circuit opened: sending
    /// stops and single probes back off [default: 5s].
    #[arg(long, env = "SENTRY_SIDECAR_CIRCUIT_GRACE", value_name = "DURATION", value_parser = parse_duration)]
    circuit_grace: Option<Duration>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "SENTRY_SIDECAR_LOG_FORMAT", value_name = "FORMAT", value_parser = parse_log_format)]
    log_format: Option<LogFormat>,
    /// Log filter, e.g. info or sentry_sidecar=debug [default: info].
    #[arg(long, env = "SENTRY_SIDECAR_LOG_LEVEL", value_name = "FILTER")]
    log_level: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.listen, "127.0.0.1:3000".parse().unwrap());
        assert_eq!(c.spool_dir, PathBuf::from("./sentry-sidecar-data"));
        assert_eq!(c.upstream, None);
        assert_eq!(c.compression, Encoding::Gzip);
        assert_eq!(c.worker_threads, 1);
        assert!(c.tunnel_allow.is_empty());
    }

    #[test]
    fn file_values_and_routes() {
        let c = Config::from_toml(
            r#"
            listen = "127.0.0.1:4000"
            upstream = "https://o1.ingest.sentry.io/"
            request_timeout = "2s"
            max_request_bytes = "1MiB"
            batch_size = 10
            worker_threads = 2
            tunnel_allow = ["https://abc@o1.ingest.sentry.io/42"]
            [[routes]]
            project = 7
            upstream = "https://sentry.example.com/prefix/"
            [[routes]]
            key = "abc"
            upstream = "http://127.0.0.1:9000"
            "#,
        )
        .unwrap();
        assert_eq!(c.listen.port(), 4000);
        assert_eq!(c.upstream.as_ref().unwrap().as_str(), "https://o1.ingest.sentry.io");
        assert_eq!(c.request_timeout, Duration::from_secs(2));
        assert_eq!(c.max_request_bytes, 1024 * 1024);
        assert_eq!(c.batch_size, 10);
        assert_eq!(c.worker_threads, 2);
        assert_eq!(c.tunnel_allow[0].project_id, 42);
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.routes[0].upstream.as_str(), "https://sentry.example.com/prefix");
        assert_eq!(c.routes[1].key.as_deref(), Some("abc"));
    }

    #[test]
    fn errors_name_the_key() {
        let msg = |t: &str| Config::from_toml(t).unwrap_err().to_string();
        assert_eq!(msg("listn = \"x\""), "unknown configuration key `listn`");
        assert!(msg("listen = \"nope\"").starts_with("invalid value for `listen`"));
        assert!(msg("batch_size = 0").starts_with("invalid value for `batch_size`"));
        assert!(msg("upstream = \"ftp://x\"").starts_with("invalid value for `upstream`"));
        assert!(msg("request_timeout = \"soon\"").starts_with("invalid value for `request_timeout`"));
        assert!(msg("[[routes]]\nproject = 1\n").starts_with("invalid value for `routes[0].upstream`"));
        assert_eq!(
            msg("[[routes]]\nproject = 1\nupstream = \"https://x\"\nfoo = 1\n"),
            "unknown configuration key `routes[0].foo`"
        );
        assert!(msg("tunnel_allow = [\"nope\"]").starts_with("invalid value for `tunnel_allow`"));
        assert!(msg("listen = [1]").contains("listen"));
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let file: toml::Table = "batch_size = 5\nlisten = \"127.0.0.1:5000\"".parse().unwrap();
        let cli = Cli::try_parse_from(["sentry-sidecar", "--batch-size", "9"]).unwrap();
        let c = Config::resolve(cli, Some(file)).unwrap();
        assert_eq!(c.batch_size, 9, "flag wins over file");
        assert_eq!(c.listen.port(), 5000, "file wins over default");
    }

    #[test]
    fn cli_help_lists_every_setting() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        for flag in ["--listen", "--upstream", "--spool-dir", "--ca-file", "--config", "--tunnel-allow"] {
            assert!(help.contains(flag), "{flag} missing from --help");
        }
        assert!(help.contains("SENTRY_SIDECAR_UPSTREAM"));
    }
}
