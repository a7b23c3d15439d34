//! Preflight: does the cluster have what the objects need? Every problem is collected into a
//! typed [`PreflightReport`], each with how to fix it, so `install` can report them all at once.
//!
//! The checks are a table, [`CHECKS`], in the shape of linkerd's `healthcheck` package
//! (linkerd2 `pkg/healthcheck/healthcheck.go`, `Checker`: a description, a hint anchor into the
//! docs, `fatal`, `warning`, a retry deadline and the check function). Each [`Checker`] says
//! what it checks, how bad its failure is at worst, whether it stops the checks after it, how
//! long it is retried while what it found can still change by itself (a CRD not yet
//! established, the metrics API not yet available), and where `docs/meshctl.md` explains the
//! fix; each finding carries that anchor.

use std::time::Duration;

use futures::future::LocalBoxFuture;

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{Api, DynamicObject, ListParams};
use kube::ResourceExt;
use meshguard_manifests::{kind_of, ownership_labels, required_crds, PodSecurity, RenderOptions};
use serde::Serialize;

use crate::client::Connection;
use crate::error::{describe_kube_error, Error};
use crate::resources::{self, crd_fix, Resources};
use crate::scheduling::{extended_requests, misfit, Misfit};

/// The APIService the HorizontalPodAutoscaler reads CPU from (metrics-server).
pub const METRICS_APISERVICE: &str = "v1beta1.metrics.k8s.io";
/// Label selecting istiod's Deployment (any revision, any namespace).
pub const ISTIOD_SELECTOR: &str = "app=istiod";

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The install would not work: `install` refuses to start.
    Error,
    /// Worth knowing; does not stop `install`.
    Warning,
}

/// Which check a finding comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// The API server answers.
    ApiServer,
    /// A Wasm module URL is usable (not the placeholder).
    ModuleUrl,
    /// A CustomResourceDefinition the objects need is installed, established and serves the
    /// rendered version.
    Crd,
    /// The resource metrics API (metrics-server) is registered, for the HPA.
    MetricsApi,
    /// Some node can run a Deployment's pods (a GPU node for a service with GPUs).
    Scheduling,
    /// istiod runs.
    Istiod,
    /// Istio's CNI plugin is installed, so the namespace can enforce Pod Security `restricted`.
    IstioCni,
    /// The namespace is usable.
    Namespace,
    /// An object of the same name exists that meshctl did not create.
    Ownership,
}

/// One problem, with how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub check: Check,
    pub severity: Severity,
    /// What it is about: a CRD name, a flag, a Deployment, ...
    pub subject: String,
    pub problem: String,
    pub fix: String,
    /// Where the documentation explains the check and its fix (`docs/meshctl.md#…`).
    pub docs: String,
    /// What was found can change by itself (a CRD not yet established): the check's
    /// [`Checker::retry`] runs it again.
    #[serde(skip)]
    pub transient: bool,
    /// The finding points at a field of the mesh file ([`PreflightReport::locate`]): the input
    /// asks for what the cluster cannot give, and the file is where it is fixed.
    #[serde(skip)]
    pub in_mesh_file: bool,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "  {label}: {}\n    fix: {}", self.problem, self.fix)?;
        if !self.docs.is_empty() {
            write!(f, "\n    see: {}", self.docs)?;
        }
        Ok(())
    }
}

/// What the cluster checks look at.
pub struct Context<'a> {
    pub conn: &'a Connection,
    pub objects: &'a [DynamicObject],
    pub opts: &'a RenderOptions,
}

/// A check's function: adds what it finds (and what passed) to the report.
pub type RunCheck = for<'a> fn(&'a Context<'a>, &'a mut PreflightReport) -> LocalBoxFuture<'a, ()>;

