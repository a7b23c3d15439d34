//! The local cluster's real nodes: a kubelet and a containerd of their own per node, pods on a
//! bridge per node, Services through kube-proxy, names through CoreDNS.
//!
//! Every node is host processes, kept apart from the others the way kind keeps its node
//! containers apart, without the containers:
//!
//! - **its own containerd** (a kubelet kills the runtime's pods it does not know), with the CRI
//!   plugin on, its state in the node's folder ([`Containerd::start_node`]);
//! - **its own mount namespace**, which containerd starts in and the kubelet joins, with fresh
//!   `/run`, `/var/lib` and `/var/log` ([`crate::containerd::NODE_MOUNTS`]): the kubelet's
//!   `/var/lib/kubelet/device-plugins` ignores `--root-dir`, and a starting kubelet wipes it
//!   (kubernetes issues #131977 and #120626);
//! - **its own cgroup root** (`cgroupRoot`, cgroupfs driver; this machine has cgroup v1, which
//!   kubelet 1.35 refuses unless `failCgroupV1: false`), root folder, ports, pod-log folder and
//!   serving certificate (from the cluster's CA, so metrics-server and Prometheus verify it);
//! - **its own bridge and pod subnet** (`10.245.<i>.0/24`, the node's address `.1` on the
//!   bridge; the CNI `bridge` and `host-local` plugins).
//!
//! The nodes share the host's network namespace, so one kube-proxy (nftables mode: its own
//! `kube-proxy` tables, deleted on stop) and one CoreDNS (a host process answering on the first
//! node's address, behind the `kube-dns` Service) serve them all. Routing between the bridges
//! needs IPv4 forwarding: it is switched on while the nodes run and put back as it was.
//!
//! Stopping leaves nothing: kubelets first, then each runtime's containers, the runtime, and
//! whatever is left in the node's mount namespace (which takes its mounts and the pods' network
//! namespaces with it), then kube-proxy and CoreDNS, the cgroup roots, the bridges, the
//! nftables tables and the forwarding setting. [`Footprint::leftovers`] checks that.

use std::ffi::OsString;
use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::artifacts::NodeArtifacts;
use crate::cluster::{arg, free_ports};
use crate::containerd::{self, find_program, Containerd, CriSettings};
use crate::error::{Error, Result};
use crate::forward::Forwarder;
use crate::local::{CPU_POOL, GPU_POOL};
use crate::oci;
use crate::process::Supervised;

/// The sandbox image every node imports before its kubelet starts (never pulled).
pub const SANDBOX_IMAGE: &str = "meshguard.invalid/pause:1";
/// The ClusterIP of the `kube-dns` Service, the pods' name server.
pub const CLUSTER_DNS: &str = "10.96.0.10";
/// The cluster's domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// The pod addresses of the real nodes: node `i` gets `10.245.<i>.0/24`.
pub const POD_CIDR: &str = "10.245.0.0/16";
/// Where the pause binary is looked for when `MESHGUARD_SERVICES_DIR` is not set (relative to
/// the workspace root); `scripts/test.sh` builds it with the reference services.
pub const ENV_SERVICES_DIR: &str = "MESHGUARD_SERVICES_DIR";
const DEFAULT_SERVICES_DIR: &str = "target/services/x86_64-unknown-linux-musl/services";
/// The extended resource of the GPU nodes.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// The lock that lets one set of real nodes run on the machine at a time (bridge names,
/// forwarding, kube-proxy's tables are the machine's).
const LOCK: &str = "meshguard-real-nodes.lock";
/// How long a kubelet or a runtime has to stop after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// One real node to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealNodeSpec {
    /// The node's name (also its hostname label).
    pub name: String,
    /// A GPU node: the GPU pool's labels and taint, and one `nvidia.com/gpu`.
    pub gpu: bool,
}

/// A running real node, as tests see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealNodeInfo {
    /// The node's name.
    pub name: String,
    /// Its address: the gateway of its pod bridge.
    pub ip: String,
    /// Its pod subnet.
    pub pod_cidr: String,
    /// The kubelet's HTTPS port.
    pub kubelet_port: u16,
    /// A GPU node.
    pub gpu: bool,
}

