#![allow(missing_docs, unreachable_pub)]
//! Delivery that keeps up with an upstream that is not a fast, healthy HTTP/2 server, and recovers
//! in seconds: an HTTP/1.1-only upstream far away, an outage, a 503 upstream, a rate limit that
//! outlives its deadline, and a shutdown while the upstream is slow. Each on real sockets, each
//! asserting counts (requests, connections, arrivals), never a rate.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;

/// Posts `n` error envelopes from 16 clients at once; returns their event ids.
async fn post_many(addr: std::net::SocketAddr, n: usize) -> Vec<String> {
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..16 {
        tasks.spawn(async move {
            let mut ids = Vec::new();
            for i in (c..n).step_by(16) {
                let (id, body) = error_envelope(&format!("steady-{i}"));
                assert_eq!(post_envelope(addr, &body).await.status, 200);
                ids.push(id);
            }
            ids
        });
    }
    let mut ids = Vec::new();
    while let Some(r) = tasks.join_next().await {
        ids.extend(r.unwrap());
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_upstream_50ms_away_gets_a_burst_over_as_many_connections_as_it_needs() {
    let pki = Pki::new();
    let up = Upstream::start_slow(&pki, false, Duration::from_millis(50), Arc::new(|_, _| (200, vec![]))).await;
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(upstream_config(dir.path(), &pki, &up)).await;
    let ids = post_many(sidecar.local_addr(), 1_000).await;
    let got = up.wait_for(1_000, 9).await;
    let mut arrived: Vec<String> = event_ids(&got);
    arrived.sort();
    arrived.dedup();
    assert_eq!(arrived.len(), ids.len(), "every envelope arrived");
    let conns = up.connections.load(Ordering::SeqCst);
    assert!(got.iter().all(|r| r.version == http::Version::HTTP_11));
    assert!(conns <= 64, "{conns} connections: more than h1_connections");
    assert!(conns > 4, "{conns} connections: the pool did not grow with the queue");
    sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_upstream_gets_a_few_requests_not_a_storm() {
    let pki = Pki::new();
    let up = Upstream::start_with(&pki, true, Arc::new(|_, _| (503, vec![]))).await;
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(upstream_config(dir.path(), &pki, &up)).await;
    post_many(sidecar.local_addr(), 100).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let requests = up.attempts.load(Ordering::SeqCst);
    let conns = up.connections.load(Ordering::SeqCst);
    assert!((3..30).contains(&requests), "{requests} requests in 3 s");
    assert!(conns < 10, "{conns} connections in 3 s");
    sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_the_backlog_moves_within_seconds_of_recovery() {
    let pki = Pki::new();
    let port = dead_port().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_for_port(dir.path(), &pki, port);
    cfg.probe_max_interval = Duration::from_secs(1);
    let sidecar = start(cfg).await;
    let ids = post_many(sidecar.local_addr(), 50).await;
    // Long enough for the probe interval to reach its cap.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let back = tokio::time::Instant::now();
    let up = Upstream::start_on(&pki, port).await;
    up.wait_for(1, 5).await;
    let first = back.elapsed();
    let got = up.wait_for(ids.len(), 5).await;
    assert!(first < Duration::from_secs(4), "first delivery {first:?} after the upstream came back");
    assert_eq!(event_ids(&got).len(), ids.len());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(up.received().len(), ids.len(), "each sent once");
    sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_a_rate_limit_ends_one_envelope_probes_per_deadline() {
    let pki = Pki::new();
    // The first three answers limit for a second each; then the upstream accepts.
    let up = Upstream::start_with(
        &pki,
        true,
        Arc::new(|_, n| if n < 3 { (429, vec![("retry-after", "1".to_owned())]) } else { (200, vec![]) }),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(upstream_config(dir.path(), &pki, &up)).await;
    let addr = sidecar.local_addr();
    let (first, body) = error_envelope("the-first");
    assert_eq!(post_envelope(addr, &body).await.status, 200);
    eventually(5, "the first 429", || up.attempts.load(Ordering::SeqCst) == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut ids = post_many(addr, 30).await;
    ids.push(first);
    let got = up.wait_for(ids.len(), 8).await;
    assert_eq!(event_ids(&got).len(), ids.len());
    // Three 429s (the first envelope, then one probe per deadline limited again), then every
    // envelope accepted once: the probe at the third deadline, and the others after it.
    assert_eq!(up.attempts.load(Ordering::SeqCst), 3 + ids.len() as u64);
    sidecar.shutdown().await;
}

// One thread, as the binary runs.
#[tokio::test]
async fn shutdown_starts_no_new_request() {
    let pki = Pki::new();
    let up = Upstream::start_slow(&pki, true, Duration::from_millis(1_500), Arc::new(|_, _| (200, vec![]))).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = upstream_config(dir.path(), &pki, &up);
    cfg.h2_concurrency = 8;
    let spool_options = sentry_sidecar::spool::SqliteOptions::from_config(&cfg);
    let sidecar = start(cfg).await;
    post_many(sidecar.local_addr(), 40).await;
    // The first request goes alone; once it answered, eight are in flight and the rest wait.
    eventually(6, "eight requests in flight", || up.attempts.load(Ordering::SeqCst) >= 9).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let in_flight = up.attempts.load(Ordering::SeqCst);
    sidecar.shutdown().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(up.attempts.load(Ordering::SeqCst), in_flight, "a request started after the shutdown signal");
    assert_eq!(up.received().len() as u64, in_flight, "those in flight finished within the shutdown timeout");
    // What was delivered during the shutdown was acked before the spool closed (acks need not be
    // quick while running, but none may be left behind): only the rest waits for the next start.
    let spool = sentry_sidecar::spool::SqliteSpool::open(spool_options).unwrap();
    use sentry_sidecar::spool::Spool as _;
    assert_eq!(spool.len(), 40 - in_flight, "delivered envelopes left in the spool");
    spool.close().await;
}
