//! Where the vehicle-facing connection layer and the gateway's request routing and event
//! delivery meet, without knowing each other.
//!
//! Every topic of a car lives in its own namespace `/tenants/{VIN}/`, and a car can only
//! publish and subscribe there, with one MQTT session per VIN. So every message crosses the
//! gateway point to point; there is no fan-out between cars and no shared topic tree to grow:
//!
//! - **The gateway's own topics** (`v1/req` and `v1/events/ack` in, `v1/resp` and `v1/events`
//!   out), like AWS IoT's reserved `$aws/` topics: a request goes to the [`RequestInbox`]
//!   (implemented by routing), an event acknowledgement to the [`AckInbox`] (implemented by
//!   event delivery), and what the gateway sends goes through [`Mailboxes`] to the one live
//!   session of that VIN.
//! - **Every other topic of the namespace** (telemetry, status, the car's will): what the car
//!   publishes there can only ever reach the car itself, so it goes into the same VIN's mailbox
//!   and out on its matching subscriptions, bounded like everything else in it.

pub mod mailbox;

use bytes::Bytes;
use proto::Vin;
use tokio::sync::OwnedSemaphorePermit;

pub use mailbox::{
    DeliveryOutcome, Eviction, Mailbox, MailboxLimits, MailboxState, Mailboxes, Outbound, OutboundMessage,
};

/// Receives the requests cars publish on their `v1/req` topic; implemented by routing.
pub trait RequestInbox: Send + Sync + 'static {
    /// `vin` (from its certificate) sent the encoded `vehicle.v1.Request` `envelope`. `slot` is
    /// one of the car's requests in flight: hold it until the answer is in the car's mailbox,
    /// so a car that floods requests is slowed down (its session stops reading) instead of
    /// queueing without bound.
    fn request(&self, vin: Vin, envelope: Bytes, slot: OwnedSemaphorePermit);
}

/// Receives the event acknowledgements cars publish on their `v1/events/ack` topic;
/// implemented by event delivery.
pub trait AckInbox: Send + Sync + 'static {
    /// `vin` sent the encoded `vehicle.v1.EventAck` `ack`. Must return at once: it runs on the
    /// car's session, and a flood of acks must cost the gateway no more than reading them.
    fn acknowledged(&self, vin: &Vin, ack: Bytes);
}
