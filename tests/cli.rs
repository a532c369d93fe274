#![allow(missing_docs, unreachable_pub)]
//! The real binary, as a new user meets it: --help, configuration errors, precedence of flag > env >
//! file, capture mode by default, and a clean exit on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sentry-sidecar"));
    for (k, _) in std::env::vars() {
        if k.starts_with("SENTRY_SIDECAR_") {
            c.env_remove(k);
        }
    }
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_ready(addr: SocketAddr, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("sidecar exited early: {status}");
        }
        // Ready means answering, not only listening: the kernel accepts connections as soon as
        // the socket is bound, before the process has installed its SIGTERM handler.
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            use std::io::{Read, Write};
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut answer = String::new();
            if s.write_all(b"GET /readyz HTTP/1.1\r\nHost: sidecar\r\nConnection: close\r\n\r\n").is_ok()
                && s.read_to_string(&mut answer).is_ok()
                && answer.starts_with("HTTP/1.1 200")
            {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("sidecar did not listen on {addr}");
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(ok.success());
}

#[test]
fn help_documents_every_setting() {
    let out = bin().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for s in [
        "--config",
        "--listen",
        "--upstream",
        "--spool-dir",
        "--ca-file",
        "--admin-listen",
        "--tunnel-path",
        "--tunnel-allow",
        "--compression",
        "--max-request-bytes",
        "--max-decoded-bytes",
        "--connect-timeout",
        "--request-timeout",
        "--h2-concurrency",
        "--h1-connections",
        "--batch-size",
        "--retry-initial",
        "--retry-max",
        "--shutdown-timeout",
        "--worker-threads",
        "--log-format",
        "--log-level",
        "SENTRY_SIDECAR_LISTEN",
        "SENTRY_SIDECAR_UPSTREAM",
        "capture",
    ] {
        assert!(help.contains(s), "--help lacks {s}");
    }
}

#[test]
fn config_errors_are_one_line_and_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    for (toml, key) in [
        ("listen = \"127.0.0.1:1\"\nupstrem = \"https://x\"\n", "upstrem"),
        ("batch_size = -3\n", "batch_size"),
        ("request_timeout = \"often\"\n", "request_timeout"),
        ("[[routes]]\nproject = \"x\"\nupstream = \"https://a\"\n", "routes[0].project"),
        ("listen = \n", "line 1"),
    ] {
        std::fs::write(&file, toml).unwrap();
        let out = bin().arg("--config").arg(&file).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{toml}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(err.contains(key), "{err} should name {key}");
    }
    let out = bin().args(["--listen", "nowhere"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("--listen"), "{err}");
    let out = bin().env("SENTRY_SIDECAR_BATCH_SIZE", "zero").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr).unwrap().contains("SENTRY_SIDECAR_BATCH_SIZE"));
}

/// A bad environment value is reported by the variable's name, which is what has to be fixed,
/// and the same value given as the flag by the flag's.
#[test]
fn a_bad_environment_value_names_the_variable() {
    let out = bin().env("SENTRY_SIDECAR_GZIP_LEVEL", "11").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("invalid value for SENTRY_SIDECAR_GZIP_LEVEL: "), "{err}");
    assert!(!err.contains("--gzip-level"), "{err}");
    let out = bin().env("SENTRY_SIDECAR_GZIP_LEVEL", "1").args(["--gzip-level", "11"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr).unwrap().contains("invalid value for --gzip-level: "));
}

#[test]
fn flag_beats_env_beats_file() {
    let dir = tempfile::tempdir().unwrap();
    let (p_file, p_env, p_flag) = (free_port(), free_port(), free_port());
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        format!("listen = \"127.0.0.1:{p_file}\"\nspool_dir = \"{}\"\n", dir.path().join("d").display()),
    )
    .unwrap();

    let run = |env: Option<u16>, flag: Option<u16>, expect: u16| {
        let mut cmd = bin();
        cmd.arg("--config").arg(&file).stderr(Stdio::null());
        if let Some(p) = env {
            cmd.env("SENTRY_SIDECAR_LISTEN", format!("127.0.0.1:{p}"));
        }
        if let Some(p) = flag {
            cmd.arg("--listen").arg(format!("127.0.0.1:{p}"));
        }
        let mut child = cmd.spawn().unwrap();
        wait_ready(SocketAddr::from(([127, 0, 0, 1], expect)), &mut child);
        sigterm(&child);
        assert!(child.wait().unwrap().success());
    };
    run(None, None, p_file);
    run(Some(p_env), None, p_env);
    run(Some(p_env), Some(p_flag), p_flag);
    assert!(dir.path().join("d").is_dir(), "spool_dir from the file was used");
}

