//! The `sentry-sidecar` binary: parse the configuration, set up logs and metrics, run until SIGTERM
//! or SIGINT, then shut down gracefully; or run one of its helpers (`check-config`,
//! `send-test-event`) with the same configuration.

use anyhow::Context;
use sentry_sidecar::config::{Config, Invocation, LogFormat, Tool};
use sentry_sidecar::{cli_tools, Sidecar};

fn main() {
    sentry_sidecar::sys::limit_malloc_arenas();
    let inv = match Invocation::from_process() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("sentry-sidecar: {e}");
            std::process::exit(2);
        }
    };
    match &inv.tool {
        None => {}
        Some(Tool::CheckConfig) => std::process::exit(cli_tools::check_config(&inv)),
        Some(Tool::SendTestEvent { dsn, wait }) => {
            std::process::exit(cli_tools::send_test_event(&inv.config, dsn.as_ref(), *wait))
        }
    }
    if let Err(e) = run(inv.config) {
        eprintln!("sentry-sidecar: {}", one_line(&e));
        std::process::exit(1);
    }
}

/// The error and its causes on one line, each said once: our errors already name their cause
/// (`cannot listen on ADDR: Address already in use`), so a cause whose text is already there is
/// not repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

fn run(cfg: Config) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log_level)
        .with_context(|| format!("invalid value for `log_level`: {}", cfg.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match cfg.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    // One thread by default: a sidecar should not compete with its app for cores, and on one
    // core the current-thread scheduler costs less per envelope than a one-worker pool (no
    // work-stealing bookkeeping, and a woken upstream connection task runs after the deliveries
    // that woke it, so their HTTP/2 frames go out in one write instead of one write each).
    let mut builder = if cfg.worker_threads > 1 {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(cfg.worker_threads);
        b
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let runtime = builder.enable_all().thread_name("sidecar").build().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let running = Sidecar::start(cfg).await?;
        wait_for_signal().await?;
        tracing::info!("shutting down");
        running.shutdown().await;
        Ok(())
    })
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot listen for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}
