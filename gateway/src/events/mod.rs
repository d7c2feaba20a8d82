//! Partner -> car events: partners push them over gRPC ([`service`]), the store keeps them per
//! VIN in order, and [`delivery`] publishes them to the car until it acknowledges them.

pub mod delivery;
pub mod service;

pub use delivery::{EventDelivery, OTHER_NODES_INTERVAL};
pub use service::PartnerEventsApi;
