//! The filters in Envoy started as Istio's agent starts a sidecar: the node and `stats_config` of
//! the bootstrap Istio's generator writes for the rendered Deployment, meshctl's bootstrap override
//! merged by Envoy itself (`--config-yaml`), and the Deployment's WasmPlugins as meshctl renders
//! them, in Istio's phase order.
//!
//! - **Metrics.** After a known mix of requests, `/stats/prometheus` (what the sidecar's
//!   `:15090/stats/prometheus` serves) has every series docs/metrics.md documents, with exactly its
//!   labels and the counts of the requests sent, and no `meshguard_` series with labels left in
//!   its name.
//! - **Overflow.** A flood of distinct callers, more than the metrics filter keeps series for,
//!   ends in the overflow series, labelled `overflow` in `/stats/prometheus`.
//! - **Workload check.** The authorization filter reads the node metadata Istio's agent writes,
//!   field by field (`xds.node.metadata.<KEY>`): in its own workload's sidecar it confirms the
//!   workload at configuration; another workload's policy in that sidecar denies every request
//!   with `wrong_workload`.
//! - **The filters as Istio generates them.** istiod's own code (pilot's inbound listener and
//!   ECDS, fed through its WasmPlugin → TrafficExtension translation controller) and the agent's
//!   module rewrite generate each sidecar's Wasm filters in the order and with the configuration
//!   the sidecar builder (`src/sidecar.rs`) writes, for every rendered workload of the reference
//!   mesh and of the four-service example. The sidecars of these tests run those generated
//!   `TypedExtensionConfig`s, not the builder's.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test assertions

use std::collections::BTreeMap;
use std::time::Duration;

use meshguard_envoy_tests::client::{Call, Caller, Protocol};
use meshguard_envoy_tests::envoy::StartOptions;
use meshguard_envoy_tests::istio::{
    generated_filters, generated_sidecars, GeneratedFilters, GeneratedSidecar,
};
use meshguard_envoy_tests::pki::Ca;
use meshguard_envoy_tests::sidecar::{self, Plugin, Sidecar, TlsChain};
use meshguard_envoy_tests::stats::{self, Sample};
use meshguard_envoy_tests::upstream::{App, STATUS_HEADER};
use meshguard_envoy_tests::{Envoy, EnvoyBinary};
use serde_json::Value;

const NS: &str = "meshguard";

fn identity(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/{NS}/sa/{sa}")
}

fn server_name(service: &str) -> String {
    format!("{service}.{NS}.svc.cluster.local")
}

struct Mesh {
    objects: Vec<Value>,
    sidecars: Vec<GeneratedSidecar>,
    filters: Vec<GeneratedFilters>,
    dir: std::path::PathBuf,
}

/// `spec` rendered in [`NS`]: the YAML and the objects as JSON values.
fn rendered(spec: &meshguard_manifests::MeshSpec) -> (String, Vec<Value>) {
    let rendered =
        meshguard_manifests::render(spec, &meshguard_manifests::RenderOptions::new(NS)).unwrap();
    let yaml = meshguard_manifests::to_yaml(&rendered).unwrap();
    let objects = rendered
        .iter()
        .map(|o| serde_json::to_value(o).unwrap())
        .collect();
    (yaml, objects)
}

