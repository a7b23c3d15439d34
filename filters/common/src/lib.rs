//! Guest-side glue shared by the meshguard filters. Every host call goes through [`abi`], whose
//! wrappers hand every status back instead of panicking as the SDK's do, and each failure is
//! handled here or by the filter: no host answer makes a filter trap.

pub mod abi;
pub mod alloc;
pub mod entry;

/// The filters' allocator (see [`alloc`]): only in the Wasm module, where it is single-threaded.
#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: alloc::SmallBlocks = alloc::SmallBlocks::new();

use std::collections::BTreeMap;

use meshguard_mesh::fasthash::U64Map;
use meshguard_mesh::{metrics, LogLevel};

/// Envoy's property holding whether the downstream connection is mutual TLS (1 byte, bool).
/// Property paths are their segments joined by NUL, as the ABI passes them.
pub const PROP_MTLS: &[u8] = b"connection\0mtls";
/// Envoy's property holding the first URI SAN of the peer certificate (string).
pub const PROP_PEER_URI_SAN: &[u8] = b"connection\0uri_san_peer_certificate";
/// Envoy's property holding the first URI SAN of the local (this sidecar's) certificate.
pub const PROP_LOCAL_URI_SAN: &[u8] = b"connection\0uri_san_local_certificate";
/// Envoy's property holding the request's total duration so far (a duration, which the Wasm host
/// serializes as int64 nanoseconds, little endian); present in `on_log`.
pub const PROP_REQUEST_DURATION: &[u8] = b"request\0duration";
/// Envoy's property holding the response code (int64, little endian).
pub const PROP_RESPONSE_CODE: &[u8] = b"response\0code";

/// What a stream callback tells the host (`proxy_action_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Action {
    Continue = 0,
    /// Stop here: the filter answered the request (or reset it).
    Pause = 1,
}

/// Envoy's property naming the plugin being configured (the filter config's `name`).
pub const PROP_PLUGIN_NAME: &[u8] = b"plugin_name";

/// The name of the plugin that configured this VM, to tell a reconfiguration (same name) from a
/// second plugin sharing the VM (see [`entry`]).
#[derive(Debug, Default)]
pub struct PluginName(Option<Vec<u8>>);

impl PluginName {
    /// Records the plugin now configuring; returns the previous one's name when it differs.
    pub fn configuring(&mut self) -> Option<String> {
        let now = property(PROP_PLUGIN_NAME);
        let before = std::mem::replace(&mut self.0, now.clone());
        match (before, now) {
            (Some(b), Some(n)) if b != n => Some(String::from_utf8_lossy(&b).into_owned()),
            _ => None,
        }
    }

    /// This plugin's name, for log lines.
    pub fn name(&self) -> String {
        self.0
            .as_deref()
            .map_or_else(String::new, |n| String::from_utf8_lossy(n).into_owned())
    }
}

/// The plugin configuration handed to `on_configure`, or `None` if the host has none.
pub fn plugin_configuration(size: usize) -> Option<Vec<u8>> {
    abi::buffer(abi::PLUGIN_CONFIGURATION, 0, size)
        .ok()
        .flatten()
}

/// A property's raw bytes; absent and unreadable are both `None` (callers fail closed).
pub fn property(path: &[u8]) -> Option<Vec<u8>> {
    abi::property(path).ok().flatten()
}

/// A boolean property as Envoy serializes it (one byte). Anything else is `None`.
pub fn bool_property(path: &[u8]) -> Option<bool> {
    match property(path)?.as_slice() {
        [0] => Some(false),
        [1] => Some(true),
        _ => None,
    }
}

/// An int64 property as Envoy serializes it (eight bytes, little endian).
pub fn int_property(path: &[u8]) -> Option<i64> {
    let bytes: [u8; 8] = property(path)?.try_into().ok()?;
    Some(i64::from_le_bytes(bytes))
}

/// The request headers, all at once (one host call): see [`abi::Pairs`].
pub fn request_headers() -> Option<Vec<u8>> {
    abi::header_pairs(abi::REQUEST_HEADERS).ok().flatten()
}

/// A request header's raw value (`name` in lower case); unavailable is `None`.
pub fn request_header(name: &str) -> Option<Vec<u8>> {
    abi::header(abi::REQUEST_HEADERS, name.as_bytes())
        .ok()
        .flatten()
}

/// A response header's raw value.
pub fn response_header(name: &str) -> Option<Vec<u8>> {
    abi::header(abi::RESPONSE_HEADERS, name.as_bytes())
        .ok()
        .flatten()
}

/// A response trailer's raw value.
pub fn response_trailer(name: &str) -> Option<Vec<u8>> {
    abi::header(abi::RESPONSE_TRAILERS, name.as_bytes())
        .ok()
        .flatten()
}

