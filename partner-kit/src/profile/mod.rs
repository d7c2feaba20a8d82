//! What the kit knows about each service: which call is harmless, which one acts for a car,
//! and the service's own checks (idempotency, error codes, cars kept apart).
//!
//! A new service gets a profile by implementing [`Profile`] in a module of its own and adding
//! it to [`KNOWN`]; until then it gets the generic checks.

pub mod parking;

use bytes::Bytes;

use crate::Check;

/// A call the kit makes: the method's full path and the request's bytes.
#[derive(Debug, Clone)]
pub struct Probe {
    /// `/package.Service/Method`.
    pub method: String,
    /// The encoded request.
    pub message: Bytes,
    /// Whether a conforming adapter answers it OK.
    pub expects_ok: bool,
}

/// What the kit knows about one service.
pub trait Profile: Sync {
    /// The service, `package.Service`.
    fn service(&self) -> &'static str;
    /// A call without side effects that a conforming adapter answers OK for any car.
    fn harmless_call(&self) -> Probe;
    /// A call that acts for a car, which a conforming adapter refuses without `x-vehicle-vin`.
    fn call_needing_a_car(&self) -> Probe;
    /// The service's own checks, run after the generic ones.
    fn checks(&self) -> &'static [Check];
}

/// Every profile the kit has.
pub const KNOWN: &[&dyn Profile] = &[&parking::Parking];

/// The profile of `service`, if the kit has one.
pub fn for_service(service: &str) -> Option<&'static dyn Profile> {
    KNOWN.iter().copied().find(|p| p.service() == service)
}
