//! meshctl's errors: each says what went wrong and how to fix it.

use std::time::Duration;

use meshguard_manifests::RenderError;

/// Everything that can go wrong in a meshctl command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The flags describe objects that cannot be rendered. (The command line names the flag
    /// of an invalid option: `crate::cli::describe`.)
    #[error("cannot render the objects: {0}")]
    Render(#[from] RenderError),

    /// The mesh file cannot be read, or says something meshctl cannot install; the message
    /// names the file, line and field.
    #[error("{0}")]
    MeshFile(#[from] meshguard_manifests::FileError),

    /// A flag cannot apply to the mesh (e.g. `--user-image` for a mesh without user-service).
    #[error("{0}")]
    Override(#[from] meshguard_manifests::spec::OverrideError),

    /// The objects could not be written as YAML.
    #[error("cannot write the objects as YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),

    /// Writing the command's output failed.
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),

    /// No usable cluster configuration.
    #[error("cannot load the cluster configuration from {source_desc}: {message}\n  fix: {hint}")]
    Kubeconfig {
        source_desc: String,
        message: String,
        hint: String,
    },

    /// The API server did not answer. `origin` says which server, from which kubeconfig and
    /// context (`crate::client::Origin`).
    #[error("cannot reach the {origin}: {message}\n  fix: {hint}")]
    Unreachable {
        origin: String,
        message: String,
        hint: String,
    },

    /// `meshctl publish` failed.
    #[error(transparent)]
    Publish(#[from] crate::publish::PublishError),

    /// Preflight found errors: `problems` lists them with their fixes, one per line pair.
    #[error(
        "preflight found {count} problem{} that would break the install:\n{problems}\n\
         (--skip-preflight skips the cluster checks, not the module URL check)",
        if *.count == 1 { "" } else { "s" }
    )]
    Preflight {
        count: usize,
        problems: String,
        /// Every problem is a field of the mesh file asking for what the cluster lacks.
        in_mesh_file: bool,
    },

    /// The API server does not serve a kind meshguard renders.
    #[error(
        "the API server does not serve {kind} ({api_version}){}\n  fix: {hint}",
        crd.as_ref().map(|c| format!(": CustomResourceDefinition {c} is not installed")).unwrap_or_default()
    )]
    NotServed {
        kind: String,
        api_version: String,
        crd: Option<String>,
        hint: String,
    },

    /// A request to the API server failed.
    #[error("{action}: {message}{}", hint.as_ref().map(|h| format!("\n  fix: {h}")).unwrap_or_default())]
    Kube {
        action: String,
        message: String,
        hint: Option<String>,
        /// HTTP status of an API error, 0 for transport errors.
        code: u16,
    },

    /// `--wait` ran out of time.
    #[error(
        "timed out after {}s waiting for {what}: {}\n  fix: {hint}",
        waited.as_secs(),
        pending.join("; ")
    )]
    Timeout {
        what: String,
        waited: Duration,
        pending: Vec<String>,
        hint: String,
    },
}

impl Error {
    /// The exit status the command ends with: 2 for input the user has to fix (the mesh file,
    /// a flag's value), 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::MeshFile(_) | Self::Override(_) => 2,
            Self::Render(RenderError::Option { .. } | RenderError::Spec(_)) => 2,
            Self::Preflight { in_mesh_file, .. } if *in_mesh_file => 2,
            _ => 1,
        }
    }

    /// A failed request: `action` says what meshctl was doing ("applying Deployment
    /// meshguard/order-service").
    pub fn kube(action: impl Into<String>, e: &kube::Error) -> Self {
        let code = match e {
            kube::Error::Api(s) => s.code,
            _ => 0,
        };
        Self::Kube {
            action: action.into(),
            message: describe_kube_error(e),
            hint: kube_hint(e),
            code,
        }
    }

    /// HTTP status of an API error (0 if not one).
    pub fn api_code(&self) -> u16 {
        match self {
            Self::Kube { code, .. } => *code,
            _ => 0,
        }
    }
}

/// A kube error in one line: the API server's message and status, or the transport error with
/// its causes.
pub fn describe_kube_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => {
            let reason = if s.reason.is_empty() {
                String::new()
            } else {
                format!(" {}", s.reason)
            };
            format!("{} (HTTP {}{reason})", s.message, s.code)
        }
        other => crate::causes::with_causes(other),
    }
}

fn kube_hint(e: &kube::Error) -> Option<String> {
    let kube::Error::Api(s) = e else {
        return Some(
            "check that the API server is reachable (`kubectl cluster-info` with the same \
             kubeconfig and context)"
                .to_owned(),
        );
    };
    if s.message.contains("being terminated") {
        return Some(
            "the namespace is being deleted: wait until it is gone (`kubectl wait \
             --for=delete namespace/NAME`), then install again"
                .to_owned(),
        );
    }
    match s.code {
        401 => Some(
            "the API server rejected the credentials: refresh them or pick another --context"
                .to_owned(),
        ),
        403 => Some(
            "the account lacks a permission: meshctl needs get, list, create, patch and delete \
             on every kind `meshctl render` prints (in the namespace) and on namespaces, and \
             watch on Deployments and what uninstall deletes for --wait; cluster-admin has them"
                .to_owned(),
        ),
        409 => Some(
            "another client changed the object at the same time: run the command again".to_owned(),
        ),
        422 | 400 => Some(
            "the API server rejected the object as invalid: check the flag values that end up \
             in it (`meshctl render` shows the object), and that the CRD versions installed \
             match the ones meshctl renders"
                .to_owned(),
        ),
        429 | 500..=599 => Some(
            "the API server (or an admission webhook it calls) failed: retry, and check \
             `kubectl get validatingwebhookconfigurations,mutatingwebhookconfigurations`"
                .to_owned(),
        ),
        _ => None,
    }
}
