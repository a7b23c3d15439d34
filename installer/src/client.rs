//! Connecting to the cluster the way kubectl chooses it, with errors that say which kubeconfig
//! and context were used.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::error::{describe_kube_error, Error};

/// How long establishing a TCP/TLS connection to the API server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Which cluster to talk to: `--kubeconfig` and `--context`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterTarget {
    /// Kubeconfig file; `None`: `$KUBECONFIG`, else `~/.kube/config`, else in-cluster.
    pub kubeconfig: Option<PathBuf>,
    /// Context in the kubeconfig; `None`: its current context.
    pub context: Option<String>,
}

/// Where the configuration came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `--kubeconfig /path`, `$KUBECONFIG=/a:/b`, `~/.kube/config (/root/.kube/config)` or
    /// `in-cluster service account`.
    pub source: String,
    /// The context used, if a kubeconfig was.
    pub context: Option<String>,
    /// The API server's URL.
    pub server: String,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "API server {} (from {}", self.server, self.source)?;
        if let Some(ctx) = &self.context {
            write!(f, ", context `{ctx}`")?;
        }
        f.write_str(")")
    }
}

/// A client and where its configuration came from.
#[derive(Clone)]
pub struct Connection {
    pub client: Client,
    pub origin: Origin,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Builds a client for `target` (no request is sent yet).
    pub async fn new(target: &ClusterTarget) -> Result<Self, Error> {
        crate::tls::install_crypto_provider();
        let options = KubeConfigOptions {
            context: target.context.clone(),
            ..KubeConfigOptions::default()
        };
        let (mut config, source, context) = match &target.kubeconfig {
            Some(path) => {
                let source = format!("--kubeconfig {}", path.display());
                let kubeconfig = Kubeconfig::read_from(path).map_err(|e| Error::Kubeconfig {
                    source_desc: source.clone(),
                    message: e.to_string(),
                    hint: "check the path given to --kubeconfig".to_owned(),
                })?;
                let context = options
                    .context
                    .clone()
                    .or_else(|| kubeconfig.current_context.clone());
                let config = Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(|e| Error::Kubeconfig {
                        source_desc: source.clone(),
                        message: e.to_string(),
                        hint: context_hint(&target.context),
                    })?;
                (config, source, context)
            }
            None => {
                let source = default_source();
                match Kubeconfig::read() {
                    Ok(kubeconfig) => {
                        let context = options
                            .context
                            .clone()
                            .or_else(|| kubeconfig.current_context.clone());
                        let config = Config::from_custom_kubeconfig(kubeconfig, &options)
                            .await
                            .map_err(|e| Error::Kubeconfig {
                                source_desc: source.clone(),
                                message: e.to_string(),
                                hint: context_hint(&target.context),
                            })?;
                        (config, source, context)
                    }
                    Err(read_error) if target.context.is_none() => {
                        let config = Config::incluster().map_err(|e| Error::Kubeconfig {
                            source_desc: format!("{source}, then the in-cluster service account"),
                            message: format!(
                                "no usable kubeconfig ({read_error}) and not running in a pod \
                                 ({e})"
                            ),
                            hint: "pass --kubeconfig PATH, set KUBECONFIG, or create \
                                   ~/.kube/config (e.g. `gcloud container clusters \
                                   get-credentials CLUSTER`)"
                                .to_owned(),
                        })?;
                        (config, "in-cluster service account".to_owned(), None)
                    }
                    Err(e) => {
                        return Err(Error::Kubeconfig {
                            source_desc: source,
                            message: e.to_string(),
                            hint: "--context needs a kubeconfig: pass --kubeconfig PATH or set \
                                   KUBECONFIG"
                                .to_owned(),
                        })
                    }
                }
            }
        };
        if config.connect_timeout.is_none_or(|t| t > CONNECT_TIMEOUT) {
            config.connect_timeout = Some(CONNECT_TIMEOUT);
        }
        let origin = Origin {
            source,
            context,
            server: config.cluster_url.to_string(),
        };
        let client = Client::try_from(config).map_err(|e| Error::Kubeconfig {
            source_desc: origin.source.clone(),
            message: describe_kube_error(&e),
            hint: "check the cluster's certificate-authority data and the user's credentials \
                   in the kubeconfig"
                .to_owned(),
        })?;
        Ok(Self { client, origin })
    }

    /// Asks the API server for its version: the reachability check every command starts with.
    pub async fn server_version(&self) -> Result<String, Error> {
        self.client
            .apiserver_version()
            .await
            .map(|info| info.git_version)
            .map_err(|e| Error::Unreachable {
                origin: self.origin.to_string(),
                message: describe_kube_error(&e),
                hint: unreachable_hint(&e),
            })
    }
}

fn context_hint(context: &Option<String>) -> String {
    match context {
        Some(c) => format!(
            "check that context `{c}` exists (`kubectl config get-contexts`) and names a cluster \
             and a user"
        ),
        None => "check the kubeconfig's current context (`kubectl config current-context`), or \
                 pass --context"
            .to_owned(),
    }
}

fn default_source() -> String {
    match std::env::var("KUBECONFIG") {
        Ok(v) if !v.is_empty() => format!("$KUBECONFIG={v}"),
        _ => "~/.kube/config".to_owned(),
    }
}

fn unreachable_hint(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) if status.code == 401 => {
            "the API server rejected the credentials: refresh them (e.g. `gcloud container \
             clusters get-credentials CLUSTER`) or pick another --context"
                .to_owned()
        }
        kube::Error::Api(status) if status.code == 403 => {
            "the credentials may not read the server version: use an account with cluster \
             access"
                .to_owned()
        }
        _ => "check that the cluster is running and reachable from here (VPN, firewall, \
              authorized networks), and that --kubeconfig/--context name the right cluster"
            .to_owned(),
    }
}
