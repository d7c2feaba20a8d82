//! The gateway link: accepts calls into the durable outbox, publishes them, matches responses.
//!
//! A call is written to the [`Outbox`] before anything is published or answered; the
//! `event_loop` task owns rumqttc's event loop, (re)publishes the outbox on every new
//! subscription and stores each response before waking the caller. A caller that
//! goes away leaves its request in the outbox: the driver's intent outlives the app's call.

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, TlsConfiguration, Transport};
use tokio::sync::{Notify, broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::Status;
use tracing::{debug, error};

use proto::vehicle::v1::{Code, Event, Request, Response};
use proto::{MethodPath, Vin, topics};

use crate::backoff::Backoff;
use crate::config::{AgentConfig, ConfigError};
use crate::event_loop;
use crate::events::EventCursor;
use crate::outbox::{Lookup, Outbox, Sent, StoredResult, Submitted};
use crate::pending::{Token, Waiters};
use crate::store::{self, is_valid_request_id, unix_ms_now};
use crate::tls::Identity;

/// Longest idempotency key the envelope allows, in characters.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;

/// The MQTT username: the gateway authenticates by certificate and records this as the agent version.
pub const MQTT_USERNAME: &str = concat!("vehicle-agent/", env!("CARGO_PKG_VERSION"));

/// Requests queued towards the event loop; callers wait (within their deadline) when it is full.
const REQUEST_CHANNEL_CAPACITY: usize = 64;
/// Events kept for slow in-car subscribers before they start missing some.
const EVENT_CHANNEL_CAPACITY: usize = 256;

/// The ids an app gives a call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallIds {
    /// The app's `x-request-id`; `None` (or empty) means a fresh UUID.
    pub request_id: Option<String>,
    /// One driver intent across retries; `None` (or empty) means the request id.
    pub idempotency_key: Option<String>,
}

/// A handle to the agent's MQTT session with the gateway. Cheap to clone.
#[derive(Clone)]
pub struct GatewayLink {
    state: Arc<LinkState>,
    tasks: Arc<BackgroundTasks>,
}

/// The event loop and housekeeping tasks. Owned by the handles only: when the last one goes,
/// `stop` drops and the tasks end.
struct BackgroundTasks {
    stop: watch::Sender<bool>,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

/// Shared between the handles and the background tasks.
pub(crate) struct LinkState {
    pub(crate) vin: Vin,
    pub(crate) gateway: String,
    pub(crate) client: AsyncClient,
    pub(crate) request_topic: String,
    pub(crate) response_topic: String,
    pub(crate) event_topic: String,
    pub(crate) event_ack_topic: String,
    max_payload_bytes: usize,
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) cursor: Arc<Mutex<EventCursor>>,
    /// Counts subscribed MQTT sessions, so each request is published once per MQTT session.
    pub(crate) epoch: AtomicU64,
    callers: Mutex<Callers>,
    pub(crate) connected: watch::Sender<bool>,
    /// Set by shutdown; ends event streams and refuses new calls.
    pub(crate) closed: watch::Sender<bool>,
    pub(crate) events: broadcast::Sender<Event>,
    /// Pokes the housekeeping task when a new deadline may come before the one it sleeps to.
    pub(crate) new_deadline: Notify,
    /// The state directory's lock, released at shutdown so a successor can take over.
    state_dir_lock: Mutex<Option<File>>,
}

struct Callers {
    waiters: Waiters,
    closed: bool,
}

