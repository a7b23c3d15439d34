#!/usr/bin/env bash
# The benchmark command: each filter's per-request cost in the Proxy-Wasm host as a ratio to an
# empty filter built the same way (wasm instructions, native instructions by callgrind, time), the
# size of each .wasm, and the filters' cost in real Envoy (Envoy's CPU time per request, latency at
# a fixed rate, memory; load from fortio, pinned, built from its Go module). Writes
# docs/benchmarks.md.
#
#   scripts/bench.sh             the tables, written to docs/benchmarks.md
#   scripts/bench.sh --criterion also criterion's statistics (cargo bench)
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"

FORTIO_VERSION="v1.63.0" # later tags need a module the Go module proxy here refuses

step "Tools: Debian packages (valgrind), Rust, Go, the pinned Envoy, fortio ${FORTIO_VERSION}"
ensure_apt_packages
ensure_rust
ensure_go
eval "$(tests/envoy/install.sh)"
fortio_dir="${MESHGUARD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/meshguard}/fortio-${FORTIO_VERSION}"
if [ ! -x "$fortio_dir/fortio" ]; then
  info "building fortio ${FORTIO_VERSION} from its Go module into $fortio_dir"
  mkdir -p "$fortio_dir"
  GOBIN="$fortio_dir" CGO_ENABLED=0 go install "fortio.org/fortio@${FORTIO_VERSION}"
fi

step "Building the filters"
build_filters
export MESHGUARD_FILTERS_DIR="$FILTERS_DIR"

step "Measuring (about 2 minutes)"
cargo build --release --locked -q -p meshguard-filter-tests --bin meshguard-bench
"$ROOT/target/release/meshguard-bench" --markdown "$ROOT/docs/benchmarks.md"

step "The filters in real Envoy: CPU per request, latency, memory (about 5 minutes)"
cargo build --release --locked -q -p meshguard-envoy-tests --bin meshguard-envoy-bench
"$ROOT/target/release/meshguard-envoy-bench" --fortio "$fortio_dir/fortio" --markdown "$ROOT/docs/benchmarks.md"

if [ "${1:-}" = "--criterion" ]; then
  step "criterion"
  cargo bench --locked -p meshguard-filter-tests --bench filters
fi
