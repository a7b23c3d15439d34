//! The request metrics filter: when each stream ends (`on_log`, which Envoy calls for every
//! stream, including those a filter before it answered locally), counts the request by source
//! service, destination, method and response-code class and records its duration (Envoy's
//! `request.duration`; a host without that property gets the counts but no durations).
//!
//! A gRPC or gRPC-web response is classed by its `grpc-status` (as Envoy's `grpcToHttpStatus`
//! maps it), since its HTTP status is 200 whatever happened. Without a valid configuration the
//! filter measures nothing and lets every request through.

use meshguard_mesh::fasthash::BytesTable;
use meshguard_mesh::http::{self, GrpcKind};
use meshguard_mesh::{metrics, MetricsConfig};

use crate::handles::Metrics;
use crate::host::{
    int_property, Host, Pairs, PROP_PEER_URI_SAN, PROP_REQUEST_DURATION, PROP_RESPONSE_CODE,
};

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
pub const CLASSES: [&str; 7] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other", "none"];

/// The class index of a status (`None`: no response).
pub fn class_index(status: Option<u64>) -> usize {
    match status {
        Some(100..=199) => 0,
        Some(200..=299) => 1,
        Some(300..=399) => 2,
        Some(400..=499) => 3,
        Some(500..=599) => 4,
        Some(_) => 5,
        None => 6,
    }
}

/// The series keys of a request: its counter's (source, method, class) and its duration
/// histogram's (source, class), the metric in the top bits.
pub fn series_keys(source: usize, method: usize, class: usize) -> (u64, u64) {
    let counter = ((source as u64) << 16) | ((method as u64) << 8) | class as u64;
    let duration = (1 << 56) | ((source as u64) << 16) | class as u64;
    (counter, duration)
}

/// The filter's root: the current configuration (`None`: none valid) and the metric handles,
/// which outlive reconfigurations.
#[derive(Default)]
pub struct RequestMetrics {
    settings: Option<Settings>,
    metrics: Metrics,
}

impl RequestMetrics {
    /// A new configuration replaces the old one (`raw` is `None` when the host has none); a bad
    /// one measures nothing.
    pub fn configure(&mut self, raw: Option<&[u8]>) -> bool {
        self.settings = None;
        self.metrics.clear_keys();
        let Some(raw) = raw else {
            return false;
        };
        match MetricsConfig::from_json(raw) {
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
                self.settings = Some(Settings {
                    workload: cfg.workload,
                    level: crate::authz::level(cfg.log_level),
                    peers,
                    names,
                });
                true
            }
            Err(e) => {
                log::error!("meshguard-metrics: {e}; not measuring");
                false
            }
        }
    }

    /// Counts and times the stream that ended.
    pub fn on_log(&mut self, host: &mut impl Host) {
        let Some(s) = &self.settings else {
            return;
        };
        let peer = host.property(PROP_PEER_URI_SAN);
        let source_index = s.source(peer.as_deref());
        // The request headers in one host call: the method and the content type come from there.
        let headers = host.request_headers().unwrap_or_default();
        let headers = Pairs::new(&headers);
        let method = headers.get(b":method");
        let method_index = http::method_index(method.unwrap_or_default());
        let status = int_property(host, PROP_RESPONSE_CODE)
            .and_then(|c| u64::try_from(c).ok())
            .or_else(|| {
                host.response_header(":status")
                    .and_then(|v| http::parse_status(&v))
            });
        let grpc = headers
            .get(b"content-type")
            .is_some_and(|ct| http::grpc_kind(ct) != GrpcKind::None);
        let status = if grpc {
            // Trailers-only responses (every local gRPC denial) carry it in the headers.
            host.response_header("grpc-status")
                .or_else(|| host.response_trailer("grpc-status"))
                .and_then(|v| http::parse_grpc_status(&v))
                .map(http::grpc_to_http_status)
                .or(status)
        } else {
            status
        };
        let class_index = class_index(status);
        let class = CLASSES.get(class_index).copied().unwrap_or("none");
        let source = s.source_label(source_index);
        let method = http::KNOWN_METHODS
            .get(method_index)
            .copied()
            .unwrap_or("OTHER");
        let (counter_key, duration_key) = series_keys(source_index, method_index, class_index);
        self.metrics.count_keyed(host, counter_key, || {
            metrics::requests_total(source, &s.workload, method, class)
        });
        // Envoy's `request.duration` covers every stream, including one an earlier filter
        // answered locally.
        let nanos = int_property(host, PROP_REQUEST_DURATION).and_then(|d| u64::try_from(d).ok());
        if let Some(nanos) = nanos {
            let ms = nanos / 1_000_000;
            self.metrics.record_keyed(
                host,
                duration_key,
                || metrics::request_duration(source, &s.workload, class),
                ms,
            );
        }
        if log::log_enabled!(s.level) {
            log::log!(
                s.level,
                "meshguard-metrics: source={source} destination={} method={method} code_class={class}",
                s.workload
            );
        }
    }
}
