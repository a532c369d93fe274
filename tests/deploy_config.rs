#![allow(missing_docs, unreachable_pub)]
//! The example config shipped in deploy/ stays valid as the configuration grows.

#[test]
fn example_config_file_is_valid() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/sentry-sidecar.toml")).unwrap();
    let c = sentry_sidecar::config::Config::from_toml(&text).unwrap();
    assert_eq!(c.routes.len(), 2);
    assert_eq!(c.tunnel_allow.len(), 1);
}

/// The Kubernetes example's spool fits its volume. On disk the spool takes about 1.5 times what
/// it counts against `spool_max_bytes` (row metadata, index, page slack), plus up to 16 MB of WAL
/// and a 512 KiB reserve file; an `emptyDir` over its `sizeLimit` gets the pod evicted, and the
/// spool with it.
#[test]
fn kubernetes_example_spool_fits_its_volume() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes.yaml")).unwrap();
    let after = |key: &str| -> String {
        let at = text.find(key).unwrap_or_else(|| panic!("{key} not in the example")) + key.len();
        text[at..].trim_start().split(['\n', ' ', '}']).next().unwrap().to_owned()
    };
    let max_bytes = {
        let rest = &text[text.find("SENTRY_SIDECAR_SPOOL_MAX_BYTES").expect("the example sets a spool bound")..];
        let value = rest.split("value:").nth(1).unwrap().trim_start().split('\n').next().unwrap().trim();
        value.parse::<bytesize::ByteSize>().unwrap().as_u64()
    };
    let limit = {
        let v = after("sizeLimit:");
        let gib: u64 = v.strip_suffix("Gi").expect("sizeLimit in Gi").parse().unwrap();
        gib << 30
    };
    let on_disk = max_bytes * 3 / 2 + (16 << 20) + (512 << 10);
    assert!(on_disk < limit, "a full spool takes about {on_disk} bytes, over the emptyDir's {limit}");
}

fn deploy_file(name: &str) -> String {
    std::fs::read_to_string(format!("{}/deploy/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// The systemd unit is hardened, and its ExecStart sets nothing the optional config file could
/// set (flags beat the file, so any flag there would silently override it).
#[test]
fn systemd_unit_is_hardened_and_leaves_settings_to_the_config() {
    let unit = deploy_file("sentry-sidecar.service");
    let lines: Vec<&str> = unit.lines().filter(|l| !l.starts_with('#')).collect();
    for directive in [
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "MemoryDenyWriteExecute=yes",
        "LockPersonality=yes",
        "RestrictRealtime=yes",
        "RestrictNamespaces=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "ProtectProc=invisible",
        "ProcSubset=pid",
        "UMask=0077",
        "DynamicUser=yes",
        "StateDirectory=sentry-sidecar",
        "WorkingDirectory=/var/lib/sentry-sidecar",
    ] {
        assert!(lines.contains(&directive), "the unit lacks {directive}");
    }
    let exec = lines.iter().find(|l| l.starts_with("ExecStart=")).unwrap();
    assert_eq!(*exec, "ExecStart=/usr/local/bin/sentry-sidecar", "no settings on the command line");
    assert!(!lines.iter().any(|l| l.starts_with("Environment=")), "no settings in the unit's environment");

    // Scored by systemd itself where it is installed: 2.x or lower is "OK".
    let path = format!("{}/deploy/sentry-sidecar.service", env!("CARGO_MANIFEST_DIR"));
    match std::process::Command::new("systemd-analyze").args(["security", "--offline=yes", &path]).output() {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
            let score: f64 = text
                .lines()
                .find_map(|l| l.split("Overall exposure level for sentry-sidecar.service: ").nth(1))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no score in {text}"));
            assert!(score < 3.0, "systemd-analyze security rates the unit {score}:\n{text}");
        }
        Err(e) => eprintln!("skipped: systemd-analyze is not available ({e})"),
    }
}

/// The compose demo runs in capture mode out of the box: nothing is sent anywhere.
#[test]
fn compose_demo_is_self_contained() {
    let compose = deploy_file("compose.yaml");
    let active: Vec<&str> = compose.lines().filter(|l| !l.trim_start().starts_with('#')).collect();
    assert!(!active.iter().any(|l| l.contains("SENTRY_SIDECAR_UPSTREAM")), "compose sets an upstream");
    assert!(!active.iter().any(|l| l.contains("sentry.io")), "compose names a real Sentry");
    assert!(active.iter().any(|l| l.contains("SENTRY_DSN: http://") && l.contains("@sentry-sidecar:3000/")));
}

/// The metric names in an expression (`sidecar_...`), without a histogram's series suffix.
fn metrics_in(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("sidecar_"))
        .map(|w| {
            let w = w.strip_suffix("_bucket").or(w.strip_suffix("_sum")).or(w.strip_suffix("_count")).unwrap_or(w);
            w.to_owned()
        })
        .collect()
}

fn known(name: &str) -> bool {
    sentry_sidecar::telemetry::ALL.iter().any(|m| m.name == name)
}

/// The dashboard and the alerts only use metrics the sidecar exports, and the dashboard shows
/// what a platform team watches.
#[test]
fn dashboard_and_alerts_use_only_exported_metrics() {
    let dashboard: serde_json::Value = serde_json::from_str(&deploy_file("grafana-dashboard.json")).unwrap();
    let mut used = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(panel["description"].as_str().is_some_and(|d| !d.is_empty()), "{} has no description", panel["title"]);
        for target in panel["targets"].as_array().unwrap() {
            used.extend(metrics_in(target["expr"].as_str().unwrap()));
        }
    }
    for name in &used {
        assert!(known(name), "the dashboard uses {name}, which the sidecar does not export");
    }
    for name in [
        "sidecar_accepted_total",
        "sidecar_forwarded_total",
        "sidecar_ack_duration_seconds",
        "sidecar_spool_envelopes",
        "sidecar_spool_bytes",
        "sidecar_spool_disk_bytes",
        "sidecar_dropped_total",
        "sidecar_rejected_total",
        "sidecar_upstream_attempts_total",
        "sidecar_upstream_circuit_open",
        "sidecar_upstream_connections",
        "sidecar_rate_limited_total",
        "sidecar_retries_total",
        "sidecar_upstream_failures_total",
        "sidecar_spool_oldest_age_seconds",
        "sidecar_resident_memory_bytes",
    ] {
        assert!(used.iter().any(|u| u == name), "the dashboard does not show {name}");
    }

    let alerts = deploy_file("prometheus-alerts.yaml");
    let used = metrics_in(&alerts.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n"));
    assert!(!used.is_empty());
    for name in used {
        assert!(known(&name), "an alert uses {name}, which the sidecar does not export");
    }
}
