//! The test cluster: etcd + kube-apiserver on loopback.

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::artifacts::Artifacts;
use crate::crds::{self, CrdSet};
use crate::error::{Error, Result};
use crate::pki;
use crate::process::Supervised;

/// The user the kubeconfig authenticates as (a member of `system:masters`).
pub const ADMIN_USER: &str = "meshguard-admin";
/// The cluster, user and context name in the kubeconfig.
pub const CONTEXT_NAME: &str = "meshguard-test";
/// Environment variable that, when set to anything but `0` or empty, keeps the
/// cluster's directory (logs, kubeconfig, etcd data) after it stops.
pub const ENV_KEEP: &str = "MESHGUARD_TESTCLUSTER_KEEP";

/// How often readiness is polled.
const POLL: Duration = Duration::from_millis(100);

/// Options of [`TestCluster::start`]. `TestClusterOptions::default()` is what
/// most tests want.
#[derive(Debug, Clone)]
pub struct TestClusterOptions {
    /// The kube-apiserver binary; default: `$MESHGUARD_KUBE_APISERVER`, else the cache.
    pub kube_apiserver: Option<PathBuf>,
    /// The etcd binary; default: `$MESHGUARD_ETCD`, else the cache.
    pub etcd: Option<PathBuf>,
    /// The CRD directory; default: `$MESHGUARD_CRDS_DIR`, else the cache.
    pub crds_dir: Option<PathBuf>,
    /// Deadline for etcd and the apiserver to become ready (each start attempt).
    pub startup_timeout: Duration,
    /// Deadline for each CRD to become Established in [`TestCluster::install_crds`].
    pub crd_timeout: Duration,
    /// How long a process gets after SIGTERM before SIGKILL when stopping.
    pub stop_timeout: Duration,
    /// `--service-cluster-ip-range`. No traffic is ever sent there: there are no
    /// nodes and no kube-proxy; it only feeds ClusterIP allocation.
    pub service_cluster_ip_range: String,
    /// `--disable-admission-plugins`. Default: `ServiceAccount`, because the
    /// controller that creates each namespace's `default` ServiceAccount
    /// (kube-controller-manager) does not run, so Pods would be rejected.
    pub disable_admission_plugins: Vec<String>,
    /// Extra kube-apiserver flags, appended last (so they win).
    pub extra_apiserver_args: Vec<String>,
    /// Keep the cluster directory after stopping (default: `$MESHGUARD_TESTCLUSTER_KEEP`).
    pub keep_dir: bool,
    /// How many times to start over when a picked port turned out to be taken.
    pub start_attempts: u32,
    /// Where the cluster directory is created (default: the system's temp dir).
    pub parent_dir: Option<PathBuf>,
}

impl Default for TestClusterOptions {
    fn default() -> Self {
        let keep = std::env::var(ENV_KEEP).is_ok_and(|v| !v.is_empty() && v != "0");
        Self {
            kube_apiserver: None,
            etcd: None,
            crds_dir: None,
            startup_timeout: Duration::from_secs(120),
            crd_timeout: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(10),
            service_cluster_ip_range: "10.96.0.0/12".to_owned(),
            disable_admission_plugins: vec!["ServiceAccount".to_owned()],
            extra_apiserver_args: Vec::new(),
            keep_dir: keep,
            start_attempts: 3,
            parent_dir: None,
        }
    }
}

/// A running etcd + kube-apiserver pair, listening on loopback only, with an
/// admin kubeconfig. Dropping it stops both processes (SIGTERM, then SIGKILL)
/// and removes its directory.
#[derive(Debug)]
pub struct TestCluster {
    // Field order matters for drop: processes before the directory.
    apiserver: Supervised,
    etcd: Supervised,
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
    kubeconfig_path: PathBuf,
    kubeconfig: Kubeconfig,
    server_url: String,
    etcd_url: String,
    token: String,
    ca_pem: String,
    crds_dir: PathBuf,
    crd_timeout: Duration,
    stop_timeout: Duration,
    keep_dir: bool,
    stopped: bool,
}

impl TestCluster {
    /// Starts etcd and kube-apiserver on free loopback ports, waits until the
    /// apiserver's `/readyz` is ok, and writes an admin kubeconfig.
    ///
    /// Fails with [`Error::MissingArtifact`] (naming the build script) when the
    /// binaries have not been built.
    pub async fn start(opts: TestClusterOptions) -> Result<Self> {
        let artifacts = Artifacts::locate(
            opts.kube_apiserver.as_deref(),
            opts.etcd.as_deref(),
            opts.crds_dir.as_deref(),
        )?;
        let attempts = opts.start_attempts.max(1);
        let mut attempt = 1;
        loop {
            match Self::start_once(&opts, &artifacts).await {
                Err(e) if attempt < attempts && is_port_clash(&e) => attempt += 1,
                result => return result,
            }
        }
    }

