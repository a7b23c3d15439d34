//! The filters' metric labels, through what Istio and Envoy really do.
//!
//! 1. Istio's injector (`pkg/kube/inject`, default templates) injects each rendered Deployment;
//!    the pod's `sidecar.istio.io/bootstrapOverride` annotation makes it mount the
//!    `meshguard-sidecar-bootstrap` ConfigMap and set `ISTIO_BOOTSTRAP_OVERRIDE`
//!    (istio `manifests/charts/istio-control/istio-discovery/files/injection-template.yaml`).
//! 2. Istio's bootstrap generator (`pkg/bootstrap`) builds that sidecar's bootstrap from the
//!    injected container's environment, as pilot-agent does before starting Envoy; pilot-agent
//!    passes the override file to Envoy as `--config-yaml` (istio `pkg/envoy/proxy.go`), merged
//!    into the bootstrap with protobuf merge semantics (repeated `stats_tags` are appended).
//! 3. The resulting `stats_matcher` and `stats_tags` are applied, as Envoy applies them, with an
//!    ECMAScript regex engine (`meshguard_istio_tests::envoy`), to every stat name the compiled
//!    filters define in the Proxy-Wasm host, for every kind of series they emit.
//!
//! The result must be exactly the table in docs/metrics.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use meshguard_filter_tests::{identity, Sidecar};
use meshguard_istio_tests::envoy::{self, parse_sidecar_stats, SidecarStats};
use meshguard_istio_tests::{run, SIDECAR_STATS_SNAPSHOT};
use meshguard_manifests::{render, to_yaml, RenderOptions};
use meshguard_mesh::metrics::{SOURCE_NONE, SOURCE_UNKNOWN};
use meshguard_mesh::Mode;
use proxy_wasm_host::{MetricType, Properties, RequestSpec};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

/// A rendering written to a file of its own (removed when dropped).
struct Rendered(PathBuf);

impl Rendered {
    fn new(tag: &str, yaml: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("meshguard-istio-{tag}-{}.yaml", std::process::id()));
        std::fs::write(&path, yaml).unwrap();
        Self(path)
    }
}

impl Drop for Rendered {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn default_yaml(namespace: &str) -> String {
    let spec = meshguard_manifests::MeshSpec::reference();
    to_yaml(&render(&spec, &RenderOptions::new(namespace)).unwrap()).unwrap()
}

/// Istio's sidecar stats settings for each Deployment of `yaml`.
fn istio_sidecar_stats(tag: &str, yaml: &str) -> Vec<SidecarStats> {
    let file = Rendered::new(tag, yaml);
    let out = run(["sidecar-stats".as_ref(), file.0.as_os_str()]).unwrap_or_else(|e| panic!("{e}"));
    parse_sidecar_stats(&out).unwrap()
}

#[test]
fn sidecar_stats_snapshot_is_what_istio_generates() {
    // The snapshot the demo uses is Istio's output for manifests/rendered/default.yaml.
    let yaml = std::fs::read_to_string(root().join("manifests/rendered/default.yaml")).unwrap();
    let file = Rendered::new("snapshot", &yaml);
    let now = run(["sidecar-stats".as_ref(), file.0.as_os_str()]).unwrap_or_else(|e| panic!("{e}"));
    let path = root().join("tests/istio/golden/sidecar-stats.json");
    if std::env::var("MESHGUARD_BLESS").as_deref() == Ok("1") {
        std::fs::write(&path, &now).unwrap();
        return;
    }
    let want: serde_json::Value = serde_json::from_str(SIDECAR_STATS_SNAPSHOT).unwrap();
    let got: serde_json::Value = serde_json::from_str(&now).unwrap();
    assert!(
        want == got,
        "tests/istio/golden/sidecar-stats.json is not what Istio generates for \
         manifests/rendered/default.yaml; after an intended change run \
         `MESHGUARD_BLESS=1 cargo test -p meshguard-istio-tests --test metrics`.\nIstio now:\n{now}"
    );
}

/// One row of the table in docs/metrics.md.
#[derive(Debug)]
struct Documented {
    kind: String,
    labels: Vec<String>,
}

fn documented() -> BTreeMap<String, Documented> {
    let doc = std::fs::read_to_string(root().join("docs/metrics.md")).unwrap();
    let ticked = |cell: &str| -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    };
    let mut out = BTreeMap::new();
    for line in doc.lines().filter(|l| l.starts_with("| `meshguard_")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let name = ticked(cells[1]).remove(0);
        out.insert(
            name,
            Documented {
                kind: cells[2].to_owned(),
                labels: ticked(cells[3]),
            },
        );
    }
    assert_eq!(
        out.len(),
        4,
        "the metrics table in docs/metrics.md: {out:?}"
    );
    out
}

/// Stat names the compiled filters define, with their type, after traffic that produces every
/// kind of series: admitted calls with every code class, denials for each reason the traffic can
/// trigger (no mTLS, unknown peer, a caller the policy does not name), in both modes.
fn filter_stats() -> BTreeSet<(MetricType, String)> {
    let mut out = BTreeSet::new();
    for mode in [Mode::Enforce, Mode::DryRun] {
        let mut order = Sidecar::new("order-service", mode).unwrap();
        let mut payment = Sidecar::new("payment-service", mode).unwrap();
        let user = |m: &str, p: &str| {
            RequestSpec::new(m, p)
                .properties(Properties::new().mtls_peer(&identity("user-service")))
        };
        for (req, status) in [
            (user("GET", "/orders?user_id=1"), 200),
            (user("GET", "/orders/404"), 404),
            (user("POST", "/orders"), 503),
            (user("GET", "/orders/moved"), 301),
            (user("GET", "/orders/early"), 103),
            (
                RequestSpec::new("GET", "/orders")
                    .properties(Properties::new().mtls_peer(&identity("payment-service"))),
                200,
            ),
            (
                RequestSpec::new("GET", "/orders").properties(
                    Properties::new().mtls_peer("spiffe://cluster.local/ns/default/sa/default"),
                ),
                200,
            ),
            (
                RequestSpec::new("GET", "/orders").properties(Properties::new().plaintext()),
                200,
            ),
        ] {
            order.call(&req, status).unwrap();
        }
        payment
            .call(
                &RequestSpec::new("POST", "/payments")
                    .properties(Properties::new().mtls_peer(&identity("order-service"))),
                200,
            )
            .unwrap();
        for sidecar in [&order, &payment] {
            for host in [&sidecar.authz, &sidecar.metrics] {
                out.extend(host.metric_names());
            }
        }
    }
    out
}

