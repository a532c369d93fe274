//! The binary's two helpers, for the moment something looks wrong: `check-config` (is this the
//! configuration I think it is, and where did each value come from?) and `send-test-event` (does
//! an event get through this running sidecar, and if not, why not?).
//!
//! Both read the configuration exactly as the sidecar would ([`Invocation`]), so
//! `send-test-event` finds the sidecar at the configured `listen` (and `admin_listen`) without
//! being told twice. `send-test-event` talks to the sidecar as any SDK would, over plain HTTP/1.1
//! on a blocking socket (one request at a time, `Connection: close`): it needs no runtime, and
//! what it learns it reads from the sidecar's own answers, `/readyz` and `/metrics`.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::{Config, Invocation};
use crate::protocol::Dsn;
use crate::telemetry;

/// `check-config`: prints the effective settings with their sources (to stdout) and returns the
/// exit code: 0 when valid, 2 when a setting that only fails at start (the CA file) is bad.
pub fn check_config(inv: &Invocation) -> i32 {
    if let Some(path) = &inv.config.ca_file {
        // The sidecar reads it only when it starts; a typo here would otherwise pass the check.
        let ok = std::fs::read_to_string(path).map_err(|e| e.to_string()).and_then(|pem| {
            if pem.contains("-----BEGIN CERTIFICATE-----") {
                Ok(())
            } else {
                Err("no PEM certificate in it".to_owned())
            }
        });
        if let Err(e) = ok {
            eprintln!("sentry-sidecar: invalid value for `ca_file`: {}: {e}", path.display());
            return 2;
        }
    }
    let mut out = String::new();
    out.push_str(&format!("configuration is valid (sentry-sidecar {})\n", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &inv.config_file {
        out.push_str(&format!("config file: {}\n", path.display()));
    }
    let settings = inv.config.settings();
    let width = settings.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, value) in settings {
        out.push_str(&format!("{key:width$} = {value}  [{}]\n", inv.source(key).name()));
    }
    print!("{out}");
    0
}

/// Why `send-test-event` could not finish its job.
#[derive(Debug, thiserror::Error)]
enum ToolError {
    /// The sidecar did not answer on its address.
    #[error("cannot reach the sidecar at {addr}: {source} (is it running, and is --listen / --admin-listen the address it uses?)")]
    Unreachable {
        /// Where it was expected.
        addr: SocketAddr,
        /// The socket error.
        source: std::io::Error,
    },
    /// The answer was not HTTP.
    #[error("the answer from {0} is not HTTP")]
    NotHttp(SocketAddr),
}

/// `send-test-event`: sends one event through the sidecar configured in `cfg`, watches it for up
/// to `wait` and prints what happened. Returns the exit code: 0 if the event was delivered (or
/// captured, in capture mode), 1 otherwise.
pub fn send_test_event(cfg: &Config, dsn: Option<&Dsn>, wait: Duration) -> i32 {
    match try_send(cfg, dsn, wait) {
        Ok(fate) => fate,
        Err(e) => {
            println!("{e}");
            1
        }
    }
}

fn try_send(cfg: &Config, dsn: Option<&Dsn>, wait: Duration) -> Result<i32, ToolError> {
    let ingest = reachable(cfg.listen);
    let admin = cfg.admin_listen.map(reachable).unwrap_or(ingest);
    let before = Scrape::new(&get(admin, "/metrics")?.1);

    let event_id = format!("{:032x}", fastrand::u128(..));
    let (key, project) = match dsn {
        Some(d) => (d.public_key.as_str(), d.project_id),
        None => ("5e2d7e57000000000000000000000000", 1),
    };
    let body = envelope(&event_id);
    let auth = format!(
        "Sentry sentry_key={key}, sentry_version=7, sentry_client=sentry-sidecar-send-test-event/{}",
        env!("CARGO_PKG_VERSION")
    );
    let path = format!("/api/{project}/envelope/");
    let headers = [("X-Sentry-Auth", auth.as_str()), ("Content-Type", "application/x-sentry-envelope")];
    let (status, answer) = http(ingest, "POST", &path, &headers, body.as_bytes())?;
    if status != 200 {
        println!("refused: the sidecar answered {status}: {}", detail(&answer));
        return Ok(1);
    }
    println!("accepted: event {event_id} (project {project}) is in the spool of the sidecar at {ingest}");

    let deadline = Instant::now() + wait;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = Scrape::new(&get(admin, "/metrics")?.1);
        let delta = |name: &str, label: (&str, &str)| now.sum(name, Some(label)) - before.sum(name, Some(label));
        if delta(telemetry::FORWARDED, ("outcome", "delivered")) > 0.0 {
            println!("delivered: the upstream accepted it");
            return Ok(0);
        }
        if delta(telemetry::FORWARDED, ("outcome", "captured")) > 0.0 {
            println!(
                "captured: no upstream is configured (capture mode), so it was written to {}",
                cfg.spool_dir.join("capture.jsonl").display()
            );
            return Ok(0);
        }
        if delta(telemetry::FORWARDED, ("outcome", "rejected")) > 0.0 {
            let hint = if dsn.is_none() { "; pass --dsn with your project's DSN" } else { "" };
            println!("rejected by the upstream (a 4xx answer: wrong DSN key or project?{hint})");
            return Ok(1);
        }
        let dropped = now.by_label(telemetry::DROPPED, "reason", &before);
        if !dropped.is_empty() {
            println!("dropped by the sidecar: reason {}", dropped.join(", "));
            return Ok(1);
        }
        if Instant::now() >= deadline {
            println!("not delivered within {}:", humantime::format_duration(wait));
            let (_, ready) = get(admin, "/readyz")?;
            println!("  /readyz: {}", ready.trim());
            println!(
                "  spool: {} envelopes, {} bytes waiting",
                now.sum(telemetry::SPOOL_ENVELOPES, None),
                now.sum(telemetry::SPOOL_BYTES, None)
            );
            let open = now.labels_where(telemetry::CIRCUIT_OPEN, "upstream", |v| v > 0.0);
            if !open.is_empty() {
                println!("  circuit open (sending stopped, probing) for: {}", open.join(", "));
            }
            let attempts = now.by_label(telemetry::UPSTREAM_ATTEMPTS, "result", &before);
            println!(
                "  upstream attempts since the event was sent: {}",
                if attempts.is_empty() { "none".to_owned() } else { attempts.join(", ") }
            );
            let retries = now.by_label(telemetry::RETRIES, "reason", &before);
            if !retries.is_empty() {
                println!("  retries scheduled: {}", retries.join(", "));
            }
            println!("  the sidecar's log says why an upstream fails (look for `upstream` warnings)");
            return Ok(1);
        }
    }
}