    async fn start_once(opts: &TestClusterOptions, artifacts: &Artifacts) -> Result<Self> {
        let mut builder = tempfile::Builder::new();
        builder.prefix("meshguard-testcluster-");
        let dir = match &opts.parent_dir {
            Some(parent) => builder.tempdir_in(parent),
            None => builder.tempdir(),
        }
        .map_err(|e| Error::io("cannot create the cluster directory", e))?;
        match Self::launch(opts, artifacts, dir.path().to_path_buf()).await {
            Ok(mut cluster) => {
                cluster.dir = Some(dir);
                Ok(cluster)
            }
            Err(e) => {
                // The processes are stopped by now. Keep their logs, which the
                // error points to, unless the start is retried.
                if !is_port_clash(&e) {
                    let _ = dir.keep();
                }
                Err(e)
            }
        }
    }

    /// Starts both processes with their files in `root`; the caller owns the
    /// directory (`dir` is `None` in the result).
    async fn launch(
        opts: &TestClusterOptions,
        artifacts: &Artifacts,
        root: PathBuf,
    ) -> Result<Self> {
        let deadline = Instant::now() + opts.startup_timeout;
        let [etcd_client_port, etcd_peer_port, apiserver_port] = free_ports()?;

        // etcd
        let etcd_url = format!("http://127.0.0.1:{etcd_client_port}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer_port}");
        let etcd_args: Vec<OsString> = vec![
            "--name=meshguard".into(),
            arg("--data-dir=", root.join("etcd-data")),
            format!("--listen-client-urls={etcd_url}").into(),
            format!("--advertise-client-urls={etcd_url}").into(),
            format!("--listen-peer-urls={peer_url}").into(),
            format!("--initial-advertise-peer-urls={peer_url}").into(),
            format!("--initial-cluster=meshguard={peer_url}").into(),
            "--initial-cluster-state=new".into(),
            // Test data is thrown away: skip fsync, it dominates write latency.
            "--unsafe-no-fsync".into(),
            "--log-level=warn".into(),
        ];
        let etcd = Supervised::spawn("etcd", &artifacts.etcd, etcd_args, root.join("etcd.log"))?;
        wait_etcd_healthy(&etcd, etcd_client_port, deadline, opts.startup_timeout).await?;

        // Credentials for the apiserver.
        let token = pki::random_token()?;
        let tokens_file = root.join("tokens.csv");
        write(
            &tokens_file,
            &format!("{token},{ADMIN_USER},{ADMIN_USER},\"system:masters\"\n"),
        )?;
        let (sa_private, sa_public) = pki::service_account_key()?;
        let sa_key = root.join("sa.key");
        let sa_pub = root.join("sa.pub");
        write(&sa_key, &sa_private)?;
        write(&sa_pub, &sa_public)?;
        let cert_dir = root.join("apiserver-certs");

        // kube-apiserver
        let mut args: Vec<OsString> = vec![
            format!("--etcd-servers={etcd_url}").into(),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={apiserver_port}").into(),
            // No --tls-cert-file: the apiserver writes a self-signed CA and a
            // serving certificate for 127.0.0.1/localhost here.
            arg("--cert-dir=", &cert_dir),
            arg("--token-auth-file=", &tokens_file),
            "--authorization-mode=RBAC".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            arg("--service-account-key-file=", &sa_pub),
            arg("--service-account-signing-key-file=", &sa_key),
            format!(
                "--service-cluster-ip-range={}",
                opts.service_cluster_ip_range
            )
            .into(),
            // The default reconciler would publish 127.0.0.1 as the endpoint of
            // the `kubernetes` Service, which endpoint validation rejects.
            "--endpoint-reconciler-type=none".into(),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
        ];
        if !opts.disable_admission_plugins.is_empty() {
            args.push(
                format!(
                    "--disable-admission-plugins={}",
                    opts.disable_admission_plugins.join(",")
                )
                .into(),
            );
        }
        args.extend(opts.extra_apiserver_args.iter().map(OsString::from));
        let apiserver = Supervised::spawn(
            "kube-apiserver",
            &artifacts.kube_apiserver,
            args,
            root.join("kube-apiserver.log"),
        )?;

        let ca_pem = wait_serving_ca(&apiserver, &cert_dir, deadline, opts.startup_timeout).await?;
        let server_url = format!("https://127.0.0.1:{apiserver_port}");
        let kubeconfig_text = kubeconfig_yaml(&server_url, &ca_pem, &token);
        let kubeconfig_path = root.join("kubeconfig");
        write(&kubeconfig_path, &kubeconfig_text)?;
        let kubeconfig =
            Kubeconfig::read_from(&kubeconfig_path).map_err(|source| Error::Kubeconfig {
                path: kubeconfig_path.clone(),
                source,
            })?;
        let client = client_for(&kubeconfig, &kubeconfig_path).await?;
        wait_apiserver_ready(&apiserver, &client, deadline, opts.startup_timeout).await?;

        Ok(Self {
            apiserver,
            etcd,
            dir: None,
            dir_path: root,
            kubeconfig_path,
            kubeconfig,
            server_url,
            etcd_url,
            token,
            ca_pem,
            crds_dir: artifacts.crds_dir.clone(),
            crd_timeout: opts.crd_timeout,
            stop_timeout: opts.stop_timeout,
            keep_dir: opts.keep_dir,
            stopped: false,
        })
    }