/// What a set of real nodes changed on the machine, to check after they stopped.
#[derive(Debug, Clone)]
pub struct Footprint {
    /// The nodes' mount namespaces (inodes).
    pub mount_namespaces: Vec<u64>,
    /// Every process the nodes started directly (kubelets, runtimes, kube-proxy, CoreDNS).
    pub pids: Vec<u32>,
    /// The nodes' cgroup folders, one per hierarchy and node.
    pub cgroups: Vec<PathBuf>,
    /// The bridges.
    pub bridges: Vec<String>,
    /// IPv4 forwarding before the nodes started.
    pub ip_forward_before: String,
    /// The nftables tables before the nodes started.
    pub nft_tables_before: Vec<String>,
    /// The cluster's folder (no mount may be left under it).
    pub dir: PathBuf,
}

impl Footprint {
    /// What is still there: each a line naming it. Empty when everything was undone.
    pub fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        for inode in &self.mount_namespaces {
            for pid in containerd::namespace_members("mnt", *inode) {
                out.push(format!("process {pid} in a node's mount namespace"));
            }
        }
        for pid in &self.pids {
            if Path::new(&format!("/proc/{pid}")).exists() {
                out.push(format!("process {pid} still running"));
            }
        }
        out.extend(
            self.cgroups
                .iter()
                .filter(|c| c.exists())
                .map(|c| format!("cgroup {}", c.display())),
        );
        out.extend(
            self.bridges
                .iter()
                .filter(|b| Path::new("/sys/class/net").join(b).exists())
                .map(|b| format!("network interface {b}")),
        );
        out.extend(
            nft_tables()
                .into_iter()
                .filter(|t| !self.nft_tables_before.contains(t))
                .map(|t| format!("nftables {t}")),
        );
        let forward = read_ip_forward();
        if forward != self.ip_forward_before {
            out.push(format!(
                "net.ipv4.ip_forward is {forward}, was {}",
                self.ip_forward_before
            ));
        }
        let dir = self.dir.display().to_string();
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") {
            out.extend(
                mounts
                    .lines()
                    .filter(|l| l.contains(&dir))
                    .map(|l| format!("mount {l}")),
            );
        }
        out
    }
}

/// A running node: its kubelet and its runtime.
#[derive(Debug)]
struct RealNode {
    info: RealNodeInfo,
    kubelet: Option<Supervised>,
    runtime: Option<Containerd>,
    mount_ns: u64,
    registry_hosts: PathBuf,
}

/// The real nodes of a local cluster and what serves them all.
#[derive(Debug)]
pub(crate) struct RealNodes {
    nodes: Vec<RealNode>,
    kube_proxy: Option<Supervised>,
    coredns: Option<Supervised>,
    api_forward: Option<Forwarder>,
    cgroups: Vec<PathBuf>,
    bridges: Vec<String>,
    ip_forward_before: String,
    nft_tables_before: Vec<String>,
    dir: PathBuf,
    healthz: Vec<(&'static str, u16, &'static str)>,
    _lock: File,
}

/// What starting the nodes needs from the cluster.
pub(crate) struct NodeContext<'a> {
    /// The cluster's folder.
    pub dir: &'a Path,
    /// The admin kubeconfig (the nodes' kubelets, kube-proxy and CoreDNS use it).
    pub kubeconfig: &'a Path,
    /// The CA that signs client certificates (the kubelets accept those).
    pub client_ca: &'a Path,
    /// Each node's serving certificate and key, by node name.
    pub serving: &'a [(String, PathBuf, PathBuf)],
    /// The API server's loopback address, which pods reach through a [`Forwarder`].
    pub api_server: SocketAddr,
}

/// The address of node `index`.
pub fn node_ip(index: usize) -> String {
    format!("10.245.{index}.1")
}

/// The bridge of node `index`.
fn bridge_name(index: usize) -> String {
    format!("mgnode{index}")
}

/// Runs `program args`; its standard output, or an error with its standard error.
fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| Error::io(format!("cannot run {program}"), e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::io(
            format!("{program} {}", args.join(" ")),
            std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        ))
    }
}

