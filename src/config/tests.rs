//! Defaults, precedence, file parsing and error messages of the configuration.

use super::*;

#[test]
fn defaults() {
    let c = Config::from_toml("").unwrap();
    assert_eq!(c.listen, "127.0.0.1:3000".parse().unwrap());
    assert_eq!(c.spool_dir, PathBuf::from("./sentry-sidecar-data"));
    assert_eq!(c.upstream, None);
    assert_eq!(c.compression, Encoding::Gzip);
    assert_eq!(c.worker_threads, 1);
    assert!(c.tunnel_allow.is_empty());
}

#[test]
fn file_values_and_routes() {
    let c = Config::from_toml(
        r#"
        listen = "127.0.0.1:4000"
        upstream = "https://o1.ingest.sentry.io/"
        request_timeout = "2s"
        max_request_bytes = "1MiB"
        batch_size = 10
        worker_threads = 2
        tunnel_allow = ["https://abc@o1.ingest.sentry.io/42"]
        [[routes]]
        project = 7
        upstream = "https://sentry.example.com/prefix/"
        [[routes]]
        key = "abc"
        upstream = "http://127.0.0.1:9000"
        "#,
    )
    .unwrap();
    assert_eq!(c.listen.port(), 4000);
    assert_eq!(c.upstream.as_ref().unwrap().as_str(), "https://o1.ingest.sentry.io");
    assert_eq!(c.request_timeout, Duration::from_secs(2));
    assert_eq!(c.max_request_bytes, 1024 * 1024);
    assert_eq!(c.batch_size, 10);
    assert_eq!(c.worker_threads, 2);
    assert_eq!(c.tunnel_allow[0].project_id, 42);
    assert_eq!(c.routes.len(), 2);
    assert_eq!(c.routes[0].upstream.as_str(), "https://sentry.example.com/prefix");
    assert_eq!(c.routes[1].key.as_deref(), Some("abc"));
}

#[test]
fn errors_name_the_key() {
    let msg = |t: &str| Config::from_toml(t).unwrap_err().to_string();
    assert_eq!(msg("listn = \"x\""), "unknown configuration key `listn`");
    assert!(msg("listen = \"nope\"").starts_with("invalid value for `listen`"));
    assert!(msg("batch_size = 0").starts_with("invalid value for `batch_size`"));
    assert!(msg("upstream = \"ftp://x\"").starts_with("invalid value for `upstream`"));
    assert!(msg("request_timeout = \"soon\"").starts_with("invalid value for `request_timeout`"));
    assert!(msg("[[routes]]\nproject = 1\n").starts_with("invalid value for `routes[0].upstream`"));
    assert_eq!(
        msg("[[routes]]\nproject = 1\nupstream = \"https://x\"\nfoo = 1\n"),
        "unknown configuration key `routes[0].foo`"
    );
    assert!(msg("tunnel_allow = [\"nope\"]").starts_with("invalid value for `tunnel_allow`"));
    assert!(msg("listen = [1]").contains("listen"));
}

#[test]
fn flags_beat_env_beat_file() {
    let file = file::parse("batch_size = 5\nlisten = \"127.0.0.1:5000\"", Path::new("c.toml")).unwrap();
    let cli = cli::parse(&["sentry-sidecar".into(), "--batch-size".into(), "9".into()]).unwrap();
    let c = Config::resolve(cli, file).unwrap();
    assert_eq!(c.batch_size, 9, "flag wins over file");
    assert_eq!(c.listen.port(), 5000, "file wins over default");
}

/// The table gives what the code used before it existed, value for value.
#[test]
fn defaults_table_gives_the_built_in_values() {
    let c = Config::from_toml("").unwrap();
    assert_eq!(c.listen, SocketAddr::from(([127, 0, 0, 1], 3000)));
    assert_eq!(c.spool_dir, PathBuf::from("./sentry-sidecar-data"));
    assert_eq!(c.tunnel_path, "/tunnel");
    assert_eq!(c.compression, Encoding::Gzip);
    assert_eq!(c.gzip_level, 1);
    assert_eq!(c.max_request_bytes, 20 * 1024 * 1024);
    assert_eq!(c.max_decoded_bytes, 100 * 1024 * 1024);
    assert_eq!(c.max_inflight_bytes, 48 * 1024 * 1024);
    assert_eq!(c.max_connections, 1024);
    assert_eq!(c.connect_timeout, Duration::from_secs(5));
    assert_eq!(c.request_timeout, Duration::from_secs(30));
    assert_eq!(c.pool_idle_timeout, Duration::from_secs(50));
    assert_eq!(c.h2_concurrency, 64);
    assert_eq!(c.h1_connections, 64);
    assert_eq!(c.batch_size, 256);
    assert_eq!(c.retry_initial, Duration::from_secs(1));
    assert_eq!(c.retry_max, Duration::from_secs(300));
    assert_eq!(c.shutdown_timeout, Duration::from_secs(10));
    assert_eq!(c.worker_threads, 1);
    assert_eq!(c.durability, Durability::Process);
    assert_eq!(c.spool_max_bytes, 1024 * 1024 * 1024);
    assert_eq!(c.spool_max_age, Duration::from_secs(24 * 3600));
    assert_eq!(c.spool_full_policy, FullPolicy::DropOldest);
    assert_eq!(c.delivery_order, DeliveryOrder::OldestFirst);
    assert_eq!(c.memory_spool_bytes, 32 * 1024 * 1024);
    assert_eq!(c.rate_limit_policy, RateLimitPolicy::Hold);
    assert_eq!(c.max_hold, Duration::from_secs(3600));
    assert!(!c.answer_429);
    assert_eq!(c.drain_rate, 1000);
    assert_eq!(c.circuit_grace, Duration::from_secs(5));
    assert_eq!(c.circuit_failures, 3);
    assert_eq!(c.probe_max_interval, Duration::from_secs(5));
    assert_eq!(c.log_format, LogFormat::Text);
    assert_eq!(c.log_level, "info");
    assert_eq!((c.admin_listen, c.upstream.is_none(), c.ca_file.is_none()), (None, true, true));
}

