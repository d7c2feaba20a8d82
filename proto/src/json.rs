//! JSON <-> protobuf for any method of the contracts the caller knows, looked up by its path.
//!
//! [`Contracts`] starts with the contracts compiled into this crate and takes descriptor sets
//! an operator installs for services added by configuration alone (a `FileDescriptorSet` as
//! `protoc --descriptor_set_out`, `buf build -o` or `grpcio-tools` write it), so a shell can
//! type requests for a service no Rust code mentions. Used where people type requests by hand
//! (`vehicle-agent call`, `result`) and where the demo prints them.

use std::path::Path;
use std::sync::LazyLock;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor};

use crate::{FILE_DESCRIPTOR_SET, MethodPath};

static COMPILED: LazyLock<DescriptorPool> =
    LazyLock::new(|| DescriptorPool::decode(FILE_DESCRIPTOR_SET).expect("descriptor set built by build.rs is valid"));

/// Why a JSON request or a response could not be translated.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// Neither the compiled-in contracts nor the descriptor sets added have this method.
    #[error("no method {0} in the contracts known here")]
    UnknownMethod(String),
    /// A descriptor set could not be read or does not fit the contracts already known.
    #[error("descriptor set {path}: {problem}")]
    DescriptorSet {
        /// The file, as given.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
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

/// The message types known for translation: the compiled-in contracts and any descriptor sets
/// added. A file already known by name is not replaced (prost-reflect keeps the first).
#[derive(Debug, Clone)]
pub struct Contracts {
    pool: DescriptorPool,
}

impl Default for Contracts {
    fn default() -> Self {
        Contracts::compiled()
    }
}

impl Contracts {
    /// The contracts compiled into this crate (parking, events, agent, vehicle envelope).
    pub fn compiled() -> Contracts {
        Contracts { pool: COMPILED.clone() }
    }

    /// Adds an encoded `FileDescriptorSet` (`name` says where it came from, for errors). It
    /// must hold every file its files import, except the compiled-in ones (protoc's
    /// `--include_imports` does that).
    pub fn add_descriptor_set(&mut self, name: &str, bytes: &[u8]) -> Result<(), JsonError> {
        // Added to a copy, so that a set refused half way leaves these contracts as they were.
        let mut pool = self.pool.clone();
        pool.decode_file_descriptor_set(bytes)
            .map_err(|e| JsonError::DescriptorSet {
                path: name.to_owned(),
                problem: e.to_string(),
            })?;
        self.pool = pool;
        Ok(())
    }

    /// Reads and adds the descriptor set file at `path` (blocking file IO).
    pub fn add_descriptor_set_file(&mut self, path: &Path) -> Result<(), JsonError> {
        let name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| JsonError::DescriptorSet {
            path: name.clone(),
            problem: e.to_string(),
        })?;
        self.add_descriptor_set(&name, &bytes)
    }

    /// The descriptor of `method`.
    pub fn method(&self, method: &MethodPath) -> Result<MethodDescriptor, JsonError> {
        self.pool
            .get_service_by_name(method.service())
            .and_then(|s| s.methods().find(|m| m.name() == method.method()))
            .ok_or_else(|| JsonError::UnknownMethod(method.to_string()))
    }

    /// Encodes a JSON request (proto3 JSON mapping) for `method`.
    pub fn request_from_json(&self, method: &MethodPath, json: &str) -> Result<Vec<u8>, JsonError> {
        let input = self.method(method)?.input();
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
    pub fn response_to_json(&self, method: &MethodPath, bytes: &[u8]) -> Result<String, JsonError> {
        let output = self.method(method)?.output();
        let msg = DynamicMessage::decode(output.clone(), bytes).map_err(|source| JsonError::BadProtobuf {
            message: output.full_name().to_owned(),
            source,
        })?;
        Ok(serde_json::to_string_pretty(&msg).expect("a dynamic message always serializes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parking::v1::{ListNearbyLotsRequest, ListNearbyLotsResponse, Lot};
    use prost_types::{
        DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet, MethodDescriptorProto,
        ServiceDescriptorProto, field_descriptor_proto,
    };

    fn list() -> MethodPath {
        MethodPath::parse("/parking.v1.ParkingPayment/ListNearbyLots").unwrap()
    }

    #[test]
    fn json_request_encodes_to_the_generated_type() {
        let bytes = Contracts::compiled()
            .request_from_json(
                &list(),
                r#"{"near":{"latitude":31.2,"longitude":121.5},"maxResults":3}"#,
            )
            .unwrap();
        let req = ListNearbyLotsRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(req.max_results, 3);
        assert_eq!(req.near.unwrap().latitude, 31.2);
    }

    #[test]
    fn social_login_is_compiled_in_enums_and_oneofs_included() {
        use crate::social_login::v1::poll_device_login_response::Outcome;
        use crate::social_login::v1::{LoginPending, PollDeviceLoginResponse, SocialProvider, StartDeviceLoginRequest};
        let contracts = Contracts::compiled();
        let start = MethodPath::parse("/identity.v1.SocialLogin/StartDeviceLogin").unwrap();
        let bytes = contracts
            .request_from_json(&start, r#"{"provider":"SOCIAL_PROVIDER_WECHAT"}"#)
            .unwrap();
        let request = StartDeviceLoginRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(request.provider, SocialProvider::Wechat as i32);
        let poll = MethodPath::parse("/identity.v1.SocialLogin/PollDeviceLogin").unwrap();
        let pending = PollDeviceLoginResponse {
            outcome: Some(Outcome::Pending(LoginPending { interval: 5 })),
        };
        let json = contracts.response_to_json(&poll, &pending.encode_to_vec()).unwrap();
        assert!(
            json.contains("\"pending\"") && json.contains("\"interval\": 5"),
            "{json}"
        );
    }

    #[test]
    fn response_decodes_to_json() {
        let resp = ListNearbyLotsResponse {
            lots: vec![Lot {
                name: "Lot A".into(),
                ..Default::default()
            }],
        };
        let json = Contracts::compiled()
            .response_to_json(&list(), &resp.encode_to_vec())
            .unwrap();
        assert!(json.contains("Lot A"), "{json}");
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        let contracts = Contracts::compiled();
        let e = contracts.request_from_json(&list(), r#"{"nope":1}"#).unwrap_err();
        assert!(e.to_string().contains("parking.v1.ListNearbyLotsRequest"), "{e}");
        let unknown = MethodPath::parse("/parking.v1.ParkingPayment/Teleport").unwrap();
        assert!(matches!(
            contracts.request_from_json(&unknown, "{}"),
            Err(JsonError::UnknownMethod(_))
        ));
    }

    /// `echo.v1.Echo/Say(SayRequest{text}) returns (SayRequest)`, as protoc would describe it.
    fn echo_set() -> FileDescriptorSet {
        let text = FieldDescriptorProto {
            name: Some("text".into()),
            number: Some(1),
            r#type: Some(field_descriptor_proto::Type::String as i32),
            label: Some(field_descriptor_proto::Label::Optional as i32),
            json_name: Some("text".into()),
            ..Default::default()
        };
        FileDescriptorSet {
            file: vec![FileDescriptorProto {
                name: Some("echo/v1/echo.proto".into()),
                package: Some("echo.v1".into()),
                syntax: Some("proto3".into()),
                message_type: vec![DescriptorProto {
                    name: Some("SayRequest".into()),
                    field: vec![text],
                    ..Default::default()
                }],
                service: vec![ServiceDescriptorProto {
                    name: Some("Echo".into()),
                    method: vec![MethodDescriptorProto {
                        name: Some("Say".into()),
                        input_type: Some(".echo.v1.SayRequest".into()),
                        output_type: Some(".echo.v1.SayRequest".into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn an_added_descriptor_set_makes_its_methods_known_beside_the_compiled_ones() {
        let say = MethodPath::parse("/echo.v1.Echo/Say").unwrap();
        let mut contracts = Contracts::compiled();
        assert!(matches!(
            contracts.request_from_json(&say, "{}"),
            Err(JsonError::UnknownMethod(_))
        ));
        contracts
            .add_descriptor_set("echo.pb", &echo_set().encode_to_vec())
            .unwrap();
        let bytes = contracts.request_from_json(&say, r#"{"text":"hi"}"#).unwrap();
        assert_eq!(bytes, b"\x0a\x02hi");
        assert!(contracts.response_to_json(&say, &bytes).unwrap().contains("\"hi\""));
        contracts.request_from_json(&list(), "{}").unwrap();
    }

    #[test]
    fn a_broken_descriptor_set_is_refused_and_changes_nothing() {
        let mut contracts = Contracts::compiled();
        let e = contracts.add_descriptor_set("junk.pb", b"\xff\xff").unwrap_err();
        assert!(e.to_string().starts_with("descriptor set junk.pb:"), "{e}");
        let mut dangling = echo_set();
        dangling.file[0].service[0].method[0].input_type = Some(".echo.v1.Missing".into());
        let e = contracts
            .add_descriptor_set("dangling.pb", &dangling.encode_to_vec())
            .unwrap_err();
        assert!(e.to_string().contains("Missing"), "{e}");
        let say = MethodPath::parse("/echo.v1.Echo/Say").unwrap();
        assert!(matches!(contracts.method(&say), Err(JsonError::UnknownMethod(_))));
        let e = contracts
            .add_descriptor_set_file(Path::new("/nonexistent/x.pb"))
            .unwrap_err();
        assert!(e.to_string().starts_with("descriptor set /nonexistent/x.pb:"), "{e}");
    }
}
