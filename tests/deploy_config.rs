//! The example config shipped in deploy/ stays valid as the configuration grows.

#[test]
fn example_config_file_is_valid() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/sentry-sidecar.toml")).unwrap();
    let c = sentry_sidecar::config::Config::from_toml(&text).unwrap();
    assert_eq!(c.routes.len(), 2);
    assert_eq!(c.tunnel_allow.len(), 1);
}
