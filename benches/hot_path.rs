#![allow(missing_docs, unreachable_pub)]
//! Micro-benchmarks of the hot path: envelope parse (every captured fixture), inbound decode (br,
//! gzip), outbound gzip, the rate-limit gate, and the SQLite spool's append and read+ack in
//! batches. Run: `cargo bench --bench hot_path`.

use std::hint::black_box;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sentry_sidecar::codec::Encoding;
use sentry_sidecar::config::{DeliveryOrder, Durability, FullPolicy};
use sentry_sidecar::limits::{RateLimits, Scoping};
use sentry_sidecar::protocol::rate_limits::parse_rate_limits;
use sentry_sidecar::protocol::{Categories, DataCategory, Endpoint, Envelope};
use sentry_sidecar::routing::{Target, UpstreamUrl};
use sentry_sidecar::spool::{Record, Spool, SqliteOptions, SqliteSpool};

fn fixtures() -> Vec<(String, Vec<u8>, Option<String>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut out = Vec::new();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok()?.strip_suffix(".http.json").map(str::to_owned))
        .collect();
    names.sort();
    for name in names {
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.http.json"))).unwrap()).unwrap();
        let enc = meta["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h[0].as_str().unwrap().eq_ignore_ascii_case("content-encoding"))
            .map(|h| h[1].as_str().unwrap().to_owned());
        out.push((name.clone(), std::fs::read(dir.join(format!("{name}.body"))).unwrap(), enc));
    }
    out
}

fn decoded(body: &[u8], enc: Option<&str>) -> Vec<u8> {
    let mut out = Vec::new();
    match enc {
        Some("br") => drop(brotli_decompressor::Decompressor::new(body, 4096).read_to_end(&mut out)),
        Some("gzip") => drop(flate2::read::GzDecoder::new(body).read_to_end(&mut out)),
        Some("deflate") => drop(flate2::read::ZlibDecoder::new(body).read_to_end(&mut out)),
        _ => out = body.to_vec(),
    }
    out
}

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope_parse");
    for (name, body, enc) in fixtures() {
        if name.contains("store") {
            continue;
        }
        let env = Bytes::from(decoded(&body, enc.as_deref()));
        g.throughput(Throughput::Bytes(env.len() as u64));
        g.bench_function(&name, |b| b.iter(|| Envelope::parse(black_box(env.clone())).unwrap()));
    }
    g.finish();
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("inbound_decode");
    for (name, body, enc) in fixtures() {
        let Some(enc) = enc else { continue };
        if name != "01_sdk_error_br" && name != "02_sdk_error_gzip" && name != "12_node_error_gzip_large" {
            continue;
        }
        let body = Bytes::from(body);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(format!("{enc}/{name}"), |b| {
            b.iter(|| sentry_sidecar::codec::decode(&enc, black_box(body.clone()), 1 << 26).unwrap())
        });
    }
    g.finish();
}

fn envelope_2500() -> Bytes {
    let f = fixtures().into_iter().find(|(n, _, _)| n == "02_sdk_error_gzip").unwrap();
    Bytes::from(decoded(&f.1, f.2.as_deref()))
}

fn outbound(c: &mut Criterion) {
    let env = envelope_2500();
    let mut g = c.benchmark_group("outbound_compress");
    g.throughput(Throughput::Bytes(env.len() as u64));
    for level in [1, 3, 6] {
        g.bench_function(format!("gzip_level_{level}"), |b| {
            b.iter(|| sentry_sidecar::codec::compress(black_box(&env), Encoding::Gzip, level))
        });
    }
    g.bench_function("zstd_setting_2.7KB_goes_gzip", |b| {
        b.iter(|| sentry_sidecar::codec::compress(black_box(&env), Encoding::Zstd, 1))
    });
    g.finish();
    // Above ZSTD_MIN_BYTES the zstd setting compresses with zstd: both on the 53 KB envelope.
    let f = fixtures().into_iter().find(|(n, _, _)| n == "12_node_error_gzip_large").unwrap();
    let large = Bytes::from(decoded(&f.1, f.2.as_deref()));
    let mut g = c.benchmark_group("outbound_compress_53KB");
    g.throughput(Throughput::Bytes(large.len() as u64));
    for (name, algo) in [("gzip_level_1", Encoding::Gzip), ("zstd_default", Encoding::Zstd)] {
        g.bench_function(name, |b| b.iter(|| sentry_sidecar::codec::compress(black_box(&large), algo, 1)));
    }
    g.finish();
}

