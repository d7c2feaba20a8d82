//! A partner pushing events to cars through the gateway's partner API
//! (`events.v1.PartnerEvents`, mTLS with the partner `parking`'s certificate) at a steady
//! rate, and the cars' side: each event received is acknowledged (`vehicle.v1.EventAck` on
//! `events/ack`) and its latency taken from the due time stamped in its payload.
//!
//! Open loop: event `k` is due at `epoch + k / rate` and is published by a task of its own, so
//! a slow answer from the gateway shows up as latency, not as a lower rate.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use prost::Message as _;
use proto::Vin;
use proto::events::v1::PublishRequest;
use proto::events::v1::partner_events_client::PartnerEventsClient;
use proto::vehicle::v1::{Event, EventAck};
use rumqttc::QoS;
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::fleet::Fleet;
use crate::stats::{Latencies, Summary};
use crate::swarm::Swarm;
use crate::traffic::Other;

/// The service the events belong to (the partner `parking` serves it).
const SERVICE: &str = "parking.v1.ParkingPayment";
/// The first bytes of a bench event's payload.
const MAGIC: &[u8; 4] = b"EVT1";

/// A gRPC client of the gateway's partner API at `addr`, as the partner `parking`.
pub async fn client(fleet: &Fleet, addr: SocketAddr) -> Result<PartnerEventsClient<Channel>> {
    let channel = fleet
        .grpc_channel(&fleet.adapter, addr)
        .await
        .context("connect to the gateway's partner API")?;
    Ok(PartnerEventsClient::new(channel))
}

/// One event published.
#[derive(Debug, Clone)]
struct Published {
    /// Due time after the epoch.
    due_ns: u64,
    /// The gRPC code of a refusal; `None`: the gateway stored it.
    refused: Option<String>,
}

/// What the publisher and the cars record, shared.
#[derive(Debug, Default)]
struct Log {
    /// By event number.
    published: BTreeMap<u64, Published>,
    /// Event number, due time and latency of each first receipt.
    received: Vec<(u64, u64, Duration)>,
    /// Event numbers received, to count redeliveries once.
    seen: HashSet<u64>,
    /// Acknowledgements the cars could not hand to their client.
    acks_not_sent: u64,
}

/// Events published for a set of cars, and their receipt by those cars.
pub struct PartnerEvents {
    epoch: Instant,
    log: Arc<Mutex<Log>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// What happened to the events due in one window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EventWindow {
    /// Events published (stored by the gateway).
    pub published: u64,
    /// Publishes the gateway refused, by gRPC code.
    pub refused: BTreeMap<String, u64>,
    /// Of the published ones, received by their car (by the end of the run).
    pub received: u64,
    /// From the due time of the publish to the car reading the event.
    pub latency: Summary,
}

impl PartnerEvents {
    /// Starts publishing `rate` events per second, round robin over `vins`, through `client`.
    pub fn start(client: PartnerEventsClient<Channel>, vins: Vec<Vin>, rate: f64) -> PartnerEvents {
        let epoch = Instant::now();
        let log = Arc::new(Mutex::new(Log::default()));
        let (stop, mut stopped) = oneshot::channel();
        let shared = log.clone();
        let task = tokio::spawn(async move {
            if vins.is_empty() || rate <= 0.0 {
                return;
            }
            for k in 0u64.. {
                let due = epoch + Duration::from_secs_f64(k as f64 / rate);
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = tokio::time::sleep_until(due.into()) => {}
                }
                let due_ns = u64::try_from((due - epoch).as_nanos()).unwrap_or(u64::MAX);
                let mut payload = Vec::with_capacity(20);
                payload.extend_from_slice(MAGIC);
                payload.extend_from_slice(&k.to_le_bytes());
                payload.extend_from_slice(&due_ns.to_le_bytes());
                let request = PublishRequest {
                    vin: vins[(k % vins.len() as u64) as usize].to_string(),
                    service: SERVICE.into(),
                    kind: "bench.tick".into(),
                    payload,
                    event_id: format!("bench-{k}"),
                    ttl_seconds: 600,
                };
                let (mut client, log) = (client.clone(), shared.clone());
                tokio::spawn(async move {
                    let outcome = client.publish(request).await;
                    let refused = outcome.err().map(|status| format!("{:?}", status.code()));
                    let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
                    log.published.insert(k, Published { due_ns, refused });
                });
            }
        });
        PartnerEvents {
            epoch,
            log,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Handles a message a car received: an event is acknowledged and its latency recorded;
    /// anything else is ignored. For [`crate::traffic::run_with`].
    pub fn on_message(&self, swarm: &Swarm, m: Other<'_>) {
        if !m.topic.ends_with("/v1/events") {
            return;
        }
        let Ok(event) = Event::decode(m.payload.as_ref()) else {
            return;
        };
        let ack = EventAck {
            sequence: event.sequence,
        };
        let acked = swarm.client(m.vehicle).is_some_and(|c| {
            c.try_publish(
                proto::topics::event_acks(swarm.vin(m.vehicle)),
                QoS::AtLeastOnce,
                false,
                ack.encode_to_vec(),
            )
            .is_ok()
        });
        let p = &event.payload;
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        log.acks_not_sent += u64::from(!acked);
        if p.len() < 20 || &p[..4] != MAGIC {
            return;
        }
        let (Ok(k), Ok(due)) = (p[4..12].try_into(), p[12..20].try_into()) else {
            return;
        };
        let (k, due_ns) = (u64::from_le_bytes(k), u64::from_le_bytes(due));
        if log.seen.insert(k) {
            let latency =
                m.at.saturating_duration_since(self.epoch + Duration::from_nanos(due_ns));
            log.received.push((k, due_ns, latency));
        }
    }

    /// Now, in the publisher's time (what [`PartnerEvents::window`] takes).
    pub fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// The events due between `from` and `to` (from [`PartnerEvents::now`]).
    pub fn window(&self, from: Duration, to: Duration) -> EventWindow {
        let within = |due_ns: u64| (from.as_nanos()..to.as_nanos()).contains(&u128::from(due_ns));
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        let mut latencies = Latencies::default();
        let mut received = 0;
        for &(k, due_ns, latency) in &log.received {
            if within(due_ns) && log.published.get(&k).is_some_and(|p| p.refused.is_none()) {
                latencies.push(latency);
                received += 1;
            }
        }
        let mut window = EventWindow::default();
        for p in log.published.values().filter(|p| within(p.due_ns)) {
            match &p.refused {
                None => window.published += 1,
                Some(code) => *window.refused.entry(code.clone()).or_default() += 1,
            }
        }
        window.received = received;
        window.latency = latencies.summary();
        window
    }

    /// Acknowledgements the cars could not hand to their MQTT client.
    pub fn acks_not_sent(&self) -> u64 {
        self.log.lock().unwrap_or_else(PoisonError::into_inner).acks_not_sent
    }

    /// Stops publishing (publishes in flight finish on their own).
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}
