#!/bin/sh
# Builds fuzz/corpus/<target>/ from the captured requests in tests/fixtures/ plus a few hand-made
# inputs (see seed/src/main.rs for which view of a fixture each target gets, envelope_stream with a
# control byte choosing how the body is split in front). Stable Rust is enough.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cargo run --quiet --release --manifest-path "$here/seed/Cargo.toml" --target-dir "$here/target/seed" -- \
    "$here/../tests/fixtures" "$here/corpus"
