#![allow(missing_docs, unreachable_pub)]
//! Delivery behaviour on real sockets: capture mode, transient failures retried with backoff,
//! permanent rejections dropped and counted, graceful shutdown.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;

/// The lines of the capture log of a sidecar whose spool is `dir/spool`, once there are `n` (or
/// what there is after 10 s).
async fn captured(dir: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    let path = dir.join("spool/capture.jsonl");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.lines().count() >= n || tokio::time::Instant::now() > deadline {
            return text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_mode_writes_every_envelope_locally() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(test_config(dir.path())).await;
    let addr = sidecar.local_addr();
    let f = load_fixture("01_sdk_error_br");
    assert_eq!(raw(addr, &f.wire(addr)).await.status, 200);
    let f = load_fixture("09_raven_store_deflate");
    assert_eq!(raw(addr, &f.wire(addr)).await.status, 200);
    let entries = captured(dir.path(), 2).await;
    assert_eq!(entries.len(), 2);
    let env = entries.iter().find(|e| e["endpoint"] == "envelope").unwrap();
    assert_eq!(env["project"], 42);
    let f01 = load_fixture("01_sdk_error_br").decoded();
    let header: serde_json::Value = serde_json::from_slice(f01.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(env["event_id"], header["event_id"]);
    assert_eq!(env["item_types"], serde_json::json!(["event"]));
    assert!(env["body"].as_str().unwrap().contains("ACCMARK"));
    let store = entries.iter().find(|e| e["endpoint"] == "store").unwrap();
    assert!(store["body"].as_str().unwrap().starts_with('{'));
    sidecar.shutdown().await;
}

/// A body over 1 MiB (kept in a file by ingest) is captured into a file of its own, decoded, and
/// the line names it: the capture sink never holds a large body in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_mode_writes_a_large_body_to_a_file_of_its_own() {
    use std::io::Write;
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(test_config(dir.path())).await;
    let addr = sidecar.local_addr();
    let id = format!("{:032x}", fastrand::u128(..));
    let payload: String = (0..3 << 20).map(|i| (b'a' + (i % 23) as u8) as char).collect();
    let body =
        format!("{{\"event_id\":\"{id}\"}}\n{{\"type\":\"attachment\",\"length\":{}}}\n{payload}\n", payload.len());
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(body.as_bytes()).unwrap();
    let wire = gz.finish().unwrap();
    let (k, v) = auth_header();
    let headers = [(k, v.as_str()), ("Content-Type", "application/x-sentry-envelope"), ("Content-Encoding", "gzip")];
    assert_eq!(request(addr, "POST", "/api/42/envelope/", &headers, &wire).await.status, 200);
    let entries = captured(dir.path(), 1).await;
    let entry = entries.first().expect("captured");
    assert!(entry.get("body").is_none() && entry.get("body_base64").is_none(), "the body is not in the line");
    assert_eq!(entry["bytes"], body.len());
    assert_eq!(entry["event_id"], id.as_str());
    let file = entry["body_file"].as_str().expect("the line names the body's file");
    assert!(file.contains("/captured/"), "{file}");
    assert_eq!(std::fs::read(file).unwrap(), body.as_bytes(), "decoded, byte for byte");
    sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_then_delivered_once() {
    let _serial = serial().await;
    let pki = Pki::new();
    // The first three attempts fail with 503, then everything succeeds.
    let up = Upstream::start_with(&pki, true, Arc::new(|_, n| if n < 3 { (503, vec![]) } else { (200, vec![]) })).await;
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(upstream_config(dir.path(), &pki, &up)).await;
    let metrics = Metrics::new(sidecar.local_addr()).await;
    let (id, body) = error_envelope("retry-me");
    assert_eq!(post_envelope(sidecar.local_addr(), &body).await.status, 200);
    let got = up.wait_for(1, 10).await;
    assert!(got[0].body.windows(id.len()).any(|w| w == id.as_bytes()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(up.received().len(), 1, "delivered exactly once");
    assert_eq!(up.attempts.load(Ordering::SeqCst), 4);
    assert_eq!(sidecar.spool().len(), 0);
    assert_eq!(metrics.delta(r#"sidecar_retries_total{reason="transient"}"#).await, 3.0);
    sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_for_good_is_dropped_and_counted() {
    let _serial = serial().await;
    let pki = Pki::new();
    let up =
        Upstream::start_with(&pki, true, Arc::new(|_, _| (400, vec![("x-sentry-error", "invalid event".to_string())])))
            .await;
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(upstream_config(dir.path(), &pki, &up)).await;
    let metrics = Metrics::new(sidecar.local_addr()).await;
    assert_eq!(post_envelope(sidecar.local_addr(), &error_envelope("bad").1).await.status, 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !sidecar.spool().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(up.attempts.load(Ordering::SeqCst), 1, "a 400 is never retried");
    assert_eq!(sidecar.spool().len(), 0);
    assert_eq!(metrics.delta(r#"sidecar_dropped_total{reason="upstream_rejected",category="error"}"#).await, 1.0);
    sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_is_retried_with_backoff_not_a_tight_loop() {
    let _serial = serial().await;
    let pki = Pki::new();
    // Nothing listens on the port until we start the upstream on it.
    let port = dead_port().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_for_port(dir.path(), &pki, port);
    cfg.retry_initial = Duration::from_millis(100);
    cfg.retry_max = Duration::from_millis(400);
    let sidecar = start(cfg).await;
    let metrics = Metrics::new(sidecar.local_addr()).await;
    assert_eq!(post_envelope(sidecar.local_addr(), &error_envelope("later").1).await.status, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let retries = metrics.delta(r#"sidecar_retries_total{reason="transient"}"#).await;
    // 1.5 s with delays of 50-100, 100-200, 200-400, 200-400 ms...: a handful, never hundreds.
    assert!((2.0..=15.0).contains(&retries), "retries in 1.5 s: {retries}");
    let up = Upstream::start_on(&pki, port).await;
    let got = up.wait_for(1, 10).await;
    assert_eq!(got.len(), 1);
    sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_separate_admin_listener() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    let sidecar = start(cfg).await;
    let admin = sidecar.admin_addr().unwrap();
    let r = request(admin, "GET", "/healthz", &[], b"").await;
    assert_eq!(r.status, 200);
    let r = request(admin, "GET", "/readyz", &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ready");
    let r = request(admin, "GET", "/metrics", &[], b"").await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    // Not on the ingest port when a separate admin listener is configured.
    let r = request(sidecar.local_addr(), "GET", "/metrics", &[], b"").await;
    assert_eq!(r.status, 404);
    assert_eq!(post_envelope(sidecar.local_addr(), &error_envelope("m").1).await.status, 200);
    let m = String::from_utf8(request(admin, "GET", "/metrics", &[], b"").await.body).unwrap();
    assert!(m.contains(r#"sidecar_accepted_total{endpoint="envelope"}"#), "{m}");
    assert!(m.contains(r#"sidecar_requests_total{endpoint="envelope",status="200"}"#), "{m}");
    assert!(metric_value(&m, "sidecar_spool_disk_bytes ") > 0.0, "the spool's files are measured: {m}");
    sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(test_config(dir.path())).await;
    let addr = sidecar.local_addr();
    // Start a request whose body arrives slowly, then shut down while it is in flight.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (_, body) = error_envelope("slow");
    let (k, v) = auth_header();
    let head =
        format!("POST /api/42/envelope/ HTTP/1.1\r\nHost: x\r\n{k}: {v}\r\nContent-Length: {}\r\n\r\n", body.len());
    use tokio::io::AsyncWriteExt;
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stop = tokio::spawn(sidecar.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(&body[10..]).await.unwrap();
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 200, "the in-flight request was finished");
    tokio::time::timeout(Duration::from_secs(5), stop).await.unwrap().unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "no longer accepting");
}

/// An HTTP/2 upstream that refuses (RST_STREAM REFUSED_STREAM) the first attempt of every
/// envelope and answers 200 to the second: refused requests were never processed, so they go
/// again at once, not after the retry backoff (set to a minute here), and the circuit stays shut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_streams_are_sent_again_at_once() {
    let _serial = serial().await;
    let pki = Pki::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
    let seen = Arc::new(std::sync::Mutex::new(std::collections::HashSet::<Vec<u8>>::new()));
    let acceptor = pki.acceptor(true);
    let (acc, seen2) = (accepted.clone(), seen.clone());
    let server = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, acc, seen) = (acceptor.clone(), acc.clone(), seen2.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let Ok(mut conn) = h2::server::handshake(tls).await else { return };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let (acc, seen) = (acc.clone(), seen.clone());
                    tokio::spawn(async move {
                        let mut body = req.into_body();
                        let mut bytes = Vec::new();
                        while let Some(Ok(chunk)) = body.data().await {
                            let _ = body.flow_control().release_capacity(chunk.len());
                            bytes.extend_from_slice(&chunk);
                        }
                        if seen.lock().unwrap().insert(bytes.clone()) {
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                        } else {
                            acc.lock().unwrap().push(bytes);
                            let _ = respond.send_response(http::Response::new(()), true);
                        }
                    });
                }
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_for_port(dir.path(), &pki, port);
    (cfg.retry_initial, cfg.retry_max) = (Duration::from_secs(60), Duration::from_secs(60));
    cfg.compression = sentry_sidecar::codec::Encoding::Identity;
    let sidecar = start(cfg).await;
    let metrics = Metrics::new(sidecar.local_addr()).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let (id, body) = error_envelope(&format!("refused-{n}"));
        assert_eq!(post_envelope(sidecar.local_addr(), &body).await.status, 200);
        ids.push(id);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while accepted.lock().unwrap().len() < 5 {
        assert!(tokio::time::Instant::now() < deadline, "refused envelopes waited for the retry backoff");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = accepted.lock().unwrap().clone();
    for id in &ids {
        assert_eq!(got.iter().filter(|b| b.windows(id.len()).any(|w| w == id.as_bytes())).count(), 1, "{id}");
    }
    assert_eq!(metrics.delta(r#"sidecar_upstream_attempts_total{result="refused"}"#).await, 5.0);
    assert_eq!(metrics.delta(r#"sidecar_retries_total{reason="refused"}"#).await, 5.0);
    assert_eq!(metrics.gauge(r#"sidecar_upstream_circuit_open{upstream="https://127.0.0.1:PORT"}"#.replace("PORT", &port.to_string()).as_str()).await, 0.0);
    sidecar.shutdown().await;
    server.abort();
}
