//! The command line: commands, flags, their help, and how flags become [`RenderOptions`].

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use meshguard_manifests::{ImageRegistry, Overrides, Profile, RenderOptions};
use meshguard_mesh::{LogLevel, Mode};

/// The namespace meshctl installs into unless `--namespace` says otherwise.
pub const DEFAULT_NAMESPACE: &str = "meshguard";
/// How long `--wait` waits unless `--timeout` says otherwise.
pub const DEFAULT_TIMEOUT: &str = "5m";

const LONG_ABOUT: &str = "\
meshctl installs meshguard on a Kubernetes cluster running Istio: services whose sidecars \
enforce service-identity authorization and export request metrics through two Proxy-Wasm \
filters. Built in are three services (user-service -> order-service -> payment-service); a \
mesh file (-f mesh.yaml, see docs/mesh-file.md) describes any other set: the services, which \
may call which, how each scales and where it runs.

What `install` puts into the cluster, all in one namespace (default `meshguard`) except the \
Namespace itself:
  - the Namespace (Istio sidecar injection on; Pod Security `restricted`, or `privileged`
    when Istio injects without its CNI plugin: preflight says how to get `restricted`)
  - one ServiceAccount per service (no API token mounted, no Role)
  - Istio PeerAuthentication: mTLS STRICT for the namespace
  - NetworkPolicies: default deny, plus only the calls of the call graph, DNS, istiod,
    Wasm module fetch and Prometheus scraping
  - a ConfigMap of Envoy stats tag rules, which the pods name as their sidecar bootstrap
    override (the metric labels), and two Istio WasmPlugins per service (identity
    authorization, fail-closed; request metrics)
  - per service a Service, a Deployment and a PodDisruptionBudget; services with GPUs
    (built in: payment-service) run only on GPU nodes, the others never do
  - per service its autoscaler: a HorizontalPodAutoscaler on its CPU or a KEDA ScaledObject
    on Prometheus queries (built in: order-service on its CPU, 75 %, 1..10 replicas;
    user-service on order-service's CPU, 1..4 replicas)

Every object carries the labels app.kubernetes.io/managed-by=meshctl,
app.kubernetes.io/part-of=meshguard and app.kubernetes.io/instance=<namespace>; `uninstall`
deletes exactly the objects carrying them and nothing else.

The cluster is chosen like kubectl does: --kubeconfig, else $KUBECONFIG, else ~/.kube/config,
else the in-cluster service account; --context picks a context of that kubeconfig.

Progress goes to stderr, data (YAML, tables) to stdout. Exit status: 0 success, 1 failure,
2 bad command line.";

const EXAMPLES: &str = "\
Examples:
  # See everything that would be installed, without a cluster
  meshctl render > meshguard.yaml

  # The same for the services, calls, scaling and placement of your own mesh file
  meshctl render -f mesh.yaml

  # Check the cluster, then install with your published filter modules
  meshctl preflight --authz-module oci://ghcr.io/acme/meshguard-authz:0.1.0 \\
                    --metrics-module oci://ghcr.io/acme/meshguard-metrics:0.1.0
  meshctl install --authz-module oci://ghcr.io/acme/meshguard-authz:0.1.0 \\
                  --metrics-module oci://ghcr.io/acme/meshguard-metrics:0.1.0 --profile gke

  # What is installed, and is it healthy?
  meshctl status

  # Remove everything meshctl installed in namespace `meshguard`
  meshctl uninstall

Full reference: docs/meshctl.md";

/// meshctl: installs meshguard (services, mTLS, Wasm authorization and metrics filters,
/// autoscalers, GPU scheduling) on a Kubernetes cluster with Istio.
#[derive(Debug, Parser)]
#[command(
    name = "meshctl",
    version,
    long_about = LONG_ABOUT,
    after_help = EXAMPLES,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command accepts, before or after the command name.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Target")]
pub struct GlobalArgs {
    /// Namespace to install into, inspect or uninstall from [default: the mesh file's
    /// `namespace`, else meshguard]. Every namespaced object goes there, and uninstall only
    /// removes objects labelled with this instance.
    #[arg(
        short = 'n',
        long,
        global = true,
        value_name = "NAME",
        value_parser = parse_namespace
    )]
    pub namespace: Option<String>,

    /// Kubeconfig file to use (default: $KUBECONFIG, else ~/.kube/config, else the in-cluster
    /// service account). Not used by `render`.
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// Kubeconfig context to use (default: the kubeconfig's current context). Not used by
    /// `render`.
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the cluster, then create or update every meshguard object (server-side apply).
    #[command(long_about = INSTALL_ABOUT, after_help = INSTALL_EXAMPLES)]
    Install(InstallArgs),
    /// Delete every object meshctl installed in the namespace, and the namespace if it holds
    /// nothing else.
    #[command(long_about = UNINSTALL_ABOUT, after_help = UNINSTALL_EXAMPLES)]
    Uninstall(UninstallArgs),
    /// Show, for every object meshctl would install, whether it is present, missing or drifted,
    /// and how the workloads and autoscalers are doing.
    #[command(long_about = STATUS_ABOUT, after_help = STATUS_EXAMPLES)]
    Status(StatusArgs),
    /// Print every object `install` would apply, as YAML, without contacting a cluster.
    #[command(long_about = RENDER_ABOUT, after_help = RENDER_EXAMPLES)]
    Render(RenderCmdArgs),
    /// Run install's cluster checks only (CRDs, metrics API, GPU nodes, Istio, module URLs)
    /// and report every problem with its fix. Changes nothing.
    #[command(long_about = PREFLIGHT_ABOUT, after_help = PREFLIGHT_EXAMPLES)]
    Preflight(PreflightArgs),
    /// Package the built filters as OCI images Istio accepts (and with --services the reference
    /// services as container images), push them to a registry, and print the `install` flags
    /// (module URLs and the sha256 Istio checks).
    #[command(long_about = PUBLISH_ABOUT, after_help = PUBLISH_EXAMPLES)]
    Publish(PublishArgs),
}

