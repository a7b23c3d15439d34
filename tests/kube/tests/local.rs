//! The local cluster itself: pods are scheduled onto kwok's nodes and run, the simulated load is
//! divided over the running pods and reaches metrics-server and Prometheus, and stopping the
//! cluster stops every process it started.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use meshguard_testcluster::load::KWOK_CPU_ANNOTATION;
use meshguard_testcluster::wait::until as wait_for;
use meshguard_testcluster::{LocalCluster, LocalClusterOptions};
use serde_json::json;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn alive(pid: u32) -> bool {
    // Signal 0 checks existence; a zombie of ours would still count, but the cluster reaps.
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

async fn shares(pods: &Api<Pod>) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let mut out: Vec<String> = pods
        .list(&ListParams::default().labels("app=load-test"))
        .await?
        .items
        .into_iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
        .map(|p| {
            p.metadata
                .annotations
                .and_then(|a| a.get(KWOK_CPU_ANNOTATION).cloned())
                .unwrap_or_default()
        })
        .collect();
    out.sort();
    Ok(out)
}

#[tokio::test]
async fn pods_run_load_is_shared_and_measured_and_every_process_stops() -> TestResult {
    let cluster = LocalCluster::start(LocalClusterOptions {
        cpu_nodes: 1,
        gpu_nodes: 1,
        ..LocalClusterOptions::default()
    })
    .await?;
    let pids = cluster.pids();
    assert_eq!(
        pids.len(),
        10,
        "eight components plus the API server and etcd: {pids:?}"
    );
    for (name, pid) in &pids {
        assert!(alive(*pid), "{name} (pid {pid}) runs");
    }
    let client = cluster.client().await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    deployments
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "load-test"},
                "spec": {
                    "replicas": 3,
                    "selector": {"matchLabels": {"app": "load-test"}},
                    "template": {
                        "metadata": {"labels": {"app": "load-test"}},
                        "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1",
                                                 "resources": {"requests": {"cpu": "100m"}}}]},
                    },
                },
            }))?,
        )
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    // The scheduler keeps them off the tainted GPU node; kwok runs them.
    wait_for(
        "3 pods Running on the CPU node",
        Duration::from_secs(60),
        || async {
            let list = pods
                .list(&ListParams::default().labels("app=load-test"))
                .await?;
            let on_cpu = list
                .items
                .iter()
                .filter(|p| {
                    p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("cpu-pool-1")
                        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                })
                .count();
            Ok(if on_cpu == 3 {
                Ok(())
            } else {
                Err(format!("{on_cpu} of 3"))
            })
        },
    )
    .await?;

    cluster.set_load("default", "load-test", 3000).await?;
    wait_for(
        "3 cores shared by 3 pods",
        Duration::from_secs(30),
        || async {
            let s = shares(&pods).await?;
            Ok(if s == ["1000m", "1000m", "1000m"] {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            })
        },
    )
    .await?;
    deployments
        .patch(
            "load-test",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": 2}})),
        )
        .await?;
    wait_for(
        "3 cores shared by 2 pods",
        Duration::from_secs(60),
        || async {
            let s = shares(&pods).await?;
            Ok(if s == ["1500m", "1500m"] {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            })
        },
    )
    .await?;

    // metrics-server reports each pod at about its share (what the HPA reads) ...
    let metrics_path = "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods";
    wait_for(
        "metrics-server's pod metrics near 1.5 cores",
        Duration::from_secs(120),
        || async {
            let request = http::Request::get(metrics_path).body(Vec::new())?;
            let text = match client.request_text(request).await {
                Ok(t) => t,
                Err(e) => return Ok(Err(e.to_string())),
            };
            let list: serde_json::Value = serde_json::from_str(&text)?;
            let cpus: Vec<f64> = list["items"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .filter(|i| {
                    i["metadata"]["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with("load-test-"))
                })
                .filter_map(|i| i["containers"][0]["usage"]["cpu"].as_str().map(nanocores))
                .collect();
            Ok(
                if cpus.len() == 2 && cpus.iter().all(|c| (c - 1.5).abs() < 0.3) {
                    Ok(())
                } else {
                    Err(format!("{cpus:?}"))
                },
            )
        },
    )
    .await?;
    // ... and Prometheus the rate of the counter, about 3 cores in all (what KEDA reads).
    wait_for("Prometheus' rate near 3 cores", Duration::from_secs(120), || async {
        let answer = cluster
            .prometheus_query(
                "sum(rate(container_cpu_usage_seconds_total{namespace=\"default\",pod=~\"load-test-.*\"}[30s]))",
            )
            .await?;
        let value = answer["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok());
        Ok(match value {
            Some(v) if (v - 3.0).abs() < 0.5 => Ok(()),
            other => Err(format!("{other:?}")),
        })
    })
    .await?;

    cluster.stop()?;
    for (name, pid) in &pids {
        assert!(!alive(*pid), "{name} (pid {pid}) is stopped");
    }
    Ok(())
}

/// `1500000000n` / `1500m` / `2` as cores.
fn nanocores(q: &str) -> f64 {
    if let Some(n) = q.strip_suffix('n') {
        n.parse::<f64>().unwrap_or(f64::NAN) / 1e9
    } else if let Some(u) = q.strip_suffix('u') {
        u.parse::<f64>().unwrap_or(f64::NAN) / 1e6
    } else if let Some(m) = q.strip_suffix('m') {
        m.parse::<f64>().unwrap_or(f64::NAN) / 1e3
    } else {
        q.parse().unwrap_or(f64::NAN)
    }
}
