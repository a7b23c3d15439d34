//! What Envoy says about the workload a filter runs in: the node's metadata, one field at a time.
//!
//! Envoy serves the proxy's `envoy.config.core.v3.Node` as the `xds.node` property
//! (`source/extensions/filters/common/expr/context.cc`, `XDSWrapper`). The top-level `node`
//! property was removed in Envoy 1.33 (changelogs/1.33.0.yaml, PR #36619): asked for it, every
//! Envoy of a supported Istio line answers NotFound. The whole message is large (58,881 bytes in
//! Istio's order-service sidecar, most of it `extensions`, the list of every extension compiled
//! in), so the filter does not read it: Envoy's `proxy_get_property` walks a path into the message
//! itself (`Context::getProperty` in source/extensions/common/wasm/context.cc: a message field by
//! name, then a `google.protobuf.Struct` as a map by key), and answers
//! `xds.node.metadata.<KEY>` with just that value, a string's bytes for a string (CEL's
//! `serializeValue`). Three reads of a few bytes each at configuration, no protobuf decoding in the
//! module, and no 58 KB copy into it.
//!
//! Istio's agent fills `node.metadata` from the sidecar's environment (`pkg/bootstrap/config.go`,
//! `pkg/model/proxy.go` `NodeMetadata`): `NAMESPACE` from `POD_NAMESPACE`, `SERVICE_ACCOUNT` from
//! the pod's `spec.serviceAccountName`, and `WORKLOAD_NAME` from `ISTIO_META_WORKLOAD_NAME`, which
//! the injection template sets to the pod's `service.istio.io/workload-name` label or its
//! Deployment's name.

/// Node metadata keys Istio sets.
pub const WORKLOAD_NAME: &str = "WORKLOAD_NAME";
pub const NAMESPACE: &str = "NAMESPACE";
pub const SERVICE_ACCOUNT: &str = "SERVICE_ACCOUNT";

/// The property path (segments joined by NUL, as the ABI passes them) of the node metadata
/// field `key`: `xds.node.metadata.<key>`.
pub fn metadata_path(key: &str) -> Vec<u8> {
    let mut path = b"xds\0node\0metadata\0".to_vec();
    path.extend_from_slice(key.as_bytes());
    path
}

/// The workload facts of a node; each is `None` when the metadata does not carry it as text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    pub workload_name: Option<String>,
    pub namespace: Option<String>,
    pub service_account: Option<String>,
}

impl NodeFacts {
    /// Reads the facts through `property` (a `proxy_get_property` of a path; `None`: not found or
    /// unreadable). A value that is not UTF-8 text (Envoy serializes a number as 8 bytes of a
    /// double, a boolean as one byte) is no name and reads as absent.
    pub fn read(mut property: impl FnMut(&[u8]) -> Option<Vec<u8>>) -> Self {
        let mut text =
            |key: &str| property(&metadata_path(key)).and_then(|raw| String::from_utf8(raw).ok());
        Self {
            workload_name: text(WORKLOAD_NAME),
            namespace: text(NAMESPACE),
            service_account: text(SERVICE_ACCOUNT),
        }
    }

    /// The fields present, by their metadata key: what a host serves at
    /// [`metadata_path`]`(key)` for such a node (for tests and test hosts).
    pub fn fields(&self) -> Vec<(&'static str, &str)> {
        [
            (WORKLOAD_NAME, &self.workload_name),
            (NAMESPACE, &self.namespace),
            (SERVICE_ACCOUNT, &self.service_account),
        ]
        .into_iter()
        .filter_map(|(key, value)| value.as_deref().map(|v| (key, v)))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn reads_the_fields_a_host_serves() {
        let facts = NodeFacts {
            workload_name: Some("order-service".into()),
            namespace: Some("shop".into()),
            service_account: None,
        };
        let served: HashMap<Vec<u8>, Vec<u8>> = facts
            .fields()
            .into_iter()
            .map(|(k, v)| (metadata_path(k), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(
            metadata_path(NAMESPACE),
            b"xds\0node\0metadata\0NAMESPACE".to_vec()
        );
        assert_eq!(NodeFacts::read(|p| served.get(p).cloned()), facts);
        assert_eq!(NodeFacts::read(|_| None), NodeFacts::default());
    }

    #[test]
    fn a_value_that_is_not_text_is_absent() {
        // Envoy's serialization of a Struct number (a double, 1.0) and of a boolean.
        let number = 1.0f64.to_le_bytes().to_vec();
        assert!(String::from_utf8(number.clone()).is_err());
        let facts =
            NodeFacts::read(|p| (p == metadata_path(NAMESPACE).as_slice()).then(|| number.clone()));
        assert_eq!(facts, NodeFacts::default());
    }
}
