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
