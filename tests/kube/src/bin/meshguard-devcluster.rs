//! `meshguard-devcluster`: runs the local cluster for manual use (`meshctl install` against
//! it, kubectl, watching the autoscalers), sets a service's simulated load, and drives a load
//! pulse with a timeline.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use k8s_openapi::api::core::v1::ServiceAccount;
use meshguard_testcluster::callers::{self, Caller};
use meshguard_testcluster::forward::Forwarder;
use meshguard_testcluster::istio::IstioArtifacts;
use meshguard_testcluster::queries;

use meshguard_testcluster::pulse::{self, PulseLoad, PulseOptions};
use meshguard_testcluster::registry::Registry;
use meshguard_testcluster::{
    load, CrdSet, LocalCluster, LocalClusterOptions, TestCluster, TestClusterOptions, Versions,
};
use tokio::signal::unix::{signal, SignalKind};

const USAGE: &str = "\
usage: meshguard-devcluster [up] [OPTIONS]
       meshguard-devcluster load --kubeconfig PATH [--namespace NS] DEPLOYMENT CPU
       meshguard-devcluster pulse --kubeconfig PATH [--namespace NS] [--cpu CPU | --rate N |
                                  --callers N --image IMAGE] [--for SECONDS]
                                  [--settle-timeout SECONDS] [--prometheus URL]
       meshguard-devcluster call --kubeconfig PATH [--namespace NS] --image IMAGE
                                 --account SA [--expect STATUS|refused] URL
                                 [-- CALL-OPTIONS]
       meshguard-devcluster metrics --prometheus URL [--namespace NS]

