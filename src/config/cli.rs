//! The command line and the `SENTRY_SIDECAR_*` environment, read by clap.
//!
//! Every field is an `Option` so that the resolver can tell "not given" from "default" (the
//! precedence is flag > env > file > default, and the file is read after clap). The defaults are
//! therefore not clap's: [`command`] writes each one into its flag's help from the one table in
//! `defaults`. clap reports a bad environment value as if it were the flag; [`parse`] names the
//! variable instead, since that is what the user has to fix.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};

use super::values::*;
use super::{defaults, ConfigError};
use crate::codec::Encoding;
use crate::protocol::Dsn;
use crate::routing::UpstreamUrl;

/// sentry-sidecar: a local relay for Sentry SDKs. Point your DSN at it
/// (http://KEY@127.0.0.1:3000/42); it acknowledges from a durable spool and forwards to Sentry
/// over one pool of TLS connections. Every setting is also an environment variable
/// SENTRY_SIDECAR_<NAME> and a key <name> in the --config TOML file (precedence: flag > env >
/// file > default).
#[derive(Parser, Debug, Default)]
#[command(name = "sentry-sidecar", version, about, long_about = None, max_term_width = 100)]
#[command(disable_help_subcommand = true)]
pub(super) struct Cli {
    /// A helper to run instead of the sidecar (none = run the sidecar).
    #[command(subcommand)]
    pub(super) tool: Option<Tool>,
    /// TOML config file; keys are the flag names with `_` (e.g. spool_dir), plus [[routes]].
    #[arg(long, env = "SENTRY_SIDECAR_CONFIG", value_name = "FILE")]
    pub(super) config: Option<PathBuf>,
    /// Address to listen on for SDK traffic.
    #[arg(long, env = "SENTRY_SIDECAR_LISTEN", value_name = "ADDR", value_parser = parse_addr)]
    pub(super) listen: Option<SocketAddr>,
    /// Separate address for /healthz, /readyz and /metrics [default: served on --listen].
    #[arg(long, env = "SENTRY_SIDECAR_ADMIN_LISTEN", value_name = "ADDR", value_parser = parse_addr)]
    pub(super) admin_listen: Option<SocketAddr>,
    /// Default upstream, e.g. https://o1.ingest.sentry.io [default: none = capture mode, which
    /// writes every envelope to <spool-dir>/capture.jsonl instead of sending it].
    #[arg(long, env = "SENTRY_SIDECAR_UPSTREAM", value_name = "URL", value_parser = parse_upstream)]
    pub(super) upstream: Option<UpstreamUrl>,
    /// Directory for the spool and the capture file.
    #[arg(long, env = "SENTRY_SIDECAR_SPOOL_DIR", value_name = "DIR")]
    pub(super) spool_dir: Option<PathBuf>,
    /// PEM file of extra root certificates to trust for the upstream (private CAs).
    #[arg(long, env = "SENTRY_SIDECAR_CA_FILE", value_name = "PEM")]
    pub(super) ca_file: Option<PathBuf>,
    /// Path of the browser tunnel endpoint.
    #[arg(long, env = "SENTRY_SIDECAR_TUNNEL_PATH", value_name = "PATH", value_parser = parse_tunnel_path)]
    pub(super) tunnel_path: Option<String>,
    /// DSN the tunnel may forward to (repeat, or comma-separate in the env var) [default: none,
    /// the tunnel is off].
    #[arg(long, env = "SENTRY_SIDECAR_TUNNEL_ALLOW", value_name = "DSN", value_delimiter = ',', value_parser = parse_dsn)]
    pub(super) tunnel_allow: Option<Vec<Dsn>>,
    /// Outbound compression: gzip, zstd or none.
    #[arg(long, env = "SENTRY_SIDECAR_COMPRESSION", value_name = "ALGO", hide_possible_values = true)]
    pub(super) compression: Option<Encoding>,
    /// gzip level 0-9.
    #[arg(long, env = "SENTRY_SIDECAR_GZIP_LEVEL", value_name = "N", value_parser = parse_gzip_level)]
    pub(super) gzip_level: Option<u32>,
    /// Largest request body on the wire, e.g. 20MiB.
    #[arg(long, env = "SENTRY_SIDECAR_MAX_REQUEST_BYTES", value_name = "SIZE", value_parser = parse_size)]
    pub(super) max_request_bytes: Option<usize>,
    /// Largest body after decoding gzip/deflate/br/zstd (larger is a 413).
    #[arg(long, env = "SENTRY_SIDECAR_MAX_DECODED_BYTES", value_name = "SIZE", value_parser = parse_size)]
    pub(super) max_decoded_bytes: Option<usize>,
    /// Request body bytes held in memory across all connections (wire and decoded); past it,
    /// reading waits and then answers 503.
    #[arg(long, env = "SENTRY_SIDECAR_MAX_INFLIGHT_BYTES", value_name = "SIZE", value_parser = parse_size)]
    pub(super) max_inflight_bytes: Option<usize>,
    /// Most inbound connections open at once.
    #[arg(long, env = "SENTRY_SIDECAR_MAX_CONNECTIONS", value_name = "N", value_parser = parse_count)]
    pub(super) max_connections: Option<usize>,
    /// A request's headers must arrive within this; a connection that stalls is closed.
    #[arg(long, env = "SENTRY_SIDECAR_HEADER_READ_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub(super) header_read_timeout: Option<Duration>,
    /// A request body that makes no progress for this long is answered 408 and its connection closed.
    #[arg(long, env = "SENTRY_SIDECAR_BODY_READ_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub(super) body_read_timeout: Option<Duration>,
    /// Slowest body upload accepted, in bytes per second, once it has run for --body-read-timeout
    /// (slower is a 408).
    #[arg(long, env = "SENTRY_SIDECAR_BODY_MIN_RATE", value_name = "SIZE", value_parser = parse_size)]
    pub(super) body_min_rate: Option<usize>,
    /// A keep-alive connection idle this long is closed.
    #[arg(long, env = "SENTRY_SIDECAR_KEEP_ALIVE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub(super) keep_alive_timeout: Option<Duration>,
    /// Upstream connect (TCP + TLS) timeout.
    #[arg(long, env = "SENTRY_SIDECAR_CONNECT_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub(super) connect_timeout: Option<Duration>,
    /// Upstream request timeout.
    #[arg(long, env = "SENTRY_SIDECAR_REQUEST_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub(super) request_timeout: Option<Duration>,
    /// Close pooled upstream connections idle this long.
    #[arg(long, env = "SENTRY_SIDECAR_POOL_IDLE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub(super) pool_idle_timeout: Option<Duration>,
    /// Requests in flight per upstream over its one HTTP/2 connection.
    #[arg(long, env = "SENTRY_SIDECAR_H2_CONCURRENCY", value_name = "N", value_parser = parse_count)]
    pub(super) h2_concurrency: Option<usize>,
    /// Connections per upstream when it only speaks HTTP/1.1.
    #[arg(long, env = "SENTRY_SIDECAR_H1_CONNECTIONS", value_name = "N", value_parser = parse_count)]
    pub(super) h1_connections: Option<usize>,
    /// Envelopes taken from the spool per batch.
    #[arg(long, env = "SENTRY_SIDECAR_BATCH_SIZE", value_name = "N", value_parser = parse_count)]
    pub(super) batch_size: Option<usize>,
    /// First retry delay after a transient upstream failure.
    #[arg(long, env = "SENTRY_SIDECAR_RETRY_INITIAL", value_name = "DURATION", value_parser = parse_duration)]
    pub(super) retry_initial: Option<Duration>,
    /// Longest retry delay (backoff doubles up to this, with jitter).
    #[arg(long, env = "SENTRY_SIDECAR_RETRY_MAX", value_name = "DURATION", value_parser = parse_duration)]
    pub(super) retry_max: Option<Duration>,
    /// How long SIGTERM waits for in-flight requests.
    #[arg(long, env = "SENTRY_SIDECAR_SHUTDOWN_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub(super) shutdown_timeout: Option<Duration>,
    /// Async runtime threads; 1 runs everything but the spool writer on one thread.
    #[arg(long, env = "SENTRY_SIDECAR_WORKER_THREADS", value_name = "N", value_parser = parse_count)]
    pub(super) worker_threads: Option<usize>,
    /// Durability of acknowledged envelopes: process (survives kill -9), power (fsync before the
    /// answer), memory (fastest; lost on a crash).
    #[arg(long, env = "SENTRY_SIDECAR_DURABILITY", value_name = "LEVEL", hide_possible_values = true)]
    pub(super) durability: Option<Durability>,
    /// Most bytes the spool holds.
    #[arg(long, env = "SENTRY_SIDECAR_SPOOL_MAX_BYTES", value_name = "SIZE", value_parser = parse_size)]
    pub(super) spool_max_bytes: Option<usize>,
    /// Envelopes older than this are dropped and reported.
    #[arg(long, env = "SENTRY_SIDECAR_SPOOL_MAX_AGE", value_name = "DURATION", value_parser = parse_duration)]
    pub(super) spool_max_age: Option<Duration>,
    /// When the spool is full: drop-oldest, or reject-new (503 + Retry-After).
    #[arg(long, env = "SENTRY_SIDECAR_SPOOL_FULL_POLICY", value_name = "POLICY", hide_possible_values = true)]
    pub(super) spool_full_policy: Option<FullPolicy>,
    /// Delivery order: oldest-first or newest-first.
    #[arg(long, env = "SENTRY_SIDECAR_DELIVERY_ORDER", value_name = "ORDER", hide_possible_values = true)]
    pub(super) delivery_order: Option<DeliveryOrder>,
    /// RAM held before spilling to disk with --durability memory.
    #[arg(long, env = "SENTRY_SIDECAR_MEMORY_SPOOL_BYTES", value_name = "SIZE", value_parser = parse_size)]
    pub(super) memory_spool_bytes: Option<usize>,
    /// Envelopes whose categories are all rate limited: hold (wait in the spool) or drop.
    #[arg(long, env = "SENTRY_SIDECAR_RATE_LIMIT_POLICY", value_name = "POLICY", hide_possible_values = true)]
    pub(super) rate_limit_policy: Option<RateLimitPolicy>,
    /// Longest an envelope is held for a rate limit before it is dropped.
    #[arg(long, env = "SENTRY_SIDECAR_MAX_HOLD", value_name = "DURATION", value_parser = parse_duration)]
    pub(super) max_hold: Option<Duration>,
    /// Answer SDKs 429 (Retry-After, X-Sentry-Rate-Limits) while their data is rate limited
    /// upstream, so they stop producing.
    #[arg(long, env = "SENTRY_SIDECAR_ANSWER_429", value_name = "BOOL", value_parser = parse_bool, num_args = 0..=1, default_missing_value = "true")]
    pub(super) answer_429: Option<bool>,
    /// Envelopes per second sent while draining a backlog after an outage; 0 = unpaced.
    #[arg(long, env = "SENTRY_SIDECAR_DRAIN_RATE", value_name = "N", value_parser = parse_rate)]
    pub(super) drain_rate: Option<u32>,
    /// An upstream failing with only transient errors this long has its circuit opened: sending
    /// stops and single probes back off.
    #[arg(long, env = "SENTRY_SIDECAR_CIRCUIT_GRACE", value_name = "DURATION", value_parser = parse_duration)]
    pub(super) circuit_grace: Option<Duration>,
    /// Consecutive transient failures that open an upstream's circuit (or `circuit_grace` of
    /// them, whichever comes first).
    #[arg(long, env = "SENTRY_SIDECAR_CIRCUIT_FAILURES", value_name = "N", value_parser = parse_count)]
    pub(super) circuit_failures: Option<usize>,
    /// Longest wait between two probes of an upstream whose circuit is open (at most 10s).
    #[arg(long, env = "SENTRY_SIDECAR_PROBE_MAX_INTERVAL", value_name = "DURATION", value_parser = parse_duration)]
    pub(super) probe_max_interval: Option<Duration>,
    /// Log format: text or json.
    #[arg(long, env = "SENTRY_SIDECAR_LOG_FORMAT", value_name = "FORMAT", hide_possible_values = true)]
    pub(super) log_format: Option<LogFormat>,
    /// Log filter, e.g. info or sentry_sidecar=debug.
    #[arg(long, env = "SENTRY_SIDECAR_LOG_LEVEL", value_name = "FILTER")]
    pub(super) log_level: Option<String>,
}