/// A connectable address for `addr`: a sidecar listening on every interface is reached on
/// loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port()),
        ip if ip.is_unspecified() => SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), addr.port()),
        _ => addr,
    }
}

/// One small error event, in an envelope, that says where it came from.
fn envelope(event_id: &str) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let payload = serde_json::json!({
        "event_id": event_id,
        "timestamp": now,
        "level": "info",
        "platform": "other",
        "logger": "sentry-sidecar",
        "message": "Test event from `sentry-sidecar send-test-event`",
    })
    .to_string();
    format!("{{\"event_id\":\"{event_id}\"}}\n{{\"type\":\"event\",\"length\":{}}}\n{payload}\n", payload.len())
}

/// The `detail` of a JSON error answer, or the body as it is.
fn detail(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(str::to_owned))
        .unwrap_or_else(|| body.trim().to_owned())
}

fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), ToolError> {
    http(addr, "GET", path, &[], b"")
}

/// One HTTP/1.1 exchange on a fresh connection; the sidecar's answers always carry a length, and
/// `Connection: close` makes the end of the stream the end of the answer.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, String), ToolError> {
    let io = |source| ToolError::Unreachable { addr, source };
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(io)?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(req.as_bytes()).and_then(|()| s.write_all(body)).map_err(io)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(io)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or(ToolError::NotHttp(addr))?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse::<u16>().ok()).ok_or(ToolError::NotHttp(addr))?;
    Ok((status, body.to_owned()))
}

