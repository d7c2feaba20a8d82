//! The gateway link: accepts calls into the durable outbox, publishes them, matches responses.
//!
//! A call is written to the [`Outbox`] before anything is published or answered; the
//! `event_loop` task owns rumqttc's event loop, (re)publishes the outbox on every new
//! subscription and hands each response to the outbox before waking the caller. A caller that
//! goes away leaves its request in the outbox: the driver's intent outlives the app's call.
//!
//! The first answer a request gets (the gateway's, or DEADLINE_EXCEEDED when its deadline
//! passes) is the one its callers get and the one stored, even when the disk cannot take it
//! at once: the outbox holds it and the housekeeping task writes it again until it is stored.

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, TlsConfiguration, Transport};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::Status;
use tracing::{debug, error, warn};

use proto::vehicle::v1::Request;
use proto::{MethodPath, Vin, topics};

use crate::backoff::Backoff;
use crate::config::{AgentConfig, ConfigError};
use crate::event_loop;
use crate::events::{CursorError, EventFeed, EventStore};
use crate::outbox::{Lookup, Outbox, StoredResult, Submitted};
use crate::owner::Owner;
use crate::pending::{Token, Waiters};
use crate::store::{self, Disk, StateFiles, is_valid_request_id, unix_ms_now};
use crate::tls::Identity;

mod state;

/// Longest idempotency key the envelope allows, in characters.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;

/// The MQTT username: the gateway authenticates by certificate and records this as the agent version.
pub const MQTT_USERNAME: &str = concat!("vehicle-agent/", env!("CARGO_PKG_VERSION"));

/// Requests queued towards the event loop; callers wait (within their deadline) when it is full.
const REQUEST_CHANNEL_CAPACITY: usize = 64;

