//! Shared by the filter tests, the demo and the benchmarks: builds the real filters for
//! `wasm32-wasip1` (release profile `wasm`, as shipped) and loads them into the Proxy-Wasm host.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use meshguard_mesh::{LogLevel, Mesh, Mode, NodeFacts};
use proxy_wasm_host::{Host, Properties, RequestSpec};

/// The filters, by the name of their `.wasm` file.
pub const AUTHZ: &str = "meshguard_authz";
pub const METRICS: &str = "meshguard_metrics";
pub const PASSTHROUGH: &str = "meshguard_passthrough";

/// Namespace the tests' mesh lives in.
pub const NAMESPACE: &str = "shop";

/// Why the filters could not be provided.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("could not run `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}); run it yourself to see why")]
    Failed { command: String, status: String },
    #[error("{0} was not produced by the build")]
    Missing(PathBuf),
}

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Builds the filters once per process (cargo makes this a no-op when they are fresh) and returns
/// the folder holding the `.wasm` files. `MESHGUARD_FILTERS_DIR` points at prebuilt ones instead.
pub fn filters_dir() -> Result<&'static Path, &'static BuildError> {
    static DIR: OnceLock<Result<PathBuf, BuildError>> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("MESHGUARD_FILTERS_DIR") {
            return Ok(PathBuf::from(dir));
        }
        let root = workspace_root();
        // A target folder of its own, so that this nested cargo never waits on the lock of the
        // cargo that runs the tests. The scripts build into the same folder.
        let target = root.join("target").join("filters");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let args = [
            "build",
            "--quiet",
            "--profile",
            "wasm",
            "--target",
            "wasm32-wasip1",
            "-p",
            "meshguard-authz",
            "-p",
            "meshguard-metrics",
            "-p",
            "meshguard-passthrough",
        ];
        let command = format!("{cargo} {}", args.join(" "));
        let status = Command::new(&cargo)
            .args(args)
            .arg("--target-dir")
            .arg(&target)
            .current_dir(&root)
            .status()
            .map_err(|source| BuildError::Spawn {
                command: command.clone(),
                source,
            })?;
        if !status.success() {
            return Err(BuildError::Failed {
                command,
                status: status.to_string(),
            });
        }
        Ok(target.join("wasm32-wasip1").join("wasm"))
    })
    .as_ref()
    .map(PathBuf::as_path)
}

/// Path of one filter's `.wasm`, building the filters if needed.
pub fn module(name: &str) -> anyhow::Result<PathBuf> {
    let dir = filters_dir().map_err(|e| anyhow::anyhow!("{e}"))?;
    let path = dir.join(format!("{name}.wasm"));
    if !path.is_file() {
        return Err(BuildError::Missing(path).into());
    }
    Ok(path)
}

/// The reference mesh (user → order → payment) in [`NAMESPACE`].
pub fn mesh() -> anyhow::Result<Mesh> {
    Ok(Mesh::reference(NAMESPACE)?)
}

/// The SPIFFE identity of a service of [`mesh`].
pub fn identity(service: &str) -> String {
    format!("spiffe://cluster.local/ns/{NAMESPACE}/sa/{service}")
}

/// The authorization filter's configuration for `service`, as `meshctl` renders it.
pub fn authz_config(service: &str, mode: Mode) -> anyhow::Result<String> {
    Ok(mesh()?
        .authz_config(service, mode, LogLevel::Info)?
        .to_json())
}

/// The metrics filter's configuration for `service`, as `meshctl` renders it.
pub fn metrics_config(service: &str) -> anyhow::Result<String> {
    Ok(mesh()?.metrics_config(service, LogLevel::Info)?.to_json())
}

/// The node metadata Istio gives the sidecar of the pod a configuration was rendered for: its
/// workload name, and the namespace and service account of its `identity` when it has one. A
/// configuration that does not parse gets no node.
pub fn node_for(config: &[u8]) -> Properties {
    let facts = if let Ok(c) = meshguard_mesh::AuthzConfig::from_json(config) {
        let id = c
            .identity
            .as_deref()
            .and_then(|i| meshguard_mesh::SpiffeId::parse(i).ok());
        Some(NodeFacts {
            workload_name: Some(c.workload),
            namespace: id.as_ref().map(|i| i.namespace().to_owned()),
            service_account: id.as_ref().map(|i| i.service_account().to_owned()),
        })
    } else if let Ok(c) = meshguard_mesh::MetricsConfig::from_json(config) {
        Some(NodeFacts {
            workload_name: Some(c.workload),
            ..NodeFacts::default()
        })
    } else {
        None
    };
    facts.map_or_else(Properties::new, |f| node_properties(&f))
}

