//! Envoy's own cost of the filters: Envoy's CPU time per request, latency at a fixed rate below
//! saturation, and memory, for the inbound sidecar with no filter, Envoy's RBAC filter with the
//! same policy (what an Istio AuthorizationPolicy compiles to), two empty Wasm filters (the floor
//! any Wasm filter pays), the authorization filter alone, the metrics filter alone, and both.
//!
//! Method: one Envoy worker (`--concurrency 1`) pinned to CPU 0, the load generator (fortio, with
//! a client certificate, 16 connections, as fast as it can) and the application pinned to CPU 1,
//! mTLS as in the sidecar. Envoy's CPU time is the sum over its threads of
//! `/proc/<pid>/task/*/schedstat` (nanoseconds), read before and after a run, divided by the
//! requests fortio reports as done. The configurations run interleaved, several rounds in one
//! process, and the median per configuration is reported with the spread between rounds.
//!
//!     meshguard-envoy-bench --fortio PATH [--rounds N] [--requests N] [--markdown FILE]

use anyhow::{bail, Context as _};
use meshguard_envoy_tests::envoy::StartOptions;
use meshguard_envoy_tests::pki::Ca;
use meshguard_envoy_tests::sidecar::{self, FailurePolicy, Phase, Plugin, Sidecar, TlsChain};
use meshguard_envoy_tests::upstream::App;
use meshguard_envoy_tests::{module, Envoy, EnvoyBinary};
use meshguard_mesh::NodeFacts;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

const NS: &str = "meshguard";
const HOST: &str = "order-service.meshguard.svc.cluster.local";
const START: &str = "<!-- envoy-bench:start -->";
const END: &str = "<!-- envoy-bench:end -->";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Setup {
    NoFilter,
    Rbac,
    EmptyWasm,
    Authz,
    Metrics,
    Both,
}

const SETUPS: [Setup; 6] = [
    Setup::NoFilter,
    Setup::Rbac,
    Setup::EmptyWasm,
    Setup::Authz,
    Setup::Metrics,
    Setup::Both,
];

impl Setup {
    fn label(self) -> &'static str {
        match self {
            Setup::NoFilter => "no filter",
            Setup::Rbac => "Envoy RBAC, same policy (Istio AuthorizationPolicy)",
            Setup::EmptyWasm => "two empty Wasm filters (floor)",
            Setup::Authz => "meshguard authz",
            Setup::Metrics => "meshguard metrics",
            Setup::Both => "meshguard authz + metrics",
        }
    }
}

fn identity(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/{NS}/sa/{sa}")
}

fn rendered_plugins() -> anyhow::Result<(Plugin, Plugin)> {
    let objects = sidecar::rendered(NS)?;
    let authz = sidecar::rendered_plugin(sidecar::wasm_plugin(&objects, "order-service-authz")?)?;
    let metrics =
        sidecar::rendered_plugin(sidecar::wasm_plugin(&objects, "order-service-metrics")?)?;
    Ok((authz, metrics))
}

fn empty(name: &str) -> anyhow::Result<Plugin> {
    Ok(Plugin {
        namespace: NS.into(),
        name: name.into(),
        root_id: "passthrough".into(),
        configuration: None,
        module: module("meshguard_passthrough")?,
        failure_policy: FailurePolicy::FailClosed,
        phase: Phase::Stats,
        priority: 0,
    })
}

/// Envoy's RBAC filter admitting user-service's identity only, as Istio compiles an ALLOW
/// AuthorizationPolicy with `source.principals` (pilot/pkg/security/authz/builder).
fn rbac_filter() -> Value {
    json!({
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"policies": {"ns[meshguard]-policy[order-service]-rule[0]": {
                "permissions": [{"any": true}],
                "principals": [{"authenticated": {"principal_name": {"exact": identity("user-service")}}}],
            }}},
        },
    })
}

fn thread_cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = std::fs::read_to_string(task?.path().join("schedstat")).unwrap_or_default();
        total += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

struct Bench {
    fortio: PathBuf,
    certs: (PathBuf, PathBuf, PathBuf),
    dir: PathBuf,
}

struct Run {
    requests: u64,
    p50_ms: f64,
    p99_ms: f64,
}

