//! Raw simulated vehicles: one rumqttc MQTT 3.1.1 client over mTLS per vehicle, each in its
//! own task, reporting to one channel. Used for connect storms, idle fleets and raw traffic.
//!
//! A vehicle whose connection attempt fails waits with the real agent's full-jitter
//! [`Backoff`] before trying again, as a car would.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bytes::Bytes;
use proto::Vin;
use rumqttc::{
    AsyncClient, Event as MqttEvent, MqttOptions, NetworkOptions, Outgoing, Packet, QoS, SubscribeFilter,
    SubscribeReasonCode, TlsConfiguration, Transport,
};
use rustls::ClientConfig;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use vehicle_agent::backoff::Backoff;

use crate::stats::Latencies;

/// Where the vehicles connect: the broker's port on one or more loopback addresses (vehicle
/// `i` uses `hosts[i % hosts.len()]`, so more addresses give more 4-tuples).
#[derive(Debug, Clone)]
pub struct Target {
    /// Loopback addresses the broker listens on.
    pub hosts: Vec<IpAddr>,
    /// The broker's port.
    pub port: u16,
}

/// How a storm connects the fleet.
#[derive(Debug, Clone)]
pub struct StormSettings {
    /// Connection attempts (TCP + TLS + CONNECT/CONNACK) in progress at once; 0 = unbounded.
    pub max_inflight: usize,
    /// Vehicles started per second; 0 = all at once.
    pub connect_rate: f64,
    /// MQTT keep-alive of every vehicle.
    pub keep_alive: Duration,
    /// Longest one attempt may take (rumqttc's connection timeout, whole seconds).
    pub connect_timeout: Duration,
    /// Attempts after the first before a vehicle gives up.
    pub retries: u32,
    /// Backoff ceiling of the first retry (full jitter, as the agent).
    pub backoff_initial: Duration,
    /// Backoff cap.
    pub backoff_max: Duration,
    /// After losing its connection a vehicle connects again by itself, as the agent does
    /// (backoff from the loss, unlimited attempts), instead of reporting the loss and stopping.
    pub reconnect: bool,
    /// After every CONNACK a vehicle subscribes to its `resp` and `events` topics, as the
    /// agent does.
    pub subscribe_on_connect: bool,
}

impl Default for StormSettings {
    fn default() -> Self {
        StormSettings {
            max_inflight: 100,
            connect_rate: 0.0,
            keep_alive: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(30),
            retries: 3,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            reconnect: false,
            subscribe_on_connect: false,
        }
    }
}

/// What a vehicle task reports.
pub enum Event {
    /// CONNACK 0 received.
    Connected {
        /// Handle to publish, subscribe and disconnect.
        client: AsyncClient,
        /// From the start of the first attempt to CONNACK.
        latency: Duration,
        /// Attempts it took.
        attempts: u32,
    },
    /// One attempt failed; the vehicle backs off and tries again.
    AttemptFailed {
        /// Why.
        error: String,
        /// When it failed.
        at: Instant,
    },
    /// A vehicle that lost its connection (see [`StormSettings::reconnect`]) got CONNACK again.
    Reconnected {
        /// The new handle.
        client: AsyncClient,
        /// When.
        at: Instant,
    },
    /// Every attempt failed.
    GaveUp {
        /// The last error.
        error: String,
    },
    /// A SUBACK arrived.
    SubAck {
        /// Every filter was granted.
        granted: bool,
    },
    /// A PUBLISH arrived.
    Message {
        /// Its topic.
        topic: String,
        /// Its payload.
        payload: Bytes,
        /// When the vehicle's task read it.
        at: Instant,
    },
    /// The vehicle sent DISCONNECT and closed its socket.
    Closed,
    /// The connection failed.
    Lost {
        /// Why.
        error: String,
    },
}