    /// The admin kubeconfig (verified TLS against the apiserver's CA, bearer
    /// token of [`ADMIN_USER`]). Usable with kube-rs and kubectl.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// The parsed admin kubeconfig.
    pub fn kubeconfig(&self) -> &Kubeconfig {
        &self.kubeconfig
    }

    /// The apiserver's URL, `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// etcd's client URL, `http://127.0.0.1:<port>`.
    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    /// The admin bearer token.
    pub fn admin_token(&self) -> &str {
        &self.token
    }

    /// The PEM of the CA that signed the apiserver's serving certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The cluster directory (kubeconfig, logs, certificates, etcd data).
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    /// kube-apiserver's log file (stdout and stderr).
    pub fn apiserver_log(&self) -> &Path {
        self.apiserver.log()
    }

    /// etcd's log file (stdout and stderr).
    pub fn etcd_log(&self) -> &Path {
        self.etcd.log()
    }

    /// kube-apiserver's process id.
    pub fn apiserver_pid(&self) -> u32 {
        self.apiserver.pid()
    }

    /// etcd's process id.
    pub fn etcd_pid(&self) -> u32 {
        self.etcd.pid()
    }

    /// The directory the CRD sets are read from.
    pub fn crds_dir(&self) -> &Path {
        &self.crds_dir
    }

    /// A kube-rs configuration for the admin kubeconfig.
    pub async fn client_config(&self) -> Result<kube::Config> {
        install_crypto_provider();
        kube::Config::from_custom_kubeconfig(self.kubeconfig.clone(), &KubeConfigOptions::default())
            .await
            .map_err(|source| Error::Kubeconfig {
                path: self.kubeconfig_path.clone(),
                source,
            })
    }

    /// A new admin [`kube::Client`].
    pub async fn client(&self) -> Result<Client> {
        client_for(&self.kubeconfig, &self.kubeconfig_path).await
    }

    /// Applies the CRDs of the given sets (server-side apply) and waits until
    /// each one is Established. Returns the names of the CRDs.
    pub async fn install_crds(&self, which: &[CrdSet]) -> Result<Vec<String>> {
        let client = self.client().await?;
        crds::install(&client, which, &self.crds_dir, self.crd_timeout).await
    }

