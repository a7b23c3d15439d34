//! Probe filter for the proxy-wasm-host tests.
//!
//! Exercises logging, stdout/stderr, properties, header map operations, local
//! responses, metrics, time and buffers through the proxy-wasm 0.2.5 SDK, and
//! makes raw ABI calls with bad arguments to check the status codes the host
//! returns. Behaviour is selected by the plugin configuration (`key=value`
//! lines) and by the `x-probe-action` request header.

#![allow(clippy::not_unsafe_ptr_arg_deref)]

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::{info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, GrpcStatusCode, LogLevel, MetricType};

/// Raw ABI imports, to pass arguments the SDK never would.
#[allow(clashing_extern_declarations)]
mod raw {
    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn proxy_log(level: u32, ptr: *const u8, len: usize) -> u32;
        pub fn proxy_get_property(
            path_ptr: *const u8,
            path_len: usize,
            out_ptr: *mut *mut u8,
            out_len: *mut usize,
        ) -> u32;
        pub fn proxy_set_property(
            path_ptr: *const u8,
            path_len: usize,
            value_ptr: *const u8,
            value_len: usize,
        ) -> u32;
        pub fn proxy_get_header_map_value(
            map: u32,
            key_ptr: *const u8,
            key_len: usize,
            out_ptr: *mut *mut u8,
            out_len: *mut usize,
        ) -> u32;
        pub fn proxy_get_header_map_pairs(
            map: u32,
            out_ptr: *mut *mut u8,
            out_len: *mut usize,
        ) -> u32;
        pub fn proxy_add_header_map_value(
            map: u32,
            key_ptr: *const u8,
            key_len: usize,
            value_ptr: *const u8,
            value_len: usize,
        ) -> u32;
        pub fn proxy_get_buffer_bytes(
            ty: u32,
            start: usize,
            len: usize,
            out_ptr: *mut *mut u8,
            out_len: *mut usize,
        ) -> u32;
        pub fn proxy_get_buffer_status(ty: u32, len_ptr: *mut usize, flags_ptr: *mut u32) -> u32;
        pub fn proxy_define_metric(ty: u32, ptr: *const u8, len: usize, id: *mut u32) -> u32;
        pub fn proxy_increment_metric(id: u32, offset: i64) -> u32;
        pub fn proxy_record_metric(id: u32, value: u64) -> u32;
        pub fn proxy_get_metric(id: u32, value: *mut u64) -> u32;
        pub fn proxy_set_effective_context(id: u32) -> u32;
        pub fn proxy_continue_stream(ty: u32) -> u32;
        pub fn proxy_get_current_time_nanoseconds(out: *mut u64) -> u32;
        pub fn proxy_done() -> u32;
        pub fn proxy_send_local_response(
            code: u32,
            details_ptr: *const u8,
            details_len: usize,
            body_ptr: *const u8,
            body_len: usize,
            headers_ptr: *const u8,
            headers_len: usize,
            grpc_status: i32,
        ) -> u32;
    }
}

/// An address past the end of any linear memory this module uses.
const BAD_PTR: usize = 0xFFFF_FFF0;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    println!("probe stdout: initialized");
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(ProbeRoot { context_id, ..ProbeRoot::default() })
    });
}}

#[derive(Default, Clone)]
struct Metrics {
    requests: u32,
    active: u32,
    latency: u32,
    local: u32,
    ticks: u32,
}

#[derive(Default)]
struct ProbeRoot {
    context_id: u32,
    config: HashMap<String, String>,
    metrics: Metrics,
}

fn parse_config(bytes: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.is_empty() {
                return None;
            }
            match l.split_once('=') {
                Some((k, v)) => Some((k.trim().to_string(), v.trim().to_string())),
                None => Some((l.to_string(), String::new())),
            }
        })
        .collect()
}

fn buffer_status(ty: u32) -> (u32, usize) {
    let mut len = 0usize;
    let mut flags = 0u32;
    let status = unsafe { raw::proxy_get_buffer_status(ty, &mut len, &mut flags) };
    (status, len)
}

impl Context for ProbeRoot {
    fn on_done(&mut self) -> bool {
        // With `delay_done`, shutdown waits for proxy_done (called from on_tick).
        !self.config.contains_key("delay_done")
    }
}