/// A `log` backend over [`abi::log`]: unlike the SDK's logger it never panics when the host
/// refuses a line.
struct HostLogger;

static LOGGER: HostLogger = HostLogger;

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Trace => 0,
            log::Level::Debug => 1,
            log::Level::Info => 2,
            log::Level::Warn => 3,
            log::Level::Error => 4,
        };
        let message = record.args().to_string();
        abi::log(level, message.as_bytes());
    }

    fn flush(&self) {}
}

/// Installs the logger (once; later calls only change the level) and logs at `level` and above.
pub fn init_logging(level: log::LevelFilter) {
    // `set_logger` fails only when a logger is already installed: then it is this one.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// Logs from now on only what the host would keep: its level from `proxy_get_log_level` (Envoy's
/// Wasm log level; Istio's default is warning). A message below it is then neither formatted nor
/// handed to the host. One host call, no allocation; when the host does not answer, the level
/// stays as it was.
pub fn sync_log_level() {
    let filter = match abi::log_level() {
        Some(0) => log::LevelFilter::Trace,
        Some(1) => log::LevelFilter::Debug,
        Some(2) => log::LevelFilter::Info,
        Some(3) => log::LevelFilter::Warn,
        Some(4) => log::LevelFilter::Error,
        Some(_) => log::LevelFilter::Off,
        None => return,
    };
    log::set_max_level(filter);
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

/// Metric handles by stat name, defined on first use. At most [`metrics::MAX_SERIES`] series are
/// defined; a series beyond that is counted in its metric's overflow series (every label
/// `overflow`), so neither a large configuration nor hostile traffic can make the host refuse a
/// metric. A metric the host refuses is remembered as refused and not asked for again.
///
/// Each series is also cached under a small integer key the filter computes from its label
/// indices, so a request updates a metric with one hash of a `u64` and no name building. The
/// by-name table is only consulted on a key's first use; it is a `BTreeMap` because std's
/// `HashMap` seeds its hasher from WASI's random source, whose failure path alone (an errno's
/// `Debug` text and the Unicode tables behind it) is several kilobytes of module.
#[derive(Debug, Default)]
pub struct Metrics {
    ids: BTreeMap<String, Option<u32>>,
    defined: usize,
    by_key: U64Map<Option<u32>>,
}

impl Metrics {
    fn id(&mut self, kind: u32, name: String) -> Option<u32> {
        if let Some(id) = self.ids.get(&name) {
            return *id;
        }
        let name = if self.defined >= metrics::MAX_SERIES {
            let overflow = metrics::overflow_series(&name);
            if let Some(id) = self.ids.get(&overflow) {
                return *id;
            }
            overflow
        } else {
            name
        };
        let id = match abi::define_metric(kind, name.as_bytes()) {
            Ok(id) => {
                self.defined += 1;
                Some(id)
            }
            Err(status) => {
                log::error!("cannot define metric {name}: host status {status}");
                None
            }
        };
        self.ids.insert(name, id);
        id
    }

    /// Forgets the keys (after a reconfiguration gives them other meanings); the series and
    /// their names stay defined.
    pub fn clear_keys(&mut self) {
        self.by_key.clear();
    }

    fn keyed(&mut self, kind: u32, key: u64, name: impl FnOnce() -> String) -> Option<u32> {
        if let Some(id) = self.by_key.get(key) {
            return id;
        }
        let id = self.id(kind, name());
        self.by_key.insert(key, id);
        id
    }

    /// Adds one to the counter cached under `key`, named `name()` when first used.
    pub fn count_keyed(&mut self, key: u64, name: impl FnOnce() -> String) {
        if let Some(id) = self.keyed(abi::METRIC_COUNTER, key, name) {
            if let Err(status) = abi::increment_metric(id, 1) {
                log::error!("cannot increment metric {id}: host status {status}");
            }
        }
    }

    /// Records `value` in the histogram cached under `key`, named `name()` when first used.
    pub fn record_keyed(&mut self, key: u64, name: impl FnOnce() -> String, value: u64) {
        if let Some(id) = self.keyed(abi::METRIC_HISTOGRAM, key, name) {
            if let Err(status) = abi::record_metric(id, value) {
                log::error!("cannot record metric {id}: host status {status}");
            }
        }
    }

    /// Adds one to the counter `name`.
    pub fn count(&mut self, name: String) {
        if let Some(id) = self.id(abi::METRIC_COUNTER, name) {
            if let Err(status) = abi::increment_metric(id, 1) {
                log::error!("cannot increment metric {id}: host status {status}");
            }
        }
    }

    /// Records `value` in the histogram `name`.
    pub fn record(&mut self, name: String, value: u64) {
        if let Some(id) = self.id(abi::METRIC_HISTOGRAM, name) {
            if let Err(status) = abi::record_metric(id, value) {
                log::error!("cannot record metric {id}: host status {status}");
            }
        }
    }
}
