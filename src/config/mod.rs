//! Configuration: command-line flags, `SENTRY_SIDECAR_*` environment variables and a TOML file, with
//! the precedence flag > env > file > default.
//!
//! Each source has its own file and derives what it can: `cli` is clap's (flags and environment,
//! so `--help` documents both), `file` is serde's (unknown keys refused, every error naming its
//! key), `defaults` is the one table of built-in values that both `--help` and the resolver read,
//! and `values` holds the enums and the parsers all of them share. This file merges the sources
//! and validates the result into [`Config`], what the rest of the crate consumes.

mod cli;
mod defaults;
mod file;
mod values;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use cli::Tool;
pub use values::{DeliveryOrder, Durability, FullPolicy, LogFormat, RateLimitPolicy};

use crate::codec::Encoding;
use crate::protocol::Dsn;
use crate::routing::{RouteRule, UpstreamUrl};
use cli::{Cli, Given};
use file::FileConfig;
use values::*;

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
    /// A bad flag or environment variable, in one line naming the flag or the variable.
    #[error("{0}")]
    Cli(String),
    /// A key the sidecar does not know.
    #[error("unknown configuration key `{0}`")]
    UnknownKey(String),
    /// A value that does not parse or is out of range.
    #[error("invalid value for `{key}`: {message}")]
    Invalid {
        /// The key as written in the file (`batch_size`, `routes[0].upstream`).
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// The smallest memory budget for request bodies: below it, ordinary envelopes would be refused.
const MIN_INFLIGHT_BYTES: usize = 1024 * 1024;

fn invalid(key: &str, message: impl ToString) -> ConfigError {
    ConfigError::Invalid { key: key.to_owned(), message: message.to_string() }
}

/// The built-in value of `key`, read from the defaults table with the setting's own parser.
fn built_in<T>(key: &str, parse: fn(&str) -> Result<T, String>) -> Result<T, ConfigError> {
    let text = defaults::of(key).ok_or_else(|| invalid(key, "has no built-in default"))?;
    parse(text).map_err(|e| invalid(key, format!("built-in default: {e}")))
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
    /// Request body bytes held in memory across all connections, wire and decoded.
    pub max_inflight_bytes: usize,
    /// Inbound connection cap.
    pub max_connections: usize,
    /// A request's headers must arrive within this.
    pub header_read_timeout: Duration,
    /// A request body with no progress for this long is answered 408.
    pub body_read_timeout: Duration,
    /// Slowest body upload accepted (bytes per second, checked after `body_read_timeout`).
    pub body_min_rate: usize,
    /// An idle keep-alive connection is closed after this long.
    pub keep_alive_timeout: Duration,
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
    /// Consecutive transient failures that open an upstream's circuit.
    pub circuit_failures: usize,
    /// Longest wait between two probes of an upstream whose circuit is open.
    pub probe_max_interval: Duration,
    /// Log format for `main`.
    pub log_format: LogFormat,
    /// Log filter for `main` (`info`, `sentry_sidecar=debug`, ...).
    pub log_level: String,
}

impl Config {
    /// A configuration with every default, listening on `listen`: the base for tests and embedding.
    pub fn with_defaults(listen: SocketAddr, spool_dir: PathBuf) -> Config {
        // The defaults table is checked by the unit tests below.
        let mut c = Config::resolve(Cli::default(), FileConfig::default()).expect("built-in defaults are valid");
        c.listen = listen;
        c.spool_dir = spool_dir;
        c
    }

    /// Reads flags and environment from the process, then the config file, and validates.
    pub fn load() -> Result<Config, ConfigError> {
        Invocation::from_process().map(|i| i.config)
    }

    /// Every setting as a user would write it (`5m`, `20MiB`, `drop-oldest`), in `--help`'s
    /// order, with DSN keys masked: what `check-config` prints. A setting whose absence means
    /// something says what it means.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        let or = |v: Option<String>, none: &str| v.unwrap_or_else(|| format!("(none: {none})"));
        let mut out = vec![
            ("listen", self.listen.to_string()),
            ("admin_listen", or(self.admin_listen.map(|a| a.to_string()), "served on listen")),
            ("upstream", or(self.upstream.as_ref().map(|u| u.as_str().to_owned()), "capture mode")),
            ("spool_dir", self.spool_dir.display().to_string()),
            ("ca_file", or(self.ca_file.as_ref().map(|p| p.display().to_string()), "the built-in web PKI roots")),
            ("tunnel_path", self.tunnel_path.clone()),
            (
                "tunnel_allow",
                or(
                    (!self.tunnel_allow.is_empty())
                        .then(|| self.tunnel_allow.iter().map(masked_dsn).collect::<Vec<_>>().join(", ")),
                    "the tunnel is off",
                ),
            ),
            ("compression", enum_name(&self.compression)),
            ("gzip_level", self.gzip_level.to_string()),
            ("max_request_bytes", size(self.max_request_bytes as u64)),
            ("max_decoded_bytes", size(self.max_decoded_bytes as u64)),
            ("max_inflight_bytes", size(self.max_inflight_bytes as u64)),
            ("max_connections", self.max_connections.to_string()),
            ("header_read_timeout", duration(self.header_read_timeout)),
            ("body_read_timeout", duration(self.body_read_timeout)),
            ("body_min_rate", size(self.body_min_rate as u64)),
            ("keep_alive_timeout", duration(self.keep_alive_timeout)),
            ("connect_timeout", duration(self.connect_timeout)),
            ("request_timeout", duration(self.request_timeout)),
            ("pool_idle_timeout", duration(self.pool_idle_timeout)),
            ("h2_concurrency", self.h2_concurrency.to_string()),
            ("h1_connections", self.h1_connections.to_string()),
            ("batch_size", self.batch_size.to_string()),
            ("retry_initial", duration(self.retry_initial)),
            ("retry_max", duration(self.retry_max)),
            ("shutdown_timeout", duration(self.shutdown_timeout)),
            ("worker_threads", self.worker_threads.to_string()),
            ("durability", enum_name(&self.durability)),
            ("spool_max_bytes", size(self.spool_max_bytes)),
            ("spool_max_age", duration(self.spool_max_age)),
            ("spool_full_policy", enum_name(&self.spool_full_policy)),
            ("delivery_order", enum_name(&self.delivery_order)),
            ("memory_spool_bytes", size(self.memory_spool_bytes)),
            ("rate_limit_policy", enum_name(&self.rate_limit_policy)),
            ("max_hold", duration(self.max_hold)),
            ("answer_429", self.answer_429.to_string()),
            ("drain_rate", self.drain_rate.to_string()),
            ("circuit_grace", duration(self.circuit_grace)),
            ("circuit_failures", self.circuit_failures.to_string()),
            ("probe_max_interval", duration(self.probe_max_interval)),
            ("log_format", enum_name(&self.log_format)),
            ("log_level", self.log_level.clone()),
        ];
        let routes = self.routes.iter().map(|r| {
            let mut on = Vec::new();
            if let Some(p) = r.project {
                on.push(format!("project {p}"));
            }
            if let Some(k) = &r.key {
                on.push(format!("key {}", mask_key(k)));
            }
            format!("{} -> {}", on.join(" and "), r.upstream.as_str())
        });
        out.push(("routes", or((!self.routes.is_empty()).then(|| routes.collect::<Vec<_>>().join("; ")), "none")));
        out
    }

    /// Parses a TOML document as a config file would be (for tests and `--config`).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Config::resolve(Cli::default(), file::parse(text, Path::new("<inline>"))?)
    }

    fn resolve(cli: Cli, file: FileConfig) -> Result<Config, ConfigError> {
        macro_rules! pick {
            ($key:ident, $parse:expr) => {
                match cli.$key.or(file.$key) {
                    Some(v) => v,
                    None => built_in(stringify!($key), $parse)?,
                }
            };
        }
        let routes = file
            .routes
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let upstream = r
                    .upstream
                    .ok_or_else(|| invalid(&format!("routes[{i}].upstream"), "every route needs an upstream"))?;
                if r.project.is_none() && r.key.is_none() {
                    return Err(invalid(&format!("routes[{i}].project"), "a route needs a project, a key or both"));
                }
                Ok(RouteRule { project: r.project, key: r.key, upstream })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let max_request_bytes = pick!(max_request_bytes, parse_size);
        let max_decoded_bytes = pick!(max_decoded_bytes, parse_size);
        let retry_initial = pick!(retry_initial, parse_duration);
        let retry_max = pick!(retry_max, parse_duration);
        if retry_initial > retry_max {
            return Err(invalid("retry_initial", "must not be larger than retry_max"));
        }
        let header_read_timeout = pick!(header_read_timeout, parse_duration);
        let body_read_timeout = pick!(body_read_timeout, parse_duration);
        let keep_alive_timeout = pick!(keep_alive_timeout, parse_duration);
        for (key, d) in [
            ("header_read_timeout", header_read_timeout),
            ("body_read_timeout", body_read_timeout),
            ("keep_alive_timeout", keep_alive_timeout),
        ] {
            if d.is_zero() {
                return Err(invalid(key, "must be greater than zero"));
            }
        }
        let probe_max_interval = pick!(probe_max_interval, parse_duration);
        if probe_max_interval > Duration::from_secs(10) || probe_max_interval.is_zero() {
            // Longer, and a recovered upstream waits that long for its backlog to move.
            return Err(invalid("probe_max_interval", "must be between 1ms and 10s"));
        }
        let max_inflight_bytes = pick!(max_inflight_bytes, parse_size);
        if max_inflight_bytes < MIN_INFLIGHT_BYTES {
            return Err(invalid("max_inflight_bytes", "must be at least 1MiB"));
        }
        if max_request_bytes > max_decoded_bytes {
            return Err(invalid("max_request_bytes", "must not be larger than max_decoded_bytes"));
        }
        Ok(Config {
            listen: pick!(listen, parse_addr),
            admin_listen: cli.admin_listen.or(file.admin_listen),
            upstream: cli.upstream.or(file.upstream),
            routes,
            spool_dir: pick!(spool_dir, |s| Ok(PathBuf::from(s))),
            ca_file: cli.ca_file.or(file.ca_file),
            tunnel_path: pick!(tunnel_path, parse_tunnel_path),
            tunnel_allow: cli.tunnel_allow.or(file.tunnel_allow).unwrap_or_default(),
            compression: pick!(compression, parse_enum),
            gzip_level: pick!(gzip_level, parse_gzip_level),
            max_request_bytes,
            max_decoded_bytes,
            max_inflight_bytes,
            max_connections: pick!(max_connections, parse_count),
            header_read_timeout,
            body_read_timeout,
            body_min_rate: pick!(body_min_rate, parse_size),
            keep_alive_timeout,
            connect_timeout: pick!(connect_timeout, parse_duration),
            request_timeout: pick!(request_timeout, parse_duration),
            pool_idle_timeout: pick!(pool_idle_timeout, parse_duration),
            h2_concurrency: pick!(h2_concurrency, parse_count),
            h1_connections: pick!(h1_connections, parse_count),
            batch_size: pick!(batch_size, parse_count),
            retry_initial,
            retry_max,
            shutdown_timeout: pick!(shutdown_timeout, parse_duration),
            worker_threads: pick!(worker_threads, parse_count),
            durability: pick!(durability, parse_enum),
            spool_max_bytes: pick!(spool_max_bytes, parse_size) as u64,
            spool_max_age: pick!(spool_max_age, parse_duration),
            spool_full_policy: pick!(spool_full_policy, parse_enum),
            delivery_order: pick!(delivery_order, parse_enum),
            memory_spool_bytes: pick!(memory_spool_bytes, parse_size) as u64,
            rate_limit_policy: pick!(rate_limit_policy, parse_enum),
            max_hold: pick!(max_hold, parse_duration),
            answer_429: pick!(answer_429, parse_bool),
            drain_rate: pick!(drain_rate, parse_rate),
            circuit_grace: pick!(circuit_grace, parse_duration),
            circuit_failures: pick!(circuit_failures, parse_count),
            probe_max_interval,
            log_format: pick!(log_format, parse_enum),
            log_level: pick!(log_level, parse_text),
        })
    }
}

