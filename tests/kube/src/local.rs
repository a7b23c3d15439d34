//! The local cluster: the test cluster's kube-apiserver and etcd, plus
//! kube-scheduler and kube-controller-manager (the real Kubernetes scheduler,
//! Deployment/ReplicaSet/HPA/namespace/service-account controllers), kwok (the
//! nodes, the pods' lifecycle and their simulated usage), metrics-server (the
//! resource metrics API the HPA reads), Prometheus (scraping kwok's
//! kubelet-style metrics) and KEDA's operator and metrics adapter. Every
//! component is a host process on loopback, started and stopped here by pid,
//! with its log in the cluster directory.
//!
//! What is real: every controller, the scheduler, the API server and its
//! admission, metrics-server, Prometheus, KEDA. What is simulated: the nodes
//! (kwok answers for them) and the CPU each pod uses, driven by the load
//! setting (see [`crate::load`]).

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use serde_json::json;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::artifacts::{LocalArtifacts, Versions};
use crate::cluster::{arg, free_ports, http_get_loopback, not_ready, write};
use crate::crds::CrdSet;
use crate::error::{Error, Result};
use crate::forward::Forwarder;
use crate::load;
use crate::nodes::{self, NodeContext, RealNodeInfo, RealNodeSpec, RealNodes};
use crate::pki::{self, Ca};
use crate::process::Supervised;
use crate::simulate::{apply_node, NodeShape};
use crate::NodeArtifacts;
use crate::{TestCluster, TestClusterOptions, ENV_KEEP};

/// Field manager of the objects the local cluster creates.
pub const LOCAL_MANAGER: &str = "meshguard-localcluster";
/// Name prefix of the CPU pool's nodes (`cpu-pool-1`, ...).
pub const CPU_POOL: &str = "cpu-pool";
/// Name prefix of the GPU pool's nodes (`gpu-pool-1`, ...).
pub const GPU_POOL: &str = "gpu-pool";
/// The namespace KEDA runs in.
pub const KEDA_NAMESPACE: &str = "keda";
/// The external metrics API KEDA's adapter serves.
pub const EXTERNAL_METRICS_APISERVICE: &str = "v1beta1.external.metrics.k8s.io";

const POLL: Duration = Duration::from_millis(200);

/// Options of [`LocalCluster::start`].
#[derive(Debug, Clone)]
pub struct LocalClusterOptions {
    /// Nodes in the CPU pool.
    pub cpu_nodes: u32,
    /// Nodes in the GPU pool (each with one `nvidia.com/gpu`); 0 for a cluster without GPUs.
    pub gpu_nodes: u32,
    /// Allocatable CPUs of each node.
    pub cpus_per_node: u32,
    /// Real nodes in the CPU pool (`real-cpu-1`, ...): a kubelet and a containerd each, pods
    /// that run (see [`crate::nodes`]). The kwok pools stay for placement at scale.
    pub real_cpu_nodes: u32,
    /// Real nodes in the GPU pool (`real-gpu-1`, ...): the pool's labels and taint and one
    /// `nvidia.com/gpu` each, advertised as an extended resource.
    pub real_gpu_nodes: u32,
    /// How often Prometheus scrapes kwok's metrics.
    pub scrape_interval: Duration,
    /// Deadline for the whole cluster to become ready.
    pub startup_timeout: Duration,
    /// CRD sets to install.
    pub crds: Vec<CrdSet>,
    /// Keep the cluster directory (logs, certificates, data) after stopping
    /// (default: `$MESHGUARD_TESTCLUSTER_KEEP`).
    pub keep_dir: bool,
}

impl Default for LocalClusterOptions {
    fn default() -> Self {
        Self {
            cpu_nodes: 2,
            gpu_nodes: 1,
            cpus_per_node: 8,
            real_cpu_nodes: 0,
            real_gpu_nodes: 0,
            scrape_interval: Duration::from_secs(5),
            startup_timeout: Duration::from_secs(180),
            crds: CrdSet::ALL.to_vec(),
            keep_dir: std::env::var(ENV_KEEP).is_ok_and(|v| !v.is_empty() && v != "0"),
        }
    }
}

impl LocalClusterOptions {
    /// Only real nodes: `cpu` in the CPU pool and `gpu` in the GPU pool, no kwok nodes (whose
    /// pods would take a share of every Service's requests and answer none).
    pub fn real_nodes_only(cpu: u32, gpu: u32) -> Self {
        Self {
            cpu_nodes: 0,
            gpu_nodes: 0,
            real_cpu_nodes: cpu,
            real_gpu_nodes: gpu,
            ..Self::default()
        }
    }
}

/// A running local cluster. Dropping it stops every component (the last
/// started first), then the API server and etcd, and removes its directory.
#[derive(Debug)]
pub struct LocalCluster {
    load: Option<JoinHandle<()>>,
    gpus: Option<JoinHandle<()>>,
    real: Option<RealNodes>,
    components: Vec<Supervised>,
    base: Option<TestCluster>,
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
    prometheus_url: String,
    prometheus_files: Option<PrometheusFiles>,
    nodes: Vec<String>,
    keep_dir: bool,
    stopped: bool,
}

/// Prometheus' configuration and what `scrape_pod_monitors` regenerates it with.
#[derive(Debug)]
struct PrometheusFiles {
    /// `prometheus.yml`.
    config: PathBuf,
    /// The cluster's own jobs (a YAML list).
    jobs: PathBuf,
    /// `meshguard-prometheus-config`.
    generator: PathBuf,
    interval: Duration,
}

/// The user the API server is to the kubelets.
const KUBELET_CLIENT_USER: &str = "kube-apiserver-kubelet-client";

/// The component certificates, all signed by one CA.
struct Pki {
    ca: PathBuf,
    front_proxy: (PathBuf, PathBuf),
    /// The API server's client certificate for the kubelets (logs, exec).
    kubelet_client: (PathBuf, PathBuf),
    metrics_server: (PathBuf, PathBuf),
    kwok: (PathBuf, PathBuf),
    /// Each real node's kubelet serving certificate: (node, certificate, key).
    kubelets: Vec<(String, PathBuf, PathBuf)>,
    /// KEDA's certificate directory (`ca.crt`, `tls.crt`, `tls.key`), shared
    /// by the operator's gRPC server and the adapter (its client and its
    /// serving certificate).
    keda_dir: PathBuf,
    ca_bundle: String,
}

