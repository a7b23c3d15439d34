//! End-to-end tests of the offline test cluster. They need the binaries and
//! CRDs from `tests/kube/build-cluster-bins.sh`.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams};
use kube::core::ObjectMeta;
use meshguard_testcluster::{CrdSet, Error, TestCluster, TestClusterOptions, Versions, ADMIN_USER};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Whether `pid` is a live (not zombie) process whose command line mentions `name`.
fn alive(pid: u32, name: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name: "pid (comm) S ...".
    let zombie = stat
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']));
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    !zombie && String::from_utf8_lossy(&cmdline).contains(name)
}

/// Polls until neither process is alive, or the deadline passes.
async fn wait_gone(apiserver: u32, etcd: u32, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if !alive(apiserver, "kube-apiserver") && !alive(etcd, "etcd") {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        ..ObjectMeta::default()
    }
}

#[tokio::test]
async fn core_objects_round_trip() -> TestResult {
    let cluster = TestCluster::start(TestClusterOptions::default()).await?;
    let client = cluster.client().await?;

    // The server is the pinned build, reached over verified TLS.
    let version = client.apiserver_version().await?;
    assert_eq!(version.git_version, Versions::pinned()?.kubernetes);
    let named = cluster
        .kubeconfig()
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .ok_or("kubeconfig has no cluster")?;
    assert_eq!(named.server.as_deref(), Some(cluster.server_url()));
    assert!(named.certificate_authority_data.is_some());
    assert_ne!(named.insecure_skip_tls_verify, Some(true));
    assert!(cluster.server_url().starts_with("https://127.0.0.1:"));

    // The kubeconfig file on disk works on its own.
    let from_file = kube::config::Kubeconfig::read_from(cluster.kubeconfig_path())?;
    let config = kube::Config::from_custom_kubeconfig(from_file, &Default::default()).await?;
    let other = kube::Client::try_from(config)?;
    other.apiserver_version().await?;

    // We are the admin, in system:masters.
    let review = Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await?;
    let user = review
        .status
        .and_then(|s| s.user_info)
        .ok_or("no user info in the SelfSubjectReview")?;
    assert_eq!(user.username.as_deref(), Some(ADMIN_USER));
    assert!(user
        .groups
        .unwrap_or_default()
        .iter()
        .any(|g| g == "system:masters"));

    // Namespace + ConfigMap: create, read, list, delete.
    let ns_name = "meshguard-core-test";
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: meta(ns_name),
                ..Namespace::default()
            },
        )
        .await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns_name);
    let data = BTreeMap::from([("greeting".to_owned(), "hello".to_owned())]);
    config_maps
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: meta("settings"),
                data: Some(data.clone()),
                ..ConfigMap::default()
            },
        )
        .await?;
    let read = config_maps.get("settings").await?;
    assert_eq!(read.data, Some(data));
    let listed = config_maps.list(&Default::default()).await?;
    assert!(listed
        .items
        .iter()
        .any(|cm| cm.metadata.name.as_deref() == Some("settings")));
    config_maps
        .delete("settings", &DeleteParams::default())
        .await?;
    assert!(config_maps.get_opt("settings").await?.is_none());

    // Without kube-controller-manager a deleted namespace stays Terminating
    // until its finalizer is removed.
    namespaces.delete(ns_name, &DeleteParams::default()).await?;
    let terminating = namespaces.get(ns_name).await?;
    assert!(terminating.metadata.deletion_timestamp.is_some());
    cluster.finalize_namespace(ns_name).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while namespaces.get_opt(ns_name).await?.is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "namespace still there after finalize"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    cluster.stop()?;
    Ok(())
}

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// Creates a dynamic object in `default` and reads it back.
async fn create_and_read(
    client: &kube::Client,
    ar: &ApiResource,
    name: &str,
    spec: serde_json::Value,
) -> Result<DynamicObject, Box<dyn std::error::Error>> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", ar);
    let object = DynamicObject::new(name, ar).data(json!({ "spec": spec.clone() }));
    api.create(&PostParams::default(), &object).await?;
    let read = api.get(name).await?;
    assert_eq!(
        read.types.as_ref().map(|t| t.kind.as_str()),
        Some(ar.kind.as_str())
    );
    assert_eq!(read.data.get("spec"), Some(&spec), "{} {name}", ar.kind);
    Ok(read)
}