/// What a storm did.
#[derive(Debug, Default)]
pub struct StormOutcome {
    /// Vehicles that got CONNACK.
    pub connected: usize,
    /// Failed attempts (each followed by a backoff and a retry, or by giving up).
    pub failed_attempts: u64,
    /// Vehicles that never connected.
    pub gave_up: usize,
    /// The first error seen.
    pub first_error: Option<String>,
    /// From the first attempt to the last CONNACK or give-up.
    pub wall: Duration,
    /// Time to CONNACK of each connected vehicle.
    pub latencies: Latencies,
}

/// A set of raw vehicles (connected or not) and the channel their tasks report to.
pub struct Swarm {
    vins: Vec<Vin>,
    clients: Vec<Option<AsyncClient>>,
    tx: mpsc::UnboundedSender<(usize, Event)>,
    rx: mpsc::UnboundedReceiver<(usize, Event)>,
    tasks: Vec<JoinHandle<()>>,
    /// Connections lost outside a storm or a disconnect.
    pub lost: u64,
    /// The first such loss.
    pub first_loss: Option<String>,
}

impl Drop for Swarm {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Swarm {
    /// Vehicles with these VINs, none connected yet.
    pub fn new(vins: Vec<Vin>) -> Swarm {
        let (tx, rx) = mpsc::unbounded_channel();
        Swarm {
            clients: vins.iter().map(|_| None).collect(),
            vins,
            tx,
            rx,
            tasks: Vec::new(),
            lost: 0,
            first_loss: None,
        }
    }

    /// How many vehicles.
    pub fn len(&self) -> usize {
        self.vins.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.vins.is_empty()
    }

    /// Vehicle `i`'s VIN.
    pub fn vin(&self, i: usize) -> &Vin {
        &self.vins[i]
    }

    /// Vehicle `i`'s client, if connected.
    pub fn client(&self, i: usize) -> Option<&AsyncClient> {
        self.clients[i].as_ref()
    }

    /// Indexes of the connected vehicles.
    pub fn connected(&self) -> Vec<usize> {
        (0..self.len()).filter(|i| self.clients[*i].is_some()).collect()
    }

    /// The next report of any vehicle, after bookkeeping (a lost or closed vehicle is no
    /// longer connected).
    pub async fn next(&mut self) -> Option<(usize, Event)> {
        let (i, event) = self.rx.recv().await?;
        match &event {
            Event::Lost { error } if self.clients[i].take().is_some() => {
                self.lost += 1;
                self.first_loss
                    .get_or_insert_with(|| format!("{}: {error}", self.vins[i]));
            }
            Event::Closed => self.clients[i] = None,
            Event::Reconnected { client, .. } => self.clients[i] = Some(client.clone()),
            _ => {}
        }
        Some((i, event))
    }

    /// Forgets the connection losses counted so far (a deliberate broker restart causes them).
    pub fn forget_losses(&mut self) {
        self.lost = 0;
        self.first_loss = None;
    }