impl Pki {
    fn create(dir: &Path, real_nodes: &[(String, String)]) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
        let ca = Ca::new("meshguard-local-ca")?;
        let ca_path = dir.join("ca.crt");
        write(&ca_path, &ca.cert_pem())?;
        let pair = |name: &str, cn: &str, sans: &[&str]| -> Result<(PathBuf, PathBuf)> {
            let p = ca.issue(cn, sans)?;
            let (cert, key) = (
                dir.join(format!("{name}.crt")),
                dir.join(format!("{name}.key")),
            );
            write(&cert, &p.cert)?;
            write(&key, &p.key)?;
            Ok((cert, key))
        };
        let front_proxy = pair("front-proxy-client", "front-proxy-client", &[])?;
        let kubelet_client = pair("apiserver-kubelet-client", KUBELET_CLIENT_USER, &[])?;
        let metrics_server = pair(
            "metrics-server",
            "metrics-server",
            &["metrics-server.kube-system.svc", "localhost", "127.0.0.1"],
        )?;
        let kwok = pair("kwok", "kwok", &["localhost", "127.0.0.1"])?;
        let mut kubelets = Vec::new();
        for (node, ip) in real_nodes {
            let (cert, key) = pair(&format!("kubelet-{node}"), node, &[node, ip])?;
            kubelets.push((node.clone(), cert, key));
        }
        let keda_dir = dir.join("keda");
        std::fs::create_dir_all(&keda_dir)
            .map_err(|e| Error::io(format!("cannot create {}", keda_dir.display()), e))?;
        let keda = ca.issue(
            "keda",
            &[
                "keda-operator-metrics-apiserver.keda.svc",
                "keda-operator.keda.svc.cluster.local",
                "localhost",
                "127.0.0.1",
            ],
        )?;
        write(&keda_dir.join("ca.crt"), &ca.cert_pem())?;
        write(&keda_dir.join("tls.crt"), &keda.cert)?;
        write(&keda_dir.join("tls.key"), &keda.key)?;
        Ok(Self {
            ca: ca_path,
            front_proxy,
            kubelet_client,
            metrics_server,
            kwok,
            kubelets,
            keda_dir,
            ca_bundle: pki::base64(ca.cert_pem().as_bytes()),
        })
    }
}

impl LocalCluster {
    /// Starts every component and waits until the cluster is ready: nodes
    /// Ready, the controllers running, the metrics APIs available, Prometheus
    /// scraping kwok, KEDA ready.
    ///
    /// Fails with [`Error::MissingArtifact`] (naming the build script) when a
    /// binary has not been built, and with an error naming the component and
    /// its log when one does not start.
    pub async fn start(opts: LocalClusterOptions) -> Result<Self> {
        let bins = LocalArtifacts::locate()?;
        let dir = tempfile::Builder::new()
            .prefix("meshguard-localcluster-")
            .tempdir()
            .map_err(|e| Error::io("cannot create the cluster directory", e))?;
        let root = dir.path().to_path_buf();
        match Self::launch(&opts, &bins, root).await {
            Ok(mut cluster) => {
                cluster.dir = Some(dir);
                Ok(cluster)
            }
            Err(e) => {
                // Everything is stopped by now; keep the logs the error points to.
                let _ = dir.keep();
                Err(e)
            }
        }
    }

