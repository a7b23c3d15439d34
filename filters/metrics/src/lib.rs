//! meshguard request metrics filter.
//!
//! Runs in the inbound sidecar of one workload and, when each stream ends (`proxy_on_log`, which
//! Envoy calls for every stream, including those a filter before it answered locally, and the
//! module's only stream callback: see `meshguard_filter_common::entry`), counts the request by
//! source service, destination, method and response-code class and records its duration (Envoy's
//! `request.duration`; a host without that property gets the counts but no durations). The
//! metrics are defined through the Proxy-Wasm metrics API, so Envoy exports them on its
//! Prometheus endpoint (see docs/metrics.md for the Istio settings that label them).
//!
//! A gRPC or gRPC-web response is classed by its `grpc-status` (as Envoy's `grpcToHttpStatus`
//! maps it), since its HTTP status is 200 whatever happened. Without a valid configuration the
//! filter measures nothing and lets every request through; no host answer makes it trap.

use std::cell::RefCell;
use std::rc::Rc;

use meshguard_filter_common::abi::Pairs;
use meshguard_filter_common::{self as common, Metrics};
use meshguard_mesh::fasthash::BytesTable;
use meshguard_mesh::http::GrpcKind;
use meshguard_mesh::{http, metrics, MetricsConfig};

/// The filter's own exports (the shared ones are in `meshguard_filter_common::entry`).
#[allow(unsafe_code)] // `no_mangle`: the names the host calls
mod exports {
    #[no_mangle]
    pub extern "C" fn proxy_on_configure(_root_context_id: u32, configuration_size: usize) -> bool {
        super::configure(configuration_size)
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_log(_context_id: u32) {
        super::on_log();
    }
}

/// What a stream needs from the configuration.
struct Settings {
    workload: String,
    level: log::Level,
    /// Peer identity (exact bytes) to its index in `names`.
    peers: BytesTable<usize>,
    names: Vec<String>,
}

/// Sources by index: `none`, `unknown`, then the peers.
const SOURCE_NONE: usize = 0;
const SOURCE_UNKNOWN: usize = 1;

impl Settings {
    /// The `source` label's index from the peer's URI SAN: the peer's service, `unknown` for an
    /// identity the mesh does not know, `none` without one. A peer URI SAN means mTLS in Envoy
    /// (see the authorization filter's `mtls`), so the SAN alone decides.
    fn source(&self, peer: Option<&[u8]>) -> usize {
        match peer {
            None | Some([]) => SOURCE_NONE,
            Some(id) => match self.peers.get(id) {
                Some(i) => i + 2,
                // An identity that is not text is no identity.
                None if std::str::from_utf8(id).is_err() => SOURCE_NONE,
                None => SOURCE_UNKNOWN,
            },
        }
    }

    fn source_label(&self, source: usize) -> &str {
        match source {
            SOURCE_NONE => metrics::SOURCE_NONE,
            SOURCE_UNKNOWN => metrics::SOURCE_UNKNOWN,
            i => self
                .names
                .get(i - 2)
                .map_or(metrics::SOURCE_UNKNOWN, String::as_str),
        }
    }
}

/// The code classes, by the index a series key holds.
const CLASSES: [&str; 7] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other", "none"];

thread_local! {
    /// The current configuration (`None`: none valid), which every stream reads.
    static SETTINGS: RefCell<Option<Rc<Settings>>> = const { RefCell::new(None) };
    /// Metric handles; they outlive reconfigurations.
    static METRICS: RefCell<Metrics> = RefCell::new(Metrics::default());
}

/// `proxy_on_configure`: the workload and its peers; a bad configuration measures nothing.
fn configure(plugin_configuration_size: usize) -> bool {
    SETTINGS.with(|s| s.replace(None));
    METRICS.with(|m| m.borrow_mut().clear_keys());
    let Some(raw) = common::entry::begin_configure(
        "meshguard-metrics",
        "not measuring",
        plugin_configuration_size,
    ) else {
        return false;
    };
    match MetricsConfig::from_json(&raw) {
        Ok(cfg) => {
            log::info!(
                "meshguard-metrics: measuring {} with {} known peers",
                cfg.workload,
                cfg.peers.len()
            );
            let mut peers = BytesTable::default();
            let mut names = Vec::with_capacity(cfg.peers.len());
            for (id, name) in cfg.peers {
                peers.insert(id.into_bytes().into_boxed_slice(), names.len());
                names.push(name);
            }
            let settings = Settings {
                workload: cfg.workload,
                level: common::log_level(cfg.log_level),
                peers,
                names,
            };
            SETTINGS.with(|s| s.replace(Some(Rc::new(settings))));
            true
        }
        Err(e) => {
            log::error!("meshguard-metrics: {e}; not measuring");
            false
        }
    }
}

fn settings() -> Option<Rc<Settings>> {
    SETTINGS.with(|s| s.borrow().clone())
}

/// `proxy_on_log`: counts and times the stream that ended.
fn on_log() {
    let Some(s) = settings() else {
        return;
    };
    let peer = common::property(common::PROP_PEER_URI_SAN);
    let source_index = s.source(peer.as_deref());
    // The request headers in one host call: the method and the content type come from there.
    let headers = common::request_headers().unwrap_or_default();
    let headers = Pairs::new(&headers);
    let method = headers.get(b":method");
    let method_index = http::method_index(method.unwrap_or_default());
    let status = common::int_property(common::PROP_RESPONSE_CODE)
        .and_then(|c| u64::try_from(c).ok())
        .or_else(|| common::response_header(":status").and_then(|v| http::parse_status(&v)));
    let grpc = headers
        .get(b"content-type")
        .is_some_and(|ct| http::grpc_kind(ct) != GrpcKind::None);
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
    let class_index = match status {
        Some(100..=199) => 0,
        Some(200..=299) => 1,
        Some(300..=399) => 2,
        Some(400..=499) => 3,
        Some(500..=599) => 4,
        Some(_) => 5,
        None => 6,
    };
    let class = CLASSES.get(class_index).copied().unwrap_or("none");
    let source = s.source_label(source_index);
    let method = http::KNOWN_METHODS
        .get(method_index)
        .copied()
        .unwrap_or("OTHER");
    // Series keys: the label indices, the metric in the top bits.
    let counter_key =
        ((source_index as u64) << 16) | ((method_index as u64) << 8) | class_index as u64;
    let duration_key = (1 << 56) | ((source_index as u64) << 16) | class_index as u64;
    METRICS.with(|m| {
        let mut m = m.borrow_mut();
        m.count_keyed(counter_key, || {
            metrics::requests_total(source, &s.workload, method, class)
        });
        // Envoy's `request.duration` covers every stream, including one an earlier filter
        // answered locally.
        let nanos =
            common::int_property(common::PROP_REQUEST_DURATION).and_then(|d| u64::try_from(d).ok());
        if let Some(nanos) = nanos {
            let ms = nanos / 1_000_000;
            m.record_keyed(
                duration_key,
                || metrics::request_duration(source, &s.workload, class),
                ms,
            );
        }
    });
    if log::log_enabled!(s.level) {
        log::log!(
            s.level,
            "meshguard-metrics: source={source} destination={} method={method} code_class={class}",
            s.workload
        );
    }
}
