//! What Istio's agent starts a sidecar's Envoy with, from Istio's own code: `meshguard-istio
//! sidecar-bootstrap` (tests/istio/build.sh) injects each rendered Deployment with Istio's
//! injector and runs pilot-agent's bootstrap generator on the injected pod (node metadata from the
//! container's environment, `tools/packaging/common/envoy_bootstrap.json`), and returns the
//! bootstrap override the pod mounts. A test starts Envoy with that bootstrap's `node` and
//! `stats_config` and hands the override to Envoy as `--config-yaml`, as pilot-agent does
//! (`pkg/envoy/proxy.go`), so Envoy itself merges the tag rules.

use std::path::Path;
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
    let tool = std::env::var_os(ENV_ISTIO_TOOL).ok_or(Error::NoTool {
        var: ENV_ISTIO_TOOL,
        script: "tests/istio/build.sh",
    })?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let file = dir.join("rendered.yaml");
    std::fs::write(&file, yaml).map_err(|e| Error::io(&file, e))?;
    let out = Command::new(&tool)
        .arg("sidecar-bootstrap")
        .arg(&file)
        .output()
        .map_err(|e| Error::io(Path::new(&tool), e))?;
    if !out.status.success() {
        return Err(Error::Rendered(format!(
            "meshguard-istio sidecar-bootstrap: {}",
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