    /// Completes the deletion of a namespace the way kube-controller-manager's
    /// namespace controller would (which does not run here): empties
    /// `spec.finalizers` through the `finalize` subresource. Call it after
    /// deleting the namespace; its objects are not deleted, only the namespace.
    pub async fn finalize_namespace(&self, name: &str) -> Result<()> {
        use k8s_openapi::api::core::v1::Namespace;
        let client = self.client().await?;
        let api: kube::Api<Namespace> = kube::Api::all(client.clone());
        let mut ns = api
            .get(name)
            .await
            .map_err(|e| Error::kube(format!("reading namespace {name}"), e))?;
        if let Some(spec) = ns.spec.as_mut() {
            spec.finalizers = Some(Vec::new());
        }
        let body = serde_json::to_vec(&ns).map_err(|e| Error::Kube {
            context: format!("encoding namespace {name}"),
            source: kube::Error::SerdeError(e),
        })?;
        let request = http::Request::put(format!("/api/v1/namespaces/{name}/finalize"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .map_err(|e| {
                Error::kube(
                    format!("finalizing namespace {name}"),
                    kube::Error::HttpError(e),
                )
            })?;
        client
            .request_text(request)
            .await
            .map_err(|e| Error::kube(format!("finalizing namespace {name}"), e))?;
        Ok(())
    }

    /// Stops the apiserver, then etcd (each: SIGTERM, then SIGKILL after the
    /// stop timeout), and removes the cluster directory unless it is kept.
    /// Dropping the cluster does the same, ignoring errors.
    pub fn stop(mut self) -> Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let apiserver = self.apiserver.stop(self.stop_timeout);
        let etcd = self.etcd.stop(self.stop_timeout);
        if let Some(dir) = self.dir.take() {
            if self.keep_dir {
                // Leaves the directory on disk.
                let _ = dir.keep();
            } else {
                dir.close().map_err(|e| {
                    Error::io(format!("cannot remove {}", self.dir_path.display()), e)
                })?;
            }
        }
        apiserver.and(etcd)
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

/// Makes sure rustls has a process-wide crypto provider (ring); kube's
/// `rustls-tls` feature does not pick one by itself.
pub(crate) fn install_crypto_provider() {
    // Err means one is installed already, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

async fn client_for(kubeconfig: &Kubeconfig, path: &Path) -> Result<Client> {
    install_crypto_provider();
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig.clone(), &KubeConfigOptions::default())
            .await
            .map_err(|source| Error::Kubeconfig {
                path: path.to_path_buf(),
                source,
            })?;
    Client::try_from(config).map_err(|e| Error::kube("building a client", e))
}

fn kubeconfig_yaml(server_url: &str, ca_pem: &str, token: &str) -> String {
    let ca = pki::base64(ca_pem.as_bytes());
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: {CONTEXT_NAME}
  cluster:
    server: {server_url}
    certificate-authority-data: {ca}
users:
- name: {ADMIN_USER}
  user:
    token: {token}
contexts:
- name: {CONTEXT_NAME}
  context:
    cluster: {CONTEXT_NAME}
    user: {ADMIN_USER}
    namespace: default
current-context: {CONTEXT_NAME}
"
    )
}

/// `--flag=` followed by a path.
pub(crate) fn arg(flag: &str, path: impl AsRef<Path>) -> OsString {
    let mut out = OsString::from(flag);
    out.push(path.as_ref());
    out
}

pub(crate) fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
}

/// `N` distinct loopback ports, free when returned, for a cluster's components to listen on.
///
/// They come from below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`). A port in
/// that range can be handed out by the kernel itself, to a `bind` on port 0 or as the source port
/// of an outgoing connection, and a starting cluster opens hundreds of those on loopback: one of
/// them taking a port between this check and the component's own bind fails the start with
/// "address already in use". Below the range only explicit binds compete, and a cursor shared by
/// the whole process never offers one port twice, so clusters started in parallel by the tests
/// of one binary do not meet. `TestCluster::start` still retries a clash with another process.
pub fn free_ports<const N: usize>() -> Result<[u16; N]> {
    static CURSOR: AtomicU32 = AtomicU32::new(0);
    let (low, high) = listening_range();
    let span = u32::from(high - low) + 1;
    // Processes start at different places, so two test binaries rarely probe the same ports.
    let offset = std::process::id().wrapping_mul(7919) % span;
    let mut held = Vec::with_capacity(N);
    let mut ports = [0u16; N];
    let mut probes = 0;
    for port in ports.iter_mut() {
        loop {
            if probes == span {
                return Err(Error::io(
                    format!("no free loopback port in {low}..={high}"),
                    std::io::ErrorKind::AddrInUse.into(),
                ));
            }
            probes += 1;
            let step = CURSOR.fetch_add(1, Ordering::Relaxed);
            let candidate = low + ((offset + step) % span) as u16;
            if let Ok(listener) =
                TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, candidate)))
            {
                // Held until all are found, so the ports differ from each other.
                held.push(listener);
                *port = candidate;
                break;
            }
        }
    }
    Ok(ports)
}

/// The ports [`free_ports`] draws from: the upper half of those below the ephemeral range
/// (16384-32767 with Linux's default 32768-60999), or 20000-29999 where that range starts too
/// low to leave room.
fn listening_range() -> (u16, u16) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let high = ephemeral_low.saturating_sub(1);
    let low = high / 2;
    if low < 10000 {
        (20000, 29999)
    } else {
        (low + 1, high)
    }
}

