//! The system in Istio: istiod on the local cluster's real nodes (`istioctl install`, see
//! `tests/istio/README.md`, "Istio on the local cluster"), then `meshctl publish` and
//! `meshctl install` as a user runs them. istiod serves the WasmPlugins to the injected sidecars,
//! whose agents fetch both modules from the registry and check their sha256, and the filters
//! decide every call:
//!
//! - a caller under user-service's service account gets order-service's answer, which holds
//!   payment-service's: order → payment through both sidecars, with istiod's SPIFFE identities;
//! - a pod in the namespace under another service account is denied with 403 and the reason,
//!   and its gRPC call with grpc-status 7;
//! - a pod outside the mesh is refused by mTLS STRICT.
//!
//! Each caller is a pod running `call` (tests/services), whose requests leave through its own
//! sidecar; the test reads the answers from its log. Needs root and everything `scripts/test.sh`
//! builds.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::{meshctl_on, publish_for_install, services_dir, workspace, TestResult};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{Api, LogParams, PostParams};
use kube::Client;
use meshguard_testcluster::forward::Forwarder;
use meshguard_testcluster::istio::IstioArtifacts;
use meshguard_testcluster::registry::Registry;
use meshguard_testcluster::wait::until as wait_for;
use meshguard_testcluster::{LocalCluster, LocalClusterOptions};
use serde_json::{json, Value};

type BoxError = Box<dyn std::error::Error>;

const NS: &str = "meshguard";
const SERVICES: [&str; 3] = ["user-service", "order-service", "payment-service"];
const TAG: &str = "system-test";
const ORDERS: &str = "http://order-service.meshguard:5000/orders?user_id=7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filters_decide_every_call_in_istio_sidecars() -> TestResult {
    let artifacts = IstioArtifacts::from_env()?;
    let cluster = LocalCluster::start(LocalClusterOptions::real_nodes_only(1, 1)).await?;
    let registry = Registry::start(&cluster.dir().join("registry"), None, None)?;
    // The sidecars' agents fetch the modules themselves, from their pods: the registry is
    // published on the first node's address, which pods and nodes both reach.
    let node_ip: IpAddr = cluster
        .real_nodes()
        .first()
        .ok_or("no real node")?
        .ip
        .parse()?;
    let local: SocketAddr = registry.addr().parse()?;
    let mut published = Forwarder::start(SocketAddr::new(node_ip, local.port()), local)?;
    let address = published.address().to_string();
    cluster.trust_plain_http_registry(&address)?;
    let result = run(&cluster, &artifacts, &address).await;
    if result.is_err() {
        eprintln!("cluster folder: {}", cluster.dir().display());
    }
    let footprint = cluster.real_nodes_footprint();
    // Before the nodes go: the forwarder listens on the first node's address.
    published.stop();
    cluster.stop()?;
    drop(registry);
    result?;
    if let Some(f) = footprint {
        let left = f.leftovers();
        assert!(left.is_empty(), "left behind after stop: {left:#?}");
    }
    Ok(())
}

