//! Every shared scenario (`tests/scenarios`) in real Envoy, over HTTP/1.1 and HTTP/2 with real
//! clients (and tonic for gRPC): the decision, status, body, deny-reason header, gRPC status and
//! gRPC-web trailers, the counters in Envoy's stats and the filters' log lines at Envoy's log
//! level. Each scenario gets its own Envoy, started by pid and stopped when it is done, for each
//! pinned Envoy version.
//!
//! Where Envoy answers differently from the Proxy-Wasm hosts, Envoy is right; each such
//! difference is listed in tests/wasm-host/README.md with the test that pins it.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test assertions

use std::collections::BTreeMap;
use std::time::Duration;

use meshguard_envoy_tests::client::{Call, Caller, Protocol};
use meshguard_envoy_tests::envoy::StartOptions;
use meshguard_envoy_tests::pki::Ca;
use meshguard_envoy_tests::sidecar::{self, Plugin, Sidecar, TlsChain};
use meshguard_envoy_tests::upstream::{App, PATH_HEADER, REACHED_HEADER, STATUS_HEADER};
use meshguard_envoy_tests::{Envoy, EnvoyBinary};
use meshguard_scenarios::{
    grpc_web_trailers, Expect, Filter, HostQuirks, Peer, Scenario, DENY_REASON_HEADER, NAMESPACE,
};

/// Scenarios of a host that misbehaves (refuses a local reply or a metric): Envoy does not, so
/// they run only in the Proxy-Wasm hosts, which can.
fn host_only(s: &Scenario) -> bool {
    s.quirks != HostQuirks::default()
}

/// The scenario's filter as meshctl renders its WasmPlugin for order-service (name, root id,
/// phase, failure policy), with the scenario's configuration.
fn plugin(s: &Scenario) -> Plugin {
    let rendered = sidecar::rendered(NAMESPACE).expect("render");
    let name = match s.filter {
        Filter::Authz => "order-service-authz",
        Filter::Metrics => "order-service-metrics",
    };
    let object = sidecar::wasm_plugin(&rendered, name).expect("rendered WasmPlugin");
    let mut p = sidecar::rendered_plugin(object).expect("WasmPlugin with its compiled filter");
    p.configuration = Some(String::from_utf8(s.config.clone()).expect("scenario config is UTF-8"));
    p
}

/// The SNI a request asks for: one filter chain per local identity the scenario uses.
fn server_name(index: usize) -> String {
    format!("local-{index}.order-service.{NAMESPACE}.svc.cluster.local")
}

struct Run<'a> {
    s: &'a Scenario,
    envoy: Envoy,
    app: App,
    locals: Vec<Option<String>>,
    ca: &'a Ca,
    callers: BTreeMap<Option<String>, Caller>,
    failures: Vec<String>,
    /// Expected log lines: (text, count).
    logs: BTreeMap<String, usize>,
    /// Paths sent over HTTP/1.1 only.
    h1_only: Vec<String>,
    /// Requests that must have reached the application.
    forwarded: u64,
}

