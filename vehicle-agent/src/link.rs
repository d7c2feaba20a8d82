//! The MQTT session to the gateway: publishes requests, matches responses, relays events.
//!
//! One background task owns the rumqttc event loop. It reconnects with jittered backoff,
//! subscribes after every CONNACK (the session is clean, so subscriptions do not survive a
//! drop) and republishes every request still waiting once the subscription is acknowledged,
//! so that answers to requests made while the link was down have somewhere to go.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use rumqttc::{
    AsyncClient, ConnectionError, Event as MqttEvent, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS,
    SubscribeFilter, SubscribeReasonCode, TlsConfiguration, Transport,
};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::Status;
use tracing::{debug, error, info, warn};

use proto::vehicle::v1::{Event, Request, Response};
use proto::{MethodPath, Vin, topics};

use crate::backoff::Backoff;
use crate::config::{AgentConfig, ConfigError, ENVELOPE_HEADROOM};
use crate::pending::PendingRequests;
use crate::tls::Identity;

/// Longest idempotency key the envelope allows, in characters.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;

/// Requests queued towards the event loop; callers wait (within their deadline) when it is full.
const REQUEST_CHANNEL_CAPACITY: usize = 64;
/// Events kept for slow in-car subscribers before they start missing some.
const EVENT_CHANNEL_CAPACITY: usize = 256;
/// How long shutdown waits for the DISCONNECT to be written.
const DISCONNECT_GRACE: Duration = Duration::from_secs(2);

/// A handle to the agent's MQTT session with the gateway. Cheap to clone.
#[derive(Clone)]
pub struct GatewayLink {
    inner: Arc<Inner>,
}

