//! `uninstall`: delete exactly the objects carrying meshctl's ownership labels for a namespace,
//! in reverse install order, then the namespace if nothing else lives in it.
//!
//! Objects are found by label selector across every kind the API server serves (not only the
//! kinds this version renders), so objects an older meshctl installed are removed too. Objects
//! without the labels are never deleted; the namespace is, only when it carries the labels and
//! holds nothing else (or with `--delete-namespace`).

use std::time::Duration;

use futures::stream::{self, StreamExt};
use kube::api::{DeleteParams, DynamicObject, ListParams};
use kube::{Client, ResourceExt};
use serde::Serialize;

use crate::client::Connection;
use crate::error::Error;
use crate::preflight::is_ours;
use crate::progress::{Event, ObjectRef, Outcome, Progress};
use crate::resources::{self, Resolved, Resources};
use crate::wait;

/// How many list requests run at once.
const LIST_CONCURRENCY: usize = 16;

/// Objects Kubernetes or Istio create in every namespace: never a reason to keep it. istiod's
/// namespace controller writes both of its ConfigMaps into every namespace
/// (`pilot/pkg/serviceregistry/kube/controller/namespacecontroller.go`; `istio-ca-crl` is
/// `PILOT_CRL_CONFIGMAP`'s default, `pilot/pkg/features/experimental.go`).
const NAMESPACE_DEFAULTS: [(&str, &str); 4] = [
    ("ConfigMap", "kube-root-ca.crt"),
    ("ConfigMap", "istio-ca-root-cert"),
    ("ConfigMap", "istio-ca-crl"),
    ("ServiceAccount", "default"),
];

/// How `uninstall` runs.
#[derive(Debug, Clone, Default)]
pub struct UninstallOptions {
    /// Server-side dry run: the API server checks each deletion, nothing is deleted.
    pub dry_run: bool,
    /// Delete the namespace (if meshctl's) even when it holds objects meshctl did not create.
    pub delete_namespace: bool,
    /// Wait this long for the deleted objects to be gone.
    pub wait: Option<Duration>,
}

/// What happened to the namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NamespaceOutcome {
    /// It was deleted (or would be, in a dry run).
    Deleted,
    /// It did not exist.
    Absent,
    /// It was already being deleted.
    Terminating,
    /// Kept: it does not carry meshctl's labels.
    NotOurs,
    /// Kept: it holds objects meshctl did not create.
    HoldsOthers(Vec<ObjectRef>),
    /// Kept: some kinds could not be listed, so it may hold objects meshctl did not create.
    Unchecked(Vec<String>),
}

/// What `uninstall` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UninstallReport {
    /// Deleted objects (or that would be, in a dry run), in deletion order, namespace excluded.
    pub deleted: Vec<ObjectRef>,
    pub namespace: NamespaceOutcome,
}

/// An object of ours found in the cluster.
struct Found {
    object: ObjectRef,
    api_version: String,
    resolved: Resolved,
    uid: Option<String>,
}

/// The label the endpoints controller puts on the Endpoints it makes for each Service, beside
/// the Service's own labels (k8s.io/kubernetes `pkg/controller/endpoint/endpoints_controller.go`,
/// `LabelManagedBy`).
const ENDPOINTS_MANAGED_BY: &str = "endpoints.kubernetes.io/managed-by";

/// Whether a controller made `object` from one of ours, so that it goes with its source and is
/// neither deleted nor listed on its own: children with an owner (ReplicaSets, Pods,
/// EndpointSlices) and the Endpoints that carry a Service's labels.
fn derived(object: &DynamicObject) -> bool {
    let owned = object
        .metadata
        .owner_references
        .as_ref()
        .is_some_and(|o| !o.is_empty());
    let managed_endpoints = object
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(ENDPOINTS_MANAGED_BY));
    owned || managed_endpoints
}

