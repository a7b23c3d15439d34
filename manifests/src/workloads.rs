//! The namespace and the services' workloads: ServiceAccounts, Services, Deployments and
//! PodDisruptionBudgets, with `restricted` pod security and GPU scheduling.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, HTTPGetAction,
    Namespace, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec, Toleration, Volume,
    VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::DynamicObject;
use meshguard_mesh::metrics::ENVOY_STAT_PREFIX;
use meshguard_mesh::{Mesh, Service as MeshService};
use serde_json::json;

use crate::object::{meta, typed};
use crate::spec::{Placement, ServiceSpec as ServiceEntry};
use crate::{labels, Profile, RenderError, RenderOptions, NAME_KEY, SYSTEM_NAME};

/// Extended resource the NVIDIA device plugin advertises.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// Taint key of GPU nodes (`nvidia.com/gpu=present:NoSchedule` on GKE GPU node pools).
pub const GPU_TAINT_KEY: &str = "nvidia.com/gpu";
/// Node label of GPU nodes in the [`Profile::Local`] profile (the original write-up's `--node-labels=gpu=true`).
pub const LOCAL_GPU_LABEL: (&str, &str) = ("gpu", "true");
/// Node label GKE puts on every node of a GPU node pool (its value is the accelerator type).
pub const GKE_ACCELERATOR_LABEL: &str = "cloud.google.com/gke-accelerator";
/// UID and GID the services run as: any non-zero ID satisfies `restricted`; a high one avoids
/// colliding with IDs that images or nodes use for real accounts.
pub const POD_RUN_AS_USER: i64 = 10001;

/// `app.kubernetes.io/component` of the workload objects (and their pods).
pub(crate) const WORKLOAD: &str = "workload";
/// The component label of a client's ServiceAccount.
pub(crate) const CLIENT: &str = "client";

/// The namespace: sidecar injection on, Pod Security `restricted` enforced.
///
/// `restricted` holds for the injected sidecar only when Istio runs with its CNI plugin (no
/// `istio-init` with `NET_ADMIN`), and the pod-level `seccompProfile` below covers the injected
/// containers: see `docs/deploy-gke.md`.
pub(crate) fn namespace(opts: &RenderOptions) -> Result<DynamicObject, RenderError> {
    let mut l = labels(&opts.namespace, SYSTEM_NAME, "namespace");
    l.insert("istio-injection".into(), "enabled".into());
    // `enforce` is what admits pods: `restricted` unless Istio without CNI needs less (see
    // `PodSecurity::for_istio`). `warn` and `audit` stay `restricted`, so whatever that level
    // would refuse is still reported.
    for (mode, level) in [
        ("enforce", opts.pod_security),
        ("warn", PodSecurity::Restricted),
        ("audit", PodSecurity::Restricted),
    ] {
        l.insert(
            format!("pod-security.kubernetes.io/{mode}"),
            level.as_str().into(),
        );
        l.insert(
            format!("pod-security.kubernetes.io/{mode}-version"),
            "latest".into(),
        );
    }
    typed(&Namespace {
        metadata: meta(&opts.namespace, None, l),
        ..Namespace::default()
    })
}

/// The identity of a service's pods, or of a client's in the mesh's namespace (`component`
/// says which): its SPIFFE ID is `spiffe://<td>/ns/<ns>/sa/<account>`. No token is mounted (the
/// services never call the Kubernetes API; Istio's sidecar gets its own projected token), and no
/// Role is bound to it.
pub(crate) fn service_account(
    name: &str,
    account: &str,
    component: &str,
    opts: &RenderOptions,
) -> Result<DynamicObject, RenderError> {
    typed(&ServiceAccount {
        metadata: meta(
            account,
            Some(&opts.namespace),
            labels(&opts.namespace, name, component),
        ),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    })
}

fn selector_labels(service: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(NAME_KEY.to_owned(), service.to_owned())])
}

