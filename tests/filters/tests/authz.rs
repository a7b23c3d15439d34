//! The compiled authorization filter, run in the Proxy-Wasm host the way Envoy runs it.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test assertions

use meshguard_filter_tests::{authz_config, from_service, host, host_configure, identity, AUTHZ};
use meshguard_mesh::Mode;
use proxy_wasm_host::{Action, Phase, Properties, RequestSpec};

type R = anyhow::Result<()>;

fn deny_reason(outcome: &proxy_wasm_host::HttpOutcome) -> Option<String> {
    outcome
        .local_response
        .as_ref()
        .and_then(|l| l.headers.get_str("x-meshguard-deny-reason"))
        .map(str::to_owned)
}

fn assert_denied(outcome: &proxy_wasm_host::HttpOutcome, reason: &str) {
    let local = outcome.local_response.as_ref().expect("a local 403");
    assert_eq!(local.status_code, 403);
    assert_eq!(deny_reason(outcome).as_deref(), Some(reason));
    assert_eq!(
        local.headers.get_str("content-type"),
        Some("application/json")
    );
    let body: serde_json_lite::Body = serde_json_lite::parse(&local.body);
    assert_eq!(body.reason, reason);
    assert!(
        !outcome.forwarded_upstream,
        "a denied request must not reach the upstream"
    );
    assert_eq!(outcome.action(Phase::RequestHeaders), Some(Action::Pause));
    assert_eq!(outcome.status(), Some(403));
}

