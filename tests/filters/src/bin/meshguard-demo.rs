//! A scripted demo: the three services' sidecars, each running the compiled authorization and
//! metrics filters in the Proxy-Wasm host, decide real requests from allowed and denied callers;
//! then the metrics they produced, as Prometheus would scrape them.

use meshguard_filter_tests::{identity, module, Sidecar, AUTHZ, METRICS};
use meshguard_mesh::Mode;
use proxy_wasm_host::{Properties, RequestSpec};

struct Call {
    caller: &'static str,
    callee: &'static str,
    method: &'static str,
    path: &'static str,
    /// The caller's peer properties: a mesh identity, a foreign one, or plaintext.
    peer: Peer,
}

enum Peer {
    Mesh,
    Foreign(&'static str),
    Plaintext,
}

fn main() -> anyhow::Result<()> {
    let authz = module(AUTHZ)?;
    let metrics = module(METRICS)?;
    println!(
        "filters: {} ({} bytes), {} ({} bytes)",
        authz.display(),
        std::fs::metadata(&authz)?.len(),
        metrics.display(),
        std::fs::metadata(&metrics)?.len()
    );
    println!("policy:  user-service -> order-service -> payment-service, nothing else (namespace shop, enforce)\n");
    let mut sidecars = ["user-service", "order-service", "payment-service"]
        .into_iter()
        .map(|s| Sidecar::new(s, Mode::Enforce))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let calls = [
        Call {
            caller: "user-service",
            callee: "order-service",
            method: "GET",
            path: "/orders?user_id=42",
            peer: Peer::Mesh,
        },
        Call {
            caller: "order-service",
            callee: "payment-service",
            method: "POST",
            path: "/payments",
            peer: Peer::Mesh,
        },
        Call {
            caller: "user-service",
            callee: "order-service",
            method: "POST",
            path: "/orders",
            peer: Peer::Mesh,
        },
        Call {
            caller: "user-service",
            callee: "payment-service",
            method: "POST",
            path: "/payments",
            peer: Peer::Mesh,
        },
        Call {
            caller: "payment-service",
            callee: "order-service",
            method: "GET",
            path: "/orders",
            peer: Peer::Mesh,
        },
        Call {
            caller: "order-service",
            callee: "user-service",
            method: "GET",
            path: "/users/42",
            peer: Peer::Mesh,
        },
        Call {
            caller: "outsider",
            callee: "order-service",
            method: "GET",
            path: "/orders",
            peer: Peer::Foreign("spiffe://cluster.local/ns/default/sa/default"),
        },
        Call {
            caller: "plaintext",
            callee: "payment-service",
            method: "POST",
            path: "/payments",
            peer: Peer::Plaintext,
        },
    ];
    println!(
        "{:<16} {:<16} {:<28} {:<7} {:<6} reason",
        "caller", "callee", "request", "verdict", "status"
    );
    let mut allowed = 0;
    let mut denied = 0;
    for call in &calls {
        let props = match call.peer {
            Peer::Mesh => Properties::new().mtls_peer(&identity(call.caller)),
            Peer::Foreign(id) => Properties::new().mtls_peer(id),
            Peer::Plaintext => Properties::new().plaintext(),
        };
        let request = RequestSpec::new(call.method, call.path).properties(props);
        let Some(sidecar) = sidecars.iter_mut().find(|s| s.service == call.callee) else {
            anyhow::bail!("no sidecar for {}", call.callee);
        };
        let result = sidecar.call(&request, 200)?;
        if result.allowed {
            allowed += 1
        } else {
            denied += 1
        }
        println!(
            "{:<16} {:<16} {:<28} {:<7} {:<6} {}",
            call.caller,
            call.callee,
            format!("{} {}", call.method, call.path),
            if result.allowed { "ALLOW" } else { "DENY" },
            result.status,
            result.deny_reason.as_deref().unwrap_or("-"),
        );
    }
    println!("\n{allowed} allowed, {denied} denied\n");
    println!(
        "metrics, as each sidecar's Prometheus endpoint exports them: the stats settings Istio's \
         bootstrap generator gives the injected pod (with meshctl's bootstrap override), applied \
         as Envoy applies them:"
    );
    for sidecar in &sidecars {
        for line in sidecar.prometheus_lines()? {
            println!("  {line}");
        }
    }
    Ok(())
}