const PUBLISH_ABOUT: &str = "\
Packages meshguard_authz.wasm and meshguard_metrics.wasm (from --filters-dir) as OCI images in \
the layout Istio's agent fetches (an OCI image manifest whose one layer, \
application/vnd.oci.image.layer.v1.tar+gzip, is a tar.gz holding plugin.wasm: what a `FROM \
scratch` image with `COPY plugin.wasm ./` has), pushes them to REPOSITORY/meshguard-authz:TAG \
and REPOSITORY/meshguard-metrics:TAG, and prints each oci:// URL with its sha256.

The sha256 is the image manifest's digest: for oci:// modules that is what Istio compares with \
the WasmPlugin's sha256 (not the digest of the .wasm file). The images are reproducible: the \
same .wasm gives the same digest.

With --services it also pushes the reference services, user-service, order-service and \
payment-service (their static binaries from --services-dir), as REPOSITORY/<service>:TAG: each an \
OCI image (linux/amd64) whose one layer holds the binary as /<service>, its entrypoint, run as \
user 65532. The printed flags then include --image-registry REPOSITORY --image-tag TAG, which \
makes install run these images.

Credentials come from the docker config ($DOCKER_CONFIG/config.json, else \
~/.docker/config.json) as docker uses them: credHelpers, auths, credsStore (e.g. after \
`gcloud auth configure-docker REGION-docker.pkg.dev` or `docker login`). Output goes to stdout; \
its last line is the flags to pass to `meshctl install`.";

const PUBLISH_EXAMPLES: &str = "\
Examples:
  cargo build --profile wasm --target wasm32-wasip1 --target-dir target/filters \\
    -p meshguard-authz -p meshguard-metrics      # or scripts/demo.sh, which builds them too
  meshctl publish --repository europe-west4-docker.pkg.dev/my-project/meshguard --tag 0.1.0
  meshctl publish --repository localhost:5000/meshguard --plain-http
  cargo build --profile services --target x86_64-unknown-linux-musl --target-dir target/services \\
    -p meshguard-reference-services              # the services' static binaries
  meshctl publish --repository europe-west4-docker.pkg.dev/my-project/meshguard --services";

const INSTALL_ABOUT: &str = "\
Creates or updates every meshguard object in the cluster, in dependency order: the namespace \
and identities first, then mTLS, network policies and the Wasm filters, and only then the \
workloads and their autoscalers, so no pod ever serves without its policy.

Steps:
  1. Render the objects from the flags (same as `meshctl render`); refuse placeholder Wasm
     module URLs (the default ones) before contacting the cluster.
  2. Preflight (skip with --skip-preflight): the API server answers; the Istio and KEDA CRDs
     the objects need are established; the metrics API (metrics-server) is registered for the
     HPA; a node can run each Deployment (a service with GPUs needs a node with allocatable
     nvidia.com/gpu); istiod runs (warning only). Every problem is reported at once, with
     its fix.
  3. Server-side apply of each object with field manager `meshctl`, taking ownership of the
     fields meshctl sets even if someone changed them by hand (force): an install always
     converges to what the flags say. Fields meshctl does not set (like replicas of autoscaled
     Deployments) are left alone. Each object is reported as created, configured or
     unchanged; running install twice changes nothing the second time.
  4. With --wait, wait until every Deployment is available.