/// One row of the table.
pub struct Checker {
    pub check: Check,
    /// What it checks, in a few words.
    pub description: &'static str,
    /// The worst a failure of it is: `Error` refuses the install, `Warning` does not.
    pub severity: Severity,
    /// An error here stops the checks after it (they cannot work without it).
    pub fatal: bool,
    /// How long it is run again while all it finds is transient.
    pub retry: Option<Duration>,
    /// The heading in `docs/meshctl.md` that explains it and its fixes.
    pub anchor: &'static str,
    /// Whether it applies to these objects (the metrics API only with an HPA).
    pub applies: fn(&Context<'_>) -> bool,
    pub run: RunCheck,
}

fn always(_: &Context<'_>) -> bool {
    true
}

fn with_hpa(c: &Context<'_>) -> bool {
    c.objects
        .iter()
        .any(|o| kind_name(o) == "HorizontalPodAutoscaler")
}

/// How often a retried check runs again.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// The cluster checks, in the order they run. (The module URL check, [`check_local`], runs
/// before any of them and needs no cluster.)
pub static CHECKS: [Checker; 8] = [
    Checker {
        check: Check::ApiServer,
        description: "the API server answers",
        severity: Severity::Error,
        fatal: true,
        retry: None,
        anchor: "check-api-server",
        applies: always,
        run: |c, r| Box::pin(check_api_server(c.conn, r)),
    },
    Checker {
        check: Check::Namespace,
        description: "the namespace is usable",
        severity: Severity::Error,
        fatal: false,
        retry: None,
        anchor: "check-namespace",
        applies: always,
        run: |c, r| Box::pin(check_namespace(&c.conn.client, &c.opts.namespace, r)),
    },
    Checker {
        check: Check::Crd,
        description: "the CRDs the objects need are established and serve their versions",
        severity: Severity::Error,
        fatal: false,
        // The API server establishes a new CRD within a second or two.
        retry: Some(Duration::from_secs(5)),
        anchor: "check-crds",
        applies: always,
        run: |c, r| Box::pin(check_crds(&c.conn.client, c.objects, r)),
    },
    Checker {
        check: Check::MetricsApi,
        description: "the resource metrics API serves CPU for the HPAs",
        severity: Severity::Error,
        fatal: false,
        // metrics-server takes a minute or more to become available, longer than a preflight
        // should wait; what it reports then is a warning.
        retry: None,
        anchor: "check-metrics-api",
        applies: with_hpa,
        run: |c, r| Box::pin(check_metrics_api(&c.conn.client, r)),
    },
    Checker {
        check: Check::Scheduling,
        description: "some node can run each Deployment's pods",
        severity: Severity::Error,
        fatal: false,
        retry: None,
        anchor: "check-scheduling",
        applies: always,
        run: |c, r| Box::pin(check_scheduling(&c.conn.client, c.objects, c.opts, r)),
    },
    Checker {
        check: Check::Istiod,
        description: "istiod runs",
        severity: Severity::Warning,
        fatal: false,
        retry: None,
        anchor: "check-istiod",
        applies: always,
        run: |c, r| Box::pin(check_istiod(&c.conn.client, r)),
    },
    Checker {
        check: Check::IstioCni,
        description: "Istio's injection admits the namespace's Pod Security level",
        severity: Severity::Error,
        fatal: false,
        retry: None,
        anchor: "check-istio-cni",
        applies: always,
        run: |c, r| {
            Box::pin(async move {
                let cni = detect_istio_cni(&c.conn.client).await;
                check_istio_cni(&cni, c.opts, r);
            })
        },
    },
    Checker {
        check: Check::Ownership,
        description: "no object meshctl would apply belongs to someone else",
        severity: Severity::Warning,
        fatal: false,
        retry: None,
        anchor: "check-ownership",
        applies: always,
        run: |c, r| {
            Box::pin(check_ownership(
                &c.conn.client,
                c.objects,
                &c.opts.namespace,
                r,
            ))
        },
    },
];

/// Runs `check` until it finds nothing, finds something not transient, or `retry` has passed.
async fn run_retried<F, Fut>(mut check: F, retry: Option<Duration>) -> PreflightReport
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = PreflightReport>,
{
    let deadline = retry.map(|r| tokio::time::Instant::now() + r);
    loop {
        let found = check().await;
        let transient = !found.findings.is_empty() && found.findings.iter().all(|f| f.transient);
        match deadline {
            Some(d) if transient && tokio::time::Instant::now() + RETRY_INTERVAL < d => {
                tokio::time::sleep(RETRY_INTERVAL).await;
            }
            _ => return found,
        }
    }
}

/// Everything preflight found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PreflightReport {
    /// Problems, errors first.
    pub findings: Vec<Finding>,
    /// Checks that passed, one line each.
    pub passed: Vec<String>,
}

