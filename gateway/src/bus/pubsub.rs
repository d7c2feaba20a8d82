//! Ordinary MQTT pub/sub for the topics of a car's namespace that are not the gateway's own:
//! rumqttd's `Router` in-process, one local link per session that uses such a topic, with the
//! VIN as the link's tenant (rumqttd's `validate-tenant-prefix` then refuses anything outside
//! `/tenants/{VIN}/`, a second check behind the connection layer's).
//!
//! Links carry QoS 0 in both directions: the hop is in-process and lossless, and the session
//! acknowledges the car's QoS 1 itself. rumqttd types stay in this file.

use std::sync::Arc;

use bytes::Bytes;
use proto::Vin;
use rumqttd::local::{LinkBuilder, LinkRx, LinkTx};
use rumqttd::protocol::{
    Disconnect, DisconnectReasonCode, Filter, Packet, Publish, QoS, RetainForwardRule, Subscribe, Unsubscribe,
};
use rumqttd::{Notification, Router, RouterConfig};

/// The router refused or dropped a link (rumqttd's own error type is too large to pass around).
#[derive(Debug, Clone, thiserror::Error)]
#[error("pub/sub router: {0}")]
pub struct PubSubError(pub String);

impl From<rumqttd::local::LinkError> for PubSubError {
    fn from(e: rumqttd::local::LinkError) -> Self {
        PubSubError(e.to_string())
    }
}

type LinkFactory = dyn Fn(&Vin) -> Result<(LinkTx, LinkRx), PubSubError> + Send + Sync;

/// A running router; cheap to clone.
#[derive(Clone)]
pub struct PubSub {
    // The router's event type is private to rumqttd, so its sender is captured in a closure.
    make_link: Arc<LinkFactory>,
}

impl std::fmt::Debug for PubSub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PubSub")
    }
}

impl PubSub {
    /// Starts the router on its own thread, for up to `max_links` links at once. It lives as
    /// long as the process.
    pub fn spawn(max_links: usize, max_packet_bytes: usize) -> PubSub {
        let config = RouterConfig {
            max_connections: max_links,
            max_outgoing_packet_count: 200,
            max_segment_size: (max_packet_bytes * 4).max(1024 * 1024),
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        };
        let router_tx = Router::new(0, config).spawn();
        let make_link = move |vin: &Vin| {
            let (tx, rx, _connack) = LinkBuilder::new(vin.as_str(), router_tx.clone())
                .tenant_id(Some(vin.to_string()))
                .clean_session(true)
                .build()?;
            Ok((tx, rx))
        };
        PubSub {
            make_link: Arc::new(make_link),
        }
    }

    /// Attaches a link for `vin`'s session. Building one waits for the router's answer, so it
    /// runs off the async worker threads. A newer link for the same VIN replaces this one.
    pub async fn link(&self, vin: &Vin) -> Result<PubSubLink, PubSubError> {
        let make = self.make_link.clone();
        let vin = vin.clone();
        match tokio::task::spawn_blocking(move || make(&vin)).await {
            Ok(Ok((tx, rx))) => Ok(PubSubLink { tx, rx }),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(PubSubError(format!("link builder failed: {e}"))),
        }
    }
}

/// A message the router delivers to a session.
#[derive(Debug, Clone)]
pub struct PubSubMessage {
    /// Its topic.
    pub topic: Bytes,
    /// Its payload.
    pub payload: Bytes,
    /// Whether it is a retained message.
    pub retain: bool,
}

/// One session's link to the router.
pub struct PubSubLink {
    tx: LinkTx,
    rx: LinkRx,
}

impl PubSubLink {
    /// Publishes on behalf of the car.
    pub async fn publish(&mut self, topic: Bytes, payload: Bytes, retain: bool) -> Result<(), PubSubError> {
        self.tx
            .send(Packet::Publish(Publish::new(topic, payload, retain), None))
            .await?;
        Ok(())
    }

    /// Subscribes the link to `filters`.
    pub async fn subscribe(&mut self, filters: Vec<String>) -> Result<(), PubSubError> {
        let filters = filters
            .into_iter()
            .map(|path| Filter {
                path,
                qos: QoS::AtMostOnce,
                nolocal: false,
                preserve_retain: false,
                retain_forward_rule: RetainForwardRule::OnEverySubscribe,
            })
            .collect();
        self.tx
            .send(Packet::Subscribe(Subscribe { pkid: 1, filters }, None))
            .await?;
        Ok(())
    }

    /// Removes `filters` from the link's subscriptions.
    pub async fn unsubscribe(&mut self, filters: Vec<String>) -> Result<(), PubSubError> {
        self.tx
            .send(Packet::Unsubscribe(Unsubscribe { pkid: 1, filters }, None))
            .await?;
        Ok(())
    }

    /// The next message for the car. `Err` means the router dropped the link (a newer
    /// session of the same VIN replaced it). Cancel-safe.
    pub async fn next(&mut self) -> Result<PubSubMessage, PubSubError> {
        loop {
            match self.rx.next().await? {
                Some(Notification::Forward(forward)) => {
                    return Ok(PubSubMessage {
                        topic: forward.publish.topic,
                        payload: forward.publish.payload,
                        retain: forward.publish.retain,
                    });
                }
                // The link's buffer was full and the router paused it: ask for more.
                Some(Notification::Unschedule) => self.rx.wake().await?,
                Some(Notification::Disconnect(..)) => return Err(PubSubError("disconnected by the router".into())),
                // Acks of our own subscribe/unsubscribe and the like: nothing for the car.
                Some(_) | None => {}
            }
        }
    }

    /// Detaches from the router (rumqttd's internal disconnect event is private).
    pub async fn close(mut self) {
        let _ = self
            .tx
            .send(Packet::Disconnect(
                Disconnect {
                    reason_code: DisconnectReasonCode::NormalDisconnection,
                },
                None,
            ))
            .await;
    }
}
