//! Where each kind lives in the cluster's API: discovery, and `Api` handles for dynamic objects.

use std::collections::BTreeMap;

use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::{GroupVersion, Version};
use kube::discovery::{verbs, ApiCapabilities, ApiGroup, Discovery, Scope};
use kube::{Client, ResourceExt};

use crate::error::Error;
use crate::progress::ObjectRef;

/// The API groups the rendered kinds come from.
fn rendered_groups() -> Vec<&'static str> {
    let mut groups: Vec<&'static str> = meshguard_manifests::apply_order_kinds()
        .iter()
        .map(|k| k.group)
        .collect();
    groups.sort_unstable();
    groups.dedup();
    groups
}

/// A resolved kind: its API resource and whether it is namespaced.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub resource: ApiResource,
    pub namespaced: bool,
    pub capabilities: ApiCapabilities,
}

/// What the API server serves, from discovery.
#[derive(Debug, Clone, Default)]
pub struct Resources {
    /// Every served resource, at every served version.
    served: Vec<Resolved>,
    /// Groups whose discovery failed (an aggregated API whose backend is down, typically
    /// `metrics.k8s.io` without a healthy metrics-server).
    pub unavailable_groups: Vec<String>,
}

impl Resources {
    /// Discovers the groups of every kind meshguard renders.
    pub async fn for_rendered_kinds(client: &Client) -> Result<Self, Error> {
        let groups = rendered_groups();
        Self::run(client, Some(&groups)).await
    }

    /// Discovers every group the API server serves.
    pub async fn all(client: &Client) -> Result<Self, Error> {
        Self::run(client, None).await
    }

    /// Aggregated discovery (two requests) where the server offers it, else one request per
    /// group version. A group that cannot be discovered is an error only if meshguard renders
    /// kinds of it; otherwise it is recorded in `unavailable_groups`.
    async fn run(client: &Client, groups: Option<&[&str]>) -> Result<Self, Error> {
        let mut discovery = Discovery::new(client.clone());
        if let Some(g) = groups {
            discovery = discovery.filter(g);
        }
        if let Ok(d) = discovery.run_aggregated().await {
            let mut out = Self::default();
            for group in d.groups() {
                out.add_group(group);
            }
            return Ok(out);
        }
        Self::run_per_group(client, groups).await
    }

    async fn run_per_group(client: &Client, groups: Option<&[&str]>) -> Result<Self, Error> {
        let wanted = |name: &str| groups.is_none_or(|g| g.contains(&name));
        let mut versions: Vec<GroupVersion> = Vec::new();
        if wanted("") {
            let core = client
                .list_core_api_versions()
                .await
                .map_err(|e| Error::kube("discovering the core API", &e))?;
            versions.extend(core.versions.iter().map(|v| GroupVersion::gv("", v)));
        }
        let list = client
            .list_api_groups()
            .await
            .map_err(|e| Error::kube("discovering the API groups", &e))?;
        for g in list.groups.iter().filter(|g| wanted(&g.name)) {
            versions.extend(
                g.versions
                    .iter()
                    .map(|v| GroupVersion::gv(&g.name, &v.version)),
            );
        }
        let rendered = rendered_groups();
        let mut out = Self::default();
        for gv in versions {
            match kube::discovery::pinned_group(client, &gv).await {
                Ok(group) => out.add_group(&group),
                Err(_) if !rendered.contains(&gv.group.as_str()) => {
                    if !out.unavailable_groups.contains(&gv.group) {
                        out.unavailable_groups.push(gv.group.clone());
                    }
                }
                Err(e) => {
                    return Err(Error::kube(
                        format!("discovering the API group version {}", gv.api_version()),
                        &e,
                    ))
                }
            }
        }
        Ok(out)
    }

    fn add_group(&mut self, group: &ApiGroup) {
        for version in group.versions() {
            for (resource, capabilities) in group.versioned_resources(version) {
                self.served.push(Resolved {
                    namespaced: capabilities.scope == Scope::Namespaced,
                    resource,
                    capabilities,
                });
            }
        }
    }

    /// The resource serving `apiVersion`/`kind`, if served.
    pub fn resolve(&self, api_version: &str, kind: &str) -> Option<Resolved> {
        self.served
            .iter()
            .find(|r| r.resource.api_version == api_version && r.resource.kind == kind)
            .cloned()
    }

