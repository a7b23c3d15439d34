#!/usr/bin/env bash
# The benchmark command: each filter's per-request cost in the Proxy-Wasm host as a ratio to an
# empty filter built the same way (wasm instructions, native instructions by callgrind, time), and
# the size of each .wasm. Writes docs/benchmarks.md.
#
#   scripts/bench.sh             the table, written to docs/benchmarks.md
#   scripts/bench.sh --criterion also criterion's statistics (cargo bench)
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"

step "Tools: Debian packages (valgrind), Rust"
ensure_apt_packages
ensure_rust

step "Building the filters"
build_filters
export MESHGUARD_FILTERS_DIR="$FILTERS_DIR"

step "Measuring (about 2 minutes)"
cargo build --release --locked -q -p meshguard-filter-tests --bin meshguard-bench
"$ROOT/target/release/meshguard-bench" --markdown "$ROOT/docs/benchmarks.md"

if [ "${1:-}" = "--criterion" ]; then
  step "criterion"
  cargo bench --locked -p meshguard-filter-tests --bench filters
fi
