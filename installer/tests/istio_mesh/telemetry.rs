//! The filters' metrics from real traffic: Prometheus scrapes the sidecars as the rendered
//! PodMonitor describes, every documented series is there with its labels and the counts of the
//! requests sent, every query of the docs and of the Grafana dashboard answers, and KEDA's
//! request-rate trigger scales user-service on the rate into order-service.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use kube::Client;
use meshguard_testcluster::pulse::{self, PulseLoad, PulseOptions};
use meshguard_testcluster::queries::documented_queries;
use meshguard_testcluster::wait::until as wait_for;
use meshguard_testcluster::LocalCluster;
use serde_json::Value;

use super::{BoxError, TestResult, NS, ORDERS};

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

/// KEDA's request-rate trigger, in one load pulse (`meshguard_testcluster::pulse`, what the demo
/// shows): two caller pods under user-service's account send about 20 requests a second into
/// order-service for two minutes; the trigger's query (the rate of `meshguard_requests_total`
/// into order-service, from the sidecars' filters) takes user-service to its 4 replicas, and
/// every service is back at 1 after the calls end, with every call answered. (order-service's
/// HPA acts on its CPU meanwhile, its sidecar's included.)
pub(super) async fn request_rate_scales(
    cluster: &LocalCluster,
    client: &Client,
    call_image: &str,
) -> TestResult {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    // The pulse ends when every service is back where it started: start from rest.
    wait_for(
        "every service at 1 ready replica before the pulse",
        Duration::from_secs(300),
        || async {
            let mut seen = Vec::new();
            for s in ["user-service", "order-service", "payment-service"] {
                let status = deployments.get(s).await?.status.unwrap_or_default();
                seen.push((
                    status.replicas.unwrap_or(0),
                    status.ready_replicas.unwrap_or(0),
                ));
            }
            Ok(if seen.iter().all(|c| *c == (1, 1)) {
                Ok(())
            } else {
                Err(format!("(replicas, ready) {seen:?}"))
            })
        },
    )
    .await?;
    let opts = PulseOptions {
        namespace: NS.to_owned(),
        target: "order-service".to_owned(),
        services: ["order-service", "user-service", "payment-service"]
            .map(str::to_owned)
            .to_vec(),
        load: PulseLoad::Callers {
            image: call_image.to_owned(),
            account: "user-service".to_owned(),
            url: ORDERS.to_owned(),
            callers: 2,
            interval: Duration::from_millis(100),
        },
        duration: Duration::from_secs(120),
        settle_timeout: Duration::from_secs(300),
        heartbeat: Duration::from_secs(10),
        prometheus: Some(cluster.prometheus_url().to_owned()),
    };
    let m = pulse::run(client, &opts, |line| println!("{line}")).await?;
    let peak = m.peaks.get("user-service").copied();
    assert_eq!(
        peak.map(|(n, _)| n),
        Some(4),
        "user-service's peak: {peak:?}"
    );
    let stats = m.requests.ok_or("the pulse counted no calls")?;
    assert!(stats.ok > 1000, "{stats:?}");
    assert_eq!(stats.failed, 0, "{stats:?}");
    println!(
        "request-rate trigger: user-service at 4 {}s after the load began; every service back at 1 {}s after it ended; {} calls answered",
        peak.map_or(0, |(_, at)| at.as_secs()),
        m.settled
            .zip(m.load_end)
            .map_or(0, |(s, e)| s.saturating_sub(e).as_secs()),
        stats.ok
    );
    Ok(())
}