impl Bench {
    /// fortio against `port`: `qps` 0 for as fast as it can; returns what it reports.
    fn fortio(
        &self,
        port: u16,
        qps: u32,
        requests: Option<u64>,
        seconds: Option<u32>,
    ) -> anyhow::Result<Run> {
        let json = self.dir.join("fortio.json");
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", "1"]).arg(&self.fortio).arg("load");
        cmd.args([
            "-quiet",
            "-c",
            "16",
            "-qps",
            &qps.to_string(),
            "-p",
            "50,99",
        ]);
        if let Some(n) = requests {
            cmd.args(["-n", &n.to_string()]);
        }
        if let Some(t) = seconds {
            cmd.args(["-t", &format!("{t}s")]);
        }
        cmd.arg("-cert").arg(&self.certs.0);
        cmd.arg("-key").arg(&self.certs.1);
        cmd.arg("-cacert").arg(&self.certs.2);
        cmd.arg("-json").arg(&json);
        cmd.args(["-resolve", "127.0.0.1"]);
        cmd.arg(format!("https://{HOST}:{port}/orders?user_id=7"));
        let out = cmd.output().context("running fortio")?;
        if !out.status.success() {
            bail!("fortio: {}", String::from_utf8_lossy(&out.stderr));
        }
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
        let ok = v["RetCodes"]["200"].as_u64().unwrap_or(0);
        let total = v["DurationHistogram"]["Count"].as_u64().unwrap_or(0);
        if ok != total || total == 0 {
            bail!(
                "fortio: {ok} of {total} requests answered 200: {}",
                v["RetCodes"]
            );
        }
        let pct = |p: f64| {
            v["DurationHistogram"]["Percentiles"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|x| x["Percentile"].as_f64() == Some(p))
                .and_then(|x| x["Value"].as_f64())
                .unwrap_or(f64::NAN)
                * 1000.0
        };
        Ok(Run {
            requests: total,
            p50_ms: pct(50.0),
            p99_ms: pct(99.0),
        })
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let fortio = PathBuf::from(arg("--fortio").context("--fortio PATH")?);
    let rounds: usize = arg("--rounds").map_or(Ok(5), |r| r.parse())?;
    let requests: u64 = arg("--requests").map_or(Ok(40_000), |r| r.parse())?;
    let markdown = arg("--markdown").map(PathBuf::from);
    let bin = EnvoyBinary::istio()?;
    let rt = tokio::runtime::Runtime::new()?;
    let dir = std::env::temp_dir().join(format!("meshguard-envoy-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let ca = Ca::new()?;
    let client = ca.issue(Some(&identity("user-service")), "client.test")?;
    let (cert, key) = client.write(&dir, "client")?;
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem())?;
    let bench = Bench {
        fortio,
        certs: (cert, key, ca_file),
        dir: dir.clone(),
    };
    // The application on CPU 1 with the load generator.
    let app = rt.block_on(App::start())?;
    let _ = Command::new("taskset")
        .args(["-a", "-p", "-c", "1", &std::process::id().to_string()])
        .output();
    let (authz, metrics) = rendered_plugins()?;
    let mut envoys = Vec::new();
    for setup in SETUPS {
        let plugins = match setup {
            Setup::NoFilter | Setup::Rbac => vec![],
            Setup::EmptyWasm => vec![empty("empty-a")?, empty("empty-b")?],
            Setup::Authz => vec![authz.clone()],
            Setup::Metrics => vec![metrics.clone()],
            Setup::Both => vec![authz.clone(), metrics.clone()],
        };
        let s = Sidecar {
            dir: dir.join(format!("{setup:?}")),
            node: sidecar::node(Some(&NodeFacts {
                workload_name: Some("order-service".into()),
                namespace: Some(NS.into()),
                service_account: Some("order-service".into()),
            })),
            stats_config: None,
            ca_pem: ca.cert_pem(),
            chains: vec![TlsChain {
                server_name: None,
                cert: ca.issue(Some(&identity("order-service")), HOST)?,
            }],
            plaintext: false,
            plugins,
            upstream: app.addr,
        };
        let mut bootstrap = s.bootstrap()?;
        if setup == Setup::Rbac {
            for chain in bootstrap["static_resources"]["listeners"][0]["filter_chains"]
                .as_array_mut()
                .context("chains")?
            {
                let filters = chain["filters"][0]["typed_config"]["http_filters"]
                    .as_array_mut()
                    .context("http filters")?;
                filters.insert(0, rbac_filter());
            }
        }
        let opts = StartOptions {
            log_level: "error".into(),
            component_log_level: "wasm:error".into(),
            ..StartOptions::default()
        };
        let envoy = Envoy::start(&bin, &s.dir, &bootstrap, &opts)?;
        let pid = envoy.pid().context("pid")?;
        let _ = Command::new("taskset")
            .args(["-a", "-p", "-c", "0", &pid.to_string()])
            .output();
        let port = envoy.listener(sidecar::LISTENER)?.port();
        // Warm-up: connections, VM, caches.
        bench.fortio(port, 0, Some(2_000), None)?;
        envoys.push((setup, envoy, pid, port));
    }
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); SETUPS.len()];
    for round in 0..rounds {
        for (i, (setup, _, pid, port)) in envoys.iter().enumerate() {
            let before = thread_cpu_ns(*pid)?;
            let run = bench.fortio(*port, 0, Some(requests), None)?;
            let after = thread_cpu_ns(*pid)?;
            let us = (after - before) as f64 / run.requests as f64 / 1000.0;
            eprintln!(
                "round {}: {:<52} {us:6.2} µs of Envoy CPU per request",
                round + 1,
                setup.label()
            );
            cpu[i].push(us);
        }
    }
    let mut rows = Vec::new();
    let medians: Vec<f64> = cpu.iter().map(|v| median(&mut v.clone())).collect();
    let none = medians[0];
    let floor = medians[2];
    for (i, (setup, _, pid, port)) in envoys.iter().enumerate() {
        let spread = {
            let v = &cpu[i];
            let (lo, hi) = v
                .iter()
                .fold((f64::MAX, 0f64), |(l, h), x| (l.min(*x), h.max(*x)));
            (hi - lo) / medians[i] * 100.0
        };
        let fixed = bench.fortio(*port, 1000, None, Some(5))?;
        let rss = rss_kib(*pid)? as f64 / 1024.0;
        rows.push(format!(
            "| {} | {:.1} | {:.2}x | {:.2}x | {:.1} % | {:.2} | {:.2} | {:.1} |",
            setup.label(),
            medians[i],
            medians[i] / none,
            medians[i] / floor,
            spread,
            fixed.p50_ms,
            fixed.p99_ms,
            rss
        ));
    }
    let both = medians[5];
    let empty_rss = {
        let (_, _, pid, _) = &envoys[2];
        rss_kib(*pid)? as f64 / 1024.0
    };
    let both_rss = {
        let (_, _, pid, _) = &envoys[5];
        rss_kib(*pid)? as f64 / 1024.0
    };
    let table = format!(
        "{START}\n\n## The filters in real Envoy\n\nMeasured by `scripts/bench.sh` (`meshguard-envoy-bench`) in Envoy {version}: one worker pinned to CPU 0; fortio {fortio} with a client certificate, 16 connections as fast as they go, and the application pinned to CPU 1; mTLS; {requests} requests per run, the six configurations interleaved, {rounds} rounds, medians. Envoy's CPU time is the sum of its threads' `schedstat` run time. Latency at a fixed 1000 requests per second for 5 s (below saturation); memory is Envoy's RSS after the runs.\n\n| configuration | Envoy CPU µs / request | vs no filter | vs two empty Wasm filters | spread between rounds | p50 ms at 1000/s | p99 ms at 1000/s | RSS MiB |\n|---|---|---|---|---|---|---|---|\n{}\n\nBoth filters cost {:.2}x the two-empty-filter floor (budget 1.20x) and {:.1} MiB more memory than it (budget 8 MiB).\n\n{END}\n",
        rows.join("\n"),
        both / floor,
        both_rss - empty_rss,
        version = bin.version,
        fortio = "v1.63.0",
    );
    println!("{table}");
    if let Some(path) = markdown {
        write_section(&path, &table)?;
    }
    drop(envoys);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Replaces this benchmark's section of `path` (between its markers), or appends it.
fn write_section(path: &Path, section: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)?;
    let out = match (text.find(START), text.find(END)) {
        (Some(a), Some(b)) if a < b => format!(
            "{}{}{}",
            &text[..a],
            section.trim_end(),
            &text[b + END.len()..]
        ),
        _ => format!("{}\n{section}", text.trim_end()),
    };
    std::fs::write(path, out)?;
    Ok(())
}
