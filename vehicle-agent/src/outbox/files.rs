//! The outbox's files: a request or a result is one protobuf file named after its request id.

use std::path::Path;

use prost::Message;

use super::{OutboxEntry, SUFFIX, StoredResult};
use crate::store::is_valid_request_id;

/// The request id a file is named for, if it is one of ours.
pub(super) fn id_of(name: &str) -> Result<&str, String> {
    name.strip_suffix(SUFFIX)
        .filter(|id| is_valid_request_id(id))
        .ok_or_else(|| "not named <request id>.pb".to_owned())
}

pub(super) fn read_entry(path: &Path, name: &str) -> Result<(String, OutboxEntry), String> {
    let id = id_of(name)?;
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let entry = OutboxEntry::decode(bytes.as_slice()).map_err(|e| e.to_string())?;
    match &entry.request {
        Some(r) if r.request_id == id && !r.method.is_empty() => Ok((id.to_owned(), entry)),
        _ => Err("it does not hold the request its name says".to_owned()),
    }
}

pub(super) fn read_result_file(path: &Path, name: &str) -> Result<(String, StoredResult), String> {
    let id = id_of(name)?;
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let result = StoredResult::decode(bytes.as_slice()).map_err(|e| e.to_string())?;
    match &result.response {
        Some(r) if r.request_id == id => Ok((id.to_owned(), result)),
        _ => Err("it does not hold the response its name says".to_owned()),
    }
}
