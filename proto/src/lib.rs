//! Versioned contracts shared by cars, the gateway and partners.
//!
//! - [`vehicle::v1`]: the envelope carried over MQTT between a car and the gateway;
//! - [`parking::v1`]: the first partner service, `parking.v1.ParkingPayment`;
//! - [`events::v1`]: how partners push events to cars through the gateway;
//! - [`agent::v1`]: the agent's own local API for in-car apps (results, events);
//! - [`Vin`], [`topics`] and [`metadata`]: how identity appears on the wire;
//! - [`identity`]: the certificate profile (role and holder) and its one parser;
//! - [`json`]: JSON <-> protobuf by method name, for shells and demos;
//! - [`raw`]: a pass-through gRPC codec for brokering calls without decoding them.
//!
//! This crate depends on nothing else of ours, so partners can build against it alone.

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

/// The vehicle <-> gateway envelope (`vehicle.v1`).
pub mod vehicle {
    /// Version 1 of the envelope.
    pub mod v1 {
        #![allow(missing_docs, clippy::all)]
        tonic::include_proto!("vehicle.v1");
    }
}

/// Parking payment partner service (`parking.v1`).
pub mod parking {
    /// Version 1 of the parking contract.
    pub mod v1 {
        #![allow(missing_docs, clippy::all)]
        tonic::include_proto!("parking.v1");
    }
}

/// Partner -> car events (`events.v1`), hosted by the gateway.
pub mod events {
    /// Version 1 of the partner events contract.
    pub mod v1 {
        #![allow(missing_docs, clippy::all)]
        tonic::include_proto!("events.v1");
    }
}

/// The vehicle agent's local API for in-car apps (`agent.v1`).
pub mod agent {
    /// Version 1 of the agent API.
    pub mod v1 {
        #![allow(missing_docs, clippy::all)]
        tonic::include_proto!("agent.v1");
    }
}

/// The encoded `FileDescriptorSet` of every contract in this crate.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("descriptor");
