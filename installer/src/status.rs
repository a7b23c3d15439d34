//! `status`: for each rendered object, present / missing / drifted, plus the health of the
//! workloads and autoscalers.

use std::fmt::Write as _;

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DynamicObject, ListParams};
use kube::ResourceExt;
use serde::Serialize;
use serde_json::Value;

use crate::client::Connection;
use crate::error::Error;
use crate::resources::{self, not_served, Resources};

/// How many differing fields are listed per object.
const MAX_DRIFT: usize = 5;

/// Whether an object is there as rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Present, with the labels and fields meshctl renders.
    Present,
    /// Not in the cluster (or its kind is not served).
    Missing,
    /// Present, but labels or rendered fields differ.
    Drifted,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Present => "present",
            State::Missing => "missing",
            State::Drifted => "drifted",
        }
    }
}

/// One object's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObjectStatus {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub state: State,
    /// For drifted objects: the differing fields, `path: want X, have Y`.
    pub drift: Vec<String>,
    /// Replicas, autoscaler or readiness information, or why it is missing.
    pub detail: Option<String>,
}

/// Every rendered object's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusReport {
    pub namespace: String,
    pub objects: Vec<ObjectStatus>,
}

impl StatusReport {
    /// Every object present and as rendered.
    pub fn in_sync(&self) -> bool {
        self.objects.iter().all(|o| o.state == State::Present)
    }

    /// How many objects are in `state`.
    pub fn count(&self, state: State) -> usize {
        self.objects.iter().filter(|o| o.state == state).count()
    }

    /// The status of `kind name`, if rendered.
    pub fn get(&self, kind: &str, name: &str) -> Option<&ObjectStatus> {
        self.objects
            .iter()
            .find(|o| o.kind == kind && o.name == name)
    }

    /// An aligned table: KIND, NAME, STATE, DETAILS.
    pub fn table(&self) -> String {
        let rows: Vec<[String; 4]> = self
            .objects
            .iter()
            .map(|o| {
                let name = match &o.namespace {
                    Some(ns) => format!("{ns}/{}", o.name),
                    None => o.name.clone(),
                };
                let mut details: Vec<String> = o.detail.iter().cloned().collect();
                details.extend(o.drift.iter().cloned());
                [
                    o.kind.clone(),
                    name,
                    o.state.as_str().to_owned(),
                    details.join("; "),
                ]
            })
            .collect();
        let header = [
            "KIND".to_owned(),
            "NAME".to_owned(),
            "STATE".to_owned(),
            "DETAILS".to_owned(),
        ];
        let mut widths = [0usize; 3];
        for row in std::iter::once(&header).chain(&rows) {
            for (w, cell) in widths.iter_mut().zip(row.iter()) {
                *w = (*w).max(cell.len());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&rows) {
            let line = format!(
                "{:w0$}  {:w1$}  {:w2$}  {}",
                row[0],
                row[1],
                row[2],
                row[3],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2]
            );
            let _ = writeln!(out, "{}", line.trim_end());
        }
        let _ = write!(
            out,
            "{} object(s): {} present, {} missing, {} drifted",
            self.objects.len(),
            self.count(State::Present),
            self.count(State::Missing),
            self.count(State::Drifted)
        );
        out
    }
}

/// Reads every rendered object back and compares.
pub async fn status(
    conn: &Connection,
    objects: &[DynamicObject],
    namespace: &str,
) -> Result<StatusReport, Error> {
    conn.server_version().await?;
    let client = &conn.client;
    let resources = Resources::for_rendered_kinds(client).await?;
    let mut out = Vec::with_capacity(objects.len());
    for o in objects {
        let object = resources::object_ref(o);
        let mut row = ObjectStatus {
            kind: object.kind.clone(),
            namespace: object.namespace.clone(),
            name: object.name.clone(),
            state: State::Missing,
            drift: Vec::new(),
            detail: None,
        };
        let resolved = match resources.resolve_object(o) {
            Ok(r) => r,
            Err(_) => {
                let (api_version, kind) = o
                    .types
                    .as_ref()
                    .map(|t| (t.api_version.as_str(), t.kind.as_str()))
                    .unwrap_or_default();
                row.detail = Some(first_line(&not_served(api_version, kind).to_string()));
                out.push(row);
                continue;
            }
        };
        let api = resources::api(client, &resolved, object.namespace.as_deref());
        let live = api
            .get_opt(&object.name)
            .await
            .map_err(|e| Error::kube(format!("reading {object}"), &e))?;
        if let Some(live) = live {
            row.drift = drift(o, &live);
            row.state = if row.drift.is_empty() {
                State::Present
            } else {
                State::Drifted
            };
            row.detail = health(&object.kind, &live);
            if let Some(more) = runtime_detail(client, &object.kind, &live).await? {
                row.detail = Some(match row.detail.take() {
                    Some(d) => format!("{d}; {more}"),
                    None => more,
                });
            }
        }
        out.push(row);
    }
    Ok(StatusReport {
        namespace: namespace.to_owned(),
        objects: out,
    })
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_owned()
}