/// The 403 body is tiny JSON; parse it without pulling a JSON crate into this test.
mod serde_json_lite {
    pub struct Body {
        pub reason: String,
    }
    pub fn parse(body: &[u8]) -> Body {
        let text = std::str::from_utf8(body).expect("UTF-8 body");
        assert!(
            text.starts_with('{') && text.ends_with('}'),
            "not JSON: {text}"
        );
        assert!(text.contains(r#""error":"forbidden""#), "{text}");
        let reason = text
            .split(r#""reason":""#)
            .nth(1)
            .and_then(|r| r.split('"').next())
            .expect("a reason field")
            .to_owned();
        Body { reason }
    }
}

#[test]
fn admits_the_caller_the_policy_names() -> R {
    let mut h = host(AUTHZ, &authz_config("order-service", Mode::Enforce)?)?;
    let out = h.http_request(&from_service("user-service", "GET", "/orders?user_id=7"))?;
    assert!(out.local_response.is_none());
    assert!(out.forwarded_upstream);
    assert_eq!(out.action(Phase::RequestHeaders), Some(Action::Continue));
    assert_eq!(out.status(), Some(200));
    assert_eq!(
        h.counter("meshguard_allowed_total.source=user-service.destination=order-service"),
        Some(1)
    );
    assert!(h.unimplemented_calls().is_empty());
    Ok(())
}

#[test]
fn denies_a_caller_the_policy_does_not_name() -> R {
    // payment-service may not call order-service; nor may user-service call payment-service.
    let mut order = host(AUTHZ, &authz_config("order-service", Mode::Enforce)?)?;
    assert_denied(
        &order.http_request(&from_service("payment-service", "GET", "/orders"))?,
        "unknown_peer",
    );
    let mut payment = host(AUTHZ, &authz_config("payment-service", Mode::Enforce)?)?;
    assert_denied(
        &payment.http_request(&from_service("user-service", "POST", "/pay"))?,
        "unknown_peer",
    );
    assert!(
        payment
            .http_request(&from_service("order-service", "POST", "/pay"))?
            .forwarded_upstream
    );
    // Nobody may call user-service.
    let mut user = host(AUTHZ, &authz_config("user-service", Mode::Enforce)?)?;
    assert_denied(
        &user.http_request(&from_service("order-service", "GET", "/"))?,
        "unknown_peer",
    );
    // A denied service of the mesh is named in the denial metric (and the log).
    assert_eq!(
        order.counter(
            "meshguard_denials_total.source=payment-service.destination=order-service.reason=unknown_peer.mode=enforce"
        ),
        Some(1)
    );
    Ok(())
}

#[test]
fn identity_from_another_namespace_or_trust_domain_is_unknown() -> R {
    let mut h = host(AUTHZ, &authz_config("order-service", Mode::Enforce)?)?;
    for id in [
        "spiffe://cluster.local/ns/other/sa/user-service",
        "spiffe://evil.example/ns/shop/sa/user-service",
    ] {
        let req = RequestSpec::get("/orders").properties(Properties::new().mtls_peer(id));
        assert_denied(&h.http_request(&req)?, "unknown_peer");
    }
    // Identities outside the mesh are counted as `unknown`: label values stay a closed set.
    assert_eq!(
        h.counter(
            "meshguard_denials_total.source=unknown.destination=order-service.reason=unknown_peer.mode=enforce"
        ),
        Some(2)
    );
    Ok(())
}

#[test]
fn denies_without_mtls() -> R {
    let mut h = host(AUTHZ, &authz_config("order-service", Mode::Enforce)?)?;
    // Plaintext connection.
    let plain = RequestSpec::get("/orders").properties(Properties::new().plaintext());
    assert_denied(&h.http_request(&plain)?, "no_mtls");
    // The sidecar says nothing at all about the connection.
    assert_denied(&h.http_request(&RequestSpec::get("/orders"))?, "no_mtls");
    // A forged header claiming an identity changes nothing.
    let forged = RequestSpec::get("/orders")
        .header(
            "x-forwarded-client-cert",
            format!("URI={}", identity("user-service")),
        )
        .properties(Properties::new().plaintext());
    assert_denied(&h.http_request(&forged)?, "no_mtls");
    // `connection.mtls` in a form Envoy never sends is not "true".
    let odd = RequestSpec::get("/orders")
        .properties(Properties::new().with(&["connection", "mtls"], vec![1, 0]));
    assert_denied(&h.http_request(&odd)?, "no_mtls");
    // A peer URI SAN comes from the peer's certificate, which is what `connection.mtls` means in
    // Envoy (source/extensions/filters/common/expr/context.cc, `ConnectionLookup`): the filter
    // reads `connection.mtls` only for a request without one.
    let san_only = RequestSpec::get("/orders").properties(
        Properties::new()
            .mtls_peer(&identity("user-service"))
            .with(&["connection", "mtls"], vec![1, 0]),
    );
    assert!(h.http_request(&san_only)?.local_response.is_none());
    Ok(())
}

#[test]
fn denies_without_identity() -> R {
    let mut h = host(AUTHZ, &authz_config("order-service", Mode::Enforce)?)?;
    let mut props = Properties::new().mtls_peer(&identity("user-service"));
    props.remove(&["connection", "uri_san_peer_certificate"]);
    let req = RequestSpec::get("/orders").properties(props);
    assert_denied(&h.http_request(&req)?, "no_peer_identity");
    let empty = RequestSpec::get("/orders").properties(Properties::new().mtls_peer(""));
    assert_denied(&h.http_request(&empty)?, "no_peer_identity");
    let dns = RequestSpec::get("/orders")
        .properties(Properties::new().mtls_peer("user-service.shop.svc.cluster.local"));
    assert_denied(&h.http_request(&dns)?, "invalid_peer_identity");
    let binary = RequestSpec::get("/orders").properties(Properties::new().mtls_peer("x").with(
        &["connection", "uri_san_peer_certificate"],
        vec![0xff, 0xfe, 0],
    ));
    assert_denied(&h.http_request(&binary)?, "invalid_peer_identity");
    Ok(())
}

fn narrowed_config(mode: &str) -> String {
    format!(
        r#"{{"workload":"order-service","mode":"{mode}","log_level":"debug","allow":[
            {{"from":"{}","service":"user-service","methods":["GET","POST"],"path_prefixes":["/orders"]}}]}}"#,
        identity("user-service")
    )
}

#[test]
fn narrows_by_method_and_path() -> R {
    let mut h = host(AUTHZ, &narrowed_config("enforce"))?;
    let ok = |h: &mut proxy_wasm_host::Host, m: &str, p: &str| -> anyhow::Result<bool> {
        Ok(h.http_request(&from_service("user-service", m, p))?
            .forwarded_upstream)
    };
    assert!(ok(&mut h, "GET", "/orders")?);
    assert!(ok(&mut h, "POST", "/orders/17/items")?);
    assert!(ok(&mut h, "GET", "/orders?user_id=1")?);
    for (method, path, reason) in [
        ("DELETE", "/orders/17", "method_not_allowed"),
        ("get", "/orders", "method_not_allowed"),
        ("GET", "/admin", "path_not_allowed"),
        ("GET", "/orders-admin", "path_not_allowed"),
        ("GET", "/orders/../admin", "path_not_normalized"),
        ("GET", "/orders/%2e%2e/admin", "path_not_normalized"),
        ("GET", "/orders//x", "path_not_normalized"),
        ("GET", "orders", "invalid_path"),
    ] {
        let out = h.http_request(&from_service("user-service", method, path))?;
        assert_denied(&out, reason);
    }
    let mut no_method = from_service("user-service", "GET", "/orders");
    no_method.headers.remove(":method");
    assert_denied(&h.http_request(&no_method)?, "missing_method");
    let mut no_path = from_service("user-service", "GET", "/orders");
    no_path.headers.remove(":path");
    assert_denied(&h.http_request(&no_path)?, "invalid_path");
    Ok(())
}

