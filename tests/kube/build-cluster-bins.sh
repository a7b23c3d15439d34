#!/usr/bin/env bash
# build-cluster-bins.sh: prepares everything the offline test cluster
# (crate meshguard-testcluster) needs, from pinned sources only:
#
#   * kube-apiserver, kube-scheduler and kube-controller-manager, and the real
#     nodes' kubelet and kube-proxy, built from k8s.io/kubernetes (Go module
#     proxy);
#   * etcd, built from go.etcd.io/etcd/server/v3 (Go module proxy);
#   * the real nodes' CNI plugins (bridge, host-local, loopback, portmap) and
#     their cluster DNS, CoreDNS with only the plugins it needs, each built
#     from its own Go module;
#   * kwok (simulated nodes and pods) and its stage/metric/usage rules,
#     metrics-server, Prometheus, and KEDA's operator and metrics adapter, each
#     built from its own Go module;
#   * the CRDs of Istio, KEDA and cert-manager, read from their module zips.
#
# Versions come from versions.env next to this script. Results are cached
# outside the repository, under ${MESHGUARD_CACHE_DIR:-~/.cache/meshguard}, in
# directories keyed by version; a second run only checks and prints the paths.
#
# Usage: build-cluster-bins.sh [--check] [--help]
#   --check   build nothing; exit 1 if anything is missing or stale.
#
# On success, stdout carries one `export NAME=PATH` line per result (progress
# goes to stderr), so `eval "$(tests/kube/build-cluster-bins.sh)"` works.
set -euo pipefail

readonly recipe=1 # bump to force a rebuild when this recipe changes

log() { printf '[build-cluster-bins] %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

check_only=false
for arg in "$@"; do
	case "${arg}" in
	--check) check_only=true ;;
	-h | --help)
		sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
		exit 0
		;;
	*) die "unknown argument: ${arg} (try --help)" ;;
	esac
done

script_dir="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
versions_file="${script_dir}/versions.env"
[[ -f "${versions_file}" ]] || die "missing ${versions_file}"
# shellcheck source=versions.env
source "${versions_file}"
: "${KUBERNETES_VERSION:?versions.env must set KUBERNETES_VERSION}"
: "${ETCD_VERSION:?versions.env must set ETCD_VERSION}"
: "${ISTIO_API_VERSION:?versions.env must set ISTIO_API_VERSION}"
: "${KEDA_VERSION:?versions.env must set KEDA_VERSION}"
: "${CERT_MANAGER_VERSION:?versions.env must set CERT_MANAGER_VERSION}"
: "${KWOK_VERSION:?versions.env must set KWOK_VERSION}"
: "${METRICS_SERVER_VERSION:?versions.env must set METRICS_SERVER_VERSION}"
: "${PROMETHEUS_VERSION:?versions.env must set PROMETHEUS_VERSION}"
: "${PROMETHEUS_RELEASE:?versions.env must set PROMETHEUS_RELEASE}"
: "${PROMETHEUS_OPERATOR_VERSION:?versions.env must set PROMETHEUS_OPERATOR_VERSION}"
: "${KUBE_STATE_METRICS_VERSION:?versions.env must set KUBE_STATE_METRICS_VERSION}"
: "${CNI_PLUGINS_VERSION:?versions.env must set CNI_PLUGINS_VERSION}"
: "${COREDNS_VERSION:?versions.env must set COREDNS_VERSION}"

command -v go >/dev/null 2>&1 || die "go is not on PATH (the binaries are built from Go source)"
# Our generated module stands alone: no go.work around it may change it.
export GOWORK=off GO111MODULE=on

