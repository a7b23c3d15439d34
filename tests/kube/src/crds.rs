//! The CRD sets the cluster can install, and their installation.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::Client;
use serde::Deserialize;

use crate::artifacts::{build_script, Versions};
use crate::error::{Error, Result};

/// The field manager of the server-side apply that installs CRDs.
pub const FIELD_MANAGER: &str = "meshguard-testcluster";

/// A pinned set of third-party CRDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CrdSet {
    /// Istio's CRDs from `istio.io/api` (`kubernetes/customresourcedefinitions.gen.yaml`):
    /// WasmPlugin (extensions.istio.io), PeerAuthentication, AuthorizationPolicy,
    /// RequestAuthentication (security.istio.io), networking.istio.io,
    /// telemetry.istio.io.
    Istio,
    /// KEDA's CRDs (`config/crd/bases`): ScaledObject, ScaledJob,
    /// TriggerAuthentication, ClusterTriggerAuthentication (keda.sh) and
    /// eventing.keda.sh.
    Keda,
    /// cert-manager's CRDs (`deploy/crds`): Certificate, CertificateRequest,
    /// Issuer, ClusterIssuer (cert-manager.io), Order, Challenge
    /// (acme.cert-manager.io).
    CertManager,
    /// The Prometheus Operator's PodMonitor CRD (monitoring.coreos.com, from
    /// `example/prometheus-operator-crd`).
    PrometheusOperator,
}

impl CrdSet {
    /// All sets.
    pub const ALL: [CrdSet; 4] = [
        CrdSet::Istio,
        CrdSet::Keda,
        CrdSet::CertManager,
        CrdSet::PrometheusOperator,
    ];

    /// A short name (`istio`, `keda`, `cert-manager`, `prometheus-operator`).
    pub fn name(self) -> &'static str {
        match self {
            CrdSet::Istio => "istio",
            CrdSet::Keda => "keda",
            CrdSet::CertManager => "cert-manager",
            CrdSet::PrometheusOperator => "prometheus-operator",
        }
    }

    /// The pinned version of the module the set comes from.
    pub fn version(self, versions: &Versions) -> &str {
        match self {
            CrdSet::Istio => &versions.istio_api,
            CrdSet::Keda => &versions.keda,
            CrdSet::CertManager => &versions.cert_manager,
            CrdSet::PrometheusOperator => &versions.prometheus_operator,
        }
    }

    /// The set's directory under the CRD directory: `<name>-<version>`.
    pub fn dir(self, crds_dir: &Path, versions: &Versions) -> PathBuf {
        crds_dir.join(format!("{}-{}", self.name(), self.version(versions)))
    }
}

impl std::fmt::Display for CrdSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Reads every CustomResourceDefinition in the set's YAML files (sorted by
/// file name; multi-document files allowed; other kinds are skipped).
pub fn load_crds(set: CrdSet, crds_dir: &Path) -> Result<Vec<CustomResourceDefinition>> {
    let versions = Versions::pinned()?;
    let dir = set.dir(crds_dir, &versions);
    let entries = std::fs::read_dir(&dir).map_err(|_| Error::MissingArtifact {
        what: format!("{set} CRDs {}", set.version(&versions)),
        path: dir.clone(),
        source_of_path: format!("${}/the cache", crate::artifacts::ENV_CRDS_DIR),
        script: build_script(),
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| Error::io(format!("cannot list {}", dir.display()), e))?
            .path();
        if path
            .extension()
            .is_some_and(|ext| ext == "yaml" || ext == "yml")
        {
            files.push(path);
        }
    }
    files.sort();
    let mut crds = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value =
                serde_yaml::Value::deserialize(document).map_err(|e| Error::InvalidCrd {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            if value.is_null() {
                continue;
            }
            if value.get("kind").and_then(serde_yaml::Value::as_str)
                != Some("CustomResourceDefinition")
            {
                continue;
            }
            let crd: CustomResourceDefinition =
                serde_yaml::from_value(value).map_err(|e| Error::InvalidCrd {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            crds.push(crd);
        }
    }
    if crds.is_empty() {
        return Err(Error::InvalidCrd {
            path: dir,
            message: "no CustomResourceDefinition in any *.yaml file".to_owned(),
        });
    }
    Ok(crds)
}

/// Applies the CRDs (server-side apply, forced) and waits until each one is
/// Established. Returns their names.
pub(crate) async fn install(
    client: &Client,
    sets: &[CrdSet],
    crds_dir: &Path,
    timeout: Duration,
) -> Result<Vec<String>> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut names = Vec::new();
    for &set in sets {
        for mut crd in load_crds(set, crds_dir)? {
            let name = crd.metadata.name.clone().ok_or_else(|| Error::InvalidCrd {
                path: crds_dir.to_path_buf(),
                message: format!("a {set} CRD has no metadata.name"),
            })?;
            // Server-side apply wants apiVersion/kind in the body; the typed
            // struct serializes them. Status is not ours to set.
            crd.status = None;
            api.patch(&name, &params, &Patch::Apply(&crd))
                .await
                .map_err(|e| Error::kube(format!("applying CRD {name}"), e))?;
            names.push(name);
        }
    }
    for name in &names {
        let established = await_condition(api.clone(), name, conditions::is_crd_established());
        match tokio::time::timeout(timeout, established).await {
            Ok(Ok(_)) => {}
            Ok(Err(source)) => {
                return Err(Error::CrdWait {
                    name: name.clone(),
                    source,
                })
            }
            Err(_) => {
                return Err(Error::CrdNotEstablished {
                    name: name.clone(),
                    timeout,
                })
            }
        }
    }
    Ok(names)
}
