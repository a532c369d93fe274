#![allow(missing_docs, unreachable_pub)]
//! Each class of bad input gets the right status, a short JSON `detail`, `X-Sentry-Error` and CORS
//! headers, is counted in a metric, and leaves the sidecar working for the next request.

mod common;

use common::*;
use std::io::Write;

async fn sidecar_with_small_limits(dir: &std::path::Path) -> sentry_sidecar::Running {
    let mut cfg = test_config(dir);
    cfg.max_request_bytes = 64 * 1024;
    cfg.max_decoded_bytes = 256 * 1024;
    start(cfg).await
}

fn assert_error(r: &Resp, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", String::from_utf8_lossy(&r.body));
    let detail = r.json()["detail"].as_str().unwrap_or_else(|| panic!("{what}: no detail")).to_owned();
    assert!(!detail.is_empty(), "{what}");
    assert!(r.header("x-sentry-error").is_some(), "{what}: X-Sentry-Error missing");
    assert_eq!(r.header("access-control-allow-origin"), Some("*"), "{what}: CORS");
    assert!(r.header("access-control-expose-headers").unwrap_or("").contains("x-sentry-rate-limits"), "{what}");
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_class_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = sidecar_with_small_limits(dir.path()).await;
    let addr = sidecar.local_addr();
    let (ak, av) = auth_header();
    let auth = [(ak, av.as_str())];
    let (_, good) = error_envelope("good");

    // 400: malformed envelopes of every kind.
    for (what, body) in [
        ("header not JSON", b"not json\n".to_vec()),
        ("item header not JSON", b"{}\nnope\n".to_vec()),
        ("item without type", b"{}\n{\"length\":2}\n{}\n".to_vec()),
        ("length past the end", b"{}\n{\"type\":\"event\",\"length\":999}\n{}\n".to_vec()),
        ("bad event_id", b"{\"event_id\":\"xyz\"}\n".to_vec()),
        ("two events", b"{}\n{\"type\":\"event\"}\n{}\n{\"type\":\"event\"}\n{}".to_vec()),
        ("empty body", Vec::new()),
    ] {
        let r = request(addr, "POST", "/api/42/envelope/", &auth, &body).await;
        assert_error(&r, 400, what);
    }

    // 401: no auth, and auth from two places with different keys (the same key twice is fine:
    // see tests/hardened.rs).
    assert_error(&request(addr, "POST", "/api/42/envelope/", &[], &good).await, 401, "no auth");
    assert_error(
        &request(
            addr,
            "POST",
            "/api/42/envelope/?sentry_key=ffffffffffffffffffffffffffffffff&sentry_version=7",
            &auth,
            &good,
        )
        .await,
        401,
        "two auth sources that disagree",
    );
    assert_error(
        &request(addr, "POST", "/api/42/envelope/", &[("X-Sentry-Auth", "Sentry sentry_version=7")], &good).await,
        401,
        "auth without key",
    );
    assert_error(
        &request(
            addr,
            "POST",
            "/api/42/envelope/",
            &[("X-Sentry-Auth", "Sentry sentry_key=k, sentry_version=8")],
            &good,
        )
        .await,
        400,
        "protocol version above 7",
    );

    // 404 and 405 and bad project ids.
    assert_error(&request(addr, "POST", "/nothing/here", &auth, &good).await, 404, "unknown route");
    assert_error(&request(addr, "GET", "/api/42/envelope/", &auth, b"").await, 405, "GET on envelope");
    assert_error(&request(addr, "POST", "/api/abc/envelope/", &auth, &good).await, 400, "non-numeric project");
    assert_error(&request(addr, "POST", "/tunnel", &[], &good).await, 404, "tunnel off without allow-list");

    // 413: too large on the wire, a zip bomb, an oversized event item, an oversized store event.
    let big = vec![b'x'; 65 * 1024];
    assert_error(&request(addr, "POST", "/api/42/envelope/", &auth, &big).await, 413, "wire limit");
    let bomb = gzip(&vec![b' '; 10 * 1024 * 1024]);
    assert!(bomb.len() < 64 * 1024);
    let gz = [(ak, av.as_str()), ("Content-Encoding", "gzip")];
    assert_error(&request(addr, "POST", "/api/42/envelope/", &gz, &bomb).await, 413, "zip bomb");
    let mut huge_report = b"{}\n{\"type\":\"client_report\"}\n".to_vec();
    huge_report.extend(vec![b'a'; 5000]);
    assert_error(&request(addr, "POST", "/api/42/envelope/", &auth, &huge_report).await, 413, "item limit");

    // 400/415: broken or unknown encodings.
    assert_error(&request(addr, "POST", "/api/42/envelope/", &gz, b"definitely not gzip").await, 400, "corrupt gzip");
    let br = [(ak, av.as_str()), ("Content-Encoding", "br")];
    assert_error(&request(addr, "POST", "/api/42/envelope/", &br, b"\xff\xfe\xfd\xfc").await, 400, "corrupt br");
    let lzw = [(ak, av.as_str()), ("Content-Encoding", "compress")];
    assert_error(&request(addr, "POST", "/api/42/envelope/", &lzw, &good).await, 415, "unknown encoding");

    // Store bodies that are neither JSON nor base64+zlib.
    assert_error(&request(addr, "POST", "/api/42/store/", &auth, b"%%% not base64").await, 400, "store garbage");
    assert_error(&request(addr, "POST", "/api/42/store/", &auth, b"aGVsbG8=").await, 400, "store base64 not zlib");
    assert_error(&request(addr, "POST", "/api/42/store/", &auth, b"{\"event_id\": 5}").await, 400, "store bad id");

    // A broken chunked stream.
    let broken = format!(
        "POST /api/42/envelope/ HTTP/1.1\r\nHost: x\r\n{ak}: {av}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"
    );
    let r = raw(addr, broken.as_bytes()).await;
    assert_eq!(r.status, 400, "broken chunked framing");

    // Still healthy, and the good request still goes through.
    let r = request(addr, "POST", "/api/42/envelope/", &auth, &good).await;
    assert_eq!(r.status, 200);
    // Exactly one envelope was accepted: it ends up captured, and nothing else does. (While it is
    // being written it is both in the spool and in the file, so the two are not summed.)
    eventually(10, "the good envelope captured", || sidecar.spool().is_empty() && captured_lines(dir.path()) >= 1)
        .await;
    assert_eq!(captured_lines(dir.path()), 1);

    let m = metrics_text(addr).await;
    for needle in [
        r#"sidecar_rejected_total{endpoint="envelope",reason="invalid_envelope"}"#,
        r#"sidecar_rejected_total{endpoint="envelope",reason="auth"}"#,
        r#"sidecar_rejected_total{endpoint="envelope",reason="too_large"}"#,
        r#"sidecar_rejected_total{endpoint="envelope",reason="corrupt_body"}"#,
        r#"sidecar_rejected_total{endpoint="envelope",reason="encoding"}"#,
        r#"sidecar_rejected_total{endpoint="store",reason="invalid_store"}"#,
        r#"sidecar_rejected_total{endpoint="other",reason="not_found"}"#,
        r#"sidecar_requests_total{endpoint="envelope",status="413"}"#,
    ] {
        assert!(m.contains(needle), "metrics lack {needle}:\n{m}");
    }
    sidecar.shutdown().await;
}

