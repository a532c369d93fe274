#![allow(missing_docs, unreachable_pub)]
//! The README's metrics reference lists every metric the code exports, so the two cannot drift.

#[test]
fn every_metric_is_in_the_readme() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let code = std::fs::read_to_string(format!("{root}/src/telemetry.rs")).unwrap();
    let names: Vec<&str> = code
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub const ")?.split_once("&str = \"")?.1.strip_suffix("\";"))
        .collect();
    assert!(names.len() >= 15, "metric names found in telemetry.rs: {names:?}");
    for name in names {
        assert!(readme.contains(&format!("| `{name}` |")), "{name} is not in the README's metrics reference");
    }
}