/// Deletes everything meshctl installed into `namespace`.
pub async fn uninstall(
    conn: &Connection,
    namespace: &str,
    opts: &UninstallOptions,
    progress: &mut dyn Progress,
) -> Result<UninstallReport, Error> {
    let version = conn.server_version().await?;
    progress.info(format!("connected to {} ({version})", conn.origin));
    let client = &conn.client;
    let resources = Resources::all(client).await?;
    let selector = meshguard_manifests::ownership_selector(namespace);
    let mut kinds = resources.deletable_kinds();
    kinds.sort_by_key(deletion_rank);

    // 1. Find our objects, every kind at once (a first list of a kind can be slow while the
    //    API server fills its cache), kept in deletion order.
    let searched: Vec<&Resolved> = kinds
        .iter()
        .filter(|k| !(k.resource.kind == "Namespace" && k.resource.group.is_empty()))
        .collect();
    let listed: Vec<Result<Vec<DynamicObject>, Error>> = stream::iter(searched.iter().copied())
        .map(|kind| list_ours(client, kind, namespace, &selector))
        .buffered(LIST_CONCURRENCY)
        .collect()
        .await;
    let mut found: Vec<Found> = Vec::new();
    for (kind, objects) in searched.into_iter().zip(listed) {
        for object in objects? {
            if derived(&object) {
                continue;
            }
            found.push(Found {
                object: resources::object_ref_of(&object, &kind.resource.kind),
                api_version: kind.resource.api_version.clone(),
                resolved: kind.clone(),
                uid: object.metadata.uid.clone(),
            });
        }
    }
    let ns_api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
    let live_ns = ns_api
        .get_opt(namespace)
        .await
        .map_err(|e| Error::kube(format!("reading namespace {namespace}"), &e))?;
    let namespace_found = live_ns
        .as_ref()
        .is_some_and(|ns| is_ours(ns.labels(), namespace));
    let namespace_uid = live_ns.as_ref().and_then(|ns| ns.metadata.uid.clone());
    if found.is_empty() && !namespace_found {
        progress.info(format!(
            "nothing to uninstall: no object carries the labels {selector}"
        ));
    }

    // 2. Decide about the namespace before deleting anything (the objects it would be kept
    //    for are not ours, so deleting ours does not change the answer).
    let namespace_outcome = match &live_ns {
        None => NamespaceOutcome::Absent,
        Some(_) if !namespace_found => NamespaceOutcome::NotOurs,
        Some(ns) if ns.metadata.deletion_timestamp.is_some() => NamespaceOutcome::Terminating,
        Some(_) if opts.delete_namespace => NamespaceOutcome::Deleted,
        Some(_) => {
            let (others, unlisted) = foreign_objects(client, &kinds, namespace).await;
            if !others.is_empty() {
                NamespaceOutcome::HoldsOthers(others)
            } else if !unlisted.is_empty() {
                NamespaceOutcome::Unchecked(unlisted)
            } else {
                NamespaceOutcome::Deleted
            }
        }
    };
    let delete_ns = namespace_outcome == NamespaceOutcome::Deleted;

    // 3. Delete ours, then the namespace.
    let mut params = DeleteParams::background();
    if opts.dry_run {
        params = params.dry_run();
    }
    let total = found.len() + usize::from(delete_ns);
    let mut report = UninstallReport {
        deleted: Vec::new(),
        namespace: namespace_outcome,
    };
    let mut gone_check: Vec<wait::Deleted> = Vec::new();
    for (i, f) in found.iter().enumerate() {
        let api = resources::api(client, &f.resolved, f.object.namespace.as_deref());
        let outcome = match api.delete(&f.object.name, &params).await {
            Ok(_) => Outcome::Deleted,
            Err(kube::Error::Api(s)) if s.code == 404 => Outcome::AlreadyGone,
            Err(e) => return Err(Error::kube(format!("deleting {}", f.object), &e)),
        };
        progress.report(Event::Step {
            index: i + 1,
            total,
            verb: "deleted",
            object: f.object.clone(),
            outcome,
            dry_run: opts.dry_run,
        });
        report.deleted.push(f.object.clone());
        gone_check.push(wait::Deleted {
            object: f.object.clone(),
            api_version: f.api_version.clone(),
            uid: f.uid.clone(),
        });
    }
    match &report.namespace {
        NamespaceOutcome::Deleted => {
            let object = ObjectRef {
                kind: "Namespace".to_owned(),
                namespace: None,
                name: namespace.to_owned(),
            };
            let outcome = match ns_api.delete(namespace, &params).await {
                Ok(_) => Outcome::Deleted,
                Err(kube::Error::Api(s)) if s.code == 404 => Outcome::AlreadyGone,
                Err(e) => return Err(Error::kube(format!("deleting namespace {namespace}"), &e)),
            };
            progress.report(Event::Step {
                index: total,
                total,
                verb: "deleted",
                object: object.clone(),
                outcome,
                dry_run: opts.dry_run,
            });
            gone_check.push(wait::Deleted {
                object,
                api_version: "v1".to_owned(),
                uid: namespace_uid.clone(),
            });
        }
        NamespaceOutcome::Absent => {}
        NamespaceOutcome::Terminating => {
            progress.info(format!("namespace {namespace} is already being deleted"))
        }
        NamespaceOutcome::NotOurs => progress.info(format!(
            "kept namespace {namespace}: meshctl did not create it (it lacks the labels \
             {selector})"
        )),
        NamespaceOutcome::HoldsOthers(others) => progress.warn(format!(
            "kept namespace {namespace}: it holds {} object(s) meshctl did not create: {}. \
             Delete them, or run `meshctl uninstall --delete-namespace` to delete the namespace \
             with everything in it",
            others.len(),
            others
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )),
        NamespaceOutcome::Unchecked(unlisted) => progress.warn(format!(
            "kept namespace {namespace}: could not list {} in it, so it may hold objects \
             meshctl did not create; pass --delete-namespace to delete it anyway",
            unlisted.join(", ")
        )),
    }
    if opts.dry_run {
        progress.info(format!(
            "server dry run: {} object(s) would be deleted; nothing was changed",
            report.deleted.len() + usize::from(report.namespace == NamespaceOutcome::Deleted)
        ));
    }
    if let (Some(timeout), false) = (opts.wait, opts.dry_run) {
        wait::objects_gone(client, &resources, &gone_check, timeout, progress).await?;
    }
    Ok(report)
}

