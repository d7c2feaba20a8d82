//! Who is calling: the gRPC metadata the gateway attaches to every call.
//!
//! The gateway takes the VIN from the car's client certificate, so `x-vehicle-vin` is the only
//! identity an adapter may trust. Never take a VIN (or any owner) from the request payload: a car
//! controls its payload, but not the header the gateway writes.

use proto::metadata;
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::idempotency::MAX_KEY_BYTES;

/// Identity and correlation data of one call, read from its metadata.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    vin: Option<String>,
    request_id: Option<String>,
    /// `Err` when the header is present but not readable text: silently ignoring it would turn
    /// off deduplication for a call that asked for it.
    idempotency_key: Result<Option<String>, Status>,
}

impl Caller {
    /// Reads the caller from a request's metadata. Never fails: each accessor reports what is
    /// missing only when the method actually needs it.
    pub(crate) fn from_metadata(metadata: &MetadataMap) -> Caller {
        let text = |name: &str| -> Result<Option<String>, ()> {
            match metadata.get(name) {
                None => Ok(None),
                Some(value) => match value.to_str() {
                    Ok(s) if s.trim().is_empty() => Ok(None),
                    Ok(s) => Ok(Some(s.trim().to_owned())),
                    Err(_) => Err(()),
                },
            }
        };
        Caller {
            // An unreadable VIN is as good as none: the call is not authenticated.
            vin: text(metadata::VIN).ok().flatten(),
            request_id: text(metadata::REQUEST_ID).ok().flatten(),
            idempotency_key: text(metadata::IDEMPOTENCY_KEY).map_err(|()| {
                Status::invalid_argument(format!(
                    "{} metadata is not valid ASCII text",
                    metadata::IDEMPOTENCY_KEY
                ))
            }),
        }
    }

    /// The calling car's VIN; UNAUTHENTICATED when the gateway did not say who is calling.
    pub(crate) fn vin(&self) -> Result<&str, Status> {
        self.vin
            .as_deref()
            .ok_or_else(|| Status::unauthenticated(format!("{} metadata is missing", metadata::VIN)))
    }

    /// The idempotency key, if the call carries one.
    ///
    /// The gateway always sends one. A call without a key is still served, just not
    /// deduplicated; the state checks (one active session per car, ending an ended session
    /// returns it unchanged) still prevent double charges.
    /// A key longer than [`MAX_KEY_BYTES`] is INVALID_ARGUMENT: keys are stored for a day.
    pub(crate) fn idempotency_key(&self) -> Result<Option<&str>, Status> {
        let key = self
            .idempotency_key
            .as_ref()
            .map(Option::as_deref)
            .map_err(Clone::clone)?;
        if key.is_some_and(|key| key.len() > MAX_KEY_BYTES) {
            return Err(Status::invalid_argument(format!(
                "{} metadata is longer than {MAX_KEY_BYTES} bytes",
                metadata::IDEMPOTENCY_KEY
            )));
        }
        Ok(key)
    }

    /// The VIN for logs, "-" when absent.
    pub(crate) fn vin_for_log(&self) -> &str {
        self.vin.as_deref().unwrap_or("-")
    }

    /// The request id for logs, "-" when absent.
    pub(crate) fn request_id_for_log(&self) -> &str {
        self.request_id.as_deref().unwrap_or("-")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_metadata_and_reports_what_is_missing() {
        let mut md = MetadataMap::new();
        md.insert(metadata::VIN, "LSVAU2180N2183294".parse().unwrap());
        md.insert(metadata::IDEMPOTENCY_KEY, "k-1".parse().unwrap());
        let caller = Caller::from_metadata(&md);
        assert_eq!(caller.vin().unwrap(), "LSVAU2180N2183294");
        assert_eq!(caller.idempotency_key().unwrap(), Some("k-1"));
        assert_eq!(caller.request_id_for_log(), "-");

        let anonymous = Caller::from_metadata(&MetadataMap::new());
        assert_eq!(anonymous.vin().unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(anonymous.idempotency_key().unwrap(), None);
    }

    #[test]
    fn an_idempotency_key_past_the_limit_is_rejected() {
        let mut md = MetadataMap::new();
        md.insert(metadata::IDEMPOTENCY_KEY, "k".repeat(MAX_KEY_BYTES).parse().unwrap());
        assert!(Caller::from_metadata(&md).idempotency_key().is_ok());
        md.insert(
            metadata::IDEMPOTENCY_KEY,
            "k".repeat(MAX_KEY_BYTES + 1).parse().unwrap(),
        );
        let err = Caller::from_metadata(&md).idempotency_key().unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn unreadable_idempotency_key_is_rejected() {
        let mut md = MetadataMap::new();
        let value = tonic::metadata::MetadataValue::try_from(&b"caf\xe9"[..]).unwrap();
        md.insert(metadata::IDEMPOTENCY_KEY, value);
        let caller = Caller::from_metadata(&md);
        assert_eq!(
            caller.idempotency_key().unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
