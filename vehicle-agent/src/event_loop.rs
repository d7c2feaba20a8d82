//! The link's MQTT options and background tasks: the event loop and the outbox housekeeping.
//!
//! A gateway that goes away (it closes the connection on shutdown, without the DISCONNECT an
//! MQTT 3.1.1 server need not send, or it crashes, or the cell drops) is a warning with the
//! reason and a reconnection with backoff, never an error: it is what the agent is built for.
//!
//! The event loop reconnects with jittered backoff, subscribes after every CONNACK (the MQTT
//! session is clean, so subscriptions do not survive a drop) and republishes the outbox once
//! the subscription is acknowledged, so that answers have somewhere to go. It handles incoming
//! messages one at a time, in order, waiting for their disk writes: a response is stored
//! before its caller is woken, an event before it is shown to apps (see [`crate::events`]).
//!
//! After refusing an event (the event store full or the disk failing) the agent subscribes to
//! its events topic again, once an app has made room or after [`EVENT_RETRY_DELAY`]: the
//! gateway then delivers everything unacknowledged again, in order. Such a SUBSCRIBE has one
//! filter, the connection's has two: its SUBACK is not a new connection.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prost::Message;
use rumqttc::{
    ConnectionError, Event as MqttEvent, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS, StateError,
    SubscribeFilter, SubscribeReasonCode,
};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use proto::Vin;
use proto::vehicle::v1::{Event, EventAck, Response};

use crate::backoff::Backoff;
use crate::config::{AgentConfig, ENVELOPE_HEADROOM};
use crate::events::Arrival;
use crate::link::{LinkState, MQTT_USERNAME, blocking};
use crate::store::unix_ms_now;

/// How long shutdown waits for the DISCONNECT to be written.
const DISCONNECT_GRACE: Duration = Duration::from_secs(2);
/// Housekeeping runs at least this often (purging old results), and at each deadline.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// How soon housekeeping looks again at a deadline it could not act on.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// How soon the gateway is asked again for an event the disk refused.
pub(crate) const EVENT_RETRY_DELAY: Duration = Duration::from_secs(5);

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
    state: Arc<LinkState>,
    mut eventloop: EventLoop,
    mut backoff: Backoff,
    mut stop: watch::Receiver<bool>,
) {
    // Whether the gateway accepted this connection (CONNACK), so that losing it is a
    // disconnection, not a failure to connect.
    let mut open = false;
    loop {
        let event = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                open = true;
                backoff.reset();
                debug!(gateway = %state.gateway, "MQTT session open, subscribing");
                subscribe(&state);
            }
            Ok(MqttEvent::Incoming(Packet::SubAck(ack))) => on_subscribed(&state, &ack.return_codes),
            Ok(MqttEvent::Incoming(Packet::Publish(publish))) => on_publish(&state, publish).await,
            Ok(_) => {}
            Err(e) => {
                // rumqttc keeps what it read in the same batch as the failure queued and hands
                // it out after the next CONNACK, where a SUBACK would pass for the new
                // connection's: take it now.
                let unread: Vec<MqttEvent> = eventloop.state.events.drain(..).collect();
                let reason = why_disconnected(&e, &unread);
                let delay = backoff.next_delay();
                on_error(&state, &reason, delay, std::mem::take(&mut open));
                // Responses and events that came before the failure count all the same.
                for event in unread {
                    if let MqttEvent::Incoming(Packet::Publish(publish)) = event {
                        on_publish(&state, publish).await;
                    }
                }
                tokio::select! {
                    biased;
                    _ = stop.wait_for(|s| *s) => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    disconnect(&state, &mut eventloop).await;
}

/// Expires requests at their deadline (those whose caller is gone or was never there, e.g.
/// loaded after a restart), writes again the answers the disk refused, and purges old
/// results, until stopped.
pub(crate) async fn housekeeping(state: Arc<LinkState>, mut stop: watch::Receiver<bool>) {
    loop {
        for id in state.outbox.expired(unix_ms_now()) {
            state.expire(&id).await;
        }
        store_answers(&state).await;
        let outbox = state.outbox.clone();
        match blocking(move || outbox.purge(unix_ms_now())).await {
            Ok(Ok(0)) | Err(_) => {}
            Ok(Ok(n)) => debug!(purged = n, "removed old results"),
            Ok(Err(e)) => warn!(error = %e, "cannot remove old results"),
        }
        let next = [state.outbox.next_deadline(), state.outbox.next_retry()];
        let sleep = next
            .into_iter()
            .flatten()
            .min()
            .map(|at| Duration::from_millis(at.saturating_sub(unix_ms_now())))
            // Already due means it could not be acted on just now (shutting down): calmly.
            .map(|left| if left.is_zero() { RETRY_INTERVAL } else { left })
            .map_or(SWEEP_INTERVAL, |left| left.min(SWEEP_INTERVAL));
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            () = state.wake_housekeeping.notified() => {}
            () = tokio::time::sleep(sleep) => {}
        }
    }
}

/// Writes the answers held in memory whose retry time has come (see [`crate::outbox`]).
async fn store_answers(state: &LinkState) {
    let outbox = state.outbox.clone();
    let Ok(outcomes) = blocking(move || outbox.store_answers(unix_ms_now())).await else {
        return;
    };
    let failed: Vec<&std::io::Error> = outcomes.iter().filter_map(|(_, r)| r.as_ref().err()).collect();
    let stored = outcomes.len() - failed.len();
    if stored > 0 {
        info!(stored, "stored answers the disk had refused");
    }
    if let Some(e) = failed.first() {
        warn!(answers = failed.len(), error = %e, "still cannot store answers; they are kept and written again");
    }
}

fn subscribe(state: &Arc<LinkState>) {
    let filters = [
        SubscribeFilter::new(state.response_topic.clone(), QoS::AtLeastOnce),
        SubscribeFilter::new(state.event_topic.clone(), QoS::AtLeastOnce),
    ];
    // The event loop task must not wait on the channel it drains.
    if state.client.try_subscribe_many(filters.clone()).is_err() {
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = state.client.subscribe_many(filters).await {
                debug!(error = %e, "could not queue the subscription");
            }
        });
    }
}

