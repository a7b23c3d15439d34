//! End-to-end tests of the host with the probe filter (built from
//! `testdata/probe-filter` with the proxy-wasm 0.2.5 SDK).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use proxy_wasm_host::{
    property, Action, Headers, Host, HostBuilder, HostError, HttpOutcome, LogLevel, Phase,
    Properties, RequestSpec, ResponseSpec,
};

const PEER: &str = "spiffe://cluster.local/ns/shop/sa/frontend";

fn builder() -> HostBuilder {
    Host::builder(common::probe_wasm())
}

fn host() -> Host {
    builder().build_configured().expect("probe host")
}

fn action(name: &str) -> RequestSpec {
    RequestSpec::get("/").header("x-probe-action", name)
}

fn has_log(logs: &[proxy_wasm_host::LogEntry], needle: &str) -> bool {
    logs.iter().any(|l| l.message.contains(needle))
}

#[test]
fn start_sequence_buffers_and_stdio() {
    let mut host = builder()
        .vm_config("vmcfg")
        .plugin_config("a=1")
        .plugin_ids("probe", "probe_root", "vm1")
        .build()
        .unwrap();
    // _initialize printed through WASI fd_write (allowed while starting).
    assert_eq!(
        String::from_utf8_lossy(host.stdout()),
        "probe stdout: initialized\nprobe stdout: vm_start\n"
    );
    assert_eq!(
        String::from_utf8_lossy(host.stderr()),
        "probe stderr: vm_start\n"
    );
    let logs = host.logs().to_vec();
    // Envoy: stdout is logged at info, stderr at error, without the newline.
    assert!(logs.iter().any(|l| l.level == LogLevel::Info
        && l.message == "probe stdout: initialized"
        && l.context_id == 0));
    assert!(logs
        .iter()
        .any(|l| l.level == LogLevel::Error && l.message == "probe stderr: vm_start"));
    // The plugin configuration is not visible from proxy_on_vm_start (NotFound = 1).
    assert!(has_log(
        &logs,
        "vm_start vm_config_size=5 vm_config=vmcfg plugin_config_status=1"
    ));

    assert!(host.configure().unwrap());
    let logs = host.take_logs();
    assert!(has_log(
        &logs,
        "configure size=3 bytes=3 log_level=Ok(Info)"
    ));
    // Root context: set_property has no stream (NotFound), request headers are
    // not available (BadArgument), pairs are empty (ptr 0, size 0), the plugin
    // configuration is readable during on_configure.
    assert!(has_log(
        &logs,
        "root statuses set_property=1 get_request_header=2 pairs=0:0:0 plugin_config=0:3 root_id=probe_root"
    ));
    // Envoy allocates a fresh id per define (type in the low two bits).
    assert!(has_log(
        &logs,
        "metric ids counter=4 gauge=5 histogram=6 counter_again=16"
    ));
    assert!(host.logs().is_empty());
}

#[test]
fn configure_result_is_returned() {
    let mut host = builder().plugin_config("reject").build().unwrap();
    assert!(!host.configure().unwrap());
    assert!(host.configure_with("a=b").unwrap());
    let err = builder().plugin_config("reject").build_configured().err();
    assert_eq!(err, Some(HostError::ConfigureRejected));
}

#[test]
fn vm_start_failure_is_an_error() {
    let err = builder().vm_config("fail").build().err();
    assert_eq!(err, Some(HostError::VmStartFailed));
}