/// The properties Envoy serves for a node with these facts: each metadata field at
/// `xds.node.metadata.<KEY>` (see `meshguard_mesh::node`).
pub fn node_properties(facts: &NodeFacts) -> Properties {
    let mut p = Properties::new();
    for (key, value) in facts.fields() {
        p.set(&["xds", "node", "metadata", key], value.as_bytes().to_vec());
    }
    p
}

/// A host running filter `name` with `config` in the pod it was rendered for ([`node_for`]),
/// `on_configure` already called (its result is returned by [`Host::configure`] again if a test
/// needs it).
///
/// The host logs at trace (`proxy_get_log_level`), as a sidecar whose Wasm log level an operator
/// raised does, so that tests see every line the filter logs at its configured level.
pub fn host(name: &str, config: &str) -> anyhow::Result<Host> {
    Ok(Host::builder(module(name)?)
        .plugin_config(config)
        .root_properties(node_for(config.as_bytes()))
        .log_level(proxy_wasm_host::LogLevel::Trace)
        .build_configured()?)
}

/// A host whose `on_configure` was called and returned `configured`.
pub fn host_configure(name: &str, config: &[u8]) -> anyhow::Result<(Host, bool)> {
    let mut host = Host::builder(module(name)?)
        .plugin_config(config.to_vec())
        .root_properties(node_for(config))
        .log_level(proxy_wasm_host::LogLevel::Trace)
        .build()?;
    let ok = host.configure()?;
    Ok((host, ok))
}

/// A request from `caller` (a service of [`mesh`]) over mTLS.
pub fn from_service(caller: &str, method: &str, path: &str) -> RequestSpec {
    RequestSpec::new(method, path).properties(Properties::new().mtls_peer(&identity(caller)))
}

/// One workload's inbound sidecar: the authorization filter (Istio phase AUTHZ) followed by the
/// metrics filter (phase STATS), each in its own VM as Envoy runs each WasmPlugin.
///
/// Envoy runs both in one filter chain; the host runs one plugin, so the chain is composed here:
/// a request the authorization filter answers locally ends there, and the metrics filter sees the
/// stream end with that local status (Envoy calls every filter's `on_log`, with `response.code`
/// set to the local reply's status).
pub struct Sidecar {
    pub service: String,
    pub authz: Host,
    pub metrics: Host,
}

/// What happened to one call through a [`Sidecar`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallResult {
    pub status: u32,
    pub allowed: bool,
    pub deny_reason: Option<String>,
}

impl Sidecar {
    /// The sidecar of `service` in the reference mesh, configured as `meshctl` renders it.
    pub fn new(service: &str, mode: Mode) -> anyhow::Result<Self> {
        Ok(Self {
            service: service.to_owned(),
            authz: host(AUTHZ, &authz_config(service, mode)?)?,
            metrics: host(METRICS, &metrics_config(service)?)?,
        })
    }

    /// Runs `request` through the chain; the application answers `app_status`.
    pub fn call(&mut self, request: &RequestSpec, app_status: u32) -> anyhow::Result<CallResult> {
        let mut request = request.clone();
        request.upstream_response = proxy_wasm_host::ResponseSpec::new(app_status)
            .latency(std::time::Duration::from_millis(12));
        let decided = self.authz.http_request(&request)?;
        let (status, deny_reason) = match &decided.local_response {
            Some(local) => (
                decided.status().unwrap_or(local.status_code),
                local
                    .headers
                    .get_str("x-meshguard-deny-reason")
                    .map(str::to_owned),
            ),
            None => (app_status, None),
        };
        let allowed = decided.local_response.is_none() && decided.forwarded_upstream;
        request.upstream_response = proxy_wasm_host::ResponseSpec::new(status);
        // What the client got, as the metrics filter (later in the chain) sees it: a gRPC
        // denial is HTTP 200 with `grpc-status`.
        for name in ["grpc-status", "content-type"] {
            if let Some(v) = decided.response_header(name) {
                request.upstream_response = request.upstream_response.header(name, v);
            }
        }
        if allowed {
            request.upstream_response = request
                .upstream_response
                .latency(std::time::Duration::from_millis(12));
        }
        self.metrics.http_request(&request)?;
        Ok(CallResult {
            status,
            allowed,
            deny_reason,
        })
    }