/// Asks the gateway to deliver every unacknowledged event again, in order, by subscribing to
/// the events topic again (the gateway does so on every subscription).
pub(crate) fn resubscribe_events(state: &Arc<LinkState>) {
    let topic = state.event_topic.clone();
    if state.client.try_subscribe(topic.as_str(), QoS::AtLeastOnce).is_err() {
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = state.client.subscribe(topic, QoS::AtLeastOnce).await {
                debug!(error = %e, "could not queue the events subscription");
            }
        });
    }
}

fn on_subscribed(state: &Arc<LinkState>, codes: &[SubscribeReasonCode]) {
    if codes.len() == 1 {
        // The events topic again (resubscribe_events), not a new connection.
        debug!(
            refused = matches!(codes[0], SubscribeReasonCode::Failure),
            "events subscribed again"
        );
        return;
    }
    if codes.iter().any(|c| matches!(c, SubscribeReasonCode::Failure)) {
        error!(
            topics = %format!("{}, {}", state.response_topic, state.event_topic),
            "the gateway refused the subscription; calls cannot be answered"
        );
        return;
    }
    // A new epoch before `connected`: a call that sees the link up publishes in this epoch,
    // and the outbox lets exactly one of it and us do so.
    let epoch = state.epoch.fetch_add(1, Ordering::SeqCst) + 1;
    // A new connection: the gateway sends every unacknowledged event again, in order.
    state.events.redelivery_begins();
    state.connected.send_replace(true);
    let due = state.outbox.due(epoch, unix_ms_now());
    info!(gateway = %state.gateway, vin = %state.vin, resending = due.len(), "connected to the gateway");
    if !due.is_empty() {
        let state = state.clone();
        tokio::spawn(async move {
            for request in due {
                state.publish(request).await;
            }
        });
    }
}

async fn on_publish(state: &Arc<LinkState>, publish: Publish) {
    if publish.topic == state.response_topic {
        match Response::decode(publish.payload.clone()) {
            Ok(response) => state.finish(response).await,
            Err(e) => warn!(bytes = publish.payload.len(), error = %e, "dropping a malformed response"),
        }
    } else if publish.topic == state.event_topic {
        match Event::decode(publish.payload.clone()) {
            Ok(event) => on_event(state, event).await,
            Err(e) => warn!(bytes = publish.payload.len(), error = %e, "dropping a malformed event"),
        }
    } else {
        debug!(topic = publish.topic, "ignoring a message on an unexpected topic");
    }
}

