//! The PromQL queries meshguard gives its users: the `promql` blocks of docs/metrics.md and the
//! panel queries of the Grafana dashboard (`manifests/grafana/meshguard-dashboard.json`), for
//! tests that run them against a Prometheus.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The workspace's root.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))
}

/// Every documented query, `(where it is written, the query)`, the dashboard's `$namespace` set
/// to `namespace`.
pub fn documented_queries(namespace: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut in_block = false;
    for line in read(&workspace().join("docs/metrics.md"))?.lines() {
        match (in_block, line.trim()) {
            (false, "```promql") => in_block = true,
            (true, "```") => in_block = false,
            (true, q) if !q.is_empty() => out.push(("docs/metrics.md".to_owned(), q.to_owned())),
            _ => {}
        }
    }
    let path = workspace().join("manifests/grafana/meshguard-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&read(&path)?).map_err(|e| {
        Error::io(
            format!("{} is not JSON", path.display()),
            std::io::Error::other(e),
        )
    })?;
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                let title = panel["title"].as_str().unwrap_or("?");
                out.push((
                    format!("dashboard panel `{title}`"),
                    expr.replace("$namespace", namespace),
                ));
            }
        }
    }
    Ok(out)
}

/// Runs an instant PromQL query on the Prometheus at `url` (`http://127.0.0.1:PORT`, as the
/// local cluster gives it) and returns its JSON answer.
pub async fn instant(url: &str, promql: &str) -> Result<serde_json::Value> {
    let port: u16 = url
        .strip_prefix("http://127.0.0.1:")
        .map(|rest| rest.trim_end_matches('/'))
        .and_then(|port| port.parse().ok())
        .ok_or_else(|| {
            Error::io(
                format!("Prometheus at {url}"),
                std::io::Error::other("not an http://127.0.0.1:PORT address"),
            )
        })?;
    let path = format!(
        "/api/v1/query?query={}",
        crate::local::percent_encode(promql)
    );
    get_json(port, &path).await
}

/// `GET path` on the Prometheus HTTP API on 127.0.0.1:`port`: its JSON answer.
pub(crate) async fn get_json(port: u16, path: &str) -> Result<serde_json::Value> {
    let response = crate::cluster::http_get_loopback(port, path)
        .await
        .map_err(|e| Error::io("querying Prometheus", e))?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).map_err(|e| {
        Error::io(
            "Prometheus' answer",
            std::io::Error::other(format!("{e}: {body}")),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_docs_and_the_dashboard_have_queries() {
        let queries = documented_queries("shop").expect("readable");
        assert!(queries.iter().any(|(p, _)| p == "docs/metrics.md"));
        assert!(queries
            .iter()
            .any(|(p, q)| p.starts_with("dashboard") && q.contains("namespace=\"shop\"")));
        assert!(queries.iter().all(|(_, q)| !q.contains("$namespace")));
    }
}
