//! The system runs: `meshctl install` onto the local cluster (meshguard-testcluster's
//! `LocalCluster`: the real kube-apiserver, scheduler and controller manager, metrics-server,
//! Prometheus and KEDA, with kwok's simulated nodes and CPU usage), and the real controllers
//! act on what it applied:
//!
//! - placement: the scheduler puts payment-service on the GPU pool and nothing else there; with
//!   no GPU pool payment-service stays Pending and `meshctl status` says why;
//! - the HPA scales order-service out on its CPU and back in when the load ends;
//! - KEDA scales user-service from 1 to 4 on the rate of order-service's CPU and back to 1,
//!   while the sum of the raw counter (the query of the original write-up) keeps its target
//!   scaled up after the load ends;
//! - uninstall also removes what the controllers derived (ReplicaSets, pods, KEDA's HPA), and
//!   does not list the Endpoints the endpoints controller copied our labels onto as its own.
//!
//! Every wait is on a condition with a deadline; nothing sleeps for a fixed time to let
//! something happen.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{meshctl_on, TestResult, AUTHZ_MODULE, METRICS_MODULE};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Endpoints, Namespace, Node, Pod};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use meshguard_testcluster::wait::until as wait_for;
use meshguard_testcluster::{LocalCluster, LocalClusterOptions, CPU_POOL, GPU_POOL};
use serde_json::json;

type BoxError = Box<dyn std::error::Error>;

const NS: &str = "meshguard";
const ORDER: &str = "order-service";
const USER: &str = "user-service";
const PAYMENT: &str = "payment-service";
const SERVICES: [&str; 3] = [USER, ORDER, PAYMENT];

async fn install_on(cluster: &LocalCluster, extra: &[&str]) -> Result<(), BoxError> {
    let prometheus = cluster.prometheus_url().to_owned();
    let mut args = vec![
        "--authz-module",
        AUTHZ_MODULE,
        "--metrics-module",
        METRICS_MODULE,
        "--prometheus-address",
        prometheus.as_str(),
    ];
    args.extend_from_slice(extra);
    let run = meshctl_on(cluster.api()?, "install", &args).await;
    if run.code != Some(0) {
        return Err(format!("meshctl install failed: {}", run.dump()).into());
    }
    Ok(())
}

/// The node pool of every node.
async fn pools(client: &Client) -> Result<BTreeMap<String, String>, BoxError> {
    let nodes: Api<Node> = Api::all(client.clone());
    Ok(nodes
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|n| {
            let name = n.metadata.name?;
            let pool = n
                .metadata
                .labels?
                .get("cloud.google.com/gke-nodepool")?
                .clone();
            Some((name, pool))
        })
        .collect())
}

fn running(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

async fn pods_of(client: &Client, service: &str) -> Result<Vec<Pod>, BoxError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let selector = format!("app.kubernetes.io/name={service}");
    Ok(pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items)
}

/// `(spec.replicas, readyReplicas)` of a Deployment.
async fn replicas(client: &Client, service: &str) -> Result<(i32, i32), BoxError> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let d = api.get(service).await?;
    let want = d.spec.and_then(|s| s.replicas).unwrap_or(1);
    let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
    Ok((want, ready))
}

/// Every running pod of each service is on a node of its pool, and each service has pods.
async fn assert_pools(client: &Client, want: &[(&str, &str)]) -> Result<(), BoxError> {
    let pools = pools(client).await?;
    for (service, pool) in want {
        let pods = pods_of(client, service).await?;
        assert!(!pods.is_empty(), "{service} has pods");
        for pod in pods.iter().filter(|p| running(p)) {
            let node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .ok_or("a running pod has a node")?;
            let on = pools.get(&node).ok_or(format!("node {node} has a pool"))?;
            assert_eq!(on, pool, "{service} pod on {node}");
        }
    }
    Ok(())
}

/// Waits until every service has all its replicas ready.
async fn all_running(client: &Client, within: Duration) -> Result<(), BoxError> {
    wait_for("every service Running", within, || async {
        let mut missing = Vec::new();
        for s in SERVICES {
            let (want, ready) = replicas(client, s).await?;
            if ready < want || want == 0 {
                missing.push(format!("{s} {ready}/{want}"));
            }
        }
        Ok(if missing.is_empty() {
            Ok(())
        } else {
            Err(missing.join(", "))
        })
    })
    .await
}

