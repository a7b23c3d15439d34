//! `install`: preflight, then server-side apply of every object in render order.
//!
//! Objects are applied with field manager [`FIELD_MANAGER`] and `force`: meshctl is the owner of
//! every field it renders, so a field someone changed by hand (`kubectl edit`, `kubectl set
//! image`) is taken back instead of failing the install with a conflict. An install therefore
//! always converges to what its flags say, and upgrades never get stuck on an old manual edit.
//! Fields meshctl does not render stay with their managers: the autoscaled Deployments leave
//! `replicas` to the HPA and KEDA. Preflight warns about existing objects meshctl did not create
//! before it takes them over.

use std::time::Duration;

use kube::api::{DynamicObject, Patch, PatchParams};
use kube::ResourceExt;
use meshguard_manifests::RenderOptions;
use serde::Serialize;

use crate::client::Connection;
use crate::error::Error;
use crate::preflight::{self, PreflightReport};
use crate::progress::{Event, ObjectRef, Outcome, Progress};
use crate::resources::{self, Resources};
use crate::wait;

/// The field manager of every meshctl apply.
pub const FIELD_MANAGER: &str = "meshctl";

/// How `install` runs.
#[derive(Debug, Clone, Default)]
pub struct InstallOptions {
    /// Server-side dry run: validate and admit, store nothing.
    pub dry_run: bool,
    /// Skip the cluster checks (the module URL check still runs).
    pub skip_preflight: bool,
    /// Wait this long for the Deployments to become available.
    pub wait: Option<Duration>,
    /// The mesh file the objects come from: preflight's findings about a service point at it.
    pub mesh_file: Option<meshguard_manifests::MeshFile>,
}

/// One applied object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Applied {
    pub object: ObjectRef,
    pub outcome: Outcome,
    /// The object's resourceVersion after the apply (before it, for an unchanged object).
    pub resource_version: Option<String>,
}

/// What `install` did.
#[derive(Debug, Clone, Default)]
pub struct InstallReport {
    /// The preflight report, unless skipped.
    pub preflight: Option<PreflightReport>,
    /// Every object, in apply order.
    pub applied: Vec<Applied>,
}

impl InstallReport {
    /// How many objects had each outcome.
    pub fn count(&self, outcome: Outcome) -> usize {
        self.applied.iter().filter(|a| a.outcome == outcome).count()
    }
}

/// Installs `objects` (rendered from `opts`): the module URL check, preflight unless skipped,
/// server-side apply of each object in order, then the optional wait.
pub async fn install(
    conn: &Connection,
    objects: &[DynamicObject],
    opts: &RenderOptions,
    install: &InstallOptions,
    progress: &mut dyn Progress,
) -> Result<InstallReport, Error> {
    let local = preflight::check_local(opts);
    if !local.is_ok() {
        return Err(local.refusal());
    }
    let mut report = InstallReport::default();
    if install.skip_preflight {
        let version = conn.server_version().await?;
        progress.info(format!(
            "connected to {} ({version}); preflight skipped",
            conn.origin
        ));
    } else {
        progress.info(format!("preflight: checking {}", conn.origin));
        let mut checks = preflight::run(conn, objects, opts).await?;
        if let Some(file) = &install.mesh_file {
            checks.locate(file);
        }
        for w in checks.warnings() {
            progress.warn(format!("{}\n  fix: {}", w.problem, w.fix));
        }
        if !checks.is_ok() {
            return Err(checks.refusal());
        }
        progress.info(format!(
            "preflight: {} check(s) passed, {} warning(s)",
            checks.passed.len(),
            checks.warnings().count()
        ));
        report.preflight = Some(checks);
    }
    let resources = Resources::for_rendered_kinds(&conn.client).await?;
    report.applied = apply_all(conn, &resources, objects, install.dry_run, progress).await?;
    let summary = |o| report.count(o);
    progress.info(format!(
        "{} object(s): {} created, {} configured, {} unchanged{}",
        report.applied.len(),
        summary(Outcome::Created),
        summary(Outcome::Configured),
        summary(Outcome::Unchanged),
        if install.dry_run {
            " (server dry run: nothing was changed)"
        } else {
            ""
        }
    ));
    if let (Some(timeout), false) = (install.wait, install.dry_run) {
        let deployments: Vec<ObjectRef> = report
            .applied
            .iter()
            .filter(|a| a.object.kind == "Deployment")
            .map(|a| a.object.clone())
            .collect();
        wait::deployments_available(&conn.client, &deployments, timeout, progress).await?;
    }
    Ok(report)
}

