//! Could a pod run on a node? The scheduler's node checks that matter to meshguard: the node
//! selector, required node affinity, taints and tolerations, and extended resources such as
//! `nvidia.com/gpu`. CPU and memory are left out: they depend on what else runs there.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{
    Node, NodeSelectorRequirement, NodeSelectorTerm, PodSpec, Taint, Toleration,
};

/// Prefix of the taints the node lifecycle controller sets from node conditions.
const CONDITION_TAINT_PREFIX: &str = "node.kubernetes.io/";

/// Why a node cannot run a pod.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Misfit {
    /// The node is cordoned.
    Cordoned,
    /// A `nodeSelector` label is missing or differs.
    NodeSelector,
    /// No term of the required node affinity matches.
    NodeAffinity,
    /// A `NoSchedule`/`NoExecute` taint the pod does not tolerate.
    Taint(String),
    /// Not enough of an extended resource (e.g. `nvidia.com/gpu`) allocatable.
    Resource(String),
}

impl fmt::Display for Misfit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Misfit::Cordoned => f.write_str("cordoned"),
            Misfit::NodeSelector => f.write_str("do not match its nodeSelector"),
            Misfit::NodeAffinity => f.write_str("do not match its node affinity"),
            Misfit::Taint(t) => write!(f, "have taint {t} it does not tolerate"),
            Misfit::Resource(r) => write!(f, "have no allocatable {r} (or too little)"),
        }
    }
}

/// The first reason `node` cannot run a pod with `spec`, or `None` if it can.
pub fn misfit(node: &Node, spec: &PodSpec) -> Option<Misfit> {
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let name = node.metadata.name.as_deref().unwrap_or_default();
    if node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
    {
        return Some(Misfit::Cordoned);
    }
    if let Some(selector) = &spec.node_selector {
        if selector.iter().any(|(k, v)| labels.get(k) != Some(v)) {
            return Some(Misfit::NodeSelector);
        }
    }
    let terms = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|s| s.node_selector_terms.as_slice())
        .unwrap_or_default();
    if !terms.is_empty() && !terms.iter().any(|t| term_matches(t, labels, name)) {
        return Some(Misfit::NodeAffinity);
    }
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    for taint in node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
    {
        // Condition taints (`node.kubernetes.io/not-ready`, `.../memory-pressure`, ...) describe
        // the node's health right now, not which pods belong there; cordoning is checked above.
        let condition = taint.key.starts_with(CONDITION_TAINT_PREFIX);
        let blocking = !condition && matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute");
        if blocking && !tolerations.iter().any(|t| tolerates(t, taint)) {
            let value = taint
                .value
                .as_deref()
                .map(|v| format!("={v}"))
                .unwrap_or_default();
            return Some(Misfit::Taint(format!(
                "{}{value}:{}",
                taint.key, taint.effect
            )));
        }
    }
    let allocatable = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
    for (resource, wanted) in extended_requests(spec) {
        let have = allocatable
            .and_then(|a| a.get(&resource))
            .and_then(|q| q.0.parse::<u64>().ok())
            .unwrap_or(0);
        if have < wanted {
            return Some(Misfit::Resource(resource));
        }
    }
    None
}

/// Extended resources (names with a domain, e.g. `nvidia.com/gpu`) the pod's containers
/// request or limit, summed; integer quantities only, as extended resources must be.
pub fn extended_requests(spec: &PodSpec) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for c in &spec.containers {
        let Some(res) = &c.resources else { continue };
        // Limits imply equal requests for extended resources.
        let mut per_container: BTreeMap<String, u64> = BTreeMap::new();
        for map in [&res.limits, &res.requests].into_iter().flatten() {
            for (name, q) in map {
                if !is_extended(name) {
                    continue;
                }
                let n = q.0.parse::<u64>().unwrap_or(0);
                let e = per_container.entry(name.clone()).or_insert(0);
                *e = (*e).max(n);
            }
        }
        for (name, n) in per_container {
            *out.entry(name).or_insert(0) += n;
        }
    }
    out
}

fn is_extended(name: &str) -> bool {
    name.contains('/') && !name.starts_with("kubernetes.io/") && !name.starts_with("hugepages-")
}

fn term_matches(term: &NodeSelectorTerm, labels: &BTreeMap<String, String>, name: &str) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        // An empty term matches no objects.
        return false;
    }
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            let value = (r.key == "metadata.name").then_some(name);
            requirement_matches(r, value)
        })
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let as_int = |v: &str| v.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| values.iter().all(|x| x != v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(have), Some(bound)) = (
                value.and_then(as_int),
                values.first().and_then(|b| as_int(b)),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                have > bound
            } else {
                have < bound
            }
        }
        _ => false,
    }
}

fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = t.effect.as_deref().filter(|e| !e.is_empty()) {
        if effect != taint.effect {
            return false;
        }
    }
    let key = t.key.as_deref().unwrap_or_default();
    let exists = t.operator.as_deref() == Some("Exists");
    if key.is_empty() {
        return exists;
    }
    if key != taint.key {
        return false;
    }
    exists || t.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Affinity, Container, NodeAffinity, NodeSelector, NodeSpec, NodeStatus, ResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(labels: &[(&str, &str)], taints: &[(&str, &str)], gpus: Option<&str>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("n".into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: Some(
                    taints
                        .iter()
                        .map(|(k, v)| Taint {
                            key: (*k).to_owned(),
                            value: Some((*v).to_owned()),
                            effect: "NoSchedule".into(),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                allocatable: gpus
                    .map(|g| [("nvidia.com/gpu".to_owned(), Quantity(g.to_owned()))].into()),
                ..Default::default()
            }),
        }
    }

    fn pod(op: &str, gpu: bool) -> PodSpec {
        PodSpec {
            containers: vec![Container {
                name: "app".into(),
                resources: gpu.then(|| ResourceRequirements {
                    limits: Some([("nvidia.com/gpu".to_owned(), Quantity("1".into()))].into()),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            affinity: Some(Affinity {
                node_affinity: Some(NodeAffinity {
                    required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                        node_selector_terms: vec![NodeSelectorTerm {
                            match_expressions: Some(vec![NodeSelectorRequirement {
                                key: "gpu".into(),
                                operator: op.into(),
                                values: Some(vec!["true".into()]),
                            }]),
                            match_fields: None,
                        }],
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            tolerations: gpu.then(|| {
                vec![Toleration {
                    key: Some("nvidia.com/gpu".into()),
                    operator: Some("Exists".into()),
                    effect: Some("NoSchedule".into()),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        }
    }

    #[test]
    fn gpu_pod_needs_gpu_node() {
        let gpu_pod = pod("In", true);
        let gpu_node = node(
            &[("gpu", "true")],
            &[("nvidia.com/gpu", "present")],
            Some("1"),
        );
        assert_eq!(misfit(&gpu_node, &gpu_pod), None);
        let plain = node(&[], &[], None);
        assert_eq!(misfit(&plain, &gpu_pod), Some(Misfit::NodeAffinity));
        let no_gpus = node(&[("gpu", "true")], &[], Some("0"));
        assert_eq!(
            misfit(&no_gpus, &gpu_pod),
            Some(Misfit::Resource("nvidia.com/gpu".into()))
        );
    }

    #[test]
    fn other_pods_stay_off_gpu_nodes() {
        let web = pod("NotIn", false);
        let gpu_node = node(
            &[("gpu", "true")],
            &[("nvidia.com/gpu", "present")],
            Some("1"),
        );
        assert_eq!(misfit(&gpu_node, &web), Some(Misfit::NodeAffinity));
        assert_eq!(misfit(&node(&[], &[], None), &web), None);
        let not_ready = node(&[], &[("node.kubernetes.io/not-ready", "")], None);
        assert_eq!(misfit(&not_ready, &web), None);
        let tainted = node(&[], &[("dedicated", "batch")], None);
        assert_eq!(
            misfit(&tainted, &web),
            Some(Misfit::Taint("dedicated=batch:NoSchedule".into()))
        );
    }

    #[test]
    fn requirement_operators() {
        let r = |op: &str, vals: &[&str]| NodeSelectorRequirement {
            key: "k".into(),
            operator: op.into(),
            values: Some(vals.iter().map(|v| (*v).to_owned()).collect()),
        };
        assert!(requirement_matches(&r("Exists", &[]), Some("x")));
        assert!(!requirement_matches(&r("Exists", &[]), None));
        assert!(requirement_matches(&r("DoesNotExist", &[]), None));
        assert!(requirement_matches(&r("NotIn", &["a"]), None));
        assert!(requirement_matches(&r("Gt", &["3"]), Some("4")));
        assert!(!requirement_matches(&r("Lt", &["3"]), Some("4")));
        assert!(!requirement_matches(&r("Bogus", &[]), Some("4")));
    }
}