/// The nftables tables (`<family> <name>`).
fn nft_tables() -> Vec<String> {
    run("nft", &["list", "tables"])
        .map(|list| {
            list.lines()
                .filter_map(|l| l.trim().strip_prefix("table "))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn read_ip_forward() -> String {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
}

fn create_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path)
        .map_err(|e| Error::io(format!("cannot create {}", path.display()), e))
}

/// The pause binary the sandbox image is made of.
fn pause_binary() -> Result<PathBuf> {
    let (dir, source) = match std::env::var_os(ENV_SERVICES_DIR) {
        Some(d) if !d.is_empty() => (PathBuf::from(d), ENV_SERVICES_DIR.to_owned()),
        _ => (
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../..")
                .join(DEFAULT_SERVICES_DIR),
            "the default build folder".to_owned(),
        ),
    };
    let path = dir.join("pause");
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::MissingArtifact {
            what: "the pod sandbox binary `pause` (built with the reference services)".into(),
            path,
            source_of_path: source,
            script: PathBuf::from("scripts/test.sh"),
        })
    }
}

/// The cgroup hierarchies mounted under `/sys/fs/cgroup` (cgroup v1: one per controller set).
fn cgroup_hierarchies() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .filter(|p| p.join("cgroup.procs").exists())
        .collect();
    out.sort();
    out
}

/// Creates cgroup `name` in every hierarchy (a cpuset one gets its parent's CPUs and memory
/// nodes, without which no process may join it); returns the folders.
fn create_cgroup_root(name: &str) -> Result<Vec<PathBuf>> {
    let mut made = Vec::new();
    for hierarchy in cgroup_hierarchies() {
        let dir = hierarchy.join(name);
        if dir.exists() {
            // A node of a run that died: nothing can be in it any more (its lock was free).
            remove_cgroup_tree(&dir);
        }
        create_dir(&dir)?;
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let parent = hierarchy.join(file);
            if parent.exists() {
                let value = std::fs::read_to_string(&parent)
                    .map_err(|e| Error::io(format!("cannot read {}", parent.display()), e))?;
                write_file(&dir.join(file), value.trim())?;
            }
        }
        made.push(dir);
    }
    Ok(made)
}

