#![allow(missing_docs, unreachable_pub)]
//! The sidecar holds against a hostile client, on real sockets: every phase of a connection has a
//! time limit, the connection cap makes room from idle connections and otherwise answers 503 at
//! once while `/healthz` stays answered, a brotli bomb does not stall the runtime, and input
//! Sentry would refuse (bad keys, disagreeing credentials, dot segments, odd transfer codings) is
//! refused here. An unknown ingest path gets the upstream's own answer.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use sentry_sidecar::config::Config;
use sentry_sidecar::protocol::Dsn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn assert_refused(r: &Resp, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["detail"].as_str().is_some_and(|d| !d.is_empty()), "{what}: no detail");
    assert!(r.header("x-sentry-error").is_some(), "{what}: no X-Sentry-Error");
}

/// Short limits so that each test runs in a few seconds.
fn quick(dir: &std::path::Path) -> Config {
    let mut c = test_config(dir);
    c.header_read_timeout = Duration::from_secs(1);
    c.body_read_timeout = Duration::from_secs(1);
    c.keep_alive_timeout = Duration::from_secs(1);
    c
}

/// Whether the peer closes `s` within `secs` (EOF or reset), reading and discarding what comes.
async fn closed_within(s: &mut TcpStream, secs: u64) -> bool {
    let mut buf = [0u8; 4096];
    let read_to_end = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(secs), read_to_end).await.is_ok()
}

/// One keep-alive request on `s`, answer read.
async fn keep_alive_request(s: &mut TcpStream, path: &str, body: &[u8]) -> Resp {
    let (k, v) = auth_header();
    let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\n{k}: {v}\r\nContent-Length: {}\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    read_response(s).await
}

