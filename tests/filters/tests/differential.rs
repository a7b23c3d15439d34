//! Differential fuzzing of the request path: random configurations, node metadata, connection
//! properties and headers, through the compiled authorization filter in the Proxy-Wasm host and
//! through the native `Authorizer`. The two decisions must be equal and the filter must never trap.
//!
//! Deterministic: `MESHGUARD_DIFF_SEED` (default fixed) and `MESHGUARD_DIFF_CONFIGS` (default 150
//! configurations × 12 requests) choose the run; a failure prints the seed and the case.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test assertions

use meshguard_filter_tests::{module, AUTHZ};
use meshguard_mesh::http::METHOD_OVERRIDE_HEADERS;
use meshguard_mesh::{Authorizer, Decision, NodeFacts, RequestFacts};
use proxy_wasm_host::{Host, Properties, RequestSpec};

/// splitmix64: small, deterministic, good enough to pick from pools.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| (self.next() & 0xff) as u8).collect()
    }
}

const SERVICES: [&str; 4] = ["user-service", "order-service", "payment-service", "admin"];
const METHODS: [&str; 6] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"];
const PREFIXES: [&str; 5] = ["/orders", "/orders/", "/pay", "/", "/api/v1"];

fn id(ns: &str, sa: &str) -> String {
    format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")
}

/// The workload a configuration protects and the callers it lists, so that requests and nodes can
/// be biased towards the facts that admit (else nearly everything is denied early).
struct Shape {
    workload: &'static str,
    callers: Vec<&'static str>,
}

