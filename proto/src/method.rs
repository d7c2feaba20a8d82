//! The full gRPC method path of a call (`/package.Service/Method`), parsed once.

use std::fmt;

/// A full gRPC method path, `/package.Service/Method`, as a car names the partner call it wants.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MethodPath {
    path: String,
    slash: usize,
}

/// Why a string is not a gRPC method path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a gRPC method path of the form /package.Service/Method")]
pub struct MethodPathError(pub String);

impl MethodPath {
    /// Validates `path` (`/package.Service/Method`, identifier characters and dots only).
    pub fn parse(path: &str) -> Result<MethodPath, MethodPathError> {
        let err = || MethodPathError(path.chars().take(200).collect());
        let rest = path.strip_prefix('/').ok_or_else(err)?;
        let (service, method) = rest.split_once('/').ok_or_else(err)?;
        if !is_service_name(service) || !identifier(method, false) {
            return Err(err());
        }
        Ok(MethodPath {
            path: path.to_owned(),
            slash: service.len() + 1,
        })
    }

    /// The whole path, e.g. `/parking.v1.ParkingPayment/StartSession`.
    pub fn as_str(&self) -> &str {
        &self.path
    }

    /// The fully qualified service, e.g. `parking.v1.ParkingPayment`.
    pub fn service(&self) -> &str {
        &self.path[1..self.slash]
    }

    /// The method name, e.g. `StartSession`.
    pub fn method(&self) -> &str {
        &self.path[self.slash + 1..]
    }
}

/// Whether `name` is a fully qualified gRPC service name, `package.Service` (identifier
/// characters and dots, at least one dot), as [`MethodPath::service`] gives it.
pub fn is_service_name(name: &str) -> bool {
    identifier(name, true) && name.contains('.')
}

/// Identifier characters, non-empty; with `dots`, dot-separated non-empty identifiers.
fn identifier(s: &str, dots: bool) -> bool {
    let word = |w: &str| !w.is_empty() && w.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if dots { s.split('.').all(word) } else { word(s) }
}

impl std::str::FromStr for MethodPath {
    type Err = MethodPathError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MethodPath::parse(s)
    }
}

impl fmt::Display for MethodPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path)
    }
}

impl fmt::Debug for MethodPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MethodPath({})", self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_service_and_method() {
        let m = MethodPath::parse("/parking.v1.ParkingPayment/StartSession").unwrap();
        assert_eq!(m.service(), "parking.v1.ParkingPayment");
        assert_eq!(m.method(), "StartSession");
    }

    #[test]
    fn refuses_malformed_paths() {
        for bad in [
            "",
            "/",
            "parking.v1.ParkingPayment/StartSession",
            "/parking.v1.ParkingPayment",
            "/parking.v1.ParkingPayment/",
            "/ParkingPayment/StartSession",
            "/parking.v1.ParkingPayment/Start/Session",
            "/parking..v1/../x",
            "/a.b/c d",
        ] {
            assert!(MethodPath::parse(bad).is_err(), "{bad:?}");
        }
    }
}
