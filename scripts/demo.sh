#!/usr/bin/env bash
# The main job, shown working: builds the Proxy-Wasm filters, runs them on real requests in the
# Proxy-Wasm host (allowed and denied callers, and the metrics they produce), then renders the
# whole system with meshctl and installs it onto a Kubernetes API server.
#
#   scripts/demo.sh                          install onto a local API server started here
#   scripts/demo.sh --kubeconfig FILE [meshctl install flags...]
#                                            install onto that cluster instead (left installed)
#
# Installs what it needs (Debian packages, the pinned Rust toolchain and target, Go for the local
# cluster's kube-apiserver and etcd) and says what it is doing.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"

kubeconfig=""
if [ "${1:-}" = "--kubeconfig" ]; then
  kubeconfig="${2:?--kubeconfig needs a file}"
  shift 2
fi
demo_dir="$ROOT/target/demo"
mkdir -p "$demo_dir"

step "Tools: Debian packages, Rust (rust-toolchain.toml), Go"
ensure_apt_packages
ensure_rust
[ -n "$kubeconfig" ] || ensure_go

step "Building the filters for wasm32-wasip1"
build_filters
export MESHGUARD_FILTERS_DIR="$FILTERS_DIR"

step "Building meshctl and the demo"
cargo build --release --locked -q -p meshctl -p meshguard-filter-tests -p meshguard-testcluster
meshctl="$ROOT/target/release/meshctl"

step "The filters decide real requests (compiled .wasm in the Proxy-Wasm host)"
"$ROOT/target/release/meshguard-demo"

step "meshctl render: every object of the system, as YAML"
"$meshctl" render --namespace meshguard >"$demo_dir/meshguard.yaml"
info "wrote $demo_dir/meshguard.yaml; objects by kind:"
grep -E '^kind: ' "$demo_dir/meshguard.yaml" | sort | uniq -c | sed 's/^/    /' >&2

# Filters are published as OCI images in a real install (docs/deploy-gke.md); the local API server
# only stores the WasmPlugins, so any well-formed URL shows the flow.
modules=(--authz-module "oci://registry.example.com/meshguard/authz:0.1.0"
  --metrics-module "oci://registry.example.com/meshguard/metrics:0.1.0")

if [ -n "$kubeconfig" ]; then
  step "meshctl install onto the cluster in $kubeconfig"
  "$meshctl" install --kubeconfig "$kubeconfig" "${modules[@]}" "$@"
  "$meshctl" status --kubeconfig "$kubeconfig" "$@"
  exit 0
fi

step "Starting a local Kubernetes API server (kube-apiserver + etcd, built from source on first run)"
eval "$(tests/kube/build-cluster-bins.sh)"
cluster_kubeconfig="$demo_dir/kubeconfig"
rm -f "$cluster_kubeconfig"
"$ROOT/target/release/meshguard-devcluster" --kubeconfig "$cluster_kubeconfig" \
  --simulate gpu-node,metrics-api --ignore-stdin </dev/null >"$demo_dir/devcluster.log" 2>&1 &
cluster_pid=$!
stop_cluster() {
  if kill -0 "$cluster_pid" 2>/dev/null; then
    info "stopping the local API server (pid $cluster_pid)"
    kill -TERM "$cluster_pid"
    wait "$cluster_pid" || true
  fi
}
trap stop_cluster EXIT
for _ in $(seq 1 240); do
  [ -s "$cluster_kubeconfig" ] && break
  kill -0 "$cluster_pid" 2>/dev/null || die "the local API server did not start: $demo_dir/devcluster.log"
  sleep 0.5
done
[ -s "$cluster_kubeconfig" ] || die "the local API server was not ready in 120 s: $demo_dir/devcluster.log"
info "ready; kubeconfig $cluster_kubeconfig (it has no nodes running pods: objects are stored, not run)"

kc=(--kubeconfig "$cluster_kubeconfig" --namespace meshguard)
step "meshctl install (preflight, then server-side apply of every object)"
"$meshctl" install "${kc[@]}" "${modules[@]}"

step "meshctl install again: nothing changes"
"$meshctl" install "${kc[@]}" "${modules[@]}"

step "meshctl status"
"$meshctl" status "${kc[@]}" "${modules[@]}"

step "meshctl uninstall: removes exactly what install applied"
"$meshctl" uninstall "${kc[@]}"

step "Done: the filters decided real requests and meshctl installed and removed the system"