/// The ids an app gives a call, and who the app is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallIds {
    /// The app's `x-request-id`; `None` (or empty) means a fresh UUID.
    pub request_id: Option<String>,
    /// One driver intent across retries; `None` (or empty) means the request id.
    pub idempotency_key: Option<String>,
    /// The calling app: only it can see the request and its result.
    pub owner: Owner,
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
    /// Partner events kept until an app takes them.
    pub(crate) events: Arc<EventStore>,
    /// Apps' acknowledgements take turns, so the cursor on disk only moves forward; only
    /// acknowledgements wait on it (arriving events and feeds never do).
    ack_turn: tokio::sync::Mutex<()>,
    /// Counts subscribed MQTT sessions, so each request is published once per MQTT session.
    pub(crate) epoch: AtomicU64,
    callers: Mutex<Callers>,
    pub(crate) connected: watch::Sender<bool>,
    /// Set by shutdown; ends event streams and refuses new calls.
    pub(crate) closed: watch::Sender<bool>,
    /// Pokes the housekeeping task when it has something to do before the time it sleeps to:
    /// a new deadline, or an answer to write again.
    pub(crate) wake_housekeeping: Notify,
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
        GatewayLink::start_with(config, Arc::new(Disk))
    }

    /// Like [`GatewayLink::start`], with the outbox and the event store writing and removing
    /// their files through `files` (a test makes the disk fail or stall with it).
    pub fn start_with(config: &AgentConfig, files: Arc<dyn StateFiles>) -> Result<GatewayLink, ConfigError> {
        let identity = Identity::load(config)?;
        let (host, port) = config.gateway_addr()?;
        let state_error = |e: std::io::Error| {
            ConfigError::invalid("state_dir", format!("cannot use {}: {e}", config.state_dir.display()))
        };
        let lock = store::lock_state_dir(&config.state_dir).map_err(state_error)?;
        let outbox = Outbox::open_with(
            &config.state_dir,
            config.outbox_capacity,
            config.result_retention,
            unix_ms_now(),
            files.clone(),
        )
        .map_err(state_error)?;
        let events = EventStore::open(&config.state_dir, config.max_kept_events, files).map_err(state_error)?;
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

        let state = Arc::new(LinkState {
            gateway: config.gateway.clone(),
            client,
            request_topic: topics::requests(&vin),
            response_topic: topics::responses(&vin),
            event_topic: topics::events(&vin),
            event_ack_topic: topics::event_acks(&vin),
            vin,
            max_payload_bytes: config.max_payload_bytes,
            outbox: Arc::new(outbox),
            events: Arc::new(events),
            ack_turn: tokio::sync::Mutex::new(()),
            epoch: AtomicU64::new(0),
            callers: Mutex::new(Callers {
                waiters: Waiters::new(),
                closed: false,
            }),
            connected: watch::Sender::new(false),
            closed: watch::Sender::new(false),
            wake_housekeeping: Notify::new(),
            state_dir_lock: Mutex::new(Some(lock)),
        });
        let (stop, stop_rx) = watch::channel(false);
        let backoff = Backoff::new(config.backoff_initial, config.backoff_max);
        let tasks = vec![
            tokio::spawn(event_loop::run(state.clone(), eventloop, backoff, stop_rx.clone())),
            tokio::spawn(event_loop::housekeeping(state.clone(), stop_rx)),
        ];
        Ok(GatewayLink {
            state,
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

    /// The partner events kept for apps after `after_sequence` (0: from the oldest kept), in
    /// order, then each new one; ends at shutdown. OUT_OF_RANGE past the newest received,
    /// RESOURCE_EXHAUSTED beyond [`crate::events::MAX_EVENT_FEEDS`] open at once.
    pub fn subscribe_events(&self, after_sequence: u64) -> Result<EventFeed, Status> {
        let closed = self.state.closed.subscribe();
        self.state.events.feed(after_sequence, closed).map_err(cursor_status)
    }

    /// An app has taken every event up to `up_to_sequence`: they are forgotten and
    /// acknowledged to the gateway (cumulatively). Returns how many events are still kept.
    /// OUT_OF_RANGE past the newest received; UNAVAILABLE if the disk refused the cursor (then
    /// nothing was acknowledged).
    pub async fn ack_events(&self, up_to_sequence: u64) -> Result<usize, Status> {
        let state = &self.state;
        let _turn = state.ack_turn.lock().await;
        if *state.closed.borrow() {
            return Err(Status::unavailable("the vehicle agent is shutting down"));
        }
        let events = state.events.clone();
        let taken = blocking(move || events.take(up_to_sequence))
            .await?
            .map_err(cursor_status)?;
        if taken {
            debug!(up_to_sequence, "an app took events");
            event_loop::acknowledge(state, up_to_sequence);
            if state.events.waits_for_redelivery() {
                // There may be room now for what was refused: have the gateway send it again.
                event_loop::resubscribe_events(state);
            }
        }
        Ok(state.events.kept())
    }

    /// The partner events kept on disk for apps right now.
    pub fn kept_events(&self) -> usize {
        self.state.events.kept()
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
            idempotency_key,
            ..CallIds::default()
        };
        self.call_with_ids(method, payload, timeout, ids).await
    }

    /// Calls `method` on the partner behind the gateway and waits at most `timeout` for its answer.
    ///
    /// The request is on disk before anything is sent; it is (re)sent on every connection
    /// until answered or `timeout` has passed, even if this call is dropped or the agent
    /// restarts. A request id that already has an outcome gets it back without sending; one
    /// still pending is waited for, not sent twice. A request id of another owner's request
    /// is NOT_FOUND.
    pub async fn call_with_ids(
        &self,
        method: &MethodPath,
        payload: Bytes,
        timeout: Duration,
        ids: CallIds,
    ) -> Result<Bytes, Status> {
        let state = &self.state;
        if payload.len() > state.max_payload_bytes {
            return Err(Status::resource_exhausted(format!(
                "request payload of {} bytes exceeds the {}-byte limit",
                payload.len(),
                state.max_payload_bytes
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
            let mut callers = state.callers();
            if callers.closed {
                return Err(Status::unavailable("the vehicle agent is shutting down"));
            }
            callers.waiters.register(&request_id)
        };
        let _forget = Forget {
            state,
            request_id: &request_id,
            token,
        };
        let outbox = state.outbox.clone();
        let app = ids.owner;
        let owner = app.clone();
        let first = match blocking(move || outbox.submit(request, &owner, deadline_ms, now_ms)).await?? {
            Submitted::Done(result) => return into_result(result),
            Submitted::Pending => false,
            Submitted::Accepted => {
                state.wake_housekeeping.notify_one();
                true
            }
        };
        debug!(request_id, %method, %app, first, "call");

        let outcome = tokio::time::timeout_at(deadline, async {
            // A deadline that passed while the request was written is not worth a publish.
            if *state.connected.borrow() && Instant::now() < deadline {
                // Once per MQTT session: if the event loop already republished it, this is None.
                let epoch = state.epoch.load(Ordering::SeqCst);
                if let Some(request) = state.outbox.prepare(&request_id, epoch, unix_ms_now()) {
                    state.publish(request).await;
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
            Err(_) => state.give_up(&request_id, &app, first, timeout).await,
        }
    }

    /// What `owner` may know of `request_id`: unknown (also another owner's request),
    /// pending, or its outcome.
    pub async fn result(&self, request_id: &str, owner: &Owner) -> Result<Lookup, Status> {
        if !is_valid_request_id(request_id) {
            return Err(invalid_request_id(request_id));
        }
        let state = &self.state;
        if state.outbox.deadline_of(request_id).is_some_and(|d| d <= unix_ms_now()) {
            state.expire(request_id).await;
        }
        state.lookup(request_id, owner).await
    }

    /// Sends MQTT DISCONNECT if connected, fails the calls still waiting (their requests stay
    /// in the outbox), ends the event feeds and refuses acknowledgements, stops the tasks, tries once more to store answers the disk refused,
    /// and releases the state directory.
    pub async fn shutdown(&self) {
        let state = &self.state;
        {
            let mut callers = state.callers();
            callers.closed = true;
            callers.waiters.clear();
        }
        state.closed.send_replace(true);
        // An app's acknowledgement being written finishes; later ones are refused, so nothing
        // writes the cursor once the state directory is released.
        drop(state.ack_turn.lock().await);
        self.tasks.stop.send_replace(true);
        let tasks = std::mem::take(&mut *self.tasks.handles.lock().unwrap_or_else(PoisonError::into_inner));
        for task in tasks {
            if let Err(e) = task.await {
                error!(error = %e, "a gateway link task failed");
            }
        }
        let outbox = state.outbox.clone();
        let closed = blocking(move || {
            // An answer still not stored is lost with this process; its request is resent
            // next time and the gateway's ledger answers it the same.
            for (request_id, stored) in outbox.store_answers(u64::MAX) {
                if let Err(e) = stored {
                    warn!(request_id, error = %e, "an answer is still not stored; the request is resent after the restart");
                }
            }
            outbox.close();
        })
        .await;
        if closed.is_err() {
            error!("could not close the outbox");
        }
        drop(
            state
                .state_dir_lock
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

fn cursor_status(e: CursorError) -> Status {
    match e {
        CursorError::Beyond { .. } => Status::out_of_range(e.to_string()),
        CursorError::TooManyFeeds => Status::resource_exhausted(e.to_string()),
        CursorError::Disk(_) => Status::unavailable(e.to_string()),
    }
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
    state: &'a LinkState,
    request_id: &'a str,
    token: Token,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.state.callers().waiters.forget(self.request_id, self.token);
    }
}
