//! The mesh file: the whole system as data. Its services (image, port, service account,
//! resources), the calls between them (methods, path prefixes), each service's scaling (none, an
//! HPA on its CPU, or KEDA on PromQL queries) and its placement (GPUs, node selector, node
//! affinity, tolerations, extended resources).
//!
//! [`MeshSpec::reference`] is the built-in document, user-service → order-service →
//! payment-service, that `meshctl` renders without `-f`; `docs/examples/reference.yaml` is the
//! same document as a file. [`MeshFile::parse`] reads a file strictly (unknown fields are errors)
//! and validates it, and every error names the file, line and field. `docs/mesh-file.md`
//! describes every field; `docs/mesh.schema.json` is the JSON Schema editors read, generated
//! from these types ([`json_schema`]).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use meshguard_mesh::http::{is_method_token, normalized_path};
use meshguard_mesh::identity::{validate_dns_label, SpiffeId};
use meshguard_mesh::model::{
    CallRule, Client, Mesh, Service, DEFAULT_TRUST_DOMAIN, ORDER_SERVICE, PAYMENT_SERVICE,
    SERVICE_PORT, USER_SERVICE,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::autoscaling::{
    ORDER_CPU_UTILIZATION, ORDER_MAX_REPLICAS, ORDER_MIN_REPLICAS, USER_MAX_REPLICAS,
    USER_MIN_REPLICAS,
};
use crate::options::{check_decimal, check_image};
use crate::{DEFAULT_KEDA_CPU_ACTIVATION_THRESHOLD, DEFAULT_KEDA_CPU_THRESHOLD};

/// The one `apiVersion` a mesh file may have.
pub const API_VERSION: &str = "meshguard/v1alpha1";

/// The image registry and path of the default images, the original write-up's examples.
const REFERENCE_IMAGES: &str = "us-west1-docker.pkg.dev/brave-smile-424210-m0/microservice";

/// A mesh file's `apiVersion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum ApiVersion {
    #[default]
    #[serde(rename = "meshguard/v1alpha1")]
    V1Alpha1,
}

/// A mesh file's `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum Kind {
    #[default]
    Mesh,
}

/// The whole system in one namespace: what `meshctl install -f` installs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshSpec {
    /// Always `meshguard/v1alpha1`.
    pub api_version: ApiVersion,
    /// Always `Mesh`.
    pub kind: Kind,
    /// The namespace to install into; `--namespace` overrides it, and without either it is
    /// `meshguard`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The mesh's trust domain, the first part of every SPIFFE identity (Istio's default is
    /// `cluster.local`).
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// The services, each with its own identity (service account).
    // A scaling or a trigger is written as a map of one key (`hpa: {...}`), not as a YAML tag.
    #[serde(with = "serde_yaml::with::singleton_map_recursive")]
    #[schemars(with = "Vec<ServiceSpec>")]
    pub services: Vec<ServiceSpec>,
    /// Callers that are not services of the mesh (a front end, an ingress gateway): each may be
    /// a call's `from`, under its own identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<ClientSpec>,
    /// Which service or client may call which service. Everything else is denied by the
    /// authorization filter and dropped by the NetworkPolicies.
    #[serde(default)]
    pub calls: Vec<CallSpec>,
}

/// A caller from outside the call graph: its pods run under a ServiceAccount, in the mesh's
/// namespace (where meshctl creates that ServiceAccount) or another one, and carry
/// `app.kubernetes.io/name: <name>`, which the NetworkPolicies select.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientSpec {
    /// Its name in `calls` and in the metrics' `source` label, and its pods'
    /// `app.kubernetes.io/name` (a DNS label, not a service's name).
    pub name: String,
    /// The namespace its pods run in. Defaults to the mesh's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The ServiceAccount its pods run as: its mesh identity. Defaults to the client's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

impl ClientSpec {
    /// The ServiceAccount (its mesh identity).
    pub fn service_account(&self) -> &str {
        self.service_account.as_deref().unwrap_or(&self.name)
    }
}

fn default_trust_domain() -> String {
    DEFAULT_TRUST_DOMAIN.to_owned()
}

fn default_port() -> u16 {
    SERVICE_PORT
}

/// One service: a Deployment, a Service and a ServiceAccount of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    /// Name of the Deployment, the Service and the pods' `app.kubernetes.io/name` (a DNS label).
    pub name: String,
    /// The container image.
    pub image: String,
    /// The port it serves HTTP on (the Service's port and the container's).
    #[serde(default = "default_port")]
    pub port: u16,
    /// The ServiceAccount its pods run as: its mesh identity. Defaults to the service's name.
    /// No two services may share one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// CPU and memory. Defaults: requests 250m CPU and 128Mi, limits 1 CPU and 256Mi; with GPUs,
    /// requests 500m and 512Mi, limits 2 CPUs and 1Gi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Fixed replicas when `scaling` is `none` (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// How the replica count follows load.
    #[serde(default, skip_serializing_if = "Scaling::is_none")]
    pub scaling: Scaling,
    /// Where the pods may run.
    #[serde(default, skip_serializing_if = "Placement::is_default")]
    pub placement: Placement,
}

impl ServiceSpec {
    /// The ServiceAccount (its mesh identity).
    pub fn service_account(&self) -> &str {
        self.service_account.as_deref().unwrap_or(&self.name)
    }

    /// Whether the pods ask for GPUs.
    pub fn wants_gpu(&self) -> bool {
        self.placement.gpus > 0
    }
}

