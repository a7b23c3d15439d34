//! An image registry on loopback: the CNCF distribution registry (`meshguard-registry`, built
//! from github.com/distribution/distribution/v3 by `tests/istio/build.sh`, which exports
//! `MESHGUARD_REGISTRY`), started and stopped by pid, storing in a folder of the caller's.
//! `meshctl publish` pushes there and the real nodes' containerd pulls from there (see
//! [`crate::LocalCluster::trust_plain_http_registry`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::process::Supervised;

/// The environment variable naming the registry binary.
pub const ENV_REGISTRY: &str = "MESHGUARD_REGISTRY";
/// How long the registry may take to say where it listens.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running registry.
#[derive(Debug)]
pub struct Registry {
    process: Supervised,
    addr: String,
}

impl Registry {
    /// Starts a registry storing in `root`; with `user` (`NAME:PASSWORD`) every request needs
    /// those basic credentials, and `realm` names its challenge.
    pub fn start(root: &Path, user: Option<&str>, realm: Option<&str>) -> Result<Registry> {
        let binary = std::env::var_os(ENV_REGISTRY)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .ok_or_else(|| Error::MissingArtifact {
                what: "the distribution registry (meshguard-registry)".into(),
                path: PathBuf::from("meshguard-registry"),
                source_of_path: ENV_REGISTRY.into(),
                script: PathBuf::from("tests/istio/build.sh"),
            })?;
        std::fs::create_dir_all(root)
            .map_err(|e| Error::io(format!("cannot create {}", root.display()), e))?;
        let mut args = vec!["--root".into(), root.as_os_str().to_owned()];
        if let Some(u) = user {
            args.extend(["--user".into(), u.into()]);
        }
        if let Some(r) = realm {
            args.extend(["--realm".into(), r.into()]);
        }
        let log = root.with_extension("log");
        let process = Supervised::spawn("registry", &binary, args, log.clone())?;
        // Its first line says where it listens: it serves from then on.
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            process.check_running()?;
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(addr) = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("listening on "))
            {
                return Ok(Registry {
                    addr: addr.to_owned(),
                    process,
                });
            }
            if Instant::now() > deadline {
                return Err(Error::NotReady {
                    name: "registry",
                    timeout: START_TIMEOUT,
                    last_error: "it did not say where it listens".into(),
                    log: log.clone(),
                    tail: process.log_tail(20),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Where it listens (`127.0.0.1:PORT`).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}