/// ClusterIP Service on the service's port, named `http` with `appProtocol: http` so Istio
/// handles it as HTTP (the filters are HTTP filters: they would not run on opaque TCP).
pub(crate) fn service(s: &MeshService, opts: &RenderOptions) -> Result<DynamicObject, RenderError> {
    typed(&Service {
        metadata: meta(
            &s.name,
            Some(&opts.namespace),
            labels(&opts.namespace, &s.name, WORKLOAD),
        ),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(&s.name)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: i32::from(s.port),
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                app_protocol: Some("http".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

fn quantities(items: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
    items
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
        .collect()
}

/// The service's CPU and memory (its own, or the defaults: more for a GPU service, which feeds
/// the device), plus its GPUs and other extended resources. Requests are what the HPA's CPU
/// utilization is measured against (75 % of 250m ≈ 190m per order-service pod).
fn resources(s: &ServiceEntry) -> ResourceRequirements {
    let (requests, limits) = match (&s.resources, s.wants_gpu()) {
        (Some(r), _) => (
            quantities(&[
                ("cpu", r.requests.cpu.as_str()),
                ("memory", r.requests.memory.as_str()),
            ]),
            quantities(&[
                ("cpu", r.limits.cpu.as_str()),
                ("memory", r.limits.memory.as_str()),
            ]),
        ),
        (None, true) => (
            quantities(&[("cpu", "500m"), ("memory", "512Mi")]),
            quantities(&[("cpu", "2"), ("memory", "1Gi")]),
        ),
        (None, false) => (
            quantities(&[("cpu", "250m"), ("memory", "128Mi")]),
            quantities(&[("cpu", "1"), ("memory", "256Mi")]),
        ),
    };
    let (mut requests, mut limits) = (requests, limits);
    // Extended resources cannot be overcommitted: request and limit must be equal.
    for (name, count) in extended_resources(&s.placement) {
        requests.insert(name.clone(), Quantity(count.to_string()));
        limits.insert(name, Quantity(count.to_string()));
    }
    ResourceRequirements {
        requests: Some(requests),
        limits: Some(limits),
        ..ResourceRequirements::default()
    }
}

/// GPUs and the other extended resources a pod asks for.
fn extended_resources(p: &Placement) -> Vec<(String, u32)> {
    let mut out: Vec<(String, u32)> = p
        .extended_resources
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    if p.gpus > 0 {
        out.push((GPU_RESOURCE.to_owned(), p.gpus));
    }
    out
}

fn requirement(key: &str, operator: &str, values: &[&str]) -> NodeSelectorRequirement {
    NodeSelectorRequirement {
        key: key.to_owned(),
        operator: operator.to_owned(),
        values: (!values.is_empty()).then(|| values.iter().map(|v| (*v).to_owned()).collect()),
    }
}

/// Required node affinity: GPU pods only on GPU nodes, every other pod never on one (GPU nodes
/// are scarce and expensive; the taint keeps most pods off them, this keeps off the rest, e.g.
/// anything that tolerates every taint); then the service's own requirements, all of which must
/// hold too.
fn affinity(profile: Profile, s: &ServiceEntry) -> Affinity {
    let gpu = s.wants_gpu();
    let pool = match (profile, gpu) {
        (Profile::Local, true) => requirement(LOCAL_GPU_LABEL.0, "In", &[LOCAL_GPU_LABEL.1]),
        (Profile::Local, false) => requirement(LOCAL_GPU_LABEL.0, "NotIn", &[LOCAL_GPU_LABEL.1]),
        (Profile::Gke, true) => requirement(GKE_ACCELERATOR_LABEL, "Exists", &[]),
        (Profile::Gke, false) => requirement(GKE_ACCELERATOR_LABEL, "DoesNotExist", &[]),
    };
    let mut expressions = vec![pool];
    for r in &s.placement.node_affinity {
        expressions.push(NodeSelectorRequirement {
            key: r.key.clone(),
            operator: r.operator.as_str().to_owned(),
            values: (!r.values.is_empty()).then(|| r.values.clone()),
        });
    }
    Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(expressions),
                    ..NodeSelectorTerm::default()
                }],
            }),
            ..NodeAffinity::default()
        }),
        ..Affinity::default()
    }
}

/// The GPU taint's toleration for a GPU service, then the service's own.
fn tolerations(s: &ServiceEntry) -> Option<Vec<Toleration>> {
    let mut out = Vec::new();
    if s.wants_gpu() {
        out.push(Toleration {
            key: Some(GPU_TAINT_KEY.into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        });
    }
    for t in &s.placement.tolerations {
        out.push(Toleration {
            key: Some(t.key.clone()),
            operator: Some(t.operator.as_str().to_owned()),
            value: t.value.clone(),
            effect: Some(t.effect.as_str().to_owned()),
            ..Toleration::default()
        });
    }
    (!out.is_empty()).then_some(out)
}

/// `proxy.istio.io/config` for the pods:
/// - `proxyStatsMatcher` keeps the filters' stats (Istio trims Envoy's stats to a default set);
/// - `holdApplicationUntilProxyStarts` so a service's first outbound call does not race the sidecar.
///
/// No `prometheus.io/*` annotations: with Istio's default metrics merging the injector sets them
/// to the agent's merged endpoint (`:15020/stats/prometheus`).
pub(crate) fn proxy_config() -> String {
    json!({
        "holdApplicationUntilProxyStarts": true,
        "proxyStatsMatcher": {"inclusionPrefixes": [ENVOY_STAT_PREFIX]},
    })
    .to_string()
}

fn http_probe(path: &str, port: u16, period: i32, failure: i32) -> Probe {
    // Istio rewrites HTTP probes to go through the agent on :15020, so they work under STRICT
    // mTLS and never pass through the inbound filters (kubelet has no mesh identity).
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(i32::from(port)),
            scheme: Some("HTTP".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failure),
        ..Probe::default()
    }
}