/// CPU and memory requests and limits, as Kubernetes quantities (`250m`, `1`, `128Mi`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    pub requests: CpuMemory,
    pub limits: CpuMemory,
}

/// A CPU and a memory quantity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CpuMemory {
    pub cpu: String,
    pub memory: String,
}

/// How a service's replica count follows load.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Scaling {
    /// `replicas` pods, always.
    #[default]
    None,
    /// A HorizontalPodAutoscaler on the service's own CPU utilization.
    Hpa(Hpa),
    /// A KEDA ScaledObject on Prometheus queries: the replica count is the highest any trigger
    /// asks for.
    Keda(Keda),
}

impl Scaling {
    fn is_none(&self) -> bool {
        matches!(self, Scaling::None)
    }
}

/// `scaling.hpa`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hpa {
    /// At least 1.
    #[serde(default = "one")]
    pub min_replicas: i32,
    pub max_replicas: i32,
    /// Average CPU utilization to hold, in % of the CPU request.
    pub cpu_utilization: i32,
}

fn one() -> i32 {
    1
}

/// `scaling.keda`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Keda {
    /// 0 lets KEDA scale the service to zero while no trigger is active.
    #[serde(default = "one")]
    pub min_replicas: i32,
    pub max_replicas: i32,
    /// At least one.
    pub triggers: Vec<Trigger>,
}

/// One KEDA trigger: a Prometheus query and the value per replica (`AverageValue`: KEDA asks for
/// `ceil(query / threshold)` replicas).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Trigger {
    /// The CPU cores another service's containers use (cAdvisor's counter, as a rate).
    Cpu(ServiceTrigger),
    /// The requests per second into another service, from the metrics filter.
    RequestRate(ServiceTrigger),
    /// Any PromQL query.
    Prometheus(QueryTrigger),
}

/// A trigger on a service of the mesh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceTrigger {
    /// The service whose load is measured.
    pub service: String,
    /// The query's value per replica.
    pub threshold: Decimal,
    /// Above this the service is active (matters only with `minReplicas: 0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation_threshold: Option<Decimal>,
}

/// A trigger on a PromQL query of your own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueryTrigger {
    /// The trigger's name (a DNS label), unique in the service.
    pub name: String,
    /// The query; `${namespace}` is replaced by the install's namespace.
    pub query: String,
    pub threshold: Decimal,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation_threshold: Option<Decimal>,
}

/// Where a service's pods may run.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Placement {
    /// `nvidia.com/gpu` per pod. A service with GPUs runs only on the GPU pool (`--profile`
    /// says how GPU nodes are labelled) and tolerates its taint; every other service is kept off
    /// GPU nodes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gpus: u32,
    /// The pods' `nodeSelector`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Required node affinity, added to the GPU pool's rule (all must hold).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_affinity: Vec<NodeRequirement>,
    /// Tolerations, besides the GPU taint's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<TolerationSpec>,
    /// Other extended resources per pod (e.g. `example.com/fpga: 1`), requested and limited
    /// alike.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extended_resources: BTreeMap<String, u32>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Placement {
    fn is_default(&self) -> bool {
        self == &Placement::default()
    }
}

/// A node label requirement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeRequirement {
    pub key: String,
    pub operator: NodeOperator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// A node selector operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum NodeOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
    Gt,
    Lt,
}

impl NodeOperator {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeOperator::In => "In",
            NodeOperator::NotIn => "NotIn",
            NodeOperator::Exists => "Exists",
            NodeOperator::DoesNotExist => "DoesNotExist",
            NodeOperator::Gt => "Gt",
            NodeOperator::Lt => "Lt",
        }
    }
}

/// A toleration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TolerationSpec {
    pub key: String,
    #[serde(default)]
    pub operator: TolerationOperator,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub effect: TaintEffect,
}

/// A toleration's operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum TolerationOperator {
    #[default]
    Equal,
    Exists,
}

/// A taint effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

impl TolerationOperator {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TolerationOperator::Equal => "Equal",
            TolerationOperator::Exists => "Exists",
        }
    }
}

impl TaintEffect {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TaintEffect::NoSchedule => "NoSchedule",
            TaintEffect::PreferNoSchedule => "PreferNoSchedule",
            TaintEffect::NoExecute => "NoExecute",
        }
    }
}

/// "`from` may call `to`": the model's own rule, read from the file as it is.
pub type CallSpec = CallRule;

/// A plain decimal (`0.5`, `12`), written as a YAML number or string; kept as its text, which is
/// what KEDA reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Decimal(pub String);

impl Decimal {
    /// The decimal's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Decimal {
    fn from(s: &str) -> Self {
        Decimal(s.to_owned())
    }
}

