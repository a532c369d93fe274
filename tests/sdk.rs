#![allow(missing_docs, unreachable_pub)]
//! Real SDKs, unmodified, with only their DSN host swapped for the sidecar: PyPI sentry-sdk and raven,
//! npm @sentry/node. Their events must arrive at the HTTPS upstream intact, auth preserved.
//! The SDKs are installed into target/sdk by tests/sdk/install.sh (run here if needed; .ci/run runs
//! it up front).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Once;
use std::time::Duration;

use common::*;

fn sdk_dir() -> PathBuf {
    std::env::var_os("SDK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/sdk"))
}

fn ensure_sdks() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/install.sh");
        let out = Command::new("bash").arg(script).output().expect("bash runs");
        assert!(
            out.status.success(),
            "installing the SDK peers failed (needs PyPI and npm):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

async fn run(cmd: Command) -> String {
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = cmd;
        cmd.output().expect("SDK process starts")
    })
    .await
    .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "SDK process failed: {text}");
    text
}

fn python() -> Command {
    Command::new(sdk_dir().join("venv/bin/python"))
}

const PY_SENTRY_SDK: &str = r#"
import sys, sentry_sdk
sentry_sdk.init(dsn=sys.argv[1], release="sdk-test@1.0", debug=True)
sentry_sdk.capture_message(sys.argv[2])
try:
    1 / 0
except ZeroDivisionError:
    sentry_sdk.capture_exception()
sentry_sdk.flush(10)
"#;

const PY_RAVEN: &str = r#"
import sys
from raven import Client
from raven.transport.http import HTTPTransport
client = Client(sys.argv[1], transport=HTTPTransport, raise_send_errors=True)
client.captureMessage(sys.argv[2])
"#;

const NODE_SDK: &str = r#"
const Sentry = require('@sentry/node');
Sentry.init({ dsn: process.argv[2], release: 'sdk-test@1.0' });
Sentry.captureException(new Error(process.argv[3]));
Sentry.flush(10000).then((ok) => { if (!ok) { console.error('flush failed'); process.exit(1); } process.exit(0); });
"#;

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_node_and_raven_sdks_reach_the_upstream_intact() {
    ensure_sdks();
    let pki = Pki::new();
    let up = Upstream::start(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(upstream_config(dir.path(), &pki, &up)).await;
    let port = sidecar.local_addr().port();
    let dsn = format!("http://{KEY}@127.0.0.1:{port}/42");

    let mut py = python();
    py.args(["-c", PY_SENTRY_SDK, &dsn, "marker-python-sdk"]);
    let py_log = run(py).await;

    let mut raven = python();
    raven.args(["-c", PY_RAVEN, &dsn, "marker-raven"]);
    run(raven).await;

    let script = dir.path().join("app.js");
    std::fs::write(&script, NODE_SDK).unwrap();
    let mut node = Command::new("node");
    node.env("NODE_PATH", sdk_dir().join("node/node_modules")).arg(&script).args([&dsn, "marker-node-sdk"]);
    run(node).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let find = |marker: &'static str| {
        let up = &up;
        async move {
            loop {
                if let Some(r) = up.received().into_iter().find(|r| contains(&r.body, marker)) {
                    return r;
                }
                assert!(tokio::time::Instant::now() < deadline, "{marker} never arrived upstream");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    let r = find("marker-python-sdk").await;
    assert_eq!(r.path, "/api/42/envelope/");
    assert!(r.header("x-sentry-auth").unwrap().contains(&format!("sentry_key={KEY}")));
    assert!(r.header("x-sentry-auth").unwrap().contains("sentry.python/"));
    let env = sentry_sidecar::protocol::Envelope::parse(r.body.clone()).expect("a valid envelope");
    assert_eq!(env.items[0].ty.name(), "event");
    let exc = up
        .received()
        .into_iter()
        .find(|r| contains(&r.body, "ZeroDivisionError"))
        .expect("the exception event arrived too");
    assert!(contains(&exc.body, "\"stacktrace\""));
    assert!(!py_log.contains("Unexpected status code"), "the SDK saw no error: {py_log}");

    let r = find("marker-raven").await;
    assert_eq!(r.path, "/api/42/store/");
    assert!(r.header("x-sentry-auth").unwrap().contains("raven-python/"));
    let ev: serde_json::Value = serde_json::from_slice(&r.body).expect("raven's zlib body arrives as the event JSON");
    assert_eq!(ev["message"], "marker-raven");

    let r = find("marker-node-sdk").await;
    assert!(r.path.starts_with(&format!("/api/42/envelope/?sentry_version=7&sentry_key={KEY}")), "{}", r.path);
    assert!(r.header("user-agent").unwrap().starts_with("sentry.javascript.node/"));
    let env = sentry_sidecar::protocol::Envelope::parse(r.body.clone()).unwrap();
    assert!(env.items.iter().any(|i| i.ty.name() == "event"));

    // Every request the SDKs made reached the one TLS connection.
    assert_eq!(distinct_conns(&up.received()), 1);
    sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_in_capture_mode() {
    ensure_sdks();
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(test_config(dir.path())).await;
    let dsn = format!("http://{KEY}@127.0.0.1:{}/42", sidecar.local_addr().port());
    let mut py = python();
    py.args(["-c", PY_SENTRY_SDK, &dsn, "marker-captured"]);
    run(py).await;
    let path = dir.path().join("spool/capture.jsonl");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.contains("marker-captured") {
            let line: serde_json::Value =
                serde_json::from_str(text.lines().find(|l| l.contains("marker-captured")).unwrap()).unwrap();
            assert_eq!(line["project"], 42);
            assert_eq!(line["public_key"], KEY);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not captured: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sidecar.shutdown().await;
}
