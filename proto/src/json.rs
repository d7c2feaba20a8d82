//! JSON <-> protobuf for any method in the contracts, looked up by its path.
//!
//! Used where people type requests by hand (`vehicle-agent call`) and where the demo prints them.

use std::sync::LazyLock;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor};

use crate::{FILE_DESCRIPTOR_SET, MethodPath};

static POOL: LazyLock<DescriptorPool> =
    LazyLock::new(|| DescriptorPool::decode(FILE_DESCRIPTOR_SET).expect("descriptor set built by build.rs is valid"));

/// Why a JSON request or a response could not be translated.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// The contracts have no such method.
    #[error("no method {0} in the contracts")]
    UnknownMethod(String),
    /// The JSON does not fit the method's request message.
    #[error("request JSON does not fit {message}: {source}")]
    BadJson {
        /// The expected message type.
        message: String,
        /// What serde_json said.
        source: serde_json::Error,
    },
    /// The bytes are not an encoding of the method's response message.
    #[error("response is not a valid {message}: {source}")]
    BadProtobuf {
        /// The expected message type.
        message: String,
        /// What prost said.
        source: prost::DecodeError,
    },
}

/// The descriptor of a method in the contracts.
pub fn method_descriptor(method: &MethodPath) -> Result<MethodDescriptor, JsonError> {
    POOL.get_service_by_name(method.service())
        .and_then(|s| s.methods().find(|m| m.name() == method.method()))
        .ok_or_else(|| JsonError::UnknownMethod(method.to_string()))
}

/// Encodes a JSON request (proto3 JSON mapping) for `method`.
pub fn request_from_json(method: &MethodPath, json: &str) -> Result<Vec<u8>, JsonError> {
    let input = method_descriptor(method)?.input();
    let bad = |source| JsonError::BadJson {
        message: input.full_name().to_owned(),
        source,
    };
    let mut de = serde_json::Deserializer::from_str(json);
    let msg = DynamicMessage::deserialize(input.clone(), &mut de).map_err(bad)?;
    de.end().map_err(bad)?;
    Ok(msg.encode_to_vec())
}

/// Decodes `method`'s encoded response into pretty JSON.
pub fn response_to_json(method: &MethodPath, bytes: &[u8]) -> Result<String, JsonError> {
    let output = method_descriptor(method)?.output();
    let msg = DynamicMessage::decode(output.clone(), bytes).map_err(|source| JsonError::BadProtobuf {
        message: output.full_name().to_owned(),
        source,
    })?;
    Ok(serde_json::to_string_pretty(&msg).expect("a dynamic message always serializes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parking::v1::{ListNearbyLotsRequest, ListNearbyLotsResponse, Lot};

    fn list() -> MethodPath {
        MethodPath::parse("/parking.v1.ParkingPayment/ListNearbyLots").unwrap()
    }

    #[test]
    fn json_request_encodes_to_the_generated_type() {
        let bytes = request_from_json(
            &list(),
            r#"{"near":{"latitude":31.2,"longitude":121.5},"maxResults":3}"#,
        )
        .unwrap();
        let req = ListNearbyLotsRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(req.max_results, 3);
        assert_eq!(req.near.unwrap().latitude, 31.2);
    }

    #[test]
    fn response_decodes_to_json() {
        let resp = ListNearbyLotsResponse {
            lots: vec![Lot {
                name: "Lot A".into(),
                ..Default::default()
            }],
        };
        let json = response_to_json(&list(), &resp.encode_to_vec()).unwrap();
        assert!(json.contains("Lot A"), "{json}");
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        let e = request_from_json(&list(), r#"{"nope":1}"#).unwrap_err();
        assert!(e.to_string().contains("parking.v1.ListNearbyLotsRequest"), "{e}");
        let unknown = MethodPath::parse("/parking.v1.ParkingPayment/Teleport").unwrap();
        assert!(matches!(
            request_from_json(&unknown, "{}"),
            Err(JsonError::UnknownMethod(_))
        ));
    }
}