impl Run<'_> {
    fn caller(&mut self, peer: &Peer) -> Caller {
        let id = match peer {
            Peer::Id(id) => Some(id.clone()),
            Peer::Plaintext => None,
        };
        if let Some(c) = self.callers.get(&id) {
            return c.clone();
        }
        let pair = id
            .as_deref()
            .map(|id| self.ca.issue(Some(id), "caller.test").expect("client cert"));
        let c = Caller::new(&self.ca.cert_pem(), pair).expect("caller");
        self.callers.insert(id, c.clone());
        c
    }

    fn fail(&mut self, msg: String) {
        self.failures.push(msg);
    }

    async fn request(&mut self, i: usize, proto: Protocol) {
        let s = self.s;
        let r = &s.requests[i];
        let at = format!(
            "{} [{}] request {i} ({} {})",
            s.name,
            proto.label(),
            r.method,
            r.path.escape_debug()
        );
        if proto == Protocol::Http2 && r.path.bytes().any(|b| b.is_ascii_control()) {
            // No HTTP/2 client library sends a control character in `:path` (hyper and h2 refuse
            // it, as HTTP/2 requires); such a request is only sent over HTTP/1.1.
            self.h1_only.push(r.path.clone());
            return;
        }
        let mut call = Call::get(&r.path);
        call.method = r.method.clone();
        call.headers = r.headers.clone();
        call.headers.push((
            STATUS_HEADER.into(),
            r.upstream_status.to_string().into_bytes(),
        ));
        let local = self
            .locals
            .iter()
            .position(|l| *l == r.local_identity)
            .unwrap_or(0);
        let addr = self.envoy.listener(sidecar::LISTENER).expect("listener");
        let caller = self.caller(&r.peer);
        let out = match caller.send(addr, &server_name(local), proto, &call).await {
            Ok(out) => out,
            Err(e) => return self.fail(format!("{at}: {e}")),
        };
        let reached = out.header(REACHED_HEADER) == Some("reached");
        if matches!(r.envoy_expect(), Expect::Forward | Expect::ForwardAs(_)) {
            self.forwarded += 1;
        }
        let reason = out.header(DENY_REASON_HEADER).map(str::to_owned);
        let body = String::from_utf8_lossy(&out.body).into_owned();
        let mut check = |ok: bool, what: &str| {
            if !ok {
                self.failures.push(format!(
                    "{at}: {what}; got {} {:?} reason={reason:?} body={body:?}",
                    out.status, out.headers
                ));
            }
        };
        match r.envoy_expect() {
            Expect::Forward => {
                check(reached, "not forwarded to the application");
                check(
                    out.status == r.upstream_status as u16,
                    "application's status",
                );
                check(reason.is_none(), "a deny reason on a forwarded request");
            }
            Expect::Deny(want) => {
                check(!reached, "reached the application");
                check(out.status == 403, "status 403");
                check(reason.as_deref() == Some(want), "deny reason header");
                check(
                    out.header("content-type") == Some("application/json"),
                    "content-type",
                );
                check(
                    body.contains(&format!(r#""reason":"{want}""#)),
                    "JSON body names the reason",
                );
            }
            Expect::DenyGrpc(want) => {
                check(!reached, "reached the application");
                check(out.status == 200, "gRPC status in HTTP 200");
                check(out.header("grpc-status") == Some("7"), "grpc-status 7");
                check(out.header("grpc-message") == Some(want), "grpc-message");
                check(reason.as_deref() == Some(want), "deny reason header");
            }
            Expect::DenyGrpcWeb(want, ct) => {
                check(!reached, "reached the application");
                check(out.status == 200, "gRPC-web status in HTTP 200");
                check(out.header("content-type") == Some(ct), "content-type");
                check(out.header("grpc-status") == Some("7"), "grpc-status 7");
                check(out.header("grpc-message") == Some(want), "grpc-message");
                let text = ct.starts_with("application/grpc-web-text");
                check(
                    grpc_web_trailers(&out.body, text).as_deref()
                        == Some(&format!("grpc-status:7\r\ngrpc-message:{want}\r\n")[..]),
                    "trailer frame",
                );
            }
            Expect::ForwardAs(path) => {
                check(reached, "not forwarded to the application");
                check(
                    out.header(PATH_HEADER) == Some(path),
                    "the path the application got",
                );
            }
            Expect::EnvoyReply(status) => {
                check(!reached, "reached the application");
                check(out.status == *status, "Envoy's own status");
                check(
                    reason.is_none(),
                    "a deny reason from a filter that did not run",
                );
            }
            Expect::EnvoyReplyGrpc(grpc) => {
                check(!reached, "reached the application");
                check(out.status == 200, "gRPC status in HTTP 200");
                check(
                    out.header("grpc-status") == Some(grpc),
                    "Envoy's grpc-status",
                );
                check(
                    reason.is_none(),
                    "a deny reason from a filter that did not run",
                );
            }
            Expect::Reset => check(false, "Reset is a host-only expectation"),
        }
        let line = match (r.envoy_expect(), s.filter) {
            (Expect::Forward | Expect::ForwardAs(_), Filter::Authz) => {
                Some("meshguard-authz: allow source=".to_owned())
            }
            (Expect::Deny(w) | Expect::DenyGrpc(w) | Expect::DenyGrpcWeb(w, _), Filter::Authz) => {
                Some(format!("meshguard-authz: deny reason={w} "))
            }
            _ => None,
        };
        if let Some(line) = line {
            *self.logs.entry(line).or_default() += 1;
        }
        // A real gRPC client on the same request, for the plain gRPC content type.
        let grpc_expect = match r.envoy_expect() {
            Expect::DenyGrpc(want) => Some((tonic::Code::PermissionDenied, *want)),
            Expect::EnvoyReplyGrpc(_) => Some((tonic::Code::Unknown, "")),
            _ => None,
        };
        if let (Some((code, want)), Protocol::Http2) = (grpc_expect, proto) {
            let ct = r.headers.iter().find(|(k, _)| k == "content-type");
            if ct.is_some_and(|(_, v)| v == b"application/grpc") {
                match caller.grpc_unary(addr, &server_name(local), &r.path).await {
                    Ok(status) => {
                        if status.code() != code || status.message() != want {
                            self.fail(format!("{at}: tonic saw {status:?}, not {code:?} {want:?}"));
                        }
                        if code == tonic::Code::PermissionDenied {
                            *self
                                .logs
                                .entry(format!("meshguard-authz: deny reason={want} "))
                                .or_default() += 1;
                        }
                    }
                    Err(e) => self.fail(format!("{at}: tonic: {e}")),
                }
            }
        }
    }
}

async fn run(bin: &EnvoyBinary, ca: &Ca, s: &Scenario, dir: &std::path::Path) -> Vec<String> {
    let mut locals: Vec<Option<String>> = Vec::new();
    for r in &s.requests {
        if !locals.contains(&r.local_identity) {
            locals.push(r.local_identity.clone());
        }
    }
    let chains = locals
        .iter()
        .enumerate()
        .map(|(i, id)| TlsChain {
            server_name: Some(server_name(i)),
            cert: ca
                .issue(id.as_deref(), &server_name(i))
                .expect("server cert"),
        })
        .collect();
    let app = App::start().await.expect("application");
    let sidecar = Sidecar {
        dir: dir.to_owned(),
        node: sidecar::node(s.node.as_ref()),
        stats_config: None,
        ca_pem: ca.cert_pem(),
        chains,
        plaintext: s.requests.iter().any(|r| r.peer == Peer::Plaintext),
        plugins: vec![plugin(s)],
        upstream: app.addr,
    };
    let bootstrap = sidecar.bootstrap().expect("bootstrap");
    let envoy = match Envoy::start(bin, dir, &bootstrap, &StartOptions::default()) {
        Ok(e) => e,
        Err(e) => return vec![format!("{}: Envoy did not start: {e}", s.name)],
    };
    let mut run = Run {
        s,
        envoy,
        app,
        locals,
        ca,
        callers: BTreeMap::new(),
        failures: Vec::new(),
        logs: BTreeMap::new(),
        h1_only: Vec::new(),
        forwarded: 0,
    };
    let many = s.requests.len() > 100;
    for i in 0..s.requests.len() {
        run.request(i, Protocol::Http2).await;
        if !many {
            run.request(i, Protocol::Http1).await;
        }
    }
    let passes = if many { 1 } else { 2 };
    for (name, value) in &s.counters {
        let stat = format!("wasmcustom.{name}");
        let want = value * passes;
        match run
            .envoy
            .wait_stat(&stat, Duration::from_secs(5), |v| v == Some(want))
        {
            Ok(Some(v)) if v == want => {}
            other => run.fail(format!("{}: {stat} = {other:?}, want {want}", s.name)),
        }
    }
    if let Some(max) = s.max_series {
        let text = run.envoy.admin_get("/stats").expect("stats");
        let n = text
            .lines()
            .filter(|l| l.starts_with("wasmcustom."))
            .count();
        if n > max {
            run.fail(format!("{}: {n} series in Envoy, at most {max}", s.name));
        }
    }
    let logs = run.logs.clone();
    let seen = run.envoy.wait_log(Duration::from_secs(5), |log| {
        logs.iter()
            .all(|(line, n)| log.matches(line.as_str()).count() == *n)
    });
    if let Err(log) = seen {
        for (line, n) in &logs {
            let got = log.matches(line.as_str()).count();
            if got != *n {
                run.fail(format!("{}: {got} log lines `{line}`, want {n}", s.name));
            }
        }
    }
    if run.app.served() != run.forwarded {
        run.fail(format!(
            "{}: the application served {} requests, {} were to be forwarded",
            s.name,
            run.app.served(),
            run.forwarded
        ));
    }
    if run.h1_only.iter().any(|p| p != "/orders/\tadmin") {
        run.fail(format!(
            "{}: sent over HTTP/1.1 only: {:?}",
            s.name, run.h1_only
        ));
    }
    run.failures
}

fn every_scenario_in(bin: &EnvoyBinary) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ca = Ca::new().unwrap();
    let root = tempfile_dir(&format!("scenarios-{}", bin.version));
    let all = meshguard_scenarios::all();
    let (envoy_ones, host_ones): (Vec<&Scenario>, Vec<&Scenario>) =
        all.iter().partition(|s| !host_only(s));
    assert_eq!(
        host_ones.iter().map(|s| s.name).collect::<Vec<_>>(),
        [
            "a-refused-local-reply-resets-the-stream",
            "a-refused-metric-changes-no-decision",
            "a-refused-metric-is-not-a-trap"
        ],
        "only misbehaving-host scenarios stay out of Envoy"
    );
    let mut failures = Vec::new();
    // MESHGUARD_SCENARIO=<name> runs only that scenario (when looking into one).
    let only = std::env::var("MESHGUARD_SCENARIO").ok();
    for (i, s) in envoy_ones.iter().enumerate() {
        if only.as_deref().is_some_and(|o| o != s.name) {
            continue;
        }
        let dir = root.join(format!("{i}-{}", s.name));
        let started = std::time::Instant::now();
        let found = rt.block_on(run(bin, &ca, s, &dir));
        eprintln!(
            "Envoy {}: {} ({} requests): {} in {:.1} s",
            bin.version,
            s.name,
            s.requests.len(),
            if found.is_empty() {
                "as expected".to_owned()
            } else {
                format!("{} difference(s)", found.len())
            },
            started.elapsed().as_secs_f64()
        );
        for f in &found {
            eprintln!("    {f}");
        }
        failures.extend(found);
    }
    assert!(
        failures.is_empty(),
        "Envoy {} disagrees with {} expectation(s):\n{}",
        bin.version,
        failures.len(),
        failures.join("\n")
    );
    let _ = std::fs::remove_dir_all(&root);
}

fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("meshguard-envoy-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn every_scenario_in_the_envoy_of_the_istio_line() {
    every_scenario_in(&EnvoyBinary::istio().unwrap());
}

#[test]
fn every_scenario_in_the_newest_envoy() {
    let all = EnvoyBinary::all().unwrap();
    every_scenario_in(&all[1]);
}
