//! One load pulse on a running system, with a timeline of what the autoscalers and the
//! scheduler do: the load goes on, stays for a while, goes off, and the timeline runs until
//! every service is back at its resting replica count.
//!
//! The load is either real requests at a fixed rate to a service's ClusterIP (real nodes:
//! [`PulseLoad::Requests`], with what was answered and what failed each second), caller pods in
//! the mesh, each sending requests through its own sidecar under a service account (Istio:
//! [`PulseLoad::Callers`]), or a simulated CPU figure on the target (kwok's nodes:
//! [`PulseLoad::SimulatedCpu`]). Either way the timeline shows the target's CPU as
//! metrics.k8s.io reports it, which is what its HPA reads, and, given Prometheus, the request
//! rate into the target as the metrics filter counts it, which is what KEDA's `requestRate`
//! trigger reads.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use tokio::time::Instant;

use meshguard_mesh::metrics::request_rate_query;

use crate::callers::{self, Caller};
use crate::error::{Error, Result};
use crate::load::{self, LOAD_ANNOTATION};
use crate::queries;
use crate::traffic::{Stats, Traffic};

/// Consecutive failed reads of the cluster after which a pulse gives up.
const MAX_READ_FAILURES: u32 = 10;

/// What a pulse does.
#[derive(Debug, Clone)]
pub struct PulseOptions {
    /// Namespace of the services.
    pub namespace: String,
    /// The Deployment the load goes to.
    pub target: String,
    /// The Deployments shown in the timeline, in column order.
    pub services: Vec<String>,
    /// The load.
    pub load: PulseLoad,
    /// How long the load stays on.
    pub duration: Duration,
    /// How long to wait, after the load ends, for every service to be back at rest.
    pub settle_timeout: Duration,
    /// A line is printed on every change, and at least this often.
    pub heartbeat: Duration,
    /// Prometheus' URL (`http://127.0.0.1:PORT`): the timeline then shows the request rate into
    /// the target that the filters' `meshguard_requests_total` gives.
    pub prometheus: Option<String>,
}

/// What a pulse puts on the system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PulseLoad {
    /// Simulated CPU on the target, in millicores (kwok's nodes).
    SimulatedCpu(u64),
    /// Real requests: `rate` a second to `service`'s ClusterIP on `port`, the `n`th for
    /// `path` with `{n}` replaced by `n % 1000`.
    Requests {
        /// Requests per second.
        rate: u32,
        /// The Service they go to.
        service: String,
        /// Its port.
        port: u16,
        /// The path, `{n}` replaced.
        path: String,
    },
    /// `callers` pods running `call` (tests/services) from `image` under service account
    /// `account`, each sending one GET to `url` every `interval` until the load ends.
    Callers {
        /// The `call` image.
        image: String,
        /// The service account they run as: their identity in the mesh.
        account: String,
        /// What they call.
        url: String,
        /// How many pods.
        callers: u32,
        /// Between one pod's requests.
        interval: Duration,
    },
}

/// The name of caller pod `i` of a pulse.
fn caller_name(i: u32) -> String {
    format!("pulse-caller-{i}")
}

/// One service at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceState {
    /// Ready replicas.
    pub ready: i32,
    /// Desired replicas (the Deployment's `spec.replicas`, which the autoscalers set).
    pub desired: i32,
    /// Running pods by node pool.
    pub pools: BTreeMap<String, usize>,
    /// Pods not scheduled yet.
    pub pending: usize,
}

impl ServiceState {
    fn cell(&self) -> String {
        let mut out = format!("{}/{}", self.ready, self.desired);
        for (pool, n) in &self.pools {
            let _ = write!(out, " {pool}x{n}");
        }
        if self.pending > 0 {
            let _ = write!(out, " pending {}", self.pending);
        }
        out
    }
}

/// When things happened, measured from the start of the load.
#[derive(Debug, Clone, Default)]
pub struct Milestones {
    /// The target's first scale-up.
    pub first_scale_up: Option<Duration>,
    /// Each service's highest desired replica count, and when it was first reached.
    pub peaks: BTreeMap<String, (i32, Duration)>,
    /// When the load ended.
    pub load_end: Option<Duration>,
    /// When every service was back at its resting count after the load ended.
    pub settled: Option<Duration>,
    /// With real requests: what was answered and what failed.
    pub requests: Option<Stats>,
}