fn captured_lines(dir: &std::path::Path) -> u64 {
    std::fs::read_to_string(dir.join("spool/capture.jsonl")).map(|s| s.lines().count() as u64).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_and_headers() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(test_config(dir.path())).await;
    let addr = sidecar.local_addr();
    let r = request(
        addr,
        "OPTIONS",
        "/api/42/envelope/?sentry_key=abc",
        &[("Origin", "https://app.example"), ("Access-Control-Request-Method", "POST")],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert!(r.header("access-control-allow-methods").unwrap().contains("POST"));
    assert!(r.header("access-control-allow-headers").unwrap().contains("x-sentry-auth"));
    assert!(r.header("access-control-allow-headers").unwrap().contains("content-encoding"));
    assert_eq!(r.header("access-control-max-age"), Some("3600"));
    assert_eq!(r.header("access-control-expose-headers"), Some("x-sentry-error, x-sentry-rate-limits, retry-after"));

    let (_, body) = error_envelope("cors");
    let r = request(
        addr,
        "POST",
        &format!("/api/42/envelope/?sentry_key={KEY}&sentry_version=7"),
        &[("Content-Type", "text/plain;charset=UTF-8")],
        &body,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert!(r.header("access-control-expose-headers").is_some());
    sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_sources() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(test_config(dir.path())).await;
    let addr = sidecar.local_addr();
    let (_, body) = error_envelope("auth");
    let ok = |r: Resp, what: &str| assert_eq!(r.status, 200, "{what}: {}", String::from_utf8_lossy(&r.body));
    ok(
        request(addr, "POST", "/api/42/envelope/", &[("Authorization", &format!("Sentry sentry_key={KEY}"))], &body)
            .await,
        "Authorization",
    );
    ok(request(addr, "POST", &format!("/api/42/envelope/?sentry_key={KEY}"), &[], &body).await, "query");
    ok(
        request(
            addr,
            "POST",
            "/api/42/envelope/",
            &[("X-Sentry-Auth", &format!("sentry sentry_key={KEY},sentry_version=7.0"))],
            &body,
        )
        .await,
        "lowercase, 7.0",
    );
    let with_dsn =
        format!("{{\"dsn\":\"https://{KEY}@o1.ingest.sentry.io/42\"}}\n{{\"type\":\"event\"}}\n{{\"message\":\"x\"}}");
    ok(request(addr, "POST", "/api/42/envelope/", &[], with_dsn.as_bytes()).await, "envelope dsn");
    // A key in the path is a sentry_key like any other: 32 hex characters.
    ok(request(addr, "POST", &format!("/api/42/unreal/{KEY}/"), &[], b"crash").await, "key in the path");
    ok(request(addr, "GET", &format!("/api/42/cron/nightly/{KEY}/?status=ok"), &[], b"").await, "cron GET");
    sidecar.shutdown().await;
}
