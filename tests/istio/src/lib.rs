//! What Istio's own code does with the objects `meshctl` renders.
//!
//! `tests/istio/build.sh` builds `meshguard-istio`, a small Go program over istio.io/istio (pinned
//! in `tests/istio/versions.env`) that runs Istio's sidecar injector, its bootstrap generator,
//! `istioctl validate` and its Wasm module fetcher; [`tool`] finds it through
//! `MESHGUARD_ISTIO_TOOL`. [`envoy`] applies what Envoy does with the bootstrap's stats settings
//! to stat names, with an ECMAScript regex engine.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, Output};

pub mod envoy;

/// Environment variable naming the `meshguard-istio` binary (`tests/istio/build.sh` prints it).
pub const TOOL_ENV: &str = "MESHGUARD_ISTIO_TOOL";

/// The sidecar `stats_config` Istio generates for each rendered Deployment (the output of
/// `meshguard-istio sidecar-stats manifests/rendered/default.yaml`), kept current by this
/// crate's `sidecar_stats_snapshot_is_what_istio_generates` test.
pub const SIDECAR_STATS_SNAPSHOT: &str = include_str!("../golden/sidecar-stats.json");

/// Why Istio's code could not be run.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error(
        "{TOOL_ENV} is not set: build Istio's code with `eval \"$(tests/istio/build.sh)\"` \
         (scripts/test.sh does this)"
    )]
    NotConfigured,
    #[error("{0} does not exist: run `eval \"$(tests/istio/build.sh)\"`")]
    Missing(PathBuf),
    #[error("could not run {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`meshguard-istio {args}` failed ({status}):\n{output}")]
    Failed {
        args: String,
        status: String,
        output: String,
    },
}

/// The `meshguard-istio` binary.
pub fn tool() -> Result<PathBuf, ToolError> {
    let path = PathBuf::from(std::env::var_os(TOOL_ENV).ok_or(ToolError::NotConfigured)?);
    if !path.is_file() {
        return Err(ToolError::Missing(path));
    }
    Ok(path)
}

/// Runs `meshguard-istio` with `args`; its stdout when it exits 0.
pub fn run<I, S>(args: I) -> Result<String, ToolError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<S> = args.into_iter().collect();
    let shown = args
        .iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let out = run_raw(&args)?;
    if !out.status.success() {
        return Err(ToolError::Failed {
            args: shown,
            status: out.status.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `meshguard-istio` with `args` and returns whatever it did.
pub fn run_raw<I, S>(args: I) -> Result<Output, ToolError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_raw_env(args, &[])
}

/// Runs `meshguard-istio` with `args` and extra environment variables (Istio reads some of its
/// settings, e.g. `ENABLE_NATIVE_SIDECARS`, from the environment).
pub fn run_raw_env<I, S>(args: I, env: &[(&str, &str)]) -> Result<Output, ToolError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let path = tool()?;
    Command::new(&path)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .map_err(|source| ToolError::Spawn { path, source })
}