/// The labels, annotations and fields that `rendered` sets and `live` does not have (the same).
pub fn drift(rendered: &DynamicObject, live: &DynamicObject) -> Vec<String> {
    let mut out = Vec::new();
    for (what, want, have) in [
        ("label", rendered.labels(), live.labels()),
        ("annotation", rendered.annotations(), live.annotations()),
    ] {
        for (k, v) in want {
            match have.get(k) {
                Some(h) if h == v => {}
                Some(h) => out.push(format!("{what} {k}: want {v:?}, have {h:?}")),
                None => out.push(format!("{what} {k} missing")),
            }
        }
    }
    let want = serde_json::to_value(&rendered.data).unwrap_or_default();
    let have = serde_json::to_value(&live.data).unwrap_or_default();
    subset_diff(&want, &have, "", &mut out);
    if out.len() > MAX_DRIFT {
        let more = out.len() - MAX_DRIFT;
        out.truncate(MAX_DRIFT);
        out.push(format!("and {more} more"));
    }
    out
}

/// Records where `want` is not contained in `have`: every key `want` sets must be in `have` with
/// a contained value; arrays must have the same length; scalars must be equal (numbers and
/// Kubernetes quantities by value). Fields only `have` sets (defaults, status) are ignored.
fn subset_diff(want: &Value, have: &Value, path: &str, out: &mut Vec<String>) {
    match (want, have) {
        (Value::Null, _) => {}
        (Value::Object(w), Value::Object(h)) => {
            for (k, wv) in w {
                if path.is_empty() && k == "status" {
                    continue;
                }
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match h.get(k) {
                    Some(hv) => subset_diff(wv, hv, &p, out),
                    None if is_empty(wv) => {}
                    None => out.push(format!("{p}: want {}, missing", short(wv))),
                }
            }
        }
        (Value::Array(w), Value::Array(h)) if w.len() == h.len() => {
            for (i, (wv, hv)) in w.iter().zip(h).enumerate() {
                subset_diff(wv, hv, &format!("{path}[{i}]"), out);
            }
        }
        (w, Value::Null) if is_empty(w) => {}
        (Value::Number(w), Value::Number(h)) if w.as_f64() == h.as_f64() => {}
        (Value::String(w), Value::String(h)) if w == h || same_quantity(w, h) => {}
        (w, h) if w == h => {}
        (w, h) => out.push(format!("{path}: want {}, have {}", short(w), short(h))),
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn short(v: &Value) -> String {
    const MAX: usize = 100;
    let s = v.to_string();
    if s.chars().count() > MAX {
        let cut: String = s.chars().take(MAX).collect();
        format!("{cut}…")
    } else {
        s
    }
}

/// Whether two strings are the same Kubernetes quantity (`0.5` and `500m`, `1Gi` and `1024Mi`).
fn same_quantity(a: &str, b: &str) -> bool {
    match (quantity(a), quantity(b)) {
        (Some(x), Some(y)) => (x - y).abs() <= f64::EPSILON * x.abs().max(y.abs()).max(1.0),
        _ => false,
    }
}

fn quantity(s: &str) -> Option<f64> {
    const SUFFIXES: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
    ];
    let (number, factor) = SUFFIXES
        .iter()
        .find_map(|(suffix, f)| s.strip_suffix(suffix).map(|n| (n, *f)))
        .unwrap_or((s, 1.0));
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    number.parse::<f64>().ok().map(|n| n * factor)
}

/// What the controllers made of an object: for a Deployment, where its pods run (by node pool)
/// and why any are Pending (the scheduler's own message); for an HPA, its metric against the
/// target; for a ScaledObject, the HPA KEDA created for it, with its replicas and metric.
async fn runtime_detail(
    client: &kube::Client,
    kind: &str,
    live: &DynamicObject,
) -> Result<Option<String>, Error> {
    let namespace = live.namespace().unwrap_or_default();
    match kind {
        "Deployment" => placement(client, &namespace, live).await,
        "HorizontalPodAutoscaler" => Ok(hpa_metrics(&live.data)),
        "ScaledObject" => {
            let Some(hpa_name) = live.data.pointer("/status/hpaName").and_then(Value::as_str)
            else {
                return Ok(None);
            };
            let api: kube::Api<HorizontalPodAutoscaler> =
                kube::Api::namespaced(client.clone(), &namespace);
            let hpa = api.get_opt(hpa_name).await.map_err(|e| {
                Error::kube(format!("reading HorizontalPodAutoscaler {hpa_name}"), &e)
            })?;
            Ok(Some(match hpa {
                None => format!("its HPA {hpa_name} is missing"),
                Some(hpa) => {
                    let value = serde_json::to_value(&hpa).unwrap_or_default();
                    let status = &value["status"];
                    let mut text = format!(
                        "HPA {hpa_name}: replicas {} current / {} desired",
                        status["currentReplicas"].as_i64().unwrap_or(0),
                        status["desiredReplicas"].as_i64().unwrap_or(0)
                    );
                    if let Some(m) = hpa_metrics(&value) {
                        text.push_str(", ");
                        text.push_str(&m);
                    }
                    text
                }
            }))
        }
        _ => Ok(None),
    }
}

/// The metrics an HPA (`autoscaling/v2`, as JSON) reports against its targets, e.g.
/// `cpu 120% (target 75%)` or `s0-prometheus 1250m per pod (target 500m)`.
fn hpa_metrics(hpa: &Value) -> Option<String> {
    let specs = hpa.pointer("/spec/metrics")?.as_array()?;
    let current = hpa
        .pointer("/status/currentMetrics")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut parts = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let (name, target, now) = match spec["type"].as_str() {
            Some("Resource") => (
                spec.pointer("/resource/name"),
                spec.pointer("/resource/target"),
                current.get(i).and_then(|c| c.pointer("/resource/current")),
            ),
            Some("External") => (
                spec.pointer("/external/metric/name"),
                spec.pointer("/external/target"),
                current.get(i).and_then(|c| c.pointer("/external/current")),
            ),
            _ => continue,
        };
        let name = name.and_then(Value::as_str).unwrap_or("metric");
        let show = |v: Option<&Value>| -> Option<String> {
            let v = v?;
            if let Some(u) = v.get("averageUtilization").and_then(Value::as_i64) {
                return Some(format!("{u}%"));
            }
            for key in ["averageValue", "value"] {
                if let Some(q) = v.get(key).and_then(Value::as_str) {
                    let per = if key == "averageValue" {
                        " per pod"
                    } else {
                        ""
                    };
                    return Some(format!("{q}{per}"));
                }
            }
            None
        };
        let target = show(target).unwrap_or_else(|| "?".to_owned());
        let now = show(now).unwrap_or_else(|| "not measured yet".to_owned());
        parts.push(format!("{name} {now} (target {target})"));
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// Where a Deployment's pods run, by node pool, and the scheduler's reason for any that wait.
async fn placement(
    client: &kube::Client,
    namespace: &str,
    live: &DynamicObject,
) -> Result<Option<String>, Error> {
    let Some(labels) = live
        .data
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
    else {
        return Ok(None);
    };
    let selector: Vec<String> = labels
        .iter()
        .filter_map(|(k, v)| v.as_str().map(|v| format!("{k}={v}")))
        .collect();
    let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), namespace);
    let list = pods
        .list(&ListParams::default().labels(&selector.join(",")))
        .await
        .map_err(|e| {
            Error::kube(
                format!("listing the pods of Deployment {}", live.name_any()),
                &e,
            )
        })?;
    if list.items.is_empty() {
        return Ok(Some("no pods".to_owned()));
    }
    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    let mut pools: std::collections::BTreeMap<String, usize> = Default::default();
    let mut pending: Vec<String> = Vec::new();
    let mut pool_of: std::collections::BTreeMap<String, String> = Default::default();
    for pod in &list.items {
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        match node {
            Some(node) => {
                let pool = match pool_of.get(&node) {
                    Some(p) => p.clone(),
                    None => {
                        let p = match nodes.get_opt(&node).await {
                            Ok(Some(n)) => node_pool(&n),
                            _ => node.clone(),
                        };
                        pool_of.insert(node.clone(), p.clone());
                        p
                    }
                };
                *pools.entry(pool).or_default() += 1;
            }
            None => {
                let why = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"))
                    .and_then(|c| c.message.clone())
                    .unwrap_or_else(|| "not scheduled yet".to_owned());
                pending.push(why);
            }
        }
    }
    let mut parts: Vec<String> = pools
        .iter()
        .map(|(pool, n)| format!("{n} on {pool}"))
        .collect();
    if let Some(first) = pending.first() {
        parts.push(format!("{} Pending: {first}", pending.len()));
    }
    Ok(Some(parts.join(", ")))
}