fn check_series(stats: &SidecarStats, filter_stats: &BTreeSet<(MetricType, String)>) {
    let doc = documented();
    let sidecar = envoy::Sidecar::new(&stats.stats_config).unwrap_or_else(|e| {
        panic!(
            "{}: Envoy would refuse the stats settings: {e}",
            stats.deployment
        )
    });
    let mut seen = BTreeSet::new();
    for (kind, stat) in filter_stats {
        let Some((series, tagged)) = sidecar.series(stat) else {
            panic!("{}: the stats matcher drops {stat}", stats.deployment)
        };
        let Some(d) = doc.get(&series.name) else {
            panic!(
                "{}: {stat} is exported as `{}`, not a documented metric (tags: {:?})",
                stats.deployment, series.name, tagged.tags
            )
        };
        assert_eq!(tagged.name, format!("wasmcustom.{}", series.name), "{stat}");
        let want_kind = match kind {
            MetricType::Counter => "counter",
            MetricType::Histogram => "histogram",
            MetricType::Gauge => "gauge",
        };
        assert_eq!(d.kind, want_kind, "{}", series.name);
        let labels: Vec<&String> = series.labels.keys().collect();
        let mut want: Vec<&String> = d.labels.iter().collect();
        want.sort();
        assert_eq!(labels, want, "labels of {stat}");
        for (k, v) in &series.labels {
            assert!(
                !v.is_empty() && !v.contains(['.', '=', '"']),
                "{stat}: label {k}={v:?}"
            );
        }
        seen.insert(series.name.clone());
    }
    let all: BTreeSet<String> = doc.keys().cloned().collect();
    assert_eq!(seen, all, "every documented metric is emitted");
}

#[test]
fn every_stat_the_filters_define_reaches_prometheus_as_a_documented_series() {
    let stats = filter_stats();
    // The traffic above reaches every source kind.
    for s in [
        "user-service",
        "payment-service",
        SOURCE_UNKNOWN,
        SOURCE_NONE,
    ] {
        assert!(
            stats
                .iter()
                .any(|(_, n)| n.contains(&format!(".source={s}."))),
            "no series from source {s}"
        );
    }
    // A filter past its series budget counts in overflow series (every label `overflow`): they
    // are series it can emit too.
    let overflow: BTreeSet<(MetricType, String)> = stats
        .iter()
        .map(|(k, n)| (*k, meshguard_mesh::metrics::overflow_series(n)))
        .collect();
    assert!(overflow.iter().all(|(_, n)| n.contains("=overflow")));
    let stats: BTreeSet<(MetricType, String)> = stats.union(&overflow).cloned().collect();
    let sidecars = istio_sidecar_stats("series", &default_yaml("meshguard"));
    assert_eq!(
        sidecars
            .iter()
            .map(|s| s.deployment.as_str())
            .collect::<Vec<_>>(),
        ["user-service", "order-service", "payment-service"]
    );
    for s in &sidecars {
        assert_eq!(
            s.bootstrap_override.as_deref(),
            Some("/etc/istio/custom-bootstrap/custom_bootstrap.json"),
            "{}: Istio's injector set no bootstrap override",
            s.deployment
        );
        assert_eq!(s.stats_config.use_all_default_tags, Some(false));
        check_series(s, &stats);
    }
}

#[test]
fn without_the_bootstrap_override_the_labels_stay_in_the_name() {
    // What every current Istio did with the EnvoyFilter BOOTSTRAP patch: nothing. The series
    // then carries its labels in its name, and the documented queries find nothing.
    let yaml = default_yaml("meshguard");
    let stripped: String = yaml
        .lines()
        .filter(|l| !l.contains("sidecar.istio.io/bootstrapOverride"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(stripped, yaml);
    let sidecars = istio_sidecar_stats("no-override", &stripped);
    let s = &sidecars[0];
    assert_eq!(s.bootstrap_override, None);
    let sidecar = envoy::Sidecar::new(&s.stats_config).unwrap();
    let stat =
        meshguard_mesh::metrics::requests_total("user-service", "order-service", "GET", "2xx");
    let (series, _) = sidecar.series(&stat).unwrap();
    assert_eq!(
        series.name,
        "meshguard_requests_total_source_user_service_destination_order_service_method_GET_code_class_2xx"
    );
    assert!(series.labels.is_empty());
}

#[test]
fn the_stats_tags_use_only_constructs_std_regex_and_ecmascript_agree_on() {
    // Our rules need no rewriting for the ECMAScript engine: what Envoy compiles is what runs here.
    for t in meshguard_mesh::metrics::STATS_TAGS {
        assert_eq!(
            envoy::ecmascript_pattern(t.regex).unwrap(),
            t.regex,
            "{}",
            t.tag_name
        );
        assert!(!t.regex.contains("(?<") && !t.regex.contains("\\p{") && !t.regex.contains("(?i"));
    }
}