/// Owned by the handles only: when the last one goes, `stop` drops and the task ends.
struct Inner {
    core: Arc<Core>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// Shared between the handles and the event-loop task.
struct Core {
    vin: Vin,
    gateway: String,
    client: AsyncClient,
    request_topic: String,
    response_topic: String,
    event_topic: String,
    max_payload_bytes: usize,
    state: Mutex<State>,
    connected: watch::Sender<bool>,
    events: broadcast::Sender<Event>,
}

struct State {
    pending: PendingRequests,
    /// Set by shutdown: no new calls, nothing left to wait for.
    closed: bool,
    /// Partners' events are numbered per VIN; QoS 1 may deliver one twice.
    last_event_sequence: u64,
}

impl std::fmt::Debug for GatewayLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayLink")
            .field("vin", &self.inner.core.vin)
            .field("gateway", &self.inner.core.gateway)
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl GatewayLink {
    /// Validates `config`, loads the car's identity and starts connecting in the background.
    /// Must be called within a tokio runtime; returns without waiting for the gateway.
    pub fn start(config: &AgentConfig) -> Result<GatewayLink, ConfigError> {
        let identity = Identity::load(config)?;
        let (host, port) = config.gateway_addr()?;
        let vin = identity.vin;
        // The gateway refuses any client id but the VIN of the certificate.
        let mut options = MqttOptions::new(vin.as_str(), host, port);
        let max_packet = config.max_payload_bytes + ENVELOPE_HEADROOM;
        options
            .set_keep_alive(config.keep_alive)
            .set_clean_session(true)
            .set_max_packet_size(max_packet, max_packet)
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                identity.client_config,
            )));
        let (client, mut eventloop) = AsyncClient::new(options, REQUEST_CHANNEL_CAPACITY);
        // Requests and responses are small: without NODELAY each one waits out Nagle's
        // algorithm against the gateway's delayed ACK (~40 ms per round trip).
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);

        let core = Arc::new(Core {
            gateway: config.gateway.clone(),
            client,
            request_topic: topics::requests(&vin),
            response_topic: topics::responses(&vin),
            event_topic: topics::events(&vin),
            vin,
            max_payload_bytes: config.max_payload_bytes,
            state: Mutex::new(State {
                pending: PendingRequests::new(),
                closed: false,
                last_event_sequence: 0,
            }),
            connected: watch::Sender::new(false),
            events: broadcast::Sender::new(EVENT_CHANNEL_CAPACITY),
        });
        let (stop, stop_rx) = watch::channel(false);
        let backoff = Backoff::new(config.backoff_initial, config.backoff_max);
        let task = tokio::spawn(run(core.clone(), eventloop, backoff, stop_rx));
        Ok(GatewayLink {
            inner: Arc::new(Inner {
                core,
                stop,
                task: Mutex::new(Some(task)),
            }),
        })
    }

    /// The VIN this link speaks for.
    pub fn vin(&self) -> &Vin {
        &self.inner.core.vin
    }

    /// Whether the link is subscribed on the gateway right now.
    pub fn is_connected(&self) -> bool {
        *self.inner.core.connected.borrow()
    }

    /// Resolves once the link is subscribed on the gateway (at once if it already is).
    pub async fn wait_connected(&self) {
        let mut rx = self.inner.core.connected.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = rx.wait_for(|up| *up).await;
    }

    /// Follows the link's state: `true` while subscribed on the gateway.
    pub fn connection_state(&self) -> watch::Receiver<bool> {
        self.inner.core.connected.subscribe()
    }

    /// Partner events pushed by the gateway, from now on.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.inner.core.events.subscribe()
    }

    /// How many calls wait for a response.
    pub fn pending_calls(&self) -> usize {
        self.inner.core.lock().pending.len()
    }

    /// Calls `method` on the partner behind the gateway and waits at most `timeout` for its answer.
    ///
    /// While the link is down the request waits and goes out on the next connection;
    /// `idempotency_key` (default: the request id) lets the partner deduplicate resends.
    pub async fn call(
        &self,
        method: &MethodPath,
        payload: Bytes,
        timeout: Duration,
        idempotency_key: Option<String>,
    ) -> Result<Bytes, Status> {
        let core = &self.inner.core;
        if payload.len() > core.max_payload_bytes {
            return Err(Status::resource_exhausted(format!(
                "request payload of {} bytes exceeds the {}-byte limit",
                payload.len(),
                core.max_payload_bytes
            )));
        }
        let idempotency_key = idempotency_key.filter(|k| !k.is_empty());
        if let Some(key) = &idempotency_key {
            let chars = key.chars().count();
            if chars > MAX_IDEMPOTENCY_KEY_CHARS {
                return Err(Status::invalid_argument(format!(
                    "idempotency key of {chars} characters exceeds the {MAX_IDEMPOTENCY_KEY_CHARS}-character limit"
                )));
            }
        }
        let now = Instant::now();
        // A deadline beyond what Instant can hold is as good as none: about 30 years.
        let deadline = now
            .checked_add(timeout)
            .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30));
        let request_id = uuid::Uuid::new_v4().to_string();
        let request = Request {
            idempotency_key: idempotency_key.unwrap_or_else(|| request_id.clone()),
            request_id: request_id.clone(),
            method: method.to_string(),
            timeout_ms: 0,
            payload: payload.into(),
        };

        let (reply, first) = {
            let mut state = core.lock();
            if state.closed {
                return Err(Status::unavailable("the vehicle agent is shutting down"));
            }
            let reply = state.pending.insert(request, deadline);
            // Decided under the lock the event loop takes to republish, so that exactly one
            // of us publishes a request made while the link comes up.
            let first = if *core.connected.borrow() {
                state.pending.prepare(&request_id, now)
            } else {
                None
            };
            (reply, first)
        };
        let _forget = Forget {
            core,
            request_id: &request_id,
        };
        debug!(request_id, %method, published = first.is_some(), "call");

        let outcome = tokio::time::timeout_at(deadline, async {
            if let Some(request) = first {
                core.publish(request).await;
            }
            reply.await
        })
        .await;
        match outcome {
            Ok(Ok(response)) => response.into_result().map(Bytes::from),
            Ok(Err(_)) => Err(Status::unavailable("the vehicle agent is shutting down")),
            Err(_) => {
                let published = core.lock().pending.was_published(&request_id);
                Err(deadline_exceeded(timeout, published, self.is_connected()))
            }
        }
    }

    /// Sends MQTT DISCONNECT if connected, fails the calls still waiting and stops the task.
    pub async fn shutdown(&self) {
        {
            let mut state = self.inner.core.lock();
            state.closed = true;
            state.pending.clear();
        }
        self.inner.stop.send_replace(true);
        let task = self.inner.task.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(task) = task
            && let Err(e) = task.await
        {
            error!(error = %e, "the gateway link task failed");
        }
    }
}

fn deadline_exceeded(timeout: Duration, published: bool, up: bool) -> Status {
    let after = humantime_serde::re::humantime::format_duration(timeout);
    Status::deadline_exceeded(match (published, up) {
        (false, _) => {
            format!("no response within {after}: the link to the gateway was down, the request was never sent")
        }
        (true, false) => {
            format!("no response within {after}: the link to the gateway went down after the request was sent")
        }
        (true, true) => {
            format!("no response within {after} from the gateway (the link to the gateway is up)")
        }
    })
}

/// Removes a call's request when the call ends, however it ends (answered, timed out, dropped).
struct Forget<'a> {
    core: &'a Core,
    request_id: &'a str,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.core.lock().pending.remove(self.request_id);
    }
}