    async fn launch(
        opts: &LocalClusterOptions,
        bins: &LocalArtifacts,
        root: PathBuf,
    ) -> Result<Self> {
        let deadline = Instant::now() + opts.startup_timeout;
        let real_specs = real_node_specs(opts);
        let node_bins = if real_specs.is_empty() {
            None
        } else {
            Some(NodeArtifacts::locate()?)
        };
        let real_ips: Vec<(String, String)> = real_specs
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), nodes::node_ip(i)))
            .collect();
        let pki = Pki::create(&root.join("pki"), &real_ips)?;
        let base_opts = TestClusterOptions {
            parent_dir: Some(root.clone()),
            startup_timeout: opts.startup_timeout,
            keep_dir: true, // removed with the local cluster's directory
            // The controller manager creates the `default` ServiceAccounts.
            disable_admission_plugins: Vec::new(),
            extra_apiserver_args: vec![
                // The aggregation layer's front proxy, for metrics-server and KEDA's adapter.
                format!("--requestheader-client-ca-file={}", pki.ca.display()),
                "--requestheader-allowed-names=front-proxy-client".to_owned(),
                "--requestheader-username-headers=X-Remote-User".to_owned(),
                "--requestheader-group-headers=X-Remote-Group".to_owned(),
                "--requestheader-extra-headers-prefix=X-Remote-Extra-".to_owned(),
                format!("--proxy-client-cert-file={}", pki.front_proxy.0.display()),
                format!("--proxy-client-key-file={}", pki.front_proxy.1.display()),
                // Reach the aggregated APIs through their Services (ExternalName localhost).
                "--enable-aggregator-routing=false".to_owned(),
                // Pods' logs: the kubelets at their node address, as a user RBAC lets in.
                format!(
                    "--kubelet-client-certificate={}",
                    pki.kubelet_client.0.display()
                ),
                format!("--kubelet-client-key={}", pki.kubelet_client.1.display()),
                "--kubelet-preferred-address-types=InternalIP,Hostname".to_owned(),
            ],
            ..TestClusterOptions::default()
        };
        let base = TestCluster::start(base_opts).await?;
        let mut cluster = Self {
            load: None,
            gpus: None,
            real: None,
            components: Vec::new(),
            dir_path: root.clone(),
            prometheus_url: String::new(),
            prometheus_files: None,
            nodes: Vec::new(),
            base: None,
            dir: None,
            keep_dir: opts.keep_dir,
            stopped: false,
        };
        let kubeconfig = base.kubeconfig_path().to_path_buf();
        let api_server: SocketAddr = base
            .server_url()
            .trim_start_matches("https://")
            .parse()
            .map_err(|e| {
                Error::io(
                    format!("API server URL {}", base.server_url()),
                    std::io::Error::other(e),
                )
            })?;
        let sa_key = base.dir().join("sa.key");
        let root_ca = root.join("pki").join("apiserver-ca.crt");
        write(&root_ca, base.ca_pem())?;
        let client = base.client().await?;
        cluster.base = Some(base);
        if let Some(base) = &cluster.base {
            base.install_crds(&opts.crds).await?;
        }
        apply(
            &client,
            "v1",
            "Namespace",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": KEDA_NAMESPACE}}),
        )
        .await?;
        // The kubelets authorize the API server's requests (logs) with RBAC, as kubeadm sets it
        // up: its client user bound to the built-in `system:kubelet-api-admin`.
        apply(
            &client,
            "rbac.authorization.k8s.io/v1",
            "ClusterRoleBinding",
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": "meshguard-apiserver-kubelet-client"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": "system:kubelet-api-admin"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                              "name": KUBELET_CLIENT_USER}],
            }),
        )
        .await?;

        let kc = || arg("--kubeconfig=", &kubeconfig);
        let [scheduler_port, kwok_port, metrics_server_port, prometheus_port, keda_metrics, keda_probe, keda_grpc, adapter_port, adapter_metrics, ksm_port, ksm_telemetry] =
            free_ports::<11>()?;

        // kube-controller-manager: every default controller, as the admin.
        cluster.spawn(
            "kube-controller-manager",
            &bins.kube_controller_manager,
            vec![
                kc(),
                "--secure-port=0".into(),
                "--leader-elect=false".into(),
                arg("--service-account-private-key-file=", &sa_key),
                arg("--root-ca-file=", &root_ca),
                "--use-service-account-credentials=false".into(),
                "--cluster-name=meshguard-local".into(),
                "--kube-api-qps=100".into(),
                "--kube-api-burst=200".into(),
            ],
            &[],
        )?;
        // kube-scheduler: the default profile.
        cluster.spawn(
            "kube-scheduler",
            &bins.kube_scheduler,
            vec![
                kc(),
                arg("--authentication-kubeconfig=", &kubeconfig),
                arg("--authorization-kubeconfig=", &kubeconfig),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={scheduler_port}").into(),
                "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics".into(),
                "--kube-api-qps=100".into(),
                "--kube-api-burst=200".into(),
            ],
            &[],
        )?;

        // The real nodes: kubelets and runtimes, kube-proxy and CoreDNS behind `kube-dns`.
        if let Some(node_bins) = &node_bins {
            let real = RealNodes::start(
                &NodeContext {
                    dir: &root,
                    kubeconfig: &kubeconfig,
                    client_ca: &pki.ca,
                    serving: &pki.kubelets,
                    api_server,
                },
                node_bins,
                &real_specs,
            )?;
            cluster
                .nodes
                .extend(real.infos().into_iter().map(|n| n.name));
            let api_endpoint = real.api_endpoint();
            cluster.real = Some(real);
            apply_cluster_dns(&client, &real_ips).await?;
            if let Some(endpoint) = api_endpoint {
                apply_api_endpoint(&client, endpoint).await?;
            }
        }

        // The node pools, registered before kwok takes them over so that kwok
        // keeps their capacity.
        let metrics_path = |n: &str| format!("/metrics/nodes/{n}/metrics/resource");
        for (pool, count, gpu) in [
            (CPU_POOL, opts.cpu_nodes, false),
            (GPU_POOL, opts.gpu_nodes, true),
        ] {
            for i in 1..=count {
                let name = format!("{pool}-{i}");
                let mut shape = NodeShape::new(&name, gpu, opts.cpus_per_node);
                shape.pool = Some(pool.to_owned());
                shape
                    .annotations
                    .insert("kwok.x-k8s.io/node".to_owned(), json!("fake"));
                shape.annotations.insert(
                    "metrics.k8s.io/resource-metrics-path".to_owned(),
                    json!(metrics_path(&name)),
                );
                apply_node(&client, &shape).await?;
                cluster.nodes.push(name);
            }
        }

        // kwok: the nodes' kubelets, the pods' lifecycle and usage.
        let kwok_config = root.join("kwok.yaml");
        write(&kwok_config, &kwok_configuration(&bins.kwok_rules)?)?;
        cluster.spawn(
            "kwok",
            &bins.kwok,
            vec![
                kc(),
                arg("--config=", &kwok_config),
                // The node pools carry this annotation.
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake".into(),
                // Stages, metrics and usage come from --config, not from CRDs.
                "--enable-crds=".into(),
                "--node-ip=127.0.0.1".into(),
                format!("--node-port={kwok_port}").into(),
                format!("--server-address=127.0.0.1:{kwok_port}").into(),
                arg("--tls-cert-file=", &pki.kwok.0),
                arg("--tls-private-key-file=", &pki.kwok.1),
                "--cidr=10.244.0.0/16".into(),
            ],
            &[],
        )?;

        // metrics-server, reading kwok's kubelet resource metrics over verified TLS.
        cluster.spawn(
            "metrics-server",
            &bins.metrics_server,
            vec![
                kc(),
                arg("--authentication-kubeconfig=", &kubeconfig),
                arg("--authorization-kubeconfig=", &kubeconfig),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={metrics_server_port}").into(),
                arg("--tls-cert-file=", &pki.metrics_server.0),
                arg("--tls-private-key-file=", &pki.metrics_server.1),
                arg("--kubelet-certificate-authority=", &pki.ca),
                "--kubelet-use-node-status-port".into(),
                "--kubelet-preferred-address-types=InternalIP".into(),
                // Must stay above --kubelet-request-timeout (10 s by default).
                "--metric-resolution=15s".into(),
            ],
            &[],
        )?;

        // kube-state-metrics: the objects' metrics (the autoscalers' replicas), as
        // kube-prometheus-stack runs it.
        cluster.spawn(
            "kube-state-metrics",
            &bins.kube_state_metrics,
            vec![
                kc(),
                "--host=127.0.0.1".into(),
                format!("--port={ksm_port}").into(),
                "--telemetry-host=127.0.0.1".into(),
                format!("--telemetry-port={ksm_telemetry}").into(),
                "--resources=deployments,horizontalpodautoscalers".into(),
            ],
            &[],
        )?;

        // Prometheus, finding kwok's per-node metrics endpoints through kwok's discovery.
        let prometheus_config = root.join("prometheus.yml");
        let token_file = root.join("pki").join("admin.token");
        if let Some(base) = &cluster.base {
            write(&token_file, base.admin_token())?;
        }
        let kubelets: Vec<RealNodeInfo> = cluster
            .real
            .as_ref()
            .map(RealNodes::infos)
            .unwrap_or_default();
        // The cluster's own jobs, kept apart: `scrape_pod_monitors` hands them to the
        // Prometheus Operator's generator as additional scrape configs.
        let mut jobs = prometheus_jobs(kwok_port, ksm_port, &pki.ca, opts.scrape_interval);
        jobs.push_str(&cadvisor_scrape_configuration(
            &kubelets,
            &pki.ca,
            &token_file,
        ));
        let jobs_file = root.join("prometheus-jobs.yml");
        write(&jobs_file, &jobs)?;
        write(
            &prometheus_config,
            &format!(
                "{}scrape_configs:\n{jobs}",
                prometheus_global(opts.scrape_interval)
            ),
        )?;
        cluster.prometheus_files = Some(PrometheusFiles {
            config: prometheus_config.clone(),
            jobs: jobs_file,
            generator: bins.prometheus_config.clone(),
            interval: opts.scrape_interval,
        });
        cluster.spawn(
            "prometheus",
            &bins.prometheus,
            vec![
                arg("--config.file=", &prometheus_config),
                arg("--storage.tsdb.path=", root.join("prometheus-data")),
                format!("--web.listen-address=127.0.0.1:{prometheus_port}").into(),
                "--storage.tsdb.retention.time=2h".into(),
            ],
            &[],
        )?;
        cluster.prometheus_url = format!("http://127.0.0.1:{prometheus_port}");

        // KEDA: the operator (ScaledObject controller, gRPC metrics service) and the adapter
        // (external.metrics.k8s.io), talking mTLS with each other.
        let kubeconfig_str = kubeconfig.display().to_string();
        let keda_env = [
            ("KUBECONFIG", kubeconfig_str.as_str()),
            ("WATCH_NAMESPACE", ""),
            ("POD_NAMESPACE", KEDA_NAMESPACE),
            ("KEDA_CLUSTER_OBJECT_NAMESPACE", KEDA_NAMESPACE),
        ];
        cluster.spawn(
            "keda-operator",
            &bins.keda_operator,
            vec![
                "--leader-elect=false".into(),
                format!("--metrics-bind-address=127.0.0.1:{keda_metrics}").into(),
                format!("--health-probe-bind-address=127.0.0.1:{keda_probe}").into(),
                format!("--metrics-service-bind-address=127.0.0.1:{keda_grpc}").into(),
                arg("--cert-dir=", &pki.keda_dir),
                "--enable-cert-rotation=false".into(),
                "--enable-webhook-patching=false".into(),
                "--enable-apiservice-patching=false".into(),
            ],
            &keda_env,
        )?;
        cluster.spawn(
            "keda-adapter",
            &bins.keda_adapter,
            vec![
                arg("--lister-kubeconfig=", &kubeconfig),
                arg("--authentication-kubeconfig=", &kubeconfig),
                arg("--authorization-kubeconfig=", &kubeconfig),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={adapter_port}").into(),
                arg("--cert-dir=", &pki.keda_dir),
                arg("--tls-cert-file=", pki.keda_dir.join("tls.crt")),
                arg("--tls-private-key-file=", pki.keda_dir.join("tls.key")),
                format!("--metrics-service-address=127.0.0.1:{keda_grpc}").into(),
                format!("--port={adapter_metrics}").into(),
            ],
            &keda_env,
        )?;

        // The aggregated APIs, reached through ExternalName Services to localhost.
        register_apiservice(
            &client,
            "kube-system",
            "metrics-server",
            "metrics.k8s.io",
            metrics_server_port,
            &pki.ca_bundle,
        )
        .await?;
        register_apiservice(
            &client,
            KEDA_NAMESPACE,
            "keda-operator-metrics-apiserver",
            "external.metrics.k8s.io",
            adapter_port,
            &pki.ca_bundle,
        )
        .await?;

        cluster
            .wait_ready(&client, opts, keda_probe, ksm_port, deadline)
            .await?;
        if let Some(real) = &cluster.real {
            cluster
                .wait_real_nodes(&client, real, opts, deadline)
                .await?;
            let infos = real.infos();
            let gpu_client = client.clone();
            // Held at one for as long as the cluster runs (a kubelet that re-registers zeroes it).
            cluster.gpus = Some(tokio::spawn(async move {
                loop {
                    let _ = nodes::advertise_gpus(&gpu_client, &infos).await;
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }));
        }

        let load_client = client.clone();
        let load_log = root.join("load.log");
        cluster.load = Some(tokio::spawn(async move {
            load_loop(load_client, load_log).await;
        }));
        Ok(cluster)
    }

    fn spawn(
        &mut self,
        name: &'static str,
        program: &Path,
        args: Vec<OsString>,
        env: &[(&str, &str)],
    ) -> Result<()> {
        let log = self.dir_path.join(format!("{name}.log"));
        let process = Supervised::spawn_with_env(name, program, args, env, log)?;
        self.components.push(process);
        Ok(())
    }

    fn component(&self, name: &str) -> Option<&Supervised> {
        self.components.iter().find(|c| c.name() == name)
    }

    /// An error for the first component that is no longer running.
    fn check_components(&self) -> Result<()> {
        self.components
            .iter()
            .try_for_each(Supervised::check_running)?;
        match &self.real {
            Some(real) => real.check_running(),
            None => Ok(()),
        }
    }

    /// Waits for the real nodes' kubelets, kube-proxy and CoreDNS to answer their health
    /// endpoints and for each GPU node to advertise its `nvidia.com/gpu`.
    async fn wait_real_nodes(
        &self,
        client: &Client,
        real: &RealNodes,
        opts: &LocalClusterOptions,
        deadline: Instant,
    ) -> Result<()> {
        let timeout = opts.startup_timeout;
        for (component, port, path) in real.health_endpoints().iter().copied() {
            self.wait_for(component, path, deadline, timeout, || http_ok(port, path))
                .await?;
        }
        let infos = real.infos();
        self.wait_for(
            "kubelet",
            "nvidia.com/gpu allocatable on every GPU node",
            deadline,
            timeout,
            || {
                let infos = infos.clone();
                async move {
                    match nodes::advertise_gpus(client, &infos).await {
                        Ok(true) => Ok(()),
                        Ok(false) => Err("not yet".to_owned()),
                        Err(e) => Err(e.to_string()),
                    }
                }
            },
        )
        .await
    }

    /// The real nodes (empty without them).
    pub fn real_nodes(&self) -> Vec<RealNodeInfo> {
        self.real.as_ref().map(RealNodes::infos).unwrap_or_default()
    }

    /// What the real nodes changed on the machine, to check with
    /// [`nodes::Footprint::leftovers`] once the cluster stopped.
    pub fn real_nodes_footprint(&self) -> Option<nodes::Footprint> {
        self.real.as_ref().map(RealNodes::footprint)
    }

    /// Lets the real nodes pull from a registry on `host_port` over plain HTTP.
    pub fn trust_plain_http_registry(&self, host_port: &str) -> Result<()> {
        match &self.real {
            Some(real) => real.trust_plain_http_registry(host_port),
            None => Ok(()),
        }
    }

    /// Publishes a registry that listens on loopback (`registry`, `IP:port`) on the first real
    /// node's address, the port kept, where pods and the nodes' runtimes both reach it, and lets
    /// the nodes pull from it over plain HTTP. Stop the forwarder before the cluster: it listens
    /// on the node's address.
    pub fn publish_registry(&self, registry: &str) -> Result<Forwarder> {
        let node = self
            .real_nodes()
            .into_iter()
            .next()
            .ok_or(Error::NoRealNode("publishing a registry to pods"))?;
        let invalid = |what: String| {
            Error::io(
                "publishing a registry to pods",
                std::io::Error::new(std::io::ErrorKind::InvalidInput, what),
            )
        };
        let node_ip: IpAddr = node
            .ip
            .parse()
            .map_err(|e| invalid(format!("node {} has address {:?}: {e}", node.name, node.ip)))?;
        let local: SocketAddr = registry
            .parse()
            .map_err(|e| invalid(format!("registry address {registry:?}: {e}")))?;
        let published = Forwarder::start(SocketAddr::new(node_ip, local.port()), local)?;
        self.trust_plain_http_registry(&published.address().to_string())?;
        Ok(published)
    }

    /// The nodes that cannot take new pods, one line each with why: a pressure condition
    /// (`DiskPressure`, `MemoryPressure`, `PIDPressure`), not Ready, or a `node.kubernetes.io/`
    /// taint (what the node lifecycle controller sets for those). Empty when every node can.
    pub async fn unfit_nodes(&self) -> Result<Vec<String>> {
        let nodes: Api<Node> = Api::all(self.client().await?);
        let list = nodes
            .list(&Default::default())
            .await
            .map_err(|e| Error::kube("listing nodes", e))?;
        Ok(list.items.iter().filter_map(unfit_node).collect())
    }

    /// Imports an OCI image archive into every real node's runtime.
    pub fn import_image(&self, archive: &Path) -> Result<()> {
        match &self.real {
            Some(real) => real.import(archive),
            None => Ok(()),
        }
    }

    /// Polls `check` until it passes; on the deadline, the error names
    /// `component` and points to its log.
    async fn wait_for<F, Fut>(
        &self,
        component: &'static str,
        what: &str,
        deadline: Instant,
        timeout: Duration,
        mut check: F,
    ) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<(), String>>,
    {
        loop {
            self.check_components()?;
            let last = match check().await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                let last = format!("{what}: {last}");
                return Err(match self.component(component) {
                    Some(p) => not_ready(p, component, timeout, last),
                    None => Error::NotReady {
                        name: component,
                        timeout,
                        last_error: last,
                        log: self.dir_path.clone(),
                        tail: String::new(),
                    },
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn wait_ready(
        &self,
        client: &Client,
        opts: &LocalClusterOptions,
        keda_probe: u16,
        ksm_port: u16,
        deadline: Instant,
    ) -> Result<()> {
        let timeout = opts.startup_timeout;
        let expected = self.nodes.len();
        let nodes: Api<Node> = Api::all(client.clone());
        self.wait_for("kwok", "every node Ready", deadline, timeout, || {
            let nodes = nodes.clone();
            async move {
                let list = nodes
                    .list(&Default::default())
                    .await
                    .map_err(|e| e.to_string())?;
                let ready = list.items.iter().filter(|n| node_ready(n)).count();
                if ready == expected {
                    Ok(())
                } else {
                    Err(format!("{ready} of {expected} nodes Ready"))
                }
            }
        })
        .await?;
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        self.wait_for(
            "kube-controller-manager",
            "the default ServiceAccount",
            deadline,
            timeout,
            || {
                let accounts = accounts.clone();
                async move {
                    accounts
                        .get("default")
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
            },
        )
        .await?;
        for (component, name) in [
            ("metrics-server", "v1beta1.metrics.k8s.io"),
            ("keda-adapter", EXTERNAL_METRICS_APISERVICE),
        ] {
            self.wait_for(
                component,
                &format!("APIService {name} Available"),
                deadline,
                timeout,
                || apiservice_available(client.clone(), name),
            )
            .await?;
        }
        self.wait_for("keda-operator", "/readyz", deadline, timeout, || {
            http_ok(keda_probe, "/readyz")
        })
        .await?;
        self.wait_for("kube-state-metrics", "/healthz", deadline, timeout, || {
            http_ok(ksm_port, "/healthz")
        })
        .await?;
        let port = self.prometheus_port();
        self.wait_for(
            "prometheus",
            "kwok's targets up",
            deadline,
            timeout,
            || async move {
                let response = http_get_loopback(port, "/api/v1/targets?state=active")
                    .await
                    .map_err(|e| e.to_string())?;
                if response.contains("\"health\":\"up\"") {
                    Ok(())
                } else {
                    Err("no target is up yet".to_owned())
                }
            },
        )
        .await?;
        Ok(())
    }

    fn prometheus_port(&self) -> u16 {
        self.prometheus_url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }

    /// The API server and etcd.
    pub fn api(&self) -> Result<&TestCluster> {
        self.base.as_ref().ok_or(Error::Stopped)
    }

    /// The admin kubeconfig.
    pub fn kubeconfig_path(&self) -> Result<&Path> {
        Ok(self.api()?.kubeconfig_path())
    }

    /// A new admin client.
    pub async fn client(&self) -> Result<Client> {
        self.api()?.client().await
    }

    /// Prometheus' URL on loopback (`http://127.0.0.1:<port>`), what KEDA's
    /// trigger queries.
    pub fn prometheus_url(&self) -> &str {
        &self.prometheus_url
    }

    /// Makes Prometheus scrape what the cluster's PodMonitors describe, as the Prometheus
    /// Operator would: its own configuration generator (`meshguard-prometheus-config`,
    /// `go/prometheus-config`) selects and validates every PodMonitor and writes Prometheus'
    /// configuration, the cluster's own jobs added; Prometheus reloads it (SIGHUP). Run it
    /// again after PodMonitors change: nothing watches them. Returns the generator's report
    /// (one line per PodMonitor selected).
    pub async fn scrape_pod_monitors(&self) -> Result<String> {
        let (generated, report) = self.generate_prometheus_config().await?;
        self.load_prometheus_config(&generated).await?;
        Ok(report)
    }

    /// What a PodMonitor controller's watch does, one tick of it: generates Prometheus'
    /// configuration from the cluster's PodMonitors as [`Self::scrape_pod_monitors`] does, and
    /// reloads Prometheus only when it differs from the one loaded. The generator's report when
    /// it did.
    pub async fn refresh_pod_monitors(&self) -> Result<Option<String>> {
        let files = self.prometheus_files.as_ref().ok_or(Error::Stopped)?;
        let (generated, report) = self.generate_prometheus_config().await?;
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| Error::io(format!("cannot read {}", path.display()), e))
        };
        if read(&generated)? == read(&files.config)? {
            std::fs::remove_file(&generated)
                .map_err(|e| Error::io(format!("cannot remove {}", generated.display()), e))?;
            return Ok(None);
        }
        self.load_prometheus_config(&generated).await?;
        Ok(Some(report))
    }

    /// Runs the Prometheus Operator's generator on the cluster's PodMonitors: the file it wrote
    /// (next to the loaded configuration) and its report.
    async fn generate_prometheus_config(&self) -> Result<(PathBuf, String)> {
        let files = self.prometheus_files.as_ref().ok_or(Error::Stopped)?;
        let kubeconfig = self.kubeconfig_path()?;
        let generated = files.config.with_extension("yml.new");
        let out = tokio::process::Command::new(&files.generator)
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--additional={}", files.jobs.display()))
            .arg(format!("--out={}", generated.display()))
            .arg(format!(
                "--scrape-interval={}s",
                files.interval.as_secs().max(1)
            ))
            .arg(format!(
                "--prometheus-version=v{}",
                Versions::pinned()?.prometheus_release
            ))
            .output()
            .await
            .map_err(|e| Error::io(format!("cannot run {}", files.generator.display()), e))?;
        let report = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            return Err(Error::io(
                "generating Prometheus' configuration from the PodMonitors",
                std::io::Error::other(report.trim().to_owned()),
            ));
        }
        Ok((generated, report))
    }

    /// Puts `generated` in place of Prometheus' configuration, has Prometheus reload it (SIGHUP)
    /// and waits until every job in it is loaded.
    async fn load_prometheus_config(&self, generated: &Path) -> Result<()> {
        let files = self.prometheus_files.as_ref().ok_or(Error::Stopped)?;
        std::fs::rename(generated, &files.config)
            .map_err(|e| Error::io(format!("cannot replace {}", files.config.display()), e))?;
        let prometheus = self.component("prometheus").ok_or(Error::Stopped)?;
        let pid = rustix::process::Pid::from_raw(prometheus.pid() as i32).ok_or(Error::Stopped)?;
        rustix::process::kill_process(pid, rustix::process::Signal::HUP)
            .map_err(|e| Error::io("signalling Prometheus to reload", e.into()))?;
        let port = self.prometheus_port();
        let wanted = std::fs::read_to_string(&files.config)
            .map_err(|e| Error::io(format!("cannot read {}", files.config.display()), e))?
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- job_name: "))
            .map(|j| j.trim_matches('"').to_owned())
            .collect::<Vec<_>>();
        self.wait_for(
            "prometheus",
            "the generated configuration loaded",
            Instant::now() + Duration::from_secs(30),
            Duration::from_secs(30),
            || {
                let wanted = wanted.clone();
                async move {
                    let response = http_get_loopback(port, "/api/v1/status/config")
                        .await
                        .map_err(|e| e.to_string())?;
                    match wanted.iter().find(|j| !response.contains(j.as_str())) {
                        None => Ok(()),
                        Some(j) => Err(format!("job {j} not loaded yet")),
                    }
                }
            },
        )
        .await?;
        Ok(())
    }

    /// Runs an instant PromQL query and returns Prometheus' JSON answer.
    pub async fn prometheus_query(&self, promql: &str) -> Result<serde_json::Value> {
        self.prometheus_api(&format!("/api/v1/query?query={}", percent_encode(promql)))
            .await
    }

    /// `GET path` on Prometheus' HTTP API (e.g. `/api/v1/targets`): its JSON answer.
    pub async fn prometheus_api(&self, path: &str) -> Result<serde_json::Value> {
        crate::queries::get_json(self.prometheus_port(), path).await
    }

    /// The names of the nodes, CPU pool first.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The cluster directory: every component's `<name>.log`, the
    /// certificates, the API server's own directory.
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    /// Process ids of every component, by name (the API server and etcd included).
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        let mut out: Vec<(&'static str, u32)> = self
            .components
            .iter()
            .map(|c| (c.name(), c.pid()))
            .collect();
        if let Some(real) = &self.real {
            out.extend(real.pids());
        }
        if let Some(base) = &self.base {
            out.push(("kube-apiserver", base.apiserver_pid()));
            out.push(("etcd", base.etcd_pid()));
        }
        out
    }

    /// Sets the simulated total CPU of a Deployment, in millicores.
    pub async fn set_load(&self, namespace: &str, deployment: &str, millis: u64) -> Result<()> {
        load::set_load(&self.client().await?, namespace, deployment, millis).await
    }

    /// Stops everything (the last started component first, the API server
    /// and etcd last) and removes the directory unless it is kept.
    pub fn stop(mut self) -> Result<()> {
        self.stop_inner()
    }

    /// Stops the cluster, then lists what its real nodes left on the machine (processes,
    /// mounts, cgroups, interfaces, nftables, `ip_forward`; see [`nodes::Footprint`]): empty
    /// when everything went, and for a cluster without real nodes.
    pub fn stop_and_list_leftovers(self) -> Result<Vec<String>> {
        let footprint = self.real_nodes_footprint();
        self.stop()?;
        Ok(footprint.map(|f| f.leftovers()).unwrap_or_default())
    }

    fn stop_inner(&mut self) -> Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        if let Some(task) = self.load.take() {
            task.abort();
        }
        if let Some(task) = self.gpus.take() {
            task.abort();
        }
        let mut result = Ok(());
        // The nodes first, while the API server still answers their kubelets.
        if let Some(mut real) = self.real.take() {
            result = real.stop();
        }
        while let Some(mut component) = self.components.pop() {
            let stopped = component.stop(Duration::from_secs(10));
            if result.is_ok() {
                result = stopped;
            }
        }
        if let Some(base) = self.base.take() {
            let stopped = base.stop();
            if result.is_ok() {
                result = stopped;
            }
        }
        if let Some(dir) = self.dir.take() {
            if self.keep_dir {
                let _ = dir.keep();
            } else if let Err(e) = dir.close() {
                if result.is_ok() {
                    result = Err(Error::io(
                        format!("cannot remove {}", self.dir_path.display()),
                        e,
                    ));
                }
            }
        }
        result
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

/// The reconciler of the simulated load, until the cluster stops. Errors (the API server going
/// away while stopping, a conflict) are appended to `log` and retried on the next pass.
async fn load_loop(client: Client, log: PathBuf) {
    let mut last_error = String::new();
    loop {
        if let Err(e) = load::reconcile_once(&client).await {
            let text = e.to_string();
            if text != last_error {
                use std::io::Write as _;
                if let Ok(mut f) = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                {
                    let _ = writeln!(f, "{text}");
                }
                last_error = text;
            }
        }
        tokio::time::sleep(load::RECONCILE_PERIOD).await;
    }
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn apiservice_available(client: Client, name: &str) -> std::result::Result<(), String> {
    let api: Api<DynamicObject> = Api::all_with(client, &apiservice_resource());
    let object = api.get(name).await.map_err(|e| e.to_string())?;
    let conditions = object.data["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    match conditions.iter().find(|c| c["type"] == "Available") {
        Some(c) if c["status"] == "True" => Ok(()),
        Some(c) => Err(format!(
            "Available={} ({}: {})",
            c["status"].as_str().unwrap_or("?"),
            c["reason"].as_str().unwrap_or("?"),
            c["message"].as_str().unwrap_or("")
        )),
        None => Err("no Available condition yet".to_owned()),
    }
}

fn apiservice_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "apiregistration.k8s.io",
        "v1",
        "APIService",
    ))
}

