#![allow(missing_docs, unreachable_pub)]
//! The memory budget on real sockets, measured on the real binary (its peak RSS read from
//! `/proc/<pid>/status`, so the test's own buffers do not count): large bodies held open stream
//! to files, within the spool's byte bound for files in flight, while a small envelope is still
//! answered 200, and 20 valid 19 MiB envelopes sent at once are all accepted (the SDK's retry
//! after a 503 included) and arrive upstream intact, under 128 MiB. No timing assertions: only
//! generous liveness bounds.

mod common;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The size of each large body: just under the default `max_request_bytes` (20 MiB).
const LARGE: usize = 19 * 1024 * 1024;

/// The shipped Kubernetes example's `limits.memory`.
const MIB_128: u64 = 128 * 1024;

fn spawn(spool: &Path, listen: SocketAddr, extra: &[&str]) -> Child {
    let mut args: Vec<OsString> =
        vec!["--listen".into(), listen.to_string().into(), "--spool-dir".into(), spool.into()];
    args.extend(extra.iter().map(OsString::from));
    spawn_binary(listen, &args)
}

/// How many `.part` files (uploads being streamed) are in the spool's `bodies/`.
fn part_files(spool: &Path) -> usize {
    std::fs::read_dir(spool.join("bodies"))
        .map(|d| d.filter_map(Result::ok).filter(|e| e.file_name().to_string_lossy().ends_with(".part")).count())
        .unwrap_or(0)
}

/// A `/proc/<pid>/status` value in kB (`VmRSS`, `VmHWM`).
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The head of an envelope of one attachment of `payload_len` bytes, with its event id.
fn envelope_head(event_id: &str, payload_len: usize) -> Vec<u8> {
    format!(
        "{{\"event_id\":\"{event_id}\"}}\n{{\"type\":\"attachment\",\"length\":{payload_len},\"filename\":\"core.bin\"}}\n"
    )
    .into_bytes()
}

/// Sends an envelope of `head` + `payload` + newline on a new connection and reads the answer.
async fn send_large(addr: SocketAddr, head: &[u8], payload: &[u8]) -> Resp {
    let (k, v) = auth_header();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let len = head.len() + payload.len() + 1;
    let req = format!(
        "POST /api/42/envelope/ HTTP/1.1\r\nHost: x\r\n{k}: {v}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(head).await.unwrap();
    // A refused request is answered before its body is read whole: writing may then fail.
    for piece in payload.chunks(256 * 1024).chain([&b"\n"[..]]) {
        if s.write_all(piece).await.is_err() {
            break;
        }
    }
    read_response(&mut s).await
}

/// POSTs `body` as `content_type` to `path` on a new connection and reads the answer (a write the
/// sidecar refused mid-body does not fail the test).
async fn send_to(addr: SocketAddr, path: &str, content_type: &str, body: &[u8]) -> Resp {
    let (k, v) = auth_header();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\n{k}: {v}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    for piece in body.chunks(256 * 1024) {
        if s.write_all(piece).await.is_err() {
            break;
        }
    }
    read_response(&mut s).await
}

/// 40 connections each send all but the last byte of a 19 MiB minidump and hold it: the sidecar
/// streams them to files, never holding them in memory (before the budget it held every byte:
/// 5.7 GB for 300), admits as many as the spool's byte bound (200 MiB here) has room for in
/// flight, refuses the others with 503 at once, and still answers a small envelope 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_held_open_stay_within_the_budget_and_small_envelopes_flow() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    // Capture mode; a long body timeout, so that the bodies are held for the whole test.
    let child =
        Killed(spawn(&dir.path().join("spool"), addr, &["--body-read-timeout", "60s", "--spool-max-bytes", "200MiB"]));
    let pid = child.0.id();
    let payload: Arc<Vec<u8>> = Arc::new(vec![b'x'; LARGE - 1]);
    let (k, v) = auth_header();
    let mut held = Vec::new();
    for _ in 0..40 {
        let payload = payload.clone();
        let head = format!("POST /api/42/minidump/ HTTP/1.1\r\nHost: x\r\n{k}: {v}\r\nContent-Length: {LARGE}\r\n\r\n");
        held.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(head.as_bytes()).await.unwrap();
            // Blocks once the sidecar stops reading; fails once it answers and closes.
            let _ = s.write_all(&payload).await;
            let r = tokio::time::timeout(Duration::from_secs(30), read_response(&mut s)).await;
            r.map(|r| r.status).ok()
        }));
    }
    // Every large body has been refused or is waiting for its last byte.
    let mut refused = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let m = metrics_text(addr).await;
        refused = metric_value(&m, r#"sidecar_rejected_total{endpoint="minidump",reason="spool_full"}"#) as usize;
        if refused >= 30 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(refused >= 30, "at most the byte bound's worth of bodies are written; {refused} refused");
    // A small envelope is still answered at once (from the reserve).
    let (_, small) = error_envelope("small-during-flood");
    let r = tokio::time::timeout(Duration::from_secs(10), post_envelope(addr, &small)).await.expect("answered");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let peak = status_kb(pid, "VmHWM");
    eprintln!("40 x 19 MiB held open: peak RSS {} MiB, {refused} refused spool_full", peak / 1024);
    assert!(peak < MIB_128, "peak RSS {peak} kB is over 128 MiB");
    // The held connections are cut with the process; their answers do not matter.
    for h in &held {
        h.abort();
    }
    drop(child);
}