#[test]
fn new_user_capture_mode_then_clean_sigterm() {
    capture_mode_then_clean_sigterm(&[]);
}

/// The same on a work-stealing runtime (the default is one thread).
#[test]
fn capture_mode_on_two_worker_threads() {
    capture_mode_then_clean_sigterm(&["--worker-threads", "2"]);
}

fn capture_mode_then_clean_sigterm(extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut child = bin()
        .current_dir(dir.path())
        .args(["--listen", &addr.to_string()])
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_ready(addr, &mut child);
    let f = load_fixture("02_sdk_error_gzip");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let r = rt.block_on(raw(addr, &f.wire(addr)));
    assert_eq!(r.status, 200);
    let event_id = r.json()["id"].as_str().unwrap().to_owned();

    // The default data dir is ./sentry-sidecar-data, with the capture file in it.
    let capture = dir.path().join("sentry-sidecar-data/capture.jsonl");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&capture).unwrap_or_default().contains(&event_id) {
        assert!(Instant::now() < deadline, "event not captured");
        std::thread::sleep(Duration::from_millis(20));
    }
    sigterm(&child);
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let log: Vec<String> = stderr.lines().map_while(Result::ok).collect();
    assert!(child.wait().unwrap().success());
    let line = log.iter().find(|l| l.contains("captured")).unwrap_or_else(|| panic!("no capture log line in {log:?}"));
    for part in ["project=42", &event_id, "items=event", "bytes="] {
        assert!(line.contains(part), "{line} lacks {part}");
    }
    assert!(log.iter().any(|l| l.contains("capture mode")), "{log:?}");
}

/// A second sidecar on a spool directory in use exits at once, with one line naming the
/// directory and the holder's pid, before it opens the database; the first keeps working.
#[test]
fn a_second_instance_on_the_same_spool_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut first =
        bin().args(["--listen", &addr.to_string(), "--spool-dir"]).arg(&spool).stderr(Stdio::null()).spawn().unwrap();
    wait_ready(addr, &mut first);
    let started = Instant::now();
    let second =
        bin().args(["--listen", &format!("127.0.0.1:{}", free_port()), "--spool-dir"]).arg(&spool).output().unwrap();
    let waited = started.elapsed();
    let err = String::from_utf8(second.stderr).unwrap();
    assert_eq!(second.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    let expected = format!("another sentry-sidecar holds the spool {} (pid {})", spool.display(), first.id());
    assert!(err.contains(&expected), "{err}");
    // SQLite's busy wait is 5 s; the lock is checked before the database is opened.
    assert!(waited < Duration::from_secs(4), "took {waited:?}");
    assert!(first.try_wait().unwrap().is_none(), "the first instance is unaffected");
    sigterm(&first);
    assert!(first.wait().unwrap().success());
}

/// An address in use is reported once, with the address, on one line.
#[test]
fn a_busy_port_is_one_line_with_the_os_error_once() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = bin().args(["--listen", &addr.to_string(), "--spool-dir"]).arg(dir.path()).output().unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    assert_eq!(err.matches("Address already in use").count(), 1, "{err}");
}

/// `check-config` prints every effective setting with its source, the DSN keys masked, and
/// changes nothing: it neither listens nor creates the spool.
#[test]
fn check_config_prints_each_setting_with_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:4567\"\nspool_dir = \"{}\"\ntunnel_allow = [\"https://{KEY}@o1.ingest.sentry.io/42\"]\n",
            dir.path().join("spool").display()
        ),
    )
    .unwrap();
    let out = bin()
        .env("SENTRY_SIDECAR_BATCH_SIZE", "7")
        .args(["check-config", "--retry-max", "10s", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let row = |key: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(key))
            .unwrap_or_else(|| panic!("no row for {key} in\n{text}"))
            .to_owned()
    };
    assert!(text.starts_with("configuration is valid"), "{text}");
    assert!(row("batch_size").contains("= 7") && row("batch_size").ends_with("[env]"), "{text}");
    assert!(row("retry_max").contains("= 10s") && row("retry_max").ends_with("[flag]"), "{text}");
    assert!(row("listen").contains("127.0.0.1:4567") && row("listen").ends_with("[file]"), "{text}");
    assert!(row("gzip_level").contains("= 1") && row("gzip_level").ends_with("[default]"), "{text}");
    assert!(row("upstream").contains("capture mode") && row("upstream").ends_with("[unset]"), "{text}");
    assert!(row("tunnel_allow").contains("https://0123****@o1.ingest.sentry.io/42"), "{text}");
    assert!(!text.contains(KEY), "the key is masked: {text}");
    assert!(!dir.path().join("spool").exists(), "check-config created the spool");
}

