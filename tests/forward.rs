#![allow(missing_docs, unreachable_pub)]
//! Every captured SDK request goes through the real server to an in-process HTTPS upstream and
//! arrives with the same items byte for byte (store: the same event JSON), the auth preserved,
//! gzip-compressed, over one TLS connection.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_arrives_byte_for_byte_over_one_tls_connection() {
    let pki = Pki::new();
    let up = Upstream::start(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(upstream_config(dir.path(), &pki, &up)).await;
    let addr = sidecar.local_addr();

    let fixtures = load_fixtures();
    for f in &fixtures {
        let r = raw(addr, &f.wire(addr)).await;
        assert_eq!(r.status, 200, "{}: {}", f.name, String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("content-type"), Some("application/json"), "{}", f.name);
        let id = r.json()["id"].clone();
        let expected_id = if f.name.contains("store") {
            serde_json::from_slice::<serde_json::Value>(&expected_body(f)).unwrap()["event_id"].clone()
        } else {
            let env = f.decoded();
            let header_line = env.split(|b| *b == b'\n').next().unwrap().to_vec();
            serde_json::from_slice::<serde_json::Value>(&header_line).unwrap()["event_id"].clone()
        };
        assert_eq!(id, expected_id, "{}: the answer carries the event id", f.name);
    }

    let got = up.wait_for(fixtures.len(), 20).await;
    assert_eq!(got.len(), fixtures.len());
    for f in &fixtures {
        let want = expected_body(f);
        let r = got
            .iter()
            .find(|r| r.body[..] == want[..])
            .unwrap_or_else(|| panic!("{}: no upstream request carried the same bytes", f.name));
        assert_eq!(r.path, f.path, "{}: path and query (incl. query auth) unchanged", f.name);
        assert_eq!(r.header("x-sentry-auth"), f.header("x-sentry-auth"), "{}: header auth unchanged", f.name);
        assert_eq!(r.header("content-encoding"), Some("gzip"), "{}", f.name);
        if r.body.len() > 512 {
            assert!(r.raw_body.len() < r.body.len(), "{}: gzip made it smaller", f.name);
        }
        if r.body.len() > 2000 {
            assert!(r.raw_body.len() * 10 < r.body.len() * 6, "{}: gzip made it at most 60 %", f.name);
        }
        assert_eq!(r.header("user-agent"), f.header("user-agent"), "{}", f.name);
        assert_eq!(r.method, "POST");
        assert_eq!(r.version, http::Version::HTTP_2, "{}: HTTP/2 negotiated by ALPN", f.name);
        if f.name.contains("store") {
            assert_eq!(r.header("content-type"), Some("application/json"), "{}", f.name);
        } else {
            assert_eq!(r.header("content-type"), f.header("content-type"), "{}", f.name);
        }
    }
    assert_eq!(distinct_conns(&got), 1, "all requests multiplexed over one TLS connection");
    assert_eq!(up.connections.load(std::sync::atomic::Ordering::SeqCst), 1);
    let open = format!("sidecar_upstream_connections{{upstream=\"127.0.0.1:{}\"}}", up.addr.port());
    assert_eq!(metric_value(&metrics_text(addr).await, &open), 1.0, "the open connection is counted");
    sidecar.shutdown().await;
}

