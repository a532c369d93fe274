//! The built-in defaults, in one table.
//!
//! Each default is written once, as a user would write it on the command line, so that `--help`
//! can show it verbatim and the resolver can parse it with the same parser as a flag, an
//! environment variable or a file value: the help text and the behaviour cannot drift apart.
//! Settings whose absence means something (no upstream = capture mode, no separate admin
//! listener, no tunnel) have no row; their help says what absence means.

/// Every setting with a built-in value: its key (the TOML key; the flag is the key with `-`) and
/// the value as it would be written.
pub(super) const DEFAULTS: &[(&str, &str)] = &[
    ("listen", "127.0.0.1:3000"),
    ("spool_dir", "./sentry-sidecar-data"),
    ("tunnel_path", "/tunnel"),
    ("compression", "gzip"),
    ("gzip_level", "1"),
    ("max_request_bytes", "20MiB"),
    ("max_decoded_bytes", "100MiB"),
    ("max_inflight_bytes", "48MiB"),
    ("max_connections", "1024"),
    ("header_read_timeout", "5s"),
    ("body_read_timeout", "10s"),
    ("body_min_rate", "1KiB"),
    ("keep_alive_timeout", "10s"),
    ("connect_timeout", "5s"),
    ("request_timeout", "30s"),
    ("pool_idle_timeout", "50s"),
    ("h2_concurrency", "64"),
    ("h1_connections", "64"),
    ("batch_size", "256"),
    ("retry_initial", "1s"),
    ("retry_max", "5m"),
    ("shutdown_timeout", "10s"),
    ("worker_threads", "1"),
    ("durability", "process"),
    ("spool_max_bytes", "1GiB"),
    ("spool_max_age", "24h"),
    ("spool_full_policy", "drop-oldest"),
    ("delivery_order", "oldest-first"),
    ("memory_spool_bytes", "32MiB"),
    ("rate_limit_policy", "hold"),
    ("max_hold", "1h"),
    ("answer_429", "false"),
    ("drain_rate", "1000"),
    ("circuit_grace", "5s"),
    ("circuit_failures", "3"),
    ("probe_max_interval", "5s"),
    ("log_format", "text"),
    ("log_level", "info"),
];

/// The built-in value of `key`, if it has one.
pub(super) fn of(key: &str) -> Option<&'static str> {
    DEFAULTS.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's configuration reference shows the same defaults as `--help`.
    #[test]
    fn readme_configuration_reference_shows_the_table() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        for (key, value) in DEFAULTS {
            let row = readme
                .lines()
                .find(|l| l.starts_with("| `--") && l.contains(&format!(" / `{key}` |")))
                .unwrap_or_else(|| panic!("{key} has no row in the README's configuration reference"));
            assert!(row.contains(&format!("| `{value}` |")), "README row for {key} should show `{value}`: {row}");
        }
    }
}