#[tokio::test]
async fn payment_service_runs_only_on_gpu_nodes_and_uninstall_removes_what_controllers_made(
) -> TestResult {
    let cluster = LocalCluster::start(LocalClusterOptions::default()).await?;
    let client = cluster.client().await?;
    let started = Instant::now();
    // --wait returns once every Deployment has rolled out, which the controllers now do.
    install_on(&cluster, &["--wait", "--timeout", "2m"]).await?;
    all_running(&client, Duration::from_secs(10)).await?;
    eprintln!(
        "install to every pod Running: {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // Placement, as the real scheduler decided it.
    assert_pools(
        &client,
        &[(USER, CPU_POOL), (ORDER, CPU_POOL), (PAYMENT, GPU_POOL)],
    )
    .await?;
    let status = meshctl_on(
        cluster.api()?,
        "status",
        &[
            "--authz-module",
            AUTHZ_MODULE,
            "--metrics-module",
            METRICS_MODULE,
            "--prometheus-address",
            cluster.prometheus_url(),
        ],
    )
    .await;
    assert!(
        status.stdout.contains("1 on gpu-pool"),
        "status shows the pool: {}",
        status.dump()
    );

    // KEDA made an HPA for user-service; the ReplicaSets and pods come from the controllers.
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), NS);
    wait_for(
        "KEDA's HPA for user-service",
        Duration::from_secs(60),
        || async {
            Ok(match hpas.get_opt("keda-hpa-user-service").await? {
                Some(_) => Ok(()),
                None => Err("absent".to_owned()),
            })
        },
    )
    .await?;
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), NS);
    assert_eq!(
        replica_sets.list(&ListParams::default()).await?.items.len(),
        3
    );

    // The endpoints controller copies each Service's labels, ours included, onto its Endpoints;
    // uninstall leaves those to go with their Service instead of listing them as its own.
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), NS);
    let ours = ListParams::default().labels(&meshguard_manifests::ownership_selector(NS));
    wait_for(
        "the endpoints controller's Endpoints, with our labels",
        Duration::from_secs(60),
        || async {
            let n = endpoints.list(&ours).await?.items.len();
            Ok(if n > 0 {
                Ok(())
            } else {
                Err("none yet".to_owned())
            })
        },
    )
    .await?;

    let run = meshctl_on(cluster.api()?, "uninstall", &["--wait", "--timeout", "2m"]).await;
    assert_eq!(run.code, Some(0), "{}", run.dump());
    let deleted: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("] deleted "))
        .collect();
    assert!(
        deleted.iter().any(|l| l.contains(" deleted Service ")),
        "{}",
        run.dump()
    );
    assert!(
        !deleted.iter().any(|l| l.contains(" deleted Endpoints ")),
        "uninstall listed the controller's Endpoints: {}",
        run.dump()
    );
    let namespaces: Api<Namespace> = Api::all(client.clone());
    wait_for(
        "the namespace and everything in it gone",
        Duration::from_secs(120),
        || async {
            let pods = Api::<Pod>::namespaced(client.clone(), NS)
                .list(&ListParams::default())
                .await?
                .items
                .len();
            let rs = replica_sets.list(&ListParams::default()).await?.items.len();
            let hpa = hpas.list(&ListParams::default()).await?.items.len();
            let ns = namespaces.get_opt(NS).await?.is_some();
            Ok(if pods + rs + hpa == 0 && !ns {
                Ok(())
            } else {
                Err(format!(
                    "{pods} pods, {rs} ReplicaSets, {hpa} HPAs, namespace present: {ns}"
                ))
            })
        },
    )
    .await?;
    cluster.stop()?;
    Ok(())
}

#[tokio::test]
async fn without_a_gpu_pool_payment_service_stays_pending_and_status_says_why() -> TestResult {
    let cluster = LocalCluster::start(LocalClusterOptions {
        gpu_nodes: 0,
        ..LocalClusterOptions::default()
    })
    .await?;
    let client = cluster.client().await?;
    // Preflight refuses a cluster where payment-service cannot run; install anyway.
    let preflight = common::preflight(cluster.api()?, &[]).await;
    assert_eq!(preflight.code, Some(1), "{}", preflight.dump());
    install_on(&cluster, &["--skip-preflight"]).await?;

    let why = wait_for(
        "payment-service unschedulable",
        Duration::from_secs(90),
        || async {
            let pods = pods_of(&client, PAYMENT).await?;
            let condition = pods.iter().find_map(|p| {
                p.status
                    .as_ref()?
                    .conditions
                    .as_ref()?
                    .iter()
                    .find(|c| c.type_ == "PodScheduled" && c.status == "False")
                    .and_then(|c| c.message.clone())
            });
            Ok(condition.ok_or(format!(
                "{} pod(s), none reported unschedulable",
                pods.len()
            )))
        },
    )
    .await?;
    assert!(
        why.contains("nvidia.com/gpu") || why.contains("affinity"),
        "{why}"
    );
    // The other services run; nothing runs payment-service.
    wait_for(
        "user and order running",
        Duration::from_secs(90),
        || async {
            let (u, o) = (
                replicas(&client, USER).await?,
                replicas(&client, ORDER).await?,
            );
            Ok(if u.1 >= 1 && o.1 >= 1 {
                Ok(())
            } else {
                Err(format!("user {u:?}, order {o:?}"))
            })
        },
    )
    .await?;
    assert!(pods_of(&client, PAYMENT).await?.iter().all(|p| !running(p)));

    let status = meshctl_on(
        cluster.api()?,
        "status",
        &[
            "--authz-module",
            AUTHZ_MODULE,
            "--metrics-module",
            METRICS_MODULE,
        ],
    )
    .await;
    let line = status
        .stdout
        .lines()
        .find(|l| l.starts_with("Deployment") && l.contains(PAYMENT))
        .ok_or(format!("no payment-service line: {}", status.dump()))?;
    assert!(line.contains("0/1 ready"), "{line}");
    assert!(line.contains("1 Pending:"), "{line}");
    assert!(
        line.contains("Insufficient nvidia.com/gpu") || line.contains("affinity"),
        "the scheduler's reason: {line}"
    );
    cluster.stop()?;
    Ok(())
}