    /// The sidecar's metrics as its Prometheus endpoint exports them. The stats settings are the
    /// ones Istio's own bootstrap generator gives this service's injected sidecar (the snapshot
    /// `meshguard_istio_tests::SIDECAR_STATS_SNAPSHOT`, which that crate's tests check against
    /// Istio's code), applied the way Envoy applies them, with an ECMAScript regex engine.
    pub fn prometheus_lines(&self) -> anyhow::Result<Vec<String>> {
        use meshguard_istio_tests::envoy;
        let all = envoy::parse_sidecar_stats(meshguard_istio_tests::SIDECAR_STATS_SNAPSHOT)?;
        let Some(stats) = all.iter().find(|s| s.deployment == self.service) else {
            anyhow::bail!("no Istio sidecar stats settings for {}", self.service);
        };
        let sidecar = envoy::Sidecar::new(&stats.stats_config)?;
        let mut lines = Vec::new();
        for h in [&self.authz, &self.metrics] {
            for (kind, stat) in h.metric_names() {
                // A stat the stats matcher rejects is never created, so never exported.
                let Some((series, tagged)) = sidecar.series(&stat) else {
                    continue;
                };
                let name = series.name;
                let labels = tagged
                    .tags
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{v}\""))
                    .collect::<Vec<_>>()
                    .join(",");
                match kind {
                    proxy_wasm_host::MetricType::Histogram => {
                        let values = h.histogram(&stat).unwrap_or_default();
                        let sum: u64 = values.iter().sum();
                        lines.push(format!("{name}_count{{{labels}}} {}", values.len()));
                        lines.push(format!("{name}_sum{{{labels}}} {sum}"));
                    }
                    _ => lines.push(format!(
                        "{name}{{{labels}}} {}",
                        h.counter(&stat).or_else(|| h.gauge(&stat)).unwrap_or(0)
                    )),
                }
            }
        }
        lines.sort();
        Ok(lines)
    }
}

/// Envoy's tag extraction with the rules the installer configures: every rule is matched against
/// the original name, its group 2 is the tag value, and every group 1 is cut from the name.
pub fn extract_tags(stat: &str) -> anyhow::Result<(String, Vec<(String, String)>)> {
    let mut cut = vec![false; stat.len()];
    let mut tags = Vec::new();
    for rule in meshguard_mesh::metrics::STATS_TAGS {
        let re = regex::Regex::new(rule.regex)?;
        if let Some(c) = re.captures(stat) {
            if let (Some(whole), Some(value)) = (c.get(1), c.get(2)) {
                tags.push((rule.tag_name.to_owned(), value.as_str().to_owned()));
                cut[whole.range()].iter_mut().for_each(|b| *b = true);
            }
        }
    }
    let name = stat
        .char_indices()
        .filter(|(i, _)| !cut.get(*i).copied().unwrap_or(false))
        .map(|(_, c)| c)
        .collect();
    Ok((name, tags))
}

/// The benchmark scenarios, shared by `meshguard-bench` and the criterion bench.
pub mod bench {
    use anyhow::bail;
    use meshguard_mesh::Mode;
    use proxy_wasm_host::{Host, RequestSpec};

    use super::{authz_config, from_service, metrics_config, module, AUTHZ, METRICS, PASSTHROUGH};

    pub struct Scenario {
        pub name: &'static str,
        pub what: &'static str,
        pub module: &'static str,
        pub config: fn() -> anyhow::Result<String>,
        pub request: fn() -> RequestSpec,
    }

    pub fn scenarios() -> Vec<Scenario> {
        vec![
            Scenario {
                name: "passthrough",
                what: "empty filter (baseline)",
                module: PASSTHROUGH,
                config: || Ok("{}".to_owned()),
                request: || from_service("user-service", "GET", "/orders?user_id=7"),
            },
            Scenario {
                name: "authz-allow",
                what: "authorization, admitted caller",
                module: AUTHZ,
                config: || authz_config("order-service", Mode::Enforce),
                request: || from_service("user-service", "GET", "/orders?user_id=7"),
            },
            Scenario {
                name: "authz-deny",
                what: "authorization, denied caller (403)",
                module: AUTHZ,
                config: || authz_config("order-service", Mode::Enforce),
                request: || from_service("payment-service", "GET", "/orders?user_id=7"),
            },
            Scenario {
                name: "metrics",
                what: "request metrics",
                module: METRICS,
                config: || metrics_config("order-service"),
                request: || from_service("user-service", "GET", "/orders?user_id=7"),
            },
        ]
    }