What it touches: only the objects listed by `meshctl render`, all labelled
app.kubernetes.io/managed-by=meshctl. An existing namespace of the same name is labelled as
meshctl's.

With --dry-run=server the API server validates and admits every object (schemas, admission
webhooks) but stores nothing.";

const INSTALL_EXAMPLES: &str = "\
Examples:
  meshctl install --authz-module oci://ghcr.io/acme/meshguard-authz:0.1.0 \\
                  --metrics-module oci://ghcr.io/acme/meshguard-metrics:0.1.0

  # GKE GPU node pool, images from your registry, wait for the rollout
  meshctl install --profile gke --user-image europe-docker.pkg.dev/acme/svc/user:1.4 \\
                  --authz-module oci://... --metrics-module oci://... --wait --timeout 10m

  # Observe what the authorization filter would deny without denying anything
  meshctl install --mode dry-run --authz-module oci://... --metrics-module oci://...

  # Let the API server validate everything without changing the cluster
  meshctl install --dry-run=server --authz-module oci://... --metrics-module oci://...";

const UNINSTALL_ABOUT: &str = "\
Deletes every object in the cluster that carries meshctl's ownership labels for this \
namespace (app.kubernetes.io/managed-by=meshctl, app.kubernetes.io/part-of=meshguard, \
app.kubernetes.io/instance=<namespace>), in reverse install order: autoscalers and workloads \
first, mTLS and network policies after them. Objects of every kind the API server serves are \
searched, so objects a previous meshctl version installed are removed too.

Objects without those labels are never touched. The namespace is deleted last, and only if it \
carries meshctl's labels and holds nothing meshctl did not create (ignoring what Kubernetes and \
Istio put in every namespace, such as the kube-root-ca.crt ConfigMap, and objects owned by \
meshctl's objects, such as ReplicaSets and Pods). Otherwise it is kept and the objects \
keeping it are listed; --delete-namespace deletes it anyway, with everything in it.

Uninstall does not need the flags install was given. With --dry-run=server nothing is \
deleted: the API server checks each deletion (permissions, admission) and meshctl lists what \
would go.";

const UNINSTALL_EXAMPLES: &str = "\
Examples:
  meshctl uninstall
  meshctl uninstall --namespace shop-staging --dry-run=server
  meshctl uninstall --delete-namespace --wait";

const STATUS_ABOUT: &str = "\
For every object `install` would apply with these flags, shows whether it is present, missing, \
or drifted (present, but its labels or the fields meshctl sets differ from what install would \
write, e.g. an image changed by hand), and the health of what runs:
  - Deployment: ready/desired replicas, how many pods run on which node pool, and the
    scheduler's reason for pods that stay Pending (e.g. no node with a free nvidia.com/gpu)
  - HorizontalPodAutoscaler: current/desired replicas, its metric against the target
  - ScaledObject: KEDA's Ready and Active conditions, and the HPA KEDA created for it
    (current/desired replicas, the metric against the target)

--watch prints the table again every --interval until interrupted.

Pass the same flags as to install (images, modules, profile...), or drift is reported for the \
differences. The table goes to stdout (--output json for scripts). Read-only. Exits 1 if any \
object is missing or drifted, 0 otherwise.";

const STATUS_EXAMPLES: &str = "\
Examples:
  meshctl status
  meshctl status --watch --interval 10s
  meshctl status --namespace shop-staging --output json | jq '.objects[] | select(.state != \"present\")'";

const RENDER_ABOUT: &str = "\
Prints every object `install` would apply, in apply order, as one multi-document YAML stream on \
stdout. Needs no cluster and no kubeconfig: use it to review, diff or commit the manifests, or \
to feed another tool (kubectl apply --server-side -f -, GitOps). Placeholder Wasm module URLs \
are allowed here; `install` refuses them.";

const RENDER_EXAMPLES: &str = "\
Examples:
  meshctl render > meshguard.yaml
  meshctl render -f docs/examples/four-services.yaml --namespace shop
  meshctl render --profile gke --mode dry-run | kubectl diff --server-side -f -";

const PREFLIGHT_ABOUT: &str = "\
Runs the checks `install` runs before applying anything, and prints each problem with how to \
fix it. Errors (install would refuse): API server unreachable, a needed CRD missing or not \
established (WasmPlugin, PeerAuthentication from Istio; ScaledObject from KEDA; \
PodMonitor with --pod-monitor), the metrics API (v1beta1.metrics.k8s.io) not registered, no \
node that can run a Deployment (a service with GPUs needs allocatable nvidia.com/gpu on a \
node matching --profile), placeholder Wasm module URLs, the namespace being deleted. Warnings: \
istiod not found, the metrics API registered but unavailable, existing objects that meshctl \
did not create and would take over. Read-only; exits 1 if there is any error.";