impl PreflightReport {
    /// Findings that stop an install.
    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
    }

    /// Findings that do not.
    pub fn warnings(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Warning)
    }

    /// No errors (warnings allowed).
    pub fn is_ok(&self) -> bool {
        self.errors().next().is_none()
    }

    /// The finding of `check` about `subject`, if any.
    pub fn find(&self, check: Check, subject: &str) -> Option<&Finding> {
        self.findings
            .iter()
            .find(|f| f.check == check && f.subject == subject)
    }

    /// The errors, one block each, with their fixes.
    pub fn render_problems(&self) -> String {
        self.errors()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The error that refuses an install with these findings.
    pub fn refusal(&self) -> Error {
        Error::Preflight {
            count: self.errors().count(),
            problems: self.render_problems(),
            in_mesh_file: self.only_mesh_file_errors(),
        }
    }

    /// Every error points at a field of the mesh file: bad input (exit status 2), not a cluster
    /// to fix.
    pub fn only_mesh_file_errors(&self) -> bool {
        let mut errors = self.errors().peekable();
        errors.peek().is_some() && errors.all(|f| f.in_mesh_file)
    }

    /// Points each finding about a service's pods at where the mesh file places them
    /// (`mesh.yaml:31:5: services[3].placement: ...`).
    pub fn locate(&mut self, file: &meshguard_manifests::MeshFile) {
        for f in &mut self.findings {
            if f.check != Check::Scheduling {
                continue;
            }
            let Some(i) = file.spec.services.iter().position(|s| s.name == f.subject) else {
                continue;
            };
            let field = format!("services[{i}].placement");
            let (line, column) = file.position(&field);
            f.problem = format!(
                "{}:{line}:{column}: {field}: {}",
                file.path.display(),
                f.problem
            );
            f.in_mesh_file = true;
        }
    }

    fn push(
        &mut self,
        check: Check,
        severity: Severity,
        subject: &str,
        problem: String,
        fix: String,
    ) {
        self.findings.push(Finding {
            check,
            severity,
            subject: subject.to_owned(),
            problem,
            fix,
            docs: String::new(),
            transient: false,
            in_mesh_file: false,
        });
    }

    /// Marks the finding just added as one that can change by itself.
    fn transient(&mut self) {
        if let Some(f) = self.findings.last_mut() {
            f.transient = true;
        }
    }

    fn error(&mut self, check: Check, subject: &str, problem: String, fix: String) {
        self.push(check, Severity::Error, subject, problem, fix);
    }

    fn warning(&mut self, check: Check, subject: &str, problem: String, fix: String) {
        self.push(check, Severity::Warning, subject, problem, fix);
    }

    fn sort(&mut self) {
        self.findings.sort_by_key(|a| (a.severity, a.check));
    }
}

impl fmt::Display for PreflightReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.passed {
            writeln!(f, "  ok: {p}")?;
        }
        for finding in &self.findings {
            writeln!(f, "{finding}")?;
        }
        let (e, w) = (self.errors().count(), self.warnings().count());
        write!(f, "preflight: {e} error(s), {w} warning(s)")
    }
}

/// Whether a module URL is the placeholder `RenderOptions::new` ships (a host under `.invalid`,
/// which never resolves).
pub fn is_placeholder_module(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split(['/', ':']).next().unwrap_or_default();
    host == "invalid" || host.ends_with(".invalid")
}

/// The checks that need no cluster: the Wasm module URLs.
pub fn check_local(opts: &RenderOptions) -> PreflightReport {
    let mut report = PreflightReport::default();
    for (flag, url, package, file, consequence) in [
        (
            "--authz-module",
            &opts.authz_module_url,
            "meshguard-authz",
            "meshguard_authz.wasm",
            "the authorization filter fails closed, so every request to the services would be \
             rejected",
        ),
        (
            "--metrics-module",
            &opts.metrics_module_url,
            "meshguard-metrics",
            "meshguard_metrics.wasm",
            "the metrics filter fails open: no request metrics, so Grafana and the request-rate \
             scaling see nothing",
        ),
    ] {
        if is_placeholder_module(url) {
            report.error(
                Check::ModuleUrl,
                flag,
                format!(
                    "{flag} is the placeholder `{url}`: sidecars cannot fetch it, and \
                     {consequence}"
                ),
                format!(
                    "publish the filters and pass their URLs: build them (`{}`, or `scripts/demo.sh`), \
                     then `meshctl publish --repository REGISTRY/PATH`, which pushes \
                     {}/{file} as {package} and prints the \
                     `meshctl install {flag} oci://REGISTRY/PATH/{package}:TAG {flag}-sha256 \
                     …` flags; or serve it over https and pass {flag} https://... with \
                     {flag}-sha256. See docs/meshctl.md, \"Publishing the filters\", and \
                     docs/deploy-gke.md section 7",
                    crate::publish::BUILD_FILTERS,
                    crate::publish::DEFAULT_FILTERS_DIR
                ),
            );
        } else {
            report.passed.push(format!("{flag} {url}"));
        }
    }
    report
}

/// Every check: the local ones, then the table's, each where it applies. Fails only when a
/// check cannot run at all for a reason that is not itself a finding.
pub async fn run(
    conn: &Connection,
    objects: &[DynamicObject],
    opts: &RenderOptions,
) -> Result<PreflightReport, Error> {
    let mut report = check_local(opts);
    let ctx = Context {
        conn,
        objects,
        opts,
    };
    for checker in &CHECKS {
        if !(checker.applies)(&ctx) {
            continue;
        }
        let found = run_retried(
            || async {
                let mut part = PreflightReport::default();
                (checker.run)(&ctx, &mut part).await;
                part
            },
            checker.retry,
        )
        .await;
        let stop = checker.fatal && !found.is_ok();
        report.passed.extend(found.passed);
        report
            .findings
            .extend(found.findings.into_iter().map(|mut f| {
                f.docs = format!("docs/meshctl.md#{}", checker.anchor);
                f
            }));
        if stop {
            break;
        }
    }
    report.sort();
    Ok(report)
}

