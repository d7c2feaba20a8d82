//! The link's MQTT options and background tasks: the event loop and the outbox housekeeping.
//!
//! The event loop reconnects with jittered backoff, subscribes after every CONNACK (the MQTT
//! session is clean, so subscriptions do not survive a drop) and republishes the outbox once
//! the subscription is acknowledged, so that answers have somewhere to go. It handles incoming
//! messages one at a time, in order, waiting for their disk writes: a response is stored
//! before its caller is woken, an event's sequence before the event is shown to apps.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use prost::Message;
use rumqttc::{
    ConnectionError, Event as MqttEvent, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS, SubscribeFilter,
    SubscribeReasonCode,
};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use proto::Vin;
use proto::vehicle::v1::{Event, EventAck, Response};

use crate::backoff::Backoff;
use crate::config::{AgentConfig, ENVELOPE_HEADROOM};
use crate::events::Verdict;
use crate::link::{LinkState, MQTT_USERNAME, blocking};
use crate::store::unix_ms_now;

/// How long shutdown waits for the DISCONNECT to be written.
const DISCONNECT_GRACE: Duration = Duration::from_secs(2);
/// Housekeeping runs at least this often (purging old results), and at each deadline.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// How soon housekeeping tries again to store an expiry that failed.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// The MQTT options of the agent (without transport): client id = VIN, clean session.
pub(crate) fn mqtt_options(vin: &Vin, host: String, port: u16, config: &AgentConfig) -> MqttOptions {
    // The gateway refuses any client id but the VIN of the certificate.
    let mut options = MqttOptions::new(vin.as_str(), host, port);
    let max_packet = config.max_payload_bytes + ENVELOPE_HEADROOM;
    options
        .set_keep_alive(config.keep_alive)
        .set_clean_session(true)
        .set_credentials(MQTT_USERNAME, "")
        .set_max_packet_size(max_packet, max_packet);
    options
}

/// The event-loop task: polls until stopped, reconnecting with backoff.
pub(crate) async fn run(
    core: Arc<LinkState>,
    mut eventloop: EventLoop,
    mut backoff: Backoff,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let event = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                backoff.reset();
                debug!(gateway = %core.gateway, "MQTT session open, subscribing");
                subscribe(&core);
            }
            Ok(MqttEvent::Incoming(Packet::SubAck(ack))) => on_subscribed(&core, &ack.return_codes),
            Ok(MqttEvent::Incoming(Packet::Publish(publish))) => on_publish(&core, publish).await,
            Ok(_) => {}
            Err(e) => {
                let delay = backoff.next_delay();
                on_error(&core, &e, delay);
                tokio::select! {
                    biased;
                    _ = stop.wait_for(|s| *s) => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    disconnect(&core, &mut eventloop).await;
}

/// Expires requests at their deadline (those whose caller is gone or was never there, e.g.
/// loaded after a restart) and purges old results, until stopped.
pub(crate) async fn housekeeping(core: Arc<LinkState>, mut stop: watch::Receiver<bool>) {
    loop {
        for id in core.outbox.expired(unix_ms_now()) {
            core.expire(&id).await;
        }
        let outbox = core.outbox.clone();
        match blocking(move || outbox.purge(unix_ms_now())).await {
            Ok(Ok(0)) | Err(_) => {}
            Ok(Ok(n)) => debug!(purged = n, "removed old results"),
            Ok(Err(e)) => warn!(error = %e, "cannot remove old results"),
        }
        let sleep = core
            .outbox
            .next_deadline()
            .map(|d| Duration::from_millis(d.saturating_sub(unix_ms_now())))
            // Already due means the expiry could not be stored (disk trouble): retry calmly.
            .map(|left| if left.is_zero() { RETRY_INTERVAL } else { left })
            .map_or(SWEEP_INTERVAL, |left| left.min(SWEEP_INTERVAL));
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            () = core.new_deadline.notified() => {}
            () = tokio::time::sleep(sleep) => {}
        }
    }
}

fn subscribe(core: &Arc<LinkState>) {
    let filters = [
        SubscribeFilter::new(core.response_topic.clone(), QoS::AtLeastOnce),
        SubscribeFilter::new(core.event_topic.clone(), QoS::AtLeastOnce),
    ];
    // The event loop task must not wait on the channel it drains.
    if core.client.try_subscribe_many(filters.clone()).is_err() {
        let core = core.clone();
        tokio::spawn(async move {
            if let Err(e) = core.client.subscribe_many(filters).await {
                debug!(error = %e, "could not queue the subscription");
            }
        });
    }
}