const PREFLIGHT_EXAMPLES: &str = "\
Examples:
  meshctl preflight --authz-module oci://ghcr.io/acme/meshguard-authz:0.1.0 \\
                    --metrics-module oci://ghcr.io/acme/meshguard-metrics:0.1.0 --profile gke";

/// `--dry-run` of install and uninstall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum DryRun {
    /// Change the cluster.
    #[default]
    None,
    /// Send every request with dryRun=All: the API server validates and admits, but stores
    /// nothing. (For a client-side dry run, use `meshctl render`.)
    Server,
}

/// `--mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Deny requests from callers the call graph does not name (HTTP 403).
    Enforce,
    /// Log and count would-be denials, but let every request through.
    DryRun,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Enforce => Mode::Enforce,
            ModeArg::DryRun => Mode::DryRun,
        }
    }
}

/// `--log-level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevelArg {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl From<LogLevelArg> for LogLevel {
    fn from(l: LogLevelArg) -> Self {
        match l {
            LogLevelArg::Trace => LogLevel::Trace,
            LogLevelArg::Debug => LogLevel::Debug,
            LogLevelArg::Info => LogLevel::Info,
            LogLevelArg::Warn => LogLevel::Warn,
            LogLevelArg::Error => LogLevel::Error,
        }
    }
}

/// `--profile`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProfileArg {
    /// GPU nodes labelled gpu=true (and tainted nvidia.com/gpu=present:NoSchedule).
    Local,
    /// GKE GPU node pools (label cloud.google.com/gke-accelerator, taint nvidia.com/gpu).
    Gke,
}

impl From<ProfileArg> for Profile {
    fn from(p: ProfileArg) -> Self {
        match p {
            ProfileArg::Local => Profile::Local,
            ProfileArg::Gke => Profile::Gke,
        }
    }
}

/// `status --output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum OutputFormat {
    /// An aligned table.
    #[default]
    Table,
    /// One JSON document.
    Json,
}

/// What the objects look like: the flags `install`, `status`, `render` and `preflight` share.
/// Defaults are those of [`RenderOptions::new`].
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "What to install")]
pub struct RenderArgs {
    /// Mesh file describing the services, their calls, scaling and placement (YAML; see
    /// docs/mesh-file.md) [default: the built-in user-service -> order-service ->
    /// payment-service]. The flags below override what it says.
    #[arg(short = 'f', long = "file", value_name = "MESH.yaml")]
    pub file: Option<PathBuf>,

    /// Where the cluster runs; decides how services with GPUs find GPU nodes.
    #[arg(long, value_enum, default_value = "local")]
    pub profile: ProfileArg,

    /// Image of user-service [default: the mesh file's; built in:
    /// us-west1-docker.pkg.dev/.../user-service:latest, an example image in a private
    /// registry: pass your own].
    #[arg(long, value_name = "IMAGE")]
    pub user_image: Option<String>,

    /// Image of order-service [default: the mesh file's; built in: .../order-service:latest].
    #[arg(long, value_name = "IMAGE")]
    pub order_image: Option<String>,

    /// Image of payment-service [default: the mesh file's; built in:
    /// .../payment-service:latest].
    #[arg(long, value_name = "IMAGE")]
    pub payment_image: Option<String>,

    /// Registry and path of the reference services' images (REGISTRY/PATH, as given to
    /// `meshctl publish --services`): user-service, order-service and payment-service run
    /// REGISTRY/PATH/<service>:TAG unless an image flag above sets theirs.
    #[arg(long, value_name = "REGISTRY/PATH")]
    pub image_registry: Option<String>,

    /// Tag of the images under --image-registry.
    #[arg(long, value_name = "TAG", default_value = env!("CARGO_PKG_VERSION"), requires = "image_registry")]
    pub image_tag: String,

    /// Where the sidecars fetch the authorization filter (oci://, https://, http:// or
    /// file:// URL). The default is a placeholder on registry.invalid, which install refuses:
    /// publish the filter first (docs/meshctl.md, "Publishing the filters").
    #[arg(long, value_name = "URL")]
    pub authz_module: Option<String>,

    /// Where the sidecars fetch the request metrics filter (same rules as --authz-module).
    #[arg(long, value_name = "URL")]
    pub metrics_module: Option<String>,