async fn check_api_server(conn: &Connection, report: &mut PreflightReport) {
    match conn.server_version().await {
        Ok(version) => report.passed.push(format!(
            "API server {} answers ({version})",
            conn.origin.server
        )),
        Err(e) => report.error(
            Check::ApiServer,
            "api-server",
            format!("cannot reach the {}", conn.origin),
            e.to_string(),
        ),
    }
}

fn kind_name(o: &DynamicObject) -> &str {
    o.types
        .as_ref()
        .map(|t| t.kind.as_str())
        .unwrap_or_default()
}

async fn check_namespace(client: &kube::Client, namespace: &str, report: &mut PreflightReport) {
    let api: Api<Namespace> = Api::all(client.clone());
    match api.get_opt(namespace).await {
        Ok(None) => report
            .passed
            .push(format!("namespace {namespace} will be created")),
        Ok(Some(ns)) if ns.metadata.deletion_timestamp.is_some() => report.error(
            Check::Namespace,
            namespace,
            format!("namespace {namespace} is being deleted"),
            format!(
                "wait until it is gone (`kubectl wait --for=delete namespace/{namespace} \
                 --timeout=5m`), or install into another --namespace"
            ),
        ),
        Ok(Some(ns)) => {
            if is_ours(ns.labels(), namespace) {
                report
                    .passed
                    .push(format!("namespace {namespace} exists and is meshctl's"));
            } else {
                report.warning(
                    Check::Namespace,
                    namespace,
                    format!("namespace {namespace} exists and was not created by meshctl"),
                    "nothing to do if that is intended: install labels it as meshctl's, and \
                     uninstall keeps it as long as it holds objects meshctl did not create"
                        .to_owned(),
                );
            }
        }
        Err(e) => report.warning(
            Check::Namespace,
            namespace,
            format!(
                "cannot read namespace {namespace}: {}",
                describe_kube_error(&e)
            ),
            "grant the account `get` on namespaces".to_owned(),
        ),
    }
}

async fn check_crds(
    client: &kube::Client,
    objects: &[DynamicObject],
    report: &mut PreflightReport,
) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    // CRD name -> the versions the objects use.
    let mut wanted: BTreeMap<String, Vec<(&str, &str, &str)>> = BTreeMap::new();
    for name in required_crds(objects) {
        wanted.entry(name).or_default();
    }
    for o in objects {
        if let Some(k) = kind_of(o) {
            if let Some(crd) = k.crd_name() {
                let v = wanted.entry(crd).or_default();
                if !v.iter().any(|(_, ver, _)| *ver == k.version) {
                    v.push((k.kind, k.version, k.group));
                }
            }
        }
    }
    for (name, uses) in wanted {
        let group = name.split_once('.').map(|(_, g)| g).unwrap_or_default();
        let kinds = uses
            .iter()
            .map(|(k, _, _)| *k)
            .collect::<Vec<_>>()
            .join(", ");
        match api.get_opt(&name).await {
            Ok(None) => report.error(
                Check::Crd,
                &name,
                format!(
                    "CustomResourceDefinition {name} is not installed: the cluster cannot store \
                     {kinds} objects"
                ),
                crd_fix(group),
            ),
            Ok(Some(crd)) => {
                let established = crd
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|c| c.iter().find(|c| c.type_ == "Established"));
                if established.map(|c| c.status.as_str()) != Some("True") {
                    let why = established
                        .and_then(|c| c.message.clone())
                        .unwrap_or_else(|| "no Established condition yet".to_owned());
                    report.error(
                        Check::Crd,
                        &name,
                        format!("CustomResourceDefinition {name} is not established: {why}"),
                        format!(
                            "wait a moment and retry; if it stays so, inspect it with `kubectl \
                             get crd {name} -o yaml` (a names conflict with another CRD?)"
                        ),
                    );
                    report.transient();
                    continue;
                }
                let served: Vec<&str> = crd
                    .spec
                    .versions
                    .iter()
                    .filter(|v| v.served)
                    .map(|v| v.name.as_str())
                    .collect();
                let missing: Vec<String> = uses
                    .iter()
                    .filter(|(_, v, _)| !served.contains(v))
                    .map(|(k, v, g)| format!("{k} {g}/{v}"))
                    .collect();
                if missing.is_empty() {
                    report.passed.push(format!("CRD {name} established"));
                } else {
                    report.error(
                        Check::Crd,
                        &name,
                        format!(
                            "CustomResourceDefinition {name} does not serve {} (it serves: {})",
                            missing.join(", "),
                            served.join(", ")
                        ),
                        format!("upgrade it: {}", crd_fix(group)),
                    );
                }
            }
            Err(e) => report.error(
                Check::Crd,
                &name,
                format!(
                    "cannot read CustomResourceDefinition {name}: {}",
                    describe_kube_error(&e)
                ),
                "grant the account `get` on customresourcedefinitions (apiextensions.k8s.io), \
                 or check the CRDs yourself and pass --skip-preflight"
                    .to_owned(),
            ),
        }
    }
}

