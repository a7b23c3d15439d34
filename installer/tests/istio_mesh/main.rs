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
//! - a pod outside the mesh is refused by mTLS STRICT;
//! - a policy change re-applied by `meshctl install` reaches the running sidecars, the old filter
//!   deciding until the new one is in place;
//! - a module that cannot be fetched or verified is replaced by Istio's RBAC stand-in: denied
//!   under `FAIL_RELOAD` and `FAIL_CLOSE`, let through under `FAIL_OPEN`;
//! - no service pod restarted through all of it, and every sidecar took every cluster and
//!   listener istiod sent.
//!
//! Each caller is a pod running `call` (tests/services), whose requests leave through its own
//! sidecar; the test reads the answers from its log. Needs root and everything `scripts/test.sh`
//! builds.

#[path = "../common/mod.rs"]
mod common;
mod telemetry;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{install_mesh_file, publish_for_install, services_dir, workspace, TestResult};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, LogParams, Patch, PatchParams,
    PostParams,
};
use kube::Client;
use meshguard_testcluster::callers::{self, Caller};
use meshguard_testcluster::istio::{IstioArtifacts, ISTIO_NAMESPACE};
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
    let mut published = cluster.publish_registry(registry.addr())?;
    let address = published.address().to_string();
    let result = run(&cluster, &artifacts, &address).await;
    if result.is_err() {
        eprintln!("cluster folder: {}", cluster.dir().display());
    }
    // Before the nodes go: the forwarder listens on the first node's address.
    published.stop();
    let left = cluster.stop_and_list_leftovers()?;
    drop(registry);
    result?;
    assert!(left.is_empty(), "left behind after stop: {left:#?}");
    Ok(())
}

/// How long a caller pod may take to finish.
const CALL_WITHIN: Duration = Duration::from_secs(150);

/// Starts `call ARGS` in a pod of `namespace` under `account`.
async fn start_call(
    client: &Client,
    image: &str,
    namespace: &str,
    name: &str,
    account: &str,
    args: &[&str],
) -> Result<(), BoxError> {
    let caller = Caller {
        image,
        namespace,
        name,
        account,
    };
    Ok(caller.start(client, args).await?)
}

/// Waits for `call` in pod `name` to finish and returns its answers.
async fn answers(client: &Client, namespace: &str, name: &str) -> Result<Vec<Value>, BoxError> {
    Ok(callers::answers(client, namespace, name, CALL_WITHIN).await?)
}

/// The caller got one answer: 403 from the callee's filter, with `reason` (its JSON body's).
fn assert_denied(answers: &[Value], reason: &str) {
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0]["status"], 403, "{answers:?}");
    assert_eq!(answers[0]["reason"], reason, "{answers:?}");
}

/// Runs `call ARGS` in a pod of `namespace` under `account` and returns its answers.
async fn call(
    client: &Client,
    image: &str,
    namespace: &str,
    name: &str,
    account: &str,
    args: &[&str],
) -> Result<Vec<Value>, BoxError> {
    start_call(client, image, namespace, name, account, args).await?;
    answers(client, namespace, name).await
}