    /// SHA-256 of the authorization module (64 hex digits); Istio refuses a module that does
    /// not match. Recommended for https:// URLs.
    #[arg(long, value_name = "HEX")]
    pub authz_module_sha256: Option<String>,

    /// SHA-256 of the metrics module.
    #[arg(long, value_name = "HEX")]
    pub metrics_module_sha256: Option<String>,

    /// Secret (kubernetes.io/dockerconfigjson, in the namespace) the sidecars use to pull
    /// oci:// modules from a private registry. meshctl does not create it.
    #[arg(long, value_name = "SECRET")]
    pub module_pull_secret: Option<String>,

    /// CIDR the sidecars may reach to fetch the modules (repeatable) [default: 0.0.0.0/0].
    /// Narrow it to your registry's addresses.
    #[arg(
        long = "module-fetch-cidr",
        value_name = "CIDR",
        conflicts_with = "no_module_fetch_egress"
    )]
    pub module_fetch_cidrs: Vec<String>,

    /// Render no egress rule for module fetching (for file:// modules, or a registry reachable
    /// through other rules).
    #[arg(long)]
    pub no_module_fetch_egress: bool,

    /// Prometheus that KEDA queries for order-service's CPU [default: kube-prometheus-stack's
    /// http://monitoring-kube-prometheus-prometheus.monitoring.svc.cluster.local:9090].
    #[arg(long, value_name = "URL")]
    pub prometheus_address: Option<String>,

    /// Namespace Prometheus runs in: the only one allowed to scrape the sidecars.
    #[arg(long, value_name = "NAME", default_value = meshguard_manifests::DEFAULT_MONITORING_NAMESPACE)]
    pub monitoring_namespace: String,

    /// Also install a Prometheus Operator PodMonitor for the sidecars' stats (needs the
    /// podmonitors.monitoring.coreos.com CRD).
    #[arg(long)]
    pub pod_monitor: bool,

    /// What the authorization filter does with a request from a caller the call graph does
    /// not allow.
    #[arg(long, value_enum, default_value = "enforce")]
    pub mode: ModeArg,

    /// The filters' log level (in the sidecars' logs).
    #[arg(long, value_enum, default_value = "info")]
    pub log_level: LogLevelArg,

    /// HTTP path of the services' readiness and liveness probes.
    #[arg(long, value_name = "PATH", default_value = meshguard_manifests::DEFAULT_HEALTH_PATH)]
    pub health_path: String,

    /// KEDA: CPU cores of the measured service per replica, in every `cpu` trigger of the
    /// mesh [built in: 0.5 cores of order-service per user-service replica].
    #[arg(long, value_name = "CORES")]
    pub keda_cpu_threshold: Option<String>,

    /// KEDA: CPU (cores) of the measured service above which the scaled one is active, in
    /// every `cpu` trigger [built in: 0.1].
    #[arg(long, value_name = "CORES")]
    pub keda_cpu_activation_threshold: Option<String>,

    /// KEDA: a service that scales on another's CPU also scales on the request rate into it
    /// (requests per second per replica, from the metrics filter); built in, user-service on
    /// order-service's.
    #[arg(long, value_name = "RPS")]
    pub request_rate_threshold: Option<String>,

    /// Run every service without GPUs (no nvidia.com/gpu request, no GPU node affinity), for
    /// clusters without GPU nodes. Other services stay off GPU nodes either way.
    #[arg(long)]
    pub no_gpu: bool,

    /// Pod Security level the namespace enforces: restricted, baseline or privileged. By
    /// default install, preflight and status ask the cluster: `restricted` when Istio injects
    /// with its CNI plugin, `privileged` when it injects the istio-init container (NET_ADMIN,
    /// NET_RAW, root), which `restricted` and `baseline` refuse; render, which reads no cluster,
    /// uses `restricted`. Warn and audit stay `restricted` either way.
    #[arg(long, value_name = "LEVEL")]
    pub pod_security: Option<meshguard_manifests::PodSecurity>,

    /// For test clusters only: order-service's HPA and user-service's KEDA autoscaler scale
    /// down after 15 s of lower demand, all surplus pods at once, instead of after 5 minutes
    /// and at most half the pods a minute. Keep the default in production: a short lull must
    /// not throw capacity away.
    #[arg(long)]
    pub fast_scale_down: bool,
}

