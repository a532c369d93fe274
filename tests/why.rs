#![allow(missing_docs, unreachable_pub)]
//! The sidecar says why an upstream fails, on real sockets: a certificate from a CA it does not
//! trust, a certificate for another name, a dead port, a 503; each in the failure metric's
//! `reason`, in `/readyz`, and in the line that opens the circuit (at ERROR with the fix for a
//! certificate). And the story of a backlog after an outage: one line when it starts draining,
//! one when it is done. Logs are captured by a subscriber of this test binary.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use sentry_sidecar::telemetry::UPSTREAM_FAILURES;

static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    let _ = tracing_subscriber::fmt()
        .with_writer(|| Capture)
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new("sentry_sidecar=info"))
        .try_init();
}

/// The captured lines that mention `needle` (an upstream's port keeps tests apart).
fn lines_with(needle: &str) -> Vec<String> {
    let logs = String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned();
    logs.lines().filter(|l| l.contains(needle)).map(str::to_owned).collect()
}

async fn readyz(addr: std::net::SocketAddr) -> serde_json::Value {
    let r = request(addr, "GET", "/readyz", &[], b"").await;
    assert_eq!(r.status, 200, "an open circuit does not fail readiness");
    r.json()
}

/// Posts `n` envelopes, then waits until `/readyz` shows the upstream `url` open with `reason`
/// and the failure metric counted it; returns the upstream's `/readyz` entry.
async fn expect_reason(
    sidecar: &sentry_sidecar::Running,
    metrics: &Metrics,
    url: &str,
    reason: &str,
    n: usize,
) -> serde_json::Value {
    let addr = sidecar.local_addr();
    for i in 0..n {
        let (_, body) = error_envelope(&format!("why-{i}"));
        assert_eq!(post_envelope(addr, &body).await.status, 200, "the spool keeps accepting");
    }
    metrics.wait_delta(&format!("{UPSTREAM_FAILURES}{{reason=\"{reason}\"}}"), 1.0, 10).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let entry = readyz(addr).await["upstreams"][url].clone();
        if entry["state"] == "open" && entry["reason"] == reason {
            return entry;
        }
        assert!(tokio::time::Instant::now() < deadline, "/readyz never showed {url} open with {reason}: {entry}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_an_untrusted_ca_is_an_error_naming_ca_file_and_is_not_retried_at_speed() {
    capture_logs();
    let _serial = serial().await;
    let trusted = Pki::new();
    let other = Pki::other_ca();
    let up = Upstream::start(&other).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = upstream_config(dir.path(), &trusted, &up);
    let url = up.url().as_str().to_owned();
    let sidecar = start(cfg).await;
    let metrics = Metrics::new(sidecar.local_addr()).await;
    let entry = expect_reason(&sidecar, &metrics, &url, "tls_unknown_issuer", 20).await;
    assert!(entry["detail"].as_str().unwrap().contains("UnknownIssuer"), "{entry}");
    assert!(entry["since_ms"].as_u64().is_some(), "{entry}");
    let errors: Vec<String> = lines_with(&url).into_iter().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "one line: {errors:#?}");
    let line = &errors[0];
    assert!(line.contains("--ca-file") && line.contains("for 127.0.0.1"), "{line}");
    assert!(line.contains("reason=\"tls_unknown_issuer\"") || line.contains("reason=tls_unknown_issuer"), "{line}");
    // A configuration error: the circuit opened at the first failure and probes at the cap (5 s),
    // so 20 envelopes over 2 s cost a handful of handshakes, not one each and their retries.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let failures = metrics.delta(&format!("{UPSTREAM_FAILURES}{{reason=\"tls_unknown_issuer\"}}")).await;
    assert!(failures <= 4.0, "{failures} attempts");
    assert_eq!(sidecar.spool().len(), 20, "everything waits in the spool");
    sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_name_is_a_name_mismatch() {
    capture_logs();
    let _serial = serial().await;
    let pki = Pki::for_names(&["sentry.example.com"]);
    let up = Upstream::start(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let url = up.url().as_str().to_owned();
    let sidecar = start(upstream_config(dir.path(), &pki, &up)).await;
    let metrics = Metrics::new(sidecar.local_addr()).await;
    let entry = expect_reason(&sidecar, &metrics, &url, "tls_name_mismatch", 3).await;
    assert!(entry["detail"].as_str().unwrap().contains("sentry.example.com"), "the names it covers: {entry}");
    let errors: Vec<String> = lines_with(&url).into_iter().filter(|l| l.contains("ERROR")).collect();
    assert!(
        errors.iter().any(|l| l.contains("not valid for the name 127.0.0.1") && l.contains("--ca-file")),
        "{errors:#?}"
    );
    sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_port_is_refused_and_a_503_is_http_5xx_in_the_warning_that_opens_the_circuit() {
    capture_logs();
    let _serial = serial().await;
    let pki = Pki::new();
    let port = dead_port().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("https://127.0.0.1:{port}");
    let sidecar = start(config_for_port(dir.path(), &pki, port)).await;
    let metrics = Metrics::new(sidecar.local_addr()).await;
    expect_reason(&sidecar, &metrics, &url, "refused", 10).await;
    let warned: Vec<String> = lines_with(&url).into_iter().filter(|l| l.contains("circuit open")).collect();
    assert_eq!(warned.len(), 1, "{warned:#?}");
    assert!(warned[0].contains("WARN") && warned[0].contains("refused"), "{}", warned[0]);
    sidecar.shutdown().await;

    let up = Upstream::start_with(&pki, true, Arc::new(|_, _| (503, vec![]))).await;
    let dir = tempfile::tempdir().unwrap();
    let url = up.url().as_str().to_owned();
    let sidecar = start(upstream_config(dir.path(), &pki, &up)).await;
    let metrics = Metrics::new(sidecar.local_addr()).await;
    let entry = expect_reason(&sidecar, &metrics, &url, "http_5xx", 10).await;
    assert_eq!(entry["detail"], "status 503");
    assert!(metrics.delta("sidecar_upstream_attempts_total{result=\"5xx\"}").await >= 3.0);
    sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_the_backlog_tells_when_it_starts_draining_and_when_it_is_done() {
    capture_logs();
    let _serial = serial().await;
    let pki = Pki::new();
    let port = dead_port().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_for_port(dir.path(), &pki, port);
    cfg.batch_size = 5;
    cfg.probe_max_interval = Duration::from_secs(1);
    let url = format!("https://127.0.0.1:{port}");
    let sidecar = start(cfg).await;
    let metrics = Metrics::new(sidecar.local_addr()).await;
    expect_reason(&sidecar, &metrics, &url, "refused", 40).await;
    let before = LOGS.lock().unwrap().len();
    let up = Upstream::start_on(&pki, port).await;
    up.wait_for(40, 20).await;
    eventually(10, "the drained line", || {
        String::from_utf8_lossy(&LOGS.lock().unwrap()[before..]).contains("backlog drained")
    })
    .await;
    let after = String::from_utf8_lossy(&LOGS.lock().unwrap()[before..]).into_owned();
    let closed = after.lines().find(|l| l.contains("circuit closed") && l.contains(&url)).expect("circuit closed line");
    assert!(closed.contains("open_for_s"), "{closed}");
    let start = after.lines().find(|l| l.contains("backlog draining")).expect("a start line");
    assert!(start.contains("waiting=") && start.contains("oldest_age_s="), "{start}");
    let done = after.lines().find(|l| l.contains("backlog drained")).unwrap();
    assert!(done.contains("sent=") && done.contains("took_ms="), "{done}");
    assert_eq!(after.matches("backlog draining").count(), 1, "one start line:\n{after}");
    let entry = readyz(sidecar.local_addr()).await["upstreams"][&url].clone();
    assert_eq!(entry, serde_json::json!({"state": "closed"}));
    sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_summarised_in_one_line_with_counts_by_reason() {
    capture_logs();
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(test_config(dir.path())).await;
    let addr = sidecar.local_addr();
    for _ in 0..3 {
        let r = request(addr, "POST", "/api/42/envelope/", &[], b"not an envelope").await;
        assert!(r.status >= 400);
    }
    eventually(10, "a summary line", || !lines_with("refused or dropped since the last summary").is_empty()).await;
    let lines = lines_with("refused or dropped since the last summary");
    assert!(lines[0].contains("rejected="), "{}", lines[0]);
    sidecar.shutdown().await;
}