impl RootContext for ProbeRoot {
    fn on_vm_start(&mut self, vm_configuration_size: usize) -> bool {
        let vm_config = self.get_vm_configuration().unwrap_or_default();
        println!("probe stdout: vm_start");
        eprintln!("probe stderr: vm_start");
        let (plugin_status, _) = buffer_status(7);
        info!(
            "vm_start vm_config_size={} vm_config={} plugin_config_status={}",
            vm_configuration_size,
            String::from_utf8_lossy(&vm_config),
            plugin_status
        );
        vm_config != b"fail"
    }

    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        self.config = parse_config(&bytes);
        info!(
            "configure size={} bytes={} log_level={:?}",
            plugin_configuration_size,
            bytes.len(),
            hostcalls::get_log_level()
        );
        if self.config.contains_key("panic_on_configure") {
            panic!("probe panic in on_configure");
        }
        if self.config.contains_key("reject") {
            warn!("configuration rejected");
            return false;
        }
        let define = |ty, name: &str| hostcalls::define_metric(ty, name).unwrap_or(0);
        self.metrics = Metrics {
            requests: define(MetricType::Counter, "probe_requests_total"),
            active: define(MetricType::Gauge, "probe_active_requests"),
            latency: define(MetricType::Histogram, "probe_latency_ms"),
            local: define(MetricType::Counter, "probe_local_responses_total"),
            ticks: define(MetricType::Counter, "probe_ticks_total"),
        };
        let again = define(MetricType::Counter, "probe_requests_total");
        info!(
            "metric ids counter={} gauge={} histogram={} counter_again={}",
            self.metrics.requests, self.metrics.active, self.metrics.latency, again
        );
        if let Some(ms) = self
            .config
            .get("tick_ms")
            .and_then(|v| v.parse::<u64>().ok())
        {
            self.set_tick_period(Duration::from_millis(ms));
        }