fn mesh(name: &str) -> Mesh {
    let dir = std::env::temp_dir().join(format!("meshguard-envoy-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (yaml, objects) = rendered(&meshguard_manifests::MeshSpec::reference());
    let sidecars = generated_sidecars(&yaml, &dir).unwrap();
    let modules = sidecar::rendered_modules(&objects).unwrap();
    let filters = generated_filters(&yaml, &dir, &modules).unwrap();
    Mesh {
        objects,
        sidecars,
        filters,
        dir,
    }
}

impl Mesh {
    fn sidecar(&self, deployment: &str) -> &GeneratedSidecar {
        self.sidecars
            .iter()
            .find(|s| s.deployment == deployment)
            .unwrap_or_else(|| panic!("no sidecar for {deployment}"))
    }

    /// The rendered WasmPlugins of `policy_of` (in Istio's order), for modules from the build,
    /// each served as the `TypedExtensionConfig` Istio generates for `policy_of`'s sidecar.
    fn plugins(&self, policy_of: &str) -> Vec<Plugin> {
        let generated = self
            .filters
            .iter()
            .find(|f| f.deployment == policy_of)
            .unwrap_or_else(|| panic!("Istio generated no filters for {policy_of}"));
        sidecar::wasm_plugins_for(&self.objects, policy_of)
            .into_iter()
            .map(|o| {
                let mut p = sidecar::rendered_plugin(o).unwrap();
                let config = generated.extension_config(&p.resource_name());
                p.generated = Some(config.cloned().unwrap_or_else(|| {
                    panic!("Istio generated no {} for {policy_of}", p.resource_name())
                }));
                p
            })
            .collect()
    }

    /// Envoy as order-service's sidecar, with `policy_of`'s WasmPlugins.
    fn start(
        &self,
        bin: &EnvoyBinary,
        ca: &Ca,
        app: &App,
        deployment: &str,
        policy_of: &str,
        name: &str,
    ) -> Envoy {
        self.start_with(bin, ca, app, deployment, self.plugins(policy_of), name)
    }

    /// [`Mesh::start`] with these plugins.
    fn start_with(
        &self,
        bin: &EnvoyBinary,
        ca: &Ca,
        app: &App,
        deployment: &str,
        plugins: Vec<Plugin>,
        name: &str,
    ) -> Envoy {
        let generated = self.sidecar(deployment);
        let dir = self.dir.join(name);
        let s = Sidecar {
            dir: dir.clone(),
            node: generated.node(),
            stats_config: generated.stats_config(),
            ca_pem: ca.cert_pem(),
            chains: vec![TlsChain {
                server_name: None,
                cert: ca
                    .issue(Some(&identity(deployment)), &server_name(deployment))
                    .unwrap(),
            }],
            plaintext: false,
            plugins,
            upstream: app.addr,
        };
        let opts = StartOptions {
            config_yaml: generated.config_yaml(),
            component_log_level: "wasm:debug".into(),
            ..StartOptions::default()
        };
        Envoy::start(bin, &dir, &s.bootstrap().unwrap(), &opts).unwrap()
    }
}

async fn send(
    envoy: &Envoy,
    caller: &Caller,
    service: &str,
    method: &str,
    upstream_status: u16,
    proto: Protocol,
) -> u16 {
    let mut call = Call::get("/orders?user_id=7");
    call.method = method.into();
    call.headers.push((
        STATUS_HEADER.into(),
        upstream_status.to_string().into_bytes(),
    ));
    caller
        .send(
            envoy.listener(sidecar::LISTENER).unwrap(),
            &server_name(service),
            proto,
            &call,
        )
        .await
        .unwrap()
        .status
}

fn sum(samples: &[Sample], name: &str) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

/// `/stats/prometheus` once it counts `requests` requests and as many durations. The metrics
/// filter counts in on_log, after the response; Envoy exports histograms as of its last stats
/// flush (every 5 s by default).
fn prometheus_after(envoy: &Envoy, requests: f64) -> Vec<Sample> {
    let mut samples = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        samples = stats::parse(&envoy.admin_get("/stats/prometheus").unwrap()).unwrap();
        if sum(&samples, "meshguard_requests_total") >= requests
            && sum(&samples, "meshguard_request_duration_milliseconds_count") >= requests
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    samples
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn value(samples: &[Sample], name: &str, want: &BTreeMap<String, String>) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.name == name && &s.labels == want)
        .map(|s| s.value)
}

fn metrics_in(bin: &EnvoyBinary) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let m = mesh(&format!("metrics-{}", bin.version));
    let ca = Ca::new().unwrap();
    let app = rt.block_on(App::start()).unwrap();
    let envoy = m.start(bin, &ca, &app, "order-service", "order-service", "order");
    let caller = |sa: &str| {
        Caller::new(&ca.cert_pem(), Some(ca.issue(Some(sa), "c.test").unwrap())).unwrap()
    };
    let user = caller(&identity("user-service"));
    let payment = caller(&identity("payment-service"));
    let intruder = caller("spiffe://cluster.local/ns/other/sa/intruder");
    rt.block_on(async {
        for proto in [Protocol::Http1, Protocol::Http2, Protocol::Http2] {
            assert_eq!(
                send(&envoy, &user, "order-service", "GET", 200, proto).await,
                200
            );
        }
        for _ in 0..2 {
            assert_eq!(
                send(&envoy, &user, "order-service", "POST", 503, Protocol::Http2).await,
                503
            );
            assert_eq!(
                send(
                    &envoy,
                    &payment,
                    "order-service",
                    "GET",
                    200,
                    Protocol::Http1
                )
                .await,
                403
            );
        }
        assert_eq!(
            send(
                &envoy,
                &intruder,
                "order-service",
                "DELETE",
                200,
                Protocol::Http2
            )
            .await,
            403
        );
    });
    let samples = prometheus_after(&envoy, 8.0);
    let ours: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name.starts_with("meshguard_"))
        .collect();
    let documented = [
        "meshguard_requests_total",
        "meshguard_request_duration_milliseconds_bucket",
        "meshguard_request_duration_milliseconds_sum",
        "meshguard_request_duration_milliseconds_count",
        "meshguard_allowed_total",
        "meshguard_denials_total",
    ];
    for s in &ours {
        assert!(
            documented.contains(&s.name.as_str()),
            "Envoy {}: series with labels left in its name: {} {:?}",
            bin.version,
            s.name,
            s.labels
        );
    }
    let od = ("destination", "order-service");
    let expect = [
        (
            "meshguard_requests_total",
            labels(&[
                ("source", "user-service"),
                od,
                ("method", "GET"),
                ("code_class", "2xx"),
            ]),
            3.0,
        ),
        (
            "meshguard_requests_total",
            labels(&[
                ("source", "user-service"),
                od,
                ("method", "POST"),
                ("code_class", "5xx"),
            ]),
            2.0,
        ),
        (
            "meshguard_requests_total",
            labels(&[
                ("source", "payment-service"),
                od,
                ("method", "GET"),
                ("code_class", "4xx"),
            ]),
            2.0,
        ),
        (
            "meshguard_requests_total",
            labels(&[
                ("source", "unknown"),
                od,
                ("method", "DELETE"),
                ("code_class", "4xx"),
            ]),
            1.0,
        ),
        (
            "meshguard_allowed_total",
            labels(&[("source", "user-service"), od]),
            5.0,
        ),
        (
            "meshguard_denials_total",
            labels(&[
                ("source", "payment-service"),
                od,
                ("reason", "unknown_peer"),
                ("mode", "enforce"),
            ]),
            2.0,
        ),
        (
            "meshguard_denials_total",
            labels(&[
                ("source", "unknown"),
                od,
                ("reason", "unknown_peer"),
                ("mode", "enforce"),
            ]),
            1.0,
        ),
        (
            "meshguard_request_duration_milliseconds_count",
            labels(&[("source", "user-service"), od, ("code_class", "2xx")]),
            3.0,
        ),
        (
            "meshguard_request_duration_milliseconds_count",
            labels(&[("source", "user-service"), od, ("code_class", "5xx")]),
            2.0,
        ),
        (
            "meshguard_request_duration_milliseconds_count",
            labels(&[("source", "payment-service"), od, ("code_class", "4xx")]),
            2.0,
        ),
        (
            "meshguard_request_duration_milliseconds_count",
            labels(&[("source", "unknown"), od, ("code_class", "4xx")]),
            1.0,
        ),
    ];
    let mut failures = Vec::new();
    for (name, l, v) in &expect {
        let got = value(&samples, name, l);
        if got != Some(*v) {
            failures.push(format!("{name}{l:?}: {got:?}, want {v}"));
        }
    }
    // Nothing else: every counter series is one of those above.
    let counted: usize = ours
        .iter()
        .filter(|s| !s.name.starts_with("meshguard_request_duration"))
        .count();
    let want_counted = expect
        .iter()
        .filter(|(n, _, _)| !n.starts_with("meshguard_request_duration"))
        .count();
    if counted != want_counted {
        failures.push(format!(
            "{counted} counter series, want {want_counted}: {ours:?}"
        ));
    }
    // Histogram buckets carry `le` besides the documented labels.
    for s in ours.iter().filter(|s| s.name.ends_with("_bucket")) {
        let keys: Vec<&str> = s.labels.keys().map(String::as_str).collect();
        if keys != ["code_class", "destination", "le", "source"] {
            failures.push(format!("bucket labels {keys:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "Envoy {}: /stats/prometheus differs from docs/metrics.md:\n{}\n{}",
        bin.version,
        failures.join("\n"),
        ours.iter()
            .map(|s| format!("{} {:?} {}", s.name, s.labels, s.value))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let _ = std::fs::remove_dir_all(&m.dir);
}

#[test]
fn documented_series_with_their_labels_and_counts_in_envoy_of_the_istio_line() {
    metrics_in(&EnvoyBinary::istio().unwrap());
}

#[test]
fn documented_series_with_their_labels_and_counts_in_the_newest_envoy() {
    metrics_in(&EnvoyBinary::all().unwrap()[1]);
}

/// A flood of distinct callers, each a peer the configuration names, more than the filter defines
/// series for (`MAX_SERIES`): in `/stats/prometheus`, with Istio's tag rules, each caller's series
/// up to the bound and then the overflow series, every label `overflow`, counting the rest.
#[test]
fn a_flood_of_distinct_callers_ends_in_the_labelled_overflow_series() {
    use meshguard_mesh::metrics::{MAX_SERIES, OVERFLOW};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let m = mesh("overflow");
    let bin = EnvoyBinary::istio().unwrap();
    let ca = Ca::new().unwrap();
    let app = rt.block_on(App::start()).unwrap();
    let peers: Vec<String> = (0..MAX_SERIES + 100)
        .map(|i| format!("caller-{i}"))
        .collect();
    let config = serde_json::json!({
        "workload": "order-service",
        "peers": peers
            .iter()
            .map(|p| (identity(p), Value::from(p.as_str())))
            .collect::<serde_json::Map<String, Value>>(),
    });
    let mut plugin = sidecar::rendered_plugin(
        sidecar::wasm_plugin(&m.objects, "order-service-metrics").unwrap(),
    )
    .unwrap();
    plugin.configuration = Some(config.to_string());
    let envoy = m.start_with(&bin, &ca, &app, "order-service", vec![plugin], "flood");
    rt.block_on(async {
        for p in &peers {
            let caller = Caller::new(
                &ca.cert_pem(),
                Some(ca.issue(Some(&identity(p)), "c.test").unwrap()),
            )
            .unwrap();
            assert_eq!(
                send(
                    &envoy,
                    &caller,
                    "order-service",
                    "GET",
                    200,
                    Protocol::Http2
                )
                .await,
                200
            );
        }
    });
    let total = peers.len() as f64;
    let samples = prometheus_after(&envoy, total);
    // Each caller's first request defines a counter and a histogram series, until the bound.
    let overflowed = (peers.len() * 2 - MAX_SERIES) / 2;
    let o = OVERFLOW;
    let requests = labels(&[
        ("source", o),
        ("destination", o),
        ("method", o),
        ("code_class", o),
    ]);
    let durations = labels(&[("source", o), ("destination", o), ("code_class", o)]);
    assert_eq!(
        value(&samples, "meshguard_requests_total", &requests),
        Some(overflowed as f64),
        "{samples:?}"
    );
    assert_eq!(
        value(
            &samples,
            "meshguard_request_duration_milliseconds_count",
            &durations
        ),
        Some(overflowed as f64)
    );
    let callers: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == "meshguard_requests_total"
                && s.labels.get("source").map(String::as_str) != Some(o)
        })
        .collect();
    assert_eq!(callers.len(), peers.len() - overflowed);
    for s in &callers {
        assert_eq!(s.value, 1.0, "{s:?}");
        assert_eq!(
            s.labels.get("destination").map(String::as_str),
            Some("order-service")
        );
    }
    assert_eq!(sum(&samples, "meshguard_requests_total"), total);
    for s in samples.iter().filter(|s| s.name.starts_with("meshguard_")) {
        assert!(
            [
                "meshguard_requests_total",
                "meshguard_request_duration_milliseconds_bucket",
                "meshguard_request_duration_milliseconds_sum",
                "meshguard_request_duration_milliseconds_count",
            ]
            .contains(&s.name.as_str()),
            "series with labels left in its name: {} {:?}",
            s.name,
            s.labels
        );
    }
    eprintln!(
        "Envoy {}: {} callers, {} in their own series, {overflowed} in the overflow series",
        bin.version,
        peers.len(),
        callers.len()
    );
    drop(envoy);
    let _ = std::fs::remove_dir_all(&m.dir);
}

#[test]
fn the_workload_check_reads_istios_node_metadata_in_envoy() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let m = mesh("workload");
    let bin = EnvoyBinary::istio().unwrap();
    let ca = Ca::new().unwrap();
    let app = rt.block_on(App::start()).unwrap();
    let user = Caller::new(
        &ca.cert_pem(),
        Some(ca.issue(Some(&identity("user-service")), "c.test").unwrap()),
    )
    .unwrap();
    let order = Caller::new(
        &ca.cert_pem(),
        Some(
            ca.issue(Some(&identity("order-service")), "c.test")
                .unwrap(),
        ),
    )
    .unwrap();

    // Its own policy in order-service's sidecar: the node names the workload, nothing to check
    // per request, user-service admitted.
    let own = m.start(&bin, &ca, &app, "order-service", "order-service", "own");
    let log = own
        .wait_log(Duration::from_secs(10), |l| {
            l.contains("protecting order-service")
        })
        .unwrap_or_else(|l| panic!("no configure line:\n{l}"));
    assert!(
        log.contains("meshguard-authz: workload order-service confirmed by the node metadata"),
        "{log}"
    );
    // The three metadata fields, read one by one (`xds.node.metadata.<KEY>`), as Istio's agent
    // wrote them for order-service's pod.
    assert!(
        log.contains(&format!(
            "meshguard-authz: node metadata WORKLOAD_NAME=order-service NAMESPACE={NS} SERVICE_ACCOUNT=order-service"
        )),
        "{log}"
    );
    assert_eq!(
        rt.block_on(send(
            &own,
            &user,
            "order-service",
            "GET",
            200,
            Protocol::Http2
        )),
        200
    );
    drop(own);

    // payment-service's policy in order-service's sidecar (a WasmPlugin selecting the wrong
    // pods): every request is denied with wrong_workload, even from a caller payment admits.
    let wrong = m.start(&bin, &ca, &app, "order-service", "payment-service", "wrong");
    let caller = Call::get("/payments");
    let out = rt
        .block_on(order.send(
            wrong.listener(sidecar::LISTENER).unwrap(),
            &server_name("order-service"),
            Protocol::Http2,
            &caller,
        ))
        .unwrap();
    assert_eq!(out.status, 403);
    assert_eq!(
        out.header("x-meshguard-deny-reason"),
        Some("wrong_workload")
    );
    let log = wrong.log_text();
    assert!(
        log.contains("configured for payment-service but running in workload `order-service`"),
        "{log}"
    );
    assert_eq!(
        app.served(),
        1,
        "only the admitted request reached the application"
    );
    drop(wrong);
    let _ = std::fs::remove_dir_all(&m.dir);
}

