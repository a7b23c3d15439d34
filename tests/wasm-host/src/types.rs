//! ABI enums (Proxy-Wasm 0.2.1) and the small value types the host hands to tests.

use std::fmt;

/// `proxy_status_t` / Envoy's `WasmResult`, as returned by every host call.
///
/// Values checked against `proxy_wasm_common.h` (proxy-wasm-cpp-host) and the
/// Rust SDK's `types.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Status {
    /// `Ok` = 0.
    Ok = 0,
    /// `NotFound` = 1.
    NotFound = 1,
    /// `BadArgument` = 2.
    BadArgument = 2,
    /// `SerializationFailure` = 3.
    SerializationFailure = 3,
    /// `ParseFailure` = 4.
    ParseFailure = 4,
    /// `InvalidMemoryAccess` = 6.
    InvalidMemoryAccess = 6,
    /// `Empty` = 7.
    Empty = 7,
    /// `CasMismatch` = 8.
    CasMismatch = 8,
    /// `InternalFailure` = 10.
    InternalFailure = 10,
    /// `Unimplemented` = 12.
    Unimplemented = 12,
}

impl Status {
    /// The value as the guest sees it.
    pub(crate) fn code(self) -> i32 {
        self as i32
    }
}

/// `proxy_log_level_t` (Envoy/spdlog levels 0..=5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum LogLevel {
    /// 0
    Trace = 0,
    /// 1
    Debug = 1,
    /// 2
    Info = 2,
    /// 3
    Warn = 3,
    /// 4
    Error = 4,
    /// 5
    Critical = 5,
}

impl LogLevel {
    pub(crate) fn from_raw(raw: u32) -> Option<LogLevel> {
        Some(match raw {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            5 => LogLevel::Critical,
            _ => return None,
        })
    }
}

/// What a filter callback returned (`proxy_action_t` for headers and bodies).
///
/// The Rust SDK only returns `Continue` (0) and `Pause` (1). Envoy maps `Pause`
/// from `proxy_on_{request,response}_headers` to `StopAllIterationAndWatermark`
/// and any out-of-range value to the most restrictive stop status; the raw value
/// is kept in [`Action::Other`] so a test can see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// 0: continue the filter chain.
    Continue,
    /// 1: `StopIteration` (headers) / `StopIterationAndBuffer` (bodies).
    Pause,
    /// Any other value (Envoy treats them as a stop).
    Other(u32),
}

impl Action {
    pub(crate) fn from_raw(raw: i32) -> Action {
        match raw as u32 {
            0 => Action::Continue,
            1 => Action::Pause,
            other => Action::Other(other),
        }
    }

    /// True unless the callback returned `Continue`.
    pub fn is_stop(self) -> bool {
        self != Action::Continue
    }
}

/// `proxy_metric_type_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum MetricType {
    /// 0
    Counter = 0,
    /// 1
    Gauge = 1,
    /// 2
    Histogram = 2,
}

impl MetricType {
    pub(crate) fn from_raw(raw: u32) -> Option<MetricType> {
        match raw {
            0 => Some(MetricType::Counter),
            1 => Some(MetricType::Gauge),
            2 => Some(MetricType::Histogram),
            _ => None,
        }
    }
}

/// `proxy_map_type_t` (only the values the host knows about).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum MapType {
    RequestHeaders,
    RequestTrailers,
    ResponseHeaders,
    ResponseTrailers,
    /// gRPC metadata and HTTP-call response maps: never available here.
    Other,
}

impl MapType {
    /// `None` for values above Envoy's `WasmHeaderMapType::MAX` (7), which
    /// Envoy rejects with `BadArgument`.
    pub(crate) fn from_raw(raw: u32) -> Option<MapType> {
        Some(match raw {
            0 => MapType::RequestHeaders,
            1 => MapType::RequestTrailers,
            2 => MapType::ResponseHeaders,
            3 => MapType::ResponseTrailers,
            4..=7 => MapType::Other,
            _ => return None,
        })
    }
}

/// `proxy_buffer_type_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum BufferType {
    HttpRequestBody,
    HttpResponseBody,
    DownstreamData,
    UpstreamData,
    HttpCallResponseBody,
    GrpcReceiveBuffer,
    VmConfiguration,
    PluginConfiguration,
    CallData,
}

impl BufferType {
    /// `None` above Envoy's `WasmBufferType::MAX` (8): `BadArgument`.
    pub(crate) fn from_raw(raw: u32) -> Option<BufferType> {
        Some(match raw {
            0 => BufferType::HttpRequestBody,
            1 => BufferType::HttpResponseBody,
            2 => BufferType::DownstreamData,
            3 => BufferType::UpstreamData,
            4 => BufferType::HttpCallResponseBody,
            5 => BufferType::GrpcReceiveBuffer,
            6 => BufferType::VmConfiguration,
            7 => BufferType::PluginConfiguration,
            8 => BufferType::CallData,
            _ => return None,
        })
    }
}

