#![allow(missing_docs, unreachable_pub)]
//! `/metrics` before any traffic: every metric the code names has its `# HELP` and `# TYPE`
//! lines and at least one series, so dashboards and alerts work on a sidecar that has not yet
//! seen a request. Its own binary: the recorder is process-wide, and nothing else may have
//! touched it first.

mod common;

use common::*;
use sentry_sidecar::telemetry::{
    Kind, ALL, BUILD_INFO, CIRCUIT_OPEN, RESIDENT_MEMORY, SPOOL_OLDEST_AGE, UPSTREAM_CONNECTIONS,
};

#[tokio::test]
async fn every_metric_has_help_and_a_series_before_the_first_request() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let port = dead_port().await;
    let sidecar = start(config_for_port(dir.path(), &pki, port)).await;
    let text = metrics_text(sidecar.local_addr()).await;
    for m in ALL {
        assert!(text.contains(&format!("# HELP {} {}", m.name, m.help)), "no HELP for {}:\n{text}", m.name);
        let kind = match m.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        assert!(text.contains(&format!("# TYPE {} {kind}", m.name)), "no TYPE for {}", m.name);
        let series = if m.kind == Kind::Histogram { format!("{}_count", m.name) } else { m.name.to_owned() };
        assert!(text.lines().any(|l| !l.starts_with('#') && l.starts_with(&series)), "no series for {}", m.name);
    }
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(metric_value(&text, &format!("{BUILD_INFO}{{version=\"{version}\"}}")), 1.0);
    // The configured upstream's circuit is there, closed.
    let circuit = format!("{CIRCUIT_OPEN}{{upstream=\"https://127.0.0.1:{port}\"}} 0");
    assert!(text.lines().any(|l| l == circuit), "{circuit} missing");
    let conns = format!("{UPSTREAM_CONNECTIONS}{{upstream=\"127.0.0.1:{port}\"}} 0");
    assert!(text.lines().any(|l| l == conns), "{conns} missing");
    // The closed labels are all there at zero.
    for series in [
        r#"sidecar_rejected_total{endpoint="tunnel",reason="tunnel_forbidden"} 0"#,
        r#"sidecar_dropped_total{reason="too_old",category="transaction"} 0"#,
        r#"sidecar_upstream_attempts_total{result="429"} 0"#,
        r#"sidecar_accepted_total{endpoint="minidump"} 0"#,
    ] {
        assert!(text.lines().any(|l| l == series), "{series} missing");
    }
    // One envelope waits (the upstream is down): the oldest's age grows; RSS is read at scrape.
    let f = load_fixture("02_sdk_error_gzip");
    assert_eq!(raw(sidecar.local_addr(), &f.wire(sidecar.local_addr())).await.status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let text = metrics_text(sidecar.local_addr()).await;
    let age = metric_value(&text, &format!("{SPOOL_OLDEST_AGE} "));
    assert!((0.1..60.0).contains(&age), "oldest age {age}");
    assert!(metric_value(&text, &format!("{RESIDENT_MEMORY} ")) > 1e6, "RSS");
    sidecar.shutdown().await;
}