    /// The resource serving a rendered object, or [`Error::NotServed`] naming the missing CRD.
    pub fn resolve_object(&self, object: &DynamicObject) -> Result<Resolved, Error> {
        let (api_version, kind) = object
            .types
            .as_ref()
            .map(|t| (t.api_version.as_str(), t.kind.as_str()))
            .unwrap_or_default();
        self.resolve(api_version, kind)
            .ok_or_else(|| not_served(api_version, kind))
    }

    /// Every kind the server serves that can be listed and deleted, each once, at its most
    /// stable version; events excluded.
    pub fn deletable_kinds(&self) -> Vec<Resolved> {
        let mut best: BTreeMap<(String, String), &Resolved> = BTreeMap::new();
        for r in &self.served {
            if !(r.capabilities.supports_operation(verbs::LIST)
                && r.capabilities.supports_operation(verbs::DELETE))
                || r.resource.kind == "Event"
            {
                continue;
            }
            let key = (r.resource.group.clone(), r.resource.kind.clone());
            let better = best.get(&key).is_none_or(|old| {
                Version::parse(&r.resource.version).priority()
                    > Version::parse(&old.resource.version).priority()
            });
            if better {
                best.insert(key, r);
            }
        }
        best.into_values().cloned().collect()
    }
}

/// The error for a kind the server does not serve, with the fix.
pub fn not_served(api_version: &str, kind: &str) -> Error {
    let info = meshguard_manifests::kind_info(api_version, kind);
    let crd = info.and_then(|k| k.crd_name());
    let hint = match info {
        Some(k) if k.custom => crd_fix(k.group),
        _ => format!("upgrade the cluster or meshctl: this cluster does not serve {api_version}"),
    };
    Error::NotServed {
        kind: kind.to_owned(),
        api_version: api_version.to_owned(),
        crd,
        hint,
    }
}

/// How to get the CRDs of an API group.
pub fn crd_fix(group: &str) -> String {
    match group {
        g if g.ends_with("istio.io") => {
            "install Istio (e.g. `istioctl install --set profile=minimal`, \
             or `helm install istio-base istio/base -n istio-system --create-namespace` then \
             istiod); Istio 1.22 or later serves every kind meshguard uses"
                .to_owned()
        }
        "keda.sh" => {
            "install KEDA (`helm install keda kedacore/keda -n keda --create-namespace`)".to_owned()
        }
        "monitoring.coreos.com" => "install the Prometheus Operator (e.g. kube-prometheus-stack), \
             or drop --pod-monitor"
            .to_owned(),
        other => format!("install the operator that provides the {other} API group"),
    }
}

/// An `Api` for a resolved kind, in `namespace` when namespaced.
pub fn api(client: &Client, resolved: &Resolved, namespace: Option<&str>) -> Api<DynamicObject> {
    match (resolved.namespaced, namespace) {
        (true, Some(ns)) => Api::namespaced_with(client.clone(), ns, &resolved.resource),
        _ => Api::all_with(client.clone(), &resolved.resource),
    }
}

/// `Kind namespace/name` of an object.
pub fn object_ref(object: &DynamicObject) -> ObjectRef {
    ObjectRef {
        kind: object
            .types
            .as_ref()
            .map(|t| t.kind.clone())
            .unwrap_or_default(),
        namespace: object.namespace(),
        name: object.name_any(),
    }
}

/// `Kind namespace/name` of a listed object (list items may lack their `kind`).
pub fn object_ref_of(object: &DynamicObject, kind: &str) -> ObjectRef {
    ObjectRef {
        kind: kind.to_owned(),
        namespace: object.namespace(),
        name: object.name_any(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_include_core_and_crds() {
        let g = rendered_groups();
        for want in ["", "apps", "keda.sh", "extensions.istio.io"] {
            assert!(g.contains(&want), "{want:?} missing from {g:?}");
        }
    }

    #[test]
    fn not_served_names_the_crd() {
        let e = not_served("keda.sh/v1alpha1", "ScaledObject").to_string();
        assert!(e.contains("scaledobjects.keda.sh"), "{e}");
        assert!(e.contains("helm install keda"), "{e}");
    }
}
