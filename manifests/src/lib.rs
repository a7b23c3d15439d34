//! Every Kubernetes, Istio and KEDA object meshguard installs, built from the mesh model.
//!
//! CONTRACT (used by `installer/`; keep these signatures):
//! - [`RenderOptions`]: everything a user can choose (namespace, profile, images, Wasm module
//!   URLs, Prometheus address, authz mode, ...), with [`RenderOptions::new`] giving the defaults.
//! - [`render`]: the objects in dependency (apply) order, each a `DynamicObject` with
//!   `apiVersion`/`kind` set and the ownership labels of [`ownership_labels`].
//! - [`to_yaml`]: a multi-document YAML stream of objects.

use kube::api::DynamicObject;
use meshguard_mesh::{LogLevel, Mesh, Mode};

/// Label key/value marking objects meshctl manages.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "meshctl");
/// Label key/value marking the system the objects belong to.
pub const PART_OF: (&str, &str) = ("app.kubernetes.io/part-of", "meshguard");
/// Label key whose value is the install's namespace: `uninstall` selects on it.
pub const INSTANCE_KEY: &str = "app.kubernetes.io/instance";

/// Where the cluster runs: decides the GPU node labels and taints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    /// Nodes labelled `gpu=true` (the seed's labels) and tainted `nvidia.com/gpu=present:NoSchedule`.
    #[default]
    Local,
    /// GKE GPU node pools: `cloud.google.com/gke-accelerator` label, `nvidia.com/gpu=present:NoSchedule` taint.
    Gke,
}

/// Everything a user can choose about an install.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderOptions {
    pub namespace: String,
    pub profile: Profile,
    pub user_image: String,
    pub order_image: String,
    pub payment_image: String,
    /// URL of the authorization filter module (`oci://…`, `https://…` or `file://…`). The default
    /// points at `registry.invalid`, a placeholder `install` refuses: publish the module first.
    pub authz_module_url: String,
    /// URL of the request metrics filter module.
    pub metrics_module_url: String,
    /// Prometheus the KEDA trigger queries.
    pub prometheus_address: String,
    pub authz_mode: Mode,
    pub log_level: LogLevel,
}

/// A rendering error.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    Model(#[from] meshguard_mesh::ModelError),
    #[error("cannot build {kind} {name}: {message}")]
    Object {
        kind: String,
        name: String,
        message: String,
    },
}

impl RenderOptions {
    /// The defaults for an install into `namespace`.
    pub fn new(namespace: &str) -> Self {
        let image = |s: &str| {
            format!("us-west1-docker.pkg.dev/brave-smile-424210-m0/microservice/{s}:latest")
        };
        Self {
            namespace: namespace.to_owned(),
            profile: Profile::default(),
            user_image: image("user-service"),
            order_image: image("order-service"),
            payment_image: image("payment-service"),
            authz_module_url: "oci://registry.invalid/meshguard/authz:0.1.0".to_owned(),
            metrics_module_url: "oci://registry.invalid/meshguard/metrics:0.1.0".to_owned(),
            prometheus_address:
                "http://monitoring-kube-prometheus-prometheus.monitoring.svc.cluster.local:9090"
                    .to_owned(),
            authz_mode: Mode::Enforce,
            log_level: LogLevel::Info,
        }
    }
}

/// The labels every rendered object carries.
pub fn ownership_labels(namespace: &str) -> Vec<(String, String)> {
    vec![
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
        (PART_OF.0.to_owned(), PART_OF.1.to_owned()),
        (INSTANCE_KEY.to_owned(), namespace.to_owned()),
    ]
}

/// Renders every object, in apply order.
pub fn render(_mesh: &Mesh, _opts: &RenderOptions) -> Result<Vec<DynamicObject>, RenderError> {
    Ok(Vec::new())
}

/// A multi-document YAML stream.
pub fn to_yaml(objects: &[DynamicObject]) -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for o in objects {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(o)?);
    }
    Ok(out)
}