impl RenderArgs {
    /// What these flags change in the mesh document.
    pub fn overrides(&self) -> Overrides {
        let images = [
            (
                "--user-image",
                meshguard_mesh::model::USER_SERVICE,
                &self.user_image,
            ),
            (
                "--order-image",
                meshguard_mesh::model::ORDER_SERVICE,
                &self.order_image,
            ),
            (
                "--payment-image",
                meshguard_mesh::model::PAYMENT_SERVICE,
                &self.payment_image,
            ),
        ]
        .into_iter()
        .filter_map(|(flag, service, image)| {
            image
                .as_ref()
                .map(|i| (flag.to_owned(), service.to_owned(), i.clone()))
        })
        .collect();
        Overrides {
            images,
            image_registry: self.image_registry.as_ref().map(|r| ImageRegistry {
                repository: r.clone(),
                tag: self.image_tag.clone(),
            }),
            cpu_threshold: self.keda_cpu_threshold.clone(),
            cpu_activation_threshold: self.keda_cpu_activation_threshold.clone(),
            request_rate_threshold: self.request_rate_threshold.clone(),
            no_gpu: self.no_gpu,
        }
    }

    /// The render options these flags describe, for an install into `namespace`.
    pub fn to_options(&self, namespace: &str) -> RenderOptions {
        let mut o = RenderOptions::new(namespace);
        o.profile = self.profile.into();
        let set = |target: &mut String, value: &Option<String>| {
            if let Some(v) = value {
                target.clone_from(v);
            }
        };
        set(&mut o.authz_module_url, &self.authz_module);
        set(&mut o.metrics_module_url, &self.metrics_module);
        set(&mut o.prometheus_address, &self.prometheus_address);
        o.authz_module_sha256.clone_from(&self.authz_module_sha256);
        o.metrics_module_sha256
            .clone_from(&self.metrics_module_sha256);
        o.module_pull_secret.clone_from(&self.module_pull_secret);
        if self.no_module_fetch_egress {
            o.module_fetch_cidrs.clear();
        } else if !self.module_fetch_cidrs.is_empty() {
            o.module_fetch_cidrs.clone_from(&self.module_fetch_cidrs);
        }
        o.monitoring_namespace
            .clone_from(&self.monitoring_namespace);
        o.pod_monitor = self.pod_monitor;
        o.authz_mode = self.mode.into();
        o.log_level = self.log_level.into();
        o.health_path.clone_from(&self.health_path);
        if let Some(level) = self.pod_security {
            o.pod_security = level;
        }
        o.fast_scale_down = self.fast_scale_down;
        o
    }
}

/// Cluster connection flags, from [`GlobalArgs`].
impl GlobalArgs {
    /// The namespace: `--namespace`, else the mesh file's, else [`DEFAULT_NAMESPACE`].
    pub fn namespace_or(&self, from_file: Option<&str>) -> String {
        self.namespace
            .as_deref()
            .or(from_file)
            .unwrap_or(DEFAULT_NAMESPACE)
            .to_owned()
    }

    /// Which cluster to talk to.
    pub fn target(&self) -> crate::client::ClusterTarget {
        crate::client::ClusterTarget {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
        }
    }
}

/// `meshctl install`.
#[derive(Debug, Clone, Args)]
pub struct InstallArgs {
    /// `server`: the API server validates and admits every object but stores nothing.
    /// `--dry-run` alone means `server`.
    #[arg(
        long,
        value_enum,
        value_name = "MODE",
        default_value = "none",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "server"
    )]
    pub dry_run: DryRun,

    /// Skip the cluster checks (CRDs, metrics API, GPU nodes, istiod). Placeholder module URLs
    /// are refused regardless. For clusters where a check cannot see what exists, e.g. a GPU
    /// node pool that scales up from zero.
    #[arg(long)]
    pub skip_preflight: bool,

    /// After applying, wait until every Deployment is available (needs a running cluster:
    /// nodes, the images, the Wasm modules reachable).
    #[arg(long)]
    pub wait: bool,

    /// How long --wait waits, e.g. 90s, 5m, 1h.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_TIMEOUT, value_parser = parse_duration)]
    pub timeout: Duration,

    #[command(flatten)]
    pub render: RenderArgs,
}

/// `meshctl uninstall`.
#[derive(Debug, Clone, Args)]
pub struct UninstallArgs {
    /// `server`: the API server checks each deletion but deletes nothing.
    /// `--dry-run` alone means `server`.
    #[arg(
        long,
        value_enum,
        value_name = "MODE",
        default_value = "none",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "server"
    )]
    pub dry_run: DryRun,

    /// Delete the namespace even if it holds objects meshctl did not create (they are deleted
    /// with it). Never deletes a namespace without meshctl's labels.
    #[arg(long)]
    pub delete_namespace: bool,

    /// Wait until every deleted object (and the namespace, if deleted) is gone.
    #[arg(long)]
    pub wait: bool,

    /// How long --wait waits, e.g. 90s, 5m.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_TIMEOUT, value_parser = parse_duration)]
    pub timeout: Duration,
}

