//! The system on real nodes: `meshctl publish --services` pushes the reference services' images
//! to a registry on loopback, `meshctl install --image-registry` runs them on the local
//! cluster's real nodes (kubelets with containerd, which pull those images), and real requests
//! through user → order → payment drive the autoscalers:
//!
//! - payment-service runs on the GPU node only, the others never there;
//! - every request is answered, at a steady rate, while the autoscalers add and remove pods;
//! - order-service's HPA scales it out on its real CPU (the kubelet's resource metrics through
//!   metrics-server) and KEDA takes user-service to 4 on the rate of order-service's CPU
//!   (cAdvisor's `container_cpu_usage_seconds_total`, scraped from the kubelets by Prometheus);
//! - both come back to 1 once the load ends.
//!
//! The mesh is `docs/examples/real-nodes.yaml`: the reference mesh with CPU requests and
//! thresholds sized for one machine. Needs root and everything `scripts/test.sh` installs and
//! builds (the registry, the node programs, the filters and the services' static binaries).

mod common;

use std::time::{Duration, Instant};

use common::{install_mesh_file, publish_for_install, workspace, TestResult};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use meshguard_testcluster::registry::Registry;
use meshguard_testcluster::traffic::{self, Traffic};
use meshguard_testcluster::wait::until as wait_for;
use meshguard_testcluster::{LocalCluster, LocalClusterOptions};

type BoxError = Box<dyn std::error::Error>;

const NS: &str = "meshguard";
const USER: &str = "user-service";
const ORDER: &str = "order-service";
const PAYMENT: &str = "payment-service";
const SERVICES: [&str; 3] = [USER, ORDER, PAYMENT];
/// Requests per second through user-service: about 20m of a core in order-service (a tenth of
/// a millisecond to a third of one per request), twice its HPA's target with one pod and five
/// times KEDA's threshold.
const RATE: u32 = 60;

/// `(spec.replicas, readyReplicas)` of each service's Deployment.
async fn replicas(client: &Client) -> Result<Vec<(i32, i32)>, BoxError> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let mut out = Vec::new();
    for s in SERVICES {
        let d = api.get(s).await?;
        out.push((
            d.spec.and_then(|s| s.replicas).unwrap_or(1),
            d.status.and_then(|s| s.ready_replicas).unwrap_or(0),
        ));
    }
    Ok(out)
}

/// Every pod of each service, by the node it is on.
async fn placement(client: &Client) -> Result<Vec<(String, String)>, BoxError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    Ok(pods
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|p| {
            let app = p.metadata.labels?.get("app.kubernetes.io/name")?.clone();
            let node = p.spec?.node_name?;
            Some((app, node))
        })
        .collect())
}

/// KEDA's query for user-service and its threshold, as installed.
async fn keda_trigger(client: &Client) -> Result<(String, f64), BoxError> {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "keda.sh",
        "v1alpha1",
        "ScaledObject",
    ));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &resource);
    let object = api.get(USER).await?;
    let metadata = &object.data["spec"]["triggers"][0]["metadata"];
    let query = metadata["query"]
        .as_str()
        .ok_or("user-service's trigger has no query")?
        .to_owned();
    let threshold = metadata["threshold"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .ok_or("user-service's trigger has no threshold")?;
    Ok((query, threshold))
}

