//! Each WasmPlugin `failStrategy` as Envoy applies it (istio.io/istio `pilot/pkg/model/extensions.go`
//! `buildWasmConfig` maps FAIL_CLOSE → FAIL_CLOSED, FAIL_RELOAD → FAIL_RELOAD, FAIL_OPEN →
//! FAIL_OPEN), with the authorization filter of order-service as meshctl renders it, delivered by
//! ECDS as Istio delivers it:
//!
//! - a configuration the filter refuses, at start and as an update;
//! - a module that cannot load;
//! - a VM that traps while deciding a request (the test-only `test-trap` build).
//!
//! What callers observe is printed as a table and asserted; docs/manifests.md states it.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test assertions

use std::path::PathBuf;
use std::time::{Duration, Instant};

use meshguard_envoy_tests::client::{Call, Caller, Protocol};
use meshguard_envoy_tests::envoy::StartOptions;
use meshguard_envoy_tests::pki::Ca;
use meshguard_envoy_tests::sidecar::{self, FailurePolicy, Plugin, Sidecar, TlsChain};
use meshguard_envoy_tests::upstream::{App, REACHED_HEADER};
use meshguard_envoy_tests::{Envoy, EnvoyBinary};
use meshguard_mesh::NodeFacts;

const NS: &str = "meshguard";
const POLICIES: [FailurePolicy; 3] = [
    FailurePolicy::FailClosed,
    FailurePolicy::FailReload,
    FailurePolicy::FailOpen,
];

fn identity(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/{NS}/sa/{sa}")
}

const SNI: &str = "order-service.meshguard.svc.cluster.local";

struct Setup {
    rt: tokio::runtime::Runtime,
    ca: Ca,
    app: App,
    user: Caller,
    payment: Caller,
    root: PathBuf,
    bin: EnvoyBinary,
}

