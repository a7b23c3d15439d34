//! Istio objects (mTLS, the filters, their stats) and the optional Prometheus `PodMonitor`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::DynamicObject;
use meshguard_mesh::metrics::STATS_TAGS;
use meshguard_mesh::{Mesh, Service};
use serde_json::{json, Value};

use crate::object::{custom, meta, typed};
use crate::{labels, RenderError, RenderOptions, INSTANCE_KEY, PART_OF, SYSTEM_NAME};

/// `pluginName` of the authorization filter (Envoy's root id for it).
pub(crate) const AUTHZ_PLUGIN_NAME: &str = "meshguard-authz";
/// `pluginName` of the metrics filter.
pub(crate) const METRICS_PLUGIN_NAME: &str = "meshguard-metrics";

/// Mutual TLS required for every workload in the namespace: a plaintext connection has no peer
/// identity, so it is refused before any filter runs (the authorization filter also denies
/// requests without one, `no_mtls`, should this ever be relaxed).
pub(crate) fn peer_authentication(opts: &RenderOptions) -> DynamicObject {
    custom(
        "security.istio.io/v1",
        "PeerAuthentication",
        meta(
            "default",
            Some(&opts.namespace),
            labels(&opts.namespace, SYSTEM_NAME, "mtls"),
        ),
        json!({"mtls": {"mode": "STRICT"}}),
    )
}

/// Labels every meshguard pod carries, for selecting all of them at once.
fn all_pods(opts: &RenderOptions) -> Value {
    json!({PART_OF.0: PART_OF.1, INSTANCE_KEY: opts.namespace})
}

/// Name of the ConfigMap holding the sidecars' bootstrap override (see [`bootstrap_override`]).
pub const BOOTSTRAP_OVERRIDE_CONFIG_MAP: &str = "meshguard-sidecar-bootstrap";
/// The key Istio's injector mounts: the pod annotation `sidecar.istio.io/bootstrapOverride`
/// naming this ConfigMap makes the injection template mount it at `/etc/istio/custom-bootstrap`
/// and set `ISTIO_BOOTSTRAP_OVERRIDE=/etc/istio/custom-bootstrap/custom_bootstrap.json`
/// (istio `manifests/charts/istio-control/istio-discovery/files/injection-template.yaml`).
pub const BOOTSTRAP_OVERRIDE_KEY: &str = "custom_bootstrap.json";

/// The filters' tag-extraction rules as an Envoy bootstrap fragment:
/// `{"stats_config":{"stats_tags":[...]}}`.
pub fn bootstrap_override_json() -> String {
    let tags: Vec<Value> = STATS_TAGS
        .iter()
        .map(|t| json!({"tag_name": t.tag_name, "regex": t.regex}))
        .collect();
    json!({"stats_config": {"stats_tags": tags}}).to_string()
}

/// The ConfigMap the pods' `sidecar.istio.io/bootstrapOverride` annotation names. Istio's
/// pilot-agent passes the file to Envoy as `--config-yaml` (istio `pkg/envoy/proxy.go`), which
/// Envoy merges into the bootstrap Istio generated: the `stats_tags` are appended to Istio's own,
/// so a stat named `wasmcustom.meshguard_requests_total.source=a.destination=b...` reaches
/// Prometheus as `meshguard_requests_total{source="a",destination="b",...}`.
///
/// The bootstrap is read when a sidecar starts, and the pod cannot start without this ConfigMap
/// (the injected volume is not optional): it is applied before the Deployments.
pub(crate) fn bootstrap_override(opts: &RenderOptions) -> Result<DynamicObject, RenderError> {
    typed(&ConfigMap {
        metadata: meta(
            BOOTSTRAP_OVERRIDE_CONFIG_MAP,
            Some(&opts.namespace),
            labels(&opts.namespace, SYSTEM_NAME, "telemetry"),
        ),
        data: Some(BTreeMap::from([(
            BOOTSTRAP_OVERRIDE_KEY.to_owned(),
            bootstrap_override_json(),
        )])),
        ..ConfigMap::default()
    })
}

/// What differs between the two WasmPlugins of a service.
struct Plugin<'a> {
    url: &'a str,
    sha256: Option<&'a String>,
    plugin_name: &'a str,
    phase: &'a str,
    fail_strategy: &'a str,
    config: Value,
}

