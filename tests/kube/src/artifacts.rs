//! Pinned versions (from `versions.env`) and where the built binaries and the
//! extracted CRDs live.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The text of `versions.env`, the single place where the versions are pinned.
pub const VERSIONS_ENV: &str = include_str!("../versions.env");

/// Environment variable naming the kube-apiserver binary.
pub const ENV_KUBE_APISERVER: &str = "MESHGUARD_KUBE_APISERVER";
/// Environment variable naming the etcd binary.
pub const ENV_ETCD: &str = "MESHGUARD_ETCD";
/// Environment variable naming the CRD directory (holding `istio-<version>/`,
/// `keda-<version>/` and `cert-manager-<version>/`).
pub const ENV_CRDS_DIR: &str = "MESHGUARD_CRDS_DIR";
/// Environment variable naming the kubelet binary of the real nodes.
pub const ENV_KUBELET: &str = "MESHGUARD_KUBELET";
/// Environment variable naming the kube-proxy binary of the real nodes.
pub const ENV_KUBE_PROXY: &str = "MESHGUARD_KUBE_PROXY";
/// Environment variable naming the directory of the real nodes' CNI plugins
/// (`bridge`, `host-local`, `loopback`, `portmap`).
pub const ENV_CNI_BIN_DIR: &str = "MESHGUARD_CNI_BIN_DIR";
/// Environment variable naming the CoreDNS binary of the real nodes.
pub const ENV_COREDNS: &str = "MESHGUARD_COREDNS";
/// Environment variable overriding the cache root (`~/.cache/meshguard`).
pub const ENV_CACHE_DIR: &str = "MESHGUARD_CACHE_DIR";

/// The pinned versions of everything the cluster is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versions {
    /// `k8s.io/kubernetes` tag kube-apiserver is built from (`v1.35.8`).
    pub kubernetes: String,
    /// `go.etcd.io/etcd/server/v3` tag etcd is built from.
    pub etcd: String,
    /// `istio.io/api` tag the Istio CRDs come from.
    pub istio_api: String,
    /// `github.com/kedacore/keda/v2` tag the KEDA CRDs come from.
    pub keda: String,
    /// `github.com/cert-manager/cert-manager` tag the cert-manager CRDs come from.
    pub cert_manager: String,
    /// `sigs.k8s.io/kwok` tag kwok and its rules come from.
    pub kwok: String,
    /// `sigs.k8s.io/metrics-server` tag.
    pub metrics_server: String,
    /// `github.com/prometheus/prometheus` module tag (`v0.316.0`).
    pub prometheus: String,
    /// The Prometheus release that module tag is (`3.16.0`).
    pub prometheus_release: String,
    /// `github.com/prometheus-operator/prometheus-operator` tag: the PodMonitor CRD and the
    /// configuration generator `meshguard-prometheus-config` runs.
    pub prometheus_operator: String,
    /// `k8s.io/kube-state-metrics/v2` tag.
    pub kube_state_metrics: String,
    /// `github.com/containernetworking/plugins` tag the CNI plugins are built from.
    pub cni_plugins: String,
    /// `github.com/coredns/coredns` tag CoreDNS is built from (kubeadm's for
    /// the Kubernetes minor).
    pub coredns: String,
}

impl Versions {
    /// The versions pinned in `versions.env` (embedded at compile time).
    pub fn pinned() -> Result<Self> {
        Self::parse(VERSIONS_ENV)
    }

    /// Parses `KEY=VALUE` lines; `#` starts a comment line.
    pub fn parse(text: &str) -> Result<Self> {
        let get = |key: &str| -> Result<String> {
            let mut found = None;
            for (index, raw) in text.lines().enumerate() {
                let line = raw.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let Some((k, v)) = line.split_once('=') else {
                    return Err(Error::Versions(format!(
                        "line {}: expected KEY=VALUE, got {line:?}",
                        index + 1
                    )));
                };
                if k.trim() == key {
                    found = Some(v.trim().to_owned());
                }
            }
            match found {
                Some(v) if !v.is_empty() => Ok(v),
                _ => Err(Error::Versions(format!("{key} is not set"))),
            }
        };
        Ok(Self {
            kubernetes: get("KUBERNETES_VERSION")?,
            etcd: get("ETCD_VERSION")?,
            istio_api: get("ISTIO_API_VERSION")?,
            keda: get("KEDA_VERSION")?,
            cert_manager: get("CERT_MANAGER_VERSION")?,
            kwok: get("KWOK_VERSION")?,
            metrics_server: get("METRICS_SERVER_VERSION")?,
            prometheus: get("PROMETHEUS_VERSION")?,
            prometheus_release: get("PROMETHEUS_RELEASE")?,
            prometheus_operator: get("PROMETHEUS_OPERATOR_VERSION")?,
            kube_state_metrics: get("KUBE_STATE_METRICS_VERSION")?,
            cni_plugins: get("CNI_PLUGINS_VERSION")?,
            coredns: get("COREDNS_VERSION")?,
        })
    }
}