fn gate(c: &mut Criterion) {
    let up = UpstreamUrl::parse("https://o1.ingest.sentry.io").unwrap();
    let table = RateLimits::new();
    for k in 0..100 {
        let key = format!("key{k}");
        table.apply(Scoping { upstream: &up, project: k, key: &key }, &parse_rate_limits("60:transaction:key"), 0);
    }
    let cats: Categories = [DataCategory::Error].into_iter().collect();
    let empty = RateLimits::new();
    let mut g = c.benchmark_group("rate_limit_gate");
    g.bench_function("100_limits_not_blocked", |b| {
        b.iter(|| table.blocked_until(Scoping { upstream: &up, project: 7, key: "key7" }, black_box(cats), 1))
    });
    g.bench_function("empty_table", |b| {
        b.iter(|| empty.blocked_until(Scoping { upstream: &up, project: 7, key: "key7" }, black_box(cats), 1))
    });
    g.finish();
}

/// A record as ingest stores it: the body already gzip'd for the upstream.
fn record(body: &Bytes) -> Record {
    let (body, _) = sentry_sidecar::codec::compress(body, sentry_sidecar::codec::Encoding::Gzip, 1);
    Record {
        target: Target::Upstream(UpstreamUrl::parse("https://o1.ingest.sentry.io").unwrap()),
        endpoint: Endpoint::Envelope,
        method: http::Method::POST,
        path_and_query: "/api/42/envelope/".into(),
        headers: vec![(
            http::HeaderName::from_static("x-sentry-auth"),
            http::HeaderValue::from_static("Sentry sentry_key=0123456789abcdef0123456789abcdef, sentry_version=7"),
        )],
        body: body.into(),
        encoding: Encoding::Gzip,
        incompressible: false,
        project_id: 42,
        public_key: "0123456789abcdef0123456789abcdef".into(),
        event_id: Some("5afe190d31734655bc997ee41b47bc65".into()),
        categories: [DataCategory::Error].into_iter().collect(),
        item_types: vec!["event".into()],
        received_ms: 1,
    }
}

fn spool(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spool: Arc<SqliteSpool> = Arc::new(
        SqliteSpool::open(SqliteOptions {
            dir: dir.path().to_path_buf(),
            durability: Durability::Process,
            max_bytes: u64::MAX / 2,
            max_age: Duration::from_secs(86400 * 365),
            full_policy: FullPolicy::DropOldest,
            order: DeliveryOrder::OldestFirst,
            inline_limit: 1 << 20,
            max_page_count: None,
            clock: sentry_sidecar::clock::Clock::system(),
        })
        .unwrap(),
    );
    let body = envelope_2500();
    let mut g = c.benchmark_group("spool");
    for batch in [1usize, 32] {
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("append_batch_{batch}"), |b| {
            b.iter_batched(
                || (0..batch).map(|_| record(&body)).collect::<Vec<_>>(),
                |recs| rt.block_on(spool.append(recs)).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    // Read and ack what the appends left, 256 at a time.
    g.throughput(Throughput::Elements(256));
    g.bench_function("read_ack_batch_256", |b| {
        b.iter_batched(
            || rt.block_on(spool.append((0..256).map(|_| record(&body)).collect())).unwrap(),
            |()| {
                rt.block_on(async {
                    let got = spool.read_batch(256, usize::MAX, u64::MAX / 4).await.unwrap();
                    spool.ack(got.iter().map(|q| q.id).collect()).await.unwrap();
                })
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = parse, decode, outbound, gate, spool
}
criterion_main!(benches);