# The Rust crate computes the same default (see src/paths.rs).
cache_root="${MESHGUARD_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME}/.cache}/meshguard}"
apiserver_dir="${cache_root}/kube-apiserver-${KUBERNETES_VERSION}"
etcd_dir="${cache_root}/etcd-${ETCD_VERSION}"
scheduler_dir="${cache_root}/kube-scheduler-${KUBERNETES_VERSION}"
controller_manager_dir="${cache_root}/kube-controller-manager-${KUBERNETES_VERSION}"
kubelet_dir="${cache_root}/kubelet-${KUBERNETES_VERSION}"
kube_proxy_dir="${cache_root}/kube-proxy-${KUBERNETES_VERSION}"
gomod_dir="${cache_root}/gomod-kubernetes-${KUBERNETES_VERSION}-etcd-${ETCD_VERSION}"
kwok_dir="${cache_root}/kwok-${KWOK_VERSION}"
metrics_server_dir="${cache_root}/metrics-server-${METRICS_SERVER_VERSION}"
prometheus_dir="${cache_root}/prometheus-${PROMETHEUS_VERSION}"
prometheus_config_dir="${cache_root}/prometheus-config-${PROMETHEUS_OPERATOR_VERSION}"
kube_state_metrics_dir="${cache_root}/kube-state-metrics-${KUBE_STATE_METRICS_VERSION}"
prometheus_config_gomod_dir="${cache_root}/gomod-prometheus-config-${PROMETHEUS_OPERATOR_VERSION}"
keda_dir="${cache_root}/keda-${KEDA_VERSION}"
cni_dir="${cache_root}/cni-plugins-${CNI_PLUGINS_VERSION}"
coredns_dir="${cache_root}/coredns-${COREDNS_VERSION}"
coredns_gomod_dir="${cache_root}/gomod-coredns-${COREDNS_VERSION}"
crds_root="${cache_root}/crds"
istio_crds="${crds_root}/istio-${ISTIO_API_VERSION}"
keda_crds="${crds_root}/keda-${KEDA_VERSION}"
cert_manager_crds="${crds_root}/cert-manager-${CERT_MANAGER_VERSION}"
prometheus_operator_crds="${crds_root}/prometheus-operator-${PROMETHEUS_OPERATOR_VERSION}"

