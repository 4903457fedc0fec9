#!/usr/bin/env bash
# Runs one fuzz target under libFuzzer + AddressSanitizer for a bounded time (opt-in; not in CI).
#   scripts/fuzz.sh TARGET [SECONDS [RUNS]]   e.g. scripts/fuzz.sh framing 60
#                                             scripts/fuzz.sh wire 900 10000000 (stops at 10 M runs)
#   scripts/fuzz.sh --list
# Targets live in fuzz/fuzz_targets/, corpora in fuzz/corpus/<target>/ (new finds are added
# there; `cargo test` replays every corpus file, so commit the interesting ones and any crasher).
# Stable Rust: RUSTC_BOOTSTRAP=1 unlocks -Zsanitizer, as cargo-fuzz does on nightly.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--list" || $# -eq 0 ]]; then
    ls fuzz/fuzz_targets | sed 's/\.rs$//'
    exit 0
fi
target=$1
secs=${2:-60}
runs=${3:--1}
triple=$(rustc -vV | sed -n 's/^host: //p')
export RUSTC_BOOTSTRAP=1
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks -Zsanitizer=address"
# Crates that are not ours (fuzz/rustc-untraced.sh lists them) are built without coverage.
export RUSTC_WRAPPER="$PWD/fuzz/rustc-untraced.sh"
cargo build --release --manifest-path fuzz/Cargo.toml --target "$triple" --bin "$target"
mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
exec "${CARGO_TARGET_DIR:-fuzz/target}/$triple/release/$target" -max_total_time="$secs" -runs="$runs" -rss_limit_mb=2048 \
    -artifact_prefix="fuzz/artifacts/$target/" "fuzz/corpus/$target"