/// A helper the binary runs instead of the sidecar. The settings are the sidecar's own flags
/// (global, so they may come before or after the helper's name), so a helper reads the same
/// configuration the sidecar would.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Tool {
    /// Validate the configuration (flags, environment, --config file) and print every effective
    /// setting with where it came from, secrets masked; exit 2 if it is invalid.
    CheckConfig,
    /// Send one small event through a running sidecar (at --listen; /readyz and /metrics on
    /// --admin-listen if set) and report what happened to it: accepted or refused, then
    /// delivered, captured, or why not.
    SendTestEvent {
        /// DSN whose key and project the event carries [default: a made-up key for project 1,
        /// which capture mode accepts and a real Sentry refuses].
        #[arg(long, value_name = "DSN", value_parser = parse_dsn)]
        dsn: Option<Dsn>,
        /// How long to watch the sidecar for the event's fate.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
        wait: Duration,
    },
}

/// Where a flag-or-environment setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Given {
    /// On the command line.
    Flag,
    /// In its `SENTRY_SIDECAR_*` variable.
    Env,
}

/// The clap command, with each flag's built-in default appended to its help from the table.
pub(super) fn command() -> clap::Command {
    Cli::command().mut_args(|arg| {
        // Global, so `sentry-sidecar check-config --config f.toml` reads as the sidecar would.
        let arg = arg.global(true);
        match defaults::of(arg.get_id().as_str()) {
            Some(value) => {
                let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
                arg.help(format!("{help} [default: {value}]"))
            }
            None => arg,
        }
    })
}

