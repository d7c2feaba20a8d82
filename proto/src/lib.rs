//! Versioned contracts shared by cars, the gateway and partners.
//!
//! - [`vehicle::v1`]: the envelope carried over MQTT between a car and the gateway;
//! - [`parking::v1`]: the first partner service, `parking.v1.ParkingPayment`;
//! - [`navigation::v1`]: places and routes, `navigation.v1.Navigation`;
//! - [`events::v1`]: how partners push events to cars through the gateway;
//! - [`agent::v1`]: the agent's own local API for in-car apps (results, events);
//! - [`social_login::v1`]: package `identity.v1`, social login by the OAuth 2.0 device
//!   authorization grant (the Rust module is not `identity`, which is the certificate profile);
//! - [`Vin`], [`topics`] and [`metadata`]: how identity appears on the wire;
//! - [`identity`]: the certificate profile (role and holder) and its one parser;
//! - [`device_login`]: the car's side of a social login's polling rules (RFC 8628);
//! - [`json`]: JSON <-> protobuf by method name (compiled-in contracts and installed
//!   descriptor sets), for shells and demos;
//! - [`adapter`]: what a Rust partner adapter can reuse: mTLS and the gateway-client check,
//!   serving a listener until shutdown, the command-line pieces, a test clock and distances;
//! - [`raw`]: gRPC without decoding: a pass-through codec, and a server of unary calls of any path.
//!
//! This crate depends on nothing else of ours, so partners can build against it alone.

pub mod adapter;
pub mod device_login;
pub mod identity;
pub mod json;
pub mod metadata;
pub mod method;
pub mod raw;
pub mod status;
pub mod topics;
mod vin;

pub use method::{MethodPath, MethodPathError};
pub use vin::{Vin, VinError};

/// One versioned contract: `pub mod $package { pub mod $version { <generated code> } }`.
macro_rules! contract {
    ($(#[$package_doc:meta])* $package:ident, $(#[$version_doc:meta])* $version:ident, $name:literal) => {
        $(#[$package_doc])*
        pub mod $package {
            $(#[$version_doc])*
            pub mod $version {
                #![allow(missing_docs, clippy::all)]
                tonic::include_proto!($name);
            }
        }
    };
}

contract!(
    /// The vehicle <-> gateway envelope (`vehicle.v1`).
    vehicle,
    /// Version 1 of the envelope.
    v1,
    "vehicle.v1"
);
contract!(
    /// Parking payment partner service (`parking.v1`).
    parking,
    /// Version 1 of the parking contract.
    v1,
    "parking.v1"
);
contract!(
    /// Navigation partner service (`navigation.v1`): places and routes.
    navigation,
    /// Version 1 of the navigation contract.
    v1,
    "navigation.v1"
);
contract!(
    /// Fleet operations (`fleet.v1`), hosted by the gateway on its ops listener for operators.
    fleet,
    /// Version 1 of the fleet operations API.
    v1,
    "fleet.v1"
);
contract!(
    /// Partner -> car events (`events.v1`), hosted by the gateway.
    events,
    /// Version 1 of the partner events contract.
    v1,
    "events.v1"
);
contract!(
    /// The vehicle agent's local API for in-car apps (`agent.v1`).
    agent,
    /// Version 1 of the agent API.
    v1,
    "agent.v1"
);

contract!(
    /// Social login partner service (package `identity.v1`), by the device authorization grant.
    social_login,
    /// Version 1 of the social login contract.
    v1,
    "identity.v1"
);

/// The encoded `FileDescriptorSet` of every contract in this crate.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("descriptor");