/// Lists the objects of one kind carrying our labels: cluster-wide if allowed (objects of ours
/// may live outside the namespace), else in the namespace.
async fn list_ours(
    client: &Client,
    kind: &Resolved,
    namespace: &str,
    selector: &str,
) -> Result<Vec<DynamicObject>, Error> {
    let lp = ListParams::default().labels(selector);
    let what = format!("listing {} labelled {selector}", kind.resource.plural);
    match resources::api(client, kind, None).list(&lp).await {
        Ok(list) => Ok(list.items),
        Err(kube::Error::Api(s)) if s.code == 403 && kind.namespaced => {
            resources::api(client, kind, Some(namespace))
                .list(&lp)
                .await
                .map(|l| l.items)
                .map_err(|e| Error::kube(what, &e))
        }
        // A kind this version renders must be listable; others (aggregated APIs that are down,
        // say) cannot hold our objects unless an older meshctl put them there.
        Err(kube::Error::Api(s))
            if meshguard_manifests::kind_info(&kind.resource.api_version, &kind.resource.kind)
                .is_none()
                && (s.code == 403 || s.code == 404 || s.code == 405 || s.code >= 500) =>
        {
            Ok(Vec::new())
        }
        Err(e) => Err(Error::kube(what, &e)),
    }
}