/// Reads the services' current state.
pub async fn snapshot(client: &Client, opts: &PulseOptions) -> Result<Vec<ServiceState>> {
    let nodes: Api<Node> = Api::all(client.clone());
    let pool_of: BTreeMap<String, String> = nodes
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::kube("listing nodes", e))?
        .items
        .into_iter()
        .filter_map(|n| {
            let name = n.metadata.name?;
            let pool = n
                .metadata
                .labels
                .and_then(|l| l.get("cloud.google.com/gke-nodepool").cloned())
                .unwrap_or_else(|| name.clone());
            Some((name, pool))
        })
        .collect();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &opts.namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &opts.namespace);
    let mut out = Vec::with_capacity(opts.services.len());
    for service in &opts.services {
        let d = deployments
            .get_opt(service)
            .await
            .map_err(|e| Error::kube(format!("reading Deployment {service}"), e))?;
        let Some(d) = d else {
            out.push(ServiceState {
                ready: 0,
                desired: 0,
                pools: BTreeMap::new(),
                pending: 0,
            });
            continue;
        };
        let selector = d
            .spec
            .as_ref()
            .and_then(|s| s.selector.match_labels.as_ref())
            .map(|l| {
                l.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        let mut state = ServiceState {
            ready: d
                .status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0),
            desired: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            pools: BTreeMap::new(),
            pending: 0,
        };
        let list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| Error::kube(format!("listing the pods of {service}"), e))?;
        for pod in list.items {
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let phase = pod
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default();
            match pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
                Some(node) if phase == "Running" => {
                    let pool = pool_of.get(&node).cloned().unwrap_or(node);
                    *state.pools.entry(pool).or_default() += 1;
                }
                None => state.pending += 1,
                Some(_) => {}
            }
        }
        out.push(state);
    }
    Ok(out)
}

/// A CPU quantity (`250m`, `1`, `12345678n`) in millicores.
fn millicores(quantity: &str) -> Option<f64> {
    let (number, scale) = match quantity.as_bytes().last()? {
        b'n' => (&quantity[..quantity.len() - 1], 1e-6),
        b'u' => (&quantity[..quantity.len() - 1], 1e-3),
        b'm' => (&quantity[..quantity.len() - 1], 1.0),
        _ => (quantity, 1000.0),
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

/// The CPU the target's pods use, in millicores, as metrics.k8s.io says (what its HPA reads);
/// `None` before metrics-server measured any.
async fn target_cpu(client: &Client, opts: &PulseOptions) -> Option<f64> {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "metrics.k8s.io",
        "v1beta1",
        "PodMetrics",
    ));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &opts.namespace, &resource);
    let list = api.list(&ListParams::default()).await.ok()?;
    let prefix = format!("{}-", opts.target);
    let values: Vec<f64> = list
        .items
        .iter()
        .filter(|m| {
            m.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .flat_map(|m| m.data["containers"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["usage"]["cpu"].as_str().and_then(millicores))
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

async fn current_load(client: &Client, opts: &PulseOptions) -> Result<u64> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), &opts.namespace);
    let d = api
        .get(&opts.target)
        .await
        .map_err(|e| Error::kube(format!("reading Deployment {}", opts.target), e))?;
    Ok(d.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LOAD_ANNOTATION))
        .and_then(|v| load::parse_load(v).ok())
        .unwrap_or(0))
}

/// What the load column says: the simulated cores, or the rate and the last full second's
/// answered and failed requests.
fn load_cell(opts: &PulseOptions, load: u64, traffic: Option<&Traffic>) -> String {
    match (&opts.load, traffic) {
        (PulseLoad::Callers { .. }, _) => format!("{load} callers"),
        (PulseLoad::Requests { .. }, Some(traffic)) => {
            let last = traffic.last_second();
            format!(
                "{:>3}/s {:>3} ok {:>2} failed",
                traffic.rate(),
                last.0,
                last.1
            )
        }
        _ => format!("{:.2} cores", load as f64 / 1000.0),
    }
}

fn line(
    t: Duration,
    load: &str,
    rate: Option<Option<f64>>,
    cpu: Option<f64>,
    states: &[ServiceState],
    widths: &[usize],
) -> String {
    let cpu = cpu.map_or_else(|| "-".to_owned(), |m| format!("{m:.0}m"));
    let mut out = format!("{:>6}  {load:>22}", format!("+{}s", t.as_secs()));
    if let Some(rate) = rate {
        let rate = rate.map_or_else(|| "-".to_owned(), |r| format!("{r:.1}/s"));
        let _ = write!(out, "  {rate:>8}");
    }
    let _ = write!(out, "  {cpu:>6}");
    for (state, w) in states.iter().zip(widths) {
        let _ = write!(out, "  {:<w$}", state.cell(), w = *w);
    }
    out.trim_end().to_owned()
}