/// Server-side applies one object with the local cluster's field manager.
async fn apply(
    client: &Client,
    api_version: &str,
    kind: &str,
    object: serde_json::Value,
) -> Result<()> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let api: Api<DynamicObject> = match object["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    api.patch(
        &name,
        &PatchParams::apply(LOCAL_MANAGER).force(),
        &Patch::Apply(&object),
    )
    .await
    .map_err(|e| Error::kube(format!("applying {kind} {name}"), e))?;
    Ok(())
}

/// Registers an aggregated API served on a loopback port: an ExternalName Service `localhost`
/// and an APIService whose CA bundle verifies the server's certificate (issued for
/// `<service>.<namespace>.svc`, the name the aggregator checks).
async fn register_apiservice(
    client: &Client,
    namespace: &str,
    service: &str,
    group: &str,
    port: u16,
    ca_bundle: &str,
) -> Result<()> {
    apply(
        client,
        "v1",
        "Service",
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": service, "namespace": namespace},
            "spec": {"type": "ExternalName", "externalName": "localhost",
                     "ports": [{"name": "https", "port": port, "protocol": "TCP"}]},
        }),
    )
    .await?;
    apply(
        client,
        "apiregistration.k8s.io/v1",
        "APIService",
        json!({
            "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
            "metadata": {"name": format!("v1beta1.{group}")},
            "spec": {
                "group": group, "version": "v1beta1",
                "service": {"namespace": namespace, "name": service, "port": port},
                "caBundle": ca_bundle,
                "groupPriorityMinimum": 100, "versionPriority": 100,
            },
        }),
    )
    .await
}

