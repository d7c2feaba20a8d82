//! Building envelope responses and moving between envelope and gRPC status codes.

use crate::vehicle::v1::{Code, Request, Response, Status};

impl From<tonic::Code> for Code {
    fn from(code: tonic::Code) -> Self {
        Code::try_from(code as i32).unwrap_or(Code::Unknown)
    }
}

impl From<Code> for tonic::Code {
    fn from(code: Code) -> Self {
        tonic::Code::from_i32(code as i32)
    }
}

/// The gRPC name of status code `code` (`OK`, `NOT_FOUND`, ...); `UNKNOWN` for a number that
/// is no code.
pub fn code_name(code: i32) -> &'static str {
    Code::try_from(code).unwrap_or(Code::Unknown).as_str_name()
}

impl Request {
    /// A request envelope: the app's `request_id`, the driver intent's `idempotency_key`, the
    /// full gRPC `method` path, the time left in milliseconds (0: the gateway's default) and the
    /// encoded partner message.
    pub fn new(request_id: &str, idempotency_key: &str, method: &str, timeout_ms: u32, payload: Vec<u8>) -> Request {
        Request {
            request_id: request_id.into(),
            idempotency_key: idempotency_key.into(),
            method: method.into(),
            timeout_ms,
            payload,
        }
    }
}

impl Response {
    /// A successful response carrying the method's encoded reply.
    pub fn ok(request_id: impl Into<String>, payload: impl Into<Vec<u8>>) -> Response {
        Response {
            request_id: request_id.into(),
            status: Some(Status {
                code: Code::Ok as i32,
                message: String::new(),
            }),
            payload: payload.into(),
        }
    }

    /// A failed response.
    pub fn error(request_id: impl Into<String>, code: Code, message: impl Into<String>) -> Response {
        Response {
            request_id: request_id.into(),
            status: Some(Status {
                code: code as i32,
                message: message.into(),
            }),
            payload: Vec::new(),
        }
    }

    /// The outcome as a [`tonic::Status`] error, or `Ok(payload)` when the call succeeded.
    pub fn into_result(self) -> Result<Vec<u8>, tonic::Status> {
        let status = self.status.unwrap_or_default();
        match status.code() {
            Code::Ok => Ok(self.payload),
            code => Err(tonic::Status::new(code.into(), status.message)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_grpc_numbers() {
        for number in 0..=16 {
            let c = tonic::Code::from_i32(number);
            let ours: Code = c.into();
            assert_eq!(ours as i32, c as i32);
            assert_eq!(tonic::Code::from(ours), c);
        }
    }

    #[test]
    fn error_response_converts_to_status() {
        let err = Response::error("r1", Code::Unavailable, "partner down")
            .into_result()
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert_eq!(err.message(), "partner down");
        assert_eq!(Response::ok("r1", b"x".to_vec()).into_result().unwrap(), b"x");
    }
}