/// A ScaledObject with the query of the original write-up (the sum of the raw CPU counter),
/// on a Deployment of its own: what user-service would do with that query.
async fn counter_query_target(client: &Client, prometheus: &str) -> Result<(), BoxError> {
    let ns = "counter-query";
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}}))?,
        )
        .await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    wait_for(
        "the default ServiceAccount",
        Duration::from_secs(30),
        || async {
            let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> =
                Api::namespaced(client.clone(), ns);
            Ok(sa
                .get_opt("default")
                .await?
                .map(|_| ())
                .ok_or("absent".to_owned()))
        },
    )
    .await?;
    deployments
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "counter-query-user"},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"app": "counter-query-user"}},
                    "template": {
                        "metadata": {"labels": {"app": "counter-query-user"}},
                        "spec": {
                            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                                "nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu", "operator": "NotIn", "values": ["true"]}]}]}}},
                            "containers": [{"name": "app", "image": "example.invalid/app:1",
                                            "resources": {"requests": {"cpu": "100m"}}}],
                        },
                    },
                },
            }))?,
        )
        .await?;
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "keda.sh",
        "v1alpha1",
        "ScaledObject",
    ));
    let scaled: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
        "metadata": {"name": "counter-query-user", "namespace": ns},
        "spec": {
            "scaleTargetRef": {"name": "counter-query-user"},
            "minReplicaCount": 1, "maxReplicaCount": 4,
            "pollingInterval": 15,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {"scaleDown": {
                "stabilizationWindowSeconds": 15,
                "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]}}}},
            "triggers": [{
                "type": "prometheus",
                "metadata": {
                    "serverAddress": prometheus,
                    // The raw counter, summed: core-seconds since each pod started. One
                    // core-second per replica: whichever order-service pod the ReplicaSet keeps
                    // after the load (the scale-down may keep a young one), it ran under load
                    // for at least half a minute at 0.2 cores or more, so its counter alone
                    // keeps this target above 1.
                    "query": "sum(container_cpu_usage_seconds_total{pod=~\"order-service-.*\"})",
                    "threshold": "1",
                },
            }],
        },
    }))?;
    scaled
        .patch(
            "counter-query-user",
            &PatchParams::apply("meshguard-tests").force(),
            &Patch::Apply(&object),
        )
        .await?;
    Ok(())
}

async fn desired(client: &Client, ns: &str, name: &str) -> Result<i32, BoxError> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    Ok(api
        .get(name)
        .await?
        .spec
        .and_then(|s| s.replicas)
        .unwrap_or(0))
}

/// Waits until the desired replicas of Deployment `ns/name` satisfy `ok`; returns them.
async fn wait_desired(
    client: &Client,
    (ns, name): (&str, &str),
    what: &str,
    within: Duration,
    ok: impl Fn(i32) -> bool,
) -> Result<i32, BoxError> {
    wait_for(what, within, || async {
        let n = desired(client, ns, name).await?;
        Ok(if ok(n) {
            Ok(n)
        } else {
            Err(format!("{n} replicas"))
        })
    })
    .await
}