/// kwok's configuration: its options, then kwok's own rules from its module (the stages that
/// make nodes Ready and keep their leases, run pods and delete them, the kubelet resource
/// metrics, and CPU usage from the pod annotation).
fn kwok_configuration(rules: &Path) -> Result<String> {
    let mut text = String::from(
        "apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
options:
  nodeLeaseDurationSeconds: 40
  nodeLeaseParallelism: 4
  podPlayStageParallelism: 4
  nodePlayStageParallelism: 4
  enablePodsOnNodeSyncStreamWatch: true
",
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(rules)
        .map_err(|e| Error::io(format!("cannot read {}", rules.display()), e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::io(
            format!("{} holds no kwok rules", rules.display()),
            std::io::ErrorKind::NotFound.into(),
        ));
    }
    for file in files {
        let rule = std::fs::read_to_string(&file)
            .map_err(|e| Error::io(format!("cannot read {}", file.display()), e))?;
        text.push_str("---\n");
        text.push_str(&rule);
        if !rule.ends_with('\n') {
            text.push('\n');
        }
    }
    Ok(text)
}

/// Prometheus' `global` section.
fn prometheus_global(interval: Duration) -> String {
    let secs = interval.as_secs().max(1);
    format!(
        "global:
  scrape_interval: {secs}s
  evaluation_interval: {secs}s
"
    )
}

/// The cluster's own scrape jobs, a YAML list: kwok's kubelets through kwok's discovery, and
/// kube-state-metrics (its own labels kept, as kube-prometheus-stack's `honorLabels: true`).
fn prometheus_jobs(kwok_port: u16, ksm_port: u16, ca: &Path, interval: Duration) -> String {
    let secs = interval.as_secs().max(1);
    let ca = ca.display();
    format!(
        "- job_name: kwok-kubelets
  scheme: https
  tls_config:
    ca_file: {ca}
  http_sd_configs:
  - url: https://127.0.0.1:{kwok_port}/discovery/prometheus
    refresh_interval: {secs}s
    tls_config:
      ca_file: {ca}
- job_name: kube-state-metrics
  honor_labels: true
  static_configs:
  - targets: ['127.0.0.1:{ksm_port}']
"
    )
}

/// `Ok` when `GET path` on loopback `port` answers 200, else its status line.
async fn http_ok(port: u16, path: &str) -> std::result::Result<(), String> {
    let response = http_get_loopback(port, path)
        .await
        .map_err(|e| e.to_string())?;
    if response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(response.lines().next().unwrap_or_default().to_owned())
    }
}

