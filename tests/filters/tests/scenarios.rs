//! The shared scenarios (`tests/scenarios`) through the compiled filters in the workspace's
//! Proxy-Wasm host. `tests/second-host` runs the same ones in the crates.io `proxy-wasm-host`.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test assertions

use meshguard_filter_tests::module;
use meshguard_scenarios::{
    grpc_web_trailers, Expect, Peer, Scenario, DENY_REASON_HEADER, RESPONSE_DETAILS,
    UPSTREAM_GRPC_STATUS,
};
use proxy_wasm_host::{Host, HttpOutcome, Properties, RequestSpec, ResponseSpec, Status};

fn host(s: &Scenario) -> anyhow::Result<(Host, bool)> {
    let root = s
        .node
        .as_ref()
        .map_or_else(Properties::new, meshguard_filter_tests::node_properties);
    let mut b = Host::builder(module(s.filter.module())?)
        .plugin_config(s.config.clone())
        .root_properties(root)
        .capture_logs(false);
    if s.quirks.refuse_local_response {
        b = b.refuse("proxy_send_local_response", Status::InternalFailure);
    }
    if s.quirks.refuse_metrics {
        b = b.refuse("proxy_define_metric", Status::InternalFailure);
    }
    let mut h = b.build()?;
    let ok = h.configure()?;
    Ok((h, ok))
}

fn check(s: &Scenario, i: usize, expect: &Expect, out: &HttpOutcome) {
    let at = format!("{} request {i}", s.name);
    let local = out.local_response.as_ref();
    let reason = local.and_then(|l| l.headers.get_str(DENY_REASON_HEADER));
    match expect {
        Expect::Forward => {
            assert!(local.is_none(), "{at}: denied {reason:?}");
            assert!(out.forwarded_upstream, "{at}: not forwarded");
        }
        Expect::Reset => {
            assert!(!out.forwarded_upstream, "{at}: forwarded");
            assert!(out.reset, "{at}: stream not reset");
        }
        Expect::ForwardAs(_) | Expect::EnvoyReply(_) | Expect::EnvoyReplyGrpc(_) => {
            panic!("{at}: an expectation only Envoy has (Request::envoy), not a host's")
        }
        Expect::Deny(r) | Expect::DenyGrpc(r) | Expect::DenyGrpcWeb(r, _) => {
            let local = local.unwrap_or_else(|| panic!("{at}: no local reply"));
            assert!(!out.forwarded_upstream, "{at}: forwarded");
            assert_eq!(reason, Some(*r), "{at}");
            assert_eq!(local.details, RESPONSE_DETAILS, "{at}");
            match expect {
                Expect::Deny(_) => {
                    assert_eq!(local.status_code, 403, "{at}");
                    assert_eq!(out.status(), Some(403), "{at}");
                    assert_eq!(
                        local.headers.get_str("content-type"),
                        Some("application/json"),
                        "{at}"
                    );
                    let body = String::from_utf8_lossy(&local.body);
                    assert!(body.contains(&format!(r#""reason":"{r}""#)), "{at}: {body}");
                }
                Expect::DenyGrpc(_) => {
                    assert_eq!(local.grpc_status, 7, "{at}");
                    assert_eq!(out.status(), Some(200), "{at}");
                    assert_eq!(out.response_header("grpc-status"), Some("7"), "{at}");
                    assert_eq!(out.response_header("grpc-message"), Some(*r), "{at}");
                }
                Expect::DenyGrpcWeb(_, ct) => {
                    assert_eq!(local.status_code, 200, "{at}");
                    assert_eq!(out.status(), Some(200), "{at}");
                    assert_eq!(out.response_header("content-type"), Some(*ct), "{at}");
                    assert_eq!(out.response_header("grpc-status"), Some("7"), "{at}");
                    assert_eq!(out.response_header("grpc-message"), Some(*r), "{at}");
                    let text = ct.starts_with("application/grpc-web-text");
                    let trailers = grpc_web_trailers(&out.response_body, text)
                        .unwrap_or_else(|| panic!("{at}: no trailer frame"));
                    assert_eq!(
                        trailers,
                        format!("grpc-status:7\r\ngrpc-message:{r}\r\n"),
                        "{at}"
                    );
                }
                _ => {}
            }
        }
    }
}

fn run(s: &Scenario) -> anyhow::Result<()> {
    let (mut h, configured) = host(s)?;
    assert_eq!(configured, s.configures, "{}: on_configure", s.name);
    for (i, r) in s.requests.iter().enumerate() {
        let mut spec = RequestSpec::new(&r.method, &r.path);
        let mut response = ResponseSpec::new(r.upstream_status);
        for (k, v) in &r.headers {
            if k == UPSTREAM_GRPC_STATUS {
                response = response.header("grpc-status", v);
            } else {
                spec = spec.header(k, v);
            }
        }
        let mut props = match &r.peer {
            Peer::Id(id) => Properties::new().mtls_peer(id),
            Peer::Plaintext => Properties::new().plaintext(),
        };
        if let Some(local) = &r.local_identity {
            props.set(
                &["connection", "uri_san_local_certificate"],
                local.as_bytes().to_vec(),
            );
        }
        let out = h.http_request(&spec.properties(props).response(response))?;
        check(s, i, &r.expect, &out);
    }
    assert!(h.failure().is_none(), "{}: {:?}", s.name, h.failure());
    for (name, value) in &s.counters {
        assert_eq!(h.counter(name), Some(*value), "{}: {name}", s.name);
    }
    if let Some(max) = s.max_series {
        let n = h.metric_names().len();
        assert!(n <= max, "{}: {n} series, at most {max}", s.name);
    }
    Ok(())
}

#[test]
fn every_scenario_in_the_workspace_host() -> anyhow::Result<()> {
    let all = meshguard_scenarios::all();
    assert!(all.len() >= 15, "{} scenarios", all.len());
    for s in &all {
        run(s)?;
    }
    Ok(())
}
