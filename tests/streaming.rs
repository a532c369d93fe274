#![allow(missing_docs, unreachable_pub)]
//! Large bodies stream to files on real sockets: an envelope larger than the threshold (by its
//! length, chunked, or once decoded), and a minidump, are written to the spool's `bodies/` as they
//! arrive, sent upstream from the file and arrive byte for byte; a retry after an upstream 503
//! sends the file again; after a restart the spooled file is delivered, `sent_at` shifted on the
//! way. Bombs are refused 413 under the memory ceiling (measured on the real binary), and bodies
//! refused on the way (corrupt, an invalid envelope) leave no file behind. No timing assertions.

mod common;

use std::ffi::OsString;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The shipped Kubernetes example's `limits.memory`, in kB.
const MIB_128: u64 = 128 * 1024;

/// Files in the spool's `bodies/`: (uploads being written, row bodies).
fn body_files(spool: &Path) -> (usize, usize) {
    let names: Vec<String> = std::fs::read_dir(spool.join("bodies"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    (names.iter().filter(|n| n.ends_with(".part")).count(), names.iter().filter(|n| n.ends_with(".body")).count())
}

/// An envelope of one attachment of `len` bytes of noise, with `sent_at` if given.
fn large_envelope(event_id: &str, sent_at: Option<&str>, seed: u64, len: usize) -> Vec<u8> {
    let sent_at = sent_at.map(|s| format!(",\"sent_at\":\"{s}\"")).unwrap_or_default();
    let payload = noise(seed, len);
    format!(
        "{{\"event_id\":\"{event_id}\"{sent_at}}}\n{{\"type\":\"attachment\",\"length\":{len},\"filename\":\"a.bin\"}}\n{payload}\n"
    )
    .into_bytes()
}

/// POSTs `body` on a new connection, by `Content-Length` or (`chunked`) in 64 KiB chunks, and
/// reads the answer. A write the sidecar refused mid-body does not fail the test.
async fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &[u8], chunked: bool) -> Resp {
    let (k, v) = auth_header();
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: x\r\n{k}: {v}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if chunked {
        head.push_str("Transfer-Encoding: chunked\r\n\r\n");
    } else {
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    }
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    for piece in body.chunks(64 * 1024) {
        let framed = if chunked {
            [format!("{:x}\r\n", piece.len()).as_bytes(), piece, b"\r\n"].concat()
        } else {
            piece.to_vec()
        };
        if s.write_all(&framed).await.is_err() {
            break;
        }
    }
    if chunked {
        let _ = s.write_all(b"0\r\n\r\n").await;
    }
    read_response(&mut s).await
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn assert_ok(r: &Resp, what: &str) {
    assert_eq!(r.status, 200, "{what}: {}", String::from_utf8_lossy(&r.body));
}

/// An envelope over the threshold by its length, one sent chunked, one that is small gzip on the
/// wire and large decoded, and a multipart minidump: each is streamed to a file, sent upstream
/// from it, and arrives as it was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_to_files_and_arrive_intact() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let upstream = Upstream::start(&pki).await;
    let sidecar = start(upstream_config(dir.path(), &pki, &upstream)).await;
    let addr = sidecar.local_addr();
    let ct = ("Content-Type", "application/x-sentry-envelope");
    let by_length = large_envelope(&format!("{:032x}", 1), None, 1, 6 << 20);
    assert_ok(&post(addr, "/api/42/envelope/", &[ct], &by_length, false).await, "by length");
    let chunked = large_envelope(&format!("{:032x}", 2), None, 2, 3 << 20);
    assert_ok(&post(addr, "/api/42/envelope/", &[ct], &chunked, true).await, "chunked");
    // Zeros compress about a thousand times: 8 MiB decoded from a few KiB on the wire.
    let zeros = format!(
        "{{\"event_id\":\"{:032x}\"}}\n{{\"type\":\"attachment\",\"length\":{}}}\n{}\n",
        3,
        8 << 20,
        "0".repeat(8 << 20)
    )
    .into_bytes();
    let wire = gzip(&zeros);
    assert!(wire.len() < 1 << 20);
    assert_ok(&post(addr, "/api/42/envelope/", &[ct, ("Content-Encoding", "gzip")], &wire, false).await, "gzip");
    let boundary = "xyzBOUNDARYxyz";
    let dump = noise(4, 5 << 20);
    let multipart = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"upload_file_minidump\"; filename=\"a.dmp\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n{dump}\r\n--{boundary}--\r\n"
    )
    .into_bytes();
    let mp = format!("multipart/form-data; boundary={boundary}");
    assert_ok(&post(addr, "/api/42/minidump/", &[("Content-Type", &mp)], &multipart, false).await, "minidump");

    let got = upstream.wait_for(4, 60).await;
    for (want, what) in [(&by_length, "by length"), (&chunked, "chunked"), (&zeros, "gzip"), (&multipart, "minidump")] {
        let r = got.iter().find(|r| r.body.len() == want.len()).unwrap_or_else(|| panic!("{what} not received"));
        assert!(r.body[..] == want[..], "{what} arrived changed");
        assert!(r.header("content-encoding").is_some(), "{what} was sent compressed");
    }
    eventually(10, "delivered bodies' files removed", || body_files(&dir.path().join("spool")) == (0, 0)).await;
    sidecar.shutdown().await;
}

