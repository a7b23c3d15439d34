//! Every Kubernetes, Istio and KEDA object meshguard installs, built from the mesh model.
//!
//! CONTRACT (used by `installer/`; keep these signatures):
//! - [`MeshSpec`]: the system as data (services, calls, scaling, placement), read from a mesh
//!   file by [`MeshFile`], with [`MeshSpec::reference`] the built-in three services.
//! - [`RenderOptions`]: the install-wide choices (namespace, profile, Wasm module URLs,
//!   Prometheus address, authz mode, ...), with [`RenderOptions::new`] giving the defaults.
//! - [`render`]: the objects in dependency (apply) order, each a `DynamicObject` with
//!   `apiVersion`/`kind` set and the ownership labels of [`ownership_labels`].
//! - [`to_yaml`]: a multi-document YAML stream of objects.
//! - [`apply_order_kinds`], [`kind_info`], [`required_crds`]: what kinds exist, where they live in
//!   the API, and which CRDs a rendering needs (for `uninstall` by label and for preflight).
//!
//! What [`render`] returns, in apply order (see `docs/manifests.md` for the why of each):
//!
//! 1. `Namespace` with `istio-injection: enabled` and Pod Security `restricted` (enforce, warn, audit).
//! 2. One `ServiceAccount` per service, and per client in the namespace
//!    (`automountServiceAccountToken: false`); no Role, no binding.
//! 3. `PeerAuthentication/default`: mTLS `STRICT` for the namespace.
//! 4. `NetworkPolicy`s: default deny, DNS, istiod, Wasm module fetch, Prometheus scrape, and one
//!    ingress/egress pair per call-graph edge, in the call direction (for a client in another
//!    namespace only the ingress: its egress is that namespace's to allow).
//! 5. `ConfigMap/meshguard-sidecar-bootstrap`: the bootstrap `stats_tags` that turn the filters'
//!    stat names into Prometheus labels, named by the pods' `sidecar.istio.io/bootstrapOverride`.
//! 6. Two `WasmPlugin`s per service: identity authorization (`AUTHZ`, fail-closed) and request
//!    metrics (`STATS`).
//! 7. Per service a `Service` (port `http`), a `Deployment` and a `PodDisruptionBudget`.
//! 8. A `HorizontalPodAutoscaler` per service scaled by `hpa` (built in: order-service, CPU 75 %,
//!    1..10).
//! 9. A KEDA `ScaledObject` per service scaled by `keda` (built in: user-service, on
//!    order-service's CPU rate, 1..4).
//! 10. Optionally a `PodMonitor` (Prometheus Operator) for the sidecars' stats.
//!
//! Security-relevant objects (mTLS, network policies, the filters) come before the workloads, so
//! no pod ever serves without them.

mod autoscaling;
mod istio;
mod kinds;
mod network;
mod object;
mod options;
pub mod spec;
mod workloads;

use std::collections::BTreeMap;

use kube::api::DynamicObject;

pub use autoscaling::{
    cpu_query, order_cpu_query, FAST_SCALE_DOWN_WINDOW_SECONDS, ORDER_CPU_UTILIZATION,
    ORDER_MAX_REPLICAS, ORDER_MIN_REPLICAS, USER_MAX_REPLICAS, USER_MIN_REPLICAS,
};
pub use istio::{bootstrap_override_json, BOOTSTRAP_OVERRIDE_CONFIG_MAP, BOOTSTRAP_OVERRIDE_KEY};
pub use kinds::{apply_order_kinds, kind_info, kind_of, required_crds, KindInfo};
pub use network::{ISTIOD_XDS_PORT, SIDECAR_ENVOY_METRICS_PORT, SIDECAR_MERGED_METRICS_PORT};
pub use options::{
    Profile, RenderOptions, UnknownProfile, DEFAULT_HEALTH_PATH,
    DEFAULT_KEDA_CPU_ACTIVATION_THRESHOLD, DEFAULT_KEDA_CPU_THRESHOLD,
    DEFAULT_MONITORING_NAMESPACE, DEFAULT_PROMETHEUS_ADDRESS,
};
pub use spec::{
    FileError, ImageRegistry, MeshFile, MeshSpec, Overrides, SpecError, REFERENCE_SERVICES,
};
pub use workloads::{
    image_version, PodSecurity, UnknownPodSecurity, GKE_ACCELERATOR_LABEL, GPU_RESOURCE,
    GPU_TAINT_KEY, LOCAL_GPU_LABEL, POD_RUN_AS_USER, VERSION_KEY,
};