        // Root-context statuses.
        let key = b"a";
        let set_prop = unsafe { raw::proxy_set_property(key.as_ptr(), 1, key.as_ptr(), 1) };
        let mut p: *mut u8 = std::ptr::null_mut();
        let mut l = 0usize;
        let path = b":path";
        let req_hdr = unsafe {
            raw::proxy_get_header_map_value(0, path.as_ptr(), path.len(), &mut p, &mut l)
        };
        let pairs = unsafe { raw::proxy_get_header_map_pairs(0, &mut p, &mut l) };
        let (plugin_status, plugin_len) = buffer_status(7);
        let root_id = self
            .get_property(vec!["plugin_root_id"])
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_else(|| "<none>".into());
        info!(
            "root statuses set_property={} get_request_header={} pairs={}:{}:{} plugin_config={}:{} root_id={}",
            set_prop, req_hdr, pairs, p as usize, l, plugin_status, plugin_len, root_id
        );
        true
    }

    fn on_tick(&mut self) {
        let _ = hostcalls::increment_metric(self.metrics.ticks, 1);
        if self.config.contains_key("delay_done") {
            let status = unsafe { raw::proxy_done() };
            info!("tick proxy_done={}", status);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(ProbeHttp {
            context_id,
            root_id: self.context_id,
            metrics: self.metrics.clone(),
            ..ProbeHttp::default()
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

#[derive(Default)]
struct ProbeHttp {
    context_id: u32,
    root_id: u32,
    metrics: Metrics,
    action: String,
    start: Option<SystemTime>,
    mtls: Option<Vec<u8>>,
    peer: Option<Vec<u8>>,
    echo: Option<Vec<u8>>,
}

fn status_probes(counter: u32, histogram: u32, context_id: u32) -> String {
    let mut out: Vec<(&str, u32)> = Vec::new();
    let mut p: *mut u8 = std::ptr::null_mut();
    let mut l = 0usize;
    let x = b"x";
    unsafe {
        out.push(("log_bad_ptr", raw::proxy_log(2, BAD_PTR as *const u8, 64)));
        out.push(("log_bad_level", raw::proxy_log(9, x.as_ptr(), 1)));
        out.push((
            "prop_bad_ptr",
            raw::proxy_get_property(BAD_PTR as *const u8, 4, &mut p, &mut l),
        ));
        let missing = b"no\0such";
        out.push((
            "prop_missing",
            raw::proxy_get_property(missing.as_ptr(), missing.len(), &mut p, &mut l),
        ));
        let mtls = b"connection\0mtls";
        out.push((
            "prop_bad_out",
            raw::proxy_get_property(mtls.as_ptr(), mtls.len(), BAD_PTR as *mut *mut u8, &mut l),
        ));
        out.push((
            "set_prop_bad_ptr",
            raw::proxy_set_property(BAD_PTR as *const u8, 4, x.as_ptr(), 1),
        ));
        out.push((
            "hdr_bad_map",
            raw::proxy_get_header_map_value(99, x.as_ptr(), 1, &mut p, &mut l),
        ));
        let nope = b"x-nope";
        out.push((
            "hdr_missing",
            raw::proxy_get_header_map_value(0, nope.as_ptr(), nope.len(), &mut p, &mut l),
        ));
        let status = b":status";
        out.push((
            "hdr_resp_in_req",
            raw::proxy_get_header_map_value(2, status.as_ptr(), status.len(), &mut p, &mut l),
        ));
        out.push((
            "hdr_add_resp_in_req",
            raw::proxy_add_header_map_value(2, x.as_ptr(), 1, x.as_ptr(), 1),
        ));
        out.push((
            "hdr_key_bad_ptr",
            raw::proxy_get_header_map_value(0, BAD_PTR as *const u8, 8, &mut p, &mut l),
        ));
        out.push((
            "pairs_bad_out",
            raw::proxy_get_header_map_pairs(0, BAD_PTR as *mut *mut u8, &mut l),
        ));
        out.push((
            "buf_bad_type",
            raw::proxy_get_buffer_bytes(99, 0, 1, &mut p, &mut l),
        ));
        out.push(("buf_plugin_cfg", buffer_status(7).0));
        out.push(("buf_vm_cfg", buffer_status(6).0));
        let mut id = 0u32;
        let m = b"m";
        out.push((
            "metric_bad_type",
            raw::proxy_define_metric(7, m.as_ptr(), 1, &mut id),
        ));
        out.push((
            "metric_bad_name",
            raw::proxy_define_metric(0, BAD_PTR as *const u8, 4, &mut id),
        ));
        out.push(("counter_zero", raw::proxy_increment_metric(counter, 0)));
        out.push(("counter_neg", raw::proxy_increment_metric(counter, -1)));
        out.push(("metric_unknown", raw::proxy_increment_metric(4000, 1)));
        let mut v = 0u64;
        out.push(("hist_get", raw::proxy_get_metric(histogram, &mut v)));
        out.push(("hist_increment", raw::proxy_increment_metric(histogram, 1)));
        out.push(("record_unknown", raw::proxy_record_metric(4001, 1)));
        out.push(("eff_ctx_bad", raw::proxy_set_effective_context(9999)));
        out.push(("eff_ctx_self", raw::proxy_set_effective_context(context_id)));
        out.push(("continue_bad", raw::proxy_continue_stream(7)));
        out.push(("continue_upstream", raw::proxy_continue_stream(3)));
        out.push((
            "time_bad_ptr",
            raw::proxy_get_current_time_nanoseconds(BAD_PTR as *mut u64),
        ));
        out.push(("done_not_pending", raw::proxy_done()));
    }
    out.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

impl Context for ProbeHttp {}

impl HttpContext for ProbeHttp {
    fn on_http_request_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        let _ = hostcalls::increment_metric(self.metrics.requests, 1);
        let _ = hostcalls::increment_metric(self.metrics.active, 1);
        self.start = self.get_current_time().into();
        let path = self.get_http_request_header(":path").unwrap_or_default();
        info!(
            "request_headers ctx={} root={} n={} eos={} path={}",
            self.context_id, self.root_id, num_headers, end_of_stream, path
        );
        self.mtls = self.get_property(vec!["connection", "mtls"]);
        self.peer = self.get_property(vec!["connection", "uri_san_peer_certificate"]);

        let all = self.get_http_request_headers_bytes();
        self.add_http_request_header("x-probe-header-count", &all.len().to_string());
        self.add_http_request_header("x-probe-added", "1");
        self.set_http_request_header("x-probe-replaced", Some("new"));
        self.set_http_request_header("x-probe-remove", None);
        self.echo = self.get_http_request_header_bytes("x-probe-echo");
        if let Some(echo) = &self.echo {
            self.add_http_request_header("x-probe-echo-len", &echo.len().to_string());
        }

        self.action = self
            .get_http_request_header("x-probe-action")
            .unwrap_or_default();
        match self.action.as_str() {
            "deny" => {
                let _ = hostcalls::increment_metric(self.metrics.local, 1);
                self.send_http_response(
                    403,
                    vec![("x-probe-denied", "true")],
                    Some(b"denied by probe"),
                );
                return Action::Pause;
            }
            "deny-details" => {
                let details = b"probe denied this";
                let body = b"";
                let headers = [0u8, 0, 0, 0];
                unsafe {
                    raw::proxy_send_local_response(
                        401,
                        details.as_ptr(),
                        details.len(),
                        body.as_ptr(),
                        0,
                        headers.as_ptr(),
                        headers.len(),
                        -1,
                    );
                }
                return Action::Pause;
            }
            "grpc-deny" => {
                self.send_grpc_response(
                    GrpcStatusCode::PermissionDenied,
                    Some("no access"),
                    vec![],
                );
                return Action::Pause;
            }
            "panic" => panic!("probe panic requested"),
            "http-call" => {
                let _ = self.dispatch_http_call(
                    "upstream",
                    vec![
                        (":method", "GET"),
                        (":path", "/"),
                        (":authority", "upstream"),
                    ],
                    None,
                    vec![],
                    Duration::from_secs(1),
                );
            }
            "pause" => return Action::Pause,
            "reset" => {
                let _ = hostcalls::reset_http_request();
            }
            "statuses" => {
                let statuses =
                    status_probes(self.metrics.requests, self.metrics.latency, self.context_id);
                self.add_http_request_header("x-probe-statuses", &statuses);
            }
            "set-prop" => {
                self.set_property(vec!["probe", "state"], Some(b"seen"));
                let back = self
                    .get_property(vec!["probe", "state"])
                    .unwrap_or_default();
                self.add_http_request_header("x-probe-prop", &String::from_utf8_lossy(&back));
            }
            "request-props" => {
                for (name, path) in [
                    ("x-probe-req-path", vec!["request", "path"]),
                    ("x-probe-req-url-path", vec!["request", "url_path"]),
                    ("x-probe-req-method", vec!["request", "method"]),
                    ("x-probe-req-host", vec!["request", "host"]),
                    (
                        "x-probe-req-hdr",
                        vec!["request", "headers", "x-probe-action"],
                    ),
                ] {
                    let v = self
                        .get_property(path)
                        .unwrap_or_else(|| b"<none>".to_vec());
                    self.add_http_request_header(name, &String::from_utf8_lossy(&v));
                }
            }
            _ => {}
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        info!("request_body size={} eos={}", body_size, end_of_stream);
        match self.action.as_str() {
            "body-rewrite" => {
                if let Some(body) = self.get_http_request_body(0, body_size) {
                    let upper = body.to_ascii_uppercase();
                    self.set_http_request_body(0, body_size, &upper);
                }
            }
            "deny-on-body" => {
                self.send_http_response(413, vec![], Some(b"too much"));
                return Action::Pause;
            }
            _ => {}
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        let status = self.get_http_response_header(":status").unwrap_or_default();
        info!(
            "response_headers n={} eos={} status={}",
            num_headers, end_of_stream, status
        );
        let mtls = match self.mtls.as_deref() {
            Some([1]) => "true",
            Some([0]) => "false",
            Some(_) => "malformed",
            None => "absent",
        };
        self.set_http_response_header("x-probe-mtls", Some(mtls));
        let peer = self
            .peer
            .as_ref()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_else(|| "none".into());
        self.set_http_response_header("x-probe-peer", Some(&peer));
        self.set_http_response_header("x-probe-seen-status", Some(&status));
        if let Some(echo) = self.echo.clone() {
            self.set_http_response_header_bytes("x-probe-echo", Some(&echo));
        }
        if let Some(start) = self.start {
            let now = self.get_current_time();
            let ms = now.duration_since(start).unwrap_or_default().as_millis() as u64;
            let _ = hostcalls::record_metric(self.metrics.latency, ms);
            let nanos = now
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            self.set_http_response_header("x-probe-now-ns", Some(&nanos.to_string()));
        }
        match self.action.as_str() {
            "read-req-in-resp" => {
                let mut p: *mut u8 = std::ptr::null_mut();
                let mut l = 0usize;
                let key = b"x-probe-action";
                let status = unsafe {
                    raw::proxy_get_header_map_value(0, key.as_ptr(), key.len(), &mut p, &mut l)
                };
                self.set_http_response_header("x-probe-req-read-status", Some(&status.to_string()));
            }
            "deny-in-response" => {
                self.send_http_response(502, vec![("x-probe-replaced", "yes")], Some(b"replaced"));
                return Action::Pause;
            }
            _ => {}
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        info!("response_body size={} eos={}", body_size, end_of_stream);
        if self.action == "body-rewrite" {
            if let Some(body) = self.get_http_response_body(0, body_size) {
                let upper = body.to_ascii_uppercase();
                self.set_http_response_body(0, body_size, &upper);
            }
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let code = self
            .get_property(vec!["response", "code"])
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(i64::from_le_bytes);
        let details = self
            .get_property(vec!["response", "code_details"])
            .map(|v| String::from_utf8_lossy(&v).into_owned());
        let path = self.get_http_request_header(":path");
        let resp_status = self.get_http_response_header(":status");
        let _ = hostcalls::increment_metric(self.metrics.active, -1);
        info!(
            "log ctx={} response_code={:?} details={:?} path={:?} status={:?}",
            self.context_id, code, details, path, resp_status
        );
    }
}