impl<'de> Deserialize<'de> for Decimal {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Decimal;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a decimal number like 0.5")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Decimal, E> {
                Ok(Decimal(v.to_owned()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Decimal, E> {
                Ok(Decimal(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Decimal, E> {
                Ok(Decimal(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Decimal, E> {
                Ok(Decimal(v.to_string()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl JsonSchema for Decimal {
    fn schema_name() -> Cow<'static, str> {
        "Decimal".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A plain decimal such as 0.5 or 12, as a number or a string.",
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?$"}
            ]
        })
    }
}

/// What is wrong in a mesh document, and where: `path` is the field (`services[3].image`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct SpecError {
    pub path: String,
    pub message: String,
}

impl SpecError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl MeshSpec {
    /// The built-in system: user-service → order-service → payment-service on port 5000, each
    /// with a ServiceAccount of its own name; order-service scaled by an HPA on its CPU (75 %,
    /// 1..10), user-service by KEDA on order-service's CPU (0.5 cores per replica, 1..4), and
    /// payment-service on one GPU.
    pub fn reference() -> Self {
        let service = |name: &str, scaling: Scaling, gpus: u32| ServiceSpec {
            name: name.to_owned(),
            image: format!("{REFERENCE_IMAGES}/{name}:latest"),
            port: SERVICE_PORT,
            service_account: None,
            resources: None,
            replicas: None,
            scaling,
            placement: Placement {
                gpus,
                ..Placement::default()
            },
        };
        let call = |from: &str, to: &str| CallSpec {
            from: from.to_owned(),
            to: to.to_owned(),
            methods: Vec::new(),
            path_prefixes: Vec::new(),
        };
        Self {
            api_version: ApiVersion::V1Alpha1,
            kind: Kind::Mesh,
            namespace: None,
            trust_domain: default_trust_domain(),
            services: vec![
                service(
                    USER_SERVICE,
                    Scaling::Keda(Keda {
                        min_replicas: USER_MIN_REPLICAS,
                        max_replicas: USER_MAX_REPLICAS,
                        triggers: vec![Trigger::Cpu(ServiceTrigger {
                            service: ORDER_SERVICE.to_owned(),
                            threshold: DEFAULT_KEDA_CPU_THRESHOLD.into(),
                            activation_threshold: Some(
                                DEFAULT_KEDA_CPU_ACTIVATION_THRESHOLD.into(),
                            ),
                        })],
                    }),
                    0,
                ),
                service(
                    ORDER_SERVICE,
                    Scaling::Hpa(Hpa {
                        min_replicas: ORDER_MIN_REPLICAS,
                        max_replicas: ORDER_MAX_REPLICAS,
                        cpu_utilization: ORDER_CPU_UTILIZATION,
                    }),
                    0,
                ),
                service(PAYMENT_SERVICE, Scaling::None, 1),
            ],
            clients: Vec::new(),
            calls: vec![
                call(USER_SERVICE, ORDER_SERVICE),
                call(ORDER_SERVICE, PAYMENT_SERVICE),
            ],
        }
    }

    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&ServiceSpec> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The policy model of this document, for an install into `namespace`.
    pub fn mesh(&self, namespace: &str) -> Result<Mesh, SpecError> {
        self.validate()?;
        validate_dns_label(namespace).map_err(|e| SpecError::new("namespace", e.to_string()))?;
        let mesh = Mesh {
            namespace: namespace.to_owned(),
            trust_domain: self.trust_domain.clone(),
            services: self
                .services
                .iter()
                .map(|s| Service {
                    name: s.name.clone(),
                    service_account: s.service_account().to_owned(),
                    port: s.port,
                })
                .collect(),
            clients: self
                .clients
                .iter()
                .map(|c| Client {
                    name: c.name.clone(),
                    namespace: c.namespace.clone().unwrap_or_else(|| namespace.to_owned()),
                    service_account: c.service_account().to_owned(),
                })
                .collect(),
            calls: self.calls.clone(),
        };
        // Everything the model checks was checked above with the field's path; this is a last
        // guard that the two never disagree.
        mesh.validate()
            .map_err(|e| SpecError::new("services", e.to_string()))?;
        Ok(mesh)
    }

    /// Checks every field, and the references between them; the error names the first field at
    /// fault.
    pub fn validate(&self) -> Result<(), SpecError> {
        if let Some(ns) = &self.namespace {
            validate_dns_label(ns).map_err(|e| SpecError::new("namespace", e.to_string()))?;
        }
        SpiffeId::new(&self.trust_domain, "probe", "probe")
            .map_err(|e| SpecError::new("trustDomain", e.to_string()))?;
        if self.services.is_empty() {
            return Err(SpecError::new(
                "services",
                "a mesh needs at least one service",
            ));
        }
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        let mut accounts: BTreeMap<&str, &str> = BTreeMap::new();
        for (i, s) in self.services.iter().enumerate() {
            let at = |field: &str| format!("services[{i}].{field}");
            validate_dns_label(&s.name).map_err(|e| SpecError::new(at("name"), e.to_string()))?;
            if names.insert(&s.name, i).is_some() {
                return Err(SpecError::new(
                    at("name"),
                    format!("service `{}` is defined twice", s.name),
                ));
            }
            let account = s.service_account();
            validate_dns_label(account)
                .map_err(|e| SpecError::new(at("serviceAccount"), e.to_string()))?;
            if let Some(first) = accounts.insert(account, &s.name) {
                return Err(SpecError::new(
                    at("serviceAccount"),
                    format!(
                        "services `{first}` and `{}` share the service account `{account}`: they \
                         would have one identity, and each would be admitted as the other; give \
                         each its own",
                        s.name
                    ),
                ));
            }
            check_image(&s.image).map_err(|m| SpecError::new(at("image"), m))?;
            if s.port == 0 {
                return Err(SpecError::new(at("port"), "must be 1..65535"));
            }
            if let Some(r) = &s.resources {
                for (field, q) in [
                    ("resources.requests.cpu", &r.requests.cpu),
                    ("resources.requests.memory", &r.requests.memory),
                    ("resources.limits.cpu", &r.limits.cpu),
                    ("resources.limits.memory", &r.limits.memory),
                ] {
                    check_quantity(q).map_err(|m| SpecError::new(at(field), m))?;
                }
            }
            validate_placement(&s.placement, &at("placement"))?;
            if s.replicas.is_some() && !s.scaling.is_none() {
                return Err(SpecError::new(
                    at("replicas"),
                    "fixed replicas and an autoscaler exclude each other: the autoscaler owns the \
                     replica count",
                ));
            }
            if let Some(n) = s.replicas {
                if n < 0 {
                    return Err(SpecError::new(at("replicas"), "must not be negative"));
                }
            }
        }
        for (i, s) in self.services.iter().enumerate() {
            validate_scaling(&s.scaling, &format!("services[{i}].scaling"), &names)?;
        }
        let mut clients: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, c) in self.clients.iter().enumerate() {
            let at = |field: &str| format!("clients[{i}].{field}");
            validate_dns_label(&c.name).map_err(|e| SpecError::new(at("name"), e.to_string()))?;
            if names.contains_key(c.name.as_str()) {
                return Err(SpecError::new(
                    at("name"),
                    format!(
                        "`{}` is a service: a service calls as itself, a client is a caller from outside the services",
                        c.name
                    ),
                ));
            }
            if clients.insert(&c.name, i).is_some() {
                return Err(SpecError::new(
                    at("name"),
                    format!("client `{}` is defined twice", c.name),
                ));
            }
            if let Some(ns) = &c.namespace {
                validate_dns_label(ns)
                    .map_err(|e| SpecError::new(at("namespace"), e.to_string()))?;
            }
            let account = c.service_account();
            validate_dns_label(account)
                .map_err(|e| SpecError::new(at("serviceAccount"), e.to_string()))?;
            // In the mesh's namespace (wherever that is installed) a client on a service's
            // account would be that service.
            if c.namespace.is_none() {
                if let Some(first) = accounts.get(account) {
                    return Err(SpecError::new(
                        at("serviceAccount"),
                        format!(
                            "`{account}` is service `{first}`'s service account: the client would be admitted as that service; give it its own"
                        ),
                    ));
                }
            }
        }
        for (i, c) in self.calls.iter().enumerate() {
            let at = |field: &str| format!("calls[{i}].{field}");
            if !names.contains_key(c.from.as_str()) && !clients.contains_key(c.from.as_str()) {
                return Err(SpecError::new(
                    at("from"),
                    format!(
                        "no service or client named `{}` (services: {}{})",
                        c.from,
                        list(&names),
                        if clients.is_empty() {
                            String::new()
                        } else {
                            format!("; clients: {}", list(&clients))
                        }
                    ),
                ));
            }
            if clients.contains_key(c.to.as_str()) {
                return Err(SpecError::new(
                    at("to"),
                    format!("`{}` is a client: calls go to services", c.to),
                ));
            }
            if !names.contains_key(c.to.as_str()) {
                return Err(SpecError::new(
                    at("to"),
                    format!("no service named `{}` (services: {})", c.to, list(&names)),
                ));
            }
            for (j, m) in c.methods.iter().enumerate() {
                if !is_method_token(m) {
                    return Err(SpecError::new(
                        format!("calls[{i}].methods[{j}]"),
                        format!("`{m}` is not an upper-case HTTP method"),
                    ));
                }
            }
            for (j, p) in c.path_prefixes.iter().enumerate() {
                if normalized_path(p.as_bytes()) != Ok(p.as_str()) {
                    return Err(SpecError::new(
                        format!("calls[{i}].pathPrefixes[{j}]"),
                        format!("`{p}` is not a normalized absolute path"),
                    ));
                }
            }
        }
        self.check_scaling_cycles()
    }

    /// A service scaled on another's load, which is scaled on the first one's, is a loop the
    /// autoscalers cannot settle: each scale-up adds load to the other, so neither ever comes
    /// down. Scaling on one's own load is what an HPA does, and fine.
    fn check_scaling_cycles(&self) -> Result<(), SpecError> {
        let edges: BTreeMap<&str, Vec<(&str, String)>> = self
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let on = match &s.scaling {
                    Scaling::Keda(k) => k
                        .triggers
                        .iter()
                        .enumerate()
                        .filter_map(|(j, t)| match t {
                            Trigger::Cpu(t) | Trigger::RequestRate(t) if t.service != s.name => {
                                Some((
                                    t.service.as_str(),
                                    format!("services[{i}].scaling.keda.triggers[{j}]"),
                                ))
                            }
                            _ => None,
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                (s.name.as_str(), on)
            })
            .collect();
        for start in edges.keys() {
            // Depth-first from `start`, looking for a way back to it.
            let mut stack: Vec<(&str, Vec<&str>, Option<&String>)> =
                vec![(start, vec![start], None)];
            let mut seen = BTreeSet::new();
            while let Some((node, path, first)) = stack.pop() {
                for (next, at) in edges.get(node).into_iter().flatten() {
                    let first = first.or(Some(at));
                    if next == start {
                        let mut cycle = path.clone();
                        cycle.push(start);
                        return Err(SpecError::new(
                            first.cloned().unwrap_or_default(),
                            format!(
                                "the services scale on each other's load ({}): every scale-up \
                                 adds load to the other, so neither would ever scale down; \
                                 scale one of them on its own load",
                                cycle.join(" -> ")
                            ),
                        ));
                    }
                    if seen.insert(*next) {
                        let mut p = path.clone();
                        p.push(next);
                        stack.push((next, p, first));
                    }
                }
            }
        }
        Ok(())
    }

    /// Applies what the command-line flags set, which win over the document.
    pub fn apply(&mut self, o: &Overrides) -> Result<(), OverrideError> {
        for (flag, service, image) in &o.images {
            check_image(image).map_err(|m| OverrideError::new(flag, m))?;
            let s = self
                .services
                .iter_mut()
                .find(|s| s.name == *service)
                .ok_or_else(|| {
                    OverrideError::new(flag, format!("the mesh has no service `{service}`"))
                })?;
            s.image.clone_from(image);
        }
        if let Some(registry) = &o.image_registry {
            let flag = "--image-registry";
            let mut found = false;
            for s in &mut self.services {
                if !REFERENCE_SERVICES.contains(&s.name.as_str()) {
                    continue;
                }
                found = true;
                if o.images.iter().any(|(_, service, _)| *service == s.name) {
                    continue;
                }
                let image = registry.image(&s.name);
                check_image(&image).map_err(|m| OverrideError::new(flag, m))?;
                s.image = image;
            }
            if !found {
                return Err(OverrideError::new(
                    flag,
                    format!(
                        "the mesh has none of the services meshguard ships images of ({})",
                        REFERENCE_SERVICES.join(", ")
                    ),
                ));
            }
        }
        let has_cpu_trigger = self.services.iter().any(|s| match &s.scaling {
            Scaling::Keda(k) => k.triggers.iter().any(|t| matches!(t, Trigger::Cpu(_))),
            _ => false,
        });
        for (flag, value, activation) in [
            ("--keda-cpu-threshold", &o.cpu_threshold, false),
            (
                "--keda-cpu-activation-threshold",
                &o.cpu_activation_threshold,
                true,
            ),
        ] {
            let Some(value) = value else { continue };
            check_decimal(value, activation).map_err(|m| OverrideError::new(flag, m))?;
            if !has_cpu_trigger {
                return Err(OverrideError::new(
                    flag,
                    "no service of the mesh scales on another service's CPU (a KEDA `cpu` trigger)",
                ));
            }
            for t in self.keda_triggers_mut() {
                if let Trigger::Cpu(t) = t {
                    if activation {
                        t.activation_threshold = Some(Decimal(value.clone()));
                    } else {
                        t.threshold = Decimal(value.clone());
                    }
                }
            }
        }
        if let Some(rate) = &o.request_rate_threshold {
            let flag = "--request-rate-threshold";
            check_decimal(rate, false).map_err(|m| OverrideError::new(flag, m))?;
            if !has_cpu_trigger {
                return Err(OverrideError::new(
                    flag,
                    "no service of the mesh scales on another service's CPU (a KEDA `cpu` trigger), \
                     whose request rate it would add",
                ));
            }
            for s in &mut self.services {
                let Scaling::Keda(k) = &mut s.scaling else {
                    continue;
                };
                let on: Vec<String> = k
                    .triggers
                    .iter()
                    .filter_map(|t| match t {
                        Trigger::Cpu(t) => Some(t.service.clone()),
                        _ => None,
                    })
                    .collect();
                for service in on {
                    let existing = k.triggers.iter_mut().find_map(|t| match t {
                        Trigger::RequestRate(t) if t.service == service => Some(t),
                        _ => None,
                    });
                    match existing {
                        Some(t) => t.threshold = Decimal(rate.clone()),
                        None => k.triggers.push(Trigger::RequestRate(ServiceTrigger {
                            service,
                            threshold: Decimal(rate.clone()),
                            activation_threshold: None,
                        })),
                    }
                }
            }
        }
        if o.no_gpu {
            for s in &mut self.services {
                s.placement.gpus = 0;
            }
        }
        Ok(())
    }

    fn keda_triggers_mut(&mut self) -> impl Iterator<Item = &mut Trigger> {
        self.services
            .iter_mut()
            .filter_map(|s| match &mut s.scaling {
                Scaling::Keda(k) => Some(k.triggers.iter_mut()),
                _ => None,
            })
            .flatten()
    }
}

fn list(names: &BTreeMap<&str, usize>) -> String {
    let mut v: Vec<(&usize, &&str)> = names.iter().map(|(n, i)| (i, n)).collect();
    v.sort();
    v.into_iter()
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

fn validate_scaling(
    scaling: &Scaling,
    at: &str,
    names: &BTreeMap<&str, usize>,
) -> Result<(), SpecError> {
    let range = |min: i32, max: i32, lowest: i32, kind: &str| {
        if min < lowest {
            return Err(SpecError::new(
                format!("{at}.{kind}.minReplicas"),
                format!("must be at least {lowest}"),
            ));
        }
        if max < min.max(1) {
            return Err(SpecError::new(
                format!("{at}.{kind}.maxReplicas"),
                format!("must be at least minReplicas and 1 (it is {max})"),
            ));
        }
        Ok(())
    };
    match scaling {
        Scaling::None => Ok(()),
        Scaling::Hpa(h) => {
            range(h.min_replicas, h.max_replicas, 1, "hpa")?;
            if !(1..=1000).contains(&h.cpu_utilization) {
                return Err(SpecError::new(
                    format!("{at}.hpa.cpuUtilization"),
                    "must be a percentage of the CPU request, 1..1000",
                ));
            }
            Ok(())
        }
        Scaling::Keda(k) => {
            range(k.min_replicas, k.max_replicas, 0, "keda")?;
            if k.triggers.is_empty() {
                return Err(SpecError::new(
                    format!("{at}.keda.triggers"),
                    "KEDA needs at least one trigger",
                ));
            }
            let mut trigger_names = BTreeSet::new();
            for (j, trigger) in k.triggers.iter().enumerate() {
                let at = format!("{at}.keda.triggers[{j}]");
                let (name, threshold, activation) = match trigger {
                    Trigger::Cpu(t) | Trigger::RequestRate(t) => {
                        if !names.contains_key(t.service.as_str()) {
                            return Err(SpecError::new(
                                format!("{at}.{}.service", trigger_kind(k, j)),
                                format!(
                                    "no service named `{}` (services: {})",
                                    t.service,
                                    list(names)
                                ),
                            ));
                        }
                        (trigger_name(trigger), &t.threshold, &t.activation_threshold)
                    }
                    Trigger::Prometheus(q) => {
                        validate_dns_label(&q.name).map_err(|e| {
                            SpecError::new(format!("{at}.prometheus.name"), e.to_string())
                        })?;
                        if q.query.trim().is_empty() {
                            return Err(SpecError::new(
                                format!("{at}.prometheus.query"),
                                "the query is empty",
                            ));
                        }
                        (q.name.clone(), &q.threshold, &q.activation_threshold)
                    }
                };
                let kind = trigger_kind(k, j);
                check_decimal(threshold.as_str(), false)
                    .map_err(|m| SpecError::new(format!("{at}.{kind}.threshold"), m))?;
                if let Some(a) = activation {
                    check_decimal(a.as_str(), true).map_err(|m| {
                        SpecError::new(format!("{at}.{kind}.activationThreshold"), m)
                    })?;
                }
                if !trigger_names.insert(name.clone()) {
                    return Err(SpecError::new(
                        at,
                        format!("two triggers are named `{name}`; KEDA needs distinct names"),
                    ));
                }
            }
            Ok(())
        }
    }
}

/// The YAML key of trigger `j`.
fn trigger_kind(k: &Keda, j: usize) -> &'static str {
    match k.triggers.get(j) {
        Some(Trigger::Cpu(_)) => "cpu",
        Some(Trigger::RequestRate(_)) => "requestRate",
        Some(Trigger::Prometheus(_)) | None => "prometheus",
    }
}

/// The name of a trigger in the ScaledObject.
pub fn trigger_name(t: &Trigger) -> String {
    match t {
        Trigger::Cpu(t) => format!("{}-cpu", t.service),
        Trigger::RequestRate(t) => format!("{}-request-rate", t.service),
        Trigger::Prometheus(q) => q.name.clone(),
    }
}

fn validate_placement(p: &Placement, at: &str) -> Result<(), SpecError> {
    for (key, value) in &p.node_selector {
        check_label_key(key).map_err(|m| SpecError::new(format!("{at}.nodeSelector"), m))?;
        check_label_value(value)
            .map_err(|m| SpecError::new(format!("{at}.nodeSelector.{key}"), m))?;
    }
    for (i, r) in p.node_affinity.iter().enumerate() {
        let here = format!("{at}.nodeAffinity[{i}]");
        check_label_key(&r.key).map_err(|m| SpecError::new(format!("{here}.key"), m))?;
        let wants = match r.operator {
            NodeOperator::In | NodeOperator::NotIn => "one or more values",
            NodeOperator::Exists | NodeOperator::DoesNotExist => "no values",
            NodeOperator::Gt | NodeOperator::Lt => "exactly one integer value",
        };
        let ok = match r.operator {
            NodeOperator::In | NodeOperator::NotIn => !r.values.is_empty(),
            NodeOperator::Exists | NodeOperator::DoesNotExist => r.values.is_empty(),
            NodeOperator::Gt | NodeOperator::Lt => {
                r.values.len() == 1 && r.values.iter().all(|v| v.parse::<i64>().is_ok())
            }
        };
        if !ok {
            return Err(SpecError::new(
                format!("{here}.values"),
                format!("`{}` takes {wants}", r.operator.as_str()),
            ));
        }
        for (j, v) in r.values.iter().enumerate() {
            check_label_value(v).map_err(|m| SpecError::new(format!("{here}.values[{j}]"), m))?;
        }
    }
    for (i, t) in p.tolerations.iter().enumerate() {
        let here = format!("{at}.tolerations[{i}]");
        check_label_key(&t.key).map_err(|m| SpecError::new(format!("{here}.key"), m))?;
        match (t.operator, &t.value) {
            (TolerationOperator::Exists, Some(_)) => {
                return Err(SpecError::new(
                    format!("{here}.value"),
                    "`Exists` takes no value",
                ))
            }
            (_, Some(v)) => {
                check_label_value(v).map_err(|m| SpecError::new(format!("{here}.value"), m))?
            }
            _ => {}
        }
    }
    for (name, count) in &p.extended_resources {
        let here = format!("{at}.extendedResources");
        if name == crate::GPU_RESOURCE {
            return Err(SpecError::new(
                here,
                format!("ask for GPUs with `gpus`, which also places the pods on the GPU pool, not as `{name}`"),
            ));
        }
        let (domain, rest) = name.split_once('/').unwrap_or(("", name));
        if domain.is_empty()
            || domain.ends_with("kubernetes.io")
            || check_label_key(name).is_err()
            || rest.is_empty()
        {
            return Err(SpecError::new(
                here,
                format!(
                    "`{name}` is not an extended resource name (a domain outside kubernetes.io, a \
                     slash and a name, e.g. example.com/fpga)"
                ),
            ));
        }
        if *count == 0 {
            return Err(SpecError::new(
                format!("{here}.{name}"),
                "must be at least 1",
            ));
        }
    }
    Ok(())
}

/// A label key: an optional DNS subdomain prefix and `/`, then a name of at most 63 characters.
fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty() && p.len() <= 253 && p.split('.').all(|l| validate_dns_label(l).is_ok())
    });
    if prefix_ok && check_label_value(name).is_ok() && !name.is_empty() {
        Ok(())
    } else {
        Err(format!("`{key}` is not a valid label key"))
    }
}

/// A label value: at most 63 alphanumerics, `-`, `_` or `.`, starting and ending alphanumeric.
fn check_label_value(value: &str) -> Result<(), String> {
    let ok = value.is_empty()
        || (value.len() <= 63
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()));
    if ok {
        Ok(())
    } else {
        Err(format!("`{value}` is not a valid label value"))
    }
}

/// A Kubernetes quantity without exponent forms: digits, an optional fraction, an optional suffix
/// (`m`, `k`, `M`, `G`, `T`, `P`, `E`, `Ki` .. `Ei`).
fn check_quantity(q: &str) -> Result<(), String> {
    let digits_end = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(digits_end);
    let number_ok = !number.is_empty()
        && number.bytes().filter(|b| *b == b'.').count() <= 1
        && !number.starts_with('.')
        && !number.ends_with('.');
    let suffix_ok = matches!(
        suffix,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    );
    if number_ok && suffix_ok {
        Ok(())
    } else {
        Err(format!(
            "`{q}` is not a Kubernetes quantity like 250m, 1, 128Mi or 1Gi"
        ))
    }
}

/// What the command-line flags set in the document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `(flag, service, image)`: the image of a service, by a flag such as `--user-image`.
    pub images: Vec<(String, String, String)>,
    /// Every reference service (see [`REFERENCE_SERVICES`]) of the mesh that no image flag sets
    /// runs `<repository>/<service>:<tag>`, the image `meshctl publish --services` pushes.
    pub image_registry: Option<ImageRegistry>,
    /// The threshold of every KEDA `cpu` trigger.
    pub cpu_threshold: Option<String>,
    /// The activation threshold of every KEDA `cpu` trigger.
    pub cpu_activation_threshold: Option<String>,
    /// For every KEDA `cpu` trigger on a service, a `requestRate` trigger on the same service
    /// with this threshold.
    pub request_rate_threshold: Option<String>,
    /// No service asks for GPUs.
    pub no_gpu: bool,
}

/// The services meshguard ships images of (`tests/services`, pushed by `meshctl publish
/// --services`).
pub const REFERENCE_SERVICES: [&str; 3] = [
    meshguard_mesh::model::USER_SERVICE,
    meshguard_mesh::model::ORDER_SERVICE,
    meshguard_mesh::model::PAYMENT_SERVICE,
];

/// Where the reference services' images are: `--image-registry` and `--image-tag`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageRegistry {
    /// REGISTRY/PATH (e.g. `europe-docker.pkg.dev/acme/meshguard`).
    pub repository: String,
    pub tag: String,
}

impl ImageRegistry {
    /// The image of `service` there.
    pub fn image(&self, service: &str) -> String {
        let repository = self
            .repository
            .trim_start_matches("oci://")
            .trim_end_matches('/');
        format!("{repository}/{service}:{}", self.tag)
    }
}

/// A flag that cannot apply to the document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {flag}: {message}")]
pub struct OverrideError {
    pub flag: String,
    pub message: String,
}

impl OverrideError {
    fn new(flag: &str, message: impl Into<String>) -> Self {
        Self {
            flag: flag.to_owned(),
            message: message.into(),
        }
    }
}

/// Where each field of a file is: its path (`services[1].image`) to its line and column.
type Positions = BTreeMap<String, (usize, usize)>;

/// A mesh file, read and validated, with where each field is in it.
#[derive(Debug, Clone)]
pub struct MeshFile {
    pub path: PathBuf,
    pub spec: MeshSpec,
    locations: Positions,
}

/// A mesh file that cannot be used: where, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    /// `line` and `column` are 1-based; `field` is empty when the YAML itself is broken.
    #[error("{path}:{line}:{column}: {}{message}", if field.is_empty() { String::new() } else { format!("{field}: ") })]
    Invalid {
        path: String,
        line: usize,
        column: usize,
        field: String,
        message: String,
    },
}

