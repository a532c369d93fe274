#![allow(missing_docs, unreachable_pub)]
//! The browser tunnel forwards only DSNs on the allow-list, to that DSN's host and project, with
//! query auth and the client's IP; everything else is refused.

mod common;

use common::*;
use sentry_sidecar::protocol::Dsn;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_forwards_allowed_dsns_only() {
    let pki = Pki::new();
    let up = Upstream::start(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.ca_file = Some(pki.ca_file.clone());
    let allowed = format!("https://{KEY}@127.0.0.1:{}/42", up.addr.port());
    cfg.tunnel_allow = vec![Dsn::parse(&allowed).unwrap()];
    cfg.tunnel_path = "/monitoring".into();
    let sidecar = start(cfg).await;
    let addr = sidecar.local_addr();

    let id = "9ec79c33ec9942ab8353589fcb2e04dc";
    let replay = b"\x00\x01binary\n\xff";
    let body = [
        format!("{{\"event_id\":\"{id}\",\"dsn\":\"{allowed}\",\"sent_at\":\"2026-11-26T04:49:13.358Z\"}}\n")
            .into_bytes(),
        format!("{{\"type\":\"replay_recording\",\"length\":{}}}\n", replay.len()).into_bytes(),
        replay.to_vec(),
        b"\n{\"type\":\"event\"}\n{\"message\":\"from the browser\"}".to_vec(),
    ]
    .concat();
    let headers = [
        ("Content-Type", "text/plain;charset=UTF-8"),
        ("Origin", "https://app.example"),
        ("Referer", "https://app.example/page"),
        ("User-Agent", "Mozilla/5.0 test"),
    ];
    let r = request(addr, "POST", "/monitoring", &headers, &body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["id"], id);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));

    let got = up.wait_for(1, 10).await;
    let g = &got[0];
    assert_eq!(&g.body[..], &body[..], "tunnel forwards the body byte for byte");
    assert_eq!(g.path, format!("/api/42/envelope/?sentry_key={KEY}&sentry_version=7"));
    assert_eq!(g.header("x-sentry-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(g.header("origin"), Some("https://app.example"));
    assert_eq!(g.header("referer"), Some("https://app.example/page"));
    assert_eq!(g.header("user-agent"), Some("Mozilla/5.0 test"));
    assert_eq!(g.header("content-type"), Some("application/x-sentry-envelope"));

    // Another host, another project, no dsn, garbage dsn: refused, nothing forwarded.
    for (dsn, status) in [
        (format!("https://{KEY}@evil.example/42"), 403),
        (format!("https://{KEY}@127.0.0.1:{}/43", up.addr.port()), 403),
        (format!("https://{KEY}@127.0.0.1:1/42"), 403),
        ("not a dsn".to_string(), 400),
    ] {
        let b = format!("{{\"dsn\":\"{dsn}\"}}\n{{\"type\":\"event\"}}\n{{}}");
        let r = request(addr, "POST", "/monitoring", &[], b.as_bytes()).await;
        assert_eq!(r.status, status, "{dsn}: {}", String::from_utf8_lossy(&r.body));
        assert!(r.json()["detail"].is_string());
    }
    let r = request(addr, "POST", "/monitoring", &[], b"{}\n{\"type\":\"event\"}\n{}").await;
    assert_eq!(r.status, 400, "no dsn");
    let r = request(addr, "GET", "/monitoring", &[], b"").await;
    assert_eq!(r.status, 405);
    let r = request(addr, "OPTIONS", "/monitoring", &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));

    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(up.attempts.load(std::sync::atomic::Ordering::SeqCst), 1, "refused envelopes never reach any upstream");
    sidecar.shutdown().await;
}