#[test]
fn dry_run_logs_and_counts_but_lets_requests_through() -> R {
    let mut h = host(AUTHZ, &authz_config("order-service", Mode::DryRun)?)?;
    let out = h.http_request(&from_service("payment-service", "DELETE", "/orders"))?;
    assert!(out.local_response.is_none());
    assert!(out.forwarded_upstream);
    assert_eq!(out.status(), Some(200));
    assert!(
        out.logs.iter().any(|l| l
            .message
            .contains("deny reason=unknown_peer source=payment-service")
            && l.message.contains("mode=dry_run")),
        "{:?}",
        out.logs
    );
    assert_eq!(
        h.counter(
            "meshguard_denials_total.source=payment-service.destination=order-service.reason=unknown_peer.mode=dry_run"
        ),
        Some(1)
    );
    // The narrowed policy in dry-run: a wrong path is let through too, and counted.
    let mut narrowed = host(AUTHZ, &narrowed_config("dry_run"))?;
    let out = narrowed.http_request(&from_service("user-service", "GET", "/admin"))?;
    assert!(out.forwarded_upstream);
    assert_eq!(
        narrowed.counter(
            "meshguard_denials_total.source=user-service.destination=order-service.reason=path_not_allowed.mode=dry_run"
        ),
        Some(1)
    );
    Ok(())
}

