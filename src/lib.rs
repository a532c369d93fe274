//! sentry-sidecar: a local relay between Sentry SDKs and Sentry.
//!
//! The flow, one module per step:
//!
//! ```text
//!  SDK --HTTP/1.1 loopback--> ingest --> spool --> dispatch --> upstream ==TLS pool==> Sentry
//!                             parse,     SQLite    batches,     hyper + rustls,
//!                             validate,  WAL,      rate limits, HTTP/2 or 1.1,
//!                             gzip once, bounded   circuit,     sends what it is
//!                             ack 200              retries,     given, classifies
//!                             after the            builds the   the answer
//!                             append               request
//! ```
//!
//! # The map
//!
//! Each module has one job, and may import only the modules its row names (besides the standard
//! library and its dependencies). Only this file wires them together. `tests/architecture.rs`
//! reads this table and fails when a module imports one it does not list, so the table is the rule.
//!
//! | module | its one job | may import |
//! |---|---|---|
//! | [`protocol`] | the Sentry wire format: DSN and auth, envelopes (whole, or checked as they stream), store bodies, endpoints, data categories, rate-limit headers, `sent_at` shifts; pure, no I/O, fuzzable | nothing |
//! | [`clock`] | "now" in unix ms, a value so that timing tests run on tokio's paused clock | nothing |
//! | [`sys`] | the few libc calls that need `unsafe` (statvfs, flock for the spool lock, malloc tuning) | nothing |
//! | [`codec`] | one `Encoding`; decoding what SDKs send under a limit, compressing what goes upstream | nothing |
//! | [`http`] | the accept loop, connection cap and drain; JSON, error and CORS answers | nothing |
//! | [`routing`] | upstream URLs, per-project/per-key routes, the default target, the tunnel allow-list | `protocol` |
//! | [`limits`] | the rate-limit table dispatch gates on and ingest answers 429 from | `protocol`, `routing` |
//! | [`telemetry`] | every metric's name and the Prometheus recorder | `protocol` |
//! | [`config`] | flags, environment and TOML, validated into [`config::Config`] | `codec`, `protocol`, `routing` |
//! | [`spool`] | the durable queue between the halves (SQLite with group commit, large bodies as files, a RAM tier, client reports for drops) | `clock`, `codec`, `config`, `protocol`, `routing`, `sys`, `telemetry` |
//! | [`ingest`] | routes, auth, body limits and decoding; compresses once for the upstream (large bodies streamed to a file on the way), appends, then answers | `clock`, `codec`, `config`, `http`, `limits`, `protocol`, `routing`, `spool`, `telemetry` |
//! | [`upstream`] | transport only: the pooled rustls client sends a prepared request (bytes, or a file read as it is sent) and classifies the answer | `codec`, `config`, `protocol`, `routing`, `telemetry` |
//! | [`capture`] | the local sink used when no upstream is configured | `spool` |
//! | [`status`] | what `/readyz` shows of each upstream's circuit (open, why, since when), written by dispatch | nothing |
//! | [`dispatch`] | leases batches, gates them (rate limits, circuit, pacing), builds each upstream request, acks or reschedules by the outcome | `capture`, `clock`, `codec`, `config`, `limits`, `protocol`, `routing`, `spool`, `status`, `telemetry`, `upstream` |
//! | [`admin`] | `/healthz`, `/readyz`, `/metrics` | `clock`, `http`, `spool`, `status`, `telemetry` |
//! | [`cli_tools`] | the binary's helpers: `check-config` (settings and their sources) and `send-test-event` (one event through a running sidecar, and its fate) | `config`, `protocol`, `telemetry` |
//!
//! # Threads
//!
//! The async runtime (one thread by default: ingest, dispatch, upstream), the spool's writer
//! (every SQLite statement) and, with `durability = process`, its WAL flusher (both asleep while
//! nothing is written); plus two small housekeeping threads (metrics upkeep, and `malloc_trim`
//! from [`sys::limit_malloc_arenas`]).
//! Large bodies are compressed, and every inbound body is decoded, on tokio's blocking pool (a
//! few decoders at a time), never on the async threads; so is the pipeline that streams a body
//! over 1 MiB to a file (decode, check, compress, write), and the reading of a file body as it is
//! sent upstream.
//!
//! [`Sidecar::start`] wires them together; `main`, the tests and the benches all use it.