/// An invalid configuration is one line on stderr and exit code 2, as for the sidecar itself;
/// so is a CA file that the sidecar would only fail to read when it starts.
#[test]
fn check_config_exits_2_on_an_invalid_setting() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "[[routes]]\nproject = 1\nupstreem = \"https://x\"\n").unwrap();
    let out = bin().arg("check-config").arg("--config").arg(&file).output().unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("routes[0].upstreem"), "{err}");
    assert!(out.stdout.is_empty());

    let out = bin().args(["check-config", "--ca-file"]).arg(dir.path().join("missing.pem")).output().unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("`ca_file`") && err.contains("missing.pem"), "{err}");
}

fn send_test_event(addr: SocketAddr, extra: &[&str]) -> (Option<i32>, String) {
    let out = bin().args(["send-test-event", "--listen", &addr.to_string()]).args(extra).output().unwrap();
    (out.status.code(), String::from_utf8(out.stdout).unwrap() + &String::from_utf8_lossy(&out.stderr))
}

/// In capture mode the test event is accepted and captured, and the tool says where it went.
#[test]
fn send_test_event_through_a_capturing_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut child = bin()
        .args(["--listen", &addr.to_string(), "--spool-dir"])
        .arg(dir.path())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_ready(addr, &mut child);
    let (code, text) = send_test_event(addr, &[]);
    sigterm(&child);
    let status = child.wait().unwrap();
    assert_eq!(code, Some(0), "{text}");
    assert!(status.success(), "the sidecar exited with {status}; the tool said: {text}");
    assert!(text.contains("accepted: event "), "{text}");
    assert!(text.contains("captured") && text.contains("capture.jsonl"), "{text}");
    let id = text.split("event ").nth(1).unwrap().split_whitespace().next().unwrap();
    assert!(std::fs::read_to_string(dir.path().join("capture.jsonl")).unwrap().contains(id));
}

/// Forwarding to a TLS upstream the event is delivered; to a dead upstream the tool says it was
/// not, with the spool, the attempts and `/readyz`; with no sidecar at all, that it is not there.
#[test]
fn send_test_event_says_delivered_or_why_not() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let pki = Pki::new();
    let up = rt.block_on(Upstream::start(&pki));
    let dir = tempfile::tempdir().unwrap();
    let dead = rt.block_on(dead_port());
    let run = |upstream: String, extra: &[&str]| {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut child = bin()
            .args(["--listen", &addr.to_string(), "--upstream", &upstream, "--retry-max", "1s", "--spool-dir"])
            .arg(dir.path().join(format!("spool-{}", addr.port())))
            .arg("--ca-file")
            .arg(&pki.ca_file)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_ready(addr, &mut child);
        let got = send_test_event(addr, extra);
        sigterm(&child);
        assert!(child.wait().unwrap().success());
        got
    };
    let dsn = format!("http://{KEY}@127.0.0.1/42");
    let (code, text) = run(up.url().as_str().to_owned(), &["--dsn", &dsn]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("accepted") && text.contains("delivered"), "{text}");
    assert_eq!(up.received().len(), 1);

    let (code, text) = run(format!("https://127.0.0.1:{dead}"), &["--wait", "2s"]);
    assert_eq!(code, Some(1), "{text}");
    for part in ["accepted", "not delivered within 2s", "/readyz: {", "spool: 1 envelopes", "upstream attempts"] {
        assert!(text.contains(part), "{part} missing from\n{text}");
    }

    let (code, text) = send_test_event(SocketAddr::from(([127, 0, 0, 1], dead)), &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("cannot reach the sidecar at 127.0.0.1:"), "{text}");
}