/// Keeps an event on disk for apps; acknowledges only what an app took already (a
/// redelivery). What is not kept is not acknowledged: the gateway delivers it again.
async fn on_event(state: &Arc<LinkState>, event: Event) {
    let sequence = event.sequence;
    let events = state.events.clone();
    let Ok(arrival) = blocking(move || events.arrive(&event)).await else {
        return;
    };
    match arrival {
        Arrival::Kept => debug!(sequence, "event kept for apps"),
        Arrival::AlreadyKept => debug!(sequence, "event delivered again, kept already"),
        Arrival::Taken(taken) => {
            debug!(sequence, "acknowledging again an event an app took");
            acknowledge(state, taken);
        }
        Arrival::Full => warn!(
            sequence,
            kept = state.events.kept(),
            "the events kept for apps are at max_kept_events; the gateway keeps this one until an app acknowledges some"
        ),
        Arrival::Behind => debug!(sequence, "not keeping an event behind one refused"),
        Arrival::NotWritten => {
            // Logged by the store; ask again later, in case no app acknowledges meanwhile.
            let state = state.clone();
            tokio::spawn(async move {
                tokio::time::sleep(EVENT_RETRY_DELAY).await;
                resubscribe_events(&state);
            });
        }
        Arrival::OutOfOrder => warn!(sequence, "ignoring an event older than the newest kept"),
        Arrival::Unnumbered => warn!("ignoring an unnumbered event (sequence 0): it cannot be kept in order"),
    }
}

/// Publishes a cumulative EventAck without blocking the event loop on its own channel.
pub(crate) fn acknowledge(state: &Arc<LinkState>, sequence: u64) {
    let ack = EventAck { sequence }.encode_to_vec();
    let topic = state.event_ack_topic.clone();
    if state
        .client
        .try_publish(topic.as_str(), QoS::AtLeastOnce, false, ack.clone())
        .is_err()
    {
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = state.client.publish(topic, QoS::AtLeastOnce, false, ack).await {
                debug!(sequence, error = %e, "could not queue an event acknowledgement");
            }
        });
    }
}

/// What ended the connection, or kept it from starting, in words for the log; `unread` is
/// what rumqttc read before the failure.
///
/// rumqttc reports the gateway closing the connection as an I/O error or "connection
/// aborted", and a DISCONNECT from it (a 3.1.1 server may send none) as an unexpected packet,
/// leaving the DISCONNECT among the packets read.
fn why_disconnected(error: &ConnectionError, unread: &[MqttEvent]) -> String {
    if unread
        .iter()
        .any(|e| matches!(e, MqttEvent::Incoming(Packet::Disconnect)))
    {
        return "the gateway sent DISCONNECT".to_owned();
    }
    let closed_by_peer = |e: &std::io::Error| {
        use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
        matches!(
            e.kind(),
            UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
        )
    };
    match error {
        ConnectionError::MqttState(StateError::ConnectionAborted) => "the gateway closed the connection".to_owned(),
        ConnectionError::MqttState(StateError::Io(e)) | ConnectionError::Io(e) if closed_by_peer(e) => {
            format!("the gateway closed the connection ({e})")
        }
        other => other.to_string(),
    }
}

/// Logs a lost connection (`open`: the gateway had accepted it) or a failed attempt, as a
/// warning: the agent is made for a gateway that comes and goes.
fn on_error(state: &LinkState, reason: &str, delay: Duration, open: bool) {
    let was_up = state.connected.send_replace(false);
    let retry_in = humantime_serde::re::humantime::format_duration(Duration::from_millis(
        u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
    ));
    if was_up || open {
        warn!(gateway = %state.gateway, reason, %retry_in, "disconnected from the gateway");
    } else {
        warn!(gateway = %state.gateway, reason, %retry_in, "cannot connect to the gateway");
    }
}

/// Says goodbye to the gateway if there is an MQTT session, so it need not wait for the keep-alive.
async fn disconnect(state: &LinkState, eventloop: &mut EventLoop) {
    let was_up = state.connected.send_replace(false);
    if eventloop.network.is_none() || state.client.try_disconnect().is_err() {
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
        info!(gateway = %state.gateway, disconnect_sent = matches!(sent, Ok(true)), "disconnected from the gateway: shutting down");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_going_away_is_told_as_such() {
        let disconnect = [MqttEvent::Incoming(Packet::Disconnect)];
        let aborted = ConnectionError::MqttState(StateError::WrongPacket);
        assert_eq!(why_disconnected(&aborted, &disconnect), "the gateway sent DISCONNECT");
        let closed = ConnectionError::MqttState(StateError::ConnectionAborted);
        assert_eq!(why_disconnected(&closed, &[]), "the gateway closed the connection");
        let eof = std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "peer closed connection without sending TLS close_notify",
        );
        let e = why_disconnected(&ConnectionError::Io(eof), &[]);
        assert!(e.starts_with("the gateway closed the connection (peer closed"), "{e}");
        assert_eq!(
            why_disconnected(&ConnectionError::NetworkTimeout, &[]),
            "Network timeout"
        );
    }

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
