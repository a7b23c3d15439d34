//! Shared by the integration tests: running the `meshctl` binary, starting a test cluster shaped
//! like the one meshctl targets, and reading objects back.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use clap::Parser;
use kube::api::DynamicObject;
use kube::ResourceExt;
use meshctl::cli::{Cli, Command};
use meshctl::resources::{self, Resources};
use meshguard_testcluster::{CrdSet, LocalCluster, TestCluster, TestClusterOptions};

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Module URLs that are not the placeholder (nothing fetches them in the test cluster).
pub const AUTHZ_MODULE: &str = "oci://registry.example/meshguard/authz:0.1.0";
pub const METRICS_MODULE: &str = "oci://registry.example/meshguard/metrics:0.1.0";

/// A finished `meshctl` run.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Both streams, for assertion messages.
    pub fn dump(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs the `meshctl` binary with `args`, isolated from the environment's kubeconfig: no
/// `KUBECONFIG`, and a `HOME` without `~/.kube/config`.
pub async fn meshctl(args: &[&str]) -> Run {
    let home = std::env::temp_dir().join("meshctl-tests-empty-home");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("HOME", home)
        .env("NO_COLOR", "1")
        .output()
        .await;
    match output {
        Ok(output) => Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        },
        Err(e) => Run {
            code: None,
            stdout: String::new(),
            stderr: format!("cannot run {}: {e}", env!("CARGO_BIN_EXE_meshctl")),
        },
    }
}

/// Runs `meshctl <command> --kubeconfig <cluster's> <args>`.
pub async fn meshctl_on(cluster: &TestCluster, command: &str, args: &[&str]) -> Run {
    let kubeconfig = cluster.kubeconfig_path().display().to_string();
    let mut all = vec![command, "--kubeconfig", kubeconfig.as_str()];
    all.extend_from_slice(args);
    meshctl(&all).await
}

/// `meshctl install -f MESH` on the local cluster as the system tests run it: the cluster's
/// Prometheus for the request-rate triggers, the autoscalers' short scale-down window
/// (`--fast-scale-down`), then `extra` (e.g. `--pod-monitor`) and `flags` (what `meshctl publish`
/// printed for install).
pub async fn install_mesh_file(
    cluster: &LocalCluster,
    mesh: &Path,
    extra: &[&str],
    flags: &[String],
) -> Result<Run, Box<dyn std::error::Error>> {
    let mesh = mesh.display().to_string();
    let prometheus = cluster.prometheus_url().to_owned();
    let mut args = vec![
        "-f",
        mesh.as_str(),
        "--prometheus-address",
        prometheus.as_str(),
        "--fast-scale-down",
    ];
    args.extend_from_slice(extra);
    args.extend(flags.iter().map(String::as_str));
    Ok(meshctl_on(cluster.api()?, "install", &args).await)
}

/// `install` with usable module URLs.
pub async fn install(cluster: &TestCluster, args: &[&str]) -> Run {
    with_modules(cluster, "install", args).await
}

/// `meshctl preflight` on `cluster` with the test module URLs and `args`.
pub async fn preflight(cluster: &TestCluster, args: &[&str]) -> Run {
    with_modules(cluster, "preflight", args).await
}

async fn with_modules(cluster: &TestCluster, command: &str, args: &[&str]) -> Run {
    let mut all = vec![
        "--authz-module",
        AUTHZ_MODULE,
        "--metrics-module",
        METRICS_MODULE,
    ];
    all.extend_from_slice(args);
    meshctl_on(cluster, command, &all).await
}

/// A cluster with the Istio and KEDA CRDs, a GPU node and a CPU node, and the metrics API
/// registered: what preflight wants.
pub async fn ready_cluster() -> Result<TestCluster, Box<dyn std::error::Error>> {
    let cluster = TestCluster::start(TestClusterOptions::default()).await?;
    cluster.install_crds(&[CrdSet::Istio, CrdSet::Keda]).await?;
    cluster.simulate_nodes().await?;
    cluster.simulate_metrics_api().await?;
    Ok(cluster)
}