    /// Wasm instructions per request against the empty filter, at most: what `scripts/test.sh`
    /// holds the filters to (`tests/budget.rs`) and `meshguard-bench` reports against.
    pub const BUDGETS: [(&str, f64); 3] =
        [("authz-allow", 2.0), ("authz-deny", 3.0), ("metrics", 2.5)];

    /// Largest `.wasm` of each filter, in KiB: every sidecar fetches and compiles each module.
    pub const MODULE_BUDGET_KIB: u64 = 160;

    /// The size in bytes of the largest function body in the module at `path`. Envoy compiles
    /// each function with V8's optimizing compiler (`--no-liftoff`, proxy-wasm-cpp-host
    /// `src/v8/v8.cc`), whose memory for one function grows faster than its size and stays in
    /// Envoy's heap afterwards; the filters' largest function is held to the empty SDK-built
    /// filter's (its allocator, `dlmalloc`, which every Rust module has).
    pub fn largest_function(path: &std::path::Path) -> anyhow::Result<u64> {
        let bytes = std::fs::read(path)?;
        let mut largest = 0;
        for payload in wasmparser::Parser::new(0).parse_all(&bytes) {
            if let wasmparser::Payload::CodeSectionEntry(body) = payload? {
                let range = body.range();
                largest = largest.max(range.end - range.start);
            }
        }
        Ok(largest)
    }

    /// A host for a scenario as an Istio sidecar runs it: configured for the pod its
    /// configuration was rendered for ([`super::node_for`]), Envoy's Wasm log level at Istio's
    /// default, warning.
    /// The allow decision with `n` callers configured (user-service and `n - 1` others): its
    /// cost must not grow with `n`.
    pub fn callers_config(n: usize) -> anyhow::Result<String> {
        let mut cfg = super::mesh()?.authz_config(
            "order-service",
            Mode::Enforce,
            meshguard_mesh::LogLevel::Info,
        )?;
        for i in 1..n {
            cfg.allow.push(meshguard_mesh::AllowEntry {
                from: super::identity(&format!("caller-{i}")),
                service: format!("caller-{i}"),
                methods: Vec::new(),
                path_prefixes: Vec::new(),
            });
        }
        Ok(cfg.to_json())
    }

    /// [`callers_config`] scenarios for 3, 30, 300 and 3000 callers.
    pub fn scaling() -> Vec<Scenario> {
        fn s(name: &'static str, config: fn() -> anyhow::Result<String>) -> Scenario {
            Scenario {
                name,
                what: "authorization, admitted caller",
                module: AUTHZ,
                config,
                request: || from_service("user-service", "GET", "/orders?user_id=7"),
            }
        }
        vec![
            s("callers-3", || callers_config(3)),
            s("callers-30", || callers_config(30)),
            s("callers-300", || callers_config(300)),
            s("callers-3000", || callers_config(3000)),
        ]
    }

    pub fn host(s: &Scenario, fuel: bool) -> anyhow::Result<Host> {
        let config = (s.config)()?;
        let mut host = Host::builder(module(s.module)?)
            .root_properties(super::node_for(config.as_bytes()))
            .plugin_config(config)
            .log_level(proxy_wasm_host::LogLevel::Warn)
            .fuel(fuel)
            .capture_logs(false)
            .build()?;
        if !host.configure()? {
            bail!("{}: on_configure failed", s.name);
        }
        Ok(host)
    }

    /// Wasm instructions (wasmtime fuel) per request of a scenario, after a warm-up; exact and
    /// the same on every machine.
    pub fn fuel_per_request(s: &Scenario, n: usize) -> anyhow::Result<f64> {
        let mut h = host(s, true)?;
        let req = (s.request)();
        h.run_requests(&req, 50)?;
        let summary = h.run_requests(&req, n)?;
        let Some(fuel) = summary.fuel_consumed else {
            bail!("fuel metering is off");
        };
        Ok(fuel as f64 / n as f64)
    }
}