/// `meshctl status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: OutputFormat,

    /// Keep printing the status every --interval until interrupted (Ctrl-C).
    #[arg(short = 'w', long)]
    pub watch: bool,

    /// How often --watch prints, e.g. 5s, 1m.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub interval: Duration,

    #[command(flatten)]
    pub render: RenderArgs,
}

/// `meshctl publish`.
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// Registry and path to push to: REGISTRY/PATH (the modules become
    /// REGISTRY/PATH/meshguard-authz:TAG and REGISTRY/PATH/meshguard-metrics:TAG).
    #[arg(long, value_name = "REGISTRY/PATH")]
    pub repository: String,

    /// Tag of every image pushed.
    #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
    pub tag: String,

    /// Folder holding meshguard_authz.wasm and meshguard_metrics.wasm: where `scripts/demo.sh`,
    /// `scripts/test.sh` and `cargo build --profile wasm --target wasm32-wasip1 --target-dir
    /// target/filters` leave them.
    #[arg(long, value_name = "DIR", default_value = crate::publish::DEFAULT_FILTERS_DIR)]
    pub filters_dir: PathBuf,

    /// Also push the reference services (user-service, order-service, payment-service), each an
    /// OCI image of its static binary, as REGISTRY/PATH/<service>:TAG, for `install
    /// --image-registry`.
    #[arg(long)]
    pub services: bool,

    /// Folder holding the services' static binaries: where `scripts/test.sh` and `cargo build
    /// --profile services --target x86_64-unknown-linux-musl --target-dir target/services -p
    /// meshguard-reference-services` leave them.
    #[arg(long, value_name = "DIR", default_value = crate::publish::DEFAULT_SERVICES_DIR)]
    pub services_dir: PathBuf,

    /// Talk to the registry over plain HTTP (a registry on localhost); HTTPS otherwise.
    #[arg(long)]
    pub plain_http: bool,
}

/// `meshctl render`.
#[derive(Debug, Clone, Args)]
pub struct RenderCmdArgs {
    #[command(flatten)]
    pub render: RenderArgs,
}

/// `meshctl preflight`.
#[derive(Debug, Clone, Args)]
pub struct PreflightArgs {
    #[command(flatten)]
    pub render: RenderArgs,
}

/// The command-line flag that sets a [`RenderOptions`] field.
pub fn flag_of(field: &str) -> String {
    match field {
        "authz_module_url" => "--authz-module".to_owned(),
        "metrics_module_url" => "--metrics-module".to_owned(),
        "module_fetch_cidrs" => "--module-fetch-cidr".to_owned(),
        "authz_mode" => "--mode".to_owned(),
        other => format!("--{}", other.replace('_', "-")),
    }
}

/// An error as the command line says it: an invalid option is named by its flag
/// (`invalid --prometheus-address: ...`), everything else describes itself.
pub fn describe(e: &crate::Error) -> String {
    match e {
        crate::Error::Render(meshguard_manifests::RenderError::Option { field, message }) => {
            format!("invalid {}: {message}", flag_of(field))
        }
        other => other.to_string(),
    }
}

/// A Kubernetes namespace name: a DNS-1123 label.
pub fn parse_namespace(s: &str) -> Result<String, String> {
    meshguard_mesh::identity::validate_dns_label(s)
        .map(|()| s.to_owned())
        .map_err(|_| {
            format!(
                "`{s}` is not a valid namespace name: use at most 63 lowercase letters, digits \
                 and '-', starting and ending with a letter or digit (e.g. `meshguard`, \
                 `shop-staging`)"
            )
        })
}

