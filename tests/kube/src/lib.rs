//! An offline Kubernetes test cluster: a real kube-apiserver and etcd, started
//! and stopped by tests, plus the CRDs of pinned Istio, KEDA and cert-manager
//! versions ([`TestCluster`]); and the local cluster ([`LocalCluster`]), which
//! adds the real scheduler and controllers, kwok's simulated nodes,
//! metrics-server, Prometheus and KEDA, so that workloads are scheduled and
//! autoscaled.
//!
//! The binaries are built from Go source and the CRDs read from Go module zips
//! by `tests/kube/build-cluster-bins.sh`, at the versions pinned in
//! `tests/kube/versions.env`, into `~/.cache/meshguard/`. Run it once before
//! the tests (it is idempotent and fast when everything is cached).
//!
//! ```no_run
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use meshguard_testcluster::{CrdSet, TestCluster, TestClusterOptions};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let cluster = TestCluster::start(TestClusterOptions::default()).await?;
//! cluster.install_crds(&[CrdSet::Istio, CrdSet::Keda]).await?;
//! let client = cluster.client().await?;
//! let config_maps: kube::Api<ConfigMap> = kube::Api::namespaced(client, "default");
//! println!("{} config maps", config_maps.list(&Default::default()).await?.items.len());
//! // `kubectl --kubeconfig <path>` works too.
//! println!("{}", cluster.kubeconfig_path().display());
//! # Ok(())
//! # }
//! ```
//!
//! What the bare [`TestCluster`] is not: there is no kube-controller-manager,
//! scheduler or kubelet. Objects are stored, validated, defaulted and admitted, but nothing
//! reconciles them: Deployments never get Pods, namespaces stay `Terminating`
//! after deletion (see [`TestCluster::finalize_namespace`]), no ServiceAccount
//! tokens or `default` ServiceAccounts appear, and webhooks of the installed
//! CRDs' operators are absent.

mod artifacts;
pub mod callers;
mod cluster;
pub mod containerd;
mod crds;
mod error;
pub mod forward;
pub mod istio;
pub mod load;
mod local;
pub mod nodes;
pub mod oci;
mod pki;
mod process;
pub mod pulse;
pub mod queries;
pub mod registry;
mod simulate;
pub mod traffic;
pub mod wait;

pub use artifacts::{
    build_script, cache_root, Artifacts, LocalArtifacts, Versions, ENV_CACHE_DIR, ENV_CRDS_DIR,
    ENV_ETCD, ENV_KUBE_APISERVER, VERSIONS_ENV,
};
pub use artifacts::{NodeArtifacts, ENV_CNI_BIN_DIR, ENV_COREDNS, ENV_KUBELET, ENV_KUBE_PROXY};
pub use cluster::{
    free_ports, TestCluster, TestClusterOptions, ADMIN_USER, CONTEXT_NAME, ENV_KEEP,
};
pub use crds::{load_crds, CrdSet, FIELD_MANAGER};
pub use error::{Error, Result};
pub use local::{
    LocalCluster, LocalClusterOptions, CPU_POOL, EXTERNAL_METRICS_APISERVICE, GPU_POOL,
    KEDA_NAMESPACE, LOCAL_MANAGER,
};
pub use simulate::{CPU_NODE, GPU_NODE, METRICS_APISERVICE, SIMULATE_MANAGER};
