//! The `sentry-sidecar` binary: parse the configuration, set up logs and metrics, run until SIGTERM
//! or SIGINT, then shut down gracefully.

use anyhow::Context;
use sentry_sidecar::config::{Config, LogFormat};
use sentry_sidecar::Sidecar;

fn main() {
    limit_malloc_arenas();
    let cfg = match Config::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sentry-sidecar: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(cfg) {
        eprintln!("sentry-sidecar: {e:#}");
        std::process::exit(1);
    }
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

/// glibc gives every thread that allocates its own malloc arena; for a small always-on process
/// with a writer thread and runtime workers that mostly shows up as RSS held by idle arenas.
///
/// Freed memory inside an arena goes back to the OS only from the arena's top, so after a burst
/// free pages in the middle stay resident; a small thread hands them back every few seconds.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only tunes the allocator; it is called before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
        let _ = std::thread::Builder::new().name("malloc-trim".into()).spawn(|| loop {
            std::thread::sleep(std::time::Duration::from_secs(5));
            // SAFETY: malloc_trim only releases free memory; it is thread-safe.
            unsafe {
                libc::malloc_trim(0);
            }
        });
    }
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