fn on_subscribed(core: &Arc<LinkState>, codes: &[SubscribeReasonCode]) {
    if codes.iter().any(|c| matches!(c, SubscribeReasonCode::Failure)) {
        error!(
            topics = %format!("{}, {}", core.response_topic, core.event_topic),
            "the gateway refused the subscription; calls cannot be answered"
        );
        return;
    }
    // A new epoch before `connected`: a call that sees the link up publishes in this epoch,
    // and the outbox lets exactly one of it and us do so.
    let epoch = core.epoch.fetch_add(1, Ordering::SeqCst) + 1;
    core.connected.send_replace(true);
    let due = core.outbox.due(epoch, unix_ms_now());
    info!(gateway = %core.gateway, vin = %core.vin, resending = due.len(), "connected to the gateway");
    if !due.is_empty() {
        let core = core.clone();
        tokio::spawn(async move {
            for request in due {
                core.publish(request).await;
            }
        });
    }
}

async fn on_publish(core: &Arc<LinkState>, publish: Publish) {
    if publish.topic == core.response_topic {
        match Response::decode(publish.payload.clone()) {
            Ok(response) => core.finish(response).await,
            Err(e) => warn!(bytes = publish.payload.len(), error = %e, "dropping a malformed response"),
        }
    } else if publish.topic == core.event_topic {
        match Event::decode(publish.payload.clone()) {
            Ok(event) => on_event(core, event).await,
            Err(e) => warn!(bytes = publish.payload.len(), error = %e, "dropping a malformed event"),
        }
    } else {
        debug!(topic = publish.topic, "ignoring a message on an unexpected topic");
    }
}

/// New events are stored, then shown to apps, then acknowledged; redeliveries are only
/// acknowledged again. A crash anywhere in between shows no event twice and loses none.
async fn on_event(core: &Arc<LinkState>, event: Event) {
    let sequence = event.sequence;
    let verdict = core
        .cursor
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .verdict(sequence);
    match verdict {
        Verdict::Unnumbered => {}
        Verdict::Seen => {
            debug!(sequence, "acknowledging again an event delivered before");
            let last = core.cursor.lock().unwrap_or_else(PoisonError::into_inner).last();
            acknowledge(core, last);
            return;
        }
        Verdict::New => {
            let cursor = core.cursor.clone();
            let stored =
                blocking(move || cursor.lock().unwrap_or_else(PoisonError::into_inner).advance(sequence)).await;
            if let Ok(Err(e)) | Err(e) = stored.map_err(std::io::Error::other) {
                // Not acknowledged either: the gateway delivers it again later.
                error!(sequence, error = %e, "cannot store an event's sequence; not delivering it now");
                return;
            }
        }
    }
    debug!(partner = event.partner, kind = event.kind, sequence, "event");
    // No subscriber is fine: nobody in the car is listening right now.
    let _ = core.events.send(event);
    if verdict == Verdict::New {
        acknowledge(core, sequence);
    }
}

/// Publishes a cumulative EventAck without blocking the event loop on its own channel.
fn acknowledge(core: &Arc<LinkState>, sequence: u64) {
    let ack = EventAck { sequence }.encode_to_vec();
    let topic = core.event_ack_topic.clone();
    if core
        .client
        .try_publish(topic.as_str(), QoS::AtLeastOnce, false, ack.clone())
        .is_err()
    {
        let core = core.clone();
        tokio::spawn(async move {
            if let Err(e) = core.client.publish(topic, QoS::AtLeastOnce, false, ack).await {
                debug!(sequence, error = %e, "could not queue an event acknowledgement");
            }
        });
    }
}

fn on_error(core: &LinkState, error: &ConnectionError, delay: Duration) {
    let was_up = core.connected.send_replace(false);
    let retry_in = humantime_serde::re::humantime::format_duration(Duration::from_millis(
        u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
    ));
    if was_up {
        warn!(gateway = %core.gateway, reason = %error, %retry_in, "disconnected from the gateway");
    } else {
        warn!(gateway = %core.gateway, reason = %error, %retry_in, "cannot connect to the gateway");
    }
}

/// Says goodbye to the gateway if there is a session, so it need not wait for the keep-alive.
async fn disconnect(core: &LinkState, eventloop: &mut EventLoop) {
    let was_up = core.connected.send_replace(false);
    if eventloop.network.is_none() || core.client.try_disconnect().is_err() {
        return;
    }
    let sent = tokio::time::timeout(DISCONNECT_GRACE, async {
        loop {
            match eventloop.poll().await {
                Ok(MqttEvent::Outgoing(Outgoing::Disconnect)) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await;
    if was_up {
        info!(gateway = %core.gateway, disconnect_sent = matches!(sent, Ok(true)), "disconnected from the gateway: shutting down");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_username_carries_the_agent_version() {
        let config = AgentConfig::new("localhost:8883", "ca.pem".into(), "car.pem".into(), "car.key".into());
        let vin: Vin = "WBA3B5C50DF123456".parse().unwrap();
        let options = mqtt_options(&vin, "localhost".into(), 8883, &config);
        let login = options.credentials().expect("credentials are set");
        assert_eq!(login.username, format!("vehicle-agent/{}", env!("CARGO_PKG_VERSION")));
        assert_eq!(login.password, "", "certificates authenticate, not passwords");
        assert_eq!(options.client_id(), "WBA3B5C50DF123456");
        assert!(options.clean_session());
    }
}