/// The upstream answers the first attempt 503: the record is sent again, from its file, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_an_upstream_503_streams_the_file_again() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let upstream = Upstream::start_with(
        &pki,
        true,
        Arc::new(|_, n| if n == 0 { (503, vec![("retry-after", "0".to_owned())]) } else { (200, vec![]) }),
    )
    .await;
    let sidecar = start(upstream_config(dir.path(), &pki, &upstream)).await;
    let body = large_envelope(&format!("{:032x}", 7), None, 7, 4 << 20);
    assert_ok(&post(sidecar.local_addr(), "/api/42/envelope/", &[], &body, false).await, "envelope");
    let got = upstream.wait_for(1, 60).await;
    assert!(upstream.attempts.load(Ordering::SeqCst) >= 2, "sent twice");
    assert!(got[0].body[..] == body[..], "the retry sent the whole body");
    sidecar.shutdown().await;
}

/// Accepted while the upstream is down, the body waits as a file in the spool; after a restart
/// it is delivered from that file, its `sent_at` moved by the time it waited (streamed: decoded,
/// header line rewritten, compressed again) and its items unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spooled_file_body_is_delivered_after_a_restart_with_sent_at_shifted() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let port = dead_port().await;
    let sent_at = "2026-11-26T04:48:54Z";
    let body = large_envelope(&format!("{:032x}", 9), Some(sent_at), 9, 3 << 20);
    let sidecar = start(config_for_port(dir.path(), &pki, port)).await;
    assert_ok(&post(sidecar.local_addr(), "/api/42/envelope/", &[], &body, false).await, "envelope");
    let spool = dir.path().join("spool");
    assert_eq!(body_files(&spool), (0, 1), "one body file, taken by the spool");
    sidecar.shutdown().await;
    // Waits past the shift's one-second threshold (not a timing assertion).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let upstream = Upstream::start_on(&pki, port).await;
    let sidecar = start(config_for_port(dir.path(), &pki, port)).await;
    let got = upstream.wait_for(1, 60).await;
    let sent = &got[0].body;
    let head_end = sent.iter().position(|b| *b == b'\n').unwrap();
    let orig_end = body.iter().position(|b| *b == b'\n').unwrap();
    let header: serde_json::Value = serde_json::from_slice(&sent[..head_end]).unwrap();
    assert_ne!(header["sent_at"].as_str().unwrap(), sent_at, "sent_at was shifted");
    assert_eq!(header["event_id"].as_str().unwrap(), format!("{:032x}", 9));
    assert!(sent[head_end..] == body[orig_end..], "the items arrived unchanged");
    eventually(10, "the delivered body's file removed", || body_files(&spool) == (0, 0)).await;
    sidecar.shutdown().await;
}

