#![allow(missing_docs, unreachable_pub)]
//! The real binary, killed with SIGKILL while the upstream is down, restarted on the same spool:
//! every acknowledged envelope is delivered, none twice; and a clean restart sends nothing again.

mod common;

use std::collections::HashSet;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use common::*;

fn spawn(spool: &Path, listen: SocketAddr, upstream_port: u16, pki: &Pki, extra: &[&str]) -> Child {
    let mut args: Vec<OsString> = vec![
        "--listen".into(),
        listen.to_string().into(),
        "--upstream".into(),
        format!("https://127.0.0.1:{upstream_port}").into(),
        "--ca-file".into(),
        pki.ca_file.clone().into(),
        "--spool-dir".into(),
        spool.into(),
    ];
    for a in ["--retry-initial", "100ms", "--retry-max", "500ms", "--circuit-grace", "1s"].iter().chain(extra) {
        args.push(a.into());
    }
    spawn_binary(listen, &args)
}

fn signal(child: &Child, sig: &str) {
    assert!(Command::new("kill").arg(sig).arg(child.id().to_string()).status().unwrap().success());
}

async fn send_many(addr: SocketAddr, n: usize) -> HashSet<String> {
    let mut tasks = Vec::new();
    for worker in 0..8 {
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in (worker..n).step_by(8) {
                let (id, body) = error_envelope(&format!("crash-{i}"));
                let r = post_envelope(addr, &body).await;
                assert_eq!(r.status, 200, "acknowledged");
                ids.push(id);
            }
            ids
        }));
    }
    let mut all = HashSet::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_an_outage_loses_nothing_acknowledged() {
    let pki = Pki::new();
    let port = dead_port().await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let listen = free_addr();

    let mut first = spawn(&spool, listen, port, &pki, &[]);
    let acked = send_many(listen, 300).await;
    assert_eq!(acked.len(), 300);
    signal(&first, "-KILL");
    first.wait().unwrap();

    let up = Upstream::start_on(&pki, port).await;
    let mut second = spawn(&spool, listen, port, &pki, &["--drain-rate", "0"]);
    up.wait_for(300, 30).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids = event_ids(&up.received());
    assert_eq!(ids.len(), 300, "none delivered twice");
    assert_eq!(ids.into_iter().collect::<HashSet<_>>(), acked, "every acknowledged envelope delivered");

    // A clean restart on the same spool sends nothing again.
    signal(&second, "-TERM");
    assert!(second.wait().unwrap().success());
    let mut third = spawn(&spool, listen, port, &pki, &[]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(up.received().len(), 300, "nothing delivered twice after a clean restart");
    signal(&third, "-TERM");
    assert!(third.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_durability_spills_on_sigterm_and_delivers_after_restart() {
    let pki = Pki::new();
    let port = dead_port().await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let listen = free_addr();
    let mut first = spawn(&spool, listen, port, &pki, &["--durability", "memory"]);
    let acked = send_many(listen, 40).await;
    signal(&first, "-TERM");
    assert!(first.wait().unwrap().success());

    let up = Upstream::start_on(&pki, port).await;
    let mut second = spawn(&spool, listen, port, &pki, &["--durability", "memory"]);
    up.wait_for(40, 20).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ids = event_ids(&up.received());
    assert_eq!(ids.len(), 40);
    assert_eq!(ids.into_iter().collect::<HashSet<_>>(), acked);
    signal(&second, "-TERM");
    assert!(second.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_durability_delivers() {
    let pki = Pki::new();
    let up = Upstream::start(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let mut child = spawn(&dir.path().join("spool"), listen, up.addr.port(), &pki, &["--durability", "power"]);
    let acked = send_many(listen, 40).await;
    up.wait_for(40, 20).await;
    assert_eq!(event_ids(&up.received()).into_iter().collect::<HashSet<_>>(), acked);
    signal(&child, "-TERM");
    assert!(child.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_follows_a_changed_upstream_across_a_restart() {
    let pki = Pki::new();
    let wrong_port = dead_port().await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let listen = free_addr();
    let mut first = spawn(&spool, listen, wrong_port, &pki, &[]);
    let acked = send_many(listen, 20).await;
    signal(&first, "-TERM");
    assert!(first.wait().unwrap().success());
    // The operator fixes the upstream URL and restarts: the backlog goes to the new one.
    let up = Upstream::start(&pki).await;
    let mut second = spawn(&spool, listen, up.addr.port(), &pki, &[]);
    up.wait_for(20, 20).await;
    assert_eq!(event_ids(&up.received()).into_iter().collect::<HashSet<_>>(), acked);
    signal(&second, "-TERM");
    assert!(second.wait().unwrap().success());
}