fn assert_placement(placed: &[(String, String)]) {
    for (app, node) in placed {
        if app == PAYMENT {
            assert_eq!(node, "real-gpu-1", "{app} runs on the GPU node only");
        } else {
            assert_ne!(node, "real-gpu-1", "{app} never runs on the GPU node");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_requests_scale_order_service_and_user_service_on_real_nodes_and_back() -> TestResult {
    let cluster = LocalCluster::start(LocalClusterOptions::real_nodes_only(1, 1)).await?;
    let dir = tempfile::tempdir()?;
    let registry = Registry::start(&dir.path().join("registry"), None, None)?;
    cluster.trust_plain_http_registry(registry.addr())?;
    let result = run(&cluster, registry.addr()).await;
    if result.is_err() {
        eprintln!("cluster folder: {}", cluster.dir().display());
    }
    let left = cluster.stop_and_list_leftovers()?;
    drop(registry);
    result?;
    assert!(left.is_empty(), "left behind after stop: {left:#?}");
    Ok(())
}

async fn run(cluster: &LocalCluster, registry: &str) -> TestResult {
    // The images, pushed as a user would; the flags it prints for install: the modules with
    // their sha256, the images' registry.
    let flags = publish_for_install(&format!("{registry}/meshguard"), "system-test").await?;
    let mesh = workspace().join("docs/examples/real-nodes.yaml");
    let installed = Instant::now();
    let install = install_mesh_file(cluster, &mesh, &[], &flags).await?;
    assert_eq!(install.code, Some(0), "{}", install.dump());

    let client = cluster.client().await?;
    wait_for("every pod Ready", Duration::from_secs(180), || async {
        let r = replicas(&client).await?;
        Ok(
            if r.iter().all(|(want, ready)| ready >= want && *want > 0) {
                Ok(())
            } else {
                Err(format!("{r:?}"))
            },
        )
    })
    .await?;
    println!(
        "meshctl install to every pod Ready (images pulled from the registry): {:.1}s",
        installed.elapsed().as_secs_f64()
    );
    assert_placement(&placement(&client).await?);

    // Real requests through user-service's ClusterIP (kube-proxy), then Service names.
    let services_api: Api<Service> = Api::namespaced(client.clone(), NS);
    let ip = services_api
        .get(USER)
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .ok_or("user-service has no ClusterIP")?;
    // Serving: one request answered end to end (kube-proxy and CoreDNS have the new Services).
    let addr = format!("{ip}:5000");
    let serving = Instant::now();
    wait_for(
        "user → order → payment answering",
        Duration::from_secs(60),
        || async { Ok(traffic::get_once(&addr, "/users/1/orders").await) },
    )
    .await?;
    println!(
        "every pod Ready to the chain answering: {:.1}s",
        serving.elapsed().as_secs_f64()
    );
    let traffic = Traffic::start(&addr, RATE, |n| format!("/users/{}/orders", n % 1000));
    let load_start = Instant::now();
    // When KEDA's query crosses what asks for 4 replicas (3 × its threshold).
    let (query, threshold) = keda_trigger(&client).await?;
    let crossed: std::cell::Cell<Option<Duration>> = std::cell::Cell::new(None);
    let at_four = wait_for(
        "order-service scaled out and user-service at 4",
        Duration::from_secs(300),
        || async {
            if crossed.get().is_none() {
                let answer = cluster.prometheus_query(&query).await?;
                let value: f64 = answer["data"]["result"][0]["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0.0);
                if value > 3.0 * threshold {
                    crossed.set(Some(load_start.elapsed()));
                }
            }
            let r = replicas(&client).await?;
            let stats = traffic.stats();
            Ok(if r[1].0 > 1 && r[0].0 == 4 {
                Ok(r)
            } else {
                Err(format!(
                    "user-service {:?}, order-service {:?}; {} answered, {} failed",
                    r[0], r[1], stats.ok, stats.failed
                ))
            })
        },
    )
    .await?;
    let took = load_start.elapsed();
    println!(
        "load start ({RATE}/s) to order-service scaled out and user-service at 4: {:.1}s ({at_four:?}); \
         KEDA's query crossed 3 x {threshold} after {:.1}s, {:.1}s before",
        took.as_secs_f64(),
        crossed.get().map_or(f64::NAN, |c| c.as_secs_f64()),
        crossed
            .get()
            .map_or(f64::NAN, |c| took.saturating_sub(c).as_secs_f64()),
    );
    // The new pods serve too, on their nodes.
    wait_for("the added pods Ready", Duration::from_secs(120), || async {
        let r = replicas(&client).await?;
        Ok(if r[0].1 >= 4 && r[1].1 >= 2 {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        })
    })
    .await?;
    assert_placement(&placement(&client).await?);

    // The load ends: both come back to 1, while a trickle of requests keeps being answered.
    traffic.set_rate(5);
    let load_end = Instant::now();
    wait_for(
        "order-service and user-service back at 1",
        Duration::from_secs(300),
        || async {
            let r = replicas(&client).await?;
            Ok(if r[0] == (1, 1) && r[1] == (1, 1) {
                Ok(())
            } else {
                Err(format!("user-service {:?}, order-service {:?}", r[0], r[1]))
            })
        },
    )
    .await?;
    println!(
        "load end to both back at 1: {:.1}s",
        load_end.elapsed().as_secs_f64()
    );
    let stats = traffic.stop().await;
    println!(
        "requests: {} answered, {} failed; per second: {:?}",
        stats.ok, stats.failed, stats.per_second
    );
    assert!(stats.ok > u64::from(RATE) * 30, "the load ran: {stats:?}");
    assert_eq!(
        stats.failed, 0,
        "every request answered while pods were added and removed: {:?}",
        stats.errors
    );
    Ok(())
}