/// Server-side applies each object in order and reports each outcome.
pub async fn apply_all(
    conn: &Connection,
    resources: &Resources,
    objects: &[DynamicObject],
    dry_run: bool,
    progress: &mut dyn Progress,
) -> Result<Vec<Applied>, Error> {
    let client = &conn.client;
    // Resolve every kind first: a missing CRD fails before anything is applied.
    let resolved = objects
        .iter()
        .map(|o| resources.resolve_object(o))
        .collect::<Result<Vec<_>, _>>()?;
    let mut params = PatchParams::apply(FIELD_MANAGER).force();
    if dry_run {
        params = params.dry_run();
    }
    let mut missing_namespaces: Vec<String> = Vec::new();
    let total = objects.len();
    let mut out = Vec::with_capacity(total);
    for (i, (object, resolved)) in objects.iter().zip(&resolved).enumerate() {
        let object_ref = resources::object_ref(object);
        let namespace = object.namespace();
        let name = object.name_any();
        let outcome;
        let mut resource_version = None;
        if dry_run
            && resolved.namespaced
            && namespace
                .as_ref()
                .is_some_and(|ns| missing_namespaces.contains(ns))
        {
            // The API server refuses objects in a namespace that does not exist, even in a
            // dry run; the real install creates the namespace first.
            outcome = Outcome::NotValidated;
        } else {
            let api = resources::api(client, resolved, namespace.as_deref());
            let before = api
                .get_opt(&name)
                .await
                .map_err(|e| Error::kube(format!("reading {object_ref}"), &e))?;
            let after = api
                .patch(&name, &params, &Patch::Apply(object))
                .await
                .map_err(|e| Error::kube(format!("applying {object_ref}"), &e))?;
            outcome = match &before {
                None => Outcome::Created,
                Some(b) if dry_run => {
                    if same_content(b, &after) {
                        Outcome::Unchanged
                    } else {
                        Outcome::Configured
                    }
                }
                Some(b) if b.resource_version() == after.resource_version() => Outcome::Unchanged,
                Some(_) => Outcome::Configured,
            };
            resource_version = after.resource_version();
            if dry_run && before.is_none() && object_ref.kind == "Namespace" {
                missing_namespaces.push(name.clone());
            }
        }
        progress.report(Event::Step {
            index: i + 1,
            total,
            verb: "applied",
            object: object_ref.clone(),
            outcome,
            dry_run,
        });
        out.push(Applied {
            object: object_ref,
            outcome,
            resource_version,
        });
    }
    if !missing_namespaces.is_empty() {
        progress.warn(format!(
            "namespace {} does not exist yet, so the API server could not validate the objects \
             in it (it refuses them even in a dry run); they are marked \"not validated\"",
            missing_namespaces.join(", ")
        ));
    }
    Ok(out)
}

/// Whether a server-side dry-run apply left the object as it was (a dry run does not bump the
/// resourceVersion, so the content is compared, without the bookkeeping fields).
fn same_content(before: &DynamicObject, after: &DynamicObject) -> bool {
    let strip = |o: &DynamicObject| {
        let mut v = serde_json::to_value(o).unwrap_or_default();
        if let Some(meta) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            meta.remove("managedFields");
            meta.remove("resourceVersion");
        }
        v
    };
    strip(before) == strip(after)
}
