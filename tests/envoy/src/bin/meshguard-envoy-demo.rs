//! The filters deciding real requests in real Envoy: one Envoy per service, each the inbound side
//! of that service's sidecar with the WasmPlugins meshctl renders for it (delivered by ECDS, as
//! istiod delivers them) and meshctl's bootstrap override (merged by Envoy), mTLS with SPIFFE
//! certificates from one CA. Allowed and denied callers over HTTP/1.1, HTTP/2 and gRPC, a caller
//! without a certificate, then the labelled metrics Envoy exports. Every Envoy is stopped by pid at
//! the end.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use meshguard_envoy_tests::client::{Call, Caller, Protocol};
use meshguard_envoy_tests::envoy::StartOptions;
use meshguard_envoy_tests::pki::Ca;
use meshguard_envoy_tests::sidecar::{self, Sidecar, TlsChain};
use meshguard_envoy_tests::upstream::{App, REACHED_HEADER};
use meshguard_envoy_tests::{module, stats, Envoy, EnvoyBinary};
use meshguard_mesh::NodeFacts;

const NS: &str = "meshguard";
const SERVICES: [&str; 3] = ["user-service", "order-service", "payment-service"];

fn identity(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/{NS}/sa/{sa}")
}

fn host(service: &str) -> String {
    format!("{service}.{NS}.svc.cluster.local")
}