/// Kills what is in cgroup `dir` and below, then removes the folders, deepest first.
fn remove_cgroup_tree(dir: &Path) {
    let mut dirs = vec![dir.to_path_buf()];
    let mut i = 0;
    while let Some(d) = dirs.get(i).cloned() {
        if let Ok(entries) = std::fs::read_dir(&d) {
            dirs.extend(
                entries
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        i += 1;
    }
    for d in dirs.iter().rev() {
        for _ in 0..100 {
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            let pids: Vec<i32> = procs
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            if pids.is_empty() {
                break;
            }
            for pid in pids.into_iter().filter_map(rustix::process::Pid::from_raw) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_dir(d);
    }
}

impl RealNodes {
    /// Starts `specs` as real nodes (each waits for nothing but its runtime; the cluster waits
    /// for the nodes Ready), kube-proxy and CoreDNS.
    pub(crate) fn start(
        ctx: &NodeContext<'_>,
        bins: &NodeArtifacts,
        specs: &[RealNodeSpec],
    ) -> Result<RealNodes> {
        let nft = find_program("nft", "nftables package")?;
        let ip = find_program("ip", "iproute2 package")?;
        let nsenter = find_program("nsenter", "util-linux package")?;
        let pause = pause_binary()?;
        let lock_path = std::env::temp_dir().join(LOCK);
        let lock = File::create(&lock_path)
            .map_err(|e| Error::io(format!("cannot open {}", lock_path.display()), e))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |e| {
                Error::io(
                    format!(
                        "another local cluster with real nodes runs on this machine (it holds {})",
                        lock_path.display()
                    ),
                    e.into(),
                )
            },
        )?;
        let dir = ctx.dir.join("nodes");
        create_dir(&dir)?;
        let mut nodes = RealNodes {
            nodes: Vec::new(),
            kube_proxy: None,
            coredns: None,
            api_forward: None,
            cgroups: Vec::new(),
            bridges: Vec::new(),
            ip_forward_before: read_ip_forward(),
            nft_tables_before: nft_tables(),
            dir: ctx.dir.to_path_buf(),
            healthz: Vec::new(),
            _lock: lock,
        };
        // Pods on one node reach pods on another, and Services' backends, through the host.
        write_file(Path::new("/proc/sys/net/ipv4/ip_forward"), "1")?;

        let archive = dir.join("pause.tar");
        let binary = std::fs::read(&pause)
            .map_err(|e| Error::io(format!("cannot read {}", pause.display()), e))?;
        std::fs::write(
            &archive,
            oci::binary_image_archive(SANDBOX_IMAGE, "pause", &binary, "65535:65535"),
        )
        .map_err(|e| Error::io(format!("cannot write {}", archive.display()), e))?;

        let cluster_name = ctx
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "meshguard".into());
        for (index, spec) in specs.iter().enumerate() {
            let node = nodes.start_node(
                ctx,
                bins,
                &NodeTools {
                    ip: &ip,
                    nsenter: &nsenter,
                },
                index,
                spec,
                &format!("{cluster_name}.{}", spec.name),
                &archive,
            )?;
            nodes.nodes.push(node);
        }
        if let Some(first) = nodes.nodes.first().map(|n| n.info.clone()) {
            nodes.start_kube_proxy(ctx, bins, &first, &nft)?;
            nodes.start_coredns(ctx, bins, &first)?;
            // Pods (istiod, operators) reach the API server as in any cluster: the `kubernetes`
            // Service's ClusterIP, whose endpoint is this forwarder on the first node's address.
            let ip = first.ip.parse::<IpAddr>().map_err(|e| {
                Error::io(
                    format!("node address {} is not an IP", first.ip),
                    std::io::Error::other(e),
                )
            })?;
            nodes.api_forward = Some(Forwarder::start(
                SocketAddr::new(ip, ctx.api_server.port()),
                ctx.api_server,
            )?);
        }
        Ok(nodes)
    }

    #[allow(clippy::too_many_arguments)]
    fn start_node(
        &mut self,
        ctx: &NodeContext<'_>,
        bins: &NodeArtifacts,
        tools: &NodeTools<'_>,
        index: usize,
        spec: &RealNodeSpec,
        cgroup_name: &str,
        sandbox_archive: &Path,
    ) -> Result<RealNode> {
        let dir = self.dir.join("nodes").join(&spec.name);
        let ip = node_ip(index);
        let subnet = format!("10.245.{index}.0/24");
        let bridge = bridge_name(index);
        let ip_cmd = tools.ip.display().to_string();
        if Path::new("/sys/class/net").join(&bridge).exists() {
            // A bridge of a run that died (the lock was free): ours by name.
            run(&ip_cmd, &["link", "del", &bridge])?;
        }
        run(&ip_cmd, &["link", "add", &bridge, "type", "bridge"])?;
        self.bridges.push(bridge.clone());
        run(
            &ip_cmd,
            &["addr", "add", &format!("{ip}/24"), "dev", &bridge],
        )?;
        run(&ip_cmd, &["link", "set", &bridge, "up"])?;

        let cni_dir = dir.join("cni");
        let hosts_dir = dir.join("registry-hosts");
        let ipam_dir = dir.join("ipam");
        for d in [&cni_dir, &hosts_dir, &ipam_dir, &dir.join("pod-logs")] {
            create_dir(d)?;
        }
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": "meshguard",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": bridge,
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": subnet, "gateway": ip}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": ipam_dir,
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": true}, "backend": "nftables"},
            ],
        });
        write_file(
            &cni_dir.join("10-meshguard.conflist"),
            &serde_json::to_string_pretty(&conflist).unwrap_or_default(),
        )?;
        let runtime = Containerd::start_node(
            &dir.join("containerd"),
            &CriSettings {
                sandbox_image: SANDBOX_IMAGE,
                cni_bin_dir: &bins.cni_bin_dir,
                cni_conf_dir: &cni_dir,
                registry_hosts_dir: &hosts_dir,
            },
        )?;
        let mount_ns = containerd::namespace_inode(runtime.pid(), "mnt")?;
        runtime.import(sandbox_archive)?;

        self.cgroups.extend(create_cgroup_root(cgroup_name)?);
        let [port, healthz] = free_ports::<2>()?;
        let (cert, key) = ctx
            .serving
            .iter()
            .find(|(n, _, _)| n == &spec.name)
            .map(|(_, c, k)| (c.clone(), k.clone()))
            .ok_or_else(|| {
                Error::io(
                    format!("no serving certificate for node {}", spec.name),
                    std::io::ErrorKind::NotFound.into(),
                )
            })?;
        let taints = if spec.gpu {
            format!(
                "registerWithTaints:\n- {{key: {GPU_RESOURCE}, value: present, effect: NoSchedule}}\n"
            )
        } else {
            String::new()
        };
        let config = format!(
            "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine has cgroup v1, which kubelet 1.35 refuses by default.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /{cgroup_name}
address: {ip}
port: {port}
healthzBindAddress: 127.0.0.1
healthzPort: {healthz}
readOnlyPort: 0
tlsCertFile: {cert}
tlsPrivateKeyFile: {key}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {client_ca}}}
authorization: {{mode: Webhook}}
clusterDomain: {CLUSTER_DOMAIN}
clusterDNS: [{CLUSTER_DNS}]
resolvConf: \"\"
containerRuntimeEndpoint: {endpoint}
podLogsDir: {logs}
failSwapOn: false
# The machine's disk is shared with everything else: evict only when it is really full.
evictionHard: {{memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
maxPods: 40
serializeImagePulls: false
{taints}",
            cert = cert.display(),
            key = key.display(),
            client_ca = ctx.client_ca.display(),
            endpoint = runtime.endpoint(),
            logs = dir.join("pod-logs").display(),
        );
        let config_path = dir.join("kubelet.yaml");
        write_file(&config_path, &config)?;
        let labels = if spec.gpu {
            format!(
                "cloud.google.com/gke-nodepool={GPU_POOL},gpu=true,\
                 cloud.google.com/gke-accelerator=nvidia-tesla-t4,meshguard.io/node=real"
            )
        } else {
            format!("cloud.google.com/gke-nodepool={CPU_POOL},meshguard.io/node=real")
        };
        let args: Vec<OsString> = vec![
            arg("--mount=", runtime.mount_namespace()),
            "--".into(),
            bins.kubelet.clone().into_os_string(),
            arg("--config=", &config_path),
            arg("--kubeconfig=", ctx.kubeconfig),
            arg("--root-dir=", dir.join("kubelet")),
            format!("--hostname-override={}", spec.name).into(),
            format!("--node-ip={ip}").into(),
            format!("--node-labels={labels}").into(),
            "--v=1".into(),
        ];
        let kubelet = Supervised::spawn(
            "kubelet",
            tools.nsenter,
            args,
            self.dir.join(format!("kubelet-{}.log", spec.name)),
        )?;
        self.healthz.push(("kubelet", healthz, "/healthz"));
        Ok(RealNode {
            info: RealNodeInfo {
                name: spec.name.clone(),
                ip,
                pod_cidr: subnet,
                kubelet_port: port,
                gpu: spec.gpu,
            },
            kubelet: Some(kubelet),
            runtime: Some(runtime),
            mount_ns,
            registry_hosts: hosts_dir,
        })
    }

    /// kube-proxy in nftables mode for every node (they share the host's network namespace).
    fn start_kube_proxy(
        &mut self,
        ctx: &NodeContext<'_>,
        bins: &NodeArtifacts,
        first: &RealNodeInfo,
        nft: &Path,
    ) -> Result<()> {
        let [healthz, metrics] = free_ports::<2>()?;
        let config = format!(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clientConnection: {{kubeconfig: {kubeconfig}}}
hostnameOverride: {name}
healthzBindAddress: 127.0.0.1:{healthz}
metricsBindAddress: 127.0.0.1:{metrics}
clusterCIDR: {POD_CIDR}
nodePortAddresses: [{ip}/32]
# 0: leave the machine's conntrack settings as they are.
conntrack: {{maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}}
",
            kubeconfig = ctx.kubeconfig.display(),
            name = first.name,
            ip = first.ip,
        );
        let path = self.dir.join("kube-proxy.yaml");
        write_file(&path, &config)?;
        // kube-proxy runs `nft` from PATH; make sure the one found is there.
        let mut path_var = OsString::from(nft.parent().unwrap_or(Path::new("/usr/sbin")));
        if let Some(p) = std::env::var_os("PATH") {
            path_var.push(":");
            path_var.push(p);
        }
        let path_var = path_var.to_string_lossy().into_owned();
        self.kube_proxy = Some(Supervised::spawn_with_env(
            "kube-proxy",
            &bins.kube_proxy,
            vec![arg("--config=", &path), "--v=1".into()],
            &[("PATH", &path_var)],
            self.dir.join("kube-proxy.log"),
        )?);
        self.healthz.push(("kube-proxy", healthz, "/healthz"));
        Ok(())
    }

    /// CoreDNS on the first node's address, answering for `cluster.local`.
    fn start_coredns(
        &mut self,
        ctx: &NodeContext<'_>,
        bins: &NodeArtifacts,
        first: &RealNodeInfo,
    ) -> Result<()> {
        let [health, ready] = free_ports::<2>()?;
        let corefile = format!(
            ".:53 {{
    bind {ip}
    errors
    health 127.0.0.1:{health}
    ready 127.0.0.1:{ready}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }}
    cache 30
    loadbalance
}}
",
            ip = first.ip,
            kubeconfig = ctx.kubeconfig.display(),
        );
        let path = self.dir.join("Corefile");
        write_file(&path, &corefile)?;
        self.coredns = Some(Supervised::spawn(
            "coredns",
            &bins.coredns,
            vec!["-conf".into(), path.into_os_string()],
            self.dir.join("coredns.log"),
        )?);
        self.healthz.push(("coredns", ready, "/ready"));
        Ok(())
    }

    /// Where pods reach the API server (the `kubernetes` Service's endpoint).
    pub(crate) fn api_endpoint(&self) -> Option<SocketAddr> {
        self.api_forward.as_ref().map(Forwarder::address)
    }

    /// The nodes.
    pub(crate) fn infos(&self) -> Vec<RealNodeInfo> {
        self.nodes.iter().map(|n| n.info.clone()).collect()
    }

    /// Loopback health endpoints to wait on: (component, port, path).
    pub(crate) fn health_endpoints(&self) -> &[(&'static str, u16, &'static str)] {
        &self.healthz
    }

    /// An error for the first process that is no longer running.
    pub(crate) fn check_running(&self) -> Result<()> {
        for node in &self.nodes {
            if let Some(k) = &node.kubelet {
                k.check_running()?;
            }
        }
        for p in [&self.kube_proxy, &self.coredns].into_iter().flatten() {
            p.check_running()?;
        }
        Ok(())
    }

    /// Every process started directly, by name.
    pub(crate) fn pids(&self) -> Vec<(&'static str, u32)> {
        let mut out = Vec::new();
        for node in &self.nodes {
            if let Some(k) = &node.kubelet {
                out.push(("kubelet", k.pid()));
            }
            if let Some(r) = &node.runtime {
                out.push(("containerd", r.pid()));
            }
        }
        for p in [&self.kube_proxy, &self.coredns].into_iter().flatten() {
            out.push((p.name(), p.pid()));
        }
        out
    }

    /// What the nodes changed on the machine.
    pub(crate) fn footprint(&self) -> Footprint {
        Footprint {
            mount_namespaces: self.nodes.iter().map(|n| n.mount_ns).collect(),
            pids: self.pids().into_iter().map(|(_, p)| p).collect(),
            cgroups: self.cgroups.clone(),
            bridges: self.bridges.clone(),
            ip_forward_before: self.ip_forward_before.clone(),
            nft_tables_before: self.nft_tables_before.clone(),
            dir: self.dir.clone(),
        }
    }

    /// Lets every node pull from `host_port` over plain HTTP (a registry on loopback, as
    /// containerd's `hosts.toml` says it).
    pub(crate) fn trust_plain_http_registry(&self, host_port: &str) -> Result<()> {
        for node in &self.nodes {
            let dir = node.registry_hosts.join(host_port);
            create_dir(&dir)?;
            write_file(
                &dir.join("hosts.toml"),
                &format!(
                    "server = \"http://{host_port}\"\n\n[host.\"http://{host_port}\"]\n  \
                     capabilities = [\"pull\", \"resolve\"]\n"
                ),
            )?;
        }
        Ok(())
    }

    /// Imports an image archive into every node's runtime.
    pub(crate) fn import(&self, archive: &Path) -> Result<()> {
        for node in &self.nodes {
            if let Some(r) = &node.runtime {
                r.import(archive)?;
            }
        }
        Ok(())
    }

    /// Stops everything and undoes what the nodes changed; the first error, if any.
    pub(crate) fn stop(&mut self) -> Result<()> {
        let mut result = Ok(());
        let mut keep = |r: Result<()>| {
            if result.is_ok() {
                result = r;
            }
        };
        for node in &mut self.nodes {
            if let Some(mut kubelet) = node.kubelet.take() {
                keep(kubelet.stop(STOP_GRACE));
            }
        }
        // Each runtime kills its containers, stops, and empties its mount namespace.
        for node in &mut self.nodes {
            drop(node.runtime.take());
        }
        if let Some(mut forward) = self.api_forward.take() {
            forward.stop();
        }
        for mut p in [self.kube_proxy.take(), self.coredns.take()]
            .into_iter()
            .flatten()
        {
            keep(p.stop(STOP_GRACE));
        }
        for dir in self.cgroups.drain(..) {
            remove_cgroup_tree(&dir);
        }
        // kube-proxy's tables (and the portmap plugin's, if a pod mapped a host port).
        for table in nft_tables() {
            if !self.nft_tables_before.contains(&table) {
                let mut args = vec!["delete", "table"];
                args.extend(table.split_whitespace());
                keep(run("nft", &args).map(drop));
            }
        }
        for bridge in self.bridges.drain(..) {
            if Path::new("/sys/class/net").join(&bridge).exists() {
                keep(run("ip", &["link", "del", &bridge]).map(drop));
            }
        }
        if read_ip_forward() != self.ip_forward_before && !self.ip_forward_before.is_empty() {
            keep(write_file(
                Path::new("/proc/sys/net/ipv4/ip_forward"),
                &self.ip_forward_before,
            ));
        }
        result
    }
}