/// Objects in the namespace that meshctl did not create: not labelled ours, not made by a
/// controller from another object ([`derived`]: they go with it), not one of the defaults every
/// namespace gets. Also returns the kinds that could not be listed.
async fn foreign_objects(
    client: &Client,
    kinds: &[Resolved],
    namespace: &str,
) -> (Vec<ObjectRef>, Vec<String>) {
    let namespaced: Vec<&Resolved> = kinds.iter().filter(|k| k.namespaced).collect();
    let listed: Vec<Result<Vec<DynamicObject>, kube::Error>> =
        stream::iter(namespaced.iter().copied())
            .map(|kind| async move {
                resources::api(client, kind, Some(namespace))
                    .list(&ListParams::default())
                    .await
                    .map(|l| l.items)
            })
            .buffered(LIST_CONCURRENCY)
            .collect()
            .await;
    let mut others = Vec::new();
    let mut unlisted = Vec::new();
    for (kind, result) in namespaced.into_iter().zip(listed) {
        let items = match result {
            Ok(items) => items,
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 405 => continue,
            Err(_) => {
                unlisted.push(kind.resource.plural.clone());
                continue;
            }
        };
        for o in items {
            let default = NAMESPACE_DEFAULTS
                .iter()
                .any(|(k, n)| *k == kind.resource.kind && *n == o.name_any());
            if !derived(&o) && !default && !is_ours(o.labels(), namespace) {
                others.push(resources::object_ref_of(&o, &kind.resource.kind));
            }
        }
    }
    (others, unlisted)
}

/// Deletion order: kinds this version does not render first (leftovers of older versions), then
/// the rendered kinds in reverse apply order (autoscalers and workloads before their policies),
/// the namespace last.
fn deletion_rank(kind: &Resolved) -> usize {
    let order = meshguard_manifests::apply_order_kinds();
    order
        .iter()
        .position(|k| k.group == kind.resource.group && k.kind == kind.resource.kind)
        .map_or(0, |pos| order.len() - pos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ApiResource;
    use kube::discovery::{ApiCapabilities, Scope};

    fn resolved(group: &str, kind: &str) -> Resolved {
        Resolved {
            resource: ApiResource {
                group: group.to_owned(),
                version: "v1".to_owned(),
                api_version: format!("{group}/v1"),
                kind: kind.to_owned(),
                plural: format!("{}s", kind.to_lowercase()),
            },
            namespaced: true,
            capabilities: ApiCapabilities {
                scope: Scope::Namespaced,
                subresources: Vec::new(),
                operations: Vec::new(),
            },
        }
    }

    #[test]
    fn what_controllers_made_is_left_to_them() {
        let object = |value: serde_json::Value| -> DynamicObject {
            serde_json::from_value(value).unwrap_or_else(|e| panic!("{e}"))
        };
        let ours = object(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "order-service", "labels": {"app.kubernetes.io/managed-by": "meshctl"}}
        }));
        let endpoints = object(serde_json::json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "order-service", "labels": {
                "app.kubernetes.io/managed-by": "meshctl",
                "endpoints.kubernetes.io/managed-by": "endpoint-controller"}}
        }));
        let replica_set = object(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "order-service-5d9", "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "Deployment", "name": "order-service",
                "uid": "0b1c"}]}
        }));
        assert!(!derived(&ours));
        assert!(derived(&endpoints));
        assert!(derived(&replica_set));
    }

    #[test]
    fn deletes_in_reverse_apply_order() {
        let mut kinds = [
            resolved("", "ServiceAccount"),
            resolved("apps", "Deployment"),
            resolved("keda.sh", "ScaledObject"),
            resolved("example.com", "Leftover"),
            resolved("", "Namespace"),
        ];
        kinds.sort_by_key(deletion_rank);
        let order: Vec<&str> = kinds.iter().map(|k| k.resource.kind.as_str()).collect();
        assert_eq!(
            order,
            [
                "Leftover",
                "ScaledObject",
                "Deployment",
                "ServiceAccount",
                "Namespace"
            ]
        );
    }
}