/// Writing each table value into the file changes nothing: the table's text means, through
/// the file's parsers, exactly what `from_toml("")` resolves.
#[test]
fn each_table_value_written_in_the_file_is_the_default() {
    let base = format!("{:?}", Config::from_toml("").unwrap());
    for (key, value) in defaults::DEFAULTS {
        let c = Config::from_toml(&format!("{key} = {value:?}")).unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(format!("{c:?}"), base, "{key} = {value:?}");
    }
}

fn args(list: &[&str]) -> Vec<OsString> {
    list.iter().map(OsString::from).collect()
}

/// `check-config` shows each default exactly as the table writes it, so its output can be
/// pasted into a config file.
#[test]
fn settings_show_each_default_as_the_table_writes_it() {
    let inv = Invocation::parse(&args(&["sentry-sidecar", "check-config"])).unwrap();
    assert!(matches!(inv.tool, Some(Tool::CheckConfig)));
    let settings = inv.config.settings();
    for (key, value) in defaults::DEFAULTS {
        let shown = settings.iter().find(|(k, _)| k == key).unwrap_or_else(|| panic!("{key} not shown"));
        assert_eq!(shown.1, *value, "{key}");
        assert_eq!(inv.source(key), Source::Default, "{key}");
    }
    assert_eq!(inv.source("upstream"), Source::Unset);
    assert!(settings.contains(&("upstream", "(none: capture mode)".to_owned())));
}

/// Every flag has a row in `check-config`'s output, and every row is a flag (or `routes`).
#[test]
fn settings_cover_every_flag() {
    let keys: Vec<&str> = Config::from_toml("").unwrap().settings().iter().map(|(k, _)| *k).collect();
    let cmd = cli::command();
    let flags: Vec<&str> = cmd.get_arguments().map(|a| a.get_id().as_str()).filter(|id| *id != "config").collect();
    for flag in &flags {
        assert!(keys.contains(flag), "--{flag} is not in the settings");
    }
    for key in &keys {
        assert!(flags.contains(key) || *key == "routes", "{key} is not a flag");
    }
}

#[test]
fn sources_say_flag_file_default_or_unset_and_keys_are_masked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "batch_size = 5\nlisten = \"127.0.0.1:5000\"\n\
         tunnel_allow = [\"https://0123456789abcdef0123456789abcdef@o1.ingest.sentry.io/42\"]\n\
         [[routes]]\nkey = \"fedcba9876543210fedcba9876543210\"\nupstream = \"https://x.example\"\n",
    )
    .unwrap();
    let path = path.to_str().unwrap();
    // Settings before and after the helper's name both count.
    let inv =
        Invocation::parse(&args(&["sentry-sidecar", "--batch-size", "9", "check-config", "--config", path])).unwrap();
    assert_eq!(inv.config.batch_size, 9);
    assert_eq!(inv.source("batch_size"), Source::Flag);
    assert_eq!(inv.source("config"), Source::Flag);
    assert_eq!(inv.source("listen"), Source::File);
    assert_eq!(inv.source("routes"), Source::File);
    assert_eq!(inv.source("retry_max"), Source::Default);
    assert_eq!(inv.source("ca_file"), Source::Unset);
    let text = format!("{:?}", inv.config.settings());
    assert!(text.contains("https://0123****@o1.ingest.sentry.io/42"), "{text}");
    assert!(text.contains("key fedc**** -> https://x.example"), "{text}");
    assert!(!text.contains("0123456789abcdef") && !text.contains("fedcba98765"), "{text}");
}

#[test]
fn send_test_event_takes_its_own_options_and_the_sidecars() {
    let inv = Invocation::parse(&args(&[
        "sentry-sidecar",
        "send-test-event",
        "--listen",
        "127.0.0.1:4000",
        "--dsn",
        "https://k@o1.ingest.sentry.io/7",
    ]))
    .unwrap();
    assert_eq!(inv.config.listen.port(), 4000);
    let Some(Tool::SendTestEvent { dsn: Some(dsn), wait }) = inv.tool else { panic!("{:?}", inv.tool) };
    assert_eq!((dsn.project_id, wait), (7, Duration::from_secs(10)));
    assert_eq!(duration(Duration::from_millis(1500)), "1500ms");
    assert_eq!(size(1536), "1536");
}