    /// Connects every vehicle not connected yet, with `configs[i]` as vehicle `i`'s TLS
    /// config, and waits until each has connected or given up.
    pub async fn storm(
        &mut self,
        configs: &[Arc<ClientConfig>],
        target: &Target,
        settings: &StormSettings,
    ) -> Result<StormOutcome> {
        if configs.len() != self.len() {
            bail!("{} TLS configs for {} vehicles", configs.len(), self.len());
        }
        self.tasks.retain(|t| !t.is_finished());
        let todo: Vec<usize> = (0..self.len()).filter(|i| self.clients[*i].is_none()).collect();
        let permits = (settings.max_inflight > 0).then(|| Arc::new(Semaphore::new(settings.max_inflight)));
        let mut out = StormOutcome::default();
        let started = Instant::now();
        let mut last = started;
        let mut spawned = 0;
        let mut pending = todo.len();
        loop {
            let mut next_due = None;
            while spawned < todo.len() {
                if settings.connect_rate > 0.0 {
                    let due = started + Duration::from_secs_f64(spawned as f64 / settings.connect_rate);
                    if due > Instant::now() {
                        next_due = Some(due);
                        break;
                    }
                }
                let i = todo[spawned];
                let host = target.hosts[i % target.hosts.len()].to_string();
                self.tasks.push(tokio::spawn(vehicle(
                    i,
                    self.vins[i].to_string(),
                    configs[i].clone(),
                    host,
                    target.port,
                    settings.clone(),
                    permits.clone(),
                    self.tx.clone(),
                )));
                spawned += 1;
            }
            if pending == 0 {
                break;
            }
            let received = match next_due {
                Some(due) => tokio::select! {
                    r = self.next() => r,
                    _ = tokio::time::sleep_until(due.into()) => continue,
                },
                None => self.next().await,
            };
            let Some((i, event)) = received else {
                bail!("vehicle channel closed")
            };
            match event {
                Event::Connected { client, latency, .. } => {
                    self.clients[i] = Some(client);
                    out.latencies.push(latency);
                    out.connected += 1;
                    pending -= 1;
                    last = Instant::now();
                }
                Event::AttemptFailed { error, .. } => {
                    out.failed_attempts += 1;
                    out.first_error.get_or_insert(error);
                }
                Event::GaveUp { error } => {
                    out.failed_attempts += 1;
                    out.gave_up += 1;
                    out.first_error.get_or_insert(error);
                    pending -= 1;
                    last = Instant::now();
                }
                _ => {}
            }
        }
        out.wall = last - started;
        Ok(out)
    }

    /// Subscribes vehicles `which` (QoS 1) to `filters(vin)` and waits for their SUBACKs;
    /// returns how many were granted every filter.
    pub async fn subscribe(&mut self, which: &[usize], filters: impl Fn(&Vin) -> Vec<String>) -> Result<usize> {
        let mut expected = 0;
        for &i in which {
            let Some(client) = self.clients[i].clone() else {
                continue;
            };
            let list: Vec<SubscribeFilter> = filters(&self.vins[i])
                .into_iter()
                .map(|f| SubscribeFilter::new(f, QoS::AtLeastOnce))
                .collect();
            if client.subscribe_many(list).await.is_ok() {
                expected += 1;
            }
        }
        let mut granted = 0;
        let mut answered = 0;
        while answered < expected {
            match tokio::time::timeout(Duration::from_secs(60), self.next()).await {
                Ok(Some((_, Event::SubAck { granted: ok }))) => {
                    answered += 1;
                    granted += usize::from(ok);
                }
                Ok(Some((_, Event::Lost { .. }))) => answered += 1,
                Ok(Some(_)) => {}
                Ok(None) => bail!("vehicle channel closed"),
                Err(_) => bail!("{} of {expected} SUBACKs missing after 60 s", expected - answered),
            }
        }
        Ok(granted)
    }

    /// Sends DISCONNECT from every connected vehicle and waits until each has closed.
    pub async fn disconnect_all(&mut self) -> Result<()> {
        let live = self.connected();
        for &i in &live {
            if let Some(client) = &self.clients[i] {
                let _ = client.disconnect().await;
            }
        }
        while !self.connected().is_empty() {
            match tokio::time::timeout(Duration::from_secs(60), self.next()).await {
                Ok(Some(_)) => {}
                Ok(None) => bail!("vehicle channel closed"),
                Err(_) => bail!("{} vehicles did not close within 60 s", self.connected().len()),
            }
        }
        Ok(())
    }
}

fn new_client(
    vin: &str,
    config: &Arc<ClientConfig>,
    host: &str,
    port: u16,
    s: &StormSettings,
) -> (AsyncClient, rumqttc::EventLoop) {
    let mut options = MqttOptions::new(vin, host, port);
    options
        .set_keep_alive(s.keep_alive)
        .set_clean_session(true)
        .set_max_packet_size(64 * 1024, 64 * 1024)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config.clone())));
    let (client, mut eventloop) = AsyncClient::new(options, 256);
    let mut network = NetworkOptions::new();
    // Small messages: without NODELAY each waits out Nagle against the delayed ACK.
    network.set_tcp_nodelay(true);
    network.set_connection_timeout(s.connect_timeout.as_secs().max(1));
    eventloop.set_network_options(network);
    (client, eventloop)
}

