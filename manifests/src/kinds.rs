//! The API resources meshguard renders: where each kind lives in the API, in apply order.

use std::collections::BTreeSet;

use kube::api::{ApiResource, DynamicObject};

/// One kind meshguard renders and where it lives in the Kubernetes API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KindInfo {
    /// API group; empty for the core group.
    pub group: &'static str,
    /// API version within the group.
    pub version: &'static str,
    /// Kind, e.g. `WasmPlugin`.
    pub kind: &'static str,
    /// Plural resource name, e.g. `wasmplugins`.
    pub plural: &'static str,
    /// Whether objects live in a namespace (all but `Namespace`).
    pub namespaced: bool,
    /// Whether the kind comes from a CustomResourceDefinition (Istio, KEDA, Prometheus Operator)
    /// rather than Kubernetes itself.
    pub custom: bool,
}

impl KindInfo {
    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The `ApiResource` for `kube::Api::<DynamicObject>::{all_with, namespaced_with}`.
    pub fn api_resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.to_owned(),
            version: self.version.to_owned(),
            api_version: self.api_version(),
            kind: self.kind.to_owned(),
            plural: self.plural.to_owned(),
        }
    }

    /// The CustomResourceDefinition's name (`<plural>.<group>`) for a custom kind.
    pub fn crd_name(&self) -> Option<String> {
        self.custom
            .then(|| format!("{}.{}", self.plural, self.group))
    }
}

const fn kind(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    custom: bool,
) -> KindInfo {
    KindInfo {
        group,
        version,
        kind,
        plural,
        namespaced,
        custom,
    }
}

/// Every kind, in the order [`crate::render`] emits (and `install` applies) them.
const KINDS: [KindInfo; 12] = [
    kind("", "v1", "Namespace", "namespaces", false, false),
    kind("", "v1", "ServiceAccount", "serviceaccounts", true, false),
    kind(
        "security.istio.io",
        "v1",
        "PeerAuthentication",
        "peerauthentications",
        true,
        true,
    ),
    kind(
        "networking.k8s.io",
        "v1",
        "NetworkPolicy",
        "networkpolicies",
        true,
        false,
    ),
    kind("", "v1", "ConfigMap", "configmaps", true, false),
    kind(
        "extensions.istio.io",
        "v1alpha1",
        "WasmPlugin",
        "wasmplugins",
        true,
        true,
    ),
    kind("", "v1", "Service", "services", true, false),
    kind("apps", "v1", "Deployment", "deployments", true, false),
    kind(
        "policy",
        "v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        true,
        false,
    ),
    kind(
        "autoscaling",
        "v2",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        true,
        false,
    ),
    kind(
        "keda.sh",
        "v1alpha1",
        "ScaledObject",
        "scaledobjects",
        true,
        true,
    ),
    kind(
        "monitoring.coreos.com",
        "v1",
        "PodMonitor",
        "podmonitors",
        true,
        true,
    ),
];

/// Every kind [`crate::render`] can emit, in apply order. Delete in reverse order to uninstall
/// (workloads and autoscalers first, the namespace last).
pub fn apply_order_kinds() -> &'static [KindInfo] {
    &KINDS
}

/// The kind with this `apiVersion` and `kind`, if meshguard renders it.
pub fn kind_info(api_version: &str, kind: &str) -> Option<&'static KindInfo> {
    KINDS
        .iter()
        .find(|k| k.kind == kind && k.api_version() == api_version)
}

/// The kind of a rendered object, if meshguard renders it.
pub fn kind_of(object: &DynamicObject) -> Option<&'static KindInfo> {
    let types = object.types.as_ref()?;
    kind_info(&types.api_version, &types.kind)
}

/// The CustomResourceDefinitions (`<plural>.<group>`, e.g. `wasmplugins.extensions.istio.io`)
/// that must exist before `objects` can be applied. Objects of kinds meshguard does not know are
/// ignored.
pub fn required_crds(objects: &[DynamicObject]) -> BTreeSet<String> {
    objects
        .iter()
        .filter_map(kind_of)
        .filter_map(KindInfo::crd_name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        let wasm = kind_info("extensions.istio.io/v1alpha1", "WasmPlugin").unwrap();
        assert_eq!(
            wasm.crd_name().as_deref(),
            Some("wasmplugins.extensions.istio.io")
        );
        assert_eq!(kind_info("v1", "Namespace").unwrap().api_version(), "v1");
        assert!(!kind_info("v1", "Namespace").unwrap().namespaced);
        assert!(kind_info("v1", "Pod").is_none());
        assert!(kind_info("apps/v1", "Service").is_none());
        let ar = kind_info("autoscaling/v2", "HorizontalPodAutoscaler")
            .unwrap()
            .api_resource();
        assert_eq!(ar.api_version, "autoscaling/v2");
        assert_eq!(ar.plural, "horizontalpodautoscalers");
    }
}
