//! A private container runtime for tests: Debian's containerd and runc (installed by
//! `scripts/test.sh`), with a root, state folder, sockets, namespace and cgroup parent of its
//! own, so that it never meets another containerd on the machine (a node's, say).
//!
//! [`Containerd::start`] starts the daemon as a supervised process (stopped by pid) and waits
//! until `ctr` reaches it; [`Containerd::pull`] and [`Containerd::run`] are `ctr`'s own commands
//! (`ctr images pull`, `ctr run --detach --net-host`), each container in cgroup
//! `/<namespace>/<id>`. Dropping it kills and deletes every task and container it still has,
//! stops the daemon, removes the namespace's cgroup folders (runc removes each container's own;
//! the parent it created stays behind otherwise) and the whole state folder.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::process::Supervised;

/// The programs the runtime needs: Debian's `containerd` package (`containerd`, `ctr`) and
/// `runc`.
pub const PROGRAMS: [&str; 3] = ["containerd", "ctr", "runc"];

/// The namespace Kubernetes' CRI keeps its pods' images and containers in.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// How a node's containerd starts (`sh -c`, with `$0` the containerd binary, `$1` its
/// configuration and `$2` its socket), inside `unshare --mount --propagation private`: fresh tmpfs mounts on `/run`,
/// `/var/lib` and `/var/log`, so that what containerd, runc, the CNI plugins and the kubelet keep
/// at fixed paths (network namespaces under `/run/netns`, runc's state, `/var/lib/cni`, the
/// kubelet's `/var/lib/kubelet/device-plugins` and `pod-resources` sockets, which ignore
/// `--root-dir` and which a starting kubelet wipes) is the node's own and goes with it. The
/// node's socket is also linked at `/run/containerd/containerd.sock`, where the kubelet's
/// cAdvisor looks for containerd to label its container metrics with pods (its `--containerd`
/// flag's default, `container/containerd/factory.go` in github.com/google/cadvisor v0.53.0,
/// which the kubelet does not expose). kind keeps its nodes apart the same way: its docker
/// provider (`pkg/cluster/internal/providers/docker/provision.go`) runs each node as a container
/// with `--tmpfs /run` and a volume of its own on `/var`.
pub const NODE_MOUNTS: &str = "set -e; \
    mount -t tmpfs -o mode=0755 meshguard-node /run; \
    mount -t tmpfs -o mode=0755 meshguard-node /var/lib; \
    mount -t tmpfs -o mode=0755 meshguard-node /var/log; \
    mkdir -p /var/lib/kubelet/device-plugins /run/containerd; \
    ln -s \"$2\" /run/containerd/containerd.sock; \
    exec \"$0\" --config \"$1\"";

/// What a node's containerd needs for its kubelet.
#[derive(Debug, Clone)]
pub struct CriSettings<'a> {
    /// The pod sandbox image, imported before any pod starts.
    pub sandbox_image: &'a str,
    /// The CNI plugins (`bridge`, `host-local`, `loopback`, `portmap`).
    pub cni_bin_dir: &'a Path,
    /// The node's CNI network configuration.
    pub cni_conf_dir: &'a Path,
    /// containerd's registry host configuration (`<host:port>/hosts.toml`).
    pub registry_hosts_dir: &'a Path,
}

impl CriSettings<'_> {
    /// The configuration's CRI section. `restrict_oom_score_adj`: runc may not lower a pod's
    /// OOM score below containerd's own, since a process without `CAP_SYS_RESOURCE` (a
    /// sandboxed machine's root) cannot (runc fails with `failed to update
    /// /proc/self/oom_score_adj: Permission denied`).
    fn config(&self) -> String {
        format!(
            "[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = {sandbox:?}\n  \
             restrict_oom_score_adj = true\n  enable_selinux = false\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  default_runtime_name = \"runc\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  \
             runtime_type = \"io.containerd.runc.v2\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n  \
             SystemdCgroup = false\n\
             [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = {bin:?}\n  conf_dir = {conf:?}\n\
             [plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = {hosts:?}\n",
            sandbox = self.sandbox_image,
            bin = self.cni_bin_dir.display().to_string(),
            conf = self.cni_conf_dir.display().to_string(),
            hosts = self.registry_hosts_dir.display().to_string(),
        )
    }
}

/// How long the daemon may take to answer `ctr version`.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a container may take to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Where containerd's runc shim keeps runc's state, a folder per namespace (runc's `--root`: the
/// shim's default, `Root` of the runc options, left unset here).
const RUNC_STATE_ROOT: &str = "/run/containerd/runc";

/// A running containerd of a test's own.
#[derive(Debug)]
pub struct Containerd {
    daemon: Supervised,
    dir: PathBuf,
    socket: PathBuf,
    namespace: String,
    /// A node's runtime: the inode of its own mount namespace.
    mount_ns: Option<u64>,
}