/// The script that builds the binaries and extracts the CRDs.
pub fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("build-cluster-bins.sh")
}

/// The cache root the build script writes to: `$MESHGUARD_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/meshguard`, else `$HOME/.cache/meshguard`.
pub fn cache_root() -> Result<PathBuf> {
    let non_empty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = non_empty(ENV_CACHE_DIR) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = non_empty("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("meshguard"));
    }
    if let Some(home) = non_empty("HOME") {
        return Ok(PathBuf::from(home).join(".cache").join("meshguard"));
    }
    Err(Error::NoCacheDir)
}

/// Where the cluster's binaries and CRDs are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifacts {
    /// The kube-apiserver binary.
    pub kube_apiserver: PathBuf,
    /// The etcd binary.
    pub etcd: PathBuf,
    /// The directory holding one sub-directory per CRD set (see
    /// [`CrdSet::dir`](crate::CrdSet::dir)).
    pub crds_dir: PathBuf,
}

impl Artifacts {
    /// Locates the artifacts. For each one, the first of these wins: the
    /// explicit path given here, its environment variable
    /// (`MESHGUARD_KUBE_APISERVER`, `MESHGUARD_ETCD`, `MESHGUARD_CRDS_DIR`),
    /// the versioned path in the cache the build script fills.
    ///
    /// The binaries must exist; the CRD directory is only checked by
    /// [`TestCluster::install_crds`](crate::TestCluster::install_crds).
    pub fn locate(
        kube_apiserver: Option<&Path>,
        etcd: Option<&Path>,
        crds_dir: Option<&Path>,
    ) -> Result<Self> {
        let versions = Versions::pinned()?;
        // The cache root is only needed when something is not given.
        let cache = || cache_root();
        let kube_apiserver = pick(kube_apiserver, ENV_KUBE_APISERVER, || {
            Ok(cache()?
                .join(format!("kube-apiserver-{}", versions.kubernetes))
                .join("kube-apiserver"))
        })?;
        let etcd = pick(etcd, ENV_ETCD, || {
            Ok(cache()?
                .join(format!("etcd-{}", versions.etcd))
                .join("etcd"))
        })?;
        let crds_dir = pick(crds_dir, ENV_CRDS_DIR, || Ok(cache()?.join("crds")))?;
        for (what, (path, origin)) in [("kube-apiserver", &kube_apiserver), ("etcd", &etcd)] {
            if !path.is_file() {
                return Err(Error::MissingArtifact {
                    what: what.to_owned(),
                    path: path.clone(),
                    source_of_path: origin.clone(),
                    script: build_script(),
                });
            }
        }
        Ok(Self {
            kube_apiserver: kube_apiserver.0,
            etcd: etcd.0,
            crds_dir: crds_dir.0,
        })
    }
}

/// The local cluster's other components: one binary each (kwok's rules are a
/// directory of YAML files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalArtifacts {
    /// kube-scheduler.
    pub kube_scheduler: PathBuf,
    /// kube-controller-manager.
    pub kube_controller_manager: PathBuf,
    /// kwok.
    pub kwok: PathBuf,
    /// kwok's stages, metrics and usage rules (`*.yaml`).
    pub kwok_rules: PathBuf,
    /// metrics-server.
    pub metrics_server: PathBuf,
    /// Prometheus.
    pub prometheus: PathBuf,
    /// The Prometheus Operator's configuration generator, run on the cluster's PodMonitors
    /// (`go/prometheus-config`).
    pub prometheus_config: PathBuf,
    /// kube-state-metrics.
    pub kube_state_metrics: PathBuf,
    /// KEDA's operator.
    pub keda_operator: PathBuf,
    /// KEDA's metrics adapter.
    pub keda_adapter: PathBuf,
}

/// A built component: `$<env>` (as `build-cluster-bins.sh` prints it), else `file` in the
/// versioned cache folder `dir` (an empty `file` names the folder itself, as for the CNI
/// plugins). It must exist.
fn find_built(what: &str, env: &str, dir: String, file: &str) -> Result<PathBuf> {
    let (path, origin) = pick(None, env, || {
        let dir = cache_root()?.join(dir);
        Ok(if file.is_empty() { dir } else { dir.join(file) })
    })?;
    if path.exists() {
        Ok(path)
    } else {
        Err(Error::MissingArtifact {
            what: what.to_owned(),
            path,
            source_of_path: origin,
            script: build_script(),
        })
    }
}

