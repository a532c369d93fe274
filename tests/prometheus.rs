#![allow(missing_docs, unreachable_pub)]
//! The monitoring in `deploy/` against a real Prometheus (Debian's `prometheus` package, which
//! also ships `promtool`): the alert rules pass `promtool check rules` and their unit tests, and a
//! Prometheus scraping a real sidecar under traffic answers every dashboard panel's query with
//! data. Without the two programs each test says "skipped: ..." and passes; `.ci/run` installs
//! them, so there they run.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// `name` on the PATH, or why the test is skipped.
fn program(name: &str) -> Option<PathBuf> {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        eprintln!("skipped: `{name}` is not installed (Debian package `prometheus`; .ci/run installs it)");
    }
    found
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let Some(promtool) = program("promtool") else { return };
    for args in [["check", "rules", "prometheus-alerts.yaml"], ["test", "rules", "prometheus-alerts.test.yaml"]] {
        let out = Command::new(&promtool).args(args).current_dir(deploy()).output().unwrap();
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every alert has a unit test case.
    let rules = std::fs::read_to_string(deploy().join("prometheus-alerts.yaml")).unwrap();
    let cases = std::fs::read_to_string(deploy().join("prometheus-alerts.test.yaml")).unwrap();
    let alerts: Vec<&str> = rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).collect();
    assert!(alerts.len() >= 5, "{alerts:?}");
    for alert in alerts {
        assert!(cases.contains(&format!("alertname: {alert}\n")), "{alert} has no unit test case");
    }
}

/// Kills the Prometheus it holds when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// GET over HTTP/1.0, so that Prometheus answers unchunked and closes.
async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((head.split(' ').nth(1)?.parse().ok()?, body.to_owned()))
}

/// The result of an instant query, or None while Prometheus is not answering yet.
async fn query(prom: SocketAddr, expr: &str) -> Option<Vec<serde_json::Value>> {
    let q: String = form_urlencoded::Serializer::new(String::new()).append_pair("query", expr).finish();
    let (status, body) = get(prom, &format!("/api/v1/query?{q}")).await?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    assert_eq!(status, 200, "{expr}: {body}");
    assert_eq!(v["status"], "success", "{expr}: {body}");
    v["data"]["result"].as_array().cloned()
}

/// A dashboard query with Grafana's variables as a test has them: this job, every instance, a
/// one-minute rate window (there are only a few seconds of samples, so any window will do).
fn concrete(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m").replace("$job", "sentry-sidecar").replace("$instance", ".+")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let Some(prometheus) = program("prometheus") else { return };
    let pki = Pki::new();
    let up = Upstream::start(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let running = start(upstream_config(dir.path(), &pki, &up)).await;
    let sidecar = running.local_addr();

    // Traffic all along: a few envelopes a second, so every rate has something to see.
    let traffic = tokio::spawn(async move {
        loop {
            let (_, body) = error_envelope("prometheus");
            assert_eq!(post_envelope(sidecar, &body).await.status, 200);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let prom = SocketAddr::from(([127, 0, 0, 1], port));
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: [{:?}]\n\
             scrape_configs:\n  - job_name: sentry-sidecar\n    static_configs: [{{targets: [\"{sidecar}\"]}}]\n",
            deploy().join("prometheus-alerts.yaml").display().to_string()
        ),
    )
    .unwrap();
    let _prometheus = Killed(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
            .arg(format!("--web.listen-address={prom}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // A rate needs two scrapes of a series that moved; wait for the slowest kind, a histogram.
    let started = Instant::now();
    let ready = "histogram_quantile(0.5, sum by (le) (rate(sidecar_upstream_duration_seconds_bucket[1m]))) > 0";
    loop {
        if query(prom, ready).await.is_some_and(|r| !r.is_empty()) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(25), "Prometheus saw no traffic on {sidecar} in 25 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy().join("grafana-dashboard.json")).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let mut asked = 0;
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("panel {title} has no queries"));
        assert!(!targets.is_empty(), "panel {title} has no queries");
        for target in targets {
            let expr = concrete(target["expr"].as_str().unwrap());
            let result = query(prom, &expr).await.unwrap_or_else(|| panic!("no answer for {expr}"));
            assert!(!result.is_empty(), "panel {title}: no data for {expr}");
            asked += 1;
        }
    }
    assert!(asked >= panels.len());

    // The alert rules load into the real Prometheus and evaluate without error.
    let (_, body) = get(prom, "/api/v1/rules").await.unwrap();
    let rules: serde_json::Value = serde_json::from_str(&body).unwrap();
    let rules: Vec<&serde_json::Value> =
        rules["data"]["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap()).collect();
    assert!(rules.len() >= 5, "{body}");
    for rule in rules {
        assert_eq!(rule["health"], "ok", "{rule}");
    }

    traffic.abort();
    running.shutdown().await;
}