async fn check_metrics_api(client: &kube::Client, report: &mut PreflightReport) {
    let api: Api<APIService> = Api::all(client.clone());
    let fix_install = "install metrics-server (`kubectl apply -f \
        https://github.com/kubernetes-sigs/metrics-server/releases/latest/download/components.yaml`; \
        GKE, EKS and AKS ship it); without it order-service's HorizontalPodAutoscaler cannot \
        read CPU and never scales";
    match api.get_opt(METRICS_APISERVICE).await {
        Ok(None) => report.error(
            Check::MetricsApi,
            METRICS_APISERVICE,
            format!(
                "the resource metrics API is not registered (no APIService {METRICS_APISERVICE}): \
                 the HorizontalPodAutoscaler of order-service cannot read CPU"
            ),
            fix_install.to_owned(),
        ),
        Ok(Some(svc)) => {
            let available = svc
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Available"));
            if available.map(|c| c.status.as_str()) == Some("True") {
                report
                    .passed
                    .push(format!("metrics API {METRICS_APISERVICE} available"));
            } else {
                let why = available
                    .and_then(|c| c.message.clone().or_else(|| c.reason.clone()))
                    .unwrap_or_else(|| "no Available condition yet".to_owned());
                report.warning(
                    Check::MetricsApi,
                    METRICS_APISERVICE,
                    format!(
                        "the resource metrics API {METRICS_APISERVICE} is registered but not \
                         available ({why}): the HPA cannot read CPU until it is"
                    ),
                    "check metrics-server: `kubectl -n kube-system get pods -l \
                     k8s-app=metrics-server` and `kubectl get apiservice v1beta1.metrics.k8s.io \
                     -o yaml`"
                        .to_owned(),
                );
                report.transient();
            }
        }
        Err(e) => report.error(
            Check::MetricsApi,
            METRICS_APISERVICE,
            format!(
                "cannot read APIService {METRICS_APISERVICE}: {}",
                describe_kube_error(&e)
            ),
            "grant the account `get` on apiservices (apiregistration.k8s.io), or pass \
             --skip-preflight"
                .to_owned(),
        ),
    }
}