impl std::fmt::Debug for GatewayLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayLink")
            .field("vin", &self.state.vin)
            .field("gateway", &self.state.gateway)
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl GatewayLink {
    /// Validates `config`, loads the car's identity, locks and loads `state_dir` (blocking file
    /// IO) and starts connecting in the background. Must be called within a tokio runtime.
    pub fn start(config: &AgentConfig) -> Result<GatewayLink, ConfigError> {
        let identity = Identity::load(config)?;
        let (host, port) = config.gateway_addr()?;
        let state_error = |e: std::io::Error| {
            ConfigError::invalid("state_dir", format!("cannot use {}: {e}", config.state_dir.display()))
        };
        let lock = store::lock_state_dir(&config.state_dir).map_err(state_error)?;
        let outbox = Outbox::open(
            &config.state_dir,
            config.outbox_capacity,
            config.result_retention,
            unix_ms_now(),
        )
        .map_err(state_error)?;
        let cursor = EventCursor::open(&config.state_dir).map_err(state_error)?;
        let vin = identity.vin;
        let mut options = event_loop::mqtt_options(&vin, host, port, config);
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            identity.client_config,
        )));
        let (client, mut eventloop) = AsyncClient::new(options, REQUEST_CHANNEL_CAPACITY);
        // Requests and responses are small: without NODELAY each one waits out Nagle's
        // algorithm against the gateway's delayed ACK (~40 ms per round trip).
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);

        let core = Arc::new(LinkState {
            gateway: config.gateway.clone(),
            client,
            request_topic: topics::requests(&vin),
            response_topic: topics::responses(&vin),
            event_topic: topics::events(&vin),
            event_ack_topic: topics::event_acks(&vin),
            vin,
            max_payload_bytes: config.max_payload_bytes,
            outbox: Arc::new(outbox),
            cursor: Arc::new(Mutex::new(cursor)),
            epoch: AtomicU64::new(0),
            callers: Mutex::new(Callers {
                waiters: Waiters::new(),
                closed: false,
            }),
            connected: watch::Sender::new(false),
            closed: watch::Sender::new(false),
            events: broadcast::Sender::new(EVENT_CHANNEL_CAPACITY),
            new_deadline: Notify::new(),
            state_dir_lock: Mutex::new(Some(lock)),
        });
        let (stop, stop_rx) = watch::channel(false);
        let backoff = Backoff::new(config.backoff_initial, config.backoff_max);
        let tasks = vec![
            tokio::spawn(event_loop::run(core.clone(), eventloop, backoff, stop_rx.clone())),
            tokio::spawn(event_loop::housekeeping(core.clone(), stop_rx)),
        ];
        Ok(GatewayLink {
            state: core,
            tasks: Arc::new(BackgroundTasks {
                stop,
                handles: Mutex::new(tasks),
            }),
        })
    }

    /// The VIN this link speaks for.
    pub fn vin(&self) -> &Vin {
        &self.state.vin
    }

    /// Whether the link is subscribed on the gateway right now.
    pub fn is_connected(&self) -> bool {
        *self.state.connected.borrow()
    }

    /// Resolves once the link is subscribed on the gateway (at once if it already is).
    pub async fn wait_connected(&self) {
        let mut rx = self.state.connected.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = rx.wait_for(|up| *up).await;
    }

    /// Follows the link's state: `true` while subscribed on the gateway.
    pub fn connection_state(&self) -> watch::Receiver<bool> {
        self.state.connected.subscribe()
    }

    /// Partner events pushed by the gateway, from now on (each new sequence once).
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.state.events.subscribe()
    }

    /// Follows shutdown: becomes `true` once [`GatewayLink::shutdown`] has begun.
    pub fn closed(&self) -> watch::Receiver<bool> {
        self.state.closed.subscribe()
    }

    /// How many app calls wait for a response right now.
    pub fn pending_calls(&self) -> usize {
        self.state.callers().waiters.len()
    }

    /// How many accepted requests wait in the outbox for a response (with or without a caller).
    pub fn pending_requests(&self) -> usize {
        self.state.outbox.len()
    }

    /// Calls `method` with a fresh request id; see [`GatewayLink::call_with_ids`].
    pub async fn call(
        &self,
        method: &MethodPath,
        payload: Bytes,
        timeout: Duration,
        idempotency_key: Option<String>,
    ) -> Result<Bytes, Status> {
        let ids = CallIds {
            request_id: None,
            idempotency_key,
        };
        self.call_with_ids(method, payload, timeout, ids).await
    }

    /// Calls `method` on the partner behind the gateway and waits at most `timeout` for its answer.
    ///
    /// The request is on disk before anything is sent; it is (re)sent on every connection
    /// until answered or `timeout` has passed, even if this call is dropped or the agent
    /// restarts. A request id that already has an outcome gets it back without sending; one
    /// still pending is waited for, not sent twice.
    pub async fn call_with_ids(
        &self,
        method: &MethodPath,
        payload: Bytes,
        timeout: Duration,
        ids: CallIds,
    ) -> Result<Bytes, Status> {
        let core = &self.state;
        if payload.len() > core.max_payload_bytes {
            return Err(Status::resource_exhausted(format!(
                "request payload of {} bytes exceeds the {}-byte limit",
                payload.len(),
                core.max_payload_bytes
            )));
        }
        let idempotency_key = ids.idempotency_key.filter(|k| !k.is_empty());
        if let Some(key) = &idempotency_key {
            let chars = key.chars().count();
            if chars > MAX_IDEMPOTENCY_KEY_CHARS {
                return Err(Status::invalid_argument(format!(
                    "idempotency key of {chars} characters exceeds the {MAX_IDEMPOTENCY_KEY_CHARS}-character limit"
                )));
            }
        }
        let request_id = match ids.request_id.filter(|id| !id.is_empty()) {
            Some(id) if !is_valid_request_id(&id) => return Err(invalid_request_id(&id)),
            Some(id) => id,
            None => uuid::Uuid::new_v4().to_string(),
        };
        let started = Instant::now();
        // A deadline beyond what Instant can hold is as good as none: about 30 years.
        let deadline = started
            .checked_add(timeout)
            .unwrap_or_else(|| started + Duration::from_secs(86_400 * 365 * 30));
        let now_ms = unix_ms_now();
        let deadline_ms = now_ms.saturating_add(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        let request = Request {
            idempotency_key: idempotency_key.unwrap_or_else(|| request_id.clone()),
            request_id: request_id.clone(),
            method: method.to_string(),
            timeout_ms: 0,
            payload: payload.into(),
        };

        // Registered before the request can be published, so no answer can come unseen.
        let (token, reply) = {
            let mut state = core.callers();
            if state.closed {
                return Err(Status::unavailable("the vehicle agent is shutting down"));
            }
            state.waiters.register(&request_id)
        };
        let _forget = Forget {
            core,
            request_id: &request_id,
            token,
        };
        let outbox = core.outbox.clone();
        let owner = match blocking(move || outbox.submit(request, deadline_ms, now_ms)).await?? {
            Submitted::Done(result) => return into_result(result),
            Submitted::Pending => false,
            Submitted::Accepted => {
                core.new_deadline.notify_one();
                true
            }
        };
        debug!(request_id, %method, owner, "call");

        let outcome = tokio::time::timeout_at(deadline, async {
            if *core.connected.borrow() {
                // Once per MQTT session: if the event loop already republished it, this is None.
                let epoch = core.epoch.load(Ordering::SeqCst);
                if let Some(request) = core.outbox.prepare(&request_id, epoch, unix_ms_now()) {
                    core.publish(request).await;
                }
            }
            reply.await
        })
        .await;
        match outcome {
            Ok(Ok(response)) => response.into_result().map(Bytes::from),
            Ok(Err(_)) => Err(Status::unavailable(
                "the vehicle agent is shutting down; the request is kept and sent when it restarts",
            )),
            Err(_) => core.give_up(&request_id, owner, timeout).await,
        }
    }

    /// What the agent knows of `request_id`: unknown, pending, or its outcome.
    pub async fn result(&self, request_id: &str) -> Result<Lookup, Status> {
        if !is_valid_request_id(request_id) {
            return Err(invalid_request_id(request_id));
        }
        let core = &self.state;
        if core.outbox.deadline_of(request_id).is_some_and(|d| d <= unix_ms_now()) {
            core.expire(request_id).await;
        }
        core.lookup(request_id).await
    }

    /// Sends MQTT DISCONNECT if connected, fails the calls still waiting (their requests stay
    /// in the outbox), stops the tasks and releases the state directory.
    pub async fn shutdown(&self) {
        let core = &self.state;
        {
            let mut state = core.callers();
            state.closed = true;
            state.waiters.clear();
        }
        core.closed.send_replace(true);
        self.tasks.stop.send_replace(true);
        let tasks = std::mem::take(&mut *self.tasks.handles.lock().unwrap_or_else(PoisonError::into_inner));
        for task in tasks {
            if let Err(e) = task.await {
                error!(error = %e, "a gateway link task failed");
            }
        }
        core.outbox.close();
        drop(
            core.state_dir_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }
}

fn invalid_request_id(id: &str) -> Status {
    Status::invalid_argument(format!(
        "request id {id:?} must be 1 to {} characters of A-Z, a-z, 0-9, '.', '_' and '-'",
        store::MAX_REQUEST_ID_CHARS
    ))
}

fn into_result(result: StoredResult) -> Result<Bytes, Status> {
    result.response.unwrap_or_default().into_result().map(Bytes::from)
}

/// Runs blocking file IO off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| Status::unavailable("the vehicle agent is shutting down"))
}