/// `90s`, `5m`, `1h`, `1h30m` or plain seconds (`300`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("`{s}` is not a duration: use e.g. 90s, 5m, 1h or 1h30m");
    if s.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        number.clear();
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    if !number.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("42"), Ok(Duration::from_secs(42)));
        for bad in ["", "5x", "m", "5m3", "-1s"] {
            assert!(parse_duration(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn namespaces() {
        assert!(parse_namespace("meshguard").is_ok());
        assert!(parse_namespace("shop-staging").is_ok());
        for bad in ["", "Meshguard", "-a", "a-", "a_b", &"a".repeat(64)] {
            assert!(parse_namespace(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn defaults_are_render_defaults() {
        let cli = Cli::parse_from(["meshctl", "render"]);
        let Command::Render(args) = cli.command else {
            unreachable!("parsed `render`")
        };
        assert_eq!(
            args.render.to_options(&cli.global.namespace_or(None)),
            RenderOptions::new(DEFAULT_NAMESPACE)
        );
        assert_eq!(args.render.overrides(), Overrides::default());
    }

    #[test]
    fn flags_reach_the_options() {
        let cli = Cli::parse_from([
            "meshctl",
            "install",
            "-n",
            "shop",
            "--user-image",
            "u:1",
            "--authz-module",
            "oci://r.example/a:1",
            "--mode",
            "dry-run",
            "--log-level",
            "debug",
            "--profile",
            "gke",
            "--no-gpu",
            "--module-fetch-cidr",
            "10.0.0.0/8",
            "--module-fetch-cidr",
            "192.168.0.0/16",
            "--dry-run=server",
        ]);
        let Command::Install(args) = cli.command else {
            unreachable!("parsed `install`")
        };
        assert_eq!(args.dry_run, DryRun::Server);
        let o = args
            .render
            .to_options(&cli.global.namespace_or(Some("from-file")));
        assert_eq!(o.namespace, "shop");
        let overrides = args.render.overrides();
        assert_eq!(
            overrides.images,
            [(
                "--user-image".to_owned(),
                "user-service".to_owned(),
                "u:1".to_owned()
            )]
        );
        assert!(overrides.no_gpu);
        assert_eq!(o.authz_module_url, "oci://r.example/a:1");
        assert_eq!(o.authz_mode, Mode::DryRun);
        assert_eq!(o.log_level, LogLevel::Debug);
        assert_eq!(o.profile, Profile::Gke);
        assert_eq!(o.module_fetch_cidrs, ["10.0.0.0/8", "192.168.0.0/16"]);
    }

    #[test]
    fn dry_run_alone_means_server() {
        let cli = Cli::parse_from(["meshctl", "uninstall", "--dry-run"]);
        let Command::Uninstall(args) = cli.command else {
            unreachable!("parsed `uninstall`")
        };
        assert_eq!(args.dry_run, DryRun::Server);
        assert!(Cli::try_parse_from(["meshctl", "uninstall", "--dry-run=client"]).is_err());
    }

    #[test]
    fn flags_of_fields() {
        assert_eq!(flag_of("user_image"), "--user-image");
        assert_eq!(flag_of("authz_module_url"), "--authz-module");
        assert_eq!(flag_of("module_fetch_cidrs"), "--module-fetch-cidr");
        assert_eq!(flag_of("namespace"), "--namespace");
    }

    /// Every option `RenderOptions::validate` can name maps to a flag clap really defines.
    #[test]
    fn every_option_names_a_flag_clap_defines() {
        let cli = Cli::command();
        let mut flags: Vec<String> = cli
            .get_arguments()
            .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
            .collect();
        for sub in cli.get_subcommands() {
            flags.extend(
                sub.get_arguments()
                    .filter_map(|a| a.get_long().map(|l| format!("--{l}"))),
            );
        }
        for field in [
            "namespace",
            "monitoring_namespace",
            "authz_module_url",
            "metrics_module_url",
            "authz_module_sha256",
            "metrics_module_sha256",
            "module_pull_secret",
            "module_fetch_cidrs",
            "prometheus_address",
            "health_path",
            "authz_mode",
            "log_level",
            "profile",
            "pod_monitor",
            "pod_security",
            "fast_scale_down",
        ] {
            let flag = flag_of(field);
            assert!(
                flags.contains(&flag),
                "{field} -> {flag}, not a flag of meshctl"
            );
        }
        // The list above is every field: a new one fails to compile here until it is added.
        let meshguard_manifests::RenderOptions {
            namespace: _,
            monitoring_namespace: _,
            authz_module_url: _,
            metrics_module_url: _,
            authz_module_sha256: _,
            metrics_module_sha256: _,
            module_pull_secret: _,
            module_fetch_cidrs: _,
            prometheus_address: _,
            health_path: _,
            authz_mode: _,
            log_level: _,
            profile: _,
            pod_monitor: _,
            pod_security: _,
            fast_scale_down: _,
        } = meshguard_manifests::RenderOptions::new("n");
    }

    #[test]
    fn render_errors_name_the_flag() {
        let e = crate::Error::Render(meshguard_manifests::RenderError::Option {
            field: "health_path".to_owned(),
            message: "must be an absolute path without whitespace".to_owned(),
        });
        assert_eq!(
            describe(&e),
            "invalid --health-path: must be an absolute path without whitespace"
        );
        // The library's own message names the option, not a flag.
        assert_eq!(
            e.to_string(),
            "cannot render the objects: invalid option `health_path`: must be an absolute path \
             without whitespace"
        );
    }
}