/// The pod label Istio reads as the workload's canonical revision.
pub const VERSION_KEY: &str = "app.kubernetes.io/version";

/// The version label of a pod running `image`: the image's tag, or `latest` (Istio's own default
/// revision) when it has none or the tag is not a valid label value.
pub fn image_version(image: &str) -> String {
    let name = image.split('@').next().unwrap_or(image);
    let last = name.rsplit('/').next().unwrap_or(name);
    match last.split_once(':') {
        Some((_, tag))
            if !tag.is_empty()
                && tag.len() <= 63
                && tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && tag.starts_with(|c: char| c.is_ascii_alphanumeric())
                && tag.ends_with(|c: char| c.is_ascii_alphanumeric()) =>
        {
            tag.to_owned()
        }
        _ => "latest".to_owned(),
    }
}

/// The Pod Security Standards level the namespace enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PodSecurity {
    /// `restricted`: what meshctl wants; admits Istio's injected pods only with Istio CNI.
    #[default]
    Restricted,
    /// `baseline`.
    Baseline,
    /// `privileged`: no restriction; the only level that admits Istio's `istio-init` container
    /// (NET_ADMIN, NET_RAW, root), i.e. Istio without its CNI plugin.
    Privileged,
}

impl PodSecurity {
    /// Every level, strictest first.
    pub const ALL: [PodSecurity; 3] = [
        PodSecurity::Restricted,
        PodSecurity::Baseline,
        PodSecurity::Privileged,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            PodSecurity::Restricted => "restricted",
            PodSecurity::Baseline => "baseline",
            PodSecurity::Privileged => "privileged",
        }
    }

    /// The strictest level that admits the pods Istio's injector makes: `restricted` with Istio
    /// CNI; without it the injected `istio-init` container adds NET_ADMIN and NET_RAW and runs as
    /// root (istio `manifests/charts/istio-control/istio-discovery/files/injection-template.yaml`),
    /// which `baseline` refuses too. `tests/istio/tests/pod_security.rs` checks both with Istio's
    /// injector and the API server's PodSecurity admission.
    pub fn for_istio(cni: bool) -> PodSecurity {
        if cni {
            PodSecurity::Restricted
        } else {
            PodSecurity::Privileged
        }
    }
}

impl std::fmt::Display for PodSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name is not a Pod Security level.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown Pod Security level `{0}` (expected restricted, baseline or privileged)")]
pub struct UnknownPodSecurity(pub String);

impl std::str::FromStr for PodSecurity {
    type Err = UnknownPodSecurity;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PodSecurity::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPodSecurity(s.to_owned()))
    }
}

/// Environment variable naming a callee's URL, e.g. `ORDER_SERVICE_URL`.
fn url_var(service: &str) -> String {
    format!("{}_URL", service.to_ascii_uppercase().replace('-', "_"))
}

