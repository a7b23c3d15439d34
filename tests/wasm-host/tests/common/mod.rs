//! Shared test helpers: builds the probe filter (once per test binary).

#![allow(dead_code, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Path of the probe filter `.wasm`, building it first if needed with
/// `cargo build --release --target wasm32-wasip1` into `<workspace>/target/probe-filter`.
pub fn probe_wasm() -> PathBuf {
    static PATH: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match PATH.get_or_init(build_probe) {
        Ok(path) => path.clone(),
        Err(e) => panic!("cannot build the probe filter: {e}"),
    }
}

fn build_probe() -> Result<PathBuf, String> {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let probe_dir = crate_dir.join("testdata").join("probe-filter");
    let workspace = crate_dir
        .parent()
        .and_then(Path::parent)
        .ok_or("cannot locate the workspace root")?;
    let target_dir = workspace.join("target").join("probe-filter");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let output = Command::new(cargo)
        .current_dir(&probe_dir)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip1",
            "--manifest-path",
        ])
        .arg(probe_dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target_dir)
        // Flags meant for the host build (coverage, sanitizers) must not leak
        // into the wasm build.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "cargo build failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let wasm = target_dir
        .join("wasm32-wasip1")
        .join("release")
        .join("probe_filter.wasm");
    if !wasm.exists() {
        return Err(format!("{} was not produced", wasm.display()));
    }
    Ok(wasm)
}