fn is_port_clash(e: &Error) -> bool {
    match e {
        Error::ExitedEarly { tail, .. } | Error::NotReady { tail, .. } => {
            tail.contains("address already in use")
        }
        _ => false,
    }
}

pub(crate) fn not_ready(
    process: &Supervised,
    name: &'static str,
    timeout: Duration,
    last: String,
) -> Error {
    Error::NotReady {
        name,
        timeout,
        last_error: last,
        log: process.log().to_path_buf(),
        tail: process.log_tail(40),
    }
}

/// Polls etcd's `/health` until it reports healthy.
async fn wait_etcd_healthy(
    etcd: &Supervised,
    port: u16,
    deadline: Instant,
    timeout: Duration,
) -> Result<()> {
    let mut last: String;
    loop {
        etcd.check_running()?;
        match http_get_loopback(port, "/health").await {
            Ok(body) if body.contains("\"health\":\"true\"") => return Ok(()),
            Ok(body) => last = format!("/health answered {body:?}"),
            Err(e) => last = format!("/health: {e}"),
        }
        if Instant::now() >= deadline {
            return Err(not_ready(etcd, "etcd", timeout, last));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A minimal HTTP/1.0 GET against 127.0.0.1 (etcd serves plain HTTP here);
/// returns the whole response, headers included.
pub(crate) async fn http_get_loopback(port: u16, path: &str) -> std::io::Result<String> {
    let io = async {
        let mut stream = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await?;
        let mut response = Vec::new();
        stream.take(4 << 20).read_to_end(&mut response).await?;
        Ok(String::from_utf8_lossy(&response).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(2), io)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// Waits for the apiserver to write its self-signed serving certificate
/// (`apiserver.crt`: the serving certificate followed by its CA) and returns
/// the CA's PEM.
async fn wait_serving_ca(
    apiserver: &Supervised,
    cert_dir: &Path,
    deadline: Instant,
    timeout: Duration,
) -> Result<String> {
    let path = cert_dir.join("apiserver.crt");
    let key = cert_dir.join("apiserver.key");
    let mut last = format!("{} does not exist yet", path.display());
    loop {
        apiserver.check_running()?;
        if key.exists() {
            match tokio::fs::read_to_string(&path).await {
                Ok(bundle) => {
                    let certs = pki::certificates(&bundle);
                    if let [_, .., ca] = certs.as_slice() {
                        return Ok(ca.clone());
                    }
                    last = format!(
                        "{} has {} certificate(s), want 2",
                        path.display(),
                        certs.len()
                    );
                }
                Err(e) => last = format!("cannot read {}: {e}", path.display()),
            }
        }
        if Instant::now() >= deadline {
            return Err(not_ready(apiserver, "kube-apiserver", timeout, last));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `/readyz` (over verified TLS, as the admin) until it answers `ok`.
async fn wait_apiserver_ready(
    apiserver: &Supervised,
    client: &Client,
    deadline: Instant,
    timeout: Duration,
) -> Result<()> {
    let mut last: String;
    loop {
        apiserver.check_running()?;
        let request = http::Request::get("/readyz")
            .body(Vec::new())
            .map_err(|e| Error::kube("building the /readyz request", kube::Error::HttpError(e)))?;
        let check = tokio::time::timeout(Duration::from_secs(5), client.request_text(request));
        match check.await {
            Ok(Ok(body)) if body.trim() == "ok" => return Ok(()),
            Ok(Ok(body)) => last = format!("/readyz answered {body:?}"),
            Ok(Err(e)) => last = format!("/readyz: {e}"),
            Err(_) => last = "/readyz did not answer within 5s".to_owned(),
        }
        if Instant::now() >= deadline {
            return Err(not_ready(apiserver, "kube-apiserver", timeout, last));
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_differ_and_stay_below_the_ephemeral_range() {
        let (low, high) = listening_range();
        if let Ok(range) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") {
            let ephemeral_low: u16 = range.split_whitespace().next().unwrap().parse().unwrap();
            assert!(ephemeral_low < 20000 || high < ephemeral_low, "{range}");
        }
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..50 {
            for port in free_ports::<9>().unwrap() {
                assert!((low..=high).contains(&port), "{port}");
                assert!(seen.insert(port), "{port} offered twice");
            }
        }
    }
}