enum Who {
    Mesh(&'static str),
    Foreign(&'static str),
    NoCertificate,
}

struct Step {
    who: Who,
    callee: &'static str,
    method: &'static str,
    path: &'static str,
    protocol: Protocol,
    grpc: bool,
}

fn main() -> anyhow::Result<()> {
    let bin = EnvoyBinary::istio().context("the pinned Envoy")?;
    let rt = tokio::runtime::Runtime::new()?;
    let dir = std::env::temp_dir().join(format!("meshguard-envoy-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let objects = sidecar::rendered(NS)?;
    let override_json = objects
        .iter()
        .find(|o| {
            o["kind"] == "ConfigMap" && o["metadata"]["name"] == "meshguard-sidecar-bootstrap"
        })
        .and_then(|o| o["data"]["custom_bootstrap.json"].as_str())
        .context("the rendered bootstrap override")?
        .to_owned();
    let ca = Ca::new()?;
    let app = rt.block_on(App::start())?;
    println!(
        "Envoy {} ({}), one per service, each with its rendered WasmPlugins: {} ({} bytes), {} ({} bytes)",
        bin.version,
        bin.path.display(),
        module("meshguard_authz")?.display(),
        std::fs::metadata(module("meshguard_authz")?)?.len(),
        module("meshguard_metrics")?.display(),
        std::fs::metadata(module("meshguard_metrics")?)?.len(),
    );
    println!("policy: user-service -> order-service -> payment-service, nothing else (namespace {NS}, enforce, STRICT mTLS)\n");
    let mut envoys = Vec::new();
    for service in SERVICES {
        let plugins = sidecar::wasm_plugins_for(&objects, service)
            .into_iter()
            .map(sidecar::rendered_plugin)
            .collect::<Result<Vec<_>, _>>()?;
        let s = Sidecar {
            dir: dir.join(service),
            node: sidecar::node(Some(&NodeFacts {
                workload_name: Some(service.into()),
                namespace: Some(NS.into()),
                service_account: Some(service.into()),
            })),
            stats_config: None,
            ca_pem: ca.cert_pem(),
            chains: vec![TlsChain {
                server_name: None,
                cert: ca.issue(Some(&identity(service)), &host(service))?,
            }],
            plaintext: false,
            plugins,
            upstream: app.addr,
        };
        let opts = StartOptions {
            config_yaml: Some(override_json.clone()),
            ..StartOptions::default()
        };
        let envoy = Envoy::start(&bin, &s.dir, &s.bootstrap()?, &opts)?;
        println!(
            "  {service:<16} sidecar: Envoy pid {}, inbound mTLS on {}",
            envoy.pid().unwrap_or(0),
            envoy.listener(sidecar::LISTENER)?
        );
        envoys.push((service, envoy));
    }
    println!();
    let steps = [
        Step {
            who: Who::Mesh("user-service"),
            callee: "order-service",
            method: "GET",
            path: "/orders?user_id=42",
            protocol: Protocol::Http1,
            grpc: false,
        },
        Step {
            who: Who::Mesh("order-service"),
            callee: "payment-service",
            method: "POST",
            path: "/payments",
            protocol: Protocol::Http2,
            grpc: false,
        },
        Step {
            who: Who::Mesh("user-service"),
            callee: "payment-service",
            method: "POST",
            path: "/payments",
            protocol: Protocol::Http2,
            grpc: false,
        },
        Step {
            who: Who::Mesh("payment-service"),
            callee: "order-service",
            method: "GET",
            path: "/orders",
            protocol: Protocol::Http1,
            grpc: false,
        },
        Step {
            who: Who::Mesh("order-service"),
            callee: "user-service",
            method: "GET",
            path: "/",
            protocol: Protocol::Http2,
            grpc: false,
        },
        Step {
            who: Who::Mesh("payment-service"),
            callee: "order-service",
            method: "POST",
            path: "/shop.Orders/List",
            protocol: Protocol::Http2,
            grpc: true,
        },
        Step {
            who: Who::Foreign("spiffe://cluster.local/ns/other/sa/intruder"),
            callee: "order-service",
            method: "GET",
            path: "/orders",
            protocol: Protocol::Http2,
            grpc: false,
        },
        Step {
            who: Who::NoCertificate,
            callee: "order-service",
            method: "GET",
            path: "/orders",
            protocol: Protocol::Http1,
            grpc: false,
        },
    ];
    for step in &steps {
        let envoy = &envoys
            .iter()
            .find(|(s, _)| *s == step.callee)
            .context("callee")?
            .1;
        let addr = envoy.listener(sidecar::LISTENER)?;
        let (who, pair) = match &step.who {
            Who::Mesh(s) => (
                s.to_string(),
                Some(ca.issue(Some(&identity(s)), "client.test")?),
            ),
            Who::Foreign(id) => (
                format!("{id} (foreign)"),
                Some(ca.issue(Some(id), "client.test")?),
            ),
            Who::NoCertificate => ("a client without certificate".to_owned(), None),
        };
        let caller = Caller::new(&ca.cert_pem(), pair)?;
        let what = if step.grpc {
            match rt.block_on(caller.grpc_unary(addr, &host(step.callee), step.path)) {
                Ok(status) => format!("gRPC (tonic): {:?} \"{}\"", status.code(), status.message()),
                Err(e) => format!("refused: {e}"),
            }
        } else {
            let mut call = Call::get(step.path);
            call.method = step.method.into();
            match rt.block_on(caller.send(addr, &host(step.callee), step.protocol, &call)) {
                Ok(out) if out.header(REACHED_HEADER).is_some() => {
                    format!(
                        "{} {}: allowed, answered by the application",
                        step.protocol.label(),
                        out.status
                    )
                }
                Ok(out) => format!(
                    "{} {}: denied, {}",
                    step.protocol.label(),
                    out.status,
                    out.header("x-meshguard-deny-reason").unwrap_or("no reason")
                ),
                Err(e) => format!("refused by mTLS STRICT ({e})"),
            }
        };
        println!(
            "  {who:<45} -> {:<16} {:<5} {:<20} {what}",
            step.callee, step.method, step.path
        );
    }
    println!("\nmetrics, as Envoy exports them on /stats/prometheus (labels extracted by Envoy from meshctl's bootstrap override):");
    let deadline = Instant::now() + Duration::from_secs(10);
    for (service, envoy) in &envoys {
        let mut lines = Vec::new();
        while Instant::now() < deadline {
            let samples =
                stats::parse(&envoy.admin_get("/stats/prometheus")?).map_err(anyhow::Error::msg)?;
            lines = samples
                .iter()
                .filter(|s| s.name.starts_with("meshguard_") && !s.name.contains("duration"))
                .map(|s| {
                    let labels: Vec<String> = s
                        .labels
                        .iter()
                        .map(|(k, v)| format!("{k}=\"{v}\""))
                        .collect();
                    format!("{}{{{}}} {}", s.name, labels.join(","), s.value)
                })
                .collect();
            if !lines.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        println!("  {service} sidecar:");
        for l in lines {
            println!("    {l}");
        }
    }
    for (service, mut envoy) in envoys {
        let pid = envoy.pid().unwrap_or(0);
        envoy.stop();
        println!("stopped {service}'s Envoy (pid {pid})");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