/// Where a setting's effective value came from, as `check-config` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag.
    Flag,
    /// A `SENTRY_SIDECAR_*` environment variable.
    Env,
    /// The `--config` file.
    File,
    /// The built-in default.
    Default,
    /// Not set anywhere, and no default: its absence has a meaning of its own.
    Unset,
}

impl Source {
    /// The word `check-config` prints.
    pub fn name(self) -> &'static str {
        match self {
            Source::Flag => "flag",
            Source::Env => "env",
            Source::File => "file",
            Source::Default => "default",
            Source::Unset => "unset",
        }
    }
}

/// What the command line asks for (the sidecar, or one of its helpers) with the configuration
/// either would use, and where each setting came from.
#[derive(Debug)]
pub struct Invocation {
    /// The helper to run; `None` runs the sidecar.
    pub tool: Option<Tool>,
    /// The validated configuration.
    pub config: Config,
    /// The `--config` file, if one was read.
    pub config_file: Option<PathBuf>,
    sources: Vec<(String, Source)>,
}

impl Invocation {
    /// Reads the process's arguments and environment, then the config file, and validates.
    pub fn from_process() -> Result<Invocation, ConfigError> {
        Invocation::parse(&std::env::args_os().collect::<Vec<_>>())
    }

    /// [`Invocation::from_process`] for the given arguments (the first is the program's name).
    pub fn parse(args: &[OsString]) -> Result<Invocation, ConfigError> {
        let (mut cli, given) = cli::parse_with_sources(args)?;
        let file = match &cli.config {
            Some(path) => file::read(path)?,
            None => FileConfig::default(),
        };
        let mut sources: Vec<(String, Source)> = given
            .into_iter()
            .map(|(key, g)| (key, if g == Given::Flag { Source::Flag } else { Source::Env }))
            .collect();
        for key in &file.keys {
            if !sources.iter().any(|(k, _)| k == key) {
                sources.push((key.clone(), Source::File));
            }
        }
        let tool = cli.tool.take();
        let config_file = cli.config.clone();
        let config = Config::resolve(cli, file)?;
        Ok(Invocation { tool, config, config_file, sources })
    }

