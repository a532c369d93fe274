//! sentry-sidecar: a local relay between Sentry SDKs and Sentry.
//!
//! The flow, one module per step:
//!
//! ```text
//!  SDK --HTTP/1.1 loopback--> ingest --> spool --> dispatch --> upstream ==TLS pool==> Sentry
//!                             parse,     SQLite    batches,     hyper + rustls,
//!                             validate,  WAL,      rate limits, HTTP/2 or 1.1,
//!                             gzip once, bounded   circuit,     stored bytes as
//!                             ack 200              retries      they are
//!                             after the
//!                             append
//! ```
//!
//! - [`protocol`]: the Sentry wire format (DSN, auth, envelopes, store bodies, categories, rate-limit
//!   headers). Pure, no I/O.
//! - [`ingest`]: the hyper server; routes, auth, body limits and decoding; compresses the body
//!   once for the upstream, appends it to the spool and only then answers.
//! - [`spool`]: the durable queue between the two halves, behind the [`spool::Spool`] trait
//!   (SQLite with group commit; a RAM tier for `durability = memory`; client reports for drops).
//! - [`dispatch`]: leases batches from the spool, gates them on the rate-limit table and the
//!   upstream's circuit, delivers them with bounded concurrency, acks or reschedules by the
//!   classified outcome.
//! - [`upstream`]: the pooled rustls client (which sends a stored body as it is, unless its
//!   `sent_at` must be shifted; an HTTP/2 connection's frames of one scheduler pass go out in one
//!   TLS write), the codecs and [`upstream::classify`].
//! - [`capture`]: the sink used when no upstream is configured.
//! - [`admin`]: health, readiness and Prometheus metrics. [`telemetry`] names every metric.
//! - [`config`]: flags, environment and TOML, validated into [`config::Config`].
//!
//! Threads: the async runtime (one thread by default: ingest, dispatch, upstream), the spool's
//! writer (every SQLite statement) and, with `durability = process`, its WAL flusher; plus two
//! small housekeeping threads (metrics upkeep, and `malloc_trim` in `main`).
//!
//! [`Sidecar::start`] wires them together; `main`, the tests and the benches all use it.

pub mod admin;
pub mod capture;
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
use crate::ingest::Ingest;
use crate::limits::RateLimits;
use crate::routing::Routes;
use crate::spool::{Spool, SpoolError};
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
}

impl Sidecar {
    /// Starts listeners and the dispatcher; returns once the sidecar is ready to accept.
    pub async fn start(cfg: Config) -> Result<Running, StartError> {
        std::fs::create_dir_all(&cfg.spool_dir)
            .map_err(|source| StartError::SpoolDir { path: cfg.spool_dir.display().to_string(), source })?;
        let spool = spool::open(&cfg)
            .map_err(|source| StartError::Spool { path: cfg.spool_dir.display().to_string(), source })?;
        Self::start_with_spool(cfg, spool).await
    }

    /// Like [`Sidecar::start`], over a spool the caller opened (tests inject faults this way).
    pub async fn start_with_spool(cfg: Config, spool: Arc<dyn Spool>) -> Result<Running, StartError> {
        let metrics = telemetry::metrics_handle();
        std::fs::create_dir_all(&cfg.spool_dir)
            .map_err(|source| StartError::SpoolDir { path: cfg.spool_dir.display().to_string(), source })?;
        let cfg = Arc::new(cfg);
        let limits = Arc::new(RateLimits::new());
        let routes = Arc::new(Routes::new(cfg.upstream.clone(), cfg.routes.clone(), cfg.tunnel_allow.clone()));
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
        let admin = Arc::new(Admin::new(spool.clone(), metrics));
        let inline_admin = if admin_listener.is_none() { Some(admin.clone()) } else { None };
        let ingest = Arc::new(Ingest::new(cfg.clone(), routes.clone(), spool.clone(), limits.clone()));
        let front = Arc::new(crate::http::Layered::new(inline_admin, ingest));
        let mut servers = vec![tokio::spawn(crate::http::serve(
            listener,
            front,
            shutdown_rx.clone(),
            cfg.max_connections,
            cfg.shutdown_timeout,
        ))];
        if let Some(l) = admin_listener {
            servers.push(tokio::spawn(crate::http::serve(
                l,
                admin.clone(),
                shutdown_rx.clone(),
                64,
                cfg.shutdown_timeout,
            )));
        }
        let dispatcher = Arc::new(Dispatcher::new(
            spool.clone(),
            client,
            capture,
            limits,
            routes,
            DispatchConfig::from_config(&cfg),
            crate::clock::Clock::system(),
        ));
        let dispatcher = tokio::spawn(dispatcher.run(shutdown_rx));
        admin.set_ready(true);
        tracing::info!(
            listen = %addr,
            admin = %admin_addr.map_or_else(|| "same listener".to_owned(), |a| a.to_string()),
            upstream = cfg.upstream.as_ref().map_or("none (capture mode)", |u| u.as_str()),
            spool_dir = %cfg.spool_dir.display(),
            "sentry-sidecar ready"
        );
        Ok(Running { addr, admin_addr, shutdown, servers, dispatcher, admin, spool })
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