# Anything that changes the binaries goes into their stamp: versions, our Go
# sources, the recipe and the Go toolchain.
go_version="$(go env GOVERSION)"
# src_sum DIR: one hash of the *.go files under go/DIR, so that each build
# only depends on its own sources (go/cmd: the Kubernetes module's commands;
# go/coredns: CoreDNS's).
src_sum() {
	(cd "${script_dir}/go/$1" && find . -type f -name '*.go' -print0 | LC_ALL=C sort -z |
		xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
}
go_src_sum="$(src_sum cmd)"
bins_stamp="recipe=${recipe} kubernetes=${KUBERNETES_VERSION} etcd=${ETCD_VERSION} go=${go_version} src=${go_src_sum}"
coredns_stamp="recipe=${recipe} github.com/coredns/coredns@${COREDNS_VERSION} go=${go_version} src=$(src_sum coredns)"
prometheus_config_stamp="recipe=${recipe} github.com/prometheus-operator/prometheus-operator@${PROMETHEUS_OPERATOR_VERSION} go=${go_version} src=$(src_sum prometheus-config)"

# up_to_date DIR STAMP: DIR holds a finished result made from STAMP.
up_to_date() {
	[[ -f "$1/.stamp" ]] && [[ "$(cat -- "$1/.stamp")" == "$2" ]]
}

# module_dir MODULE VERSION: downloads MODULE@VERSION (a verified zip from the
# module proxy) and prints the directory it was extracted to.
module_dir() {
	local json dir
	json="$(go mod download -json "$1@$2")" || die "go mod download $1@$2 failed"
	dir="$(printf '%s\n' "${json}" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
	[[ -n "${dir}" && -d "${dir}" ]] || die "go mod download $1@$2 gave no directory: ${json}"
	printf '%s\n' "${dir}"
}

# publish TMP DEST STAMP: stamps TMP and moves it into place as DEST.
publish() {
	printf '%s' "$3" >"$1/.stamp"
	rm -rf -- "$2"
	mv -- "$1" "$2"
}

build_binaries() {
	local k8s_dir minor_patch go_directive staging tmp_out start ldflags key
	log "building kube-apiserver, kube-scheduler, kube-controller-manager, kubelet, kube-proxy ${KUBERNETES_VERSION} and etcd ${ETCD_VERSION} with ${go_version} (a cold build takes about 8 minutes on 2 cores)"
	start="${SECONDS}"

	log "downloading k8s.io/kubernetes@${KUBERNETES_VERSION} to read its go.mod"
	k8s_dir="$(module_dir k8s.io/kubernetes "${KUBERNETES_VERSION}")"
	# v1.35.8 -> 35.8: the staging modules are published as v0.35.8.
	minor_patch="${KUBERNETES_VERSION#v1.}"
	go_directive="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "${k8s_dir}/go.mod")"
	staging="$(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\) => \./staging/src/.*$#\1#p' "${k8s_dir}/go.mod")"
	[[ -n "${go_directive}" && -n "${staging}" ]] || die "unexpected ${k8s_dir}/go.mod (no go directive or no staging replaces)"

	log "writing the Go module in ${gomod_dir} ($(wc -l <<<"${staging}") staging modules -> v0.${minor_patch})"
	rm -rf -- "${gomod_dir}"
	mkdir -p -- "${gomod_dir}"
	cp -R -- "${script_dir}/go/cmd" "${gomod_dir}/cmd"
	{
		printf '// Generated by tests/kube/build-cluster-bins.sh from versions.env; do not edit.\n'
		printf 'module meshguard.invalid/testcluster-bins\n\n'
		printf 'go %s\n\n' "${go_directive}"
		# The main module's godebug settings apply; keep upstream's.
		grep '^godebug ' "${k8s_dir}/go.mod" || true
		printf '\nrequire (\n'
		printf '\tk8s.io/kubernetes %s\n' "${KUBERNETES_VERSION}"
		printf '\tgo.etcd.io/etcd/server/v3 %s\n' "${ETCD_VERSION}"
		printf ')\n\nreplace (\n'
		while IFS= read -r key; do
			printf '\t%s => %s v0.%s\n' "${key}" "${key}" "${minor_patch}"
		done <<<"${staging}"
		printf ')\n'
	} >"${gomod_dir}/go.mod"

	log "resolving dependencies (go mod tidy; checksums verified against the Go checksum database)"
	(cd "${gomod_dir}" && go mod tidy) || die "go mod tidy failed in ${gomod_dir}"

	# Same version variables as upstream's hack/lib/version.sh sets.
	ldflags="-s -w"
	for key in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		ldflags+=" -X ${key}.gitVersion=${KUBERNETES_VERSION}"
		ldflags+=" -X ${key}.gitMajor=1 -X ${key}.gitMinor=${minor_patch%%.*}"
		ldflags+=" -X ${key}.gitTreeState=clean -X ${key}.buildDate=1970-01-01T00:00:00Z"
	done

	log "compiling (go build -trimpath -ldflags='-s -w ...' ./cmd/...)"
	tmp_out="$(mktemp -d "${cache_root}/.build.XXXXXX")"
	(cd "${gomod_dir}" && CGO_ENABLED=0 go build -trimpath -ldflags="${ldflags}" -o "${tmp_out}/" \
		./cmd/kube-apiserver ./cmd/kube-scheduler ./cmd/kube-controller-manager ./cmd/kubelet ./cmd/kube-proxy \
		./cmd/etcd) ||
		die "go build failed (module in ${gomod_dir})"

	log "checking the binaries run"
	local bin dest
	for bin in kube-apiserver kube-scheduler kube-controller-manager kubelet kube-proxy etcd; do
		"${tmp_out}/${bin}" --version >&2 || die "built ${bin} does not run"
	done

	for bin in kube-apiserver:"${apiserver_dir}" kube-scheduler:"${scheduler_dir}" \
		kube-controller-manager:"${controller_manager_dir}" kubelet:"${kubelet_dir}" \
		kube-proxy:"${kube_proxy_dir}" etcd:"${etcd_dir}"; do
		dest="${bin#*:}"
		bin="${bin%%:*}"
		mkdir -p -- "${tmp_out}/${bin}.d"
		mv -- "${tmp_out}/${bin}" "${tmp_out}/${bin}.d/${bin}"
		publish "${tmp_out}/${bin}.d" "${dest}" "${bins_stamp}"
	done
	rmdir -- "${tmp_out}"
	log "built the six binaries in $((SECONDS - start))s"
}

# extract_crds NAME MODULE VERSION DEST REQUIRED_CRD... : copies the CRD YAMLs
# of MODULE@VERSION into DEST and checks that each REQUIRED_CRD is among them.
extract_crds() {
	local name="$1" module="$2" version="$3" dest="$4"
	shift 4
	local stamp="recipe=${recipe} ${module}@${version}"
	if up_to_date "${dest}" "${stamp}"; then
		log "${name} CRDs ${version}: cached"
		return 0
	fi
	${check_only} && die "${name} CRDs ${version} are missing in ${dest}; run $0"
	log "${name} CRDs: reading ${module}@${version}"
	local src tmp f crd
	src="$(module_dir "${module}" "${version}")"
	mkdir -p -- "${crds_root}"
	tmp="$(mktemp -d "${crds_root}/.${name}.XXXXXX")"
	case "${name}" in
	istio)
		cp -- "${src}/kubernetes/customresourcedefinitions.gen.yaml" "${tmp}/istio-crds.yaml"
		;;
	keda)
		cp -- "${src}"/config/crd/bases/*.yaml "${tmp}/"
		;;
	cert-manager)
		# deploy/crds holds the plain controller-gen CRDs; the Helm chart's
		# templates are the same objects plus chart labels.
		cp -- "${src}"/deploy/crds/*.yaml "${tmp}/"
		;;
	prometheus-operator)
		# The PodMonitor CRD only: the one object meshctl renders for it.
		cp -- "${src}/example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml" "${tmp}/"
		;;
	*) die "no recipe for CRD set ${name}" ;;
	esac
	chmod -R u+w -- "${tmp}"
	for crd in "$@"; do
		f="$(grep -l -- "name: ${crd}\$" "${tmp}"/*.yaml || true)"
		[[ -n "${f}" ]] || die "${module}@${version} has no CRD ${crd}"
	done
	publish "${tmp}" "${dest}" "${stamp}"
	log "${name} CRDs ${version}: $(find "${dest}" -name '*.yaml' | wc -l) file(s) in ${dest}"
}

# go_install NAME DEST PACKAGE@VERSION [GO BUILD FLAGS...]: `go install`s one
# command of a module that can be installed as it is into DEST/NAME.
go_install() {
	local name="$1" dest="$2" pkg="$3"
	shift 3
	local stamp="recipe=${recipe} ${pkg} go=${go_version} flags=$*"
	if up_to_date "${dest}" "${stamp}" && [[ -x "${dest}/${name}" ]]; then
		log "${name} ${pkg#*@}: cached"
		return 0
	fi
	${check_only} && die "${name} ${pkg#*@} is missing or stale in ${dest}; run $0"
	local tmp start="${SECONDS}"
	log "building ${name} from ${pkg} (go install)"
	tmp="$(mktemp -d "${cache_root}/.${name}.XXXXXX")"
	GOBIN="${tmp}" CGO_ENABLED=0 go install -trimpath "$@" "${pkg}" || die "go install ${pkg} failed"
	local version
	if version="$("${tmp}/${name}" --version 2>&1)"; then
		printf '%s\n' "${version}" >&2
	elif ! "${tmp}/${name}" --help >/dev/null 2>&1; then
		die "built ${name} does not run"
	fi
	publish "${tmp}" "${dest}" "${stamp}"
	log "built ${name} in $((SECONDS - start))s"
}

# kwok's own stage, metric and usage rules (kustomize/ in its module): node
# initialisation and heartbeats with leases, pods becoming ready and being
# deleted, kubelet-style resource metrics, and CPU usage read from each pod's
# kwok.x-k8s.io/usage-cpu annotation.
kwok_rules() {
	local stamp="recipe=${recipe} sigs.k8s.io/kwok@${KWOK_VERSION}"
	local dest="${kwok_dir}/rules"
	if up_to_date "${dest}" "${stamp}"; then
		log "kwok rules ${KWOK_VERSION}: cached"
		return 0
	fi
	${check_only} && die "kwok rules ${KWOK_VERSION} are missing in ${dest}; run $0"
	local src tmp f
	src="$(module_dir sigs.k8s.io/kwok "${KWOK_VERSION}")"
	tmp="$(mktemp -d "${cache_root}/.kwok-rules.XXXXXX")"
	for f in stage/node/fast/node-initialize.yaml stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
		stage/pod/fast/pod-ready.yaml stage/pod/fast/pod-complete.yaml stage/pod/fast/pod-delete.yaml \
		metrics/resource/metrics-resource.yaml metrics/usage/usage-from-annotation.yaml kwok/kwok.yaml; do
		[[ -f "${src}/kustomize/${f}" ]] || die "sigs.k8s.io/kwok@${KWOK_VERSION} has no kustomize/${f}"
		cp -- "${src}/kustomize/${f}" "${tmp}/$(basename -- "${f}")"
	done
	chmod -R u+w -- "${tmp}"
	publish "${tmp}" "${dest}" "${stamp}"
	log "kwok rules ${KWOK_VERSION}: $(find "${dest}" -name '*.yaml' | wc -l) file(s) in ${dest}"
}

# KEDA's go.mod has replace directives, so `go install` refuses it: build its
# two commands inside a writable copy of the module instead.
build_keda() {
	local stamp="recipe=${recipe} github.com/kedacore/keda/v2@${KEDA_VERSION} go=${go_version}"
	if up_to_date "${keda_dir}" "${stamp}" && [[ -x "${keda_dir}/keda-operator" && -x "${keda_dir}/keda-adapter" ]]; then
		log "KEDA operator and adapter ${KEDA_VERSION}: cached"
		return 0
	fi
	${check_only} && die "KEDA ${KEDA_VERSION} is missing or stale in ${keda_dir}; run $0"
	local src tmp work start="${SECONDS}"
	log "building KEDA's operator and metrics adapter ${KEDA_VERSION} (a cold build takes about 13 minutes on 2 cores)"
	src="$(module_dir github.com/kedacore/keda/v2 "${KEDA_VERSION}")"
	tmp="$(mktemp -d "${cache_root}/.keda.XXXXXX")"
	work="${cache_root}/gomod-keda-${KEDA_VERSION}"
	rm -rf -- "${work}"
	cp -R -- "${src}" "${work}"
	chmod -R u+w -- "${work}"
	(cd "${work}" && CGO_ENABLED=0 go build -trimpath \
		-ldflags="-s -w -X=github.com/kedacore/keda/v2/version.Version=${KEDA_VERSION#v} -X=github.com/kedacore/keda/v2/version.GitCommit=${KEDA_VERSION}" \
		-o "${tmp}/" ./cmd/operator ./cmd/adapter) || die "go build of KEDA failed (module copy in ${work})"
	mv -- "${tmp}/operator" "${tmp}/keda-operator"
	mv -- "${tmp}/adapter" "${tmp}/keda-adapter"
	"${tmp}/keda-operator" --help >/dev/null 2>&1 || die "built keda-operator does not run"
	rm -rf -- "${work}"
	publish "${tmp}" "${keda_dir}" "${stamp}"
	log "built KEDA in $((SECONDS - start))s"
}

# The real nodes' CNI plugins: the four commands a bridge network with
# host-local addresses and hostPort mappings needs, `go install`ed at one tag
# into one directory (the kubelet's --cni-bin-dir), with the version -X flag of
# upstream's release build (.github/workflows/release.yaml).
build_cni_plugins() {
	local module=github.com/containernetworking/plugins
	local plugins=(main/bridge ipam/host-local main/loopback meta/portmap)
	local ldflags="-s -w -X ${module}/pkg/utils/buildversion.BuildVersion=${CNI_PLUGINS_VERSION}"
	local stamp="recipe=${recipe} ${module}@${CNI_PLUGINS_VERSION} go=${go_version} plugins=${plugins[*]} flags=${ldflags}"
	local p cached=true
	for p in "${plugins[@]}"; do
		[[ -x "${cni_dir}/${p#*/}" ]] || cached=false
	done
	if ${cached} && up_to_date "${cni_dir}" "${stamp}"; then
		log "CNI plugins ${CNI_PLUGINS_VERSION}: cached"
		return 0
	fi
	${check_only} && die "CNI plugins ${CNI_PLUGINS_VERSION} are missing or stale in ${cni_dir}; run $0"
	local tmp out pkgs=() start="${SECONDS}"
	log "building the CNI plugins ${plugins[*]#*/} ${CNI_PLUGINS_VERSION} (go install)"
	for p in "${plugins[@]}"; do
		pkgs+=("${module}/plugins/${p}@${CNI_PLUGINS_VERSION}")
	done
	tmp="$(mktemp -d "${cache_root}/.cni-plugins.XXXXXX")"
	GOBIN="${tmp}" CGO_ENABLED=0 go install -trimpath -ldflags="${ldflags}" "${pkgs[@]}" ||
		die "go install of the CNI plugins failed"
	for p in "${plugins[@]}"; do
		# The CNI VERSION command: the spec versions the plugin speaks, as JSON.
		out="$(CNI_COMMAND=VERSION "${tmp}/${p#*/}" </dev/null)" || die "built CNI plugin ${p#*/} does not run"
		[[ "${out}" == '{'*'"supportedVersions"'* ]] || die "CNI plugin ${p#*/} answered VERSION with ${out}"
		log "${p#*/}: ${out}"
	done
	publish "${tmp}" "${cni_dir}" "${stamp}"
	log "built the CNI plugins in $((SECONDS - start))s"
}