async fn run(cluster: &LocalCluster, artifacts: &IstioArtifacts, registry: &str) -> TestResult {
    let started = Instant::now();
    artifacts
        .install_on(cluster, registry, &cluster.dir().join("istioctl.log"))
        .await?;
    println!(
        "Istio's images pushed, istioctl install to istiod ready: {:.1}s",
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

    // The reference mesh for real nodes, with user-service scaling on the request rate into
    // order-service (what the metrics filter counts), as the demo installs it.
    let mesh = workspace().join("docs/examples/request-rate.yaml");
    meshctl_install(cluster, &mesh, &flags).await?;

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
    assert_denied(&denied, "unknown_peer");
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

    // The filters' metrics, scraped as the PodMonitor meshctl rendered describes.
    let report = cluster.scrape_pod_monitors().await?;
    assert!(
        report.contains(&format!("PodMonitor {NS}/meshguard-sidecars: selected")),
        "{report}"
    );
    telemetry::metrics_in_prometheus(cluster).await?;
    telemetry::request_rate_scales(cluster, &client, &call_image).await?;
    storefront(&client, &call_image).await?;

    let running = service_pods(&pods).await?;
    policy_change(cluster, &client, &call_image, &mesh, &flags).await?;
    fail_strategies(cluster, &client, &call_image, &mesh, &flags, registry).await?;
    // Every change above reached the running sidecars: no pod was rolled out again (every pod
    // is from a ReplicaSet that was there before; order-service's HPA may still add or remove
    // pods of it) and no container restarted.
    let after = service_pods(&pods).await?;
    let templates: Vec<&String> = running.values().map(|(hash, _)| hash).collect();
    for (name, (hash, restarts)) in &after {
        assert!(
            templates.contains(&hash),
            "{name} is from a new ReplicaSet ({hash}): a rollout; before: {running:#?}"
        );
        if let Some((_, before)) = running.get(name) {
            assert_eq!(restarts, before, "{name}'s restarts then and now");
        }
    }
    xds_accepted(&client, &pods).await
}

/// The mesh's client, storefront, in front of user-service: under its own ServiceAccount (which
/// meshctl made) it gets the whole chain, user → order → payment, and may call nothing else.
async fn storefront(client: &Client, call_image: &str) -> TestResult {
    let users = "http://user-service.meshguard:5000/users/7/orders";
    let front = call(client, call_image, NS, "storefront", "storefront", &[users]).await?;
    assert_eq!(front.len(), 1, "{front:?}");
    assert_eq!(front[0]["status"], 200, "{front:?}");
    let body = front[0]["body"].as_str().unwrap_or_default();
    assert!(
        body.contains("order-service") && body.contains("payment-service"),
        "user-service's answer holds order-service's and payment-service's: {body}"
    );
    let direct = call(
        client,
        call_image,
        NS,
        "storefront-to-orders",
        "storefront",
        &[ORDERS],
    )
    .await?;
    assert_denied(&direct, "unknown_peer");
    Ok(())
}

/// `meshctl install -f MESH FLAGS` on the cluster, which must succeed, with the sidecars'
/// PodMonitor and the autoscalers' short scale-down window.
async fn meshctl_install(cluster: &LocalCluster, mesh: &Path, flags: &[String]) -> TestResult {
    let install = install_mesh_file(cluster, mesh, &["--pod-monitor"], flags).await?;
    assert_eq!(install.code, Some(0), "{}", install.dump());
    Ok(())
}

/// The services' running pods (not terminating), by name (with their UID): their template's
/// hash (`pod-template-hash`, one per ReplicaSet) and the restarts of their containers.
async fn service_pods(pods: &Api<Pod>) -> Result<BTreeMap<String, (String, i32)>, BoxError> {
    Ok(pods
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| SERVICES.iter().any(|s| n.starts_with(s)))
        })
        .map(|p| {
            let name = format!(
                "{} ({})",
                p.metadata.name.unwrap_or_default(),
                p.metadata.uid.unwrap_or_default()
            );
            let hash = p
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("pod-template-hash"))
                .cloned()
                .unwrap_or_default();
            let restarts = p
                .status
                .and_then(|s| s.container_statuses)
                .unwrap_or_default()
                .iter()
                .map(|c| c.restart_count)
                .sum();
            (name, (hash, restarts))
        })
        .collect())
}

/// `flags` with the value after `flag` replaced by `value`, or the pair dropped when `value` is
/// `None`.
fn with_flag(flags: &[String], flag: &str, value: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = flags.iter();
    while let Some(f) = it.next() {
        if f == flag {
            let _old = it.next();
            if let Some(v) = value {
                out.extend([f.clone(), v.to_owned()]);
            }
        } else {
            out.push(f.clone());
        }
    }
    out
}

/// The answers up to the first that `until` matched: every earlier one must be `before`
/// (status, and text in the body), and the last one must match.
fn assert_switch(
    answers: &[Value],
    before: (u64, &str),
    until: (u64, &str),
    what: &str,
) -> TestResult {
    let (last, earlier) = answers
        .split_last()
        .ok_or(format!("{what}: call printed no answer"))?;
    println!(
        "{what}: {} answers {before:?}, then {until:?}",
        earlier.len()
    );
    let is = |a: &Value, (status, text): (u64, &str)| {
        a["status"].as_u64() == Some(status) && a["body"].as_str().is_some_and(|b| b.contains(text))
    };
    assert!(
        is(last, until),
        "{what}: the last answer is {until:?}: {last}"
    );
    let odd: Vec<&Value> = earlier.iter().filter(|a| !is(a, before)).collect();
    assert!(
        odd.is_empty(),
        "{what}: every answer before the change is {before:?}; these are not: {odd:#?}"
    );
    Ok(())
}

/// `call` arguments that GET order-service ten times a second, for up to a minute, until an
/// answer matches `until` (`STATUS[:TEXT]`).
fn watch_until(until: &str) -> [&str; 7] {
    [
        "--count",
        "600",
        "--interval",
        "100",
        "--until",
        until,
        ORDERS,
    ]
}

