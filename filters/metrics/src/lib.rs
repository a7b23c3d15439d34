//! meshguard request metrics filter.
//!
//! Runs in the inbound sidecar of one workload and, when each stream ends (`on_log`, which Envoy
//! calls for every stream, including those a filter before it answered locally), counts the
//! request by source service, destination, method and response-code class and records its
//! duration. The metrics are defined through the Proxy-Wasm metrics API, so Envoy exports them on
//! its Prometheus endpoint (see docs/metrics.md for the Istio settings that label them).
//!
//! A gRPC or gRPC-web response is classed by its `grpc-status` (as Envoy's `grpcToHttpStatus`
//! maps it), since its HTTP status is 200 whatever happened. Without a valid configuration the
//! filter measures nothing and lets every request through; no host answer makes it trap.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use meshguard_filter_common::{self as common, Metrics};
use meshguard_mesh::http::GrpcKind;
use meshguard_mesh::{http, metrics, MetricsConfig};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

proxy_wasm::main! {{
    common::init_logging(log::LevelFilter::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(MetricsRoot::default()) });
}}

/// What a stream needs from the configuration.
struct Settings {
    workload: String,
    level: log::Level,
    peers: BTreeMap<String, String>,
}

impl Settings {
    /// The `source` label: the peer's service name, `unknown` for an identity the mesh does not
    /// know, `none` without mTLS.
    fn source_label(&self, mtls: Option<bool>, peer: Option<&[u8]>) -> &str {
        if mtls != Some(true) {
            return metrics::SOURCE_NONE;
        }
        match peer.and_then(|p| std::str::from_utf8(p).ok()) {
            None | Some("") => metrics::SOURCE_NONE,
            Some(id) => self
                .peers
                .get(id)
                .map_or(metrics::SOURCE_UNKNOWN, String::as_str),
        }
    }
}

#[derive(Default)]
struct MetricsRoot {
    settings: Option<Rc<Settings>>,
    metrics: Rc<RefCell<Metrics>>,
}

impl Context for MetricsRoot {}

impl RootContext for MetricsRoot {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        self.settings = None;
        let Some(raw) = common::plugin_configuration(plugin_configuration_size) else {
            log::error!("meshguard-metrics: no plugin configuration; not measuring");
            return false;
        };
        match MetricsConfig::from_json(&raw) {
            Ok(cfg) => {
                log::info!(
                    "meshguard-metrics: measuring {} with {} known peers",
                    cfg.workload,
                    cfg.peers.len()
                );
                self.settings = Some(Rc::new(Settings {
                    workload: cfg.workload,
                    level: common::log_level(cfg.log_level),
                    peers: cfg.peers,
                }));
                true
            }
            Err(e) => {
                log::error!("meshguard-metrics: {e}; not measuring");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Always a context: the SDK panics on `None`. Unconfigured, it measures nothing.
        Some(Box::new(MetricsStream {
            settings: self.settings.clone(),
            metrics: Rc::clone(&self.metrics),
            started_ns: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct MetricsStream {
    settings: Option<Rc<Settings>>,
    metrics: Rc<RefCell<Metrics>>,
    started_ns: Option<u128>,
}

impl Context for MetricsStream {}

impl HttpContext for MetricsStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.settings.is_some() {
            self.started_ns = common::now_nanos();
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let Some(s) = &self.settings else {
            return;
        };
        let peer = common::property(common::PROP_PEER_URI_SAN);
        let source = s.source_label(common::bool_property(common::PROP_MTLS), peer.as_deref());
        let method = common::request_header(":method");
        let method = http::method_label(method.as_deref().unwrap_or_default());
        let status = common::int_property(common::PROP_RESPONSE_CODE)
            .and_then(|c| u64::try_from(c).ok())
            .or_else(|| common::response_header(":status").and_then(|v| http::parse_status(&v)));
        let grpc = common::request_header("content-type")
            .is_some_and(|ct| http::grpc_kind(&ct) != GrpcKind::None);
        let status = if grpc {
            // Trailers-only responses (every local gRPC denial) carry it in the headers.
            common::response_header("grpc-status")
                .or_else(|| common::response_trailer("grpc-status"))
                .and_then(|v| http::parse_grpc_status(&v))
                .map(http::grpc_to_http_status)
                .or(status)
        } else {
            status
        };
        let class = status.map_or("none", http::code_class);
        let mut m = self.metrics.borrow_mut();
        m.count(metrics::requests_total(source, &s.workload, method, class));
        // A stream a filter before us answered locally never reached our request headers: it
        // has no start time of ours, so it is counted but not timed.
        if let (Some(start), Some(end)) = (self.started_ns, common::now_nanos()) {
            let ms = u64::try_from(end.saturating_sub(start) / 1_000_000).unwrap_or(u64::MAX);
            m.record(metrics::request_duration(source, &s.workload, class), ms);
        }
        log::log!(
            s.level,
            "meshguard-metrics: source={source} destination={} method={method} code_class={class}",
            s.workload
        );
    }
}
