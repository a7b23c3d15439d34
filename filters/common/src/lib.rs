//! Guest-side glue shared by the meshguard filters: the Proxy-Wasm ABI ([`abi`], [`entry`]), the
//! allocator, the logger, and [`AbiHost`], the host the filters' logic
//! (`meshguard_filter_logic`) runs on in a proxy. Every host call goes through [`abi`], whose
//! wrappers hand every status back instead of panicking as the SDK's do, and each failure is
//! handled by the logic: no host answer makes a filter trap.

pub mod abi;
pub mod alloc;
pub mod entry;

/// The filters' allocator (see [`alloc`]): only in the Wasm module, where it is single-threaded.
#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: alloc::SmallBlocks = alloc::SmallBlocks::new();

use meshguard_filter_logic::host::LocalReply;
use meshguard_filter_logic::{Host, MetricKind};

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

/// The Proxy-Wasm host, through [`abi`]: what the filters' logic (`meshguard_filter_logic`)
/// asks of the proxy.
#[derive(Debug, Default, Clone, Copy)]
pub struct AbiHost;

impl Host for AbiHost {
    fn property(&mut self, path: &[u8]) -> Option<Vec<u8>> {
        property(path)
    }
    fn request_headers(&mut self) -> Option<Vec<u8>> {
        abi::header_pairs(abi::REQUEST_HEADERS).ok().flatten()
    }
    fn request_header(&mut self, name: &str) -> Option<Vec<u8>> {
        abi::header(abi::REQUEST_HEADERS, name.as_bytes())
            .ok()
            .flatten()
    }
    fn response_header(&mut self, name: &str) -> Option<Vec<u8>> {
        abi::header(abi::RESPONSE_HEADERS, name.as_bytes())
            .ok()
            .flatten()
    }
    fn response_trailer(&mut self, name: &str) -> Option<Vec<u8>> {
        abi::header(abi::RESPONSE_TRAILERS, name.as_bytes())
            .ok()
            .flatten()
    }
    fn send_local_response(&mut self, r: LocalReply<'_>) -> Result<(), u32> {
        abi::send_local_response(r.status, r.details, r.body, r.headers, r.grpc_status)
    }
    fn reset_stream(&mut self) -> Result<(), u32> {
        abi::close_stream(abi::STREAM_HTTP_REQUEST)
    }
    fn define_metric(&mut self, kind: MetricKind, name: &[u8]) -> Result<u32, u32> {
        let kind = match kind {
            MetricKind::Counter => abi::METRIC_COUNTER,
            MetricKind::Histogram => abi::METRIC_HISTOGRAM,
        };
        abi::define_metric(kind, name)
    }
    fn increment_metric(&mut self, id: u32, delta: i64) -> Result<(), u32> {
        abi::increment_metric(id, delta)
    }
    fn record_metric(&mut self, id: u32, value: u64) -> Result<(), u32> {
        abi::record_metric(id, value)
    }
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