/// One series of a `/metrics` page: its name, its labels and its value.
type Row = (String, Vec<(String, String)>, f64);

/// One `/metrics` page.
struct Scrape {
    rows: Vec<Row>,
}

impl Scrape {
    fn new(text: &str) -> Scrape {
        let rows = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let value = value.parse::<f64>().ok()?;
                let (name, labels) = match series.split_once('{') {
                    Some((name, rest)) => (name, rest.trim_end_matches('}')),
                    None => (series, ""),
                };
                // Our label values hold no `",`; the exporter escapes nothing else we use.
                let labels = labels
                    .split("\",")
                    .filter_map(|kv| {
                        let (k, v) = kv.split_once('=')?;
                        Some((k.trim().to_owned(), v.trim_matches('"').to_owned()))
                    })
                    .collect();
                Some((name.to_owned(), labels, value))
            })
            .collect();
        Scrape { rows }
    }

    /// The sum of `name`'s series, or of those with the label `label`.
    fn sum(&self, name: &str, label: Option<(&str, &str)>) -> f64 {
        self.rows
            .iter()
            .filter(|(n, labels, _)| {
                n == name && label.is_none_or(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    /// The values of `label` on `name`'s series whose value passes `keep`.
    fn labels_where(&self, name: &str, label: &str, keep: impl Fn(f64) -> bool) -> Vec<String> {
        let mut out: Vec<String> = self
            .rows
            .iter()
            .filter(|(n, _, v)| n == name && keep(*v))
            .filter_map(|(_, labels, _)| labels.iter().find(|(k, _)| k == label).map(|(_, v)| v.clone()))
            .collect();
        out.dedup();
        out
    }

    /// `value: increase` for each value of `label` whose `name` series rose since `before`.
    fn by_label(&self, name: &str, label: &str, before: &Scrape) -> Vec<String> {
        let mut values = self.labels_where(name, label, |_| true);
        values.sort();
        values.dedup();
        values
            .into_iter()
            .filter_map(|v| {
                let up = self.sum(name, Some((label, &v))) - before.sum(name, Some((label, &v)));
                (up > 0.0).then(|| format!("{v}: {up}"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_sums_by_label_and_tells_what_rose() {
        let before = Scrape::new(
            "# HELP x y\nsidecar_dropped_total{reason=\"too_old\",category=\"error\"} 1\n\
             sidecar_dropped_total{reason=\"spool_full\",category=\"error\"} 0\nsidecar_spool_bytes 10\n",
        );
        let after = Scrape::new(
            "sidecar_dropped_total{reason=\"too_old\",category=\"error\"} 1\n\
             sidecar_dropped_total{reason=\"spool_full\",category=\"error\"} 2\n\
             sidecar_dropped_total{reason=\"spool_full\",category=\"transaction\"} 1\nsidecar_spool_bytes 12\n",
        );
        assert_eq!(after.sum("sidecar_spool_bytes", None), 12.0);
        assert_eq!(after.sum("sidecar_dropped_total", Some(("reason", "spool_full"))), 3.0);
        assert_eq!(after.by_label("sidecar_dropped_total", "reason", &before), ["spool_full: 3"]);
    }

    #[test]
    fn the_test_envelope_is_one_event_with_its_length() {
        let text = envelope("ab");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "{\"event_id\":\"ab\"}");
        let header: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(header["length"].as_u64().unwrap() as usize, lines[2].len());
        assert_eq!(reachable("0.0.0.0:3000".parse().unwrap()), "127.0.0.1:3000".parse().unwrap());
        assert_eq!(detail("{\"detail\":\"bad key\"}"), "bad key");
    }
}
