//! The one protobuf body memkube accepts. kubectl's typed commands (`kubectl create
//! namespace`) send `application/vnd.kubernetes.protobuf` and do not fall back to JSON. A
//! Namespace carries nothing but metadata, so decoding the envelope and the metadata is the
//! whole object; any other kind sent as protobuf gets 415, since its spec would be lost.
//!
//! Wire format: the magic `k8s\0`, then a `runtime.Unknown` whose `raw` holds the object.

use std::collections::BTreeMap;

use prost::Message;
use serde_json::{Value, json};

use crate::api_error::ApiError;

const MAGIC: &[u8] = b"k8s\0";

#[derive(Clone, PartialEq, Message)]
struct Unknown {
    #[prost(message, optional, tag = "1")]
    type_meta: Option<TypeMeta>,
    #[prost(bytes = "vec", optional, tag = "2")]
    raw: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
struct TypeMeta {
    #[prost(string, optional, tag = "1")]
    api_version: Option<String>,
    #[prost(string, optional, tag = "2")]
    kind: Option<String>,
}

/// Any Kubernetes object, seen only through its field 1, `metadata`.
#[derive(Clone, PartialEq, Message)]
struct WithMetadata {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
}

/// The client-settable part of `ObjectMeta` (field numbers from k8s.io/apimachinery).
#[derive(Clone, PartialEq, Message)]
struct ObjectMeta {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    generate_name: Option<String>,
    #[prost(string, optional, tag = "3")]
    namespace: Option<String>,
    #[prost(btree_map = "string, string", tag = "11")]
    labels: BTreeMap<String, String>,
    #[prost(btree_map = "string, string", tag = "12")]
    annotations: BTreeMap<String, String>,
    #[prost(string, repeated, tag = "14")]
    finalizers: Vec<String>,
}

/// Decodes a protobuf-encoded Namespace into its JSON form.
pub fn decode_namespace(body: &[u8]) -> Result<Value, ApiError> {
    let payload = body.strip_prefix(MAGIC).ok_or_else(|| {
        ApiError::bad_request("a protobuf body must start with the Kubernetes magic number")
    })?;
    let unknown = Unknown::decode(payload)
        .map_err(|err| ApiError::bad_request(format!("the protobuf envelope is invalid: {err}")))?;
    let type_meta = unknown.type_meta.unwrap_or_default();
    let kind = type_meta.kind.unwrap_or_default();
    if kind != "Namespace" {
        return Err(ApiError::unsupported_media_type(format!(
            "memkube decodes protobuf for Namespace only, not {kind:?}; send JSON"
        )));
    }
    let object = WithMetadata::decode(unknown.raw.unwrap_or_default().as_slice())
        .map_err(|err| ApiError::bad_request(format!("the protobuf object is invalid: {err}")))?;
    let meta = object.metadata.unwrap_or_default();
    let mut metadata = json!({});
    let fields = [
        ("name", meta.name.map(Value::from)),
        ("generateName", meta.generate_name.map(Value::from)),
        ("namespace", meta.namespace.map(Value::from)),
        (
            "labels",
            (!meta.labels.is_empty()).then(|| json!(meta.labels)),
        ),
        (
            "annotations",
            (!meta.annotations.is_empty()).then(|| json!(meta.annotations)),
        ),
        (
            "finalizers",
            (!meta.finalizers.is_empty()).then(|| json!(meta.finalizers)),
        ),
    ];
    for (field, value) in fields {
        if let Some(value) = value {
            metadata[field] = value;
        }
    }
    Ok(json!({
        "apiVersion": type_meta.api_version.unwrap_or_else(|| "v1".into()),
        "kind": kind,
        "metadata": metadata,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(kind: &str, meta: ObjectMeta) -> Vec<u8> {
        let raw = WithMetadata {
            metadata: Some(meta),
        }
        .encode_to_vec();
        let unknown = Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some("v1".into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
        };
        [MAGIC, &unknown.encode_to_vec()].concat()
    }

    #[test]
    fn decodes_a_namespace_and_refuses_other_kinds() {
        let meta = ObjectMeta {
            name: Some("team".into()),
            labels: BTreeMap::from([("env".into(), "dev".into())]),
            ..Default::default()
        };
        let namespace = decode_namespace(&encode("Namespace", meta.clone())).expect("decodes");
        assert_eq!(
            namespace,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team", "labels": {"env": "dev"}}})
        );
        assert_eq!(
            decode_namespace(&encode("Pod", meta)).unwrap_err().code,
            415
        );
        assert_eq!(decode_namespace(b"{}").unwrap_err().code, 400);
    }
}