/// Prometheus' job for the real nodes' kubelets: cAdvisor's container metrics
/// (`container_cpu_usage_seconds_total`, ...) on `/metrics/cadvisor`, over TLS verified against
/// the cluster's CA, with the admin's token (the kubelets authorize through the API server).
fn cadvisor_scrape_configuration(kubelets: &[RealNodeInfo], ca: &Path, token: &Path) -> String {
    if kubelets.is_empty() {
        return String::new();
    }
    let mut text = format!(
        "- job_name: kubelets-cadvisor
  scheme: https
  metrics_path: /metrics/cadvisor
  tls_config:
    ca_file: {ca}
  authorization:
    credentials_file: {token}
  static_configs:
",
        ca = ca.display(),
        token = token.display(),
    );
    for k in kubelets {
        text.push_str(&format!(
            "  - targets: ['{ip}:{port}']\n    labels: {{node: {name}}}\n",
            ip = k.ip,
            port = k.kubelet_port,
            name = k.name,
        ));
    }
    text
}

/// The names of the real nodes `opts` asks for, CPU pool first.
fn real_node_specs(opts: &LocalClusterOptions) -> Vec<RealNodeSpec> {
    let cpu = (1..=opts.real_cpu_nodes).map(|i| RealNodeSpec {
        name: format!("real-cpu-{i}"),
        gpu: false,
    });
    let gpu = (1..=opts.real_gpu_nodes).map(|i| RealNodeSpec {
        name: format!("real-gpu-{i}"),
        gpu: true,
    });
    cpu.chain(gpu).collect()
}