#[tokio::test]
async fn crds_install_and_serve_custom_resources() -> TestResult {
    let cluster = TestCluster::start(TestClusterOptions::default()).await?;
    let names = cluster.install_crds(&CrdSet::ALL).await?;
    for expected in [
        "wasmplugins.extensions.istio.io",
        "peerauthentications.security.istio.io",
        "authorizationpolicies.security.istio.io",
        "scaledobjects.keda.sh",
        "triggerauthentications.keda.sh",
        "certificates.cert-manager.io",
        "issuers.cert-manager.io",
        "podmonitors.monitoring.coreos.com",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} not in {names:?}"
        );
    }
    // Installing again is a no-op (server-side apply).
    assert_eq!(cluster.install_crds(&[CrdSet::Istio]).await?.len(), {
        names.iter().filter(|n| n.ends_with(".istio.io")).count()
    });

    let client = cluster.client().await?;
    let wasm_plugin = resource(
        "extensions.istio.io",
        "v1alpha1",
        "WasmPlugin",
        "wasmplugins",
    );
    create_and_read(
        &client,
        &wasm_plugin,
        "meshguard-authz",
        json!({
            "selector": { "matchLabels": { "app": "demo" } },
            "url": "oci://registry.invalid/meshguard/authz:0.1.0",
            "phase": "AUTHZ",
            "pluginConfig": { "mode": "enforce" },
        }),
    )
    .await?;

    let peer_authentication = resource(
        "security.istio.io",
        "v1",
        "PeerAuthentication",
        "peerauthentications",
    );
    create_and_read(
        &client,
        &peer_authentication,
        "default",
        json!({ "mtls": { "mode": "STRICT" } }),
    )
    .await?;

    let scaled_object = resource("keda.sh", "v1alpha1", "ScaledObject", "scaledobjects");
    create_and_read(
        &client,
        &scaled_object,
        "demo",
        json!({
            "scaleTargetRef": { "name": "demo" },
            "minReplicaCount": 1,
            "maxReplicaCount": 3,
            "triggers": [{ "type": "cpu", "metricType": "Utilization", "metadata": { "value": "60" } }],
        }),
    )
    .await?;

    let issuer = resource("cert-manager.io", "v1", "Issuer", "issuers");
    create_and_read(&client, &issuer, "selfsigned", json!({ "selfSigned": {} })).await?;

    // The CRD schemas are enforced.
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "default", &peer_authentication);
    let bogus = DynamicObject::new("bogus", &peer_authentication)
        .data(json!({ "spec": { "mtls": { "mode": "SOMETIMES" } } }));
    match api.create(&PostParams::default(), &bogus).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 422, "{status:?}"),
        other => return Err(format!("invalid PeerAuthentication accepted: {other:?}").into()),
    }
    Ok(())
}

#[tokio::test]
async fn processes_are_gone_after_drop_and_stop() -> TestResult {
    let cluster = TestCluster::start(TestClusterOptions::default()).await?;
    let (apiserver, etcd, dir) = (
        cluster.apiserver_pid(),
        cluster.etcd_pid(),
        cluster.dir().to_owned(),
    );
    assert!(alive(apiserver, "kube-apiserver") && alive(etcd, "etcd"));
    drop(cluster);
    // Drop returns once both are reaped: no waiting needed.
    assert!(
        !alive(apiserver, "kube-apiserver"),
        "kube-apiserver {apiserver} survived drop"
    );
    assert!(!alive(etcd, "etcd"), "etcd {etcd} survived drop");
    assert!(!dir.exists(), "{} survived drop", dir.display());

    let cluster = TestCluster::start(TestClusterOptions::default()).await?;
    let (apiserver, etcd) = (cluster.apiserver_pid(), cluster.etcd_pid());
    cluster.stop()?;
    assert!(!alive(apiserver, "kube-apiserver") && !alive(etcd, "etcd"));
    Ok(())
}

const HELPER_ENV: &str = "MESHGUARD_TESTCLUSTER_HELPER";
const PIDS_PREFIX: &str = "MESHGUARD_TESTCLUSTER_PIDS";