impl MeshFile {
    /// Reads and validates the mesh file at `path`.
    pub fn read(path: &Path) -> Result<Self, FileError> {
        let text = std::fs::read_to_string(path).map_err(|e| FileError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates `text`, read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, FileError> {
        let shown = path.display().to_string();
        let locations = locate(text).map_err(|(line, column, message)| FileError::Invalid {
            path: shown.clone(),
            line,
            column,
            field: String::new(),
            message,
        })?;
        let spec: MeshSpec = serde_yaml::from_str(text).map_err(|e| {
            let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
            let full = e.to_string();
            // serde_yaml puts the path first (`services[0]: unknown field ...`) and the position
            // last; both are said by the error's own fields.
            let message = full
                .rsplit_once(" at line ")
                .map_or(full.as_str(), |(m, _)| m);
            let (field, message) = match message.split_once(": ") {
                Some((f, m)) if !f.contains(' ') => (f.to_owned(), m.to_owned()),
                _ => (String::new(), message.to_owned()),
            };
            FileError::Invalid {
                path: shown.clone(),
                line,
                column,
                field,
                message,
            }
        })?;
        let file = Self {
            path: path.to_owned(),
            spec,
            locations,
        };
        file.spec.validate().map_err(|e| file.located(&e))?;
        Ok(file)
    }

    /// `e` with the line and column of its field (or of the nearest enclosing one the file has).
    pub fn located(&self, e: &SpecError) -> FileError {
        let (line, column) = self.position(&e.path);
        FileError::Invalid {
            path: self.path.display().to_string(),
            line,
            column,
            field: e.path.clone(),
            message: e.message.clone(),
        }
    }

    /// Where `field` (`services[2].placement`) is written: its key's line and column, or the
    /// nearest enclosing field's.
    pub fn position(&self, field: &str) -> (usize, usize) {
        let mut path = field;
        loop {
            if let Some(at) = self.locations.get(path) {
                return *at;
            }
            match path.rfind(['.', '[']) {
                Some(i) => path = &path[..i],
                None => return (1, 1),
            }
        }
    }
}

/// Every field's position (`services[1].image` → line, column), from the YAML's events.
fn locate(text: &str) -> Result<Positions, (usize, usize, String)> {
    use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
    use yaml_rust2::scanner::Marker;

    enum Frame {
        Map { path: String, key: Option<String> },
        Seq { path: String, next: usize },
    }
    #[derive(Default)]
    struct Locator {
        stack: Vec<Frame>,
        found: Positions,
    }
    impl Locator {
        /// The path of a value starting now, and whether it is a mapping key.
        fn value_path(&mut self) -> (Option<String>, bool) {
            match self.stack.last_mut() {
                None => (Some(String::new()), false),
                Some(Frame::Map { key: None, .. }) => (None, true),
                Some(Frame::Map { path, key }) => {
                    let k = key.take().unwrap_or_default();
                    let p = if path.is_empty() {
                        k
                    } else {
                        format!("{path}.{k}")
                    };
                    (Some(p), false)
                }
                Some(Frame::Seq { path, next }) => {
                    let p = format!("{path}[{next}]");
                    *next += 1;
                    (Some(p), false)
                }
            }
        }
    }
    impl MarkedEventReceiver for Locator {
        fn on_event(&mut self, ev: Event, mark: Marker) {
            let at = (mark.line(), mark.col() + 1);
            match ev {
                Event::Scalar(value, ..) => match self.value_path() {
                    (_, true) => {
                        if let Some(Frame::Map { path, key }) = self.stack.last_mut() {
                            let p = if path.is_empty() {
                                value.clone()
                            } else {
                                format!("{path}.{value}")
                            };
                            self.found.entry(p).or_insert(at);
                            *key = Some(value);
                        }
                    }
                    (Some(p), false) => {
                        self.found.entry(p).or_insert(at);
                    }
                    (None, false) => {}
                },
                Event::Alias(_) => {
                    self.value_path();
                }
                Event::MappingStart(..) => {
                    let path = self.value_path().0.unwrap_or_default();
                    self.found.entry(path.clone()).or_insert(at);
                    self.stack.push(Frame::Map { path, key: None });
                }
                Event::SequenceStart(..) => {
                    let path = self.value_path().0.unwrap_or_default();
                    self.found.entry(path.clone()).or_insert(at);
                    self.stack.push(Frame::Seq { path, next: 0 });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    self.stack.pop();
                }
                _ => {}
            }
        }
    }
    let mut locator = Locator::default();
    Parser::new_from_str(text)
        .load(&mut locator, false)
        .map_err(|e| {
            let m = e.marker();
            (m.line(), m.col() + 1, e.info().to_owned())
        })?;
    Ok(locator.found)
}

/// The JSON Schema of the mesh file (`docs/mesh.schema.json`), for editors.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(MeshSpec);
    let mut out = serde_json::to_string_pretty(&schema).unwrap_or_default();
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<MeshFile, FileError> {
        MeshFile::parse(Path::new("mesh.yaml"), text)
    }

    #[test]
    fn the_reference_validates_and_round_trips() {
        let spec = MeshSpec::reference();
        spec.validate().unwrap();
        let yaml = serde_yaml::to_string(&spec).unwrap();
        assert_eq!(parse(&yaml).unwrap().spec, spec);
    }

    /// The built-in document's policy is the mesh crate's reference model, which the filters'
    /// own tests use.
    #[test]
    fn the_reference_is_the_models_reference() {
        assert_eq!(
            MeshSpec::reference().mesh("shop").unwrap(),
            Mesh::reference("shop").unwrap()
        );
    }

    #[test]
    fn the_image_registry_runs_the_reference_services_unless_a_flag_names_their_image() {
        let mut spec = MeshSpec::reference();
        spec.apply(&Overrides {
            images: vec![("--user-image".into(), "user-service".into(), "u:7".into())],
            image_registry: Some(ImageRegistry {
                repository: "oci://r.example/mg/".into(),
                tag: "0.2.0".into(),
            }),
            ..Overrides::default()
        })
        .unwrap();
        let image = |name: &str| spec.service(name).unwrap().image.clone();
        assert_eq!(image("user-service"), "u:7");
        assert_eq!(image("order-service"), "r.example/mg/order-service:0.2.0");
        assert_eq!(
            image("payment-service"),
            "r.example/mg/payment-service:0.2.0"
        );

        let mut other = MeshSpec::reference();
        for s in &mut other.services {
            s.name = format!("x-{}", s.name);
        }
        let e = other
            .apply(&Overrides {
                image_registry: Some(ImageRegistry::default()),
                ..Overrides::default()
            })
            .unwrap_err();
        assert_eq!(e.flag, "--image-registry");
    }

    #[test]
    fn quantities() {
        for ok in ["250m", "1", "0.5", "128Mi", "1Gi", "2"] {
            assert!(check_quantity(ok).is_ok(), "{ok}");
        }
        for bad in ["", "m", "1.", "1e3", "12 Mi", "1Gb", "-1"] {
            assert!(check_quantity(bad).is_err(), "{bad}");
        }
    }
}