impl Drop for RealNodes {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Host programs a node is set up with.
struct NodeTools<'a> {
    ip: &'a Path,
    nsenter: &'a Path,
}

/// Keeps each GPU node's `nvidia.com/gpu` at 1: set after the node registered, as Kubernetes
/// documents for a node without a device plugin (`tasks/administer-cluster/extended-resource-node`:
/// a PATCH of the node's status capacity), and set again whenever the kubelet zeroed it
/// (`reconcileExtendedResource` in `pkg/kubelet/kubelet_node_status.go` zeroes extended
/// resources when the node was recreated). Returns once every GPU node has it; the caller keeps
/// calling it to hold it there.
pub(crate) async fn advertise_gpus(client: &kube::Client, nodes: &[RealNodeInfo]) -> Result<bool> {
    let api: Api<Node> = Api::all(client.clone());
    let mut all = true;
    for node in nodes.iter().filter(|n| n.gpu) {
        let Ok(current) = api.get_status(&node.name).await else {
            all = false;
            continue;
        };
        let has = current
            .status
            .as_ref()
            .and_then(|s| s.allocatable.as_ref())
            .and_then(|a| a.get(GPU_RESOURCE))
            .is_some_and(|q| q.0 == "1");
        let capacity = current
            .status
            .as_ref()
            .and_then(|s| s.capacity.as_ref())
            .and_then(|a| a.get(GPU_RESOURCE))
            .is_some_and(|q| q.0 == "1");
        if !capacity {
            let patch = json!({"status": {"capacity": {GPU_RESOURCE: "1"}}});
            api.patch_status(&node.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| {
                    Error::io(
                        format!("advertising {GPU_RESOURCE} on {}", node.name),
                        std::io::Error::other(e.to_string()),
                    )
                })?;
        }
        all &= has;
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_get_their_own_subnet_and_bridge() {
        assert_eq!(node_ip(0), "10.245.0.1");
        assert_eq!(node_ip(1), "10.245.1.1");
        assert_eq!(bridge_name(1), "mgnode1");
        assert!(bridge_name(99).len() <= 15, "Linux interface names");
    }

    #[test]
    fn the_node_mount_script_gives_fresh_run_var_lib_and_var_log() {
        for path in ["/run", "/var/lib", "/var/log"] {
            assert!(
                containerd::NODE_MOUNTS.contains(&format!("meshguard-node {path};")),
                "{path}"
            );
        }
        assert!(containerd::NODE_MOUNTS.contains("mkdir -p /var/lib/kubelet/device-plugins"));
    }
}