/// Run by `children_die_with_the_test_process` in a child test process,
/// which it then kills with SIGKILL.
#[tokio::test]
#[ignore = "helper of children_die_with_the_test_process"]
async fn helper_holds_a_cluster() -> TestResult {
    if std::env::var_os(HELPER_ENV).is_none() {
        return Ok(());
    }
    let cluster = TestCluster::start(TestClusterOptions::default()).await?;
    println!(
        "{PIDS_PREFIX} {} {}",
        cluster.apiserver_pid(),
        cluster.etcd_pid()
    );
    // Bounded: the parent kills this process long before.
    tokio::time::sleep(Duration::from_secs(120)).await;
    Ok(())
}

#[tokio::test]
async fn children_die_with_the_test_process() -> TestResult {
    // The helper's cluster directory cannot be cleaned after SIGKILL: keep it
    // inside one we remove.
    let tmp = tempfile::tempdir()?;
    let mut helper = tokio::process::Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            "helper_holds_a_cluster",
            "--ignored",
            "--nocapture",
        ])
        .env(HELPER_ENV, "1")
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = helper.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let read_pids = async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.strip_prefix(PIDS_PREFIX) {
                let pids: Vec<u32> = rest
                    .split_whitespace()
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
                return Ok::<_, Box<dyn std::error::Error>>(pids);
            }
        }
        Err("the helper exited without starting a cluster".into())
    };
    let pids = tokio::time::timeout(Duration::from_secs(150), read_pids).await??;
    let [apiserver, etcd] = pids[..] else {
        return Err(format!("bad pid line: {pids:?}").into());
    };
    assert!(alive(apiserver, "kube-apiserver") && alive(etcd, "etcd"));

    helper.kill().await?; // SIGKILL: no destructor runs in the helper.
    if wait_gone(apiserver, etcd, Duration::from_secs(10)).await {
        return Ok(());
    }
    // Do not leave them running: kill them ourselves, then fail.
    for pid in [apiserver, etcd] {
        if let Some(pid) = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
    Err(format!("children survived their parent: apiserver {apiserver} etcd {etcd}").into())
}

#[tokio::test]
async fn missing_binary_names_the_build_script() -> TestResult {
    let options = TestClusterOptions {
        kube_apiserver: Some("/nonexistent/kube-apiserver".into()),
        ..TestClusterOptions::default()
    };
    match TestCluster::start(options).await {
        Err(e @ Error::MissingArtifact { .. }) => {
            let message = e.to_string();
            assert!(message.contains("build-cluster-bins.sh"), "{message}");
            assert!(message.contains("/nonexistent/kube-apiserver"), "{message}");
            Ok(())
        }
        Err(e) => Err(format!("unexpected error: {e}").into()),
        Ok(_) => Err("started without a kube-apiserver".into()),
    }
}

#[tokio::test]
async fn simulated_nodes_and_metrics_api_look_like_a_gpu_cluster() -> TestResult {
    use k8s_openapi::api::core::v1::Node;
    use meshguard_testcluster::{CPU_NODE, GPU_NODE, METRICS_APISERVICE};
    let cluster = TestCluster::start(TestClusterOptions::default()).await?;
    cluster.simulate_nodes().await?;
    cluster.simulate_metrics_api().await?;
    // Twice: server-side apply makes it idempotent.
    cluster.simulate_nodes().await?;
    let client = cluster.client().await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let gpu = nodes.get(GPU_NODE).await?;
    let allocatable = gpu.status.and_then(|s| s.allocatable).unwrap_or_default();
    assert_eq!(
        allocatable.get("nvidia.com/gpu").map(|q| q.0.as_str()),
        Some("1")
    );
    let labels = gpu.metadata.labels.unwrap_or_default();
    assert_eq!(labels.get("gpu").map(String::as_str), Some("true"));
    let taints = gpu.spec.and_then(|s| s.taints).unwrap_or_default();
    assert_eq!(taints.len(), 1);
    assert_eq!(taints[0].key, "nvidia.com/gpu");
    assert_eq!(taints[0].effect, "NoSchedule");
    let cpu = nodes.get(CPU_NODE).await?;
    let cpu_alloc = cpu.status.and_then(|s| s.allocatable).unwrap_or_default();
    assert!(!cpu_alloc.contains_key("nvidia.com/gpu"));
    let apiservices: Api<DynamicObject> = Api::all_with(
        client,
        &resource("apiregistration.k8s.io", "v1", "APIService", "apiservices"),
    );
    assert!(apiservices.get(METRICS_APISERVICE).await.is_ok());
    cluster.stop()?;
    Ok(())
}