/// Runs the pulse and prints the timeline through `print`. The load is switched off at the
/// end, also when the pulse fails.
pub async fn run(
    client: &Client,
    opts: &PulseOptions,
    mut print: impl FnMut(&str),
) -> Result<Milestones> {
    let result = run_inner(client, opts, &mut print).await;
    if result.is_err() {
        match &opts.load {
            PulseLoad::SimulatedCpu(_) => {
                let _ = load::set_load(client, &opts.namespace, &opts.target, 0).await;
            }
            PulseLoad::Callers { callers, .. } => {
                for i in 0..*callers {
                    let _ = callers::delete(client, &opts.namespace, &caller_name(i)).await;
                }
            }
            PulseLoad::Requests { .. } => {}
        }
    }
    result
}

async fn run_inner(
    client: &Client,
    opts: &PulseOptions,
    print: &mut impl FnMut(&str),
) -> Result<Milestones> {
    let rest = snapshot(client, opts).await?;
    let widths: Vec<usize> = opts.services.iter().map(|s| s.len().max(24)).collect();
    let load_title = match &opts.load {
        PulseLoad::Requests { service, .. } => format!("requests ({service})"),
        PulseLoad::Callers { account, .. } => format!("callers ({account})"),
        PulseLoad::SimulatedCpu(_) => format!("load ({})", opts.target),
    };
    let rate_query = opts
        .prometheus
        .as_ref()
        .map(|url| (url, request_rate_query(&opts.namespace, &opts.target)));
    let mut header = format!("{:>6}  {load_title:>22}", "time");
    if rate_query.is_some() {
        let _ = write!(header, "  {:>8}", "requests");
    }
    let _ = write!(header, "  {:>6}", "CPU");
    for (s, w) in opts.services.iter().zip(&widths) {
        let _ = write!(header, "  {s:<w$}", w = *w);
    }
    print(header.trim_end());
    if rate_query.is_some() {
        print(&format!(
            "{:>6}  {:>22}  (requests: the rate into {} over the last minute, from the filters' meshguard_requests_total in Prometheus)",
            "", "", opts.target
        ));
    }
    print(&format!(
        "{:>6}  {:>22}  (CPU: {}'s pods, metrics.k8s.io; each service: ready/desired replicas, then running pods by node pool)",
        "", "", opts.target
    ));
    let traffic = match &opts.load {
        PulseLoad::SimulatedCpu(millis) => {
            load::set_load(client, &opts.namespace, &opts.target, *millis).await?;
            None
        }
        PulseLoad::Callers {
            image,
            account,
            url,
            callers,
            interval,
        } => {
            // The system answers this caller before the load starts.
            let waited = Instant::now();
            let probe = Caller {
                image,
                namespace: &opts.namespace,
                name: "pulse-probe",
                account,
            };
            let answers = probe
                .run(
                    client,
                    &["--until", "200", "--interval", "500", "--count", "120", url],
                    Duration::from_secs(120),
                )
                .await;
            callers::delete(client, &opts.namespace, probe.name).await?;
            let answers = answers?;
            if !answers.last().is_some_and(callers::answered) {
                return Err(Error::Pulse(format!(
                    "{url} does not answer a caller under {account}: {:?}",
                    answers.last()
                )));
            }
            print(&format!(
                "{:>6}  {url} answers a caller under {account} (after {:.1}s)",
                "",
                waited.elapsed().as_secs_f64()
            ));
            let count = (opts.duration.as_millis() / interval.as_millis().max(1)).max(1) + 1;
            let count = count.to_string();
            let interval = interval.as_millis().to_string();
            for i in 0..*callers {
                let name = caller_name(i);
                Caller {
                    image,
                    namespace: &opts.namespace,
                    name: &name,
                    account,
                }
                .start(client, &["--count", &count, "--interval", &interval, url])
                .await?;
            }
            None
        }
        PulseLoad::Requests {
            rate,
            service,
            port,
            path,
        } => {
            let api: Api<Service> = Api::namespaced(client.clone(), &opts.namespace);
            let ip = api
                .get(service)
                .await
                .map_err(|e| Error::kube(format!("reading Service {service}"), e))?
                .spec
                .and_then(|s| s.cluster_ip)
                .ok_or_else(|| Error::Pulse(format!("Service {service} has no ClusterIP")))?;
            // The system answers before the load starts (a Service just made is in kube-proxy's
            // rules within a sync or so).
            let addr = format!("{ip}:{port}");
            let first = path.replace("{n}", "0");
            let waited = Instant::now();
            let mut last = String::new();
            while waited.elapsed() < Duration::from_secs(60) {
                match crate::traffic::get_once(&addr, &first).await {
                    Ok(()) => {
                        last.clear();
                        break;
                    }
                    Err(e) => last = e,
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            if !last.is_empty() {
                return Err(Error::Pulse(format!(
                    "{service} does not answer GET {first}: {last}"
                )));
            }
            print(&format!(
                "{:>6}  {service} answers GET {first} (after {:.1}s)",
                "",
                waited.elapsed().as_secs_f64()
            ));
            let path = path.clone();
            Some(Traffic::start(&addr, *rate, move |n| {
                path.replace("{n}", &(n % 1000).to_string())
            }))
        }
    };
    let start = Instant::now();
    let mut milestones = Milestones::default();
    let mut last: Option<(u64, Vec<ServiceState>)> = None;
    let mut last_print = start;
    let target_index = opts.services.iter().position(|s| *s == opts.target);
    let mut failures = 0;
    loop {
        let t = start.elapsed();
        if milestones.load_end.is_none() && t >= opts.duration {
            match (&traffic, &opts.load) {
                (Some(traffic), _) => traffic.set_rate(0),
                (None, PulseLoad::Callers { callers, .. }) => {
                    milestones.requests = Some(stop_callers(client, opts, *callers).await?);
                }
                (None, _) => load::set_load(client, &opts.namespace, &opts.target, 0).await?,
            }
            milestones.load_end = Some(t);
            print(&format!("{:>6}  load off", format!("+{}s", t.as_secs())));
        }
        // A failed read (a connection the API server drops under load) is retried on the next
        // tick; only a run of them fails the pulse.
        let read = async {
            let load = match (&traffic, &opts.load) {
                (Some(traffic), _) => u64::from(traffic.rate()),
                (None, PulseLoad::Callers { callers, .. }) => {
                    if milestones.load_end.is_some() {
                        0
                    } else {
                        u64::from(*callers)
                    }
                }
                (None, _) => current_load(client, opts).await?,
            };
            Ok::<_, Error>((load, snapshot(client, opts).await?))
        };
        let (load, states) = match read.await {
            Ok(read) => {
                failures = 0;
                read
            }
            Err(e) => {
                failures += 1;
                if failures >= MAX_READ_FAILURES {
                    return Err(e);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        for (service, state) in opts.services.iter().zip(&states) {
            let peak = milestones
                .peaks
                .entry(service.clone())
                .or_insert((state.desired, t));
            if state.desired > peak.0 {
                *peak = (state.desired, t);
            }
        }
        if let Some(i) = target_index {
            if milestones.first_scale_up.is_none() && states[i].desired > rest[i].desired {
                milestones.first_scale_up = Some(t);
            }
        }
        let changed = last.as_ref() != Some(&(load, states.clone()));
        if changed || last_print.elapsed() >= opts.heartbeat {
            let cpu = target_cpu(client, opts).await;
            let rate = match &rate_query {
                Some((url, promql)) => Some(prometheus_value(url, promql).await),
                None => None,
            };
            print(&line(
                t,
                &load_cell(opts, load, traffic.as_ref()),
                rate,
                cpu,
                &states,
                &widths,
            ));
            last_print = Instant::now();
        }
        let at_rest = states.iter().zip(&rest).all(|(now, then)| {
            now.desired == then.desired && now.ready == now.desired && now.pending == 0
        });
        if let Some(end) = milestones.load_end {
            if at_rest && t > end {
                milestones.settled = Some(t);
                if let Some(traffic) = traffic {
                    milestones.requests = Some(traffic.stop().await);
                }
                return Ok(milestones);
            }
            if t > end + opts.settle_timeout {
                return Err(Error::Pulse(format!(
                    "the services were not back at rest {:?} after the load ended",
                    opts.settle_timeout
                )));
            }
        }
        last = Some((load, states));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Reads every caller's answers, then deletes the pods: what was answered and what was not.
async fn stop_callers(client: &Client, opts: &PulseOptions, callers: u32) -> Result<Stats> {
    let mut stats = Stats::default();
    for i in 0..callers {
        let name = caller_name(i);
        let answers = callers::answers_so_far(client, &opts.namespace, &name).await;
        callers::delete(client, &opts.namespace, &name).await?;
        for answer in answers? {
            if callers::answered(&answer) {
                stats.ok += 1;
            } else {
                stats.failed += 1;
                if stats.errors.len() < crate::traffic::KEPT_ERRORS {
                    stats.errors.push((None, format!("{name}: {answer}")));
                }
            }
        }
    }
    Ok(stats)
}

/// The value of an instant PromQL query with one series, from Prometheus at `url`; `None` when
/// it cannot be read or has no series yet.
async fn prometheus_value(url: &str, promql: &str) -> Option<f64> {
    let json = queries::instant(url, promql).await.ok()?;
    json["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities_read_as_millicores() {
        let close = |q: &str, want: f64| millicores(q).is_some_and(|m| (m - want).abs() < 1e-9);
        assert!(close("250m", 250.0));
        assert!(close("2", 2000.0));
        assert!(close("12345678n", 12.345678));
        assert!(close("1500u", 1.5));
        assert_eq!(millicores("x"), None);
    }
}
