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

/// How long the daemon may take to answer `ctr version`.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a container may take to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A running containerd of a test's own.
#[derive(Debug)]
pub struct Containerd {
    daemon: Supervised,
    dir: PathBuf,
    socket: PathBuf,
    namespace: String,
}

/// The path of `program` on `PATH`.
fn find(program: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::MissingArtifact {
            what: format!("{program} (Debian's containerd and runc packages)"),
            path: PathBuf::from(program),
            source_of_path: "PATH".into(),
            script: PathBuf::from("scripts/test.sh"),
        })
}

impl Containerd {
    /// Starts a containerd whose state lives in `dir` (created; removed on drop) and whose
    /// images and containers are in namespace `namespace`.
    pub fn start(dir: &Path, namespace: &str) -> Result<Containerd> {
        let binary = find("containerd")?;
        find("ctr")?;
        find("runc")?;
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        // The CRI plugin is a kubelet's business; metrics stay off (no port to collide on).
        let text = format!(
            "version = 2\nroot = {root:?}\nstate = {state:?}\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = {socket:?}\n[ttrpc]\n  address = {ttrpc:?}\n\
             [debug]\n  address = {debug:?}\n[metrics]\n  address = \"\"\n",
            root = dir.join("root").display().to_string(),
            state = dir.join("state").display().to_string(),
            socket = socket.display().to_string(),
            ttrpc = dir.join("containerd-ttrpc.sock").display().to_string(),
            debug = dir.join("debug.sock").display().to_string(),
        );
        std::fs::write(&config, text)
            .map_err(|e| Error::io(format!("cannot write {}", config.display()), e))?;
        let daemon = Supervised::spawn(
            "containerd",
            &binary,
            vec!["--config".into(), config.into_os_string()],
            dir.join("containerd.log"),
        )?;
        let runtime = Containerd {
            daemon,
            dir: dir.to_path_buf(),
            socket,
            namespace: namespace.to_owned(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            runtime.daemon.check_running()?;
            let last_error = match runtime.ctr(&["version"]) {
                Ok(_) => return Ok(runtime),
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
        for dir in self.cgroup_dirs() {
            let _ = std::fs::remove_dir(dir);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
