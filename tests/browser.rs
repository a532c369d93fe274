#![allow(missing_docs, unreachable_pub)]
//! The tunnel and CORS exist for browsers, so they are tested in one: Debian's chromium, driven by
//! npm playwright-core (tests/browser/drive.js), opens a page served from another origin (a port of
//! its own) that loads the real @sentry/browser and sends an exception, through the tunnel and with
//! a DSN pointing straight at the sidecar, with and without a header that makes the browser
//! preflight. The events must reach the TLS upstream intact, and a DSN off the tunnel's allow-list
//! must be refused in the browser too (a readable 403, not an opaque CORS failure).
//! chromium and the npm packages are installed by tests/sdk/browser.sh (run here if needed; .ci/run
//! runs it up front); where chromium cannot be installed the test says it skipped and why.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use sentry_sidecar::protocol::{Dsn, Envelope};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const CHROMIUM: &str = "/usr/bin/chromium";

fn browser_dir() -> PathBuf {
    std::env::var_os("SDK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/sdk"))
        .join("browser")
}

/// Installs the browser peers if needed; `Err(why)` when the test cannot run here.
fn ensure_browser() -> Result<(), String> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/browser.sh");
    let out = Command::new("bash").arg(script).output().expect("bash runs");
    assert!(
        out.status.success(),
        "installing playwright-core and @sentry/browser failed (needs npm):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if !Path::new(CHROMIUM).exists() {
        return Err(format!("{CHROMIUM} is missing and could not be installed (Debian: apt-get install chromium)"));
    }
    for needed in ["node_modules/playwright-core", "sentry.bundle.js"] {
        assert!(browser_dir().join(needed).exists(), "tests/sdk/browser.sh left no {needed}");
    }
    Ok(())
}

/// The page's origin: a tiny HTTP/1.1 server on a port of its own, serving the test page and the
/// SDK bundle, so every request to the sidecar is cross-origin.
async fn serve_page() -> (u16, tokio::task::JoinHandle<()>) {
    let page = std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/page.html")).unwrap();
    let bundle = std::fs::read(browser_dir().join("sentry.bundle.js")).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (page, bundle) = (page.clone(), bundle.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&head);
                let path = line.split(' ').nth(1).unwrap_or("/");
                let (status, ty, body) = match path.split('?').next() {
                    Some("/") => ("200 OK", "text/html; charset=utf-8", page),
                    Some("/sentry.bundle.js") => ("200 OK", "text/javascript", bundle),
                    // No favicon: 204 keeps a 404 line out of the console the test reads.
                    _ => ("204 No Content", "text/plain", Vec::new()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: {ty}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&body).await;
            });
        }
    });
    (port, task)
}

/// One page load: its name, and the query the page reads (dsn, tunnel, marker, preflight).
struct Case {
    name: &'static str,
    marker: String,
    dsn: String,
    tunnel: Option<String>,
    preflight: bool,
}

impl Case {
    fn url(&self, page_port: u16) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("dsn", &self.dsn).append_pair("marker", &self.marker);
        if let Some(t) = &self.tunnel {
            q.append_pair("tunnel", t);
        }
        if self.preflight {
            q.append_pair("preflight", "1");
        }
        format!("http://127.0.0.1:{page_port}/?{}", q.finish())
    }
}

/// Runs chromium over every case in one browser; returns what each page saw, by case name.
async fn drive(cases: &[Case], page_port: u16) -> Vec<Value> {
    let profile = tempfile::tempdir().unwrap();
    let cfg = serde_json::json!({
        "executablePath": CHROMIUM,
        "userDataDir": profile.path(),
        "timeoutMs": 25_000,
        "cases": cases.iter().map(|c| serde_json::json!({"name": c.name, "url": c.url(page_port)})).collect::<Vec<_>>(),
    });
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/drive.js");
    let mut cmd = Command::new("node");
    cmd.env("NODE_PATH", browser_dir().join("node_modules")).arg(script).arg(cfg.to_string());
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("node starts")).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "drive.js failed: {stderr}");
    let seen: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("drive.js printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    seen.as_array().unwrap().clone()
}

/// Requests the page made to the sidecar with `method` (preflights are `OPTIONS`).
fn to_sidecar<'a>(seen: &'a Value, sidecar_port: u16, method: &str) -> Vec<&'a Value> {
    let prefix = format!("http://127.0.0.1:{sidecar_port}/");
    seen["network"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["method"] == method && r["url"].as_str().is_some_and(|u| u.starts_with(&prefix)))
        .collect()
}

/// The page's console lines of `ty` (`error`, `warning`, ...).
fn console(seen: &Value, ty: &str) -> Vec<String> {
    seen["console"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["type"] == ty)
        .filter_map(|l| l["text"].as_str())
        .map(str::to_owned)
        .collect()
}

