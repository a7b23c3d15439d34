//! Errors of the test cluster.

use std::path::PathBuf;
use std::time::Duration;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while starting, using or stopping a
/// [`TestCluster`](crate::TestCluster).
///
/// Errors about a process carry the path of its log file (and its last lines)
/// so that a failing test says why the apiserver or etcd did not come up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A binary or CRD directory is not where it was looked for.
    #[error(
        "{what} not found at {} (from {source_of_path}); build it with {}",
        path.display(),
        script.display()
    )]
    MissingArtifact {
        /// What is missing (`kube-apiserver`, `etcd`, `Istio CRDs`, ...).
        what: String,
        /// Where it was looked for.
        path: PathBuf,
        /// Where that path came from (an environment variable, the cache).
        source_of_path: String,
        /// The script that builds it.
        script: PathBuf,
    },

    /// No cache directory could be derived from the environment.
    #[error("cannot locate the cache directory: set MESHGUARD_CACHE_DIR, XDG_CACHE_HOME or HOME")]
    NoCacheDir,

    /// The embedded `versions.env` is malformed.
    #[error("versions.env: {0}")]
    Versions(String),

    /// A file-system or other I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A process could not be spawned.
    #[error("cannot start {name} ({}): {source}", binary.display())]
    Spawn {
        /// `etcd` or `kube-apiserver`.
        name: &'static str,
        /// The binary that was executed.
        binary: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A process exited before it became ready.
    #[error(
        "{name} exited during startup ({status}); log: {}\n--- last lines of the log ---\n{tail}",
        log.display()
    )]
    ExitedEarly {
        /// `etcd` or `kube-apiserver`.
        name: &'static str,
        /// How it exited.
        status: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log file.
        tail: String,
    },

    /// A process did not become ready before the startup deadline.
    #[error(
        "{name} was not ready after {timeout:?} (last check: {last_error}); log: {}\n--- last lines of the log ---\n{tail}",
        log.display()
    )]
    NotReady {
        /// `etcd` or `kube-apiserver`.
        name: &'static str,
        /// The deadline that passed.
        timeout: Duration,
        /// The outcome of the last readiness check.
        last_error: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log file.
        tail: String,
    },

    /// A process did not exit, even after SIGKILL.
    #[error("{name} (pid {pid}) did not exit: {message}")]
    Stop {
        /// `etcd` or `kube-apiserver`.
        name: &'static str,
        /// Its process id.
        pid: u32,
        /// What happened.
        message: String,
    },

    /// TLS or key material could not be produced or read.
    #[error("key material: {0}")]
    Crypto(String),

    /// A kubeconfig could not be read or turned into a client configuration.
    #[error("kubeconfig {}: {source}", path.display())]
    Kubeconfig {
        /// The kubeconfig file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: kube::config::KubeconfigError,
    },

    /// A request to the apiserver failed.
    #[error("{context}: {source}")]
    Kube {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: kube::Error,
    },

    /// A load pulse did not go as expected.
    #[error("load pulse: {0}")]
    Pulse(String),

    /// A caller pod (`callers`) could not be made or did not finish.
    #[error("caller pod: {0}")]
    Caller(String),

    /// The cluster was used after it stopped.
    #[error("the cluster has been stopped")]
    Stopped,

    /// A CRD file could not be parsed.
    #[error("invalid CRD file {}: {message}", path.display())]
    InvalidCrd {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },

    /// Watching a CRD for its Established condition failed.
    #[error("waiting for CRD {name} to be Established: {source}")]
    CrdWait {
        /// The CRD's name.
        name: String,
        /// The underlying error.
        #[source]
        source: kube::runtime::wait::Error,
    },

    /// Something needs a real node, and the cluster was started without one.
    #[error("{0} needs a real node, and the cluster has none")]
    NoRealNode(&'static str),

    /// An installation failed while some nodes could not take pods (a pressure condition, not
    /// Ready, or the taints the node lifecycle controller sets for these): the likely cause.
    #[error("{source}\nnodes that could not take pods: {}", nodes.join("; "))]
    NodesUnfit {
        /// One line per node: its name, then each condition or taint that keeps pods off it.
        nodes: Vec<String>,
        /// The installation's own error.
        #[source]
        source: Box<Error>,
    },

    /// A CRD was applied but did not become Established in time.
    #[error("CRD {name} was not Established after {timeout:?}")]
    CrdNotEstablished {
        /// The CRD's name (`wasmplugins.extensions.istio.io`).
        name: String,
        /// The deadline that passed.
        timeout: Duration,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn kube(context: impl Into<String>, source: kube::Error) -> Self {
        Self::Kube {
            context: context.into(),
            source,
        }
    }
}