/// The cluster's name service: the `kube-dns` Service on [`nodes::CLUSTER_DNS`], its endpoint
/// CoreDNS on the first real node's address (a host process, not a pod: the API server it
/// watches listens on loopback).
async fn apply_cluster_dns(client: &Client, real_ips: &[(String, String)]) -> Result<()> {
    let Some((_, ip)) = real_ips.first() else {
        return Ok(());
    };
    apply(
        client,
        "v1",
        "Service",
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system",
                         "labels": {"k8s-app": "kube-dns"}},
            "spec": {"clusterIP": nodes::CLUSTER_DNS, "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            ]},
        }),
    )
    .await?;
    apply(
        client,
        "discovery.k8s.io/v1",
        "EndpointSlice",
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "kube-dns-coredns", "namespace": "kube-system",
                         "labels": {"kubernetes.io/service-name": "kube-dns",
                                    "endpointslice.kubernetes.io/managed-by": LOCAL_MANAGER}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            ],
        }),
    )
    .await
}

/// The `kubernetes` Service's endpoint, which the API server's own reconciler would set to its
/// loopback address (and endpoint validation refuses): the forwarder pods reach it through. The
/// API server's self-signed certificate names the Service's ClusterIP and
/// `kubernetes.default.svc` (kube-apiserver's `MaybeDefaultWithSelfSignedCerts` call in
/// `cmd/kube-apiserver/app/options/completion.go`), so in-cluster clients verify it.
async fn apply_api_endpoint(client: &Client, endpoint: SocketAddr) -> Result<()> {
    apply(
        client,
        "discovery.k8s.io/v1",
        "EndpointSlice",
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "kubernetes-local", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "kubernetes",
                                    "endpointslice.kubernetes.io/managed-by": LOCAL_MANAGER}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [endpoint.ip().to_string()], "conditions": {"ready": true}}],
            "ports": [{"name": "https", "port": endpoint.port(), "protocol": "TCP"}],
        }),
    )
    .await
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub(crate) fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Why `node` cannot take new pods (see [`LocalCluster::unfit_nodes`]), or `None` when it can.
fn unfit_node(node: &Node) -> Option<String> {
    let name = node.metadata.name.as_deref().unwrap_or("?");
    let mut why = Vec::new();
    let status = node.status.as_ref();
    for c in status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
    {
        let pressure = c.type_.ends_with("Pressure") && c.status == "True";
        let not_ready = c.type_ == "Ready" && c.status != "True";
        if pressure || not_ready {
            let what = if not_ready {
                "not Ready"
            } else {
                c.type_.as_str()
            };
            match c.message.as_deref().filter(|m| !m.is_empty()) {
                Some(message) => why.push(format!("{what} ({message})")),
                None => why.push(what.to_owned()),
            }
        }
    }
    let spec = node.spec.as_ref();
    for t in spec.and_then(|s| s.taints.as_ref()).into_iter().flatten() {
        if t.key.starts_with("node.kubernetes.io/") {
            why.push(format!("taint {}:{}", t.key, t.effect));
        }
    }
    (!why.is_empty()).then(|| format!("{name}: {}", why.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unfit_nodes_say_why_they_take_no_pods() {
        let node = |conditions: serde_json::Value, taints: serde_json::Value| -> Node {
            serde_json::from_value(json!({
                "metadata": {"name": "mgnode0"},
                "spec": {"taints": taints},
                "status": {"conditions": conditions},
            }))
            .unwrap_or_default()
        };
        let healthy = node(
            json!([
                {"type": "Ready", "status": "True"},
                {"type": "DiskPressure", "status": "False"},
            ]),
            json!([{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]),
        );
        assert_eq!(unfit_node(&healthy), None);
        let full = node(
            json!([
                {"type": "Ready", "status": "True"},
                {"type": "DiskPressure", "status": "True", "message": "kubelet has disk pressure"},
            ]),
            json!([{"key": "node.kubernetes.io/disk-pressure", "effect": "NoSchedule"}]),
        );
        assert_eq!(
            unfit_node(&full).as_deref(),
            Some(
                "mgnode0: DiskPressure (kubelet has disk pressure), \
                 taint node.kubernetes.io/disk-pressure:NoSchedule"
            )
        );
        let gone = node(json!([{"type": "Ready", "status": "Unknown"}]), json!(null));
        assert_eq!(unfit_node(&gone).as_deref(), Some("mgnode0: not Ready"));
    }

    #[test]
    fn percent_encoding_keeps_only_unreserved_characters() {
        assert_eq!(
            percent_encode("sum(rate(x{pod=~\"a-.*\"}[1m]))"),
            "sum%28rate%28x%7Bpod%3D~%22a-.%2A%22%7D%5B1m%5D%29%29"
        );
    }

    #[test]
    fn prometheus_scrapes_kwok_through_its_discovery_over_verified_tls() {
        let text = prometheus_jobs(4242, 4343, Path::new("/ca.crt"), Duration::from_secs(5));
        assert!(text.starts_with("- job_name: kwok-kubelets\n"));
        assert!(text.contains("url: https://127.0.0.1:4242/discovery/prometheus"));
        assert!(text.contains("refresh_interval: 5s"));
        assert_eq!(text.matches("ca_file: /ca.crt").count(), 2);
        assert!(text.contains("- job_name: kube-state-metrics\n  honor_labels: true\n"));
        assert!(text.contains("- targets: ['127.0.0.1:4343']"));
        assert!(prometheus_global(Duration::from_secs(5)).contains("scrape_interval: 5s"));
    }
}
