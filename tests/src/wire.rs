//! What crosses the MQTT link: request envelopes as a car encodes them and the status of the
//! responses it gets back.

use prost::Message;
use proto::vehicle::v1::{Code, Request, Response};

/// Encodes a request envelope (no idempotency key, a 5 s deadline).
pub fn envelope(request_id: &str, method: &str, payload: Vec<u8>) -> Vec<u8> {
    request(request_id, "", method, payload, 5_000)
}

/// Encodes a request envelope with an explicit idempotency key (a 10 s deadline).
pub fn keyed_envelope(request_id: &str, key: &str, method: &str, payload: Vec<u8>) -> Vec<u8> {
    request(request_id, key, method, payload, 10_000)
}

/// Encodes a request envelope with every field given.
pub fn request(request_id: &str, key: &str, method: &str, payload: Vec<u8>, timeout_ms: u32) -> Vec<u8> {
    Request {
        request_id: request_id.into(),
        idempotency_key: key.into(),
        method: method.into(),
        timeout_ms,
        payload,
    }
    .encode_to_vec()
}

/// Decodes the payload of a publish as a response envelope.
pub fn response_of(packet: &rumqttc::Packet) -> Option<Response> {
    match packet {
        rumqttc::Packet::Publish(p) => Response::decode(p.payload.clone()).ok(),
        _ => None,
    }
}

/// The status code of a response envelope.
pub fn status_code(response: &Response) -> Code {
    response.status.clone().unwrap_or_default().code()
}

/// A response's request id and status code, the two things most assertions are about.
pub fn outcome(response: &Response) -> (&str, Code) {
    (response.request_id.as_str(), status_code(response))
}
