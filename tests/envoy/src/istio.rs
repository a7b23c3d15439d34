//! What Istio's agent starts a sidecar's Envoy with, from Istio's own code: `meshguard-istio
//! sidecar-bootstrap` (tests/istio/build.sh) injects each rendered Deployment with Istio's
//! injector and runs pilot-agent's bootstrap generator on the injected pod (node metadata from the
//! container's environment, `tools/packaging/common/envoy_bootstrap.json`), and returns the
//! bootstrap override the pod mounts. A test starts Envoy with that bootstrap's `node` and
//! `stats_config` and hands the override to Envoy as `--config-yaml`, as pilot-agent does
//! (`pkg/envoy/proxy.go`), so Envoy itself merges the tag rules.
//!
//! `meshguard-istio sidecar-ecds` runs istiod's own listener and ECDS generation (pilot) for each
//! rendered Deployment's sidecar, with the rendered WasmPlugins reaching pilot through istiod's
//! WasmPlugin → TrafficExtension translation controller, then the agent's rewrite of each module
//! URL to a local file ([`generated_filters`]): the inbound HTTP filters in Istio's order and the
//! `TypedExtensionConfig` of each Wasm filter, as Envoy receives them.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

use crate::Error;

/// The environment variable naming the `meshguard-istio` binary.
pub const ENV_ISTIO_TOOL: &str = "MESHGUARD_ISTIO_TOOL";

/// One Deployment's sidecar as pilot-agent would start it.
#[derive(Debug, Clone, Deserialize)]
pub struct GeneratedSidecar {
    pub deployment: String,
    /// The whole generated bootstrap.
    pub bootstrap: Value,
    /// Where the pod mounts the override (`ISTIO_BOOTSTRAP_OVERRIDE`), if it has one.
    #[serde(default)]
    pub bootstrap_override: Option<String>,
    /// The override's content as JSON.
    #[serde(default, rename = "override")]
    pub override_json: Option<Value>,
}

/// The sidecars of every Deployment in the rendered `yaml` (written to `dir`).
pub fn generated_sidecars(yaml: &str, dir: &Path) -> Result<Vec<GeneratedSidecar>, Error> {
    run_tool("sidecar-bootstrap", &[], yaml, dir)
}

/// One Deployment's inbound HTTP filters as Istio's pilot builds them and its agent hands them to
/// Envoy.
#[derive(Debug, Clone, Deserialize)]
pub struct GeneratedFilters {
    pub deployment: String,
    /// The inbound filter chains of the Deployment's Service ports.
    pub chains: Vec<InboundChain>,
    /// The ECDS resources (`TypedExtensionConfig`) the chains' Wasm filters name.
    pub extension_configs: Vec<Value>,
}

/// An inbound filter chain's HTTP filters.
#[derive(Debug, Clone, Deserialize)]
pub struct InboundChain {
    pub name: String,
    #[serde(rename = "match")]
    pub filter_chain_match: Value,
    pub http_filters: Vec<HttpFilter>,
}

/// An HTTP filter by name; `type_urls` for one configured by discovery (ECDS).
#[derive(Debug, Clone, Deserialize)]
pub struct HttpFilter {
    pub name: String,
    #[serde(default)]
    pub type_urls: Vec<String>,
}

impl GeneratedFilters {
    /// The ECDS resource `name`.
    pub fn extension_config(&self, name: &str) -> Option<&Value> {
        self.extension_configs.iter().find(|c| c["name"] == name)
    }
}

/// What Istio generates for the inbound HTTP filters of every Deployment in the rendered `yaml`
/// (written to `dir`), each module URL resolved to the local file `modules` gives it.
pub fn generated_filters(
    yaml: &str,
    dir: &Path,
    modules: &[(String, PathBuf)],
) -> Result<Vec<GeneratedFilters>, Error> {
    let args: Vec<String> = modules
        .iter()
        .flat_map(|(url, path)| ["--module".to_owned(), format!("{url}={}", path.display())])
        .collect();
    run_tool("sidecar-ecds", &args, yaml, dir)
}

/// Runs `meshguard-istio <command> <args> FILE` on the rendered `yaml` and reads its JSON output.
fn run_tool<T: serde::de::DeserializeOwned>(
    command: &str,
    args: &[String],
    yaml: &str,
    dir: &Path,
) -> Result<T, Error> {
    let tool = std::env::var_os(ENV_ISTIO_TOOL).ok_or(Error::NoTool {
        var: ENV_ISTIO_TOOL,
        script: "tests/istio/build.sh",
    })?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let file = dir.join(format!("rendered-{command}.yaml"));
    std::fs::write(&file, yaml).map_err(|e| Error::io(&file, e))?;
    let out = Command::new(&tool)
        .arg(command)
        .args(args)
        .arg(&file)
        .output()
        .map_err(|e| Error::io(Path::new(&tool), e))?;
    if !out.status.success() {
        return Err(Error::Rendered(format!(
            "meshguard-istio {command}: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| Error::Rendered(e.to_string()))
}

impl GeneratedSidecar {
    /// The node Istio's agent reports.
    pub fn node(&self) -> Value {
        self.bootstrap["node"].clone()
    }

    /// The generated `stats_config` (before the override).
    pub fn stats_config(&self) -> Option<Value> {
        let s = &self.bootstrap["stats_config"];
        (!s.is_null()).then(|| s.clone())
    }

    /// The override as `--config-yaml` text (JSON is YAML).
    pub fn config_yaml(&self) -> Option<String> {
        self.override_json.as_ref().map(Value::to_string)
    }
}