/// Parses `args` (and the environment); `--help` and `--version` print and exit here.
#[cfg(test)]
pub(super) fn parse(args: &[OsString]) -> Result<Cli, ConfigError> {
    parse_with_sources(args).map(|(cli, _)| cli)
}

/// [`parse`], and for each setting given, whether it was a flag or an environment variable.
pub(super) fn parse_with_sources(args: &[OsString]) -> Result<(Cli, Vec<(String, Given)>), ConfigError> {
    let mut cmd = command();
    let matches = match cmd.try_get_matches_from_mut(args) {
        Ok(m) => m,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => e.exit(),
        Err(e) => return Err(ConfigError::Cli(describe(&e, &cmd, args))),
    };
    let cli = Cli::from_arg_matches(&matches).map_err(|e| ConfigError::Cli(describe(&e, &cmd, args)))?;
    let given = cmd
        .get_arguments()
        .filter_map(|arg| {
            let id = arg.get_id().as_str();
            let given = match matches.try_contains_id(id).ok()?.then(|| matches.value_source(id)).flatten()? {
                ValueSource::CommandLine => Given::Flag,
                ValueSource::EnvVariable => Given::Env,
                _ => return None,
            };
            Some((id.to_owned(), given))
        })
        .collect();
    Ok((cli, given))
}

