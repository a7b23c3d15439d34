//! Property values ("attributes") as Envoy serializes them for `proxy_get_property`.
//!
//! Envoy evaluates a property path against its CEL attribute tree and turns the
//! resulting value into bytes with `serializeValue()`
//! (`source/extensions/common/wasm/context.cc`):
//!
//! | CEL type            | bytes handed to the guest                     |
//! |---------------------|-----------------------------------------------|
//! | string / bytes      | the raw bytes, no terminator                  |
//! | bool                | 1 byte, `0` or `1` (`sizeof(bool)`)           |
//! | int64 / uint64      | 8 bytes, little-endian                        |
//! | double              | 8 bytes, IEEE-754 little-endian               |
//! | duration, timestamp | int64 nanoseconds, 8 bytes little-endian      |
//! | map                 | pairs serialization (key, value)              |
//! | list                | pairs serialization (item, empty value)       |
//! | message             | protobuf wire bytes                           |
//!
//! The host never evaluates CEL: tests store already-encoded bytes under a path
//! with the helpers below, per stream and per root context.

use std::collections::HashMap;

use crate::pairs;

/// Encodes a CEL string.
pub fn string(value: &str) -> Vec<u8> {
    value.as_bytes().to_vec()
}

/// Encodes CEL bytes.
pub fn bytes(value: &[u8]) -> Vec<u8> {
    value.to_vec()
}

/// Encodes a CEL bool: one byte, 0 or 1.
pub fn bool(value: bool) -> Vec<u8> {
    vec![u8::from(value)]
}

/// Encodes a CEL int64: 8 bytes little-endian.
pub fn int64(value: i64) -> Vec<u8> {
    value.to_le_bytes().to_vec()
}

/// Encodes a CEL uint64: 8 bytes little-endian.
pub fn uint64(value: u64) -> Vec<u8> {
    value.to_le_bytes().to_vec()
}

/// Encodes a CEL double: 8 bytes little-endian.
pub fn double(value: f64) -> Vec<u8> {
    value.to_le_bytes().to_vec()
}

/// Encodes a CEL timestamp or duration: int64 nanoseconds, 8 bytes little-endian.
pub fn nanos(value: i64) -> Vec<u8> {
    int64(value)
}

/// Encodes a CEL map of strings as Envoy does (pairs serialization).
pub fn map<'a>(entries: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Vec<u8> {
    let entries: Vec<(&[u8], &[u8])> = entries
        .into_iter()
        .map(|(k, v)| (k.as_bytes(), v))
        .collect();
    pairs::serialize(entries)
}

/// Encodes a CEL list of strings as Envoy does (pairs with empty values).
pub fn list<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let entries: Vec<(&[u8], &[u8])> = items.into_iter().map(|i| (i, &[][..])).collect();
    pairs::serialize(entries)
}

/// Decodes a value written by [`int64`] (or read back from the guest).
pub fn decode_int64(value: &[u8]) -> Option<i64> {
    Some(i64::from_le_bytes(value.try_into().ok()?))
}

/// Decodes a value written by [`bool`].
pub fn decode_bool(value: &[u8]) -> Option<bool> {
    match value {
        [0] => Some(false),
        [1] => Some(true),
        _ => None,
    }
}

/// Joins path segments the way the SDK's `serialize_property_path` does
/// (NUL-separated, no trailing NUL).
pub fn path(segments: &[&str]) -> Vec<u8> {
    segments
        .iter()
        .map(|s| s.as_bytes())
        .collect::<Vec<_>>()
        .join(&0u8)
}

/// A set of property values keyed by path, as raw encoded bytes.
///
/// ```
/// use proxy_wasm_host::{property, Properties};
/// let props = Properties::new()
///     .mtls_peer("spiffe://cluster.local/ns/shop/sa/frontend")
///     .with(&["source", "address"], property::string("10.0.0.7:51000"))
///     .with(&["xds", "cluster_name"], property::string("inbound|5000||"));
/// assert_eq!(props.get(&["connection", "mtls"]), Some(&[1u8][..]));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    values: HashMap<Vec<u8>, Vec<u8>>,
}

impl Properties {
    /// No properties.
    pub fn new() -> Properties {
        Properties::default()
    }

    /// Adds (or replaces) one property; `value` is already encoded (see the
    /// functions of this module).
    pub fn with(mut self, path_segments: &[&str], value: Vec<u8>) -> Properties {
        self.set(path_segments, value);
        self
    }

    /// Sets one property in place.
    pub fn set(&mut self, path_segments: &[&str], value: Vec<u8>) {
        self.values.insert(path(path_segments), value);
    }

    /// Removes one property.
    pub fn remove(&mut self, path_segments: &[&str]) {
        self.values.remove(&path(path_segments));
    }

    /// The encoded value stored at a path.
    pub fn get(&self, path_segments: &[&str]) -> Option<&[u8]> {
        self.values.get(&path(path_segments)).map(Vec::as_slice)
    }

    /// A downstream mTLS connection whose peer certificate carries `uri_san`
    /// (for Istio, the SPIFFE id `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`).
    ///
    /// Sets `connection.mtls` = true and `connection.uri_san_peer_certificate`
    /// = `uri_san`, which are what Envoy's `ConnectionWrapper` reports
    /// (`mtls` is true when the downstream TLS connection presented a peer
    /// certificate; `uri_san_peer_certificate` is the first URI SAN of it).
    pub fn mtls_peer(self, uri_san: &str) -> Properties {
        self.with(&["connection", "mtls"], bool(true))
            .with(&["connection", "uri_san_peer_certificate"], string(uri_san))
    }

    /// A plaintext downstream connection: `connection.mtls` = false and no peer
    /// certificate attributes (they are absent in Envoy, so `NotFound`).
    pub fn plaintext(mut self) -> Properties {
        self.remove(&["connection", "uri_san_peer_certificate"]);
        self.with(&["connection", "mtls"], bool(false))
    }

    pub(crate) fn get_raw(&self, raw_path: &[u8]) -> Option<&[u8]> {
        self.values.get(raw_path).map(Vec::as_slice)
    }

    pub(crate) fn insert_raw(&mut self, raw_path: Vec<u8>, value: Vec<u8>) {
        self.values.insert(raw_path, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        assert_eq!(bool(true), vec![1]);
        assert_eq!(bool(false), vec![0]);
        assert_eq!(int64(403), vec![0x93, 0x01, 0, 0, 0, 0, 0, 0]);
        assert_eq!(int64(-1), vec![0xff; 8]);
        assert_eq!(decode_int64(&int64(-42)), Some(-42));
        assert_eq!(path(&["connection", "mtls"]), b"connection\0mtls".to_vec());
        assert_eq!(path(&["a"]), b"a".to_vec());
        assert_eq!(
            list([&b"x"[..]]),
            vec![1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, b'x', 0, 0]
        );
    }
}