/// One vehicle: connect (with backoff between failed attempts), then report what arrives
/// until it disconnects or the connection fails; with [`StormSettings::reconnect`], connect
/// again after a failure, as the agent does.
#[allow(clippy::too_many_arguments)]
async fn vehicle(
    i: usize,
    vin: String,
    config: Arc<ClientConfig>,
    host: String,
    port: u16,
    s: StormSettings,
    permits: Option<Arc<Semaphore>>,
    tx: mpsc::UnboundedSender<(usize, Event)>,
) {
    let mut backoff = Backoff::new(s.backoff_initial, s.backoff_max);
    let mut attempts = 0u32;
    let mut first_start = None;
    let mut reconnecting = false;
    loop {
        let (client, mut eventloop) = loop {
            if reconnecting {
                // The agent draws a delay before each attempt after a failure, the first too.
                tokio::time::sleep(backoff.next_delay()).await;
            }
            attempts += 1;
            let permit = match &permits {
                Some(p) => p.clone().acquire_owned().await.ok(),
                None => None,
            };
            let started = *first_start.get_or_insert_with(Instant::now);
            let (client, mut eventloop) = new_client(&vin, &config, &host, port, &s);
            let result = eventloop.poll().await;
            drop(permit);
            match result {
                Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                    let event = match reconnecting {
                        false => Event::Connected {
                            client: client.clone(),
                            latency: started.elapsed(),
                            attempts,
                        },
                        true => Event::Reconnected {
                            client: client.clone(),
                            at: Instant::now(),
                        },
                    };
                    let _ = tx.send((i, event));
                    break (client, eventloop);
                }
                other => {
                    let error = match other {
                        Err(e) => e.to_string(),
                        Ok(event) => format!("unexpected first event {event:?}"),
                    };
                    if !s.reconnect && attempts > s.retries {
                        let _ = tx.send((i, Event::GaveUp { error }));
                        return;
                    }
                    let _ = tx.send((
                        i,
                        Event::AttemptFailed {
                            error,
                            at: Instant::now(),
                        },
                    ));
                    if !reconnecting {
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                }
            }
        };
        backoff = Backoff::new(s.backoff_initial, s.backoff_max);
        if s.subscribe_on_connect
            && let Ok(vin) = Vin::parse(&vin)
        {
            let _ = client.try_subscribe_many([
                SubscribeFilter::new(proto::topics::responses(&vin), QoS::AtLeastOnce),
                SubscribeFilter::new(proto::topics::events(&vin), QoS::AtLeastOnce),
            ]);
        }
        let error = loop {
            let event = match eventloop.poll().await {
                Ok(MqttEvent::Incoming(Packet::Publish(p))) => Event::Message {
                    topic: p.topic,
                    payload: p.payload,
                    at: Instant::now(),
                },
                Ok(MqttEvent::Incoming(Packet::SubAck(ack))) => Event::SubAck {
                    granted: ack
                        .return_codes
                        .iter()
                        .all(|c| matches!(c, SubscribeReasonCode::Success(_))),
                },
                Ok(MqttEvent::Outgoing(Outgoing::Disconnect)) => {
                    let _ = tx.send((i, Event::Closed));
                    return;
                }
                Ok(_) => continue,
                Err(e) => break e.to_string(),
            };
            if tx.send((i, event)).is_err() {
                return;
            }
        };
        let _ = tx.send((i, Event::Lost { error }));
        if !s.reconnect {
            return;
        }
        reconnecting = true;
    }
}
