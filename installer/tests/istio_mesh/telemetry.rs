//! The filters' metrics from real traffic: Prometheus scrapes the sidecars as the rendered
//! PodMonitor describes, every documented series is there with its labels and the counts of the
//! requests sent, every query of the docs and of the Grafana dashboard answers, and KEDA's
//! request-rate trigger scales user-service on the rate into order-service.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use kube::Client;
use meshguard_testcluster::queries::documented_queries;
use meshguard_testcluster::wait::until as wait_for;
use meshguard_testcluster::LocalCluster;
use serde_json::Value;

use super::{start_call, BoxError, TestResult, NS, ORDERS};

/// `(metric, labels)` → value, labels as `name=value` joined with `,` in the order queried.
type Series = BTreeMap<(String, String), f64>;

/// What each documented metric is summed by.
const METRICS: [(&str, &str); 4] = [
    (
        "meshguard_requests_total",
        "source, destination, method, code_class",
    ),
    (
        "meshguard_request_duration_milliseconds_count",
        "source, destination, code_class",
    ),
    ("meshguard_allowed_total", "source, destination"),
    (
        "meshguard_denials_total",
        "source, destination, reason, mode",
    ),
];

/// Every series of the documented metrics in the namespace, summed over pods.
async fn series(cluster: &LocalCluster) -> Result<Series, BoxError> {
    let mut out = Series::new();
    for (metric, by) in METRICS {
        let answer = cluster
            .prometheus_query(&format!("sum by ({by}) ({metric}{{namespace=\"{NS}\"}})"))
            .await?;
        for r in answer["data"]["result"].as_array().into_iter().flatten() {
            let labels: Vec<String> = by
                .split(", ")
                .map(|l| format!("{l}={}", r["metric"][l].as_str().unwrap_or("")))
                .collect();
            let value: f64 = r["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN);
            out.insert((metric.to_owned(), labels.join(",")), value);
        }
    }
    Ok(out)
}

/// The series the calls of the test so far leave, by docs/metrics.md: one allowed GET from
/// user-service to order-service, which made one to payment-service; one GET and one gRPC call
/// (a POST, grpc-status 7, so `4xx`) from another service account, `unknown` to the policy, both
/// denied `unknown_peer`. The plaintext caller never got past TLS: no stream, no series.
fn expected() -> Series {
    let mut out = Series::new();
    let mut put = |metric: &str, labels: &str, value: f64| {
        out.insert((metric.to_owned(), labels.to_owned()), value);
    };
    let requests = "meshguard_requests_total";
    put(
        requests,
        "source=user-service,destination=order-service,method=GET,code_class=2xx",
        1.0,
    );
    put(
        requests,
        "source=order-service,destination=payment-service,method=GET,code_class=2xx",
        1.0,
    );
    put(
        requests,
        "source=unknown,destination=order-service,method=GET,code_class=4xx",
        1.0,
    );
    put(
        requests,
        "source=unknown,destination=order-service,method=POST,code_class=4xx",
        1.0,
    );
    let durations = "meshguard_request_duration_milliseconds_count";
    put(
        durations,
        "source=user-service,destination=order-service,code_class=2xx",
        1.0,
    );
    put(
        durations,
        "source=order-service,destination=payment-service,code_class=2xx",
        1.0,
    );
    put(
        durations,
        "source=unknown,destination=order-service,code_class=4xx",
        2.0,
    );
    let allowed = "meshguard_allowed_total";
    put(
        allowed,
        "source=user-service,destination=order-service",
        1.0,
    );
    put(
        allowed,
        "source=order-service,destination=payment-service",
        1.0,
    );
    put(
        "meshguard_denials_total",
        "source=unknown,destination=order-service,reason=unknown_peer,mode=enforce",
        2.0,
    );
    out
}

/// Prometheus' targets of the PodMonitor's job: URL, health, last error.
async fn sidecar_targets(cluster: &LocalCluster) -> Result<Vec<String>, BoxError> {
    let targets = cluster.prometheus_api("/api/v1/targets?state=any").await?;
    let data = &targets["data"];
    let pool = |t: &&Value| {
        t["scrapePool"]
            .as_str()
            .is_some_and(|p| p.contains("meshguard-sidecars"))
    };
    let mut out: Vec<String> = data["activeTargets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(pool)
        .map(|t| format!("{} {} {}", t["scrapeUrl"], t["health"], t["lastError"]))
        .collect();
    out.push(format!("dropped: {}", data["droppedTargetCounts"]));
    out.extend(
        data["droppedTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(pool)
            .take(3)
            .map(|t| format!("dropped {}", t["discoveredLabels"])),
    );
    Ok(out)
}

/// The metrics of the calls made so far, read from Prometheus after it scraped the sidecars as
/// the PodMonitor describes.
pub(super) async fn metrics_in_prometheus(cluster: &LocalCluster) -> TestResult {
    let want = expected();
    let started = Instant::now();
    let seen = wait_for(
        "the documented series with the counts of the calls made",
        Duration::from_secs(120),
        || async {
            let seen = series(cluster).await?;
            Ok(if seen == want {
                Ok(seen)
            } else {
                Err(format!(
                    "want {want:#?}\nhave {seen:#?}\nthe PodMonitor's targets: {:#?}",
                    sidecar_targets(cluster).await?
                ))
            })
        },
    )
    .await?;
    println!(
        "Prometheus has the {} series of the calls made, {:.1}s after the last call",
        seen.len(),
        started.elapsed().as_secs_f64()
    );

    // Every name the filters' stats can take in Prometheus is a documented one: no labels
    // folded into a name. (Envoy's own stats of the plugins, `envoy_wasm_<plugin>_…`, name the
    // namespace too; they are Envoy's, not the filters'.)
    let names = cluster
        .prometheus_query(
            "count by (__name__) ({__name__=~\"(envoy_)?(wasmcustom_)?meshguard_.+\"})",
        )
        .await?;
    let names: Vec<&str> = names["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["metric"]["__name__"].as_str())
        .collect();
    let documented = [
        "meshguard_requests_total",
        "meshguard_request_duration_milliseconds_bucket",
        "meshguard_request_duration_milliseconds_sum",
        "meshguard_request_duration_milliseconds_count",
        "meshguard_allowed_total",
        "meshguard_denials_total",
    ];
    let mut sorted = names.clone();
    sorted.sort_unstable();
    let mut want_names = documented.to_vec();
    want_names.sort_unstable();
    assert_eq!(sorted, want_names, "the metric names in Prometheus");

    // Each series carries the pod it was scraped from and the PodMonitor's job.
    let labels = cluster
        .prometheus_query(&format!("meshguard_allowed_total{{namespace=\"{NS}\"}}"))
        .await?;
    for r in labels["data"]["result"].as_array().into_iter().flatten() {
        let m = &r["metric"];
        let destination = m["destination"].as_str().unwrap_or_default();
        assert!(
            m["pod"]
                .as_str()
                .is_some_and(|p| p.starts_with(destination)),
            "scraped from the destination's pod: {m}"
        );
        assert_eq!(
            m["job"],
            format!("{NS}/meshguard-sidecars"),
            "the PodMonitor's job: {m}"
        );
    }

    // Every documented query answers (a rate needs two scrapes in its window); the dry-run one
    // has nothing to show, since every filter here enforces.
    let queries = documented_queries(NS)?;
    let results = |answer: &Value| {
        answer["data"]["result"]
            .as_array()
            .map(Vec::len)
            .unwrap_or(0)
    };
    for (place, query) in queries
        .iter()
        .filter(|(_, q)| !q.contains("mode=\"dry_run\""))
    {
        wait_for(
            &format!("{place}: {query} answering"),
            Duration::from_secs(90),
            || async {
                let answer = cluster.prometheus_query(query).await?;
                Ok(if results(&answer) > 0 {
                    Ok(())
                } else {
                    Err(format!("no data: {answer}"))
                })
            },
        )
        .await?;
    }
    for (place, query) in queries
        .iter()
        .filter(|(_, q)| q.contains("mode=\"dry_run\""))
    {
        let answer = cluster.prometheus_query(query).await?;
        assert_eq!(results(&answer), 0, "{place}: {query} → {answer}");
    }
    println!(
        "{} documented queries answered, {:.1}s after the last call",
        queries.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The ready replicas of `name`.
async fn ready(deployments: &Api<Deployment>, name: &str) -> Result<i32, BoxError> {
    Ok(deployments
        .get(name)
        .await?
        .status
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0))
}

/// KEDA's request-rate trigger: callers under user-service's account send about 20 requests a
/// second into order-service; the trigger's query (the rate of `meshguard_requests_total` into
/// order-service, from the sidecars' filters) takes user-service to its 4 replicas, and back to
/// 1 once the calls end. (order-service's HPA acts on its CPU meanwhile, its sidecar's
/// included; the test does not wait for it.)
pub(super) async fn request_rate_scales(
    cluster: &LocalCluster,
    client: &Client,
    call_image: &str,
) -> TestResult {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let load = ["load-1", "load-2"];
    for name in load {
        start_call(
            client,
            call_image,
            NS,
            name,
            "user-service",
            &["--count", "3000", "--interval", "100", ORDERS],
        )
        .await?;
    }
    let started = Instant::now();
    let query = meshguard_mesh::metrics::request_rate_query(NS, "order-service");
    wait_for(
        "user-service at 4 ready replicas",
        Duration::from_secs(240),
        || async {
            let rate = cluster.prometheus_query(&query).await?["data"]["result"][0]["value"][1]
                .as_str()
                .unwrap_or("none")
                .to_owned();
            let n = ready(&deployments, "user-service").await?;
            Ok(if n >= 4 {
                Ok(())
            } else {
                Err(format!(
                    "{n} ready; request rate into order-service {rate}/s"
                ))
            })
        },
    )
    .await?;
    println!(
        "request-rate trigger: user-service at 4 {:.1}s after the load began",
        started.elapsed().as_secs_f64()
    );
    for name in load {
        pods.delete(name, &DeleteParams::default()).await?;
    }
    let ended = Instant::now();
    wait_for(
        "user-service back at 1",
        Duration::from_secs(300),
        || async {
            let d = deployments.get("user-service").await?;
            let status = d.status.unwrap_or_default();
            let counts = (
                status.replicas.unwrap_or(0),
                status.ready_replicas.unwrap_or(0),
            );
            Ok(if counts == (1, 1) {
                Ok(())
            } else {
                Err(format!("(replicas, ready) {counts:?}"))
            })
        },
    )
    .await?;
    println!(
        "request-rate trigger: user-service back at 1 {:.1}s after the load ended",
        ended.elapsed().as_secs_f64()
    );
    Ok(())
}