pub mod admin;
pub mod capture;
pub mod cli_tools;
pub mod clock;
pub mod codec;
pub mod config;
pub mod dispatch;
pub mod http;
pub mod ingest;
pub mod limits;
pub mod protocol;
pub mod routing;
pub mod spool;
pub mod status;
pub mod sys;
pub mod telemetry;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::Admin;
use crate::capture::Capture;
use crate::config::Config;
use crate::dispatch::{DispatchConfig, Dispatcher};
use crate::ingest::{Forward, ForwardError, Forwarding, Ingest, Passthrough};
use crate::limits::RateLimits;
use crate::routing::Routes;
use crate::spool::{LockError, Spool, SpoolError, SpoolLock};
use crate::upstream::UpstreamClient;

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The spool directory could not be created.
    #[error("cannot create spool directory {path}: {source}")]
    SpoolDir {
        /// The directory.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Another process holds the spool directory (or its lock file cannot be taken).
    #[error(transparent)]
    SpoolLocked(#[from] LockError),
    /// The spool could not be opened (even after quarantining a broken one).
    #[error("cannot open the spool in {path}: {source}")]
    Spool {
        /// The directory.
        path: String,
        /// The error.
        source: SpoolError,
    },
    /// The upstream client could not be built (CA file, TLS).
    #[error(transparent)]
    Upstream(#[from] upstream::UpstreamError),
}

/// Entry point: builds and starts every part.
pub struct Sidecar;

/// A started sidecar.
pub struct Running {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    dispatcher: JoinHandle<()>,
    admin: Arc<Admin>,
    spool: Arc<dyn Spool>,
    _lock: Option<SpoolLock>,
}

impl Sidecar {
    /// Starts listeners and the dispatcher; returns once the sidecar is ready to accept.
    pub async fn start(cfg: Config) -> Result<Running, StartError> {
        std::fs::create_dir_all(&cfg.spool_dir)
            .map_err(|source| StartError::SpoolDir { path: cfg.spool_dir.display().to_string(), source })?;
        // Before SQLite is opened: a second instance must fail at once, not after its busy wait.
        let lock = SpoolLock::acquire(&cfg.spool_dir)?;
        let spool = spool::open(&cfg)
            .map_err(|source| StartError::Spool { path: cfg.spool_dir.display().to_string(), source })?;
        Self::start_inner(cfg, spool, Some(lock)).await
    }

    /// Like [`Sidecar::start`], over a spool the caller opened (tests inject faults this way); the
    /// caller owns the spool directory, so no lock is taken.
    pub async fn start_with_spool(cfg: Config, spool: Arc<dyn Spool>) -> Result<Running, StartError> {
        Self::start_inner(cfg, spool, None).await
    }

    async fn start_inner(cfg: Config, spool: Arc<dyn Spool>, lock: Option<SpoolLock>) -> Result<Running, StartError> {
        let metrics = telemetry::metrics_handle();
        std::fs::create_dir_all(&cfg.spool_dir)
            .map_err(|source| StartError::SpoolDir { path: cfg.spool_dir.display().to_string(), source })?;
        let cfg = Arc::new(cfg);
        let limits = Arc::new(RateLimits::new());
        let routes = Arc::new(Routes::new(cfg.upstream.clone(), cfg.routes.clone(), cfg.tunnel_allow.clone()));
        let status = Arc::new(status::UpstreamStatus::new());
        for u in cfg.upstream.iter().chain(cfg.routes.iter().map(|r| &r.upstream)) {
            telemetry::register_upstream(u.as_str());
            status.register(u.as_str());
        }
        let client = if routes.has_upstream() { Some(Arc::new(UpstreamClient::new(&cfg)?)) } else { None };
        let capture = Arc::new(Capture::new(cfg.spool_dir.join("capture.jsonl")));

        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })
        };
        let listener = bind(cfg.listen).await?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind { addr: cfg.listen, source })?;
        let admin_listener = match cfg.admin_listen {
            Some(a) => Some(bind(a).await?),
            None => None,
        };
        let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());

        let (shutdown, shutdown_rx) = watch::channel(false);
        let admin = Arc::new(Admin::new(spool.clone(), metrics).with_upstreams(status.clone()));
        let inline_admin = if admin_listener.is_none() { Some(admin.clone()) } else { None };
        let forward = client.clone().map(|c| Arc::new(PassThrough(c)) as Arc<dyn Forward>);
        let ingest = Arc::new(Ingest::new(cfg.clone(), routes.clone(), spool.clone(), limits.clone(), forward));
        let front = Arc::new(crate::http::Layered::new(inline_admin, ingest));
        let mut opts = crate::http::ServeOptions::new(cfg.max_connections, cfg.shutdown_timeout);
        opts.header_read_timeout = cfg.header_read_timeout;
        opts.keep_alive_timeout = cfg.keep_alive_timeout;
        opts.priority_paths = ADMIN_PATHS;
        opts.on_overload = Some(|| {
            metrics::counter!(telemetry::REJECTED, "endpoint" => "other", "reason" => "connection_limit").increment(1)
        });
        opts.on_header_timeout = Some(|| {
            metrics::counter!(telemetry::REJECTED, "endpoint" => "other", "reason" => "header_timeout").increment(1)
        });
        let mut servers = vec![
            tokio::spawn(crate::http::serve(listener, front, shutdown_rx.clone(), opts.clone())),
            // Asleep until something is refused or dropped; then a line at most once a minute.
            tokio::spawn(telemetry::summarize_trouble(shutdown_rx.clone())),
        ];
        if let Some(l) = admin_listener {
            opts.max_connections = 64;
            servers.push(tokio::spawn(crate::http::serve(l, admin.clone(), shutdown_rx.clone(), opts)));
        }
        let dispatcher = Arc::new(
            Dispatcher::new(
                spool.clone(),
                client,
                capture,
                limits,
                routes,
                DispatchConfig::from_config(&cfg),
                crate::clock::Clock::system(),
            )
            .with_status(status),
        );
        let dispatcher = tokio::spawn(dispatcher.run(shutdown_rx));
        admin.set_ready(true);
        tracing::info!(
            listen = %addr,
            admin = %admin_addr.map_or_else(|| "same listener".to_owned(), |a| a.to_string()),
            upstream = cfg.upstream.as_ref().map_or("none (capture mode)", |u| u.as_str()),
            spool_dir = %cfg.spool_dir.display(),
            "sentry-sidecar ready"
        );
        Ok(Running { addr, admin_addr, shutdown, servers, dispatcher, admin, spool, _lock: lock })
    }
}