/// The Deployment of a service.
pub(crate) fn deployment(
    mesh: &Mesh,
    s: &ServiceEntry,
    opts: &RenderOptions,
) -> Result<DynamicObject, RenderError> {
    let image = s.image.as_str();
    // Extended resources are scarce: a pod that needs one cannot surge (see below).
    let scarce = !extended_resources(&s.placement).is_empty();
    // Callees are reached over plain HTTP: the sidecar upgrades the connection to mutual TLS
    // with the caller's mesh identity, which is what the callee's authorization filter checks.
    // (An app that spoke TLS itself would hide the requests from the HTTP filters.)
    let mut env = Vec::new();
    for rule in mesh.callees_of(&s.name) {
        let callee = mesh.service(&rule.to)?;
        let var = url_var(&callee.name);
        if env.iter().any(|e: &EnvVar| e.name == var) {
            continue;
        }
        env.push(EnvVar {
            name: var,
            value: Some(format!(
                "http://{}.{}.svc.cluster.local:{}",
                callee.name, opts.namespace, callee.port
            )),
            ..EnvVar::default()
        });
    }
    let container = Container {
        name: s.name.clone(),
        image: Some(image.to_owned()),
        image_pull_policy: Some("IfNotPresent".into()),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: i32::from(s.port),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        env: (!env.is_empty()).then_some(env),
        resources: Some(resources(s)),
        readiness_probe: Some(http_probe(&opts.health_path, s.port, 10, 3)),
        liveness_probe: Some(Probe {
            initial_delay_seconds: Some(10),
            ..http_probe(&opts.health_path, s.port, 20, 3)
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    let mut pod_labels = labels(&opts.namespace, &s.name, WORKLOAD);
    // Per-pod injection label: the sidecar is injected even into a namespace meshctl did not label.
    pod_labels.insert("sidecar.istio.io/inject".into(), "true".into());
    // Istio's canonical revision (`destination_canonical_revision` in its telemetry); without one
    // `istioctl validate` warns that the pods may not provide Istio's telemetry labels
    // (istio `pkg/kube/labels/labels.go` revisionLabels, `istioctl/pkg/validate`).
    pod_labels.insert(VERSION_KEY.into(), image_version(image));
    let mut pod_meta = meta(&s.name, None, pod_labels);
    pod_meta.name = None;
    pod_meta.annotations = Some(BTreeMap::from([
        ("proxy.istio.io/config".to_owned(), proxy_config()),
        // The filters' tag rules: Istio's injector mounts this ConfigMap and pilot-agent hands
        // it to Envoy as a bootstrap override (see `istio::bootstrap_override`).
        (
            "sidecar.istio.io/bootstrapOverride".to_owned(),
            crate::BOOTSTRAP_OVERRIDE_CONFIG_MAP.to_owned(),
        ),
    ]));
    let pod = PodSpec {
        service_account_name: Some(s.service_account().to_owned()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(POD_RUN_AS_USER),
            run_as_group: Some(POD_RUN_AS_USER),
            // Pod-level, so it also covers the containers Istio injects.
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        node_selector: (!s.placement.node_selector.is_empty())
            .then(|| s.placement.node_selector.clone()),
        affinity: Some(affinity(opts.profile, s)),
        tolerations: tolerations(s),
        containers: vec![container],
        volumes: Some(vec![Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity("64Mi".into())),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        }]),
        ..PodSpec::default()
    };
    // A GPU pod (or one with another extended resource) cannot surge: with one GPU free, the new
    // pod would wait forever for a second one while the old one holds the first. Replace in place
    // instead. Other services surge one pod and keep the old one serving until the new one is
    // ready.
    let rolling = if scarce {
        RollingUpdateDeployment {
            max_surge: Some(IntOrString::Int(0)),
            max_unavailable: Some(IntOrString::Int(1)),
        }
    } else {
        RollingUpdateDeployment {
            max_surge: Some(IntOrString::Int(1)),
            max_unavailable: Some(IntOrString::Int(0)),
        }
    };
    // Autoscaled Deployments leave `replicas` to their autoscaler: applying a number on every
    // install would undo its decisions.
    let autoscaled = crate::autoscaling::is_autoscaled(s);
    typed(&Deployment {
        metadata: meta(
            &s.name,
            Some(&opts.namespace),
            labels(&opts.namespace, &s.name, WORKLOAD),
        ),
        spec: Some(DeploymentSpec {
            replicas: (!autoscaled).then_some(s.replicas.unwrap_or(1)),
            revision_history_limit: Some(5),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&s.name)),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(rolling),
            }),
            template: PodTemplateSpec {
                metadata: Some(pod_meta),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    })
}

/// `maxUnavailable: 1`, not `minAvailable: 1`: with one replica (the minimum of every service),
/// `minAvailable: 1` forbids every eviction, so `kubectl drain` and node-pool upgrades hang on the
/// node. `maxUnavailable: 1` lets the drain move a single pod while still stopping it from taking
/// down more than one replica at a time once the autoscalers have added some. `AlwaysAllow` lets
/// a drain evict pods that are not ready anyway.
pub(crate) fn pod_disruption_budget(
    s: &MeshService,
    opts: &RenderOptions,
) -> Result<DynamicObject, RenderError> {
    typed(&PodDisruptionBudget {
        metadata: meta(
            &s.name,
            Some(&opts.namespace),
            labels(&opts.namespace, &s.name, WORKLOAD),
        ),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&s.name)),
                ..LabelSelector::default()
            }),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}