/// A policy change re-applied by `meshctl install` reaches the running sidecars: a caller that
/// keeps calling sees the old filter's answer until the new one's, and nothing else between.
async fn policy_change(
    cluster: &LocalCluster,
    client: &Client,
    call_image: &str,
    mesh: &Path,
    flags: &[String],
) -> TestResult {
    let text = std::fs::read_to_string(mesh)?;
    let call = "  - from: user-service\n    to: order-service\n";
    assert!(
        text.contains(call),
        "{} has the call {call:?}",
        mesh.display()
    );
    let post_only = cluster.dir().join("post-only.yaml");
    std::fs::write(
        &post_only,
        text.replace(call, &format!("{call}    methods: [POST]\n")),
    )?;

    let name = "across-a-policy-change";
    start_call(
        client,
        call_image,
        NS,
        name,
        "user-service",
        &watch_until("403:method_not_allowed"),
    )
    .await?;
    wait_for(
        "the caller answered under the old policy",
        Duration::from_secs(120),
        || async move {
            let seen = callers::answers_so_far(client, NS, name)
                .await
                .unwrap_or_default();
            Ok(if seen.len() >= 5 {
                Ok(())
            } else {
                Err(format!("{} answers", seen.len()))
            })
        },
    )
    .await?;
    let started = Instant::now();
    meshctl_install(cluster, &post_only, flags).await?;
    let seen = answers(client, NS, name).await?;
    println!(
        "policy change: {} answers, the new decision {:.1}s after meshctl install began",
        seen.len(),
        started.elapsed().as_secs_f64()
    );
    assert_switch(
        &seen,
        (200, "payment-service"),
        (403, "method_not_allowed"),
        "GET from user-service once the call admits only POST",
    )?;
    Ok(())
}

/// Istio's agent puts an RBAC filter in the place of a module it cannot fetch or verify
/// (`pkg/wasm/convert.go`, `MaybeConvertWasmExtensionConfig`): allow-all for `FAIL_OPEN`, deny-all
/// for any other strategy. What callers see, for each strategy, with a wrong digest or URL.
async fn fail_strategies(
    cluster: &LocalCluster,
    client: &Client,
    call_image: &str,
    mesh: &Path,
    flags: &[String],
    registry: &str,
) -> TestResult {
    let watch = watch_until("403:RBAC: access denied");
    let denied = (403, "RBAC: access denied");

    // The authorization filter (FAIL_RELOAD) with a wrong digest: every call is denied, by the
    // deny-all stand-in, where the policy would have admitted it.
    let wrong_digest = with_flag(flags, "--authz-module-sha256", Some(&"0".repeat(64)));
    meshctl_install(cluster, mesh, &wrong_digest).await?;
    let seen = call(
        client,
        call_image,
        NS,
        "fail-reload",
        "user-service",
        &watch,
    )
    .await?;
    assert_switch(
        &seen,
        (403, "method_not_allowed"),
        denied,
        "FAIL_RELOAD, wrong sha256",
    )?;
    sidecar_log_says(client, "order-service", "applying deny RBAC filter").await?;

    // The metrics filter (FAIL_OPEN) at a URL with nothing there: calls go through, unmeasured.
    let missing = format!("oci://{registry}/meshguard/meshguard-metrics:missing");
    let wrong_url = with_flag(
        &with_flag(flags, "--metrics-module", Some(&missing)),
        "--metrics-module-sha256",
        None,
    );
    meshctl_install(cluster, mesh, &wrong_url).await?;
    sidecar_log_says(client, "order-service", "applying allow RBAC filter").await?;
    let seen = call(
        client,
        call_image,
        NS,
        "fail-open",
        "user-service",
        &watch_until("200"),
    )
    .await?;
    assert_switch(
        &seen,
        denied,
        (200, "payment-service"),
        "FAIL_OPEN, wrong URL",
    )?;

    // FAIL_CLOSE, which meshctl does not render, set on order-service's authorization filter
    // with a URL that has nothing there: denied, as FAIL_RELOAD.
    let plugins: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        NS,
        &ApiResource::from_gvk(&GroupVersionKind::gvk(
            "extensions.istio.io",
            "v1alpha1",
            "WasmPlugin",
        )),
    );
    let missing = format!("oci://{registry}/meshguard/meshguard-authz:missing");
    plugins
        .patch(
            "order-service-authz",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {
                "failStrategy": "FAIL_CLOSE",
                "url": missing,
                "sha256": null,
            }})),
        )
        .await?;
    let seen = call(client, call_image, NS, "fail-close", "user-service", &watch).await?;
    assert_switch(
        &seen,
        (200, "payment-service"),
        denied,
        "FAIL_CLOSE, wrong URL",
    )?;
    Ok(())
}

