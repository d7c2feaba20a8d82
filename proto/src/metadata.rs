//! gRPC metadata the gateway sets on every call to a partner adapter.

/// The calling car's VIN, taken from its certificate. Authoritative: never from a payload.
pub const VIN: &str = "x-vehicle-vin";
/// The car's request id, for correlating logs across car, gateway and partner.
pub const REQUEST_ID: &str = "x-request-id";
/// Identical on every retry of one driver intent; partners deduplicate side effects on it.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
