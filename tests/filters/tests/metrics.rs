//! The compiled metrics filter, run in the Proxy-Wasm host: metric values after a known sequence.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test assertions

use std::time::Duration;

use meshguard_filter_tests::{
    extract_tags, from_service, host, host_configure, metrics_config, METRICS,
};
use meshguard_mesh::metrics;
use proxy_wasm_host::{MetricType, Properties, RequestSpec, ResponseSpec};

type R = anyhow::Result<()>;

#[test]
fn counts_and_times_a_known_sequence() -> R {
    let mut h = host(METRICS, &metrics_config("order-service")?)?;
    let ok = |latency_ms: u64| ResponseSpec::new(200).latency(Duration::from_millis(latency_ms));
    // 3 GETs from user-service answered 200 in 10, 20 and 30 ms.
    for ms in [10, 20, 30] {
        h.http_request(&from_service("user-service", "GET", "/orders").response(ok(ms)))?;
    }
    // 2 POSTs from user-service answered 503.
    for _ in 0..2 {
        h.http_request(
            &from_service("user-service", "POST", "/orders")
                .response(ResponseSpec::new(503).latency(Duration::from_millis(5))),
        )?;
    }
    // 1 from payment-service (known to the mesh but not a caller of order-service), 404.
    h.http_request(&from_service("payment-service", "GET", "/x").response(ResponseSpec::new(404)))?;
    // 1 from an identity outside the mesh, 1 without mTLS, 1 with an unusual method.
    h.http_request(
        &RequestSpec::get("/orders")
            .properties(Properties::new().mtls_peer("spiffe://cluster.local/ns/other/sa/x")),
    )?;
    h.http_request(&RequestSpec::get("/orders").properties(Properties::new().plaintext()))?;
    h.http_request(&from_service("user-service", "BREW", "/coffee"))?;

    let count = |source, method, class| {
        h.counter(&metrics::requests_total(
            source,
            "order-service",
            method,
            class,
        ))
    };
    assert_eq!(count("user-service", "GET", "2xx"), Some(3));
    assert_eq!(count("user-service", "POST", "5xx"), Some(2));
    assert_eq!(count("payment-service", "GET", "4xx"), Some(1));
    assert_eq!(count("unknown", "GET", "2xx"), Some(1));
    assert_eq!(count("none", "GET", "2xx"), Some(1));
    assert_eq!(count("user-service", "OTHER", "2xx"), Some(1));
    assert_eq!(count("user-service", "GET", "5xx"), None);

    let latency = h
        .histogram(&metrics::request_duration(
            "user-service",
            "order-service",
            "2xx",
        ))
        .map(<[u64]>::to_vec);
    assert_eq!(latency, Some(vec![10, 20, 30, 0]));
    assert_eq!(
        h.histogram(&metrics::request_duration(
            "user-service",
            "order-service",
            "5xx"
        )),
        Some(&[5, 5][..])
    );

    // Every metric defined is one of ours, of the right type, and its name decomposes into
    // exactly the labels through the tag rules Envoy is given.
    let names = h.metric_names();
    // 6 counter series and 5 histogram series (the histogram has no method label).
    assert_eq!(names.len(), 11, "{names:?}");
    for (kind, name) in names {
        let base = name.split('.').next().unwrap_or_default();
        match base {
            metrics::REQUESTS_TOTAL => assert_eq!(kind, MetricType::Counter),
            metrics::REQUEST_DURATION_MS => assert_eq!(kind, MetricType::Histogram),
            other => panic!("unexpected metric {other}"),
        }
        let (stripped, _labels) = extract_tags(&name)?;
        assert_eq!(stripped, base, "tag rules leave {stripped} of {name}");
    }
    Ok(())
}

#[test]
fn a_locally_answered_stream_is_counted_by_its_response_code() -> R {
    // When the authorization filter (earlier in the chain) answers 403, Envoy still calls this
    // filter's on_log with response.code = 403.
    let mut h = host(METRICS, &metrics_config("order-service")?)?;
    h.http_request(
        &from_service("payment-service", "GET", "/orders").response(ResponseSpec::new(403)),
    )?;
    assert_eq!(
        h.counter(&metrics::requests_total(
            "payment-service",
            "order-service",
            "GET",
            "4xx"
        )),
        Some(1)
    );
    Ok(())
}

#[test]
fn label_values_stay_a_closed_set_under_hostile_input() -> R {
    let mut h = host(METRICS, &metrics_config("order-service")?)?;
    for i in 0..200 {
        let id = format!("spiffe://cluster.local/ns/attacker/sa/sa-{i}");
        let mut req =
            RequestSpec::new(&format!("M{i}"), "/x").properties(Properties::new().mtls_peer(&id));
        req.headers.set(":method", format!("M{i}.source=forged"));
        h.http_request(&req.response(ResponseSpec::new(200 + (i % 400))))?;
    }
    let names = h.metric_names();
    assert!(
        names.len() <= 2 * 6,
        "hostile input created {} series: {names:?}",
        names.len()
    );
    assert!(names
        .iter()
        .all(|(_, n)| !n.contains("forged") && !n.contains("attacker")));
    Ok(())
}

#[test]
fn bad_configuration_fails_configure() -> R {
    for config in [
        &b"{}"[..],
        b"{\"workload\":\"o\",\"peers\":{\"x\":\"y\"}}",
        b"\0",
    ] {
        let (h, configured) = host_configure(METRICS, config)?;
        assert!(!configured);
        assert!(h.logs().iter().any(|l| l
            .message
            .starts_with("meshguard-metrics: invalid configuration")));
    }
    Ok(())
}
