//! The in-process MQTT router (rumqttd's `Router`) that vehicle connections and the
//! gateway's own request dispatcher both attach to as local links.
//!
//! rumqttd's router enforces tenant isolation: a link whose tenant is a VIN may only publish
//! and subscribe under `/tenants/{VIN}/`. The gateway's own link has no tenant.

use std::sync::Arc;

use proto::Vin;
use rumqttd::local::{LinkBuilder, LinkRx, LinkTx};
use rumqttd::{Notification, Router, RouterConfig};

/// Who a new link is for.
#[derive(Debug, Clone)]
pub struct LinkSpec {
    /// MQTT client id (the router prefixes it with the tenant).
    pub client_id: String,
    /// The VIN whose namespace the link is confined to; `None` for the gateway itself.
    pub tenant: Option<Vin>,
    /// MQTT clean-session flag.
    pub clean_session: bool,
}

/// The router refused or dropped a link (rumqttd's own error type is too large to pass around).
#[derive(Debug, Clone, thiserror::Error)]
#[error("router: {0}")]
pub struct BusError(pub String);

impl From<rumqttd::local::LinkError> for BusError {
    fn from(e: rumqttd::local::LinkError) -> Self {
        BusError(e.to_string())
    }
}

/// Both halves of a link plus the router's CONNACK.
pub type Link = (LinkTx, LinkRx, Notification);

type LinkFactory = dyn Fn(LinkSpec) -> Result<Link, BusError> + Send + Sync;

/// A running router; cheap to clone.
#[derive(Clone)]
pub struct Bus {
    // The router's event type is private to rumqttd, so its sender is captured in a closure.
    make_link: Arc<LinkFactory>,
}

impl Bus {
    /// Starts the router on its own thread. It lives as long as the process.
    pub fn spawn(max_connections: usize, max_packet_bytes: usize) -> Bus {
        let config = RouterConfig {
            // +1 for the gateway's own dispatcher link.
            max_connections: max_connections + 1,
            max_outgoing_packet_count: 200,
            max_segment_size: (max_packet_bytes * 4).max(1024 * 1024),
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        };
        let router_tx = Router::new(0, config).spawn();
        let make_link = move |spec: LinkSpec| {
            LinkBuilder::new(&spec.client_id, router_tx.clone())
                .tenant_id(spec.tenant.map(|v| v.to_string()))
                .clean_session(spec.clean_session)
                .build()
                .map_err(BusError::from)
        };
        Bus {
            make_link: Arc::new(make_link),
        }
    }

    /// Attaches a new link. Building one waits for the router's answer, so it runs off the
    /// async worker threads.
    pub async fn link(&self, spec: LinkSpec) -> Result<Link, BusError> {
        let make = self.make_link.clone();
        match tokio::task::spawn_blocking(move || make(spec)).await {
            Ok(result) => result,
            Err(e) => Err(BusError(format!("link builder failed: {e}"))),
        }
    }
}