/// The admin endpoints: answered even past the connection cap, so that probes see a live process
/// during a flood.
const ADMIN_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// The pass-through of unknown ingest paths, over the upstream client (ingest may not know the
/// transport, so it is handed this).
struct PassThrough(Arc<UpstreamClient>);

/// The most of an upstream's answer handed back on a pass-through (Sentry's are small JSON).
const PASS_THROUGH_ANSWER_BYTES: usize = 1024 * 1024;

impl Forward for PassThrough {
    fn forward(&self, req: Passthrough) -> Forwarding<'_> {
        Box::pin(async move {
            let uri = format!("{}{}", req.upstream.as_str(), req.path_and_query)
                .parse::<::http::Uri>()
                .map_err(|e| ForwardError::Unreachable(format!("cannot build the upstream URL: {e}")))?;
            let out = upstream::Request {
                method: req.method,
                uri,
                headers: req.headers,
                body: req.body.into(),
                encoding: codec::Encoding::Identity,
            };
            let resp = self.0.exchange(out, PASS_THROUGH_ANSWER_BYTES).await.map_err(|e| match e {
                upstream::ExchangeError::Timeout => ForwardError::Timeout,
                upstream::ExchangeError::Failed(m) => ForwardError::Unreachable(m),
            })?;
            let (parts, body) = resp.into_parts();
            Ok(ingest::Answer { status: parts.status, headers: parts.headers, body })
        })
    }
}

impl Running {
    /// The ingest address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The separate admin address, if configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The spool (for tests and status).
    pub fn spool(&self) -> Arc<dyn Spool> {
        self.spool.clone()
    }

    /// Graceful shutdown: not ready, stop accepting, finish in-flight requests and deliveries
    /// (bounded by the shutdown timeout), then return.
    pub async fn shutdown(self) {
        self.admin.set_ready(false);
        let _ = self.shutdown.send(true);
        for s in self.servers {
            let _ = s.await;
        }
        let _ = self.dispatcher.await;
        self.spool.close().await;
        tracing::info!(left_in_spool = self.spool.len(), "sentry-sidecar stopped");
    }
}