/// 20 valid 19 MiB envelopes at once (the sidecar's memory held 579 MB for them before the budget,
/// 107 MiB with it, whole bodies in memory): each is streamed to a file as it arrives, accepted
/// (at once or on the SDK's retry after `Retry-After`), sent upstream from its file and arrives
/// intact; then 5 multipart minidumps of 19 MiB likewise. The peak stays under 128 MiB, and no
/// `.part` file is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_large_envelopes_at_once_arrive_intact_within_the_memory_ceiling() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let upstream = Upstream::start(&pki).await;
    let addr = free_addr();
    let child = Killed(spawn(
        &dir.path().join("spool"),
        addr,
        &["--upstream", upstream.url().as_str(), "--ca-file", pki.ca_file.to_str().unwrap()],
    ));
    let pid = child.0.id();
    let payload = Arc::new(noise(7, LARGE - 1024).into_bytes());
    let mut sends = Vec::new();
    for i in 0..20 {
        let payload = payload.clone();
        sends.push(tokio::spawn(async move {
            let event_id = format!("{i:032x}");
            let head = envelope_head(&event_id, payload.len());
            for _ in 0..60 {
                let r = send_large(addr, &head, &payload).await;
                match r.status {
                    200 => return (event_id, true),
                    503 => {
                        let secs: u64 = r.header("retry-after").and_then(|s| s.parse().ok()).unwrap_or(1);
                        tokio::time::sleep(Duration::from_secs(secs)).await;
                    }
                    s => panic!("{s}: {}", String::from_utf8_lossy(&r.body)),
                }
            }
            (event_id, false)
        }));
    }
    let mut ids = Vec::new();
    for s in sends {
        let (id, ok) = s.await.unwrap();
        assert!(ok, "{id} was never accepted");
        ids.push(id);
    }
    let got = upstream.wait_for(20, 120).await;
    assert_eq!(got.len(), 20);
    for r in &got {
        let id = std::str::from_utf8(&r.body[13..45]).unwrap().to_owned();
        assert!(ids.contains(&id), "{id}");
        let head = envelope_head(&id, payload.len());
        assert_eq!(r.body.len(), head.len() + payload.len() + 1, "{id}");
        assert!(r.body.starts_with(&head) && r.body[head.len()..head.len() + payload.len()] == payload[..], "{id}");
    }
    // Then 5 multipart minidumps of 19 MiB at once, the same way.
    let boundary = "sidecarBOUNDARY";
    let dump = Arc::new(noise(8, LARGE - 1024).into_bytes());
    let mut dumps = Vec::new();
    for i in 0..5u8 {
        let dump = dump.clone();
        dumps.push(tokio::spawn(async move {
            let mut body = format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"upload_file_minidump\"; \
                 filename=\"{i}.dmp\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .into_bytes();
            body.extend_from_slice(&dump);
            body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
            let ct = format!("multipart/form-data; boundary={boundary}");
            for _ in 0..60 {
                let r = send_to(addr, "/api/42/minidump/", &ct, &body).await;
                match r.status {
                    200 => return body,
                    503 => tokio::time::sleep(Duration::from_secs(2)).await,
                    s => panic!("{s}: {}", String::from_utf8_lossy(&r.body)),
                }
            }
            panic!("minidump {i} was never accepted")
        }));
    }
    let mut sent = Vec::new();
    for d in dumps {
        sent.push(d.await.unwrap());
    }
    let got = upstream.wait_for(25, 120).await;
    for body in &sent {
        assert!(
            got.iter().any(|r| r.path.contains("/minidump/") && r.body[..] == body[..]),
            "a minidump arrived changed"
        );
    }
    let peak = status_kb(pid, "VmHWM");
    eprintln!("20 x 19 MiB envelopes at once, then 5 x 19 MiB minidumps: peak RSS {} MiB", peak / 1024);
    assert!(peak < MIB_128, "peak RSS {peak} kB is over 128 MiB");
    assert_eq!(part_files(&dir.path().join("spool")), 0, "no upload left a .part file");
}