/// Prometheus (the local cluster's build, `MESHGUARD_PROMETHEUS`) scraping the sidecars' Envoy,
/// stopped by pid when dropped.
struct Prometheus {
    child: std::process::Child,
    addr: std::net::SocketAddr,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn start_prometheus(dir: &std::path::Path, targets: &[(&str, std::net::SocketAddr)]) -> Prometheus {
    let bin = std::env::var_os("MESHGUARD_PROMETHEUS")
        .expect("MESHGUARD_PROMETHEUS is not set: eval \"$(tests/kube/build-cluster-bins.sh)\"");
    std::fs::create_dir_all(dir).unwrap();
    // What the rendered PodMonitor asks for (path /stats/prometheus on the sidecar's Prometheus
    // port), with the `namespace` and `pod` labels the Prometheus Operator's relabeling gives
    // each target; scraped every second here instead of 15 s.
    let mut config = String::from(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\nscrape_configs:\n- job_name: meshguard/meshguard-sidecars\n  metrics_path: /stats/prometheus\n  static_configs:\n",
    );
    for (pod, addr) in targets {
        config.push_str(&format!(
            "  - targets: ['{addr}']\n    labels: {{namespace: {NS}, pod: '{pod}', container: istio-proxy}}\n"
        ));
    }
    let file = dir.join("prometheus.yml");
    std::fs::write(&file, config).unwrap();
    let [port] = meshguard_testcluster::free_ports::<1>().unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = std::process::Command::new(bin)
        .arg(format!("--config.file={}", file.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let p = Prometheus { child, addr };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while meshguard_envoy_tests::envoy::http_get(addr, "/-/ready").is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "Prometheus not ready: {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    p
}

/// The documented queries (docs/metrics.md and the Grafana dashboard) that read the filters'
/// metrics, the dashboard's `$namespace` set.
fn documented_queries() -> Vec<(String, String)> {
    meshguard_testcluster::queries::documented_queries(NS)
        .unwrap()
        .into_iter()
        .filter(|(_, q)| q.contains("meshguard_"))
        .collect()
}

#[test]
fn prometheus_scraping_the_sidecars_answers_every_documented_query() {
    let bin = EnvoyBinary::istio().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let m = mesh("prometheus");
    let ca = Ca::new().unwrap();
    let app = rt.block_on(App::start()).unwrap();
    let order = m.start(&bin, &ca, &app, "order-service", "order-service", "order");
    // payment-service's sidecar with its authorization filter in dry-run mode, so the dry-run
    // queries have something to show.
    let payment = {
        let generated = m.sidecar("payment-service");
        let dir = m.dir.join("payment");
        let mut plugins = m.plugins("payment-service");
        let dry_run = |c: &str| c.replace(r#""mode":"enforce""#, r#""mode":"dry_run""#);
        for p in &mut plugins {
            if let Some(c) = &mut p.configuration {
                *c = dry_run(c);
            }
            // The configuration Istio generated, in the same mode.
            let value = p
                .generated
                .as_mut()
                .map(|g| &mut g["typed_config"]["config"]["configuration"]["value"]);
            if let Some(v) = value {
                if let Some(c) = v.as_str() {
                    *v = Value::String(dry_run(c));
                }
            }
        }
        assert!(
            plugins
                .iter()
                .any(|p| p.served_extension_config().to_string().contains("dry_run")),
            "no plugin in dry-run mode"
        );
        let s = Sidecar {
            dir: dir.clone(),
            node: generated.node(),
            stats_config: generated.stats_config(),
            ca_pem: ca.cert_pem(),
            chains: vec![TlsChain {
                server_name: None,
                cert: ca
                    .issue(
                        Some(&identity("payment-service")),
                        &server_name("payment-service"),
                    )
                    .unwrap(),
            }],
            plaintext: false,
            plugins,
            upstream: app.addr,
        };
        let opts = StartOptions {
            config_yaml: generated.config_yaml(),
            ..StartOptions::default()
        };
        Envoy::start(&bin, &dir, &s.bootstrap().unwrap(), &opts).unwrap()
    };
    let prom = start_prometheus(
        &m.dir.join("prometheus"),
        &[
            ("order-service-0", order.admin),
            ("payment-service-0", payment.admin),
        ],
    );
    let caller = |sa: &str| {
        Caller::new(
            &ca.cert_pem(),
            Some(ca.issue(Some(&identity(sa)), "c.test").unwrap()),
        )
        .unwrap()
    };
    let (user, pay) = (caller("user-service"), caller("payment-service"));
    let queries = documented_queries();
    assert!(queries.len() >= 9, "{queries:?}");
    let mut pending: Vec<(String, String)> = queries.clone();
    let mut answers: Vec<String> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !pending.is_empty() && std::time::Instant::now() < deadline {
        // Traffic between evaluations, so every rate has increases to see.
        rt.block_on(async {
            assert_eq!(
                send(&order, &user, "order-service", "GET", 200, Protocol::Http2).await,
                200
            );
            assert_eq!(
                send(&order, &pay, "order-service", "GET", 200, Protocol::Http2).await,
                403
            );
            // Dry run: denied in the log and metrics, answered by the application.
            assert_eq!(
                send(
                    &payment,
                    &user,
                    "payment-service",
                    "POST",
                    200,
                    Protocol::Http2
                )
                .await,
                200
            );
        });
        pending.retain(|(source, q)| {
            let path = format!("/api/v1/query?query={}", percent_encode(q));
            let Ok(body) = meshguard_envoy_tests::envoy::http_get(prom.addr, &path) else {
                return true;
            };
            let v: Value = serde_json::from_str(&body).unwrap();
            let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
            let values: Vec<f64> = result
                .iter()
                .filter_map(|r| r["value"][1].as_str()?.parse().ok())
                .collect();
            let text = result
                .iter()
                .map(|r| r["metric"].to_string())
                .collect::<Vec<_>>()
                .join(" ");
            let answered = !values.is_empty()
                && values.iter().all(|x| x.is_finite())
                && values.iter().any(|x| *x > 0.0)
                && expected_series(q).iter().all(|n| text.contains(n));
            if answered {
                answers.push(format!(
                    "{source}: {q}\n    {}",
                    result
                        .iter()
                        .map(|r| format!("{} {}", r["metric"], r["value"][1]))
                        .collect::<Vec<_>>()
                        .join("\n    ")
                ));
            }
            !answered
        });
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        pending.is_empty(),
        "queries without data after 90 s of traffic:\n{}",
        pending
            .iter()
            .map(|(s, q)| format!("{s}: {q}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!("{}", answers.join("\n"));
    drop((prom, order, payment));
    let _ = std::fs::remove_dir_all(&m.dir);
}

/// The series (label sets, as Prometheus' JSON writes them) a query must show, from what it
/// selects and groups by; a query is answered only when all of them are there with data.
fn expected_series(query: &str) -> Vec<&'static str> {
    let mut out = Vec::new();
    if query.contains(r#"mode="dry_run""#) {
        out.push(r#""destination":"payment-service","reason":"unknown_peer""#);
    }
    if query.contains(r#"mode="enforce""#) {
        out.push(r#""destination":"order-service","reason":"unknown_peer""#);
    }
    if query.contains("by (source, destination)") || query.contains("by (le, source, destination)")
    {
        out.push(r#""destination":"order-service","source":"user-service""#);
        out.push(r#""destination":"payment-service","source":"user-service""#);
    }
    if query.contains("by (destination, code_class)") {
        out.push(r#""code_class":"2xx","destination":"order-service""#);
        out.push(r#""code_class":"4xx","destination":"order-service""#);
    }
    if query.contains("by (destination, source, reason, mode)") {
        out.push(r#""destination":"order-service","mode":"enforce","reason":"unknown_peer","source":"payment-service""#);
        out.push(r#""destination":"payment-service","mode":"dry_run","reason":"unknown_peer","source":"user-service""#);
    }
    out
}

/// A `TypedExtensionConfig` with its plugin configuration (JSON in a `StringValue`) parsed, so
/// that two serializations of the same JSON compare equal.
fn with_parsed_configuration(mut config: Value) -> Value {
    let value = &mut config["typed_config"]["config"]["configuration"]["value"];
    if let Some(text) = value.as_str() {
        *value = serde_json::from_str(text).unwrap();
    }
    config
}

/// Istio's own code generates, for every rendered workload of the reference mesh and of the
/// four-service example, the Wasm filters the sidecar builder writes: the same ECDS resource
/// names in the same order on each inbound HTTP chain (the router last), each accepting the Wasm
/// and RBAC types (the agent's stand-in for a module it cannot fetch), and the same
/// `TypedExtensionConfig` once the agent has rewritten the module URL to the local file.
#[test]
fn istios_own_code_generates_the_wasm_filters_the_sidecar_is_built_with() {
    let four = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs/examples/four-services.yaml");
    let four = meshguard_manifests::MeshFile::read(&four)
        .unwrap_or_else(|e| panic!("{e}"))
        .spec;
    for (name, spec) in [
        ("reference", meshguard_manifests::MeshSpec::reference()),
        ("four-services", four),
    ] {
        let dir = std::env::temp_dir().join(format!(
            "meshguard-envoy-{}-ecds-{name}",
            std::process::id()
        ));
        let (yaml, objects) = rendered(&spec);
        let modules = sidecar::rendered_modules(&objects).unwrap();
        let generated = generated_filters(&yaml, &dir, &modules).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let deployments = objects.iter().filter(|o| o["kind"] == "Deployment").count();
        assert_eq!(generated.len(), deployments, "{name}");
        for g in &generated {
            let plugins: Vec<Plugin> = sidecar::wasm_plugins_for(&objects, &g.deployment)
                .into_iter()
                .map(|o| sidecar::rendered_plugin(o).unwrap())
                .collect();
            assert!(
                !plugins.is_empty(),
                "{name}: {} has no WasmPlugin",
                g.deployment
            );
            let want: Vec<String> = plugins.iter().map(Plugin::resource_name).collect();
            assert!(!g.chains.is_empty(), "{name}: {}", g.deployment);
            for chain in &g.chains {
                let names: Vec<&str> = chain.http_filters.iter().map(|f| f.name.as_str()).collect();
                eprintln!(
                    "{name}: {} inbound chain {} {}: {names:?}",
                    g.deployment, chain.name, chain.filter_chain_match
                );
                let wasm: Vec<&str> = chain
                    .http_filters
                    .iter()
                    .filter(|f| f.name.starts_with(sidecar::RESOURCE_PREFIX))
                    .map(|f| {
                        assert_eq!(
                            f.type_urls,
                            [sidecar::WASM_TYPE, sidecar::RBAC_TYPE],
                            "{}",
                            f.name
                        );
                        f.name.as_str()
                    })
                    .collect();
                assert_eq!(wasm, want, "{name}: {} chain {}", g.deployment, chain.name);
                assert_eq!(names.last(), Some(&"envoy.filters.http.router"));
            }
            for p in &plugins {
                let istio = g
                    .extension_config(&p.resource_name())
                    .unwrap_or_else(|| panic!("{name}: no ECDS resource {}", p.resource_name()));
                assert_eq!(
                    with_parsed_configuration(istio.clone()),
                    with_parsed_configuration(p.extension_config()),
                    "{name}: {}",
                    p.resource_name()
                );
            }
        }
    }
}