fn setup(name: &str) -> Setup {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ca = Ca::new().unwrap();
    let app = rt.block_on(App::start()).unwrap();
    let caller = |sa: &str| {
        Caller::new(
            &ca.cert_pem(),
            Some(ca.issue(Some(&identity(sa)), "c.test").unwrap()),
        )
        .unwrap()
    };
    let (user, payment) = (caller("user-service"), caller("payment-service"));
    let root = std::env::temp_dir().join(format!("meshguard-envoy-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    Setup {
        rt,
        ca,
        app,
        user,
        payment,
        root,
        bin: EnvoyBinary::istio().unwrap(),
    }
}

/// order-service's rendered authorization WasmPlugin with `policy`.
fn authz(policy: FailurePolicy) -> Plugin {
    let objects = sidecar::rendered(NS).unwrap();
    let object = sidecar::wasm_plugin(&objects, "order-service-authz").unwrap();
    let mut p = sidecar::rendered_plugin(object).unwrap();
    p.failure_policy = policy;
    p
}

impl Setup {
    fn sidecar(&self, name: &str, plugin: Plugin) -> Sidecar {
        Sidecar {
            dir: self.root.join(name),
            node: sidecar::node(Some(&NodeFacts {
                workload_name: Some("order-service".into()),
                namespace: Some(NS.into()),
                service_account: Some("order-service".into()),
            })),
            stats_config: None,
            ca_pem: self.ca.cert_pem(),
            chains: vec![TlsChain {
                server_name: None,
                cert: self
                    .ca
                    .issue(Some(&identity("order-service")), SNI)
                    .unwrap(),
            }],
            plaintext: false,
            plugins: vec![plugin],
            upstream: self.app.addr,
        }
    }

    fn start(&self, s: &Sidecar) -> Envoy {
        Envoy::start(
            &self.bin,
            &s.dir,
            &s.bootstrap().unwrap(),
            &StartOptions::default(),
        )
        .unwrap()
    }

    /// (status, reached the application, deny reason) of one GET by `caller`.
    fn get(&self, envoy: &Envoy, caller: &Caller, headers: &[(&str, &str)]) -> Outcome {
        let mut call = Call::get("/orders?user_id=7");
        for (k, v) in headers {
            call.headers.push(((*k).into(), v.as_bytes().to_vec()));
        }
        let out = self
            .rt
            .block_on(caller.send(
                envoy.listener(sidecar::LISTENER).unwrap(),
                SNI,
                Protocol::Http2,
                &call,
            ))
            .unwrap();
        Outcome {
            status: out.status,
            reached: out.header(REACHED_HEADER) == Some("reached"),
            reason: out.header("x-meshguard-deny-reason").map(str::to_owned),
            details: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Outcome {
    status: u16,
    reached: bool,
    reason: Option<String>,
    details: String,
}

impl Outcome {
    fn show(&self) -> String {
        match (&self.reason, self.reached) {
            (Some(r), _) => format!("{} {r}", self.status),
            (None, true) => format!("{} (application)", self.status),
            (None, false) => format!("{} (Envoy)", self.status),
        }
    }
}

/// A stat whose name contains `part` and ends with `suffix`; 0 if none.
fn stat_containing(envoy: &Envoy, part: &str, suffix: &str) -> u64 {
    let text = envoy.admin_get("/stats").unwrap();
    text.lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(n, _)| n.contains(part) && n.ends_with(suffix))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

fn wait_stat(envoy: &Envoy, part: &str, suffix: &str, at_least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = stat_containing(envoy, part, suffix);
        if v >= at_least || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_refused_configuration_or_module_is_rejected_by_envoy_under_every_policy() {
    let t = setup("refused");
    let garbage = t.root.join("not-a-module.wasm");
    std::fs::create_dir_all(&t.root).unwrap();
    std::fs::write(&garbage, b"\0asm\x01\0\0\0garbage").unwrap();
    let mut table = Vec::new();
    for policy in POLICIES {
        for (what, plugin) in [
            ("bad configuration at start", {
                let mut p = authz(policy);
                p.configuration = Some(r#"{"workload":"order-service""#.into());
                p
            }),
            ("module that cannot load", {
                let mut p = authz(policy);
                p.module = garbage.clone();
                p
            }),
        ] {
            let s = t.sidecar(&format!("{policy:?}-{}", what.replace(' ', "-")), plugin);
            let envoy = t.start(&s);
            assert!(
                wait_stat(&envoy, "extension_config_discovery", ".config_fail", 1) >= 1,
                "{policy:?} {what}: no config_fail"
            );
            let user = t.get(&envoy, &t.user, &[]);
            table.push(format!(
                "{policy:?} | {what} | user-service: {}",
                user.show()
            ));
            assert_eq!(
                (user.status, user.reached),
                (500, false),
                "{policy:?} {what}"
            );
            assert!(
                envoy.log_text().contains("Unable to create Wasm plugin"),
                "{policy:?} {what}: Envoy's reason in its log"
            );
        }
    }
    eprintln!("{}", table.join("\n"));
    assert_eq!(t.app.served(), 0, "nothing reached the application");
    let _ = std::fs::remove_dir_all(&t.root);
}

#[test]
fn a_refused_update_leaves_the_old_filter_deciding_under_every_policy() {
    let t = setup("update");
    let mut table = Vec::new();
    for policy in POLICIES {
        let good = authz(policy);
        let s = t.sidecar(&format!("{policy:?}"), good.clone());
        let envoy = t.start(&s);
        assert_eq!(t.get(&envoy, &t.user, &[]).status, 200);
        assert_eq!(
            t.get(&envoy, &t.payment, &[]).reason.as_deref(),
            Some("unknown_peer")
        );
        // A configuration the filter refuses, through ECDS: rejected, the old filter decides.
        let mut bad = good.clone();
        bad.configuration = Some(r#"{"workload":"order-service","allow":[{"from":1}]}"#.into());
        s.write_extension_config(0, &bad, 2).unwrap();
        assert!(
            wait_stat(&envoy, "extension_config_discovery", ".config_fail", 1) >= 1,
            "{policy:?}: the update was not rejected"
        );
        let (user, payment) = (t.get(&envoy, &t.user, &[]), t.get(&envoy, &t.payment, &[]));
        table.push(format!(
            "{policy:?} | refused update | user-service: {}, payment-service: {}",
            user.show(),
            payment.show()
        ));
        assert_eq!(
            user.status, 200,
            "{policy:?}: the old filter admits user-service"
        );
        assert_eq!(
            payment.reason.as_deref(),
            Some("unknown_peer"),
            "{policy:?}: the old filter still denies"
        );
        // An accepted update replaces it: the same policy in dry-run mode lets payment through.
        let mut dry = good.clone();
        dry.configuration = Some(
            good.configuration
                .clone()
                .unwrap()
                .replace(r#""mode":"enforce""#, r#""mode":"dry_run""#),
        );
        assert_ne!(dry.configuration, good.configuration);
        s.write_extension_config(0, &dry, 3).unwrap();
        assert!(
            wait_stat(&envoy, "extension_config_discovery", ".config_reload", 2) >= 2,
            "{policy:?}: the good update was not applied"
        );
        let payment = t.get(&envoy, &t.payment, &[]);
        assert_eq!(
            (payment.status, payment.reached),
            (200, true),
            "{policy:?}: dry run"
        );
    }
    eprintln!("{}", table.join("\n"));
    let _ = std::fs::remove_dir_all(&t.root);
}

#[test]
fn a_vm_that_traps_at_runtime_under_each_policy() {
    let Some(trap) = std::env::var_os("MESHGUARD_TRAP_FILTER") else {
        panic!("MESHGUARD_TRAP_FILTER is not set: scripts/common.sh build_trap_filter builds it");
    };
    let t = setup("trap");
    let mut table = Vec::new();
    for policy in POLICIES {
        let mut p = authz(policy);
        p.module = PathBuf::from(&trap);
        let s = t.sidecar(&format!("{policy:?}"), p);
        let envoy = t.start(&s);
        assert_eq!(
            t.get(&envoy, &t.user, &[]).status,
            200,
            "{policy:?}: before"
        );
        let trapped = t.get(&envoy, &t.user, &[("x-meshguard-test-trap", "1")]);
        assert!(
            envoy
                .wait_log(Duration::from_secs(5), |l| l.contains("unreachable"))
                .is_ok(),
            "{policy:?}: no trap in Envoy's log"
        );
        // What the next requests see, over a window longer than FAIL_RELOAD's first backoff
        // (1 s to 1.5 s, source/extensions/common/wasm/wasm.cc): the first outcome of each kind.
        let window = Instant::now() + Duration::from_secs(4);
        let mut after: Vec<String> = Vec::new();
        let mut last = (t.get(&envoy, &t.user, &[]), t.get(&envoy, &t.payment, &[]));
        while Instant::now() < window {
            let shown = format!(
                "user-service {}, payment-service {}",
                last.0.show(),
                last.1.show()
            );
            if after.last() != Some(&shown) {
                after.push(shown);
            }
            if policy == FailurePolicy::FailReload && last.0.status == 200 {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            last = (t.get(&envoy, &t.user, &[]), t.get(&envoy, &t.payment, &[]));
        }
        table.push(format!(
            "{policy:?} | VM trap | the trapping request: {}; then: {}",
            trapped.show(),
            after.join(" → ")
        ));
        assert_eq!(
            (trapped.status, trapped.reached),
            (503, false),
            "{policy:?}"
        );
        let (user, payment) = last;
        match policy {
            FailurePolicy::FailClosed => {
                assert_eq!(
                    (user.status, user.reached),
                    (503, false),
                    "{policy:?}: stays closed"
                );
                assert_eq!((payment.status, payment.reached), (503, false));
            }
            FailurePolicy::FailReload => {
                assert_eq!(user.status, 200, "{policy:?}: a new VM decides again");
                assert_eq!(payment.reason.as_deref(), Some("unknown_peer"));
                assert!(stat_containing(&envoy, "wasm", "vm_reload_success") >= 1);
            }
            FailurePolicy::FailOpen => {
                assert_eq!(user.status, 200, "{policy:?}");
                assert_eq!(
                    (payment.status, payment.reached),
                    (200, true),
                    "{policy:?}: the filter is skipped, so nothing is denied any more"
                );
            }
            FailurePolicy::Unspecified => unreachable!(),
        }
    }
    eprintln!("{}", table.join("\n"));
    let _ = std::fs::remove_dir_all(&t.root);
}