/// Runs `call ARGS` in a pod of `namespace` under `account` and returns its answers (one JSON
/// object per request).
async fn call(
    client: &Client,
    image: &str,
    namespace: &str,
    name: &str,
    account: &str,
    args: &[&str],
) -> Result<Vec<Value>, BoxError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": "Never",
                "serviceAccountName": account,
                "containers": [{"name": "call", "image": image, "args": args}],
            },
        }))?,
    )
    .await?;
    wait_for(
        &format!("{namespace}/{name} finished"),
        Duration::from_secs(120),
        || {
            let pods = pods.clone();
            async move {
                let pod = pods.get(name).await?;
                let status = pod.status.unwrap_or_default();
                let done = status
                    .container_statuses
                    .unwrap_or_default()
                    .iter()
                    .any(|c| {
                        c.name == "call" && c.state.as_ref().is_some_and(|s| s.terminated.is_some())
                    });
                Ok(if done {
                    Ok(())
                } else {
                    Err(format!("phase {:?}", status.phase))
                })
            }
        },
    )
    .await?;
    let log = pods
        .logs(
            name,
            &LogParams {
                container: Some("call".into()),
                ..LogParams::default()
            },
        )
        .await?;
    Ok(log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

async fn run(cluster: &LocalCluster, artifacts: &IstioArtifacts, registry: &str) -> TestResult {
    let images = artifacts.push_images(registry, "meshguard-local")?;
    let insecure =
        format!("meshConfig.defaultConfig.proxyMetadata.WASM_INSECURE_REGISTRIES={registry}");
    let started = Instant::now();
    artifacts.install(
        cluster.kubeconfig_path()?,
        &images,
        &[insecure.as_str()],
        &cluster.dir().join("istioctl.log"),
    )?;
    println!(
        "istioctl install to istiod ready: {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // The modules and the services' images, published as a user would.
    let repository = format!("{registry}/meshguard");
    let flags = publish_for_install(&repository, TAG).await?;
    assert!(
        flags.iter().any(|f| f == "--authz-module-sha256"),
        "{flags:?}"
    );
    let call_image = format!("{repository}/call:{TAG}");
    artifacts.image_push(
        vec![
            format!("--file=/call={}", services_dir().join("call").display()),
            "--entrypoint=/call".into(),
            "--user=65532:65532".into(),
        ],
        &call_image,
    )?;

    let mesh = workspace().join("docs/examples/real-nodes.yaml");
    let mesh = mesh.display().to_string();
    let prometheus = cluster.prometheus_url().to_owned();
    let mut args = vec![
        "-f",
        mesh.as_str(),
        "--prometheus-address",
        prometheus.as_str(),
    ];
    args.extend(flags.iter().map(String::as_str));
    let install = meshctl_on(cluster.api()?, "install", &args).await;
    assert_eq!(install.code, Some(0), "{}", install.dump());

    let client = cluster.client().await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    wait_for(
        "every service Ready with its sidecar",
        Duration::from_secs(240),
        || {
            let deployments = deployments.clone();
            async move {
                let mut seen = Vec::new();
                for s in SERVICES {
                    let d = deployments.get(s).await?;
                    seen.push(d.status.and_then(|s| s.ready_replicas).unwrap_or(0));
                }
                Ok(if seen.iter().all(|r| *r >= 1) {
                    Ok(())
                } else {
                    Err(format!("ready replicas {seen:?}"))
                })
            }
        },
    )
    .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    for pod in pods.list(&Default::default()).await?.items {
        let spec = pod.spec.unwrap_or_default();
        let names: Vec<String> = spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .map(|c| c.name.clone())
            .collect();
        assert!(
            names.iter().any(|n| n == "istio-proxy"),
            "{:?} has a sidecar: {names:?}",
            pod.metadata.name
        );
    }

    // user-service's identity may call order-service, which calls payment-service.
    let allowed = call(
        &client,
        &call_image,
        NS,
        "as-user-service",
        "user-service",
        &[ORDERS],
    )
    .await?;
    assert_eq!(allowed.len(), 1, "{allowed:?}");
    assert_eq!(allowed[0]["status"], 200, "{allowed:?}");
    let body: Value = serde_json::from_str(allowed[0]["body"].as_str().unwrap_or_default())?;
    assert!(
        body.to_string().contains("payment-service"),
        "order-service's answer holds payment-service's: {body}"
    );

    // Another service account in the namespace: denied by order-service's filter.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), NS);
    accounts
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "intruder"}}))?,
        )
        .await?;
    let denied = call(
        &client,
        &call_image,
        NS,
        "intruder-http",
        "intruder",
        &[ORDERS],
    )
    .await?;
    assert_eq!(denied[0]["status"], 403, "{denied:?}");
    assert_eq!(denied[0]["reason"], "unknown_peer", "{denied:?}");
    let grpc = call(
        &client,
        &call_image,
        NS,
        "intruder-grpc",
        "intruder",
        &[
            "--grpc",
            "http://order-service.meshguard:5000/meshguard.Orders/Get",
        ],
    )
    .await?;
    assert_eq!(grpc[0]["grpc_status"], "7", "{grpc:?}");

    // A pod outside the mesh (no sidecar): order-service's sidecar wants mTLS.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "outside"}}))?,
        )
        .await?;
    wait_for(
        "outside's default service account",
        Duration::from_secs(60),
        || {
            let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "outside");
            async move {
                Ok(match accounts.get_opt("default").await? {
                    Some(_) => Ok(()),
                    None => Err("none yet".to_owned()),
                })
            }
        },
    )
    .await?;
    let outside = call(
        &client,
        &call_image,
        "outside",
        "plaintext",
        "default",
        &[ORDERS],
    )
    .await?;
    assert!(
        outside[0].get("error").is_some(),
        "a plaintext caller is refused: {outside:?}"
    );
    Ok(())
}
