//! Istio's control plane on the local cluster: `istioctl install` (built from the pinned
//! istio.io/istio, its charts embedded) runs istiod as a pod on a real node from the `pilot`
//! image assembled here, and istiod's webhook injects a sidecar (pilot-agent with the Envoy of
//! Istio's line, upstream's build from PyPI) that takes every resource istiod sends: no update
//! rejected, by Envoy's counters and by istiod's.
//!
//! Needs root and what `scripts/test.sh` builds: the node programs, Istio's commands
//! (`tests/istio/build.sh`) and Envoy (`tests/envoy/install.sh`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::Client;
use meshguard_testcluster::istio::{IstioArtifacts, ISTIO_NAMESPACE};
use meshguard_testcluster::registry::Registry;
use meshguard_testcluster::wait::until as wait_for;
use meshguard_testcluster::{LocalCluster, LocalClusterOptions};
use serde_json::json;

type BoxError = Box<dyn std::error::Error>;
type TestResult = Result<(), BoxError>;

const NS: &str = "mesh-check";
/// The node sandbox image every real node has (imported when the node starts).
const PAUSE: &str = "meshguard.invalid/pause:1";

/// `GET path` on `addr` over HTTP/1.0; the body, or the status line when it is not 200.
fn http_get(addr: SocketAddr, path: &str) -> Result<Result<String, String>, BoxError> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or_default().to_owned();
    Ok(if status.contains(" 200") {
        Ok(body.to_owned())
    } else {
        Err(status)
    })
}

/// The value of the Prometheus series `name` without labels in `text` (Envoy writes `name{} v`).
fn series(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let rest = rest.strip_prefix("{}").unwrap_or(rest);
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// The pod's IP once it is Running with every container ready.
async fn ready_pod_ip(pods: &Api<Pod>, name: &str) -> Result<Result<String, String>, BoxError> {
    let pod = pods.get(name).await?;
    let status = pod.status.unwrap_or_default();
    let ready = status
        .conditions
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    match (ready, status.pod_ip) {
        (true, Some(ip)) => Ok(Ok(ip)),
        _ => Ok(Err(format!(
            "phase {:?}, containers {:?}, init containers {:?}",
            status.phase,
            status
                .container_statuses
                .unwrap_or_default()
                .iter()
                .map(|c| (&c.name, c.ready, &c.state))
                .collect::<Vec<_>>(),
            status
                .init_container_statuses
                .unwrap_or_default()
                .iter()
                .map(|c| (&c.name, c.ready, &c.state))
                .collect::<Vec<_>>(),
        ))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istiod_runs_on_a_real_node_and_its_injected_sidecar_accepts_all_it_sends() -> TestResult {
    let artifacts = IstioArtifacts::from_env()?;
    let cluster = LocalCluster::start(LocalClusterOptions::real_nodes_only(1, 0)).await?;
    let registry = Registry::start(&cluster.dir().join("registry"), None, None)?;
    cluster.trust_plain_http_registry(registry.addr())?;
    let result = run(&cluster, &artifacts, registry.addr()).await;
    if result.is_err() {
        eprintln!("cluster folder: {}", cluster.dir().display());
    }
    let footprint = cluster.real_nodes_footprint();
    cluster.stop()?;
    drop(registry);
    result?;
    if let Some(f) = footprint {
        let left = f.leftovers();
        assert!(left.is_empty(), "left behind after stop: {left:#?}");
    }
    Ok(())
}

async fn run(cluster: &LocalCluster, artifacts: &IstioArtifacts, registry: &str) -> TestResult {
    let images = artifacts.push_images(registry, "meshguard-local")?;
    eprintln!(
        "pushed {}/pilot {} and {}/proxyv2 {}",
        images.hub, images.pilot_digest, images.hub, images.proxy_digest
    );
    let log = cluster.dir().join("istioctl.log");
    artifacts.install(cluster.kubeconfig_path()?, &images, &[], &log)?;
    let client: Client = cluster.client().await?;

    // istiod: a pod on the real node, from the pushed image, ready.
    let system: Api<Pod> = Api::namespaced(client.clone(), ISTIO_NAMESPACE);
    let istiod = system
        .list(&ListParams::default().labels("app=istiod"))
        .await?
        .items
        .into_iter()
        .next()
        .ok_or("istioctl installed no istiod pod")?;
    let spec = istiod.spec.clone().unwrap_or_default();
    assert_eq!(spec.node_name.as_deref(), Some("real-cpu-1"));
    assert_eq!(
        spec.containers.first().and_then(|c| c.image.clone()),
        Some(format!("{}/pilot:{}", images.hub, images.tag))
    );
    let istiod_ip = istiod
        .status
        .and_then(|s| s.pod_ip)
        .ok_or("istiod has no IP")?;

    // A namespace whose pods get sidecars; istio-init needs NET_ADMIN and NET_RAW.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": NS, "labels": {
                    "istio-injection": "enabled",
                    "pod-security.kubernetes.io/enforce": "privileged",
                }},
            }))?,
        )
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    wait_for(
        "the namespace's default service account",
        Duration::from_secs(60),
        || {
            let client = client.clone();
            async move {
                let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> =
                    Api::namespaced(client, NS);
                Ok(match sa.get_opt("default").await? {
                    Some(_) => Ok(()),
                    None => Err("none yet".to_owned()),
                })
            }
        },
    )
    .await?;
    let pod = pods
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "probe", "labels": {"app": "probe"}},
                "spec": {"containers": [{
                    "name": "app", "image": PAUSE, "imagePullPolicy": "Never",
                }]},
            }))?,
        )
        .await?;
    let injected: Vec<String> = pod
        .spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
        .map(|c| c.name.clone())
        .collect();
    assert!(
        injected.iter().any(|n| n == "istio-proxy") && injected.iter().any(|n| n == "istio-init"),
        "istiod's webhook injected istio-init and istio-proxy: {injected:?}"
    );
    let ip = wait_for(
        "the probe pod ready with its sidecar",
        Duration::from_secs(180),
        || ready_pod_ip(&pods, "probe"),
    )
    .await?;

    // Envoy took every listener and cluster istiod sent (the agent serves Envoy's counters).
    let agent: SocketAddr = format!("{ip}:15020").parse()?;
    let stats = http_get(agent, "/stats/prometheus")?.map_err(|s| format!("agent stats: {s}"))?;
    for (name, want_positive) in [
        ("envoy_cluster_manager_cds_update_success", true),
        ("envoy_listener_manager_lds_update_success", true),
        ("envoy_cluster_manager_cds_update_rejected", false),
        ("envoy_listener_manager_lds_update_rejected", false),
    ] {
        let value = series(&stats, name).ok_or_else(|| {
            let near: Vec<&str> = stats.lines().filter(|l| l.contains("update_")).collect();
            format!("no {name} in the sidecar's stats; its update_ series: {near:#?}")
        })?;
        if want_positive {
            assert!(value >= 1.0, "{name} = {value}");
        } else {
            assert_eq!(value, 0.0, "{name}");
        }
    }
    // istiod counted no rejection either.
    let metrics = http_get(format!("{istiod_ip}:15014").parse()?, "/metrics")?
        .map_err(|s| format!("istiod metrics: {s}"))?;
    let rejects: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("pilot_total_xds_rejects"))
        .collect();
    assert!(rejects.is_empty(), "istiod saw rejections: {rejects:?}");
    Ok(())
}