/// A WasmPlugin spec for a service's pods.
fn plugin_spec(s: &Service, opts: &RenderOptions, p: Plugin<'_>) -> Value {
    let Plugin {
        url,
        sha256,
        plugin_name,
        phase,
        fail_strategy,
        config,
    } = p;
    let mut spec = json!({
        "selector": {"matchLabels": {crate::NAME_KEY: s.name}},
        "url": url,
        "imagePullPolicy": "IfNotPresent",
        "pluginName": plugin_name,
        "phase": phase,
        "type": "HTTP",
        "failStrategy": fail_strategy,
        // Inbound traffic to the service's port: the filters protect and measure the workload
        // the sidecar fronts, not its outbound calls.
        "match": [{"mode": "SERVER", "ports": [{"number": s.port}]}],
        "pluginConfig": config,
    });
    if let Value::Object(map) = &mut spec {
        if let Some(sha) = sha256 {
            map.insert("sha256".into(), Value::String(sha.clone()));
        }
        if let Some(secret) = &opts.module_pull_secret {
            map.insert("imagePullSecret".into(), Value::String(secret.clone()));
        }
    }
    spec
}

fn to_config_value<T: serde::Serialize>(name: &str, config: &T) -> Result<Value, RenderError> {
    serde_json::to_value(config).map_err(|e| RenderError::Object {
        kind: "WasmPlugin".into(),
        name: name.to_owned(),
        message: e.to_string(),
    })
}

/// The identity authorization filter for a service: its callers from the call graph, by SPIFFE
/// identity. `AUTHZ` phase; `FAIL_RELOAD`: a module that cannot be fetched or fails to start
/// denies traffic instead of letting it through unchecked (Istio puts a deny-all RBAC filter in
/// its place, as for `FAIL_CLOSE`), and a VM that fails at run time is recreated for the next
/// request instead of failing every request until the proxy restarts.
pub(crate) fn authz_plugin(
    mesh: &Mesh,
    s: &Service,
    opts: &RenderOptions,
) -> Result<DynamicObject, RenderError> {
    let name = format!("{}-authz", s.name);
    let config = mesh.authz_config(&s.name, opts.authz_mode, opts.log_level)?;
    config.validate().map_err(|e| RenderError::Object {
        kind: "WasmPlugin".into(),
        name: name.clone(),
        message: e.to_string(),
    })?;
    let config = to_config_value(&name, &config)?;
    Ok(custom(
        "extensions.istio.io/v1alpha1",
        "WasmPlugin",
        meta(
            &name,
            Some(&opts.namespace),
            labels(&opts.namespace, &s.name, "authz-filter"),
        ),
        plugin_spec(
            s,
            opts,
            Plugin {
                url: &opts.authz_module_url,
                sha256: opts.authz_module_sha256.as_ref(),
                plugin_name: AUTHZ_PLUGIN_NAME,
                phase: "AUTHZ",
                fail_strategy: "FAIL_RELOAD",
                config,
            },
        ),
    ))
}

/// The request metrics filter for a service. `STATS` phase; `FAIL_OPEN`: losing metrics must
/// not take the service down (authorization does not depend on this filter).
pub(crate) fn metrics_plugin(
    mesh: &Mesh,
    s: &Service,
    opts: &RenderOptions,
) -> Result<DynamicObject, RenderError> {
    let name = format!("{}-metrics", s.name);
    let config = mesh.metrics_config(&s.name, opts.log_level)?;
    config.validate().map_err(|e| RenderError::Object {
        kind: "WasmPlugin".into(),
        name: name.clone(),
        message: e.to_string(),
    })?;
    let config = to_config_value(&name, &config)?;
    Ok(custom(
        "extensions.istio.io/v1alpha1",
        "WasmPlugin",
        meta(
            &name,
            Some(&opts.namespace),
            labels(&opts.namespace, &s.name, "metrics-filter"),
        ),
        plugin_spec(
            s,
            opts,
            Plugin {
                url: &opts.metrics_module_url,
                sha256: opts.metrics_module_sha256.as_ref(),
                plugin_name: METRICS_PLUGIN_NAME,
                phase: "STATS",
                fail_strategy: "FAIL_OPEN",
                config,
            },
        ),
    ))
}

/// Prometheus Operator scrape of every meshguard sidecar's Envoy stats (`http-envoy-prom`,
/// `:15090/stats/prometheus`, the port Istio declares on the injected proxy). kube-prometheus-stack
/// ignores `prometheus.io/*` annotations, so without this (or an equivalent scrape config) the
/// filters' metrics never reach Prometheus. Prometheus adds the `namespace` and `pod` labels the
/// queries use.
pub(crate) fn pod_monitor(opts: &RenderOptions) -> DynamicObject {
    custom(
        "monitoring.coreos.com/v1",
        "PodMonitor",
        meta(
            "meshguard-sidecars",
            Some(&opts.namespace),
            labels(&opts.namespace, SYSTEM_NAME, "telemetry"),
        ),
        json!({
            "selector": {"matchLabels": all_pods(opts)},
            "podMetricsEndpoints": [{
                "port": "http-envoy-prom",
                "path": "/stats/prometheus",
                "interval": "15s",
            }],
        }),
    )
}
