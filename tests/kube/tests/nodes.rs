//! The local cluster's real nodes: the reference services run as containers on a CPU node and a
//! GPU node (kubelet, containerd, runc, the CNI bridge), a request goes user → order → payment
//! through Service names (CoreDNS) and ClusterIPs (kube-proxy), and stopping the cluster leaves
//! nothing behind: no process, mount, cgroup, network interface, nftables table or changed
//! forwarding setting.
//!
//! Needs root, Debian's containerd, runc and nftables, the node programs
//! (`tests/kube/build-cluster-bins.sh`) and the reference services' static binaries
//! (`scripts/test.sh` builds all of them).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use meshguard_testcluster::wait::until as wait_for;
use meshguard_testcluster::{oci, LocalCluster, LocalClusterOptions};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const NAMESPACE: &str = "shop";
/// The services, the node pool each runs in, and whether it needs the GPU.
const SERVICES: [(&str, bool); 3] = [
    ("user-service", false),
    ("order-service", false),
    ("payment-service", true),
];

fn services_dir() -> PathBuf {
    std::env::var_os("MESHGUARD_SERVICES_DIR").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/services/x86_64-unknown-linux-musl/services")
        },
        PathBuf::from,
    )
}

fn image(service: &str) -> String {
    format!("meshguard.invalid/{service}:test")
}

/// The Deployment and Service of one reference service, as any cluster would run it: the GPU
/// one in the GPU pool (its label, its taint tolerated, one `nvidia.com/gpu`), the others in
/// the CPU pool; both only on real nodes.
fn objects(service: &str, gpu: bool) -> Result<(Deployment, Service), serde_json::Error> {
    let pool = if gpu { "gpu-pool" } else { "cpu-pool" };
    let mut container = json!({
        "name": service,
        "image": image(service),
        // Imported into each node's runtime: nothing is pulled.
        "imagePullPolicy": "Never",
        "ports": [{"containerPort": 5000}],
        "env": [{"name": "PAYMENT_WORK_ROUNDS", "value": "1000"}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": 5000}, "periodSeconds": 1},
        "securityContext": {"runAsNonRoot": true, "allowPrivilegeEscalation": false},
    });
    let mut tolerations = json!([]);
    if gpu {
        container["resources"] = json!({"limits": {"nvidia.com/gpu": "1"}});
        tolerations =
            json!([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]);
    }
    let deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": service, "namespace": NAMESPACE},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": service}},
            "template": {
                "metadata": {"labels": {"app": service}},
                "spec": {
                    "nodeSelector": {"cloud.google.com/gke-nodepool": pool, "meshguard.io/node": "real"},
                    "tolerations": tolerations,
                    "terminationGracePeriodSeconds": 5,
                    "containers": [container],
                },
            },
        },
    }))?;
    let svc = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": service, "namespace": NAMESPACE},
        "spec": {"selector": {"app": service}, "ports": [{"name": "http", "port": 5000}]},
    }))?;
    Ok((deployment, svc))
}

/// One HTTP/1.1 GET to `addr` (`IP:PORT`): the status and the body.
async fn get(addr: &str, path: &str) -> Result<(u16, String), Box<dyn std::error::Error>> {
    let mut stream =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
            .await??;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await??;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no HTTP status in {text:?}"))?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    Ok((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_nodes_run_the_reference_services_end_to_end_and_leave_nothing_behind() -> TestResult {
    let started = Instant::now();
    let cluster = LocalCluster::start(LocalClusterOptions::real_nodes_only(1, 1)).await?;
    println!("cluster with real nodes Ready in {:?}", started.elapsed());
    let footprint = cluster
        .real_nodes_footprint()
        .ok_or("the cluster has no real nodes")?;
    // While the nodes run, the check sees each kind of thing they leave on the machine: it could
    // fail after stop.
    let running = footprint.leftovers();
    for kind in [
        "in a node's mount namespace",
        "still running",
        "cgroup ",
        "network interface mgnode0",
        "network interface mgnode1",
        "nftables ip kube-proxy",
        "net.ipv4.ip_forward",
    ] {
        if footprint.ip_forward_before == "1" && kind == "net.ipv4.ip_forward" {
            continue; // forwarding was already on: nothing to put back
        }
        assert!(
            running.iter().any(|l| l.contains(kind)),
            "while running, the check sees {kind:?}: {running:#?}"
        );
    }
    let result = run_services(&cluster).await;
    if result.is_err() {
        eprintln!("cluster folder: {}", cluster.dir().display());
    }
    cluster.stop()?;
    let left = footprint.leftovers();
    result?;
    assert!(left.is_empty(), "left behind after stop: {left:#?}");
    Ok(())
}