/// A connection that sent its headers and one byte of a 100-byte body, and then stalls.
async fn stalled_body(addr: std::net::SocketAddr) -> TcpStream {
    let (k, v) = auth_header();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!("POST /api/42/envelope/ HTTP/1.1\r\nHost: x\r\n{k}: {v}\r\nContent-Length: 100\r\n\r\n{{");
    s.write_all(head.as_bytes()).await.unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_answered_408_and_closed() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(quick(dir.path())).await;
    let mut s = stalled_body(sidecar.local_addr()).await;
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(10), read_response(&mut s)).await.expect("answered");
    assert_refused(&r, 408, "stalled body");
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(closed_within(&mut s, 5).await, "the connection is closed after the 408");
    let m = metrics_text(sidecar.local_addr()).await;
    assert!(metric_value(&m, r#"sidecar_rejected_total{endpoint="envelope",reason="body_timeout"}"#) >= 1.0, "{m}");
    sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_below_the_minimum_rate_is_answered_408() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = quick(dir.path());
    cfg.body_read_timeout = Duration::from_millis(600);
    cfg.body_min_rate = 1000;
    let sidecar = start(cfg).await;
    let (k, v) = auth_header();
    let mut s = TcpStream::connect(sidecar.local_addr()).await.unwrap();
    let head = format!("POST /api/42/envelope/ HTTP/1.1\r\nHost: x\r\n{k}: {v}\r\nContent-Length: 1000\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    // A byte every 300 ms: never silent for the stall timeout, but far below 1000 bytes/s.
    let trickle = async {
        for _ in 0..40 {
            if s.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), trickle).await;
    let r = tokio::time::timeout(Duration::from_secs(5), read_response(&mut s)).await.expect("answered");
    assert_refused(&r, 408, "trickled body");
    sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_headers_and_idle_keep_alive_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(quick(dir.path())).await;
    let addr = sidecar.local_addr();

    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(b"POST /api/42/envelope/ HTTP/1.1\r\nHost: x\r\nX-Sentry-").await.unwrap();
    assert!(closed_within(&mut half, 5).await, "stalled headers are closed");

    let mut silent = TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(&mut silent, 5).await, "a connection that never sends is closed");

    let mut idle = TcpStream::connect(addr).await.unwrap();
    let (_, body) = error_envelope("keep-alive");
    assert_eq!(keep_alive_request(&mut idle, "/api/42/envelope/", &body).await.status, 200);
    let started = Instant::now();
    assert!(closed_within(&mut idle, 5).await, "an idle keep-alive connection is closed");
    assert!(started.elapsed() >= Duration::from_millis(500), "not before the keep-alive timeout");

    // The sidecar still serves.
    assert_eq!(post_envelope(addr, &body).await.status, 200);
    sidecar.shutdown().await;
}

/// The header limit is not the keep-alive limit: an idle connection lives for `keep_alive_timeout`
/// even when that is longer than `header_read_timeout` (hyper's header timer alone closed it at
/// the header limit), while a stalled head on another connection is still closed at its limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_lasts_its_own_limit_while_stalled_headers_keep_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = quick(dir.path());
    cfg.keep_alive_timeout = Duration::from_secs(4);
    let sidecar = start(cfg).await;
    let addr = sidecar.local_addr();
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let (_, body) = error_envelope("keep-alive");
    assert_eq!(keep_alive_request(&mut idle, "/api/42/envelope/", &body).await.status, 200);
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(b"POST /api/42/envelope/ HTTP/1.1\r\nHost: x\r\nX-Sentry-").await.unwrap();
    assert!(closed_within(&mut half, 3).await, "a stalled head is closed at the header limit");
    // Past twice the header limit the idle connection is open and still serves.
    assert!(!closed_within(&mut idle, 1).await, "closed before the keep-alive limit");
    assert_eq!(keep_alive_request(&mut idle, "/api/42/envelope/", &body).await.status, 200);
    assert!(closed_within(&mut idle, 8).await, "an idle keep-alive connection is closed");
    let m = metrics_text(addr).await;
    assert!(metric_value(&m, r#"sidecar_rejected_total{endpoint="other",reason="header_timeout"}"#) >= 1.0, "{m}");
    sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_idle_connections_make_room_then_newcomers_get_503_and_healthz_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.max_connections = 3;
    cfg.keep_alive_timeout = Duration::from_secs(60);
    cfg.header_read_timeout = Duration::from_secs(60);
    cfg.body_read_timeout = Duration::from_secs(60);
    let sidecar = start(cfg).await;
    let addr = sidecar.local_addr();
    let (_, body) = error_envelope("cap");

    // Three idle keep-alive connections fill the cap.
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        assert_eq!(keep_alive_request(&mut s, "/api/42/envelope/", &body).await.status, 200);
        idle.push(s);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A fourth is served: the longest idle one is closed to make room.
    assert_eq!(post_envelope(addr, &body).await.status, 200);
    assert!(closed_within(&mut idle[0], 5).await, "the oldest idle connection was evicted");

    // Three uploads in flight take every slot; busy connections are never evicted.
    let mut busy = Vec::new();
    for _ in 0..3 {
        busy.push(stalled_body(addr).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(5), post_envelope(addr, &body)).await.expect("answered at once");
    assert_refused(&r, 503, "over the cap");
    assert!(r.header("retry-after").is_some());
    assert!(started.elapsed() < Duration::from_secs(3), "answered, not left in the backlog");

    // The probes are still answered.
    for path in ["/healthz", "/metrics"] {
        let r = tokio::time::timeout(Duration::from_secs(5), request(addr, "GET", path, &[], b"")).await.unwrap();
        assert_eq!(r.status, 200, "{path} past the cap");
    }
    let m = String::from_utf8(request(addr, "GET", "/metrics", &[], b"").await.body).unwrap();
    assert!(metric_value(&m, r#"sidecar_rejected_total{endpoint="other",reason="connection_limit"}"#) >= 1.0);
    drop(busy);
    sidecar.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_brotli_bomb_does_not_stall_healthz() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(test_config(dir.path())).await;
    let addr = sidecar.local_addr();
    // 809 bytes that decode to 1 GiB of zeros; the decoded limit (100 MiB) stops each one.
    let bomb: &'static [u8] = include_bytes!("data/zeros_1gib.br");
    let (k, v) = auth_header();
    let bombs: Vec<_> = (0..6)
        .map(|_| {
            let v = v.clone();
            tokio::spawn(async move {
                request(addr, "POST", "/api/42/envelope/", &[(k, v.as_str()), ("Content-Encoding", "br")], bomb).await
            })
        })
        .collect();
    let probes = tokio::spawn(async move {
        let mut slowest = Duration::ZERO;
        for _ in 0..20 {
            let t = Instant::now();
            let r = request(addr, "GET", "/healthz", &[], b"").await;
            assert_eq!(r.status, 200);
            slowest = slowest.max(t.elapsed());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        slowest
    });
    for b in bombs {
        assert_refused(&b.await.unwrap(), 413, "brotli bomb");
    }
    let slowest = probes.await.unwrap();
    // Only a liveness bound: decoding runs on other threads, so probes never wait for a bomb.
    assert!(slowest < Duration::from_secs(2), "slowest /healthz took {slowest:?}");
    sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_must_be_32_hex_characters_and_sources_must_agree() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(test_config(dir.path())).await;
    let addr = sidecar.local_addr();
    let (_, body) = error_envelope("keys");
    let other = "ffffffffffffffffffffffffffffffff";
    let header = |k: &str| format!("Sentry sentry_key={k}, sentry_version=7");

    for (what, key) in [
        ("short", "abc"),
        ("31 chars", &KEY[..31]),
        ("not hex", "0123456789abcdef0123456789abcdeg"),
        ("33 chars", &format!("{KEY}0")[..]),
    ] {
        let r = request(addr, "POST", "/api/42/envelope/", &[("X-Sentry-Auth", &header(key))], &body).await;
        assert_refused(&r, 401, what);
    }
    let crlf = format!("/api/42/envelope/?sentry_key={}%0d%0a{}", &KEY[..15], &KEY[..15]);
    assert_refused(&request(addr, "POST", &crlf, &[], &body).await, 401, "CR/LF in the key");
    let bad_dsn = "{\"dsn\":\"https://nothex@o1.ingest.sentry.io/42\"}\n{\"type\":\"event\"}\n{\"message\":\"x\"}";
    assert_refused(&request(addr, "POST", "/api/42/envelope/", &[], bad_dsn.as_bytes()).await, 401, "dsn key");
    assert_refused(&request(addr, "POST", "/api/42/unreal/abcdef/", &[], b"crash").await, 401, "path key");

    // Agreeing sources are fine.
    let q = format!("/api/42/envelope/?sentry_key={KEY}&sentry_version=7");
    let ok = |r: Resp, what: &str| assert_eq!(r.status, 200, "{what}: {}", String::from_utf8_lossy(&r.body));
    ok(request(addr, "POST", &q, &[("X-Sentry-Auth", &header(KEY))], &body).await, "header and query");
    ok(
        request(
            addr,
            "POST",
            "/api/42/envelope/",
            &[("X-Sentry-Auth", &header(KEY)), ("X-Sentry-Auth", &header(KEY)), ("Authorization", &header(KEY))],
            &body,
        )
        .await,
        "two X-Sentry-Auth and Authorization, one key",
    );
    let with_dsn = format!("{{\"dsn\":\"https://{KEY}@o1.ingest.sentry.io/42\"}}\n{{\"type\":\"event\"}}\n{{}}");
    ok(request(addr, "POST", &q, &[], with_dsn.as_bytes()).await, "query and envelope dsn");

    // Disagreeing ones are not.
    for (what, path, headers) in [
        ("two X-Sentry-Auth", "/api/42/envelope/".to_owned(), vec![header(KEY), header(other)]),
        ("header and query", format!("/api/42/envelope/?sentry_key={other}"), vec![header(KEY)]),
    ] {
        let hs: Vec<(&str, &str)> = headers.iter().map(|h| ("X-Sentry-Auth", h.as_str())).collect();
        assert_refused(&request(addr, "POST", &path, &hs, &body).await, 401, what);
    }
    let auth = [("Authorization", header(other))];
    let auth: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = request(addr, "POST", "/api/42/envelope/", &auth, with_dsn.as_bytes()).await;
    assert_refused(&r, 401, "Authorization and envelope dsn");

    let m = metrics_text(addr).await;
    for reason in ["invalid_key", "auth_conflict"] {
        let series = format!(r#"sidecar_rejected_total{{endpoint="envelope",reason="{reason}"}}"#);
        assert!(metric_value(&m, &series) >= 1.0, "{series}");
    }
    sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_and_odd_transfer_codings_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(test_config(dir.path())).await;
    let addr = sidecar.local_addr();
    let (k, v) = auth_header();
    let (_, body) = error_envelope("dots");
    for path in ["/api/7/../../metrics", "/api/42/%2e%2e/%2E%2E/metrics", "/api/42/./envelope/"] {
        assert_refused(&request(addr, "POST", path, &[(k, &v)], &body).await, 400, path);
    }
    let m = metrics_text(addr).await;
    assert!(metric_value(&m, r#"sidecar_rejected_total{endpoint="other",reason="dot_segment"}"#) >= 3.0);

    let chunked = |te: &str| {
        format!(
            "POST /api/42/envelope/ HTTP/1.1\r\nHost: x\r\n{k}: {v}\r\nTransfer-Encoding: {te}\r\nConnection: close\r\n\r\n{:x}\r\n{}\r\n0\r\n\r\n",
            body.len(),
            String::from_utf8_lossy(&body)
        )
    };
    assert_refused(&raw(addr, chunked("gzip, chunked").as_bytes()).await, 501, "gzip, chunked");
    // hyper itself refuses a coding list that does not end in chunked.
    assert_eq!(raw(addr, chunked("chunked, gzip").as_bytes()).await.status, 400);
    assert_eq!(raw(addr, chunked("chunked").as_bytes()).await.status, 200);
    sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_path_is_passed_through_with_the_upstreams_answer() {
    let pki = Pki::new();
    let up = Upstream::start_with(
        &pki,
        true,
        Arc::new(|r: &Received, _| match r.path.as_str() {
            p if p.starts_with("/api/42/something/new/") => (404, vec![("x-sentry-error", "no such endpoint".into())]),
            _ => (202, vec![]),
        }),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(upstream_config(dir.path(), &pki, &up)).await;
    let addr = sidecar.local_addr();
    let (k, v) = auth_header();

    let r = request(addr, "POST", "/api/42/something/new/?x=1", &[(k, &v)], b"{}").await;
    assert_eq!(r.status, 404, "the upstream's own status");
    assert_eq!(r.header("x-sentry-error"), Some("no such endpoint"));
    assert!(String::from_utf8_lossy(&r.body).contains("\"id\""), "the upstream's own body");
    let r = request(addr, "GET", "/api/42/other/thing/", &[(k, &v)], b"").await;
    assert_eq!(r.status, 202);
    assert_eq!(up.attempts.load(std::sync::atomic::Ordering::SeqCst), 2, "sent once each, at once");
    assert!(sidecar.spool().is_empty(), "nothing spooled");
    sidecar.shutdown().await;

    // The upstream down: 502 with a detail.
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(config_for_port(dir.path(), &pki, dead_port().await)).await;
    let r = request(sidecar.local_addr(), "POST", "/api/42/something/new/", &[(k, &v)], b"{}").await;
    assert_refused(&r, 502, "upstream down");
    sidecar.shutdown().await;

    // Capture mode has nowhere to pass it: 404.
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(test_config(dir.path())).await;
    let r = request(sidecar.local_addr(), "POST", "/api/42/something/new/", &[(k, &v)], b"{}").await;
    assert_refused(&r, 404, "capture mode");
    sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tunnel_forwards_x_forwarded_for_only_when_it_is_an_address() {
    let pki = Pki::new();
    let up = Upstream::start(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.ca_file = Some(pki.ca_file.clone());
    let allowed = format!("https://{KEY}@127.0.0.1:{}/42", up.addr.port());
    cfg.tunnel_allow = vec![Dsn::parse(&allowed).unwrap()];
    let sidecar = start(cfg).await;
    let addr = sidecar.local_addr();
    let body = format!("{{\"dsn\":\"{allowed}\"}}\n{{\"type\":\"event\"}}\n{{\"message\":\"x\"}}");
    for xff in ["203.0.113.7, 10.0.0.1", "not-an-ip\r", "<script>, 203.0.113.9"] {
        let xff = xff.trim_end_matches('\r');
        let r = request(addr, "POST", "/tunnel", &[("X-Forwarded-For", xff)], body.as_bytes()).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    let got = up.wait_for(3, 10).await;
    let mut seen: Vec<_> = got.iter().map(|g| g.header("x-sentry-forwarded-for").unwrap_or("").to_owned()).collect();
    seen.sort();
    assert_eq!(seen, ["127.0.0.1", "127.0.0.1", "203.0.113.7"]);
    sidecar.shutdown().await;
}