/// What the upstream must receive for a fixture: the decoded envelope, or the store event JSON.
fn expected_body(f: &Fixture) -> Vec<u8> {
    let decoded = f.decoded();
    if f.name.starts_with("10_") {
        use base64::Engine;
        use std::io::Read;
        let z = base64::engine::general_purpose::STANDARD.decode(&decoded).unwrap();
        let mut out = Vec::new();
        flate2::read::ZlibDecoder::new(&z[..]).read_to_end(&mut out).unwrap();
        return out;
    }
    decoded
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_survive_byte_for_byte() {
    // Fixture 04 holds a binary attachment with NULs, CRLF and a line that looks like an item header.
    let pki = Pki::new();
    let up = Upstream::start(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(upstream_config(dir.path(), &pki, &up)).await;
    let f = load_fixture("04_sdk_error_attachments");
    assert_eq!(raw(sidecar.local_addr(), &f.wire(sidecar.local_addr())).await.status, 200);
    let got = up.wait_for(1, 10).await;
    let env = sentry_sidecar::protocol::Envelope::parse(got[0].body.clone()).unwrap();
    let original = sentry_sidecar::protocol::Envelope::parse(bytes::Bytes::from(f.decoded())).unwrap();
    assert_eq!(env.items.len(), 3);
    for (a, b) in env.items.iter().zip(&original.items) {
        assert_eq!(a.ty, b.ty);
        assert_eq!(env.payload(a), original.payload(b));
    }
    let binary = env.items.iter().find(|i| i.payload.len() == 2103).expect("the 2103-byte attachment");
    assert!(env.payload(binary).contains(&0u8));
    sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_upstream_keeps_connections_bounded() {
    let pki = Pki::new();
    let up = Upstream::start_with(&pki, false, std::sync::Arc::new(|_, _| (200, vec![]))).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = upstream_config(dir.path(), &pki, &up);
    cfg.h1_connections = 2;
    let sidecar = start(cfg).await;
    let addr = sidecar.local_addr();
    let mut tasks = Vec::new();
    for i in 0..60 {
        tasks
            .push(tokio::spawn(async move { post_envelope(addr, &error_envelope(&format!("h1-{i}")).1).await.status }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let got = up.wait_for(60, 20).await;
    assert!(got.iter().all(|r| r.version == http::Version::HTTP_11));
    let conns = up.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(conns <= 2, "HTTP/1.1 upstream used {conns} connections, limit is 2");
    let open = format!("sidecar_upstream_connections{{upstream=\"127.0.0.1:{}\"}}", up.addr.port());
    let open = metric_value(&metrics_text(addr).await, &open);
    assert!((1.0..=2.0).contains(&open), "{open} open connections counted, the pool keeps 1-2");
    sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_project_routes_pick_their_upstream() {
    let pki = Pki::new();
    let default_up = Upstream::start(&pki).await;
    let project7_up = Upstream::start(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = upstream_config(dir.path(), &pki, &default_up);
    cfg.routes = vec![sentry_sidecar::routing::RouteRule { project: Some(7), key: None, upstream: project7_up.url() }];
    let sidecar = start(cfg).await;
    let addr = sidecar.local_addr();
    let (k, v) = auth_header();
    let (_, body) = error_envelope("for-7");
    let r = request(addr, "POST", "/api/7/envelope/", &[(k, &v)], &body).await;
    assert_eq!(r.status, 200);
    assert_eq!(post_envelope(addr, &error_envelope("for-42").1).await.status, 200);
    let seven = project7_up.wait_for(1, 10).await;
    let default = default_up.wait_for(1, 10).await;
    assert_eq!(seven[0].path, "/api/7/envelope/");
    assert_eq!(default[0].path, "/api/42/envelope/");
    assert_eq!(seven.len(), 1);
    assert_eq!(default.len(), 1);
    sidecar.shutdown().await;
}

/// Both settings shrink a 2.7 KB error envelope below 60 %; under zstd it still goes out as gzip
/// (libdeflate's gzip is 2.7 % smaller than zstd's default level at that size), the 53 KB one as
/// zstd, smaller than gzip: the zstd setting is never larger than gzip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_and_zstd_shrink_envelopes() {
    let pki = Pki::new();
    let mut sizes = Vec::new();
    for algo in [sentry_sidecar::codec::Encoding::Gzip, sentry_sidecar::codec::Encoding::Zstd] {
        let up = Upstream::start(&pki).await;
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = upstream_config(dir.path(), &pki, &up);
        cfg.compression = algo;
        let sidecar = start(cfg).await;
        let zstd = algo == sentry_sidecar::codec::Encoding::Zstd;
        let mut got_sizes = Vec::new();
        for (n, name) in ["02_sdk_error_gzip", "12_node_error_gzip_large"].into_iter().enumerate() {
            let f = load_fixture(name);
            assert_eq!(raw(sidecar.local_addr(), &f.wire(sidecar.local_addr())).await.status, 200);
            let got = up.wait_for(n + 1, 10).await;
            assert_eq!(got[n].body[..], f.decoded()[..]);
            let expected = if zstd && n == 1 { "zstd" } else { "gzip" };
            assert_eq!(got[n].header("content-encoding"), Some(expected), "{algo:?} {name}");
            got_sizes.push((got[n].raw_body.len(), f.decoded().len()));
        }
        let (small, raw_len) = got_sizes[0];
        assert!(small * 100 <= raw_len * 60, "{algo:?}: {small} of {raw_len} bytes");
        sizes.push(got_sizes);
        sidecar.shutdown().await;
    }
    for (n, (zstd, gzip)) in sizes[1].iter().zip(&sizes[0]).enumerate() {
        assert!(zstd.0 <= gzip.0, "envelope {n}: zstd setting {} bytes, gzip {} bytes", zstd.0, gzip.0);
    }
    assert!(sizes[1][1].0 < sizes[0][1].0, "zstd shrinks the large envelope more than gzip");
}

/// Bodies are stored compressed for the upstream at ingest; after a restart with another
/// compression setting, or with no upstream at all (capture), they are decoded again, so what
/// arrives is still exactly what the SDK sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_compressed_bodies_follow_a_compression_change_across_restarts() {
    use sentry_sidecar::codec::Encoding;
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let f = load_fixture("12_node_error_gzip_large");
    let spool_while_down = |compression| {
        let (dir, pki, f) = (dir.path().to_path_buf(), &pki, &f);
        async move {
            let port = dead_port().await;
            let mut cfg = config_for_port(&dir, pki, port);
            cfg.compression = compression;
            let sidecar = start(cfg).await;
            assert_eq!(raw(sidecar.local_addr(), &f.wire(sidecar.local_addr())).await.status, 200);
            sidecar.shutdown().await;
        }
    };
    for (stored, sent, expected) in [
        (Encoding::Gzip, Encoding::Identity, None),
        (Encoding::Gzip, Encoding::Zstd, Some("zstd")),
        (Encoding::Zstd, Encoding::Gzip, Some("gzip")),
    ] {
        spool_while_down(stored).await;
        let up = Upstream::start(&pki).await;
        let mut cfg = upstream_config(dir.path(), &pki, &up);
        cfg.compression = sent;
        let sidecar = start(cfg).await;
        let got = up.wait_for(1, 10).await;
        assert_eq!(got[0].body[..], f.decoded()[..], "{stored:?} -> {sent:?}");
        assert_eq!(got[0].header("content-encoding"), expected);
        sidecar.shutdown().await;
    }
    // No upstream any more: the capture log gets the readable envelope.
    spool_while_down(Encoding::Gzip).await;
    let sidecar = start(test_config(dir.path())).await;
    let capture = dir.path().join("spool/capture.jsonl");
    eventually(10, "captured", || std::fs::read_to_string(&capture).is_ok_and(|s| !s.is_empty())).await;
    let line: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&capture).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(line["body"].as_str().unwrap().as_bytes(), &f.decoded()[..]);
    sidecar.shutdown().await;
}

/// A 3 MB envelope (an error and a large attachment, half compressible): compressed off the
/// runtime thread, stored as a file beside the database, sent byte for byte; also after waiting
/// long enough for its `sent_at` to be shifted on the way out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_envelope_arrives_byte_for_byte() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let port = dead_port().await;
    let sidecar = start(config_for_port(dir.path(), &pki, port)).await;
    let id = format!("{:032x}", fastrand::u128(..));
    let attachment: Vec<u8> =
        noise(7, 1_500_000).into_bytes().into_iter().chain(std::iter::repeat_n(b'x', 1_500_000)).collect();
    let event = format!(r#"{{"event_id":"{id}","message":"large"}}"#);
    let mut body = format!(
        "{{\"event_id\":\"{id}\",\"sent_at\":\"2026-01-01T00:00:00Z\"}}\n{{\"type\":\"event\",\"length\":{}}}\n{event}\n{{\"type\":\"attachment\",\"length\":{},\"filename\":\"big.bin\"}}\n",
        event.len(),
        attachment.len()
    )
    .into_bytes();
    body.extend_from_slice(&attachment);
    body.push(b'\n');
    assert_eq!(post_envelope(sidecar.local_addr(), &body).await.status, 200);
    // The upstream comes up after more than a second: sent_at is shifted, the items are not.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let up = Upstream::start_on(&pki, port).await;
    let got = up.wait_for(1, 20).await;
    assert_eq!(got[0].header("content-encoding"), Some("gzip"));
    assert!(got[0].raw_body.len() < body.len() * 3 / 4, "{} bytes sent", got[0].raw_body.len());
    let header_end = body.iter().position(|b| *b == b'\n').unwrap();
    let sent_header_end = got[0].body.iter().position(|b| *b == b'\n').unwrap();
    assert_eq!(got[0].body[sent_header_end..], body[header_end..], "items byte for byte");
    assert!(
        !String::from_utf8_lossy(&got[0].body[..sent_header_end]).contains("2026-01-01T00:00:00Z"),
        "sent_at shifted"
    );
    sidecar.shutdown().await;
}
