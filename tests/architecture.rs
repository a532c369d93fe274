#![allow(missing_docs, unreachable_pub)]
//! The import rule of the crate, checked: `src/lib.rs` holds a table of every module, its one job
//! and the modules it may import; this test reads that table and every source file, and fails
//! when a module names (`crate::x`) a module its row does not list, or when a module is missing
//! from the table.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The map's rows: module -> the modules it may import.
fn rules() -> BTreeMap<String, BTreeSet<String>> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let mut rules = BTreeMap::new();
    for line in lib.lines() {
        let Some(row) = line.strip_prefix("//! | [`") else { continue };
        let module = row.split('`').next().unwrap().to_owned();
        let allowed = row.rsplit('|').nth(1).unwrap().trim();
        let allowed: BTreeSet<String> = if allowed == "nothing" {
            BTreeSet::new()
        } else {
            allowed.split(',').map(|m| m.trim().trim_matches('`').to_owned()).collect()
        };
        rules.insert(module, allowed);
    }
    rules
}

/// Every `.rs` file of a module (a file, or a folder of files).
fn files(module: &str) -> Vec<PathBuf> {
    let file = src().join(format!("{module}.rs"));
    if file.exists() {
        return vec![file];
    }
    let mut out = Vec::new();
    let mut stack = vec![src().join(module)];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out
}

/// The crate modules a file names through `crate::`, outside comments.
fn imports(path: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let name: String = rest[at + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            // `sentry_sidecar::crate` does not exist; `my_crate::` would end in `crate::` too.
            let before = rest[..at].chars().last();
            if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') && !name.is_empty() {
                out.insert(name);
            }
            rest = &rest[at + 7..];
        }
    }
    out
}

#[test]
fn every_module_imports_only_what_the_map_allows() {
    let rules = rules();
    assert!(rules.len() >= 10, "the map in src/lib.rs was not found: {rules:?}");
    let mut wrong = Vec::new();
    for (module, allowed) in &rules {
        let files = files(module);
        assert!(!files.is_empty(), "the map names `{module}`, which has no source");
        for f in files {
            for used in imports(&f) {
                if used != *module && !allowed.contains(&used) {
                    wrong.push(format!("{} imports `{used}`", f.strip_prefix(src()).unwrap().display()));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "imports the map in src/lib.rs does not allow:\n{}", wrong.join("\n"));
}

#[test]
fn every_module_is_on_the_map() {
    let rules = rules();
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    for line in lib.lines() {
        if let Some(m) = line.strip_prefix("pub mod ").or_else(|| line.strip_prefix("mod ")) {
            let m = m.trim_end_matches(';');
            assert!(rules.contains_key(m), "module `{m}` is not on the map in src/lib.rs");
        }
    }
}

/// The rules the issue tracker asked for hold through the table, whatever else it says.
#[test]
fn the_flow_rules_are_in_the_map() {
    let rules = rules();
    assert!(rules["protocol"].is_empty(), "protocol imports nothing of ours");
    assert!(!rules["upstream"].contains("spool"), "upstream knows nothing of the spool");
    for m in ["dispatch", "upstream"] {
        assert!(!rules["ingest"].contains(m), "ingest never reaches {m}");
    }
    for m in ["ingest", "dispatch", "upstream", "http"] {
        assert!(!rules["spool"].contains(m), "the spool knows neither {m}");
    }
}

/// The checker itself: a forbidden import in a file is found, a comment is not.
#[test]
fn the_checker_finds_imports_and_skips_comments() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("x.rs");
    std::fs::write(
        &f,
        "use crate::spool::Record;\n// crate::dispatch in a comment\nlet a = crate::codec::compress(x);\n",
    )
    .unwrap();
    assert_eq!(imports(&f), ["codec", "spool"].into_iter().map(String::from).collect());
}