/// A large gzip body whose trailer is damaged, and a large envelope whose item length runs past
/// its end: both 400 once the body is read, and neither leaves a file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_and_invalid_large_bodies_are_400_and_leave_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(test_config(dir.path())).await;
    let addr = sidecar.local_addr();
    let env = large_envelope(&format!("{:032x}", 5), None, 5, 3 << 20);
    let mut corrupt = gzip(&env);
    let n = corrupt.len();
    corrupt[n - 6] ^= 0xff;
    assert!(n > 1 << 20, "large on the wire");
    let r = post(addr, "/api/42/envelope/", &[("Content-Encoding", "gzip")], &corrupt, false).await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    let mut bad = env.clone();
    let at = bad.windows(8).position(|w| w == b"\"length\"").unwrap() + 9;
    bad[at] = b'9';
    let r = post(addr, "/api/42/envelope/", &[], &bad, false).await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("exceeds the envelope"), "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(body_files(&dir.path().join("spool")), (0, 0));
    assert_eq!(sidecar.spool().len(), 0);
    sidecar.shutdown().await;
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `/proc/<pid>/status` value in kB.
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A zstd frame of `mib` MiB of zeros (a few KiB), made as a stream.
fn zstd_bomb(mib: usize) -> Vec<u8> {
    let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..mib {
        e.write_all(&zeros).unwrap();
    }
    e.finish().unwrap()
}

/// 20 brotli bombs (809 bytes, 1 GiB of zeros) and 100 zstd bombs (200 MiB of zeros) at once,
/// on the real binary, while `/healthz` is polled: every bomb is refused 413 at the decoded limit,
/// the peak RSS stays under 128 MiB (the decoded bytes went to files, compressed, not to memory;
/// before, they piled up in memory: 252 and 279 MiB), `/healthz` keeps answering, and no file is
/// left in `bodies/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bombs_are_refused_under_the_ceiling_and_leave_no_files() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let addr = free_addr();
    let args: Vec<OsString> =
        vec!["--listen".into(), addr.to_string().into(), "--spool-dir".into(), spool.clone().into()];
    let child = Killed(spawn_binary(addr, &args));
    let pid = child.0.id();
    let brotli: &'static [u8] = include_bytes!("data/zeros_1gib.br");
    let zstd: Arc<Vec<u8>> = Arc::new(zstd_bomb(200));
    let mut bombs = Vec::new();
    for i in 0..120 {
        let zstd = zstd.clone();
        bombs.push(tokio::spawn(async move {
            let (k, v) = auth_header();
            let (enc, body): (&str, &[u8]) = if i < 20 { ("br", brotli) } else { ("zstd", &zstd) };
            request(addr, "POST", "/api/42/envelope/", &[(k, v.as_str()), ("Content-Encoding", enc)], body).await
        }));
    }
    let prober = tokio::spawn(async move {
        let mut answered = 0;
        for _ in 0..20 {
            let r = tokio::time::timeout(Duration::from_secs(10), request(addr, "GET", "/healthz", &[], b"")).await;
            if r.is_ok_and(|r| r.status == 200) {
                answered += 1;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        answered
    });
    for (i, b) in bombs.into_iter().enumerate() {
        let r = b.await.unwrap();
        assert_eq!(r.status, 413, "bomb {i}: {}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(prober.await.unwrap(), 20, "every /healthz answered");
    let peak = status_kb(pid, "VmHWM");
    eprintln!("20 brotli + 100 zstd bombs: peak RSS {} MiB", peak / 1024);
    assert!(peak < MIB_128, "peak RSS {peak} kB is over 128 MiB");
    assert_eq!(body_files(&spool), (0, 0), "no file left in bodies/");
}