#[test]
fn guest_panic_in_configure_is_a_trap_error() {
    let mut host = builder()
        .plugin_config("panic_on_configure")
        .build()
        .unwrap();
    match host.configure() {
        Err(HostError::Trap {
            function,
            guest_panic,
            message,
        }) => {
            assert_eq!(function, "proxy_on_configure");
            assert!(
                guest_panic
                    .as_deref()
                    .unwrap_or("")
                    .contains("probe panic in on_configure"),
                "{guest_panic:?}"
            );
            assert!(message.contains("unreachable"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(host.failure().is_some());
    assert!(matches!(
        host.http_request(&RequestSpec::get("/")),
        Err(HostError::VmFailed(_))
    ));
}

#[test]
fn request_passes_with_header_mutations() {
    let mut host = host();
    let spec = RequestSpec::get("/items?id=1")
        .header("X-Probe-Replaced", "old")
        .header("x-probe-replaced", "old2")
        .header("x-probe-remove", "bye")
        .response(
            ResponseSpec::new(200)
                .header("server", "upstream")
                .body("ok"),
        );
    let out = host.http_request(&spec).unwrap();
    assert_eq!(
        out.actions,
        vec![
            (Phase::RequestHeaders, Action::Continue),
            (Phase::ResponseHeaders, Action::Continue),
            (Phase::ResponseBody, Action::Continue),
        ]
    );
    assert!(out.forwarded_upstream);
    assert!(out.local_response.is_none());
    assert_eq!(out.request_header("x-probe-added"), Some("1"));
    assert_eq!(
        out.request_headers.get_all("x-probe-replaced"),
        vec![&b"new"[..]]
    );
    assert!(!out.request_headers.contains("x-probe-remove"));
    // 4 pseudo-headers + 3 added by the spec, as the filter counted them.
    assert_eq!(out.request_header("x-probe-header-count"), Some("7"));
    // Pseudo-headers stay first.
    assert_eq!(
        out.request_headers.iter().next().map(|(k, _)| k),
        Some(&b":method"[..])
    );
    assert_eq!(out.status(), Some(200));
    assert_eq!(out.response_header("server"), Some("upstream"));
    assert_eq!(out.response_header("x-probe-seen-status"), Some("200"));
    // Envoy always answers connection.mtls (false without a peer certificate).
    assert_eq!(out.response_header("x-probe-mtls"), Some("false"));
    assert_eq!(out.response_header("x-probe-peer"), Some("none"));
    assert_eq!(out.response_body, b"ok");
    assert!(out.done);
    assert!(has_log(
        &out.logs,
        "request_headers ctx=2 root=1 n=7 eos=true path=/items?id=1"
    ));
    assert!(has_log(
        &out.logs,
        "response_headers n=2 eos=false status=200"
    ));
    assert!(has_log(&out.logs, "response_body size=2 eos=true"));
    assert!(has_log(
        &out.logs,
        "log ctx=2 response_code=Some(200) details=Some(\"via_upstream\") path=Some(\"/items?id=1\") status=Some(\"200\")"
    ));
    let second = host.http_request(&RequestSpec::get("/")).unwrap();
    assert_eq!(second.context_id, 3);
}

#[test]
fn mtls_peer_identity_properties() {
    let mut host = host();
    let out = host
        .http_request(&RequestSpec::get("/").properties(Properties::new().mtls_peer(PEER)))
        .unwrap();
    assert_eq!(out.response_header("x-probe-mtls"), Some("true"));
    assert_eq!(out.response_header("x-probe-peer"), Some(PEER));

    let out = host
        .http_request(
            &RequestSpec::get("/").properties(Properties::new().mtls_peer(PEER).plaintext()),
        )
        .unwrap();
    assert_eq!(out.response_header("x-probe-mtls"), Some("false"));
    assert_eq!(out.response_header("x-probe-peer"), Some("none"));

    let raw = Properties::new().with(&["connection", "mtls"], vec![7]);
    let out = host
        .http_request(&RequestSpec::get("/").properties(raw))
        .unwrap();
    assert_eq!(out.response_header("x-probe-mtls"), Some("malformed"));
}

#[test]
fn local_response_in_request_headers() {
    let mut host = host();
    let out = host
        .http_request(&action("deny").response(ResponseSpec::new(200).body("never sent")))
        .unwrap();
    let local = out.local_response.clone().unwrap();
    assert_eq!(local.status_code, 403);
    assert_eq!(local.body, b"denied by probe");
    assert_eq!(local.headers.get_str("x-probe-denied"), Some("true"));
    assert_eq!(local.grpc_status, -1);
    assert_eq!(local.details, "");
    assert!(!out.forwarded_upstream);
    // Envoy sends the local reply through the encoder filters, this one included.
    assert_eq!(
        out.actions,
        vec![
            (Phase::RequestHeaders, Action::Pause),
            (Phase::ResponseHeaders, Action::Continue),
            (Phase::ResponseBody, Action::Continue),
        ]
    );
    assert_eq!(out.status(), Some(403));
    assert_eq!(out.response_header("x-probe-denied"), Some("true"));
    assert_eq!(out.response_header("content-length"), Some("15"));
    assert_eq!(out.response_header("content-type"), Some("text/plain"));
    assert_eq!(out.response_header("x-probe-seen-status"), Some("403"));
    assert_eq!(out.response_body, b"denied by probe");
    assert!(has_log(
        &out.logs,
        "response_headers n=4 eos=false status=403"
    ));
    assert!(has_log(&out.logs, "log ctx=2 response_code=Some(403)"));
    assert_eq!(host.counter("probe_local_responses_total"), Some(1));
}

#[test]
fn local_response_details_and_no_body() {
    let mut host = host();
    let out = host.http_request(&action("deny-details")).unwrap();
    let local = out.local_response.clone().unwrap();
    assert_eq!(local.status_code, 401);
    // Envoy replaces whitespace in details with underscores.
    assert_eq!(local.details, "probe_denied_this");
    assert_eq!(out.status(), Some(401));
    assert!(!out.response_headers.contains("content-length"));
    assert_eq!(
        out.actions,
        vec![
            (Phase::RequestHeaders, Action::Pause),
            (Phase::ResponseHeaders, Action::Continue),
        ]
    );
    assert!(has_log(
        &out.logs,
        "response_headers n=1 eos=true status=401"
    ));
    assert!(has_log(&out.logs, "details=Some(\"probe_denied_this\")"));
}

#[test]
fn grpc_local_response() {
    let mut host = host();
    let spec = RequestSpec::new("POST", "/pkg.Service/Method")
        .header("content-type", "application/grpc")
        .header("x-probe-action", "grpc-deny")
        .body(vec![0, 0, 0, 0, 0]);
    let out = host.http_request(&spec).unwrap();
    let local = out.local_response.clone().unwrap();
    assert_eq!(local.status_code, 200);
    assert_eq!(local.grpc_status, 7);
    assert_eq!(local.body, b"no access");
    assert_eq!(out.status(), Some(200));
    assert_eq!(
        out.response_header("content-type"),
        Some("application/grpc")
    );
    assert_eq!(out.response_header("grpc-status"), Some("7"));
    assert_eq!(out.response_header("grpc-message"), Some("no access"));
    assert!(out.response_body.is_empty());
    // The body never reached the filter: the request was stopped at headers.
    assert_eq!(out.action(Phase::RequestBody), None);
}

#[test]
fn local_response_in_response_headers_replaces_the_response() {
    let mut host = host();
    let out = host
        .http_request(
            &action("deny-in-response").response(ResponseSpec::new(200).body("upstream body")),
        )
        .unwrap();
    assert!(out.forwarded_upstream);
    assert_eq!(out.status(), Some(502));
    assert_eq!(out.response_header("x-probe-replaced"), Some("yes"));
    // Direct local reply: the filter's changes to the upstream headers are gone.
    assert!(!out.response_headers.contains("x-probe-mtls"));
    assert_eq!(out.response_body, b"replaced");
    assert_eq!(
        out.actions,
        vec![
            (Phase::RequestHeaders, Action::Continue),
            (Phase::ResponseHeaders, Action::Pause),
        ]
    );
    assert!(has_log(&out.logs, "response_code=Some(502)"));
}

#[test]
fn local_response_in_request_body() {
    let mut host = host();
    let out = host
        .http_request(&action("deny-on-body").body("payload"))
        .unwrap();
    assert_eq!(out.status(), Some(413));
    assert_eq!(out.response_body, b"too much");
    assert!(!out.forwarded_upstream);
    assert_eq!(out.action(Phase::RequestBody), Some(Action::Pause));
}

#[test]
fn bodies_can_be_rewritten() {
    let mut host = host();
    let out = host
        .http_request(
            &action("body-rewrite")
                .body("hello")
                .response(ResponseSpec::new(200).body("world")),
        )
        .unwrap();
    assert_eq!(out.request_body, b"HELLO");
    assert_eq!(out.response_body, b"WORLD");
    assert!(has_log(
        &out.logs,
        "request_headers ctx=2 root=1 n=5 eos=false"
    ));
    assert!(has_log(&out.logs, "request_body size=5 eos=true"));
}

#[test]
fn guest_panic_during_request_is_an_error_not_a_panic() {
    let mut host = host();
    match host.http_request(&action("panic")) {
        Err(HostError::Trap {
            function,
            guest_panic,
            ..
        }) => {
            assert_eq!(function, "proxy_on_request_headers");
            assert!(guest_panic
                .unwrap_or_default()
                .contains("probe panic requested"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        host.http_request(&RequestSpec::get("/")),
        Err(HostError::VmFailed(_))
    ));
}

#[test]
fn unimplemented_host_call_is_reported_by_name() {
    let mut host = host();
    let err = host.http_request(&action("http-call")).err();
    assert_eq!(
        err,
        Some(HostError::UnimplementedHostCall {
            name: "proxy_http_call".into(),
            function: "proxy_on_request_headers".into(),
        })
    );
    assert_eq!(host.unimplemented_calls(), ["proxy_http_call".to_string()]);
    let text = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(
        text.contains("unimplemented host call proxy_http_call"),
        "{text}"
    );
}

#[test]
fn status_codes_for_bad_arguments() {
    let mut host = host();
    let out = host.http_request(&action("statuses")).unwrap();
    let raw = out.request_header("x-probe-statuses").unwrap().to_string();
    let statuses: HashMap<&str, u32> = raw
        .split(',')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k, v.parse().unwrap())
        })
        .collect();
    let expected = [
        ("log_bad_ptr", 6),
        ("log_bad_level", 2),
        ("prop_bad_ptr", 6),
        ("prop_missing", 1),
        ("prop_bad_out", 6),
        ("set_prop_bad_ptr", 6),
        ("hdr_bad_map", 2),
        ("hdr_missing", 1),
        ("hdr_resp_in_req", 2),
        ("hdr_add_resp_in_req", 2),
        ("hdr_key_bad_ptr", 6),
        ("pairs_bad_out", 6),
        ("buf_bad_type", 2),
        ("buf_plugin_cfg", 1),
        ("buf_vm_cfg", 0),
        ("metric_bad_type", 2),
        ("metric_bad_name", 6),
        ("counter_zero", 2),
        ("counter_neg", 2),
        ("metric_unknown", 1),
        ("hist_get", 2),
        ("hist_increment", 2),
        ("record_unknown", 1),
        ("eff_ctx_bad", 2),
        ("eff_ctx_self", 0),
        ("continue_bad", 2),
        ("continue_upstream", 12),
        ("time_bad_ptr", 6),
        ("done_not_pending", 1),
    ];
    for (name, code) in expected {
        assert_eq!(statuses.get(name), Some(&code), "{name} in {raw}");
    }
    assert_eq!(statuses.len(), expected.len());
}

#[test]
fn non_utf8_and_large_header_values_round_trip() {
    let mut host = host();
    let binary: Vec<u8> = (0x80..=0xffu8).chain([b'a', 0x7f]).collect();
    let large = vec![b'z'; 1 << 20];
    for value in [binary, large] {
        let mut headers = Headers::from([(":method", "GET"), (":path", "/"), (":authority", "h")]);
        headers.add("x-probe-echo", &value);
        let spec = RequestSpec {
            headers,
            ..RequestSpec::get("/")
        };
        let out = host.http_request(&spec).unwrap();
        assert_eq!(
            out.response_headers.get("x-probe-echo"),
            Some(value.as_slice())
        );
        assert_eq!(
            out.request_headers.get("x-probe-echo"),
            Some(value.as_slice())
        );
        assert_eq!(
            out.request_header("x-probe-echo-len"),
            Some(value.len().to_string().as_str())
        );
    }
}

#[test]
fn metrics_and_latency_from_the_host_clock() {
    let mut host = host();
    for ms in [25, 40] {
        host.http_request(
            &RequestSpec::get("/")
                .response(ResponseSpec::new(200).latency(Duration::from_millis(ms))),
        )
        .unwrap();
    }
    host.http_request(&action("deny")).unwrap();
    assert_eq!(host.counter("probe_requests_total"), Some(3));
    assert_eq!(host.counter("probe_local_responses_total"), Some(1));
    assert_eq!(host.gauge("probe_active_requests"), Some(0));
    // The local reply also went through on_response_headers (0 ms later).
    assert_eq!(host.histogram("probe_latency_ms"), Some(&[25, 40, 0][..]));
    assert_eq!(host.counter("nope"), None);
    assert!(host.metric_names().contains(&(
        proxy_wasm_host::MetricType::Histogram,
        "probe_latency_ms".to_string()
    )));
}

#[test]
fn time_is_controlled_by_the_test() {
    let mut host = host();
    host.set_time_nanos(1_000_000_000_000_000_000);
    let out = host
        .http_request(
            &RequestSpec::get("/")
                .response(ResponseSpec::new(200).latency(Duration::from_millis(3))),
        )
        .unwrap();
    assert_eq!(
        out.response_header("x-probe-now-ns"),
        Some("1000000000003000000")
    );
    assert_eq!(host.time_nanos(), 1_000_000_000_003_000_000);
    host.advance_time(Duration::from_secs(1));
    assert_eq!(host.time_nanos(), 1_000_000_001_003_000_000);
}

#[test]
fn pause_without_continue_stalls_the_stream() {
    let mut host = host();
    let out = host.http_request(&action("pause")).unwrap();
    assert_eq!(out.paused_in, Some(Phase::RequestHeaders));
    assert!(!out.forwarded_upstream);
    assert!(out.response_headers.is_empty());
    // on_log / on_done / on_delete still run.
    assert!(has_log(&out.logs, "log ctx=2 response_code=None"));
    assert_eq!(host.gauge("probe_active_requests"), Some(0));
}

#[test]
fn close_stream_resets() {
    let mut host = host();
    let out = host.http_request(&action("reset")).unwrap();
    assert!(out.reset);
    assert!(!out.forwarded_upstream);
    assert!(has_log(&out.logs, "details=Some(\"wasm_close_stream\")"));
}

#[test]
fn set_property_round_trips_on_the_stream() {
    let mut host = host();
    let out = host.http_request(&action("set-prop")).unwrap();
    assert_eq!(out.request_header("x-probe-prop"), Some("seen"));
    assert_eq!(
        out.set_properties.get(&["probe", "state"]),
        Some(&b"seen"[..])
    );
}

#[test]
fn request_attributes_are_derived_from_headers() {
    let mut host = host();
    let out = host
        .http_request(&RequestSpec::get("/a/b?x=1").header("x-probe-action", "request-props"))
        .unwrap();
    assert_eq!(out.request_header("x-probe-req-path"), Some("/a/b?x=1"));
    assert_eq!(out.request_header("x-probe-req-url-path"), Some("/a/b"));
    assert_eq!(out.request_header("x-probe-req-method"), Some("GET"));
    assert_eq!(out.request_header("x-probe-req-host"), Some("example.com"));
    assert_eq!(out.request_header("x-probe-req-hdr"), Some("request-props"));
    // Test-provided properties win over derived ones.
    let props = Properties::new().with(&["request", "path"], property::string("/override"));
    let out = host
        .http_request(
            &RequestSpec::get("/")
                .header("x-probe-action", "request-props")
                .properties(props),
        )
        .unwrap();
    assert_eq!(out.request_header("x-probe-req-path"), Some("/override"));
}

#[test]
fn request_headers_are_unavailable_in_the_response_phase() {
    let mut host = host();
    let out = host.http_request(&action("read-req-in-resp")).unwrap();
    // Envoy drops request_headers_ once on_request_headers returned Continue.
    assert_eq!(out.response_header("x-probe-req-read-status"), Some("2"));
}

#[test]
fn ticks_and_delayed_done() {
    let mut host = builder()
        .plugin_config("tick_ms=100\ndelay_done")
        .build_configured()
        .unwrap();
    assert_eq!(host.tick_period(), Some(Duration::from_millis(100)));
    host.tick().unwrap();
    assert_eq!(host.counter("probe_ticks_total"), Some(1));
    // on_done returned false: the root waits for proxy_done.
    assert!(!host.shutdown().unwrap());
    host.take_logs();
    host.tick().unwrap();
    assert!(has_log(host.logs(), "tick proxy_done=0"));
    // proxy_on_delete was called: the SDK no longer knows the root context.
    assert!(matches!(host.tick(), Err(HostError::Trap { .. })));
}

#[test]
fn shutdown_deletes_the_root() {
    let mut host = host();
    assert!(host.shutdown().unwrap());
}

#[test]
fn step_by_step_stream() {
    let mut host = host();
    let mut stream = host.new_stream(Properties::new().mtls_peer(PEER));
    assert_eq!(stream.id(), 2);
    let headers = Headers::from([(":method", "GET"), (":path", "/s"), (":authority", "h")]);
    assert_eq!(
        stream.send_request_headers(headers, true).unwrap(),
        Action::Continue
    );
    assert_eq!(
        stream
            .request_headers()
            .and_then(|h| h.get_str("x-probe-added")),
        Some("1")
    );
    assert!(matches!(
        stream.send_request_body(b"late", true),
        Err(HostError::InvalidState(_))
    ));
    stream.advance_time(Duration::from_millis(7));
    let action = stream
        .send_response_headers(Headers::from([(":status", "404")]), true)
        .unwrap();
    assert_eq!(action, Action::Continue);
    assert_eq!(
        stream
            .response_headers()
            .and_then(|h| h.get_str("x-probe-peer")),
        Some(PEER)
    );
    let out = stream.finish().unwrap();
    assert_eq!(out.status(), Some(404));
    assert!(has_log(&out.logs, "response_code=Some(404)"));
    assert_eq!(host.histogram("probe_latency_ms"), Some(&[7][..]));
}

#[test]
fn log_capture_can_be_disabled() {
    let mut host = builder().capture_logs(false).build_configured().unwrap();
    let before = host.log_count();
    let summary = host.run_requests(&RequestSpec::get("/"), 5).unwrap();
    assert_eq!(summary.requests, 5);
    assert_eq!(summary.fuel_consumed, None);
    assert!(host.logs().is_empty());
    assert!(host.log_count() >= before + 5 * 3);
}

#[test]
fn fuel_metering_counts_guest_work() {
    let mut host = builder().fuel(true).build_configured().unwrap();
    let spec = RequestSpec::get("/").properties(Properties::new().mtls_peer(PEER));
    host.run_requests(&spec, 3).unwrap(); // warm-up (lazy allocations)
    let one = host.run_requests(&spec, 1).unwrap().fuel_consumed.unwrap();
    let ten = host.run_requests(&spec, 10).unwrap().fuel_consumed.unwrap();
    assert!(one > 1000, "{one}");
    // Per-request work is stable (the log buffer grows, so allow some slack).
    let per = ten / 10;
    assert!(per.abs_diff(one) * 10 < one, "one={one} per={per}");
    let denied = host.run_requests(&action("deny"), 4).unwrap();
    assert_eq!(denied.local_responses, 4);
    assert_eq!(host_without_fuel().fuel_consumed(), None);
}

fn host_without_fuel() -> Host {
    host()
}

#[test]
fn outcome_helpers() {
    let out: HttpOutcome = host().http_request(&RequestSpec::get("/x")).unwrap();
    assert_eq!(out.action(Phase::RequestHeaders), Some(Action::Continue));
    assert_eq!(out.action(Phase::RequestBody), None);
    assert_eq!(out.request_header(":path"), Some("/x"));
}