fn random_config(r: &mut Rng) -> (Vec<u8>, Shape) {
    let workload = r.pick(&SERVICES[..3]);
    if r.chance(4) {
        let shape = Shape {
            workload,
            callers: Vec::new(),
        };
        return (r.bytes(40), shape);
    }
    let mut allow = Vec::new();
    let mut used = Vec::new();
    for _ in 0..r.below(4) {
        let from = r.pick(&SERVICES);
        if used.contains(&from) {
            continue;
        }
        used.push(from);
        let narrow_methods = r.chance(40);
        let narrow_paths = r.chance(40);
        let methods: Vec<String> = METHODS
            .iter()
            .filter(|_| narrow_methods && r.chance(40))
            .map(|m| format!("\"{m}\""))
            .collect();
        let prefixes: Vec<String> = PREFIXES
            .iter()
            .filter(|_| narrow_paths && r.chance(40))
            .map(|p| format!("\"{p}\""))
            .collect();
        allow.push(format!(
            r#"{{"from":"{}","service":"{from}","methods":[{}],"path_prefixes":[{}]}}"#,
            id("shop", from),
            methods.join(","),
            prefixes.join(",")
        ));
    }
    let identity = match r.below(4) {
        0 => String::new(),
        1 => format!(r#","identity":"{}""#, id("shop", r.pick(&SERVICES[..3]))),
        _ => format!(r#","identity":"{}""#, id("shop", workload)),
    };
    let mode = if r.chance(15) { "dry_run" } else { "enforce" };
    let config = format!(
        r#"{{"workload":"{workload}"{identity},"mode":"{mode}","allow":[{}]}}"#,
        allow.join(",")
    )
    .into_bytes();
    (
        config,
        Shape {
            workload,
            callers: used,
        },
    )
}

/// The node metadata values a host serves (`xds.node.metadata.<KEY>`), as raw bytes: usually text,
/// sometimes bytes that are not (Envoy serializes a number or a boolean value as binary).
fn random_node(r: &mut Rng, shape: &Shape) -> Vec<(&'static str, Vec<u8>)> {
    use meshguard_mesh::node::{NAMESPACE, SERVICE_ACCOUNT, WORKLOAD_NAME};
    if r.chance(50) {
        return NodeFacts {
            workload_name: Some(shape.workload.into()),
            namespace: Some("shop".into()),
            service_account: Some(shape.workload.into()),
        }
        .fields()
        .into_iter()
        .map(|(k, v)| (k, v.as_bytes().to_vec()))
        .collect();
    }
    let value = |r: &mut Rng| -> Option<Vec<u8>> {
        match r.below(6) {
            0 => None,
            1 => Some(b"shop".to_vec()),
            2 => Some(b"other".to_vec()),
            3 => Some(r.bytes(8)),
            _ => Some(r.pick(&SERVICES).as_bytes().to_vec()),
        }
    };
    if r.chance(12) {
        return Vec::new();
    }
    let mut node = Vec::new();
    for key in [WORKLOAD_NAME, NAMESPACE, SERVICE_ACCOUNT] {
        let v = if key == NAMESPACE && r.chance(70) {
            Some(b"shop".to_vec())
        } else {
            value(r)
        };
        if let Some(v) = v {
            node.push((key, v));
        }
    }
    node
}

const PATHS: [&str; 24] = [
    "/orders",
    "/orders/7",
    "/orders?user_id=7",
    "/orders/",
    "/pay",
    "/api/v1/x",
    "/admin",
    "/orders-admin",
    "/orders/..;/admin",
    "/orders/.;/admin",
    "/orders;x/../admin",
    "/orders/%3b/admin",
    "/orders/%2e%2e/admin",
    "/orders//x",
    "/orders/../admin",
    "/orders?_method=DELETE",
    "/orders?%5Fmethod=PUT",
    "/orders#_method=x",
    "orders",
    "",
    "/orders\\..\\admin",
    "/orders/%252e",
    "/ö/x",
    "/orders/\u{0}",
];

fn random_path(r: &mut Rng) -> Vec<u8> {
    let mut p = r.pick(&PATHS).as_bytes().to_vec();
    if r.chance(10) {
        p.extend(r.bytes(6));
    }
    p
}

/// One random request: what the host is given, and the same facts for the native decision.
struct Case {
    headers: Vec<(String, Vec<u8>)>,
    props: Vec<(Vec<&'static str>, Vec<u8>)>,
}

fn random_case(r: &mut Rng, shape: &Shape) -> Case {
    let mut headers = Vec::new();
    if !r.chance(5) {
        let m: Vec<u8> = match r.below(10) {
            0 => b"get".to_vec(),
            1 => Vec::new(),
            2 => r.bytes(5),
            _ => r.pick(&METHODS).as_bytes().to_vec(),
        };
        headers.push((":method".to_owned(), m));
    }
    if !r.chance(5) {
        headers.push((":path".to_owned(), random_path(r)));
    }
    for name in METHOD_OVERRIDE_HEADERS {
        if r.chance(8) {
            headers.push((name.to_owned(), r.pick(&METHODS).as_bytes().to_vec()));
        }
    }
    if r.chance(20) {
        let ct = r.pick(&[
            "application/grpc",
            "application/grpc-web",
            "application/grpc-web-text",
            "application/json",
            "application/grpcx",
        ]);
        headers.push(("content-type".to_owned(), ct.as_bytes().to_vec()));
    }
    let mut props = Vec::new();
    match r.below(10) {
        0 => {}
        1 => props.push((vec!["connection", "mtls"], vec![0])),
        2 => props.push((vec!["connection", "mtls"], r.bytes(2))),
        _ => props.push((vec!["connection", "mtls"], vec![1])),
    }
    let peer = match r.below(10) {
        _ if !shape.callers.is_empty() && r.chance(50) => {
            Some(id("shop", r.pick(&shape.callers)).into_bytes())
        }
        0 => None,
        1 => Some(r.bytes(12)),
        2 => Some(id("other", r.pick(&SERVICES)).into_bytes()),
        3 => Some(format!("{}/", id("shop", r.pick(&SERVICES))).into_bytes()),
        _ => Some(id("shop", r.pick(&SERVICES)).into_bytes()),
    };
    if let Some(p) = peer {
        props.push((vec!["connection", "uri_san_peer_certificate"], p));
    }
    if r.chance(60) {
        let local = if r.chance(80) {
            let sa = if r.chance(70) {
                shape.workload
            } else {
                r.pick(&SERVICES[..3])
            };
            id("shop", sa).into_bytes()
        } else {
            r.bytes(10)
        };
        props.push((vec!["connection", "uri_san_local_certificate"], local));
    }
    Case { headers, props }
}

fn get<'a>(pairs: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
}

fn prop<'a>(pairs: &'a [(Vec<&'static str>, Vec<u8>)], name: &[&str]) -> Option<&'a [u8]> {
    pairs
        .iter()
        .find(|(k, _)| k.as_slice() == name)
        .map(|(_, v)| v.as_slice())
}

/// The native decision, as (allowed, deny reason).
fn native(a: &Authorizer, c: &Case) -> (bool, Option<String>) {
    let facts = RequestFacts {
        mtls: match prop(&c.props, &["connection", "mtls"]) {
            Some([1]) => Some(true),
            Some([0]) => Some(false),
            _ => None,
        },
        peer_identity: prop(&c.props, &["connection", "uri_san_peer_certificate"]),
        local_identity: prop(&c.props, &["connection", "uri_san_local_certificate"]),
        method: get(&c.headers, ":method"),
        path: get(&c.headers, ":path"),
        method_override_header: METHOD_OVERRIDE_HEADERS
            .iter()
            .any(|h| get(&c.headers, h).is_some()),
    };
    match a.decide(&facts) {
        Decision::Allow { .. } => (true, None),
        Decision::Deny { reason, .. } => (false, Some(reason.as_str().to_owned())),
    }
}

#[test]
fn the_compiled_filter_decides_as_the_native_authorizer() -> anyhow::Result<()> {
    let seed: u64 = std::env::var("MESHGUARD_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6d65_7368_6775_6172);
    let configs: usize = std::env::var("MESHGUARD_DIFF_CONFIGS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    let path = module(AUTHZ)?;
    let mut r = Rng(seed);
    let (mut allowed, mut denied) = (0, 0);
    for n in 0..configs {
        let (config, shape) = random_config(&mut r);
        let node = random_node(&mut r, &shape);
        let mut root = Properties::new();
        for (key, value) in &node {
            root.set(&["xds", "node", "metadata", key], value.clone());
        }
        let mut host = Host::builder(&path)
            .plugin_config(config.clone())
            .root_properties(root)
            .capture_logs(false)
            .build()?;
        let configured = host.configure()?;
        let authorizer = Authorizer::from_json(&config).ok().map(|mut a| {
            let facts = NodeFacts::read(|path| {
                node.iter()
                    .find(|(key, _)| meshguard_mesh::node::metadata_path(key) == path)
                    .map(|(_, v)| v.clone())
            });
            a.check_node(Some(&facts));
            a
        });
        let show = String::from_utf8_lossy(&config).into_owned();
        assert_eq!(
            configured,
            authorizer.is_some(),
            "seed {seed} config {n}: {show}"
        );
        for i in 0..12 {
            let case = random_case(&mut r, &shape);
            let mut spec = RequestSpec {
                headers: Default::default(),
                ..RequestSpec::get("/")
            };
            for (k, v) in &case.headers {
                spec.headers.add(k, v);
            }
            let mut props = Properties::new();
            for (k, v) in &case.props {
                props.set(k, v.clone());
            }
            let out = host.http_request(&spec.properties(props))?;
            let wasm_reason = out
                .local_response
                .as_ref()
                .and_then(|l| l.headers.get_str("x-meshguard-deny-reason"))
                .map(str::to_owned);
            let expected = match &authorizer {
                None => (false, Some("config_invalid".to_owned())),
                Some(a) => native(a, &case),
            };
            let dry_run = authorizer
                .as_ref()
                .is_some_and(|a| a.mode() == meshguard_mesh::Mode::DryRun);
            let at = || {
                format!(
                    "seed {seed} config {n} request {i}: {show}\nheaders {:?}\nprops {:?}",
                    case.headers, case.props
                )
            };
            if dry_run {
                // Dry-run lets everything through; the decision is only logged and counted.
                assert!(out.forwarded_upstream, "{}", at());
                assert!(out.local_response.is_none(), "{}", at());
            } else {
                let got = (out.forwarded_upstream && wasm_reason.is_none(), wasm_reason);
                assert_eq!(got, expected, "{}", at());
            }
            if expected.0 {
                allowed += 1;
            } else {
                denied += 1;
            }
            assert!(host.failure().is_none(), "{}: {:?}", at(), host.failure());
        }
    }
    // The generator must reach both outcomes, or the comparison proves little.
    assert!(
        allowed > configs && denied > configs,
        "{allowed} allowed, {denied} denied"
    );
    eprintln!("{allowed} allowed, {denied} denied: the same in the filter and natively");
    Ok(())
}
