//! What Envoy says about the workload a filter runs in: the `xds.node` property.
//!
//! Envoy answers `proxy_get_property("xds\0node")` with the proxy's `envoy.config.core.v3.Node`
//! message serialized as protobuf (`serializeValue`, `CelValue::Type::kMessage`, in Envoy's
//! `source/extensions/common/wasm/context.cc`; the `xds` attributes are
//! `source/extensions/filters/common/expr/context.cc` `XDSWrapper`). The top-level `node` property
//! was removed in Envoy 1.33 (changelogs/1.33.0.yaml, PR #36619): asked for it, every Envoy of a
//! supported Istio line answers NotFound. The message is large (50 to 60 KB in an Istio sidecar,
//! most of it `extensions`, the list of every extension compiled in); decoding skips every field
//! but `metadata`'s strings, once per configuration. Measured (tests/filters/tests/budget.rs): an
//! Istio-sized node adds about 1,500 wasm instructions to the authorization filter's
//! `on_configure` (285,000 with a bare node, most of it reading the policy), 1.01x. Istio's agent fills `node.metadata` (a
//! `google.protobuf.Struct`) from the sidecar's environment (`pkg/bootstrap/config.go`,
//! `pkg/model/proxy.go` `NodeMetadata`): `NAMESPACE` from `POD_NAMESPACE`, `SERVICE_ACCOUNT` from
//! the pod's `spec.serviceAccountName`, and `WORKLOAD_NAME` from `ISTIO_META_WORKLOAD_NAME`, which
//! the injection template sets to the pod's `service.istio.io/workload-name` label or its
//! Deployment's name.
//!
//! Only the fields read here are declared; protobuf decoding skips the others.

/// `envoy.config.core.v3.Node`, the fields meshguard reads (`metadata = 3`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeProto {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(message, optional, tag = "3")]
    pub metadata: Option<StructProto>,
}

/// `google.protobuf.Struct`: `map<string, Value> fields = 1`, read as the repeated entry
/// messages a protobuf map is on the wire (key = 1, value = 2).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StructProto {
    #[prost(message, repeated, tag = "1")]
    pub fields: Vec<FieldEntry>,
}

/// One entry of [`StructProto::fields`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct FieldEntry {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<ValueProto>,
}

/// `google.protobuf.Value`, its `string_value = 3` (a member of the `kind` oneof; the other
/// members are skipped, so a value of another kind reads as no string).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueProto {
    #[prost(string, optional, tag = "3")]
    pub string_value: Option<String>,
}

/// Node metadata keys Istio sets.
pub const WORKLOAD_NAME: &str = "WORKLOAD_NAME";
pub const NAMESPACE: &str = "NAMESPACE";
pub const SERVICE_ACCOUNT: &str = "SERVICE_ACCOUNT";

/// The workload facts of a node; each is `None` when the metadata does not carry it as a string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    pub workload_name: Option<String>,
    pub namespace: Option<String>,
    pub service_account: Option<String>,
}

/// The `node` property could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the node property is not a protobuf Node message: {0}")]
pub struct NodeDecodeError(String);

impl NodeFacts {
    /// Decodes the serialized `Node` message Envoy hands over.
    pub fn from_node_proto(raw: &[u8]) -> Result<Self, NodeDecodeError> {
        let node = <NodeProto as prost::Message>::decode(raw)
            .map_err(|e| NodeDecodeError(e.to_string()))?;
        let fields = node.metadata.map(|m| m.fields).unwrap_or_default();
        // A map's last entry for a key wins, as protobuf decoding of maps has it.
        let text = |key: &str| {
            fields
                .iter()
                .rev()
                .find(|e| e.key == key)
                .and_then(|e| e.value.as_ref())
                .and_then(|v| v.string_value.clone())
        };
        Ok(Self {
            workload_name: text(WORKLOAD_NAME),
            namespace: text(NAMESPACE),
            service_account: text(SERVICE_ACCOUNT),
        })
    }

    /// Encodes these facts as Envoy would serialize such a node (for tests and test hosts).
    pub fn to_node_proto(&self) -> Vec<u8> {
        let mut fields = Vec::new();
        for (key, value) in [
            (WORKLOAD_NAME, &self.workload_name),
            (NAMESPACE, &self.namespace),
            (SERVICE_ACCOUNT, &self.service_account),
        ] {
            if let Some(v) = value {
                fields.push(FieldEntry {
                    key: key.to_owned(),
                    value: Some(ValueProto {
                        string_value: Some(v.clone()),
                    }),
                });
            }
        }
        let node = NodeProto {
            id: "sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local".to_owned(),
            metadata: Some(StructProto { fields }),
        };
        prost::Message::encode_to_vec(&node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_skips_unknown_fields() {
        let facts = NodeFacts {
            workload_name: Some("order-service".into()),
            namespace: Some("shop".into()),
            service_account: None,
        };
        let raw = facts.to_node_proto();
        assert_eq!(NodeFacts::from_node_proto(&raw), Ok(facts.clone()));
        // Unknown fields of Node (cluster = 2, user_agent_name = 6) are skipped.
        let mut more = vec![
            0x12, 3, b'a', b'b', b'c', 0x32, 5, b'e', b'n', b'v', b'o', b'y',
        ];
        more.extend_from_slice(&raw);
        assert_eq!(NodeFacts::from_node_proto(&more), Ok(facts));
        assert_eq!(
            NodeFacts::from_node_proto(b""),
            Ok(NodeFacts::default()),
            "an empty message is a node without metadata"
        );
        assert!(NodeFacts::from_node_proto(b"\x1a\xff").is_err());
        assert!(NodeFacts::from_node_proto(b"\xff\xff\xff").is_err());
    }

    #[test]
    fn a_number_where_a_string_belongs_is_absent() {
        // metadata { fields { key: "NAMESPACE" value { number_value: 1.0 } } }
        let value = [0x11, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f]; // field 2, fixed64
        let mut entry = vec![0x0a, 9];
        entry.extend_from_slice(b"NAMESPACE");
        entry.push(0x12);
        entry.push(value.len() as u8);
        entry.extend_from_slice(&value);
        let mut st = vec![0x0a, entry.len() as u8];
        st.extend_from_slice(&entry);
        let mut node = vec![0x1a, st.len() as u8];
        node.extend_from_slice(&st);
        assert_eq!(NodeFacts::from_node_proto(&node), Ok(NodeFacts::default()));
    }
}