impl LocalArtifacts {
    /// Locates every component: `$MESHGUARD_<NAME>` (as `build-cluster-bins.sh`
    /// prints them), else the versioned path in the cache. Each must exist.
    pub fn locate() -> Result<Self> {
        let v = Versions::pinned()?;
        let find = find_built;
        let k8s = &v.kubernetes;
        Ok(Self {
            kube_scheduler: find(
                "kube-scheduler",
                "MESHGUARD_KUBE_SCHEDULER",
                format!("kube-scheduler-{k8s}"),
                "kube-scheduler",
            )?,
            kube_controller_manager: find(
                "kube-controller-manager",
                "MESHGUARD_KUBE_CONTROLLER_MANAGER",
                format!("kube-controller-manager-{k8s}"),
                "kube-controller-manager",
            )?,
            kwok: find("kwok", "MESHGUARD_KWOK", format!("kwok-{}", v.kwok), "kwok")?,
            kwok_rules: find(
                "kwok's rules",
                "MESHGUARD_KWOK_RULES",
                format!("kwok-{}", v.kwok),
                "rules",
            )?,
            metrics_server: find(
                "metrics-server",
                "MESHGUARD_METRICS_SERVER",
                format!("metrics-server-{}", v.metrics_server),
                "metrics-server",
            )?,
            prometheus: find(
                "prometheus",
                "MESHGUARD_PROMETHEUS",
                format!("prometheus-{}", v.prometheus),
                "prometheus",
            )?,
            prometheus_config: find(
                "meshguard-prometheus-config",
                "MESHGUARD_PROMETHEUS_CONFIG",
                format!("prometheus-config-{}", v.prometheus_operator),
                "meshguard-prometheus-config",
            )?,
            kube_state_metrics: find(
                "kube-state-metrics",
                "MESHGUARD_KUBE_STATE_METRICS",
                format!("kube-state-metrics-{}", v.kube_state_metrics),
                "kube-state-metrics",
            )?,
            keda_operator: find(
                "keda-operator",
                "MESHGUARD_KEDA_OPERATOR",
                format!("keda-{}", v.keda),
                "keda-operator",
            )?,
            keda_adapter: find(
                "keda-adapter",
                "MESHGUARD_KEDA_ADAPTER",
                format!("keda-{}", v.keda),
                "keda-adapter",
            )?,
        })
    }
}

/// The programs of the local cluster's real nodes: the kubelet and kube-proxy
/// (the same Kubernetes build as the API server), the CNI plugins and CoreDNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeArtifacts {
    /// kubelet.
    pub kubelet: PathBuf,
    /// kube-proxy.
    pub kube_proxy: PathBuf,
    /// The directory holding the CNI plugins `bridge`, `host-local`,
    /// `loopback` and `portmap`.
    pub cni_bin_dir: PathBuf,
    /// CoreDNS.
    pub coredns: PathBuf,
}

impl NodeArtifacts {
    /// Locates every program: `$MESHGUARD_<NAME>` (as `build-cluster-bins.sh`
    /// prints them), else the versioned path in the cache. Each must exist.
    pub fn locate() -> Result<Self> {
        let v = Versions::pinned()?;
        let find = find_built;
        let k8s = &v.kubernetes;
        Ok(Self {
            kubelet: find("kubelet", ENV_KUBELET, format!("kubelet-{k8s}"), "kubelet")?,
            kube_proxy: find(
                "kube-proxy",
                ENV_KUBE_PROXY,
                format!("kube-proxy-{k8s}"),
                "kube-proxy",
            )?,
            cni_bin_dir: find(
                "the CNI plugins",
                ENV_CNI_BIN_DIR,
                format!("cni-plugins-{}", v.cni_plugins),
                "",
            )?,
            coredns: find(
                "coredns",
                ENV_COREDNS,
                format!("coredns-{}", v.coredns),
                "coredns",
            )?,
        })
    }
}

/// Returns the path and a description of where it came from.
fn pick(
    explicit: Option<&Path>,
    env: &str,
    cached: impl FnOnce() -> Result<PathBuf>,
) -> Result<(PathBuf, String)> {
    if let Some(path) = explicit {
        return Ok((path.to_path_buf(), "TestClusterOptions".to_owned()));
    }
    if let Some(value) = std::env::var_os(env).filter(|v: &OsString| !v.is_empty()) {
        return Ok((PathBuf::from(value), format!("${env}")));
    }
    Ok((cached()?, format!("the cache; or set ${env}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_versions_parse() -> Result<()> {
        let v = Versions::pinned()?;
        assert!(v.kubernetes.starts_with("v1.35."), "{v:?}");
        assert!(v.etcd.starts_with("v3."), "{v:?}");
        assert!(v.keda.starts_with("v2."), "{v:?}");
        assert!(v.cni_plugins.starts_with("v1."), "{v:?}");
        assert!(v.coredns.starts_with("v1."), "{v:?}");
        Ok(())
    }

    #[test]
    fn parse_rejects_garbage_and_missing_keys() {
        assert!(Versions::parse("NOT A PAIR\n").is_err());
        assert!(Versions::parse("KUBERNETES_VERSION=v1.35.0\n").is_err());
    }
}
