//! Turning typed objects and CRD specs into `DynamicObject`s.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DynamicObject, TypeMeta};
use serde_json::Value;

use crate::RenderError;

/// Metadata with a name, an optional namespace and labels.
pub(crate) fn meta(
    name: &str,
    namespace: Option<&str>,
    labels: BTreeMap<String, String>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: Some(labels),
        ..ObjectMeta::default()
    }
}

/// A typed k8s-openapi object as a `DynamicObject` (its `apiVersion`/`kind` come from the type).
pub(crate) fn typed<K>(obj: &K) -> Result<DynamicObject, RenderError>
where
    K: k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta> + serde::Serialize,
{
    let err = |e: serde_json::Error| RenderError::Object {
        kind: K::KIND.to_owned(),
        name: obj.metadata().name.clone().unwrap_or_default(),
        message: e.to_string(),
    };
    let value = serde_json::to_value(obj).map_err(err)?;
    let mut dynamic: DynamicObject = serde_json::from_value(value).map_err(err)?;
    // k8s-openapi writes apiVersion/kind itself; set them again so the contract does not depend on it.
    dynamic.types = Some(TypeMeta {
        api_version: K::API_VERSION.to_owned(),
        kind: K::KIND.to_owned(),
    });
    Ok(dynamic)
}

/// A custom resource: `apiVersion`, `kind`, metadata and `spec`.
pub(crate) fn custom(
    api_version: &str,
    kind: &str,
    metadata: ObjectMeta,
    spec: Value,
) -> DynamicObject {
    let mut data = serde_json::Map::new();
    data.insert("spec".to_owned(), spec);
    DynamicObject {
        types: Some(TypeMeta {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
        }),
        metadata,
        data: Value::Object(data),
    }
}

/// `value` as YAML with every mapping's keys in sorted order.
pub(crate) fn sorted(value: Value) -> serde_yaml::Value {
    match value {
        Value::Null => serde_yaml::Value::Null,
        Value::Bool(b) => serde_yaml::Value::Bool(b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                serde_yaml::Value::Number(i.into())
            } else if let Some(u) = n.as_u64() {
                serde_yaml::Value::Number(u.into())
            } else {
                serde_yaml::Value::Number(n.as_f64().unwrap_or_default().into())
            }
        }
        Value::String(s) => serde_yaml::Value::String(s),
        Value::Array(items) => serde_yaml::Value::Sequence(items.into_iter().map(sorted).collect()),
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            let mut out = serde_yaml::Mapping::new();
            for (k, v) in entries {
                out.insert(serde_yaml::Value::String(k), sorted(v));
            }
            serde_yaml::Value::Mapping(out)
        }
    }
}
