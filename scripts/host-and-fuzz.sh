#!/usr/bin/env bash
# The checks that need neither the local cluster nor Envoy: the filters' scenarios in a second
# Proxy-Wasm host (crates.io proxy-wasm-host, on its own pinned toolchain), then a fuzz smoke run of
# the mesh model's parsers and decision. scripts/test.sh runs this in the background at idle
# priority, on the CPU the workspace's tests leave idle; run alone, it installs what it needs.
#
#   scripts/host-and-fuzz.sh
#   FUZZ_SECONDS=60 scripts/host-and-fuzz.sh   a longer fuzz run per target (default 20)
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"
FUZZ_SECONDS="${FUZZ_SECONDS:-20}"

ensure_rust
ensure_cargo_fuzz

step "The same scenarios in a second Proxy-Wasm host (crates.io proxy-wasm-host 0.2.0, Rust 1.96)"
# Its own cargo project and toolchain (tests/second-host/rust-toolchain.toml), as rustup pins it.
(cd tests/second-host && { rustup show active-toolchain >/dev/null 2>&1 || rustup toolchain install; })
(cd tests/second-host && cargo test --locked)

step "Fuzz smoke run: ${FUZZ_SECONDS}s per target (cargo fuzz, stable toolchain, no sanitizer)"
mkdir -p target
for target in config identity decision; do
  mkdir -p "mesh/fuzz/corpus/$target"
  args=("corpus/$target")
  [ -d "mesh/fuzz/seeds/$target" ] && args+=("seeds/$target")
  log="target/fuzz-$target.log"
  if ! (cd mesh/fuzz && cargo fuzz run --sanitizer none --release "$target" "${args[@]}" -- \
    -dict=config.dict -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048) >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    die "fuzz target $target failed (log: $log, crash inputs: mesh/fuzz/artifacts/$target)"
  fi
  info "$target: $(grep -E '^Done' "$log" | tail -n 1)"
done
