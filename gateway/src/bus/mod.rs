//! Where the vehicle-facing connection layer and the gateway's request routing meet, without
//! knowing each other.
//!
//! A car's namespace `/tenants/{VIN}/` holds two kinds of topics:
//!
//! - **The gateway's own topics** (`v1/req` and `v1/events/ack` in, `v1/resp` and `v1/events`
//!   out) are point-to-point between one car and the gateway, like AWS IoT's reserved `$aws/`
//!   topics: what a car sends on them goes to the [`Inbox`] (implemented by routing), and what the
//!   gateway sends goes through [`Mailboxes`] to the one live session of that VIN. No
//!   subscription filter is ever stored for them and no fan-out happens, so an idle car costs
//!   a few hundred bytes here and a request does two in-process hand-offs.
//! - **Every other topic** is ordinary MQTT pub/sub, served by rumqttd's router
//!   ([`pubsub::PubSub`]) with the VIN as the link's tenant, so the router enforces the
//!   namespace a second time. A session attaches to it only once the car uses such a topic.

pub mod mailbox;
pub mod pubsub;

use bytes::Bytes;
use proto::Vin;
use tokio::sync::OwnedSemaphorePermit;

pub use mailbox::{Delivery, Mailbox, MailboxState, Mailboxes, Outbound, OutboundMessage};
pub use pubsub::{PubSub, PubSubError, PubSubLink, PubSubMessage};

/// What a car sent to the gateway itself.
#[derive(Debug, Clone)]
pub enum Inbound {
    /// An encoded `vehicle.v1.Request`, published on the car's `v1/req` topic.
    Request(Bytes),
    /// An encoded `vehicle.v1.EventAck`, published on the car's `v1/events/ack` topic.
    EventAck(Bytes),
}

/// Receives what cars send on the gateway's own topics; implemented by routing.
pub trait Inbox: Send + Sync + 'static {
    /// `vin` (from its certificate) sent `message`. `slot` is one of the car's requests in
    /// flight: hold it until the answer is in the car's mailbox, so a car that floods requests
    /// is slowed down (its session stops reading) instead of queueing without bound.
    fn receive(&self, vin: Vin, message: Inbound, slot: OwnedSemaphorePermit);
}