/// `proxy_stream_type_t` (for `proxy_continue_stream` / `proxy_close_stream`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum StreamType {
    Request,
    Response,
    Downstream,
    Upstream,
}

impl StreamType {
    pub(crate) fn from_raw(raw: u32) -> Option<StreamType> {
        Some(match raw {
            0 => StreamType::Request,
            1 => StreamType::Response,
            2 => StreamType::Downstream,
            3 => StreamType::Upstream,
            _ => return None,
        })
    }
}

/// An ordered HTTP header (or trailer) map whose names and values are raw bytes.
///
/// Names are stored lower-cased, as Envoy's `LowerCaseString` does; values are
/// never altered, so non-UTF-8 and very large values round-trip unchanged.
/// Pseudo-headers (`:path`, `:status`, ...) are kept in front of regular
/// headers, as Envoy's `HeaderMapImpl` does.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Headers {
    /// An empty map.
    pub fn new() -> Headers {
        Headers::default()
    }

    /// Number of entries (a repeated name counts once per value).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// First value for `name` (case-insensitive), as bytes.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        let key = lower(name.as_bytes());
        self.entries
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_slice())
    }

    /// First value for `name` as UTF-8 text (`None` if absent or not UTF-8).
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// All values for `name`, in order.
    pub fn get_all(&self, name: &str) -> Vec<&[u8]> {
        let key = lower(name.as_bytes());
        self.entries
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    /// True if `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Appends an entry (Envoy `addCopy`).
    pub fn add(&mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.add_raw(name.as_ref(), value.as_ref());
    }

    /// Replaces all values of `name` by one entry (Envoy `setCopy`: remove, then add).
    pub fn set(&mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.remove_raw(name.as_ref());
        self.add_raw(name.as_ref(), value.as_ref());
    }

    /// Removes every value of `name`.
    pub fn remove(&mut self, name: impl AsRef<[u8]>) {
        self.remove_raw(name.as_ref());
    }

    /// Iterates over `(name, value)` pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.entries
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
    }

    /// Byte size as Envoy's `HeaderMap::byteSize()` counts it (names + values).
    pub fn byte_size(&self) -> usize {
        self.entries.iter().map(|(k, v)| k.len() + v.len()).sum()
    }

    pub(crate) fn add_raw(&mut self, name: &[u8], value: &[u8]) {
        let key = lower(name);
        if key.first() == Some(&b':') {
            let pos = self
                .entries
                .iter()
                .position(|(k, _)| k.first() != Some(&b':'))
                .unwrap_or(self.entries.len());
            self.entries.insert(pos, (key, value.to_vec()));
        } else {
            self.entries.push((key, value.to_vec()));
        }
    }

    pub(crate) fn get_raw(&self, name: &[u8]) -> Option<&[u8]> {
        let key = lower(name);
        self.entries
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_slice())
    }

    pub(crate) fn remove_raw(&mut self, name: &[u8]) {
        let key = lower(name);
        self.entries.retain(|(k, _)| *k != key);
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }

    pub(crate) fn entries(&self) -> &[(Vec<u8>, Vec<u8>)] {
        &self.entries
    }
}

fn lower(name: &[u8]) -> Vec<u8> {
    name.to_ascii_lowercase()
}

impl<K: AsRef<[u8]>, V: AsRef<[u8]>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut headers = Headers::new();
        for (k, v) in iter {
            headers.add(k, v);
        }
        headers
    }
}

impl<K: AsRef<[u8]>, V: AsRef<[u8]>, const N: usize> From<[(K, V); N]> for Headers {
    fn from(pairs: [(K, V); N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl<K: AsRef<[u8]>, V: AsRef<[u8]>> From<Vec<(K, V)>> for Headers {
    fn from(pairs: Vec<(K, V)>) -> Self {
        pairs.into_iter().collect()
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            }))
            .finish()
    }
}

/// One message from `proxy_log` or from the guest's stdout/stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Level passed by the guest (stdout is logged at `Info`, stderr at `Error`, as Envoy does).
    pub level: LogLevel,
    /// The message (lossily decoded as UTF-8).
    pub message: String,
    /// Context the call was made from (0 while the VM starts).
    pub context_id: u32,
}

/// A `proxy_send_local_response` call, as the filter made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    /// HTTP status code passed by the filter.
    pub status_code: u32,
    /// Response code details (Envoy replaces whitespace with `_`, as here).
    pub details: String,
    /// Body passed by the filter.
    pub body: Vec<u8>,
    /// Additional headers passed by the filter (names lower-cased).
    pub headers: Headers,
    /// gRPC status passed by the filter (`-1` = none, the SDK's default for HTTP).
    pub grpc_status: i32,
    /// Context that sent it.
    pub context_id: u32,
}