# CoreDNS with only the plugins of go/coredns/main.go: built in a generated Go
# module that requires the pinned github.com/coredns/coredns (its own main
# package imports every plugin).
build_coredns() {
	if up_to_date "${coredns_dir}" "${coredns_stamp}" && [[ -x "${coredns_dir}/coredns" ]]; then
		log "CoreDNS ${COREDNS_VERSION}: cached"
		return 0
	fi
	${check_only} && die "CoreDNS ${COREDNS_VERSION} is missing or stale in ${coredns_dir}; run $0"
	local src go_directive tmp listed p start="${SECONDS}"
	log "building CoreDNS ${COREDNS_VERSION} with the plugins of go/coredns/main.go"
	src="$(module_dir github.com/coredns/coredns "${COREDNS_VERSION}")"
	go_directive="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "${src}/go.mod")"
	[[ -n "${go_directive}" ]] || die "unexpected ${src}/go.mod (no go directive)"

	log "writing the Go module in ${coredns_gomod_dir}"
	rm -rf -- "${coredns_gomod_dir}"
	mkdir -p -- "${coredns_gomod_dir}"
	cp -- "${script_dir}/go/coredns/main.go" "${coredns_gomod_dir}/main.go"
	{
		printf '// Generated by tests/kube/build-cluster-bins.sh from versions.env; do not edit.\n'
		printf 'module meshguard.invalid/coredns\n\n'
		printf 'go %s\n\n' "${go_directive}"
		printf 'require github.com/coredns/coredns %s\n' "${COREDNS_VERSION}"
	} >"${coredns_gomod_dir}/go.mod"
	(cd "${coredns_gomod_dir}" && go mod tidy) || die "go mod tidy failed in ${coredns_gomod_dir}"

	tmp="$(mktemp -d "${cache_root}/.coredns.XXXXXX")"
	# The version -X flag of CoreDNS's own Makefile (the git commit; the tag here).
	(cd "${coredns_gomod_dir}" && CGO_ENABLED=0 go build -trimpath \
		-ldflags="-s -w -X github.com/coredns/coredns/coremain.GitCommit=${COREDNS_VERSION}" \
		-o "${tmp}/coredns" .) || die "go build of CoreDNS failed (module in ${coredns_gomod_dir})"
	"${tmp}/coredns" -version >&2 || die "built coredns does not run"
	# -plugins lists the compiled-in plugins, one name a line.
	listed="$("${tmp}/coredns" -plugins)" || die "built coredns does not list its plugins"
	for p in bind kubernetes errors health ready cache log loadbalance; do
		grep -qx -- "${p}" <<<"${listed}" || die "built coredns lacks the ${p} plugin (it has: $(tr '\n' ' ' <<<"${listed}"))"
	done
	log "CoreDNS plugins: $(tr '\n' ' ' <<<"${listed}")"
	publish "${tmp}" "${coredns_dir}" "${coredns_stamp}"
	log "built CoreDNS in $((SECONDS - start))s"
}

