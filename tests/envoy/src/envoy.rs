//! Envoy processes: started from a bootstrap on loopback, waited on until the admin endpoint says
//! `LIVE`, stopped by pid (SIGTERM, then SIGKILL) when dropped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{tail, Error};

/// The environment variable of the Envoy of the pinned Istio line.
pub const ENV_ENVOY: &str = "MESHGUARD_ENVOY";
/// The environment variable of the newest Envoy served.
pub const ENV_ENVOY_LATEST: &str = "MESHGUARD_ENVOY_LATEST";

/// How long Envoy gets to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// An installed Envoy binary and the version it reports.
#[derive(Debug, Clone)]
pub struct EnvoyBinary {
    pub path: PathBuf,
    /// From `envoy --version`, e.g. `1.39.1`.
    pub version: String,
}

impl EnvoyBinary {
    fn from_env(var: &'static str) -> Result<Self, Error> {
        let path = std::env::var_os(var)
            .map(PathBuf::from)
            .ok_or(Error::NoEnvoy { var })?;
        let out = Command::new(&path)
            .arg("--version")
            .output()
            .map_err(|e| Error::io(&path, e))?;
        let text = String::from_utf8_lossy(&out.stdout);
        // `envoy  version: <commit>/<version>/Clean/RELEASE/BoringSSL`
        let version = text
            .split_once("version: ")
            .and_then(|(_, v)| v.split('/').nth(1))
            .map(str::to_owned)
            .ok_or_else(|| Error::Exited {
                version: "?".into(),
                status: format!("{}", out.status),
                log: path.clone(),
                tail: text.to_string(),
            })?;
        Ok(Self { path, version })
    }

    /// The Envoy of the Istio line whose code the tests run (`MESHGUARD_ENVOY`).
    pub fn istio() -> Result<Self, Error> {
        Self::from_env(ENV_ENVOY)
    }

    /// Every pinned Envoy: the Istio line's, then the newest served.
    pub fn all() -> Result<Vec<Self>, Error> {
        Ok(vec![
            Self::from_env(ENV_ENVOY)?,
            Self::from_env(ENV_ENVOY_LATEST)?,
        ])
    }
}

/// How to start Envoy.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// `--concurrency`: worker threads.
    pub concurrency: u32,
    /// `-l`: the default log level.
    pub log_level: String,
    /// `--component-log-level`, e.g. `wasm:info`.
    pub component_log_level: String,
    /// `--config-yaml`: merged into the bootstrap by Envoy itself (as pilot-agent passes Istio's
    /// bootstrap override, pkg/envoy/proxy.go).
    pub config_yaml: Option<String>,
}

impl Default for StartOptions {
    fn default() -> Self {
        Self {
            concurrency: 1,
            log_level: "warning".into(),
            // Istio's sidecars log Wasm at warning by default; the tests read the filters' info
            // lines (`--component-log-level wasm:info`, what `istioctl proxy-config log` sets).
            component_log_level: "wasm:info".into(),
            config_yaml: None,
        }
    }
}