/// A node's pool: its `cloud.google.com/gke-nodepool` label, else `GPU node`/`CPU node` by
/// whether it has allocatable `nvidia.com/gpu`.
fn node_pool(node: &Node) -> String {
    if let Some(pool) = node
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("cloud.google.com/gke-nodepool"))
    {
        return pool.clone();
    }
    let gpu = node
        .status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref())
        .and_then(|a| a.get(meshguard_manifests::GPU_RESOURCE))
        .is_some_and(|q| q.0 != "0");
    if gpu { "GPU node" } else { "CPU node" }.to_owned()
}

/// Replicas of Deployments, the HPA's current/desired replicas, KEDA's Ready condition.
fn health(kind: &str, live: &DynamicObject) -> Option<String> {
    let status = live.data.get("status");
    let int = |v: Option<&Value>| v.and_then(Value::as_i64).unwrap_or(0);
    match kind {
        "Deployment" => {
            let desired = live
                .data
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let ready = int(status.and_then(|s| s.get("readyReplicas")));
            let available = int(status.and_then(|s| s.get("availableReplicas")));
            Some(format!("{ready}/{desired} ready, {available} available"))
        }
        "HorizontalPodAutoscaler" => match status {
            Some(s) if s.get("desiredReplicas").is_some() => Some(format!(
                "replicas {} current / {} desired",
                int(s.get("currentReplicas")),
                int(s.get("desiredReplicas"))
            )),
            _ => Some("no status yet (the HPA controller has not run)".to_owned()),
        },
        "ScaledObject" => {
            let conditions = status
                .and_then(|s| s.get("conditions"))
                .and_then(Value::as_array);
            let condition = |kind: &str| {
                conditions.and_then(|c| {
                    c.iter()
                        .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
                })
            };
            Some(match condition("Ready") {
                Some(c) => {
                    let st = c.get("status").and_then(Value::as_str).unwrap_or("Unknown");
                    let mut text = match c.get("message").and_then(Value::as_str) {
                        Some(m) if st != "True" && !m.is_empty() => format!("Ready={st}: {m}"),
                        _ => format!("Ready={st}"),
                    };
                    if let Some(active) = condition("Active")
                        .and_then(|c| c.get("status"))
                        .and_then(Value::as_str)
                    {
                        text.push_str(&format!(", Active={active}"));
                    }
                    text
                }
                None => "Ready not reported (is KEDA running?)".to_owned(),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn diff(want: Value, have: Value) -> Vec<String> {
        let mut out = Vec::new();
        subset_diff(&want, &have, "", &mut out);
        out
    }

    #[test]
    fn subsets() {
        assert!(diff(
            json!({"spec": {"a": 1, "b": [{"x": "1"}]}}),
            json!({"spec": {"a": 1.0, "b": [{"x": "1", "y": 2}], "c": 3}, "status": {}})
        )
        .is_empty());
        assert_eq!(
            diff(
                json!({"spec": {"image": "a"}}),
                json!({"spec": {"image": "b"}})
            ),
            ["spec.image: want \"a\", have \"b\""]
        );
        assert_eq!(
            diff(json!({"spec": {"l": [1, 2]}}), json!({"spec": {"l": [1]}})).len(),
            1
        );
        assert!(diff(json!({"spec": {"ingress": []}}), json!({"spec": {}})).is_empty());
        assert!(diff(json!({"cpu": "0.5"}), json!({"cpu": "500m"})).is_empty());
        assert!(diff(json!({"m": "1Gi"}), json!({"m": "1024Mi"})).is_empty());
        assert_eq!(diff(json!({"m": "1Gi"}), json!({"m": "1G"})).len(), 1);
    }

    #[test]
    fn health_lines() {
        let d: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "a"},
            "spec": {"replicas": 2},
            "status": {"readyReplicas": 1, "availableReplicas": 1}
        }))
        .unwrap();
        assert_eq!(health("Deployment", &d).unwrap(), "1/2 ready, 1 available");
        let so: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
            "metadata": {"name": "a"},
            "status": {"conditions": [{"type": "Ready", "status": "False", "message": "no prometheus"}]}
        }))
        .unwrap();
        assert_eq!(
            health("ScaledObject", &so).unwrap(),
            "Ready=False: no prometheus"
        );
    }
}
