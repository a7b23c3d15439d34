//! The host: what only the proxy can do, as the filters need it.

pub use meshguard_abi_pairs::{serialize as serialize_pairs, Pairs};

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

/// A local reply, as `proxy_send_local_response` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalReply<'a> {
    pub status: u32,
    /// `response.code_details`.
    pub details: &'a [u8],
    pub body: &'a [u8],
    /// In the pairs serialization ([`serialize_pairs`]).
    pub headers: &'a [u8],
    /// The gRPC status, -1 for none.
    pub grpc_status: i32,
}

/// A metric's kind (`proxy_metric_type_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum MetricKind {
    Counter = 0,
    Histogram = 2,
}

/// The proxy, as the filters use it. Every call hands back what the host said: `None` for a
/// value it does not have, `Err(status)` for a call it refused; the filters decide what that
/// means (fail closed), so no host answer makes them trap.
pub trait Host {
    /// A property's raw bytes (`path`: segments joined by NUL).
    fn property(&mut self, path: &[u8]) -> Option<Vec<u8>>;
    /// The request headers, all at once, in the ABI's pairs serialization (see [`Pairs`]).
    fn request_headers(&mut self) -> Option<Vec<u8>>;
    /// One request header's value (`name` in lower case).
    fn request_header(&mut self, name: &str) -> Option<Vec<u8>>;
    /// One response header's value.
    fn response_header(&mut self, name: &str) -> Option<Vec<u8>>;
    /// One response trailer's value.
    fn response_trailer(&mut self, name: &str) -> Option<Vec<u8>>;
    /// Answers the request locally.
    fn send_local_response(&mut self, reply: LocalReply<'_>) -> Result<(), u32>;
    /// Resets the request's stream.
    fn reset_stream(&mut self) -> Result<(), u32>;
    /// Defines a metric; its id.
    fn define_metric(&mut self, kind: MetricKind, name: &[u8]) -> Result<u32, u32>;
    fn increment_metric(&mut self, id: u32, delta: i64) -> Result<(), u32>;
    fn record_metric(&mut self, id: u32, value: u64) -> Result<(), u32>;
}

/// A boolean property as Envoy serializes it (one byte). Anything else is `None`.
pub fn bool_property(host: &mut impl Host, path: &[u8]) -> Option<bool> {
    match host.property(path)?.as_slice() {
        [0] => Some(false),
        [1] => Some(true),
        _ => None,
    }
}

/// An int64 property as Envoy serializes it (eight bytes, little endian).
pub fn int_property(host: &mut impl Host, path: &[u8]) -> Option<i64> {
    let bytes: [u8; 8] = host.property(path)?.try_into().ok()?;
    Some(i64::from_le_bytes(bytes))
}