/// The path of `program` on `PATH` (or in `/usr/sbin`, `/sbin`), or an error naming the Debian
/// package(s) it comes from.
pub(crate) fn find_program(program: &str, package: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::MissingArtifact {
            what: format!("{program} (Debian's {package})"),
            path: PathBuf::from(program),
            source_of_path: "PATH".into(),
            script: PathBuf::from("scripts/test.sh"),
        })
}

/// One of the runtime's programs.
fn find(program: &str) -> Result<PathBuf> {
    find_program(program, "containerd and runc packages")
}

impl Containerd {
    /// Starts a containerd whose state lives in `dir` (created; removed on drop) and whose
    /// images and containers are in namespace `namespace`.
    pub fn start(dir: &Path, namespace: &str) -> Result<Containerd> {
        // The CRI plugin is a kubelet's business.
        Self::launch(dir, namespace, None)
    }

    /// Starts a node's containerd for its kubelet: the CRI plugin on (namespace `k8s.io`, the
    /// one CRI uses), in a mount namespace of its own (see [`NODE_MOUNTS`]) that the node's
    /// kubelet joins ([`Containerd::mount_namespace`]).
    pub fn start_node(dir: &Path, cri: &CriSettings<'_>) -> Result<Containerd> {
        Self::launch(dir, CRI_NAMESPACE, Some(cri))
    }