# meshguard-prometheus-config: go/prometheus-config/main.go in a generated Go
# module that requires the pinned Prometheus Operator (its pkg/prometheus
# configuration generator and its clients).
build_prometheus_config() {
	if up_to_date "${prometheus_config_dir}" "${prometheus_config_stamp}" &&
		[[ -x "${prometheus_config_dir}/meshguard-prometheus-config" ]]; then
		log "meshguard-prometheus-config (Prometheus Operator ${PROMETHEUS_OPERATOR_VERSION}): cached"
		return 0
	fi
	${check_only} && die "meshguard-prometheus-config ${PROMETHEUS_OPERATOR_VERSION} is missing or stale in ${prometheus_config_dir}; run $0"
	local src go_directive tmp start="${SECONDS}"
	log "building meshguard-prometheus-config with the Prometheus Operator ${PROMETHEUS_OPERATOR_VERSION}'s configuration generator"
	src="$(module_dir github.com/prometheus-operator/prometheus-operator "${PROMETHEUS_OPERATOR_VERSION}")"
	go_directive="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "${src}/go.mod")"
	[[ -n "${go_directive}" ]] || die "unexpected ${src}/go.mod (no go directive)"
	rm -rf -- "${prometheus_config_gomod_dir}"
	mkdir -p -- "${prometheus_config_gomod_dir}"
	cp -- "${script_dir}/go/prometheus-config/main.go" "${prometheus_config_gomod_dir}/main.go"
	{
		printf '// Generated by tests/kube/build-cluster-bins.sh from versions.env; do not edit.\n'
		printf 'module meshguard.invalid/prometheus-config\n\n'
		printf 'go %s\n\n' "${go_directive}"
		printf 'require github.com/prometheus-operator/prometheus-operator %s\n' "${PROMETHEUS_OPERATOR_VERSION}"
	} >"${prometheus_config_gomod_dir}/go.mod"
	(cd "${prometheus_config_gomod_dir}" && go mod tidy) || die "go mod tidy failed in ${prometheus_config_gomod_dir}"
	tmp="$(mktemp -d "${cache_root}/.prometheus-config.XXXXXX")"
	(cd "${prometheus_config_gomod_dir}" && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" \
		-o "${tmp}/meshguard-prometheus-config" .) ||
		die "go build of meshguard-prometheus-config failed (module in ${prometheus_config_gomod_dir})"
	"${tmp}/meshguard-prometheus-config" --help >/dev/null 2>&1 || die "built meshguard-prometheus-config does not run"
	publish "${tmp}" "${prometheus_config_dir}" "${prometheus_config_stamp}"
	log "built meshguard-prometheus-config in $((SECONDS - start))s"
}

mkdir -p -- "${cache_root}"

if up_to_date "${apiserver_dir}" "${bins_stamp}" && up_to_date "${etcd_dir}" "${bins_stamp}" &&
	up_to_date "${scheduler_dir}" "${bins_stamp}" && up_to_date "${controller_manager_dir}" "${bins_stamp}" &&
	up_to_date "${kubelet_dir}" "${bins_stamp}" && up_to_date "${kube_proxy_dir}" "${bins_stamp}" &&
	[[ -x "${apiserver_dir}/kube-apiserver" && -x "${etcd_dir}/etcd" ]] &&
	[[ -x "${kubelet_dir}/kubelet" && -x "${kube_proxy_dir}/kube-proxy" ]]; then
	log "kube-apiserver, kube-scheduler, kube-controller-manager, kubelet, kube-proxy ${KUBERNETES_VERSION} and etcd ${ETCD_VERSION}: cached"
elif ${check_only}; then
	die "the Kubernetes binaries ${KUBERNETES_VERSION} / etcd ${ETCD_VERSION} are missing or stale in ${cache_root}; run $0"
else
	build_binaries
fi

go_install kwok "${kwok_dir}" "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}" -ldflags="-s -w"
kwok_rules
go_install metrics-server "${metrics_server_dir}" "sigs.k8s.io/metrics-server/cmd/metrics-server@${METRICS_SERVER_VERSION}" \
	-ldflags="-s -w -X k8s.io/client-go/pkg/version.gitVersion=${METRICS_SERVER_VERSION}"
go_install prometheus "${prometheus_dir}" "github.com/prometheus/prometheus/cmd/prometheus@${PROMETHEUS_VERSION}" \
	-tags=remove_all_sd,enable_kubernetes_sd -ldflags="-s -w -X github.com/prometheus/common/version.Version=${PROMETHEUS_RELEASE}"
build_prometheus_config
go_install kube-state-metrics "${kube_state_metrics_dir}" "k8s.io/kube-state-metrics/v2@${KUBE_STATE_METRICS_VERSION}" \
	-ldflags="-s -w -X github.com/prometheus/common/version.Version=${KUBE_STATE_METRICS_VERSION}"
build_keda
build_cni_plugins
build_coredns

extract_crds istio istio.io/api "${ISTIO_API_VERSION}" "${istio_crds}" \
	wasmplugins.extensions.istio.io peerauthentications.security.istio.io
extract_crds keda github.com/kedacore/keda/v2 "${KEDA_VERSION}" "${keda_crds}" \
	scaledobjects.keda.sh
extract_crds cert-manager github.com/cert-manager/cert-manager "${CERT_MANAGER_VERSION}" "${cert_manager_crds}" \
	certificates.cert-manager.io issuers.cert-manager.io
extract_crds prometheus-operator github.com/prometheus-operator/prometheus-operator "${PROMETHEUS_OPERATOR_VERSION}" \
	"${prometheus_operator_crds}" podmonitors.monitoring.coreos.com

log "done; cache size: $(du -sh -- "${cache_root}" | cut -f1) in ${cache_root}"
printf 'export MESHGUARD_KUBE_APISERVER=%q\n' "${apiserver_dir}/kube-apiserver"
printf 'export MESHGUARD_ETCD=%q\n' "${etcd_dir}/etcd"
printf 'export MESHGUARD_KUBE_SCHEDULER=%q\n' "${scheduler_dir}/kube-scheduler"
printf 'export MESHGUARD_KUBE_CONTROLLER_MANAGER=%q\n' "${controller_manager_dir}/kube-controller-manager"
printf 'export MESHGUARD_KWOK=%q\n' "${kwok_dir}/kwok"
printf 'export MESHGUARD_KWOK_RULES=%q\n' "${kwok_dir}/rules"
printf 'export MESHGUARD_METRICS_SERVER=%q\n' "${metrics_server_dir}/metrics-server"
printf 'export MESHGUARD_PROMETHEUS=%q\n' "${prometheus_dir}/prometheus"
printf 'export MESHGUARD_PROMETHEUS_CONFIG=%q\n' "${prometheus_config_dir}/meshguard-prometheus-config"
printf 'export MESHGUARD_KUBE_STATE_METRICS=%q\n' "${kube_state_metrics_dir}/kube-state-metrics"
printf 'export MESHGUARD_KEDA_OPERATOR=%q\n' "${keda_dir}/keda-operator"
printf 'export MESHGUARD_KEDA_ADAPTER=%q\n' "${keda_dir}/keda-adapter"
printf 'export MESHGUARD_KUBELET=%q\n' "${kubelet_dir}/kubelet"
printf 'export MESHGUARD_KUBE_PROXY=%q\n' "${kube_proxy_dir}/kube-proxy"
printf 'export MESHGUARD_CNI_BIN_DIR=%q\n' "${cni_dir}"
printf 'export MESHGUARD_COREDNS=%q\n' "${coredns_dir}/coredns"
printf 'export MESHGUARD_CRDS_DIR=%q\n' "${crds_root}"
printf '# CRD sets: %q %q %q %q\n' "${istio_crds}" "${keda_crds}" "${cert_manager_crds}" "${prometheus_operator_crds}"
