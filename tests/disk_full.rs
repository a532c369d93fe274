#![allow(missing_docs, unreachable_pub)]
//! A full disk is a recoverable condition: appends fail with 503 (never a panic, never a lost
//! acknowledged envelope), and once deliveries free space the sidecar accepts again.
//!
//! Two ways to fill the disk: SQLite's own page limit (`max_page_count`, the same SQLITE_FULL error
//! as ENOSPC; always runs), and a real 1 MiB tmpfs (runs where the test may mount one, i.e. as
//! root, as on CI).

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;

use common::*;
use sentry_sidecar::config::Config;
use sentry_sidecar::spool::{SqliteOptions, SqliteSpool};
use sentry_sidecar::Sidecar;

async fn fill_then_recover(cfg: Config, spool: Arc<dyn sentry_sidecar::spool::Spool>, pki: &Pki, port: u16) {
    init_logs();
    let sidecar = Sidecar::start_with_spool(cfg, spool).await.unwrap();
    let addr = sidecar.local_addr();
    let metrics = Metrics::new(addr).await;
    let mut acked = HashSet::new();
    let mut refused = 0;
    let mut refused_ids = Vec::new();
    for i in 0..1000 {
        // Incompressible, so that it fills the disk although the spool stores bodies compressed.
        let (id, body) = error_envelope(&format!("disk-{i}-{}", noise(i, 12000)));
        let r = post_envelope(addr, &body).await;
        match r.status {
            200 => {
                acked.insert(id);
            }
            503 => {
                refused += 1;
                refused_ids.push(id);
                assert!(r.json()["detail"].as_str().unwrap().contains("cannot queue"), "{:?}", r.json());
                assert!(r.header("retry-after").is_some());
                if refused >= 5 {
                    break;
                }
            }
            s => panic!("unexpected status {s}"),
        }
    }
    assert!(refused >= 5, "the disk never filled ({} accepted)", acked.len());
    assert!(acked.len() >= 5, "nothing fit at all");
    let counted = metrics.delta(r#"sidecar_rejected_total{endpoint="envelope",reason="spool"}"#).await
        + metrics.delta(r#"sidecar_rejected_total{endpoint="envelope",reason="disk_full"}"#).await;
    assert_eq!(counted, refused as f64);
    let r = request(addr, "GET", "/readyz", &[], b"").await;
    assert_eq!(r.status, 503, "not ready while the disk is full");
    assert_eq!(request(addr, "GET", "/healthz", &[], b"").await.status, 200, "still alive");

    let up = Upstream::start_on(pki, port).await;
    eventually(30, "every acknowledged envelope delivered", || {
        let got: HashSet<String> = event_ids(&up.received()).into_iter().collect();
        acked.is_subset(&got)
    })
    .await;
    let got: HashSet<String> = event_ids(&up.received()).into_iter().collect();
    let missing: Vec<_> = acked.difference(&got).collect();
    let extra: Vec<_> = got.difference(&acked).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not delivered: {missing:?} (extra: {extra:?}, refused: {refused_ids:?})"
    );
    eventually(10, "spool drained", || sidecar.spool().is_empty()).await;
    // No duplicate storm: a failed ack keeps its envelopes leased, so each arrives about once.
    let copies = up.received().len();
    assert!(copies <= acked.len() + 16, "{copies} requests for {} envelopes", acked.len());

    // Space is back: new envelopes are accepted and delivered.
    let (id, body) = error_envelope("after-the-disk-was-freed");
    assert_eq!(post_envelope(addr, &body).await.status, 200);
    eventually(10, "delivered after recovery", || event_ids(&up.received()).contains(&id)).await;
    assert_eq!(request(addr, "GET", "/readyz", &[], b"").await.status, 200);
    sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_full_is_a_503_and_recovers() {
    let _serial = serial().await;
    let pki = Pki::new();
    let port = dead_port().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_for_port(dir.path(), &pki, port);
    let spool =
        SqliteSpool::open(SqliteOptions { max_page_count: Some(64), ..SqliteOptions::from_config(&cfg) }).unwrap();
    fill_then_recover(cfg, Arc::new(spool), &pki, port).await;
}

struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_enospc_on_a_small_tmpfs() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&mnt)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root); the SQLite page-limit test covers SQLITE_FULL");
        return;
    }
    let _guard = Tmpfs(mnt.clone());
    let pki = Pki::new();
    let port = dead_port().await;
    let mut cfg = config_for_port(dir.path(), &pki, port);
    cfg.spool_dir = mnt.join("spool");
    std::fs::create_dir_all(&cfg.spool_dir).unwrap();
    let spool = sentry_sidecar::spool::open(&cfg).unwrap();
    fill_then_recover(cfg, spool, &pki, port).await;
}