    fn launch(dir: &Path, namespace: &str, cri: Option<&CriSettings<'_>>) -> Result<Containerd> {
        let binary = find("containerd")?;
        find("ctr")?;
        find("runc")?;
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        // Metrics stay off (no port to collide on).
        let mut text = format!(
            "version = 2\nroot = {root:?}\nstate = {state:?}\n\
             [grpc]\n  address = {socket:?}\n[ttrpc]\n  address = {ttrpc:?}\n\
             [debug]\n  address = {debug:?}\n[metrics]\n  address = \"\"\n",
            root = dir.join("root").display().to_string(),
            state = dir.join("state").display().to_string(),
            socket = socket.display().to_string(),
            ttrpc = dir.join("containerd-ttrpc.sock").display().to_string(),
            debug = dir.join("debug.sock").display().to_string(),
        );
        match cri {
            None => text.push_str("disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n"),
            Some(cri) => text.push_str(&cri.config()),
        }
        std::fs::write(&config, text)
            .map_err(|e| Error::io(format!("cannot write {}", config.display()), e))?;
        let log = dir.join("containerd.log");
        let daemon = match cri {
            None => Supervised::spawn(
                "containerd",
                &binary,
                vec!["--config".into(), config.into_os_string()],
                log,
            )?,
            Some(_) => Supervised::spawn(
                "containerd",
                &find_program("unshare", "util-linux package")?,
                vec![
                    "--mount".into(),
                    "--propagation".into(),
                    "private".into(),
                    "--".into(),
                    "/bin/sh".into(),
                    "-c".into(),
                    NODE_MOUNTS.into(),
                    binary.into_os_string(),
                    config.into_os_string(),
                    socket.clone().into_os_string(),
                ],
                log,
            )?,
        };
        let runtime = Containerd {
            daemon,
            dir: dir.to_path_buf(),
            socket,
            namespace: namespace.to_owned(),
            mount_ns: None,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            runtime.daemon.check_running()?;
            let last_error = match runtime.ctr(&["version"]) {
                Ok(_) if cri.is_none() => return Ok(runtime),
                Ok(_) => {
                    let mut runtime = runtime;
                    runtime.mount_ns = Some(namespace_inode(runtime.daemon.pid(), "mnt")?);
                    return Ok(runtime);
                }
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                return Err(Error::NotReady {
                    name: "containerd",
                    timeout: START_TIMEOUT,
                    last_error,
                    log: runtime.daemon.log().to_path_buf(),
                    tail: runtime.daemon.log_tail(40),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// The daemon's mount namespace (`/proc/<pid>/ns/mnt`), which a node's kubelet joins.
    pub fn mount_namespace(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/mnt", self.daemon.pid()))
    }

    /// The CRI socket, as a kubelet's `containerRuntimeEndpoint`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Imports an image archive (`ctr images import`, an OCI image layout as a tar).
    pub fn import(&self, archive: &Path) -> Result<()> {
        let path = archive.display().to_string();
        self.ctr(&["images", "import", &path]).map(drop)
    }

    /// `ctr` with this runtime's socket and namespace: its standard output.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(&self.namespace)
            .args(args)
            .output()
            .map_err(|e| Error::io("cannot run ctr", e))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(Error::io(
                format!("ctr {}", args.join(" ")),
                std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
            ))
        }
    }

    /// Pulls `image` (`HOST[:PORT]/PATH:TAG`), with basic credentials `user` (`NAME:PASSWORD`),
    /// over plain HTTP when `plain_http`.
    pub fn pull(&self, image: &str, user: Option<&str>, plain_http: bool) -> Result<()> {
        let mut args = vec!["images", "pull"];
        if plain_http {
            args.push("--plain-http");
        }
        if let Some(u) = user {
            args.extend(["--user", u]);
        }
        args.push(image);
        self.ctr(&args).map(drop)
    }

    /// Starts container `id` of a pulled `image` in the host's network, with `env`, in cgroup
    /// `/<namespace>/<id>`; returns the pid of its process.
    pub fn run(&self, image: &str, id: &str, env: &[(&str, &str)]) -> Result<u32> {
        let cgroup = format!("/{}/{id}", self.namespace);
        let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut args = vec!["run", "--detach", "--net-host", "--cgroup", &cgroup];
        for e in &env {
            args.extend(["--env", e]);
        }
        args.extend([image, id]);
        self.ctr(&args)?;
        self.task(id)?
            .map(|(pid, _)| pid)
            .ok_or_else(|| Error::io(format!("container {id}"), std::io::Error::other("no task")))
    }

    /// The task of container `id`: its pid and status (`RUNNING`, `STOPPED`, ...).
    pub fn task(&self, id: &str) -> Result<Option<(u32, String)>> {
        Ok(self
            .ctr(&["tasks", "ls"])?
            .lines()
            .skip(1)
            .find_map(|line| {
                let mut words = line.split_whitespace();
                (words.next() == Some(id)).then(|| {
                    let pid = words.next().and_then(|p| p.parse().ok()).unwrap_or(0);
                    (pid, words.next().unwrap_or_default().to_owned())
                })
            }))
    }

    /// Stops container `id`: SIGTERM, SIGKILL after `grace`, then deletes its task and the
    /// container. Returns whether it exited before the SIGKILL.
    pub fn stop(&self, id: &str, grace: Duration) -> Result<bool> {
        let graceful = self.signal_and_wait(id, "SIGTERM", grace)?;
        if !graceful {
            self.signal_and_wait(id, "SIGKILL", STOP_GRACE)?;
        }
        self.ctr(&["tasks", "delete", id])?;
        self.ctr(&["containers", "delete", id])?;
        Ok(graceful)
    }

    /// Sends `signal` to the task of `id` and waits up to `wait` for it to stop.
    fn signal_and_wait(&self, id: &str, signal: &str, wait: Duration) -> Result<bool> {
        if let Some((_, status)) = self.task(id)? {
            if status != "STOPPED" {
                self.ctr(&["tasks", "kill", "--signal", signal, id])?;
            }
        }
        let deadline = Instant::now() + wait;
        loop {
            match self.task(id)? {
                None => return Ok(true),
                Some((_, status)) if status == "STOPPED" => return Ok(true),
                Some(_) if Instant::now() > deadline => return Ok(false),
                Some(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// The cgroup folders of this runtime's namespace, one per controller hierarchy.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .map(|e| e.path().join(&self.namespace))
            .filter(|p| p.is_dir())
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Ok(list) = self.ctr(&["containers", "ls", "--quiet"]) {
            for id in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
                let _ = self.stop(id, Duration::ZERO);
            }
        }
        let _ = self.daemon.stop(STOP_GRACE);
        match self.mount_ns {
            // What is left in the node's mount namespace (shims, a container that did not
            // die) holds its mounts; killing it ends the namespace and them.
            Some(inode) => kill_namespace_members("mnt", inode),
            None => {
                for dir in self.cgroup_dirs() {
                    let _ = std::fs::remove_dir(dir);
                }
                // The namespace's runc state folder, empty once every container is deleted
                // (remove_dir leaves one that is not). A node's is in its own `/run`.
                let _ = std::fs::remove_dir(Path::new(RUNC_STATE_ROOT).join(&self.namespace));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The inode of namespace `kind` (`mnt`, `net`, ...) of process `pid`.
pub fn namespace_inode(pid: u32, kind: &str) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let path = format!("/proc/{pid}/ns/{kind}");
    std::fs::metadata(&path)
        .map(|m| m.ino())
        .map_err(|e| Error::io(format!("cannot read {path}"), e))
}

/// The processes in namespace `kind` whose inode is `inode`.
pub fn namespace_members(kind: &str, inode: u64) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| namespace_inode(*pid, kind).is_ok_and(|i| i == inode))
        .collect()
}

/// SIGKILLs every process in namespace `kind` `inode` and waits (up to [`STOP_GRACE`]) until
/// none is left.
fn kill_namespace_members(kind: &str, inode: u64) {
    let deadline = Instant::now() + STOP_GRACE;
    loop {
        let members = namespace_members(kind, inode);
        if members.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in members {
            if let Some(pid) = i32::try_from(pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