async fn check_scheduling(
    client: &kube::Client,
    objects: &[DynamicObject],
    opts: &RenderOptions,
    report: &mut PreflightReport,
) {
    let deployments: Vec<Deployment> = objects
        .iter()
        .filter(|o| kind_name(o) == "Deployment")
        .filter_map(|o| serde_json::to_value(o).ok())
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect();
    if deployments.is_empty() {
        return;
    }
    let api: Api<Node> = Api::all(client.clone());
    let nodes = match api.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(e) => {
            report.warning(
                Check::Scheduling,
                "nodes",
                format!(
                    "cannot list nodes, so cannot check that the Deployments (those with GPUs \
                     need GPU nodes) can be scheduled: {}",
                    describe_kube_error(&e)
                ),
                "grant the account `list` on nodes, or check GPU capacity yourself (`kubectl \
                 get nodes -o custom-columns=NAME:.metadata.name,GPU:.status.allocatable.nvidia\\.com/gpu`)"
                    .to_owned(),
            );
            return;
        }
    };
    for d in deployments {
        let name = d.name_any();
        let Some(spec) = d.spec.as_ref().and_then(|s| s.template.spec.as_ref()) else {
            continue;
        };
        let extended = extended_requests(spec);
        let needs = if extended.is_empty() {
            String::new()
        } else {
            format!(
                " (it needs {})",
                extended
                    .iter()
                    .map(|(r, n)| format!("{n} {r}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let mut reasons: BTreeMap<Misfit, Vec<String>> = BTreeMap::new();
        let mut fitting = Vec::new();
        for node in &nodes {
            match misfit(node, spec) {
                None => fitting.push(node.name_any()),
                Some(m) => reasons.entry(m).or_default().push(node.name_any()),
            }
        }
        if let Some(first) = fitting.first() {
            report.passed.push(format!(
                "{name} can be scheduled{needs}: {} node(s), e.g. {first}",
                fitting.len()
            ));
            continue;
        }
        let why = if nodes.is_empty() {
            "the cluster has no nodes".to_owned()
        } else {
            reasons
                .iter()
                .map(|(m, ns)| format!("{} node(s) {m} ({})", ns.len(), short_list(ns)))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let fix = if extended
            .keys()
            .any(|r| r == meshguard_manifests::GPU_RESOURCE)
        {
            gpu_fix(opts)
        } else {
            "add a node without GPUs that these pods can use: services without GPUs are kept \
             off GPU nodes (nodes labelled as --profile describes), and tolerate only the taints \
             their placement names"
                .to_owned()
        };
        report.error(
            Check::Scheduling,
            &name,
            format!("no node can run {name}{needs}: {why}"),
            fix,
        );
    }
}

fn gpu_fix(opts: &RenderOptions) -> String {
    let label = match opts.profile {
        meshguard_manifests::Profile::Local => format!(
            "with --profile local, GPU nodes must carry the label {}={} (`kubectl label node \
             NODE {}={}`) and report allocatable nvidia.com/gpu (NVIDIA device plugin)",
            meshguard_manifests::LOCAL_GPU_LABEL.0,
            meshguard_manifests::LOCAL_GPU_LABEL.1,
            meshguard_manifests::LOCAL_GPU_LABEL.0,
            meshguard_manifests::LOCAL_GPU_LABEL.1
        ),
        meshguard_manifests::Profile::Gke => format!(
            "with --profile gke, add a GPU node pool (`gcloud container node-pools create gpu \
             --cluster CLUSTER --accelerator type=nvidia-l4,count=1,gpu-driver-version=default \
             --machine-type g2-standard-4 --num-nodes 1`); GKE labels its nodes {} and reports \
             nvidia.com/gpu",
            meshguard_manifests::GKE_ACCELERATOR_LABEL
        ),
    };
    format!(
        "{label}. On GKE use --profile gke. No GPUs at all: pass --no-gpu to run every \
         service on ordinary nodes (or drop `gpus` from the service's placement in the mesh \
         file). A GPU node pool that scales up from zero has no node yet: pass --skip-preflight"
    )
}

fn short_list(names: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut out = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        out.push_str(&format!(", and {} more", names.len() - SHOWN));
    }
    out
}

async fn check_istiod(client: &kube::Client, report: &mut PreflightReport) {
    let api: Api<Deployment> = Api::all(client.clone());
    match api
        .list(&ListParams::default().labels(ISTIOD_SELECTOR))
        .await
    {
        Ok(list) if list.items.is_empty() => report.warning(
            Check::Istiod,
            "istiod",
            "istiod is not running (no Deployment labelled app=istiod): without Istio no \
             sidecar is injected, so neither mTLS nor the Wasm filters protect the services"
                .to_owned(),
            "install Istio (`istioctl install --set profile=minimal`, or the istiod Helm chart) \
             before or after meshctl; restart the workloads afterwards so they get sidecars"
                .to_owned(),
        ),
        Ok(list) => {
            let where_ = list
                .items
                .iter()
                .map(|d| format!("{}/{}", d.namespace().unwrap_or_default(), d.name_any()))
                .collect::<Vec<_>>()
                .join(", ");
            report.passed.push(format!("istiod found: {where_}"));
        }
        Err(e) => report.warning(
            Check::Istiod,
            "istiod",
            format!("cannot look for istiod: {}", describe_kube_error(&e)),
            "grant the account `list` on deployments cluster-wide, or check Istio yourself"
                .to_owned(),
        ),
    }
}

/// Label selecting Istio's sidecar injector ConfigMaps (`istio-sidecar-injector[-<revision>]`,
/// istio `manifests/charts/istio-control/istio-discovery/templates/istiod-injector-configmap.yaml`).
pub const INJECTOR_CONFIGMAP_SELECTOR: &str = "app.kubernetes.io/name=istiod";
/// Name (or name prefix, with a revision) of the injector ConfigMaps.
pub const INJECTOR_CONFIGMAP: &str = "istio-sidecar-injector";
/// Label of Istio's CNI node agent DaemonSet (istio `manifests/charts/istio-cni`).
pub const CNI_DAEMONSET_SELECTOR: &str = "k8s-app=istio-cni-node";

/// What the cluster's Istio injects: with its CNI plugin or with the `istio-init` container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IstioCni {
    /// Every injector configuration has `pilot.cni.enabled: true`.
    Enabled {
        /// `namespace/name` of the injector ConfigMaps.
        injectors: Vec<String>,
        /// Whether the CNI node agent's DaemonSet was found.
        node_agent: bool,
    },
    /// Some injector renders `istio-init` (`pilot.cni.enabled` false or unset).
    Disabled {
        /// `namespace/name` of those injector ConfigMaps.
        injectors: Vec<String>,
    },
    /// No injector configuration exists: Istio is not installed (nothing is injected).
    NotFound,
    /// The injector configuration could not be read.
    Unknown(String),
}

impl IstioCni {
    /// The level `install` renders: the strictest that admits the pods this Istio injects
    /// (`restricted` when unknown: nothing is injected without Istio).
    pub fn pod_security(&self) -> PodSecurity {
        match self {
            IstioCni::Enabled { .. } | IstioCni::NotFound | IstioCni::Unknown(_) => {
                PodSecurity::for_istio(true)
            }
            IstioCni::Disabled { .. } => PodSecurity::for_istio(false),
        }
    }
}

/// Whether the injector's chart values (the `values` key of its ConfigMap, JSON) enable CNI:
/// the injection template adds `istio-init` unless `.Values.pilot.cni.enabled`.
pub fn injector_values_enable_cni(values: &str) -> Option<bool> {
    let v: serde_json::Value = serde_json::from_str(values).ok()?;
    Some(v.pointer("/pilot/cni/enabled")?.as_bool().unwrap_or(false))
}

/// Reads how the cluster's Istio injects sidecars, from the injector ConfigMaps istiod and
/// `istioctl kube-inject` use.
pub async fn detect_istio_cni(client: &kube::Client) -> IstioCni {
    let api: Api<ConfigMap> = Api::all(client.clone());
    let list = match api
        .list(&ListParams::default().labels(INJECTOR_CONFIGMAP_SELECTOR))
        .await
    {
        Ok(l) => l,
        Err(e) => return IstioCni::Unknown(describe_kube_error(&e)),
    };
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for cm in list.items {
        let name = cm.name_any();
        if !name.starts_with(INJECTOR_CONFIGMAP) {
            continue;
        }
        let id = format!("{}/{name}", cm.namespace().unwrap_or_default());
        let values = cm
            .data
            .as_ref()
            .and_then(|d| d.get("values"))
            .map(String::as_str)
            .unwrap_or_default();
        match injector_values_enable_cni(values) {
            Some(true) => on.push(id),
            // No pilot.cni.enabled (or unreadable values): the template's condition is false.
            _ => off.push(id),
        }
    }
    if !off.is_empty() {
        return IstioCni::Disabled { injectors: off };
    }
    if on.is_empty() {
        return IstioCni::NotFound;
    }
    let daemon_sets: Api<DaemonSet> = Api::all(client.clone());
    let node_agent = daemon_sets
        .list(&ListParams::default().labels(CNI_DAEMONSET_SELECTOR))
        .await
        .is_ok_and(|l| !l.items.is_empty());
    IstioCni::Enabled {
        injectors: on,
        node_agent,
    }
}

/// How to get Istio's CNI plugin, which lets the namespace enforce `restricted`.
pub const CNI_FIX: &str = "install Istio with its CNI plugin (`istioctl install --set \
     components.cni.enabled=true`, or with Helm the `istio/cni` chart and istiod with \
     `--set pilot.cni.enabled=true`; see docs/deploy-gke.md section 4), then run `meshctl \
     install` again: the namespace then enforces Pod Security `restricted`";

fn check_istio_cni(cni: &IstioCni, opts: &RenderOptions, report: &mut PreflightReport) {
    let level = opts.pod_security;
    match cni {
        IstioCni::Enabled {
            injectors,
            node_agent,
        } => {
            report.passed.push(format!(
                "Istio injects with its CNI plugin ({}); the namespace enforces Pod Security \
                 `{level}`",
                injectors.join(", ")
            ));
            if !node_agent {
                report.warning(
                    Check::IstioCni,
                    "istio-cni",
                    format!(
                        "the injector expects Istio CNI but no CNI node agent runs \
                         (no DaemonSet {CNI_DAEMONSET_SELECTOR}): injected pods will not get \
                         their traffic redirected and fail their istio-validation init container"
                    ),
                    "install the istio-cni chart (`helm install istio-cni istio/cni -n \
                     istio-system`) or `istioctl install --set components.cni.enabled=true`"
                        .to_owned(),
                );
            }
        }
        IstioCni::Disabled { injectors } => {
            let problem = format!(
                "Istio injects without its CNI plugin ({}): the injected istio-init container \
                 adds NET_ADMIN and NET_RAW and runs as root, which Pod Security `restricted` \
                 and `baseline` refuse",
                injectors.join(", ")
            );
            if level == PodSecurity::for_istio(false) {
                report.warning(
                    Check::IstioCni,
                    "istio-cni",
                    format!(
                        "{problem}; the namespace therefore enforces `{level}` (it still warns \
                         and audits at `restricted`)"
                    ),
                    CNI_FIX.to_owned(),
                );
            } else {
                report.error(
                    Check::IstioCni,
                    "istio-cni",
                    format!(
                        "{problem}, and --pod-security {level} would refuse every injected pod"
                    ),
                    format!(
                        "{CNI_FIX}; or leave out --pod-security, so the namespace enforces \
                         `privileged`"
                    ),
                );
            }
        }
        IstioCni::NotFound => report.passed.push(format!(
            "no Istio injector configuration ({INJECTOR_CONFIGMAP} ConfigMap): nothing is \
             injected yet; the namespace enforces `{level}` (if Istio is installed later without \
             its CNI plugin, run `meshctl install` again)"
        )),
        IstioCni::Unknown(why) => report.warning(
            Check::IstioCni,
            "istio-cni",
            format!(
                "cannot tell whether Istio uses its CNI plugin ({why}); the namespace enforces \
                 `{level}`, which refuses the pods if Istio injects istio-init"
            ),
            format!("if Istio is installed without CNI: {CNI_FIX}"),
        ),
    }
}

async fn check_ownership(
    client: &kube::Client,
    objects: &[DynamicObject],
    namespace: &str,
    report: &mut PreflightReport,
) {
    let Ok(resources) = Resources::for_rendered_kinds(client).await else {
        return;
    };
    for o in objects {
        if kind_name(o) == "Namespace" {
            continue;
        }
        let Ok(resolved) = resources.resolve_object(o) else {
            continue;
        };
        let api = resources::api(client, &resolved, o.namespace().as_deref());
        if let Ok(Some(live)) = api.get_opt(&o.name_any()).await {
            if !is_ours(live.labels(), namespace) {
                let what = resources::object_ref(o).to_string();
                report.warning(
                    Check::Ownership,
                    &what,
                    format!("{what} exists and was not created by meshctl for this namespace"),
                    "nothing to do if meshctl should manage it: install takes over the fields \
                     meshctl sets and labels it, and uninstall will then delete it"
                        .to_owned(),
                );
            }
        }
    }
}

/// Whether labels mark an object as installed by meshctl into `namespace`: it carries every
/// ownership label (what `uninstall` selects on).
pub fn is_ours(labels: &BTreeMap<String, String>, namespace: &str) -> bool {
    ownership_labels(namespace)
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    /// GitHub's anchor of a Markdown heading: lower case, punctuation but `-` dropped, spaces
    /// to `-`.
    fn anchor_of(heading: &str) -> String {
        heading
            .trim_start_matches('#')
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect()
    }

    #[test]
    fn every_check_names_a_section_of_the_docs() {
        let docs = include_str!("../../docs/meshctl.md");
        let anchors: Vec<String> = docs
            .lines()
            .filter(|l| l.starts_with('#'))
            .map(anchor_of)
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        for c in &CHECKS {
            assert!(
                anchors.iter().any(|a| a == c.anchor),
                "docs/meshctl.md has no heading for #{}",
                c.anchor
            );
            assert!(seen.insert(c.check), "{:?} is in the table twice", c.check);
            assert!(!c.description.is_empty());
        }
        // Only the API server check stops the others, and it comes first.
        assert!(CHECKS[0].fatal && CHECKS.iter().skip(1).all(|c| !c.fatal));
    }

    fn transient_finding() -> PreflightReport {
        let mut r = PreflightReport::default();
        r.error(Check::Crd, "x", "not yet".into(), "wait".into());
        r.transient();
        r
    }

    #[tokio::test]
    async fn a_retried_check_runs_again_while_what_it_finds_is_transient() {
        let calls = std::cell::Cell::new(0);
        let found = run_retried(
            || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move {
                    if n < 3 {
                        transient_finding()
                    } else {
                        PreflightReport::default()
                    }
                }
            },
            Some(Duration::from_secs(30)),
        )
        .await;
        assert!(found.is_ok());
        assert_eq!(calls.get(), 3);
    }

    #[tokio::test]
    async fn a_finding_that_cannot_change_by_itself_is_not_retried() {
        let calls = std::cell::Cell::new(0);
        let found = run_retried(
            || {
                calls.set(calls.get() + 1);
                async {
                    let mut r = PreflightReport::default();
                    r.error(Check::Crd, "x", "missing".into(), "install it".into());
                    r
                }
            },
            Some(Duration::from_secs(30)),
        )
        .await;
        assert!(!found.is_ok());
        assert_eq!(calls.get(), 1);
        // Without a retry window a transient finding is reported at once too.
        let once = run_retried(|| async { transient_finding() }, None).await;
        assert!(!once.is_ok());
    }

    use super::*;

    #[test]
    fn placeholders() {
        assert!(is_placeholder_module(
            "oci://registry.invalid/meshguard/authz:0.1.0"
        ));
        assert!(is_placeholder_module("https://x.invalid:8443/a.wasm"));
        assert!(!is_placeholder_module("oci://ghcr.io/acme/authz:0.1.0"));
        assert!(!is_placeholder_module("file:///opt/authz.wasm"));
    }

    #[test]
    fn local_check_refuses_defaults() {
        let opts = RenderOptions::new("meshguard");
        let report = check_local(&opts);
        assert!(!report.is_ok());
        assert_eq!(report.errors().count(), 2);
        let f = report
            .find(Check::ModuleUrl, "--authz-module")
            .expect("authz finding");
        assert!(f.fix.contains("docs/meshctl.md"), "{}", f.fix);

        let mut opts = opts;
        opts.authz_module_url = "oci://ghcr.io/acme/authz:1".into();
        opts.metrics_module_url = "oci://ghcr.io/acme/metrics:1".into();
        assert!(check_local(&opts).is_ok());
    }
}