/// One line for a clap error; a bad value is put as "invalid value for NAME: why", where NAME is
/// the environment variable when the value came from there.
fn describe(e: &clap::Error, cmd: &clap::Command, args: &[OsString]) -> String {
    let context = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.as_str()),
        _ => None,
    };
    let (Some(arg), Some(value)) = (context(ContextKind::InvalidArg), context(ContextKind::InvalidValue)) else {
        // clap's message runs over several lines (usage, hints); keep the one that says what
        // is wrong.
        let text = e.render().to_string();
        let first = text.lines().next().unwrap_or("invalid arguments");
        return first.trim_start_matches("error: ").to_owned();
    };
    // "--gzip-level <N>" -> "--gzip-level"
    let flag = arg.split_whitespace().next().unwrap_or(arg);
    let why = match (std::error::Error::source(e), e.get(ContextKind::ValidValue)) {
        (Some(source), _) => source.to_string(),
        (None, Some(ContextValue::Strings(valid))) => format!("`{value}` is not one of {}", valid.join(", ")),
        (None, _) => format!("`{value}` is not valid"),
    };
    format!("invalid value for {}: {why}", source_name(flag, cmd, args))
}

/// The flag itself if it is on the command line; otherwise clap took the value from the flag's
/// environment variable (there are no clap defaults), and that is the name to report.
fn source_name(flag: &str, cmd: &clap::Command, args: &[OsString]) -> String {
    let on_command_line = args
        .iter()
        .skip(1)
        .filter_map(|a| a.to_str())
        .take_while(|a| *a != "--")
        .any(|a| a == flag || a.strip_prefix(flag).is_some_and(|rest| rest.starts_with('=')));
    let env = cmd
        .get_arguments()
        .find(|a| a.get_long().is_some_and(|long| flag.strip_prefix("--") == Some(long)))
        .and_then(|a| a.get_env())
        .and_then(|v| v.to_str());
    match env {
        Some(var) if !on_command_line => var.to_owned(),
        _ => flag.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn cli_help_lists_every_setting() {
        let help = command().render_long_help().to_string();
        for flag in ["--listen", "--upstream", "--spool-dir", "--ca-file", "--config", "--tunnel-allow"] {
            assert!(help.contains(flag), "{flag} missing from --help");
        }
        assert!(help.contains("SENTRY_SIDECAR_UPSTREAM"));
    }

    #[test]
    fn every_flag_help_shows_its_default_from_the_table() {
        let mut cmd = command();
        // Settings whose absence means something of its own; their help says what.
        let without = ["config", "admin_listen", "upstream", "ca_file", "tunnel_allow", "help", "version"];
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            match defaults::of(id) {
                Some(value) => {
                    assert!(help.ends_with(&format!(" [default: {value}]")), "--{id}: {help}");
                    assert_eq!(help.matches("[default:").count(), 1, "--{id} has one default: {help}");
                }
                None => assert!(without.contains(&id), "--{id} has no row in the defaults table"),
            }
        }
        for (key, _) in defaults::DEFAULTS {
            assert!(cmd.get_arguments().any(|a| a.get_id() == *key), "{key} in the table is not a flag");
        }
        let help = cmd.render_long_help().to_string();
        assert!(help.contains("[default: 20MiB]") && help.contains("[default: drop-oldest]"), "{help}");
    }

    #[test]
    fn a_bad_value_is_named_by_where_it_came_from() {
        let cmd = command();
        let argv = args(&["sentry-sidecar", "--gzip-level", "11"]);
        let e = command().try_get_matches_from(&argv).unwrap_err();
        assert_eq!(describe(&e, &cmd, &argv), "invalid value for --gzip-level: `11` is not a gzip level from 0 to 9");
        // The same error with the flag absent from the command line came from the environment.
        assert_eq!(
            describe(&e, &cmd, &args(&["sentry-sidecar"])),
            "invalid value for SENTRY_SIDECAR_GZIP_LEVEL: `11` is not a gzip level from 0 to 9"
        );
        let argv = args(&["sentry-sidecar", "--durability=fast"]);
        let e = command().try_get_matches_from(&argv).unwrap_err();
        assert_eq!(
            describe(&e, &cmd, &argv),
            "invalid value for --durability: `fast` is not one of process, power, memory"
        );
        let argv = args(&["sentry-sidecar", "--lisen", "x"]);
        let e = command().try_get_matches_from(&argv).unwrap_err();
        let text = describe(&e, &cmd, &argv);
        assert!(text.contains("--lisen") && !text.contains('\n'), "{text}");
    }

    #[test]
    fn flags_parse_into_options() {
        let cli =
            parse(&args(&["sentry-sidecar", "--batch-size", "9", "--answer-429", "--compression", "none"])).unwrap();
        assert_eq!(cli.batch_size, Some(9));
        assert_eq!(cli.answer_429, Some(true));
        assert_eq!(cli.compression, Some(Encoding::Identity));
        assert_eq!(cli.listen, None, "not given stays None, so the file can still set it");
    }
}
