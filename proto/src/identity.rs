//! The certificate profile: how an X.509 certificate says who it belongs to.
//!
//! One CA signs every certificate; the subject's organizational unit (OU) says the role and
//! the common name (CN) says who:
//! - a vehicle: `OU=vehicle`, `CN=<VIN>`, extended key usage clientAuth;
//! - a partner adapter (or the gateway's gRPC client): `OU=partner`, `CN=<name>`, clientAuth and serverAuth;
//! - the gateway's server certificate: `OU=gateway`, serverAuth, SANs for its host names.

/// OU of a vehicle certificate.
pub const VEHICLE_ROLE: &str = "vehicle";
/// OU of a partner adapter certificate.
pub const PARTNER_ROLE: &str = "partner";
/// OU of the gateway's server certificate.
pub const GATEWAY_ROLE: &str = "gateway";