async fn run_services(cluster: &LocalCluster) -> TestResult {
    let nodes = cluster.real_nodes();
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        names,
        ["real-cpu-1", "real-gpu-1"],
        "the nodes this test uses"
    );
    let dir = tempfile::tempdir()?;
    for (service, _) in SERVICES {
        let binary = std::fs::read(services_dir().join(service))?;
        let archive = dir.path().join(format!("{service}.tar"));
        std::fs::write(
            &archive,
            oci::binary_image_archive(&image(service), service, &binary, "65532:65532"),
        )?;
        cluster.import_image(&archive)?;
    }

    let client = cluster.client().await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?,
        )
        .await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    for (service, gpu) in SERVICES {
        let (d, s) = objects(service, gpu)?;
        deployments.create(&PostParams::default(), &d).await?;
        services.create(&PostParams::default(), &s).await?;
    }
    let installed = Instant::now();
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let placed = wait_for("every pod Ready", Duration::from_secs(120), || {
        let pods = pods.clone();
        async move {
            let list = pods.list(&ListParams::default()).await?;
            let ready: Vec<(String, String, String)> = list
                .items
                .iter()
                .filter(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                })
                .map(|p| {
                    let app = p
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("app"))
                        .cloned()
                        .unwrap_or_default();
                    let node = p
                        .spec
                        .as_ref()
                        .and_then(|s| s.node_name.clone())
                        .unwrap_or_default();
                    let ip = p
                        .status
                        .as_ref()
                        .and_then(|s| s.pod_ip.clone())
                        .unwrap_or_default();
                    (app, node, ip)
                })
                .collect();
            Ok(if ready.len() == SERVICES.len() {
                Ok(ready)
            } else {
                Err(format!("{} of {} pods Ready", ready.len(), SERVICES.len()))
            })
        }
    })
    .await?;
    println!(
        "pods Ready {:?} after creating them: {placed:?}",
        installed.elapsed()
    );
    for (app, node, ip) in &placed {
        let (expected_node, subnet) = if app == "payment-service" {
            ("real-gpu-1", "10.245.1.")
        } else {
            ("real-cpu-1", "10.245.0.")
        };
        assert_eq!(node, expected_node, "{app}'s node");
        assert!(
            ip.starts_with(subnet),
            "{app}'s address {ip} is in its node's subnet"
        );
    }

    // From the host through kube-proxy to user-service's ClusterIP; from there through
    // CoreDNS's names and the Services to order-service, and across nodes to payment-service.
    let user = services.get("user-service").await?;
    let cluster_ip = user
        .spec
        .and_then(|s| s.cluster_ip)
        .ok_or("user-service has no ClusterIP")?;
    let addr = format!("{cluster_ip}:5000");
    let body = wait_for(
        "user → order → payment",
        Duration::from_secs(30),
        || {
            let addr = addr.clone();
            async move {
                let (status, body) = get(&addr, "/users/42/orders").await?;
                Ok(if status == 200 {
                    Ok(body)
                } else {
                    Err(format!("{status}: {body}"))
                })
            }
        },
    )
    .await?;
    let answer: serde_json::Value = serde_json::from_str(&body)?;
    // Each hop names its service and the pod that answered (its HOSTNAME, the pod's name).
    for (hop, app) in [
        (&answer, "user-service"),
        (&answer["orders"], "order-service"),
        (&answer["orders"]["payment"], "payment-service"),
    ] {
        assert_eq!(hop["service"], json!(app), "{body}");
        assert!(
            hop["pod"]
                .as_str()
                .is_some_and(|p| p.starts_with(&format!("{app}-"))),
            "{app} answered from its pod: {body}"
        );
    }
    assert_eq!(
        answer["orders"]["payment"]["gpu_visible"],
        json!(false),
        "the GPU node advertises nvidia.com/gpu as an extended resource, no device: {body}"
    );

    // The pods' real CPU, as the autoscalers read it: the kubelets' resource metrics through
    // metrics-server (what the HPA reads), and cAdvisor's counters in Prometheus (what KEDA's
    // query reads), each labelled with its pod.
    let metrics = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "metrics.k8s.io",
        "v1beta1",
        "PodMetrics",
    ));
    let pod_metrics: Api<DynamicObject> = Api::namespaced_with(client.clone(), NAMESPACE, &metrics);
    let measured = Instant::now();
    wait_for(
        "metrics.k8s.io for every pod",
        Duration::from_secs(90),
        || {
            let pod_metrics = pod_metrics.clone();
            async move {
                let list = pod_metrics.list(&ListParams::default()).await?;
                let with_cpu = list
                    .items
                    .iter()
                    .filter(|m| {
                        m.data["containers"]
                            .as_array()
                            .is_some_and(|c| c.iter().any(|c| c["usage"]["cpu"].is_string()))
                    })
                    .count();
                Ok(if with_cpu == SERVICES.len() {
                    Ok(())
                } else {
                    Err(format!("{with_cpu} of {} pods measured", SERVICES.len()))
                })
            }
        },
    )
    .await?;
    println!(
        "metrics.k8s.io measured every pod after {:?}",
        measured.elapsed()
    );
    let query = format!(
        "container_cpu_usage_seconds_total{{namespace=\"{NAMESPACE}\",container!=\"\",pod!=\"\"}}"
    );
    let series = wait_for(
        "cAdvisor's CPU counters in Prometheus",
        Duration::from_secs(90),
        || {
            let query = query.clone();
            async move {
                let answer = cluster.prometheus_query(&query).await?;
                let pods: Vec<String> = answer["data"]["result"]
                    .as_array()
                    .map(|r| {
                        r.iter()
                            .filter_map(|s| s["metric"]["pod"].as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                Ok(
                    if SERVICES
                        .iter()
                        .all(|(svc, _)| pods.iter().any(|p| p.starts_with(&format!("{svc}-"))))
                    {
                        Ok(pods)
                    } else {
                        Err(format!("series for pods {pods:?}"))
                    },
                )
            }
        },
    )
    .await?;
    println!("Prometheus has cAdvisor's CPU counter of {series:?}");
    Ok(())
}