up (the default) starts the local cluster: kube-apiserver and etcd, kube-scheduler,
kube-controller-manager, kwok (simulated nodes: a CPU pool and a GPU pool),
metrics-server, Prometheus and KEDA, all on loopback (binaries from
tests/kube/build-cluster-bins.sh). Once ready it prints KUBECONFIG=<path> and
PROMETHEUS_URL=<url> on stdout and runs until stdin closes or SIGINT/SIGTERM
arrives; then it stops every process.

  --cpu-nodes N      nodes in the CPU pool (default 2)
  --gpu-nodes N      nodes in the GPU pool, one nvidia.com/gpu each (default 1;
                     0 for a cluster without GPUs)
  --real-cpu-nodes N real nodes in the CPU pool (default 0): a kubelet and a
                     containerd each, whose pods run (root; Debian's containerd,
                     runc and nftables; the pod sandbox binary from
                     scripts/test.sh's build of the reference services)
  --real-gpu-nodes N real nodes in the GPU pool (default 0), one nvidia.com/gpu
                     each as an extended resource
  --crds LIST        CRD sets to install, comma-separated, from istio, keda,
                     cert-manager, prometheus-operator, all, none (default: all)
  --api-only         only kube-apiserver and etcd: objects are stored, nothing
                     is scheduled or reconciled
  --simulate LIST    with --api-only: stand-ins to register, comma-separated:
                     gpu-node (a GPU node and a CPU node as Node objects),
                     metrics-api (the metrics.k8s.io APIService, not served)
  --kubeconfig PATH  also write the admin kubeconfig to PATH (when ready)
  --info PATH        also write the KUBECONFIG= and PROMETHEUS_URL= lines (and
                     REGISTRY=) to PATH (when ready)
  --registry         also run an image registry on loopback (the distribution
                     registry, MESHGUARD_REGISTRY from tests/istio/build.sh)
                     that the real nodes pull from over plain HTTP; its
                     address is printed as REGISTRY=
  --istio            also install Istio (istiod, with its sidecar injector and
                     CA) with istioctl, from MESHGUARD_ISTIO_BIN_DIR
                     (tests/istio/build.sh) and MESHGUARD_ENVOY
                     (tests/envoy/install.sh); implies --registry, which is
                     then published on the first real node's address so that
                     the sidecars fetch Wasm modules from it, and needs a real
                     node. Prometheus follows the PodMonitors as the
                     Prometheus Operator would, every 5 s
  --ignore-stdin     do not stop when stdin closes (for running in the
                     background with stdin on /dev/null)

load sets the simulated CPU a Deployment uses in all, in cores (2, 0.5) or
millicores (1500m); the cluster divides it over the Deployment's running pods,
so scaling out lowers each pod's usage. 0 ends the load. It is the annotation
meshguard.dev/simulated-cpu on the Deployment (kubectl annotate works too).

pulse puts load on the system for --for seconds (default 90), then takes it
off, and prints a timeline (time, load, order-service's CPU as metrics.k8s.io
reports it, each service's replicas and node pools) until every service is back
where it started, at most --settle-timeout seconds (default 600) after the load
ends. The load is --rate real requests a second through user-service's
ClusterIP (GET /users/<n>/orders: user -> order -> payment; real nodes), with
what was answered and what failed each second; or --callers pods in the mesh
running `call` from --image under --account (default user-service), each
sending one request every --interval milliseconds (default 100) to --url
(default order-service's /orders: order -> payment) through its own sidecar
(Istio); or else --cpu simulated cores on order-service (default 2; kwok's
nodes). With --prometheus URL the timeline also shows the request rate into
order-service from the filters' metrics, which KEDA's requestRate trigger
reads.

call runs `call` (tests/services) once in a pod of the namespace under service
account --account (created if missing, and then removed), prints its answers
(one JSON object per request) and removes the pod. Options after -- go to
call (--count, --interval, --grpc, ...). With --expect STATUS, exits 1 unless
every answer has that HTTP status; with --expect refused, unless no request got
an answer at all (the connection was refused or reset).

metrics prints the filters' series of the namespace from Prometheus, with their
labels, each summed over the pods that served it in the last 15 minutes (so
pods the autoscalers removed count too; histogram buckets left out).

  -h, --help         show this help

environment: MESHGUARD_<COMPONENT> (binaries, as build-cluster-bins.sh prints
them), MESHGUARD_CACHE_DIR, MESHGUARD_TESTCLUSTER_KEEP (keep the cluster
directory with every component's log).";

struct UpArgs {
    crds: Vec<CrdSet>,
    api_only: bool,
    simulate_nodes: bool,
    simulate_metrics_api: bool,
    cpu_nodes: u32,
    gpu_nodes: u32,
    real_cpu_nodes: u32,
    real_gpu_nodes: u32,
    registry: bool,
    istio: bool,
    kubeconfig: Option<PathBuf>,
    info: Option<PathBuf>,
    ignore_stdin: bool,
}

struct ClientArgs {
    kubeconfig: PathBuf,
    namespace: String,
}

enum Command {
    Up(UpArgs),
    Load {
        target: ClientArgs,
        deployment: String,
        millis: u64,
    },
    Pulse {
        target: ClientArgs,
        load: PulseLoad,
        duration: Duration,
        settle_timeout: Duration,
        prometheus: Option<String>,
    },
    Call {
        target: ClientArgs,
        image: String,
        account: String,
        expect: Option<Expect>,
        args: Vec<String>,
    },
    Metrics {
        prometheus: String,
        namespace: String,
    },
}

/// What `call --expect` wants of every answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Status(u16),
    Refused,
}

impl Expect {
    fn parse(text: &str) -> Result<Self, String> {
        if text == "refused" {
            return Ok(Expect::Refused);
        }
        text.parse()
            .ok()
            .filter(|s| (100..=599).contains(s))
            .map(Expect::Status)
            .ok_or(format!(
                "--expect: {text:?} is neither an HTTP status nor `refused`"
            ))
    }

    fn holds(self, answer: &serde_json::Value) -> bool {
        match self {
            Expect::Status(status) => answer["status"] == status,
            Expect::Refused => answer.get("status").is_none() && answer.get("error").is_some(),
        }
    }
}

fn value(it: &mut impl Iterator<Item = String>, flag: &str) -> Result<String, String> {
    it.next().ok_or(format!("{flag} needs a value"))
}

fn number(text: &str, flag: &str) -> Result<u32, String> {
    text.parse()
        .map_err(|_| format!("{flag}: `{text}` is not a whole number"))
}

fn parse_args() -> Result<Option<Command>, String> {
    let mut it = std::env::args().skip(1).peekable();
    let command = match it.peek().map(String::as_str) {
        Some("load" | "pulse" | "up" | "call" | "metrics") => it.next().unwrap_or_default(),
        _ => "up".to_owned(),
    };
    let mut up = UpArgs {
        crds: CrdSet::ALL.to_vec(),
        api_only: false,
        simulate_nodes: false,
        simulate_metrics_api: false,
        cpu_nodes: 2,
        gpu_nodes: 1,
        real_cpu_nodes: 0,
        real_gpu_nodes: 0,
        registry: false,
        istio: false,
        kubeconfig: None,
        info: None,
        ignore_stdin: false,
    };
    let mut namespace = "meshguard".to_owned();
    let mut positional = Vec::new();
    let mut cpu = "2".to_owned();
    let mut rate: Option<u32> = None;
    let mut duration = 90u32;
    let mut settle = 600u32;
    let mut callers: Option<u32> = None;
    let mut image: Option<String> = None;
    let mut account: Option<String> = None;
    let mut url: Option<String> = None;
    let mut interval = 100u32;
    let mut prometheus: Option<String> = None;
    let mut expect: Option<Expect> = None;
    let mut passed = Vec::new();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--" => passed.extend(it.by_ref()),
            "--istio" => up.istio = true,
            "--callers" => callers = Some(number(&value(&mut it, &arg)?, &arg)?),
            "--image" => image = Some(value(&mut it, &arg)?),
            "--account" => account = Some(value(&mut it, &arg)?),
            "--url" => url = Some(value(&mut it, &arg)?),
            "--interval" => interval = number(&value(&mut it, &arg)?, &arg)?,
            "--prometheus" => prometheus = Some(value(&mut it, &arg)?),
            "--expect" => expect = Some(Expect::parse(&value(&mut it, &arg)?)?),
            "--ignore-stdin" => up.ignore_stdin = true,
            "--api-only" => up.api_only = true,
            "--kubeconfig" => up.kubeconfig = Some(PathBuf::from(value(&mut it, &arg)?)),
            "--info" => up.info = Some(PathBuf::from(value(&mut it, &arg)?)),
            "--namespace" | "-n" => namespace = value(&mut it, &arg)?,
            "--cpu-nodes" => up.cpu_nodes = number(&value(&mut it, &arg)?, &arg)?,
            "--gpu-nodes" => up.gpu_nodes = number(&value(&mut it, &arg)?, &arg)?,
            "--real-cpu-nodes" => up.real_cpu_nodes = number(&value(&mut it, &arg)?, &arg)?,
            "--real-gpu-nodes" => up.real_gpu_nodes = number(&value(&mut it, &arg)?, &arg)?,
            "--cpu" => cpu = value(&mut it, &arg)?,
            "--rate" => rate = Some(number(&value(&mut it, &arg)?, &arg)?),
            "--registry" => up.registry = true,
            "--for" => duration = number(&value(&mut it, &arg)?, &arg)?,
            "--settle-timeout" => settle = number(&value(&mut it, &arg)?, &arg)?,
            "--simulate" => {
                for name in value(&mut it, &arg)?.split(',') {
                    match name.trim() {
                        "gpu-node" => up.simulate_nodes = true,
                        "metrics-api" => up.simulate_metrics_api = true,
                        "" | "none" => {}
                        other => return Err(format!("unknown --simulate item {other:?}")),
                    }
                }
            }
            "--crds" => up.crds = parse_crds(&value(&mut it, &arg)?)?,
            other if !other.starts_with('-') => positional.push(arg),
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    let target = |kubeconfig: Option<PathBuf>| -> Result<ClientArgs, String> {
        Ok(ClientArgs {
            kubeconfig: kubeconfig.ok_or(format!("{command} needs --kubeconfig"))?,
            namespace: namespace.clone(),
        })
    };
    match command.as_str() {
        "load" => {
            let [deployment, cpu] = <[String; 2]>::try_from(positional)
                .map_err(|_| "load needs a DEPLOYMENT and a CPU value".to_owned())?;
            Ok(Some(Command::Load {
                target: target(up.kubeconfig)?,
                deployment,
                millis: load::parse_load(&cpu)?,
            }))
        }
        "pulse" => {
            if !positional.is_empty() {
                return Err(format!("unexpected arguments {positional:?}"));
            }
            let load = match (rate, callers) {
                (Some(_), Some(_)) => {
                    return Err("--rate and --callers are two kinds of load: pick one".to_owned())
                }
                (Some(rate), None) => PulseLoad::Requests {
                    rate,
                    service: "user-service".to_owned(),
                    port: 5000,
                    path: "/users/{n}/orders".to_owned(),
                },
                (None, Some(callers)) => PulseLoad::Callers {
                    image: image.ok_or("--callers needs the call image (--image)")?,
                    account: account.unwrap_or_else(|| "user-service".to_owned()),
                    url: url.unwrap_or_else(|| {
                        format!("http://order-service.{namespace}:5000/orders?user_id=7")
                    }),
                    callers,
                    interval: Duration::from_millis(interval.max(1).into()),
                },
                (None, None) => PulseLoad::SimulatedCpu(load::parse_load(&cpu)?),
            };
            Ok(Some(Command::Pulse {
                target: target(up.kubeconfig)?,
                load,
                duration: Duration::from_secs(duration.into()),
                settle_timeout: Duration::from_secs(settle.into()),
                prometheus,
            }))
        }
        "call" => {
            let [url] = <[String; 1]>::try_from(positional).map_err(|_| {
                "call needs one URL (options for call itself go after --)".to_owned()
            })?;
            passed.push(url);
            Ok(Some(Command::Call {
                target: target(up.kubeconfig)?,
                image: image.ok_or("call needs the call image (--image)")?,
                account: account.ok_or("call needs a service account (--account)")?,
                expect,
                args: passed,
            }))
        }
        "metrics" => {
            if !positional.is_empty() {
                return Err(format!("unexpected arguments {positional:?}"));
            }
            Ok(Some(Command::Metrics {
                prometheus: prometheus.ok_or("metrics needs Prometheus' URL (--prometheus)")?,
                namespace,
            }))
        }
        _ => {
            if !positional.is_empty() {
                return Err(format!("unexpected arguments {positional:?}"));
            }
            if !up.api_only && (up.simulate_nodes || up.simulate_metrics_api) {
                return Err(
                    "--simulate goes with --api-only: the full cluster has real nodes and metrics"
                        .to_owned(),
                );
            }
            if up.istio {
                if up.api_only || up.real_cpu_nodes + up.real_gpu_nodes == 0 {
                    return Err(
                        "--istio needs a real node (--real-cpu-nodes or --real-gpu-nodes): istiod and the sidecars run there"
                            .to_owned(),
                    );
                }
                up.registry = true;
            }
            Ok(Some(Command::Up(up)))
        }
    }
}

fn parse_crds(list: &str) -> Result<Vec<CrdSet>, String> {
    let mut sets = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match name {
            "all" => sets.extend(CrdSet::ALL),
            "none" => {}
            _ => sets.push(
                CrdSet::ALL
                    .into_iter()
                    .find(|s| s.name() == name)
                    .ok_or_else(|| format!("unknown CRD set {name:?}"))?,
            ),
        }
    }
    sets.dedup();
    Ok(sets)
}

#[tokio::main]
async fn main() -> ExitCode {
    let command = match parse_args() {
        Ok(Some(command)) => command,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("meshguard-devcluster: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match command {
        Command::Up(args) => up(args).await,
        Command::Load {
            target,
            deployment,
            millis,
        } => set_load(&target, &deployment, millis).await,
        Command::Pulse {
            target,
            load,
            duration,
            settle_timeout,
            prometheus,
        } => run_pulse(&target, load, duration, settle_timeout, prometheus).await,
        Command::Call {
            target,
            image,
            account,
            expect,
            args,
        } => run_call(&target, &image, &account, expect, &args).await,
        Command::Metrics {
            prometheus,
            namespace,
        } => print_metrics(&prometheus, &namespace).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshguard-devcluster: {e}");
            ExitCode::FAILURE
        }
    }
}

type AnyResult = Result<(), Box<dyn std::error::Error>>;

async fn client(target: &ClientArgs) -> Result<kube::Client, Box<dyn std::error::Error>> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kubeconfig = kube::config::Kubeconfig::read_from(&target.kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

async fn set_load(target: &ClientArgs, deployment: &str, millis: u64) -> AnyResult {
    let client = client(target).await?;
    load::set_load(&client, &target.namespace, deployment, millis).await?;
    eprintln!(
        "meshguard-devcluster: {}/{deployment} now uses {:.2} cores in all, spread over its running pods",
        target.namespace,
        millis as f64 / 1000.0
    );
    Ok(())
}

async fn run_pulse(
    target: &ClientArgs,
    load: PulseLoad,
    duration: Duration,
    settle_timeout: Duration,
    prometheus: Option<String>,
) -> AnyResult {
    let client = client(target).await?;
    let opts = PulseOptions {
        namespace: target.namespace.clone(),
        target: "order-service".to_owned(),
        services: ["order-service", "user-service", "payment-service"]
            .map(str::to_owned)
            .to_vec(),
        heartbeat: Duration::from_secs(match load {
            PulseLoad::Requests { .. } | PulseLoad::Callers { .. } => 5,
            PulseLoad::SimulatedCpu(_) => 15,
        }),
        load,
        duration,
        settle_timeout,
        prometheus,
    };
    let m = pulse::run(&client, &opts, |line| println!("{line}")).await?;
    let secs = |d: Option<Duration>| d.map_or("never".to_owned(), |d| format!("+{}s", d.as_secs()));
    println!();
    println!(
        "load start to order-service's first scale-up: {}",
        secs(m.first_scale_up)
    );
    for (service, (peak, at)) in &m.peaks {
        println!(
            "{service}: at most {peak} replicas, first at +{}s",
            at.as_secs()
        );
    }
    println!(
        "load end: {}; every service back at rest: {}",
        secs(m.load_end),
        secs(m.settled)
    );
    if let Some(stats) = &m.requests {
        println!(
            "requests: {} answered, {} failed{}",
            stats.ok,
            stats.failed,
            stats
                .errors
                .first()
                .map(|(second, e)| match second {
                    Some(s) => format!(" (first at +{s}s: {e})"),
                    None => format!(" (first: {e})"),
                })
                .unwrap_or_default()
        );
        if stats.failed > 0 {
            return Err(format!("{} requests failed", stats.failed).into());
        }
    }
    Ok(())
}

/// How long `call` may take in its pod, sidecar start and image pull included.
const CALL_WITHIN: Duration = Duration::from_secs(180);

async fn run_call(
    target: &ClientArgs,
    image: &str,
    account: &str,
    expect: Option<Expect>,
    args: &[String],
) -> AnyResult {
    let client = client(target).await?;
    let ns = target.namespace.as_str();
    let created = callers::ensure_service_account(&client, ns, account).await?;
    if created {
        eprintln!("meshguard-devcluster: created ServiceAccount {ns}/{account} for this call");
    }
    let name = format!("call-{account}-{}", std::process::id());
    let caller = Caller {
        image,
        namespace: ns,
        name: &name,
        account,
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let answers = caller.run(&client, &args, CALL_WITHIN).await;
    let removed = callers::delete(&client, ns, &name).await;
    if created {
        let accounts: kube::Api<ServiceAccount> = kube::Api::namespaced(client.clone(), ns);
        accounts.delete(account, &Default::default()).await?;
    }
    let answers = answers?;
    removed?;
    for answer in &answers {
        println!("{answer}");
    }
    if answers.is_empty() {
        return Err(format!("{name} printed no answer").into());
    }
    if let Some(expect) = expect {
        if let Some(other) = answers.iter().find(|a| !expect.holds(a)) {
            return Err(format!("expected {expect:?} of every answer, got {other}").into());
        }
    }
    Ok(())
}

/// How far back `metrics` looks: pods the autoscalers removed since count too.
const METRICS_WINDOW: &str = "15m";

async fn print_metrics(prometheus: &str, namespace: &str) -> AnyResult {
    use meshguard_mesh::metrics::{
        ALLOWED_TOTAL, DENIALS_TOTAL, REQUESTS_TOTAL, REQUEST_DURATION_MS,
    };
    println!(
        "(each series summed over the pods that served it in the last {METRICS_WINDOW}, their last values; histogram buckets left out)"
    );
    let names = [
        REQUESTS_TOTAL.to_owned(),
        format!("{REQUEST_DURATION_MS}_count"),
        format!("{REQUEST_DURATION_MS}_sum"),
        ALLOWED_TOTAL.to_owned(),
        DENIALS_TOTAL.to_owned(),
    ];
    let mut any = false;
    for name in names {
        // A pod's counter at its last scrape, summed over pods: the labels the filters set stay.
        let promql = format!(
            "sum without (instance, pod, job, container, endpoint, namespace) (max_over_time({name}{{namespace=\"{namespace}\"}}[{METRICS_WINDOW}]))"
        );
        let answer = queries::instant(prometheus, &promql).await?;
        let mut lines: Vec<String> = answer["data"]["result"]
            .as_array()
            .ok_or_else(|| format!("Prometheus answered {answer}"))?
            .iter()
            .map(|series| {
                let labels: Vec<String> = series["metric"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| format!("{k}=\"{}\"", v.as_str().unwrap_or_default()))
                    .collect();
                let value = series["value"][1].as_str().unwrap_or_default();
                let value = value
                    .parse::<f64>()
                    .map_or(value.to_owned(), |v| format!("{v:.0}"));
                format!("{name}{{{}}} {value}", labels.join(","))
            })
            .collect();
        lines.sort();
        any |= !lines.is_empty();
        for line in lines {
            println!("{line}");
        }
    }
    if !any {
        return Err(
            format!("Prometheus holds no meshguard_* series of namespace {namespace}").into(),
        );
    }
    Ok(())
}

/// Istio on the local cluster: the registry published on the first real node's address (the
/// sidecars' agents fetch Wasm modules from it, and the nodes pull images from it), Istio's
/// images assembled and pushed there, istiod installed by istioctl.
async fn install_istio(
    cluster: &LocalCluster,
    registry: &Registry,
    log: &Path,
) -> Result<Forwarder, Box<dyn std::error::Error>> {
    let artifacts = IstioArtifacts::from_env()?;
    let published = cluster.publish_registry(registry.addr())?;
    let address = published.address().to_string();
    eprintln!(
        "meshguard-devcluster: istioctl install (Istio's pilot and proxyv2 images pushed to {address}, istiod on a real node; log {})",
        log.display()
    );
    artifacts.install_on(cluster, &address, log).await?;
    Ok(published)
}

async fn up(args: UpArgs) -> AnyResult {
    // Register the handlers first: a signal during startup stops cleanly too.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let (stdin_closed_tx, mut stdin_closed) = tokio::sync::mpsc::channel::<()>(1);
    if !args.ignore_stdin {
        // A plain thread: it never blocks the exit, unlike spawn_blocking.
        std::thread::Builder::new()
            .name("stdin-watch".to_owned())
            .spawn(move || {
                let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
                let _ = stdin_closed_tx.blocking_send(());
            })?;
    }
    let versions = Versions::pinned()?;
    let started = std::time::Instant::now();
    enum Running {
        Full(Box<LocalCluster>),
        ApiOnly(Box<TestCluster>),
    }
    let running = if args.api_only {
        eprintln!(
            "meshguard-devcluster: starting kube-apiserver {} and etcd {} (objects are stored, not run)",
            versions.kubernetes, versions.etcd
        );
        let cluster = tokio::select! {
            c = TestCluster::start(TestClusterOptions::default()) => c?,
            _ = sigint.recv() => return Ok(()),
            _ = sigterm.recv() => return Ok(()),
        };
        if !args.crds.is_empty() {
            cluster.install_crds(&args.crds).await?;
        }
        if args.simulate_nodes {
            cluster.simulate_nodes().await?;
        }
        if args.simulate_metrics_api {
            cluster.simulate_metrics_api().await?;
        }
        Running::ApiOnly(Box::new(cluster))
    } else {
        eprintln!(
            "meshguard-devcluster: starting Kubernetes {} (apiserver, scheduler, controller manager), etcd {}, kwok {} ({} CPU node(s), {} GPU node(s)), {} real CPU node(s) and {} real GPU node(s), metrics-server {}, Prometheus {}, KEDA {}",
            versions.kubernetes,
            versions.etcd,
            versions.kwok,
            args.cpu_nodes,
            args.gpu_nodes,
            args.real_cpu_nodes,
            args.real_gpu_nodes,
            versions.metrics_server,
            versions.prometheus_release,
            versions.keda
        );
        let opts = LocalClusterOptions {
            cpu_nodes: args.cpu_nodes,
            gpu_nodes: args.gpu_nodes,
            real_cpu_nodes: args.real_cpu_nodes,
            real_gpu_nodes: args.real_gpu_nodes,
            crds: args.crds.clone(),
            ..LocalClusterOptions::default()
        };
        let cluster = tokio::select! {
            c = LocalCluster::start(opts) => c?,
            _ = sigint.recv() => return Ok(()),
            _ = sigterm.recv() => return Ok(()),
        };
        Running::Full(Box::new(cluster))
    };
    let (own_kubeconfig, dir, prometheus) = match &running {
        Running::Full(c) => (
            c.kubeconfig_path()?.to_path_buf(),
            c.dir().to_path_buf(),
            Some(c.prometheus_url().to_owned()),
        ),
        Running::ApiOnly(c) => (
            c.kubeconfig_path().to_path_buf(),
            c.dir().to_path_buf(),
            None,
        ),
    };
    if let Some(path) = &args.kubeconfig {
        // Write next to the target, then rename: watchers never see half a file.
        let tmp = path.with_extension("meshguard-devcluster.tmp");
        std::fs::copy(&own_kubeconfig, &tmp)?;
        std::fs::rename(&tmp, path)?;
    }
    let kubeconfig = args.kubeconfig.clone().unwrap_or(own_kubeconfig);
    let mut info = format!("KUBECONFIG={}\n", kubeconfig.display());
    if let Some(url) = &prometheus {
        info.push_str(&format!("PROMETHEUS_URL={url}\n"));
    }
    // The registry lives as long as the cluster (dropped with it at the end of `up`).
    let registry = match (&running, args.registry) {
        (Running::Full(c), true) => {
            let registry = Registry::start(&dir.join("registry"), None, None)?;
            c.trust_plain_http_registry(registry.addr())?;
            Some(registry)
        }
        (Running::ApiOnly(_), true) => return Err("--registry goes with the full cluster".into()),
        (_, false) => None,
    };
    let published = match (&running, &registry, args.istio) {
        (Running::Full(c), Some(registry), true) => {
            let log = dir.join("istioctl.log");
            let istio = tokio::select! {
                i = install_istio(c, registry, &log) => Some(i),
                _ = sigint.recv() => None,
                _ = sigterm.recv() => None,
            };
            // Returning drops the cluster, which stops it.
            match istio {
                Some(forwarder) => Some(forwarder?),
                None => return Ok(()),
            }
        }
        _ => None,
    };
    let registry_address = published
        .as_ref()
        .map(|f| f.address().to_string())
        .or_else(|| registry.as_ref().map(|r| r.addr().to_owned()));
    if let Some(address) = &registry_address {
        info.push_str(&format!("REGISTRY={address}\n"));
    }
    if let Some(path) = &args.info {
        let tmp = path.with_extension("meshguard-devcluster.tmp");
        std::fs::write(&tmp, &info)?;
        std::fs::rename(&tmp, path)?;
    }
    eprintln!(
        "meshguard-devcluster: ready in {:.1}s (logs in {})\n  export KUBECONFIG={}{}\n  stop with Ctrl-C{}",
        started.elapsed().as_secs_f64(),
        dir.display(),
        kubeconfig.display(),
        prometheus
            .as_ref()
            .map(|u| format!("\n  Prometheus: {u} (pass it to meshctl install --prometheus-address)"))
            .unwrap_or_default()
            + &registry_address
                .as_ref()
                .map(|r| format!("\n  Registry: {r} (meshctl publish --repository {r}/meshguard --plain-http --services)"))
                .unwrap_or_default()
            + if published.is_some() { "\n  Istio: istiod in istio-system; Prometheus follows the PodMonitors" } else { "" },
        if args.ignore_stdin { "" } else { " or by closing stdin" },
    );
    print!("{info}");

    // With Istio, Prometheus follows the PodMonitors as the Prometheus Operator's watch would.
    let mut follow = tokio::time::interval(Duration::from_secs(5));
    let why = loop {
        tokio::select! {
            _ = sigint.recv() => break "SIGINT",
            _ = sigterm.recv() => break "SIGTERM",
            _ = stdin_closed.recv(), if !args.ignore_stdin => break "stdin closed",
            _ = follow.tick(), if published.is_some() => {
                if let Running::Full(c) = &running {
                    match c.refresh_pod_monitors().await {
                        Ok(Some(report)) => eprintln!(
                            "meshguard-devcluster: Prometheus reloaded from the PodMonitors:\n{}",
                            report.trim_end()
                        ),
                        Ok(None) => {}
                        Err(e) => eprintln!("meshguard-devcluster: PodMonitors: {e}"),
                    }
                }
            }
        }
    };
    eprintln!("meshguard-devcluster: {why}; stopping");
    for path in [&args.kubeconfig, &args.info].into_iter().flatten() {
        let _ = std::fs::remove_file(path);
    }
    // Before the nodes go: the forwarder listens on the first node's address.
    if let Some(mut published) = published {
        published.stop();
    }
    let left = match running {
        Running::Full(c) => c.stop_and_list_leftovers()?,
        Running::ApiOnly(c) => {
            c.stop()?;
            Vec::new()
        }
    };
    drop(registry);
    if !left.is_empty() {
        return Err(format!("left behind after stopping: {left:#?}").into());
    }
    eprintln!("meshguard-devcluster: stopped; nothing left running");
    Ok(())
}