/// A running Envoy.
#[derive(Debug)]
pub struct Envoy {
    child: Option<Child>,
    pub version: String,
    pub dir: PathBuf,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

impl Envoy {
    /// Writes `bootstrap` to `dir/bootstrap.json` and starts Envoy with it; returns once the admin
    /// endpoint answers `/ready` with `LIVE`. A process that exits first is an [`Error::Exited`]
    /// with its log's tail.
    pub fn start(
        bin: &EnvoyBinary,
        dir: &Path,
        bootstrap: &Value,
        opts: &StartOptions,
    ) -> Result<Envoy, Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let config = dir.join("bootstrap.json");
        let text =
            serde_json::to_string_pretty(bootstrap).map_err(|e| Error::Rendered(e.to_string()))?;
        std::fs::write(&config, text).map_err(|e| Error::io(&config, e))?;
        let admin_file = dir.join("admin-address");
        let _ = std::fs::remove_file(&admin_file);
        let log = dir.join("envoy.log");
        let log_file = std::fs::File::create(&log).map_err(|e| Error::io(&log, e))?;
        let mut cmd = Command::new(&bin.path);
        cmd.arg("-c")
            .arg(&config)
            .arg("--disable-hot-restart")
            .args(["--concurrency", &opts.concurrency.to_string()])
            .args(["-l", &opts.log_level])
            .args(["--component-log-level", &opts.component_log_level])
            .arg("--admin-address-path")
            .arg(&admin_file)
            // Flush the log every 100 ms (the default is 10 s), so tests can wait on lines.
            .args(["--file-flush-interval-msec", "100"])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().map_err(|e| Error::io(&log, e))?)
            .stderr(log_file);
        if let Some(yaml) = &opts.config_yaml {
            cmd.args(["--config-yaml", yaml]);
        }
        let child = cmd.spawn().map_err(|e| Error::io(&bin.path, e))?;
        let mut envoy = Envoy {
            child: Some(child),
            version: bin.version.clone(),
            dir: dir.to_owned(),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = envoy.exit_status() {
                return Err(Error::Exited {
                    version: bin.version.clone(),
                    status,
                    log: envoy.log.clone(),
                    tail: tail(&envoy.log_text(), 30),
                });
            }
            if envoy.admin.port() == 0 {
                if let Ok(text) = std::fs::read_to_string(&admin_file) {
                    if let Ok(addr) = text.trim().parse() {
                        envoy.admin = addr;
                    }
                }
            }
            if envoy.admin.port() != 0
                && envoy.admin_get("/ready").is_ok_and(|r| r.trim() == "LIVE")
            {
                return Ok(envoy);
            }
            if Instant::now() > deadline {
                return Err(Error::NotReady {
                    version: bin.version.clone(),
                    seconds: START_TIMEOUT.as_secs(),
                    log: envoy.log.clone(),
                    tail: tail(&envoy.log_text(), 30),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `Some(status)` once the process has exited.
    pub fn exit_status(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("unknown ({e})")),
        }
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log satisfies `done` (Envoy flushes it every 100 ms); returns the log.
    pub fn wait_log(
        &self,
        timeout: Duration,
        done: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.log_text();
            if done(&text) {
                return Ok(text);
            }
            if Instant::now() > deadline {
                return Err(text);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GET `path` from the admin endpoint; the body of a 200.
    pub fn admin_get(&self, path: &str) -> Result<String, Error> {
        admin_request(self.admin, "GET", path)
    }

    /// POST `path` to the admin endpoint (e.g. `/reset_counters`).
    pub fn admin_post(&self, path: &str) -> Result<String, Error> {
        admin_request(self.admin, "POST", path)
    }

    /// The port a listener is bound to (listeners bind port 0; `/listeners` says which port).
    pub fn listener_port(&self, name: &str) -> Result<u16, Error> {
        let text = self.admin_get("/listeners?format=json")?;
        let json: Value = serde_json::from_str(&text).map_err(|e| Error::Admin {
            path: "/listeners".into(),
            message: e.to_string(),
        })?;
        json["listener_statuses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["name"] == name)
            .and_then(|l| l["local_address"]["socket_address"]["port_value"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| Error::Admin {
                path: "/listeners".into(),
                message: format!("no listener `{name}` in {text}"),
            })
    }

    /// The listener's address on loopback.
    pub fn listener(&self, name: &str) -> Result<SocketAddr, Error> {
        Ok(SocketAddr::from((
            [127, 0, 0, 1],
            self.listener_port(name)?,
        )))
    }

    /// A counter or gauge from `/stats` by its full name; `None` when Envoy has no such stat.
    pub fn stat(&self, name: &str) -> Result<Option<u64>, Error> {
        let text = self.admin_get(&format!("/stats?filter=^{}$", regex_escape(name)))?;
        Ok(text.lines().find_map(|l| {
            let (n, v) = l.split_once(": ")?;
            (n == name).then(|| v.trim().parse().ok()).flatten()
        }))
    }

    /// Waits until `stat(name)` satisfies `done`; returns the last value read.
    pub fn wait_stat(
        &self,
        name: &str,
        timeout: Duration,
        done: impl Fn(Option<u64>) -> bool,
    ) -> Result<Option<u64>, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.stat(name)?;
            if done(v) || Instant::now() > deadline {
                return Ok(v);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops Envoy: SIGTERM, then SIGKILL after 10 s; waits for the process.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.stop();
    }
}

fn regex_escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if ".^$|?*+()[]{}\\".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// GET `path` from a plain-HTTP server on loopback (Envoy's admin endpoint, Prometheus' API); the
/// body of a 200.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<String, Error> {
    admin_request(addr, "GET", path)
}

/// One HTTP/1.1 request (`Connection: close`) to Envoy's admin endpoint (loopback, plain text).
fn admin_request(addr: SocketAddr, method: &str, path: &str) -> Result<String, Error> {
    let fail = |message: String| Error::Admin {
        path: path.to_owned(),
        message,
    };
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| fail(e.to_string()))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| fail(e.to_string()))?;
    let encoded = path.replace(' ', "%20");
    write!(
        stream,
        "{method} {encoded} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .map_err(|e| fail(e.to_string()))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| fail(e.to_string()))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| fail(format!("malformed response: {text}")))?;
    let status = head.split(' ').nth(1).unwrap_or("");
    let chunked = head
        .lines()
        .any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"));
    let body = if chunked {
        dechunk(body).ok_or_else(|| fail(format!("malformed chunked body: {body}")))?
    } else {
        body.to_owned()
    };
    if status != "200" {
        return Err(fail(format!("status {status}: {body}")));
    }
    Ok(body)
}

/// The body of an HTTP/1.1 chunked transfer coding.
fn dechunk(mut text: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = text.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        text = rest.get(size..)?.strip_prefix("\r\n")?;
    }
}
