//! The Grafana dashboard queries the metrics the filters really emit, under the names and labels
//! `meshguard_mesh::metrics` defines, and the same CPU query KEDA scales on.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshguard_manifests::{order_cpu_query, GRAFANA_DASHBOARD_JSON};
use meshguard_mesh::metrics::{DENIALS_TOTAL, LABELS, REQUESTS_TOTAL, REQUEST_DURATION_MS};
use serde_json::Value;

fn dashboard() -> Value {
    serde_json::from_str(GRAFANA_DASHBOARD_JSON).unwrap()
}

fn exprs(d: &Value) -> Vec<(String, String)> {
    d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap().to_owned();
            p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |t| (title.clone(), t["expr"].as_str().unwrap().to_owned()))
        })
        .collect()
}

#[test]
fn the_dashboard_is_importable() {
    let d = dashboard();
    assert_eq!(d["uid"], "meshguard");
    assert!(d.get("id").is_none(), "an id would collide on import");
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, ["datasource", "namespace"]);
    let mut ids = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        assert_eq!(p["datasource"]["uid"], "${datasource}");
        ids.push(p["id"].as_i64().unwrap());
        for t in p["targets"].as_array().unwrap() {
            assert_eq!(t["datasource"]["uid"], "${datasource}");
            let expr = t["expr"].as_str().unwrap();
            assert!(expr.contains("namespace=\"$namespace\""), "{expr}");
        }
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), d["panels"].as_array().unwrap().len());
}

#[test]
fn the_dashboard_shows_what_was_asked_for() {
    let all = exprs(&dashboard());
    let has = |needle: &str| all.iter().any(|(_, e)| e.contains(needle));
    assert!(has(&format!("rate({REQUESTS_TOTAL}{{")));
    assert!(has("sum by (source, destination)"));
    for q in ["0.5", "0.95"] {
        assert!(has(&format!(
            "histogram_quantile({q}, sum by (le, source, destination) (rate({REQUEST_DURATION_MS}_bucket{{"
        )));
    }
    assert!(has(&format!("rate({DENIALS_TOTAL}{{")));
    assert!(has("reason"));
    assert!(has("kube_horizontalpodautoscaler_status_current_replicas{"));
    assert!(all.iter().any(|(_, e)| *e == order_cpu_query("$namespace")));
}

#[test]
fn only_known_meshguard_metrics_and_labels_are_queried() {
    for (title, expr) in exprs(&dashboard()) {
        for (i, _) in expr.match_indices("meshguard_") {
            let name: String = expr[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let base = name.strip_suffix("_bucket").unwrap_or(&name);
            assert!(
                [REQUESTS_TOTAL, REQUEST_DURATION_MS, DENIALS_TOTAL].contains(&base),
                "{title}: unknown metric {name}"
            );
        }
        if let Some(start) = expr.find("by (") {
            let by = &expr[start + 4..];
            let by = &by[..by.find(')').unwrap()];
            for label in by.split(',').map(str::trim) {
                assert!(
                    LABELS.contains(&label) || label == "le" || label == "container",
                    "{title}: unknown label {label}"
                );
            }
        }
    }
}