    /// Where the effective value of `key` (a TOML key) came from.
    pub fn source(&self, key: &str) -> Source {
        match self.sources.iter().find(|(k, _)| k == key) {
            Some((_, s)) => *s,
            None if defaults::of(key).is_some() => Source::Default,
            None => Source::Unset,
        }
    }
}

/// An enum setting's name as it is written (`drop-oldest`).
fn enum_name<T: clap::ValueEnum>(v: &T) -> String {
    v.to_possible_value().map(|p| p.get_name().to_owned()).unwrap_or_default()
}

/// A size in the largest binary unit that divides it (`20MiB`), as the defaults are written.
fn size(bytes: u64) -> String {
    for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// A duration in the largest unit that divides it (`5m`, `24h`), as the defaults are written.
fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, per) in [("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if ms >= per && ms % per == 0 {
            return format!("{}{unit}", ms / per);
        }
    }
    format!("{ms}ms")
}

/// A DSN key with all but its first four characters hidden: enough to tell two keys apart.
fn mask_key(key: &str) -> String {
    let shown: String = key.chars().take(4).collect();
    format!("{shown}****")
}

/// A DSN with its key masked.
fn masked_dsn(dsn: &Dsn) -> String {
    let prefix = if dsn.prefix.is_empty() { String::new() } else { format!("/{}", dsn.prefix) };
    format!("{}://{}@{}{prefix}/{}", dsn.scheme, mask_key(&dsn.public_key), dsn.authority, dsn.project_id)
}

#[cfg(test)]
mod tests;