/// Forgets a caller when its call ends, however it ends; its request stays in the outbox.
struct Forget<'a> {
    core: &'a LinkState,
    request_id: &'a str,
    token: Token,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.core.callers().waiters.forget(self.request_id, self.token);
    }
}

impl LinkState {
    fn callers(&self) -> MutexGuard<'_, Callers> {
        // A panic elsewhere must not take every later call down with it.
        self.callers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `request` for publishing; the event loop sends it.
    pub(crate) async fn publish(&self, request: Request) {
        use prost::Message as _;
        let request_id = request.request_id.clone();
        let bytes = request.encode_to_vec();
        if let Err(e) = self
            .client
            .publish(self.request_topic.as_str(), rumqttc::QoS::AtLeastOnce, false, bytes)
            .await
        {
            // Only when the event loop is gone; the request stays in the outbox.
            debug!(request_id, error = %e, "could not queue a request");
        }
    }

    /// Stores `response` as its request's outcome, then wakes the callers waiting for it.
    pub(crate) async fn finish(&self, response: Response) {
        let outbox = self.outbox.clone();
        let stored = response.clone();
        match blocking(move || outbox.complete(&stored, unix_ms_now())).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                debug!(
                    request_id = response.request_id,
                    "ignoring a response nobody waits for (duplicate, late or unknown)"
                );
                return;
            }
            // The caller still gets the answer; the request stays on disk and is sent again
            // (same idempotency key), so the outcome is stored once the disk recovers.
            Ok(Err(e)) => error!(request_id = response.request_id, error = %e, "cannot store a response"),
            Err(_) => return,
        }
        self.callers().waiters.wake(&response);
    }

    /// Gives up on a request whose deadline passed: stores DEADLINE_EXCEEDED saying why.
    pub(crate) async fn expire(&self, request_id: &str) {
        let message = deadline_message(&self.outbox, request_id, *self.connected.borrow());
        self.finish(Response::error(request_id, Code::DeadlineExceeded, message))
            .await;
    }

    async fn lookup(&self, request_id: &str) -> Result<Lookup, Status> {
        let outbox = self.outbox.clone();
        let id = request_id.to_owned();
        blocking(move || outbox.lookup(&id))
            .await?
            .map_err(|e| Status::data_loss(format!("the result of {request_id} cannot be read: {e}")))
    }

    /// A caller's own deadline passed. Its request expires with it unless other callers
    /// joined it with a later deadline than the request's.
    async fn give_up(&self, request_id: &str, owner: bool, timeout: Duration) -> Result<Bytes, Status> {
        let request_due = self.outbox.deadline_of(request_id).is_none_or(|d| d <= unix_ms_now());
        if !owner && !request_due {
            let after = humantime_serde::re::humantime::format_duration(timeout);
            return Err(Status::deadline_exceeded(format!(
                "no response within {after}; request {request_id} is still pending (ask GetResult later)"
            )));
        }
        self.expire(request_id).await;
        // Whatever is stored now is the outcome: ours, or an answer that just beat us.
        match self.lookup(request_id).await? {
            Lookup::Done(result) => into_result(result),
            _ => Err(Status::deadline_exceeded(deadline_message(
                &self.outbox,
                request_id,
                false,
            ))),
        }
    }
}

/// Why a request got no response, from what the outbox knows of it.
fn deadline_message(outbox: &Outbox, request_id: &str, up: bool) -> String {
    let (timeout, sent) = outbox.expiry_facts(request_id).unwrap_or_default();
    let after = humantime_serde::re::humantime::format_duration(timeout);
    match (sent, up) {
        (Sent::Never, _) => {
            format!("no response within {after}: the link to the gateway was down, the request was never sent")
        }
        (Sent::BeforeRestart, _) => format!(
            "no response within {after}: the vehicle agent restarted and the link to the gateway did not come back in time"
        ),
        (Sent::Yes, false) => {
            format!("no response within {after}: the link to the gateway went down after the request was sent")
        }
        (Sent::Yes, true) => {
            format!("no response within {after} from the gateway (the link to the gateway is up)")
        }
    }
}