impl Core {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not take every later call down with it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn publish(&self, request: Request) {
        let request_id = request.request_id.clone();
        let bytes = request.encode_to_vec();
        if let Err(e) = self
            .client
            .publish(self.request_topic.as_str(), QoS::AtLeastOnce, false, bytes)
            .await
        {
            // Only when the event loop is gone; the request stays pending until its deadline.
            debug!(request_id, error = %e, "could not queue a request");
        }
    }

    fn subscribe(self: &Arc<Self>) {
        let filters = [
            SubscribeFilter::new(self.response_topic.clone(), QoS::AtLeastOnce),
            SubscribeFilter::new(self.event_topic.clone(), QoS::AtLeastOnce),
        ];
        // The event loop task must not wait on the channel it drains.
        if self.client.try_subscribe_many(filters.clone()).is_err() {
            let core = self.clone();
            tokio::spawn(async move {
                if let Err(e) = core.client.subscribe_many(filters).await {
                    debug!(error = %e, "could not queue the subscription");
                }
            });
        }
    }

    fn on_subscribed(self: &Arc<Self>, codes: &[SubscribeReasonCode]) {
        if codes.iter().any(|c| matches!(c, SubscribeReasonCode::Failure)) {
            error!(
                topics = %format!("{}, {}", self.response_topic, self.event_topic),
                "the gateway refused the subscription; calls cannot be answered"
            );
            return;
        }
        let due = {
            let mut state = self.lock();
            self.connected.send_replace(true);
            state.pending.due(Instant::now())
        };
        info!(gateway = %self.gateway, vin = %self.vin, resending = due.len(), "connected to the gateway");
        if !due.is_empty() {
            let core = self.clone();
            tokio::spawn(async move {
                for request in due {
                    core.publish(request).await;
                }
            });
        }
    }

    fn on_publish(&self, publish: Publish) {
        if publish.topic == self.response_topic {
            match Response::decode(publish.payload.clone()) {
                Ok(response) => {
                    let request_id = response.request_id.clone();
                    if !self.lock().pending.complete(response) {
                        debug!(
                            request_id,
                            "ignoring a response nobody waits for (duplicate, late or unknown)"
                        );
                    }
                }
                Err(e) => {
                    warn!(bytes = publish.payload.len(), error = %e, "dropping a malformed response")
                }
            }
        } else if publish.topic == self.event_topic {
            match Event::decode(publish.payload.clone()) {
                Ok(event) => {
                    {
                        let mut state = self.lock();
                        // Sequence 0 means unnumbered: it cannot be deduplicated.
                        if event.sequence != 0 {
                            if event.sequence <= state.last_event_sequence {
                                debug!(sequence = event.sequence, "ignoring an event seen before");
                                return;
                            }
                            state.last_event_sequence = event.sequence;
                        }
                    }
                    debug!(
                        partner = event.partner,
                        kind = event.kind,
                        sequence = event.sequence,
                        "event"
                    );
                    // No subscriber is fine: nobody in the car is listening right now.
                    let _ = self.events.send(event);
                }
                Err(e) => {
                    warn!(bytes = publish.payload.len(), error = %e, "dropping a malformed event")
                }
            }
        } else {
            debug!(topic = publish.topic, "ignoring a message on an unexpected topic");
        }
    }

    fn on_error(&self, error: &ConnectionError, delay: Duration) {
        let was_up = self.connected.send_replace(false);
        let retry_in = humantime_serde::re::humantime::format_duration(Duration::from_millis(
            u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        ));
        if was_up {
            warn!(gateway = %self.gateway, reason = %error, %retry_in, "disconnected from the gateway");
        } else {
            warn!(gateway = %self.gateway, reason = %error, %retry_in, "cannot connect to the gateway");
        }
    }
}

/// The event-loop task: polls until stopped, reconnecting with backoff.
async fn run(core: Arc<Core>, mut eventloop: EventLoop, mut backoff: Backoff, mut stop: watch::Receiver<bool>) {
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
                core.subscribe();
            }
            Ok(MqttEvent::Incoming(Packet::SubAck(ack))) => core.on_subscribed(&ack.return_codes),
            Ok(MqttEvent::Incoming(Packet::Publish(publish))) => core.on_publish(publish),
            Ok(_) => {}
            Err(e) => {
                let delay = backoff.next_delay();
                core.on_error(&e, delay);
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

/// Says goodbye to the gateway if there is a session, so it need not wait for the keep-alive.
async fn disconnect(core: &Core, eventloop: &mut EventLoop) {
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
