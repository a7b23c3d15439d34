//! Guest-side glue shared by the meshguard filters. Every host call goes through
//! `proxy_wasm::hostcalls` directly and its error is handled here: the SDK's trait helpers
//! `unwrap()` host errors, and a panicking filter takes the proxy's request down.

use std::collections::HashMap;

use meshguard_mesh::LogLevel;
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType};

/// Envoy's property holding whether the downstream connection is mutual TLS (1 byte, bool).
pub const PROP_MTLS: [&str; 2] = ["connection", "mtls"];
/// Envoy's property holding the first URI SAN of the peer certificate (string).
pub const PROP_PEER_URI_SAN: [&str; 2] = ["connection", "uri_san_peer_certificate"];
/// Envoy's property holding the response code (int64, little endian).
pub const PROP_RESPONSE_CODE: [&str; 2] = ["response", "code"];

/// The plugin configuration handed to `on_configure`, or `None` if the host has none.
pub fn plugin_configuration(size: usize) -> Option<Vec<u8>> {
    match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size) {
        Ok(Some(bytes)) => Some(bytes),
        _ => None,
    }
}

/// A property's raw bytes; absent and unreadable are both `None` (callers fail closed).
pub fn property(path: &[&str]) -> Option<Vec<u8>> {
    hostcalls::get_property(path.to_vec()).ok().flatten()
}

/// A boolean property as Envoy serializes it (one byte). Anything else is `None`.
pub fn bool_property(path: &[&str]) -> Option<bool> {
    match property(path)?.as_slice() {
        [0] => Some(false),
        [1] => Some(true),
        _ => None,
    }
}

/// An int64 property as Envoy serializes it (eight bytes, little endian).
pub fn int_property(path: &[&str]) -> Option<i64> {
    let bytes: [u8; 8] = property(path)?.try_into().ok()?;
    Some(i64::from_le_bytes(bytes))
}

/// A request header's raw value.
pub fn request_header(name: &str) -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
        .ok()
        .flatten()
}

/// A response header's raw value.
pub fn response_header(name: &str) -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name)
        .ok()
        .flatten()
}

/// The host clock in nanoseconds since the epoch, if it answers.
pub fn now_nanos() -> Option<u128> {
    hostcalls::get_current_time()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_nanos())
}

/// The `log` level for a configured [`LogLevel`].
pub fn log_level(level: LogLevel) -> log::Level {
    match level {
        LogLevel::Trace => log::Level::Trace,
        LogLevel::Debug => log::Level::Debug,
        LogLevel::Info => log::Level::Info,
        LogLevel::Warn => log::Level::Warn,
        LogLevel::Error => log::Level::Error,
    }
}

/// Metric handles by stat name, defined on first use. The names come from closed label sets, so
/// the map stays small.
#[derive(Debug, Default)]
pub struct Metrics {
    ids: HashMap<String, u32>,
}

impl Metrics {
    fn id(&mut self, kind: MetricType, name: String) -> Option<u32> {
        if let Some(id) = self.ids.get(&name) {
            return Some(*id);
        }
        match hostcalls::define_metric(kind, &name) {
            Ok(id) => {
                self.ids.insert(name, id);
                Some(id)
            }
            Err(status) => {
                log::error!("cannot define metric {name}: {status:?}");
                None
            }
        }
    }

    /// Adds one to the counter `name`.
    pub fn count(&mut self, name: String) {
        if let Some(id) = self.id(MetricType::Counter, name) {
            if let Err(status) = hostcalls::increment_metric(id, 1) {
                log::error!("cannot increment metric {id}: {status:?}");
            }
        }
    }

    /// Records `value` in the histogram `name`.
    pub fn record(&mut self, name: String, value: u64) {
        if let Some(id) = self.id(MetricType::Histogram, name) {
            if let Err(status) = hostcalls::record_metric(id, value) {
                log::error!("cannot record metric {id}: {status:?}");
            }
        }
    }
}