#[tokio::test]
async fn autoscalers_follow_order_service_load_up_and_back_down() -> TestResult {
    let cluster = LocalCluster::start(LocalClusterOptions::default()).await?;
    let client = cluster.client().await?;
    install_on(&cluster, &["--fast-scale-down"]).await?;
    all_running(&client, Duration::from_secs(120)).await?;
    counter_query_target(&client, cluster.prometheus_url()).await?;
    wait_desired(
        &client,
        ("counter-query", "counter-query-user"),
        "the counter-query target running",
        Duration::from_secs(60),
        |n| n == 1,
    )
    .await?;
    assert_eq!(
        desired(&client, NS, USER).await?,
        1,
        "user-service idles at 1"
    );
    assert_eq!(
        desired(&client, NS, ORDER).await?,
        1,
        "order-service idles at 1"
    );

    // Load: 2 cores on order-service. Its HPA wants ceil(2 / (75 % of 250m)) = 11, capped at
    // 10; KEDA wants ceil(2 cores / 0.5 cores) = 4 user-service replicas.
    let load_start = Instant::now();
    cluster.set_load(NS, ORDER, 2000).await?;
    wait_desired(
        &client,
        (NS, ORDER),
        "order-service scaled out",
        Duration::from_secs(180),
        |n| n > 1,
    )
    .await?;
    eprintln!(
        "load start to order-service's first scale-up: {:.1}s",
        load_start.elapsed().as_secs_f64()
    );
    wait_desired(
        &client,
        (NS, USER),
        "user-service at 4",
        Duration::from_secs(240),
        |n| n == 4,
    )
    .await?;
    eprintln!(
        "load start to user-service at 4: {:.1}s",
        load_start.elapsed().as_secs_f64()
    );
    let peak = wait_desired(
        &client,
        (NS, ORDER),
        "order-service at its peak",
        Duration::from_secs(180),
        |n| n >= 8,
    )
    .await?;
    assert!(peak <= 10, "order-service stays within 10: {peak}");
    wait_desired(
        &client,
        ("counter-query", "counter-query-user"),
        "the counter-query target at 4",
        Duration::from_secs(180),
        |n| n == 4,
    )
    .await?;

    // The load ends: both autoscalers come back to 1.
    let load_end = Instant::now();
    cluster.set_load(NS, ORDER, 0).await?;
    wait_for(
        "order-service and user-service back at 1",
        Duration::from_secs(300),
        || async {
            let (o, u) = (
                desired(&client, NS, ORDER).await?,
                desired(&client, NS, USER).await?,
            );
            assert!(o <= 10, "order-service stays within 10: {o}");
            Ok(if o == 1 && u == 1 {
                Ok(())
            } else {
                Err(format!("order-service {o}, user-service {u}"))
            })
        },
    )
    .await?;
    eprintln!(
        "load end to both back at 1: {:.1}s",
        load_end.elapsed().as_secs_f64()
    );
    // With the raw counter, the target stays scaled up: the counter never goes down (only
    // the deleted pods' counters leave the sum, and what the remaining pod used stays in it).
    let stuck = desired(&client, "counter-query", "counter-query-user").await?;
    assert!(
        stuck > 1,
        "the summed counter keeps its target scaled up after the load ended: {stuck}"
    );
    cluster.stop()?;
    Ok(())
}

/// The documentation's four-service mesh file installs as it says: inventory-service runs on the
/// CPU pool its node selector names, payment-service still on the GPU pool, and KEDA scales
/// inventory-service on the file's own PromQL trigger when its CPU rises.
#[tokio::test]
async fn a_fourth_service_from_the_mesh_file_is_placed_and_scaled() -> TestResult {
    const INVENTORY: &str = "inventory-service";
    let file = format!(
        "{}/../docs/examples/four-services.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let cluster = LocalCluster::start(LocalClusterOptions::default()).await?;
    let client = cluster.client().await?;
    install_on(
        &cluster,
        &[
            "-f",
            &file,
            "--fast-scale-down",
            "--wait",
            "--timeout",
            "2m",
        ],
    )
    .await?;
    let (want, ready) = replicas(&client, INVENTORY).await?;
    assert_eq!((want, ready), (1, 1), "inventory-service rolled out");

    assert_pools(
        &client,
        &[
            (INVENTORY, CPU_POOL),
            (PAYMENT, GPU_POOL),
            (ORDER, CPU_POOL),
        ],
    )
    .await?;

    // 1 core on inventory-service: its `inventory-cpu` trigger (0.2 cores per replica) asks for
    // 5 replicas, within its maximum of 6.
    let load_start = Instant::now();
    cluster.set_load(NS, INVENTORY, 1000).await?;
    let n = wait_desired(
        &client,
        (NS, INVENTORY),
        "inventory-service scaled out by KEDA",
        Duration::from_secs(240),
        |n| n >= 4,
    )
    .await?;
    assert!(n <= 6, "inventory-service stays within 6: {n}");
    eprintln!(
        "load start to inventory-service at {n}: {:.1}s",
        load_start.elapsed().as_secs_f64()
    );
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), NS);
    let hpa = hpas.get("keda-hpa-inventory-service").await?;
    let metrics = hpa.spec.and_then(|s| s.metrics).unwrap_or_default();
    assert_eq!(
        metrics.len(),
        2,
        "both triggers reach KEDA's HPA: {metrics:?}"
    );
    cluster.stop()?;
    Ok(())
}