/// Waits for the istio-proxy container of `service`'s pods to have logged `text` (pilot-agent's
/// own log lines are there).
async fn sidecar_log_says(client: &Client, service: &str, text: &str) -> TestResult {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    wait_for(
        &format!("{service}'s sidecar logs {text:?}"),
        Duration::from_secs(60),
        || {
            let pods = pods.clone();
            async move {
                for pod in pods.list(&Default::default()).await?.items {
                    let name = pod.metadata.name.unwrap_or_default();
                    if !name.starts_with(service) {
                        continue;
                    }
                    let log = pods
                        .logs(
                            &name,
                            &LogParams {
                                container: Some("istio-proxy".into()),
                                ..LogParams::default()
                            },
                        )
                        .await?;
                    if log.contains(text) {
                        return Ok(Ok(()));
                    }
                }
                Ok(Err("not yet".to_owned()))
            }
        },
    )
    .await
}

/// `GET path` on `addr` over HTTP/1.0; the body, or the status line when it is not 200.
fn http_get(addr: SocketAddr, path: &str) -> Result<Result<String, String>, BoxError> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect to {addr}: {e}"))?;
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

/// istiod runs on a real node from the `pilot` image, and every service's sidecar took each
/// cluster and listener it sent: updates accepted, none rejected, by Envoy's counters (served
/// through the agent's `:15020/stats/prometheus`) and by istiod's (`pilot_total_xds_rejects`).
async fn xds_accepted(client: &Client, pods: &Api<Pod>) -> TestResult {
    let system: Api<Pod> = Api::namespaced(client.clone(), ISTIO_NAMESPACE);
    let istiod = system
        .list(&ListParams::default().labels("app=istiod"))
        .await?
        .items
        .into_iter()
        .next()
        .ok_or("istioctl installed no istiod pod")?;
    let spec = istiod.spec.clone().unwrap_or_default();
    assert!(
        spec.node_name
            .as_deref()
            .is_some_and(|n| n.starts_with("real-cpu")),
        "istiod on a real CPU node: {:?}",
        spec.node_name
    );
    assert!(
        spec.containers
            .first()
            .and_then(|c| c.image.as_deref())
            .is_some_and(|i| i.ends_with("/pilot:meshguard-local")),
        "istiod from the pilot image pushed here: {:?}",
        spec.containers.first().map(|c| &c.image)
    );
    let istiod_ip = istiod
        .status
        .and_then(|s| s.pod_ip)
        .ok_or("istiod has no IP")?;
    for pod in pods.list(&Default::default()).await?.items {
        let name = pod.metadata.name.unwrap_or_default();
        if !SERVICES.iter().any(|s| name.starts_with(s)) {
            continue;
        }
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        let Some(ip) = pod.status.and_then(|s| s.pod_ip).filter(|_| running) else {
            continue;
        };
        let stats = http_get(format!("{ip}:15020").parse()?, "/stats/prometheus")
            .map_err(|e| format!("{name}'s agent: {e}"))?
            .map_err(|s| format!("{name}'s agent stats: {s}"))?;
        for (series_name, want_positive) in [
            ("envoy_cluster_manager_cds_update_success", true),
            ("envoy_listener_manager_lds_update_success", true),
            ("envoy_cluster_manager_cds_update_rejected", false),
            ("envoy_listener_manager_lds_update_rejected", false),
        ] {
            let value = series(&stats, series_name).ok_or_else(|| {
                let near: Vec<&str> = stats.lines().filter(|l| l.contains("update_")).collect();
                format!("no {series_name} in {name}'s sidecar stats; its update_ series: {near:#?}")
            })?;
            if want_positive {
                assert!(value >= 1.0, "{name}: {series_name} = {value}");
            } else {
                assert_eq!(value, 0.0, "{name}: {series_name}");
            }
        }
    }
    let metrics = http_get(format!("{istiod_ip}:15014").parse()?, "/metrics")?
        .map_err(|s| format!("istiod metrics: {s}"))?;
    let rejects: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("pilot_total_xds_rejects"))
        .collect();
    assert!(rejects.is_empty(), "istiod saw rejections: {rejects:?}");
    Ok(())
}