#[test]
fn every_decision_is_logged_at_the_configured_level() -> R {
    use proxy_wasm_host::LogLevel;
    let mut h = host(AUTHZ, &narrowed_config("enforce"))?; // log_level debug
    let allowed = h.http_request(&from_service("user-service", "GET", "/orders"))?;
    let denied = h.http_request(&from_service("user-service", "GET", "/admin"))?;
    let decision = |o: &proxy_wasm_host::HttpOutcome, what: &str| {
        o.logs
            .iter()
            .find(|l| l.message.starts_with(&format!("meshguard-authz: {what}")))
            .map(|l| l.level)
    };
    assert_eq!(decision(&allowed, "allow"), Some(LogLevel::Debug));
    assert_eq!(decision(&denied, "deny"), Some(LogLevel::Debug));
    let mut warn = host(
        AUTHZ,
        &narrowed_config("enforce").replace(r#""log_level":"debug""#, r#""log_level":"warn""#),
    )?;
    let out = warn.http_request(&from_service("user-service", "GET", "/admin"))?;
    assert_eq!(decision(&out, "deny"), Some(LogLevel::Warn));
    Ok(())
}

#[test]
fn decisions_below_the_hosts_log_level_are_not_logged() -> R {
    use proxy_wasm_host::LogLevel;
    let config = narrowed_config("enforce"); // log_level debug
    let mut h = proxy_wasm_host::Host::builder(meshguard_filter_tests::module(AUTHZ)?)
        .plugin_config(config.clone())
        .root_properties(meshguard_filter_tests::node_for(config.as_bytes()))
        .log_level(LogLevel::Warn)
        .build_configured()?;
    let out = h.http_request(&from_service("user-service", "GET", "/admin"))?;
    assert!(out.local_response.is_some());
    assert!(
        out.logs.iter().all(|l| !l.message.contains("deny reason=")),
        "{:?}",
        out.logs
    );
    // The filter re-reads the host's level every second (`proxy_on_tick`): raised, and a tick
    // later, the same decision is logged.
    assert_eq!(h.tick_period(), Some(std::time::Duration::from_secs(1)));
    h.set_log_level(LogLevel::Debug);
    h.tick()?;
    let out = h.http_request(&from_service("user-service", "GET", "/admin"))?;
    assert!(
        out.logs
            .iter()
            .any(|l| l.message.contains("deny reason=path_not_allowed")),
        "{:?}",
        out.logs
    );
    Ok(())
}

#[test]
fn malformed_configuration_fails_configure_and_denies_everything() -> R {
    let big = format!(
        r#"{{"workload":"order-service","allow":[],"x":"{}"}}"#,
        "a".repeat(meshguard_mesh::config::MAX_CONFIG_BYTES)
    );
    let deep = "[".repeat(50_000);
    let cases: Vec<(&[u8], &[&str])> = vec![
        (b"", &["no plugin configuration", "configuration is empty"]),
        (b"not json", &["at `.`"]),
        (
            br#"{"workload":"order-service"}"#,
            &["missing field `allow`"],
        ),
        (
            br#"{"workload":"order-service","allow":[{"from":"spiffe://x","service":"a"}]}"#,
            &["at `allow[0].from`"],
        ),
        (
            br#"{"workload":"order-service","allow":[],"mode":"permissive"}"#,
            &["at `mode`"],
        ),
        (
            br#"{"workload":"order-service","allow":[],"allow_all":true}"#,
            &["at `allow_all`"],
        ),
        (b"\xff\xfe\xfd", &["at `.`"]),
        (deep.as_bytes(), &["invalid type: sequence"]),
        (big.as_bytes(), &["more than the"]),
    ];
    for (config, expected) in cases {
        let (mut h, configured) = host_configure(AUTHZ, config)?;
        let shown = String::from_utf8_lossy(&config[..config.len().min(60)]).into_owned();
        assert!(!configured, "configure accepted {shown:?}");
        let clear_line = h.logs().iter().any(|l| {
            l.level == proxy_wasm_host::LogLevel::Error
                && l.message.starts_with("meshguard-authz: ")
                && l.message.ends_with("denying every request")
                && expected.iter().any(|e| l.message.contains(e))
        });
        assert!(
            clear_line,
            "{shown:?}: no error line naming {expected:?}: {:?}",
            h.logs()
        );
        // Even if the proxy kept the VM, nothing is admitted.
        let out = h.http_request(&from_service("user-service", "GET", "/orders"))?;
        assert_denied(&out, "config_invalid");
    }
    Ok(())
}

#[test]
fn a_bad_reconfiguration_does_not_keep_the_old_policy() -> R {
    let mut h = host(AUTHZ, &authz_config("order-service", Mode::Enforce)?)?;
    assert!(
        h.http_request(&from_service("user-service", "GET", "/orders"))?
            .forwarded_upstream
    );
    assert!(!h.configure_with(b"{".to_vec())?);
    assert_denied(
        &h.http_request(&from_service("user-service", "GET", "/orders"))?,
        "config_invalid",
    );
    Ok(())
}

#[test]
fn huge_and_binary_header_values_are_handled() -> R {
    let mut h = host(AUTHZ, &narrowed_config("enforce"))?;
    let long_path = format!("/orders/{}", "a".repeat(1 << 20));
    assert!(
        h.http_request(&from_service("user-service", "GET", &long_path))?
            .forwarded_upstream
    );
    let mut binary = from_service("user-service", "GET", "/orders");
    binary.headers.set(":path", b"/orders/\xff\xfe".as_slice());
    assert_denied(&h.http_request(&binary)?, "invalid_path");
    let mut binary_method = from_service("user-service", "GET", "/orders");
    binary_method.headers.set(":method", b"G\xffT".as_slice());
    assert_denied(&h.http_request(&binary_method)?, "method_not_allowed");
    let huge_id = format!("spiffe://cluster.local/ns/shop/sa/{}", "u".repeat(1 << 20));
    let req = RequestSpec::get("/orders").properties(Properties::new().mtls_peer(&huge_id));
    assert_denied(&h.http_request(&req)?, "invalid_peer_identity");
    // Many unrelated headers with hostile contents change nothing.
    let mut noisy = from_service("user-service", "GET", "/orders");
    for i in 0..500 {
        noisy
            .headers
            .add(format!("x-junk-{i}"), vec![0u8, 0xff, b'\n', b'"']);
    }
    assert!(h.http_request(&noisy)?.forwarded_upstream);
    assert!(h.failure().is_none());
    Ok(())
}

#[test]
fn grpc_callers_get_permission_denied() -> R {
    let mut h = host(AUTHZ, &authz_config("order-service", Mode::Enforce)?)?;
    let req = from_service("payment-service", "POST", "/shop.Orders/List")
        .header("content-type", "application/grpc");
    let out = h.http_request(&req)?;
    let local = out.local_response.as_ref().expect("a local reply");
    assert_eq!(local.grpc_status, 7, "PERMISSION_DENIED");
    assert!(!out.forwarded_upstream);
    assert_eq!(out.response_header("grpc-status"), Some("7"));
    assert_eq!(out.response_header("grpc-message"), Some("unknown_peer"));
    assert_eq!(
        out.response_header("x-meshguard-deny-reason"),
        Some("unknown_peer")
    );
    // An admitted gRPC caller goes through.
    let ok = from_service("user-service", "POST", "/shop.Orders/List")
        .header("content-type", "application/grpc+proto");
    assert!(h.http_request(&ok)?.forwarded_upstream);
    Ok(())
}