/// What `meshctl render <args>` renders, as objects.
pub fn rendered(args: &[&str]) -> Result<Vec<DynamicObject>, meshctl::Error> {
    let mut all = vec![
        "meshctl",
        "render",
        "--authz-module",
        AUTHZ_MODULE,
        "--metrics-module",
        METRICS_MODULE,
    ];
    all.extend_from_slice(args);
    let cli = Cli::parse_from(all);
    let Command::Render(r) = cli.command else {
        unreachable!("parsed `render`")
    };
    Ok(meshctl::commands::render_objects(&cli.global, &r.render)?.1)
}

/// `Kind namespace/name` of an object.
pub fn key(o: &DynamicObject) -> String {
    resources::object_ref(o).to_string()
}

/// The live copy of each object (`None` where absent), by [`key`].
pub async fn live(
    client: &kube::Client,
    objects: &[DynamicObject],
) -> Result<BTreeMap<String, Option<DynamicObject>>, Box<dyn std::error::Error>> {
    let resources = Resources::for_rendered_kinds(client).await?;
    let mut out = BTreeMap::new();
    for o in objects {
        let resolved = resources.resolve_object(o)?;
        let api = resources::api(client, &resolved, o.namespace().as_deref());
        out.insert(key(o), api.get_opt(&o.name_any()).await?);
    }
    Ok(out)
}

/// The resourceVersion of each object (`None` where absent), by [`key`].
pub async fn resource_versions(
    client: &kube::Client,
    objects: &[DynamicObject],
) -> Result<BTreeMap<String, Option<String>>, Box<dyn std::error::Error>> {
    Ok(live(client, objects)
        .await?
        .into_iter()
        .map(|(k, v)| (k, v.and_then(|o| o.resource_version())))
        .collect())
}

/// The keys whose value differs between two maps.
pub fn changed<V: PartialEq>(a: &BTreeMap<String, V>, b: &BTreeMap<String, V>) -> Vec<String> {
    a.iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .map(|(k, _)| k.clone())
        .collect()
}

/// The workspace's root.
pub fn workspace() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The folder `var` names, else `default` under the workspace.
pub fn dir_from_env(var: &str, default: &str) -> std::path::PathBuf {
    std::env::var_os(var).map_or_else(|| workspace().join(default), std::path::PathBuf::from)
}

/// The reference services' static binaries (`MESHGUARD_SERVICES_DIR`, built by scripts/test.sh).
pub fn services_dir() -> std::path::PathBuf {
    dir_from_env(
        "MESHGUARD_SERVICES_DIR",
        "target/services/x86_64-unknown-linux-musl/services",
    )
}

/// `meshctl publish --services` of both filters and the reference services to `repository`
/// (plain HTTP) as `tag`, as a user runs it; the `meshctl install` flags it prints (each
/// module's URL and sha256, and `--image-registry`).
pub async fn publish_for_install(
    repository: &str,
    tag: &str,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let filters = dir_from_env("MESHGUARD_FILTERS_DIR", "target/filters/wasm32-wasip1/wasm");
    let (filters, services) = (
        filters.display().to_string(),
        services_dir().display().to_string(),
    );
    let publish = meshctl(&[
        "publish",
        "--repository",
        repository,
        "--tag",
        tag,
        "--filters-dir",
        &filters,
        "--services",
        "--services-dir",
        &services,
        "--plain-http",
    ])
    .await;
    if publish.code != Some(0) {
        return Err(format!("meshctl publish failed: {}", publish.dump()).into());
    }
    let line = publish
        .stdout
        .lines()
        .find(|l| l.contains("--image-registry"))
        .ok_or_else(|| format!("publish printed no install flags: {}", publish.dump()))?;
    Ok(line
        .split_whitespace()
        .skip_while(|w| !w.starts_with("--"))
        .map(str::to_owned)
        .collect())
}
