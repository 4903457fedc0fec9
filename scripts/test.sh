#!/usr/bin/env bash
# Runs every check surv has: formatting, clippy, and the whole test suite (unit tests and the
# end-to-end tests that start real servers and viewers on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -q -- -D warnings
cargo test --workspace
