//! The dispatcher as a whole on tokio's paused clock, over a memory spool.

use super::*;
use crate::codec::Encoding;
use crate::config::{Config, RateLimitPolicy};
use crate::protocol::DataCategory;
use crate::spool::MemorySpool;

const T0: u64 = 1_000_000;

fn cfg() -> DispatchConfig {
    DispatchConfig {
        batch_size: 5,
        max_in_flight: 4,
        h2_concurrency: 1,
        h1_connections: 1,
        retry_initial: Duration::from_secs(10),
        retry_max: Duration::from_secs(60),
        shutdown_timeout: Duration::from_secs(1),
        rate_limit_policy: RateLimitPolicy::Hold,
        max_hold: Duration::from_secs(600),
        drain_rate: 0,
        circuit_grace: Duration::from_secs(3600),
        circuit_failures: 3,
        probe_max_interval: Duration::from_secs(5),
        compression: Encoding::Gzip,
        gzip_level: 1,
    }
}

fn error_event() -> Record {
    Record { categories: [DataCategory::Error].into_iter().collect(), ..Record::for_test(b"{}\n", T0) }
}

struct Running {
    spool: Arc<MemorySpool>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Starts a dispatcher on tokio's clock over a memory spool already holding `records`.
async fn start(
    records: Vec<Record>,
    cfg: DispatchConfig,
    routes: Routes,
    limits: Arc<RateLimits>,
    capture: &std::path::Path,
) -> Running {
    let spool = Arc::new(MemorySpool::new());
    spool.append(records).await.unwrap();
    let client = if routes.has_upstream() {
        let config = Config::with_defaults("127.0.0.1:0".parse().unwrap(), capture.to_owned());
        Some(Arc::new(UpstreamClient::new(&config).unwrap()))
    } else {
        None
    };
    let dispatcher = Arc::new(Dispatcher::new(
        spool.clone(),
        client,
        Arc::new(Capture::new(capture.join("capture.jsonl"))),
        limits,
        Arc::new(routes),
        cfg,
        Clock::tokio(T0),
    ));
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(dispatcher.run(rx));
    Running { spool, stop, task }
}

#[tokio::test(start_paused = true)]
async fn a_rate_limited_record_is_held_without_a_request_until_the_limit_ends() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there: once released, the send fails and counts an attempt.
    let url = UpstreamUrl::parse("http://127.0.0.1:1").unwrap();
    let limits = Arc::new(RateLimits::new());
    limits.apply_all(Scoping { upstream: &url, project: 1, key: "k" }, T0 + 30_000);
    let routes = Routes::new(Some(url), vec![], vec![]);
    let run = start(vec![error_event()], cfg(), routes, limits, dir.path()).await;

    tokio::time::sleep(Duration::from_secs(29)).await;
    assert_eq!(run.spool.len(), 1);
    assert_eq!(run.spool.next_due(T0 + 29_000), Some(T0 + 30_000), "held until the limit ends, no sooner");

    // Released at the end of the limit, sent, failed: due again after its first backoff (5 to
    // 10 s) rather than at the limit's end.
    let mut due = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        due = run.spool.next_due(T0 + 30_000).filter(|&d| d > T0 + 30_000);
        if due.is_some() {
            break;
        }
    }
    let due = due.expect("the record was sent when the limit ended");
    assert!((T0 + 35_000..=T0 + 46_000).contains(&due), "{}", due - T0);
    run.stop.send(true).unwrap();
    run.task.await.unwrap();
    let left = run.spool.read_batch(10, usize::MAX, u64::MAX).await.unwrap();
    assert_eq!(left.iter().map(|q| q.attempts).collect::<Vec<_>>(), [1], "one attempt: the hold did not count");
}

#[tokio::test(start_paused = true)]
async fn a_backlog_drains_at_the_drain_rate_then_unpaced() {
    let dir = tempfile::tempdir().unwrap();
    let records = (0..30).map(|_| error_event()).collect();
    let cfg = DispatchConfig { drain_rate: 10, ..cfg() };
    let run = start(records, cfg, Routes::new(None, vec![], vec![]), Arc::new(RateLimits::new()), dir.path()).await;

    // 10 a second, one at a time (the bucket holds a tenth of a second), starting empty.
    tokio::time::sleep(Duration::from_millis(1_050)).await;
    let sent = 30 - run.spool.len();
    assert!((9..=11).contains(&sent), "{sent} sent in the first second");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent = 30 - run.spool.len();
    assert!((19..=21).contains(&sent), "{sent} sent in two seconds");
    // With no more than a batch left, pacing stops and the rest goes at once.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(run.spool.len(), 0);
    run.stop.send(true).unwrap();
    run.task.await.unwrap();
    let captured = std::fs::read_to_string(dir.path().join("capture.jsonl")).unwrap();
    assert_eq!(captured.lines().count(), 30);
}