/// Label key/value marking objects meshctl manages.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "meshctl");
/// Label key/value marking the system the objects belong to.
pub const PART_OF: (&str, &str) = ("app.kubernetes.io/part-of", "meshguard");
/// Label key whose value is the install's namespace: `uninstall` selects on it.
pub const INSTANCE_KEY: &str = "app.kubernetes.io/instance";
/// Label key naming the service (or `meshguard` for namespace-wide objects) an object belongs to.
/// Pods carry it too: Deployments, Services, WasmPlugins and NetworkPolicies select on it.
pub const NAME_KEY: &str = "app.kubernetes.io/name";
/// Label key naming the object's role (`workload`, `authz-filter`, `network-policy`, ...).
pub const COMPONENT_KEY: &str = "app.kubernetes.io/component";
/// `app.kubernetes.io/name` of the objects that belong to no single service.
pub const SYSTEM_NAME: &str = "meshguard";

/// The Grafana dashboard (`manifests/grafana/meshguard-dashboard.json`): request rate, latency
/// percentiles and denials from the filters' metrics, the autoscalers' replicas and
/// order-service's CPU. Its `datasource` and `namespace` are dashboard variables.
pub const GRAFANA_DASHBOARD_JSON: &str = include_str!("../grafana/meshguard-dashboard.json");

/// A rendering error.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The mesh model is invalid.
    #[error(transparent)]
    Model(#[from] meshguard_mesh::ModelError),
    /// The mesh document is invalid: the error names the field.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// An object could not be assembled.
    #[error("cannot build {kind} {name}: {message}")]
    Object {
        kind: String,
        name: String,
        message: String,
    },
    /// A [`RenderOptions`] field has a value that cannot be rendered.
    #[error("invalid option `{field}`: {message}")]
    Option { field: String, message: String },
}

impl RenderError {
    pub(crate) fn option(field: &str, message: impl Into<String>) -> Self {
        Self::Option {
            field: field.to_owned(),
            message: message.into(),
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

/// The label selector (`key=value,...`) matching every object an install into `namespace` owns:
/// what `uninstall` lists and deletes by.
pub fn ownership_selector(namespace: &str) -> String {
    ownership_labels(namespace)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Ownership labels plus `app.kubernetes.io/name` and `app.kubernetes.io/component`.
pub(crate) fn labels(namespace: &str, name: &str, component: &str) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = ownership_labels(namespace).into_iter().collect();
    out.insert(NAME_KEY.to_owned(), name.to_owned());
    out.insert(COMPONENT_KEY.to_owned(), component.to_owned());
    out
}

/// Renders every object, in apply order, for the mesh `spec` installed into `opts.namespace`.
///
/// Fails if the document is invalid (the error names the field) or if an option cannot be
/// rendered (see [`RenderOptions::validate`]).
pub fn render(spec: &MeshSpec, opts: &RenderOptions) -> Result<Vec<DynamicObject>, RenderError> {
    opts.validate()?;
    let mesh = spec.mesh(&opts.namespace)?;
    let mut out = Vec::new();
    out.push(workloads::namespace(opts)?);
    for s in &mesh.services {
        out.push(workloads::service_account(
            &s.name,
            &s.service_account,
            workloads::WORKLOAD,
            opts,
        )?);
    }
    // A client's pods run under an account of their own; meshctl makes it where it installs.
    for c in mesh
        .clients
        .iter()
        .filter(|c| c.namespace == opts.namespace)
    {
        out.push(workloads::service_account(
            &c.name,
            &c.service_account,
            workloads::CLIENT,
            opts,
        )?);
    }
    out.push(istio::peer_authentication(opts));
    out.extend(network::policies(&mesh, opts)?);
    out.push(istio::bootstrap_override(opts)?);
    for s in &mesh.services {
        out.push(istio::authz_plugin(&mesh, s, opts)?);
        out.push(istio::metrics_plugin(&mesh, s, opts)?);
    }
    for s in &mesh.services {
        out.push(workloads::service(s, opts)?);
    }
    for s in &spec.services {
        out.push(workloads::deployment(&mesh, s, opts)?);
    }
    for s in &mesh.services {
        out.push(workloads::pod_disruption_budget(s, opts)?);
    }
    for s in &spec.services {
        out.extend(autoscaling::hpa(s, opts)?);
    }
    for s in &spec.services {
        out.extend(autoscaling::scaled_object(s, opts)?);
    }
    if opts.pod_monitor {
        out.push(istio::pod_monitor(opts));
    }
    Ok(out)
}

/// A multi-document YAML stream.
///
/// Keys are written in sorted order whatever the build's `serde_json` features, so the output is
/// byte-for-byte stable (the checked-in `manifests/rendered/default.yaml` depends on it).
pub fn to_yaml(objects: &[DynamicObject]) -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for o in objects {
        let value =
            serde_json::to_value(o).map_err(<serde_yaml::Error as serde::ser::Error>::custom)?;
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&object::sorted(value))?);
    }
    Ok(out)
}