/// Console lines where the browser reports a blocked cross-origin request or a failed fetch.
fn cors_errors(seen: &Value) -> Vec<String> {
    ["error", "warning"]
        .iter()
        .flat_map(|ty| console(seen, ty))
        .filter(|t| t.contains("CORS") || t.contains("Access-Control") || t.contains("Failed to fetch"))
        .collect()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// The exception message of the event item in an envelope.
fn exception_value(env: &Envelope) -> Option<String> {
    let item = env.items.iter().find(|i| i.ty.name() == "event")?;
    let event: Value = serde_json::from_slice(&env.bytes[item.payload.clone()]).ok()?;
    assert_eq!(event["platform"], "javascript");
    assert_eq!(event["sdk"]["name"], "sentry.javascript.browser");
    event["exception"]["values"][0]["value"].as_str().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_reaches_the_upstream_through_the_tunnel_and_directly_and_is_refused_off_the_allow_list() {
    if let Err(why) = ensure_browser() {
        println!("skipped: {why}");
        return;
    }
    let pki = Pki::new();
    let up = Upstream::start(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = upstream_config(dir.path(), &pki, &up);
    let allowed = format!("https://{KEY}@127.0.0.1:{}/42", up.addr.port());
    cfg.tunnel_allow = vec![Dsn::parse(&allowed).unwrap()];
    let tunnel_path = cfg.tunnel_path.clone();
    let sidecar = start(cfg).await;
    let port = sidecar.local_addr().port();
    let (page_port, page_server) = serve_page().await;
    let page_origin = format!("http://127.0.0.1:{page_port}");

    let id = format!("{:032x}", fastrand::u128(..));
    let tunnel = Some(format!("http://127.0.0.1:{port}{tunnel_path}"));
    let direct = format!("http://{KEY}@127.0.0.1:{port}/42");
    let denied = format!("https://{KEY}@127.0.0.1:{}/43", up.addr.port());
    let case = |name, dsn: &str, tunnel: &Option<String>, preflight| Case {
        name,
        marker: format!("browser-{name}-{id}"),
        dsn: dsn.to_owned(),
        tunnel: tunnel.clone(),
        preflight,
    };
    let cases = [
        case("tunnel", &allowed, &tunnel, false),
        case("tunnel-preflight", &allowed, &tunnel, true),
        case("direct", &direct, &None, false),
        case("direct-preflight", &direct, &None, true),
        case("denied", &denied, &tunnel, false),
    ];
    let results = drive(&cases, page_port).await;
    assert_eq!(results.len(), cases.len());

    for (c, seen) in cases.iter().zip(&results) {
        assert_eq!(seen["name"], c.name);
        assert!(seen["error"].is_null(), "{}: the page never finished: {seen:#}", c.name);
        let sends = seen["done"]["sends"].as_array().unwrap();
        assert!(!sends.is_empty(), "{}: the SDK sent nothing: {seen:#}", c.name);
        assert!(cors_errors(seen).is_empty(), "{}: CORS errors in the page: {:#?}", c.name, cors_errors(seen));
        let posts = to_sidecar(seen, port, "POST");
        assert!(!posts.is_empty(), "{}: no POST to the sidecar: {seen:#}", c.name);
        for p in &posts {
            assert_eq!(p["headers"]["access-control-allow-origin"], "*", "{}: {p:#}", c.name);
        }
        let preflights = to_sidecar(seen, port, "OPTIONS");
        if c.preflight {
            assert!(!preflights.is_empty(), "{}: the browser sent no preflight: {seen:#}", c.name);
            for p in &preflights {
                assert_eq!(p["status"], 200, "{}: preflight answered {p:#}", c.name);
                assert!(p["failed"].is_null(), "{}: preflight failed: {p:#}", c.name);
            }
        }
        let expect = if c.name == "denied" { 403 } else { 200 };
        for s in sends {
            assert_eq!(s["status"], expect, "{}: the SDK saw {s}", c.name);
        }
        for p in &posts {
            assert_eq!(p["status"], expect, "{}: {p:#}", c.name);
        }
        assert_eq!(seen["done"]["flushed"], true, "{}: {seen:#}", c.name);
        let errors = console(seen, "error");
        if c.name == "denied" {
            // The refusal is readable in the page (CORS headers on the error answer): the browser
            // logs the 403 and the SDK reports it, instead of an opaque network failure.
            assert!(errors.iter().all(|e| e.contains("status of 403")), "{errors:#?}");
            let warned = console(seen, "warning").iter().any(|w| w.contains("status code 403"));
            assert!(warned, "the SDK reported the 403: {seen:#}");
            for p in &posts {
                assert_eq!(p["headers"]["x-sentry-error"], "dsn is not allowed by this tunnel", "{p:#}");
            }
        } else {
            assert!(errors.is_empty(), "{}: errors in the page: {errors:#?}", c.name);
        }
    }

    // Each allowed event arrives once, intact, where its DSN says.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for c in cases.iter().filter(|c| c.name != "denied") {
        let r = loop {
            if let Some(r) = up.received().into_iter().find(|r| contains(&r.body, &c.marker)) {
                break r;
            }
            assert!(tokio::time::Instant::now() < deadline, "{}: {} never arrived upstream", c.name, c.marker);
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let env = Envelope::parse(r.body.clone()).expect("an intact envelope");
        assert_eq!(exception_value(&env).as_deref(), Some(c.marker.as_str()), "{}", c.name);
        assert!(r.header("user-agent").is_some_and(|ua| ua.contains("Chrome/")), "{}: {:?}", c.name, r.headers);
        if c.tunnel.is_some() {
            assert_eq!(r.path, format!("/api/42/envelope/?sentry_key={KEY}&sentry_version=7"), "{}", c.name);
            assert_eq!(env.dsn.as_deref(), Some(allowed.as_str()), "{}", c.name);
            assert_eq!(r.header("origin"), Some(page_origin.as_str()), "{}", c.name);
        } else {
            assert!(
                r.path.starts_with(&format!("/api/42/envelope/?sentry_version=7&sentry_key={KEY}")),
                "{}: {}",
                c.name,
                r.path
            );
        }
        let copies = up.received().iter().filter(|r| contains(&r.body, &c.marker)).count();
        assert_eq!(copies, 1, "{}: delivered once", c.name);
    }

    // The refused DSN's envelopes reached no upstream.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let denied_marker = &cases[4].marker;
    for r in up.received() {
        assert!(!contains(&r.body, denied_marker), "a refused envelope reached the upstream: {}", r.path);
        assert!(!r.path.starts_with("/api/43/"), "project 43 is not on the allow-list: {}", r.path);
    }

    page_server.abort();
    sidecar.shutdown().await;
}
