//! Message traffic over connected raw vehicles: QoS 1 publish round trips (a car publishing
//! to a topic it subscribes to) and full requests (car -> gateway -> partner -> car).
//!
//! Open loop at a fixed rate: each message is due at `start + k / rate` and its latency is
//! measured from that due time, so a generator or broker that falls behind shows up in the
//! latency instead of silently lowering the rate (no coordinated omission). Closed loop: a
//! fixed number of messages in flight, each reply triggers the next; this finds the maximum
//! sustained rate.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message as _;
use proto::Vin;
use proto::vehicle::v1::{Request, Response};
use rumqttc::QoS;
use serde::Serialize;

use crate::stats::{Latencies, Summary};
use crate::swarm::{Event, Swarm};

/// The partner method every request calls: cheap, read-only.
pub const LIST_NEARBY_LOTS: &str = "/parking.v1.ParkingPayment/ListNearbyLots";

/// How long to wait for replies still outstanding after the last message was sent.
const DRAIN: Duration = Duration::from_secs(10);

/// A kind of message: where it goes, where its answer comes back, how to recognise it.
pub trait Workload: Send + Sync {
    /// Where vehicle `vin` publishes.
    fn publish_topic(&self, vin: &Vin) -> String;
    /// What vehicle `vin` subscribes to for the answers.
    fn reply_filter(&self, vin: &Vin) -> String;
    /// The message numbered `seq`, sent `sent_ns` after the run's epoch.
    fn encode(&self, seq: u64, sent_ns: u64) -> Vec<u8>;
    /// Recognises an answer.
    fn decode(&self, payload: &[u8]) -> Option<Reply>;
}

/// An answer to message `seq`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// Which message.
    pub seq: u64,
    /// When it was (due to be) sent, after the epoch.
    pub sent_ns: u64,
    /// A non-OK outcome.
    pub error: Option<String>,
}

/// A QoS 1 publish to `/tenants/{VIN}/v1/echo`, which the same car subscribes to: a broker
/// round trip with nothing else in the path. 64-byte payloads.
pub struct Echo;

const ECHO_MAGIC: &[u8; 4] = b"ECHO";
const ECHO_BYTES: usize = 64;

impl Workload for Echo {
    fn publish_topic(&self, vin: &Vin) -> String {
        format!("/tenants/{vin}/v1/echo")
    }
    fn reply_filter(&self, vin: &Vin) -> String {
        self.publish_topic(vin)
    }
    fn encode(&self, seq: u64, sent_ns: u64) -> Vec<u8> {
        let mut v = Vec::with_capacity(ECHO_BYTES);
        v.extend_from_slice(ECHO_MAGIC);
        v.extend_from_slice(&seq.to_le_bytes());
        v.extend_from_slice(&sent_ns.to_le_bytes());
        v.resize(ECHO_BYTES, b'.');
        v
    }
    fn decode(&self, payload: &[u8]) -> Option<Reply> {
        if payload.len() < 20 || &payload[..4] != ECHO_MAGIC {
            return None;
        }
        Some(Reply {
            seq: u64::from_le_bytes(payload[4..12].try_into().ok()?),
            sent_ns: u64::from_le_bytes(payload[12..20].try_into().ok()?),
            error: None,
        })
    }
}

/// A `vehicle.v1.Request` for `ListNearbyLots` on `/tenants/{VIN}/v1/req`, answered by the
/// gateway on `/v1/resp` after calling the reference parking adapter.
pub struct ParkingRequests {
    payload: Vec<u8>,
    method: String,
}

impl Default for ParkingRequests {
    fn default() -> Self {
        let request = proto::parking::v1::ListNearbyLotsRequest {
            near: Some(proto::parking::v1::GeoPoint {
                latitude: 31.2304,
                longitude: 121.4737,
            }),
            radius_m: 5_000,
            max_results: 3,
        };
        ParkingRequests {
            payload: request.encode_to_vec(),
            method: LIST_NEARBY_LOTS.into(),
        }
    }
}

impl ParkingRequests {
    /// The same request sent as `method` (a full gRPC path), e.g. to a service that has the
    /// same messages under another name.
    pub fn calling(method: &str) -> ParkingRequests {
        ParkingRequests {
            method: method.into(),
            ..ParkingRequests::default()
        }
    }

    /// The encoded `ListNearbyLotsRequest` every request carries.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
}

impl Workload for ParkingRequests {
    fn publish_topic(&self, vin: &Vin) -> String {
        proto::topics::requests(vin)
    }
    fn reply_filter(&self, vin: &Vin) -> String {
        proto::topics::responses(vin)
    }
    fn encode(&self, seq: u64, sent_ns: u64) -> Vec<u8> {
        Request {
            request_id: format!("fb-{seq}-{sent_ns}"),
            idempotency_key: String::new(),
            method: self.method.clone(),
            timeout_ms: 30_000,
            payload: self.payload.clone(),
        }
        .encode_to_vec()
    }
    fn decode(&self, payload: &[u8]) -> Option<Reply> {
        let response = Response::decode(payload).ok()?;
        let mut parts = response.request_id.strip_prefix("fb-")?.split('-');
        let seq = parts.next()?.parse().ok()?;
        let sent_ns = parts.next()?.parse().ok()?;
        let status = response.status.unwrap_or_default();
        let error = (status.code != 0).then(|| format!("{:?}: {}", status.code(), status.message));
        Some(Reply { seq, sent_ns, error })
    }
}

/// How messages are offered.
#[derive(Debug, Clone, Copy)]
pub enum Load {
    /// Open loop: this many messages per second, spread round-robin over the vehicles.
    Rate(f64),
    /// Closed loop: this many messages in flight at all times.
    Closed(usize),
}

impl Load {
    /// For tables.
    pub fn describe(self) -> String {
        match self {
            Load::Rate(r) => format!("{r:.0}/s"),
            Load::Closed(n) => format!("max ({n} in flight)"),
        }
    }
}

/// How a run offers its messages: at what load, for how long, and how much of its start is
/// left out of the figures.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Open or closed loop.
    pub load: Load,
    /// How long messages are sent.
    pub duration: Duration,
    /// The first part of it not counted in latency or throughput.
    pub warmup: Duration,
}

/// What a traffic run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TrafficOutcome {
    /// Vehicles that sent.
    pub vehicles: usize,
    /// Sending lasted this long.
    pub duration_s: f64,
    /// The first part of the run not counted in latency or throughput.
    pub warmup_s: f64,
    /// Messages handed to the vehicles' MQTT clients.
    pub sent: u64,
    /// Messages the generator could not hand over (client queue full or car disconnected).
    pub not_sent: u64,
    /// Answers received.
    pub replies: u64,
    /// Answers that were errors (non-OK status).
    pub errors: u64,
    /// Messages never answered within the drain time.
    pub missing: u64,
    /// The first error answer.
    pub first_error: Option<String>,
    /// OK answers per second after the warm-up (open loop: answers to the messages sent after
    /// the warm-up, over the time until the last of them).
    pub achieved_per_s: f64,
    /// Latency of OK answers to messages sent after the warm-up.
    pub latency: Summary,
    /// The same by method, for runs that mix methods.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub per_method: Vec<MethodOutcome>,
}

/// One method's share of a mixed run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MethodOutcome {
    /// The gRPC method path.
    pub method: String,
    /// Latency of its OK answers after the warm-up.
    pub latency: Summary,
    /// Its error answers.
    pub errors: u64,
}

/// Subscribes the `active` vehicles to `workload`'s reply topic; returns how many were granted.
pub async fn prepare(swarm: &mut Swarm, active: &[usize], workload: &dyn Workload) -> anyhow::Result<usize> {
    swarm.subscribe(active, |vin| vec![workload.reply_filter(vin)]).await
}

/// Runs `workload` on the `active` vehicles as `schedule` says.
pub async fn run(swarm: &mut Swarm, active: &[usize], workload: &dyn Workload, schedule: Schedule) -> TrafficOutcome {
    run_with(swarm, active, workload, schedule, &mut |_, _| {}).await
}

/// A message that is not an answer of the workload, seen by [`run_with`]'s caller: the
/// swarm (to answer it), and the vehicle and message.
pub struct Other<'a> {
    /// Which vehicle received it.
    pub vehicle: usize,
    /// Its topic.
    pub topic: &'a str,
    /// Its payload.
    pub payload: &'a Bytes,
    /// When the vehicle's task read it.
    pub at: Instant,
}

/// [`run`], handing every other message the vehicles receive meanwhile (say, partner events)
/// to `other`.
pub async fn run_with(
    swarm: &mut Swarm,
    active: &[usize],
    workload: &dyn Workload,
    schedule: Schedule,
    other: &mut dyn FnMut(&Swarm, Other<'_>),
) -> TrafficOutcome {
    let Schedule { load, duration, warmup } = schedule;
    let topics: Vec<String> = active.iter().map(|&i| workload.publish_topic(swarm.vin(i))).collect();
    let slot_of: HashMap<usize, usize> = active.iter().enumerate().map(|(slot, &i)| (i, slot)).collect();
    let m = active.len().max(1);
    let epoch = Instant::now();
    let end = epoch + duration;
    let measure_from = epoch + warmup.min(duration / 2);
    let mut out = TrafficOutcome {
        vehicles: active.len(),
        duration_s: duration.as_secs_f64(),
        warmup_s: (measure_from - epoch).as_secs_f64(),
        ..TrafficOutcome::default()
    };
    let mut latencies = Latencies::default();
    let mut outstanding: HashSet<u64> = HashSet::new();
    let mut measured_ok = 0u64;
    let mut late_ok = 0u64;
    let mut last_late = end;
    let mut seq = 0u64;

    let send = |swarm: &Swarm, slot: usize, seq: u64, at: Instant| -> bool {
        let Some(client) = swarm.client(active[slot]) else {
            return false;
        };
        let payload = workload.encode(seq, nanos(at - epoch));
        client
            .try_publish(topics[slot].clone(), QoS::AtLeastOnce, false, payload)
            .is_ok()
    };

    if let Load::Closed(in_flight) = load {
        let now = Instant::now();
        for k in 0..in_flight {
            if send(swarm, k % m, seq, now) {
                outstanding.insert(seq);
                out.sent += 1;
            } else {
                out.not_sent += 1;
            }
            seq += 1;
        }
    }
    let mut next_due = epoch;
    loop {
        let now = Instant::now();
        if let Load::Rate(rate) = load {
            while next_due <= now && next_due < end {
                if send(swarm, (seq % m as u64) as usize, seq, next_due) {
                    outstanding.insert(seq);
                    out.sent += 1;
                } else {
                    out.not_sent += 1;
                }
                seq += 1;
                next_due = epoch + Duration::from_secs_f64(seq as f64 / rate);
            }
        }
        let sending = matches!(load, Load::Rate(_)) && next_due < end || matches!(load, Load::Closed(_)) && now < end;
        if !sending && (outstanding.is_empty() || now >= end + DRAIN) {
            break;
        }
        let wake = match load {
            Load::Rate(_) if next_due < end => next_due,
            Load::Closed(_) if now < end => end,
            _ => end + DRAIN,
        };
        let event = tokio::select! {
            e = swarm.next() => e,
            _ = tokio::time::sleep_until(wake.into()) => continue,
        };
        let Some((i, Event::Message { topic, payload, at })) = event else {
            continue;
        };
        let Some(reply) = workload.decode(&payload) else {
            other(
                swarm,
                Other {
                    vehicle: i,
                    topic: &topic,
                    payload: &payload,
                    at,
                },
            );
            continue;
        };
        if !outstanding.remove(&reply.seq) {
            continue; // a duplicate (QoS 1 may redeliver) or not ours
        }
        out.replies += 1;
        let sent_at = epoch + Duration::from_nanos(reply.sent_ns);
        match &reply.error {
            Some(e) => {
                out.errors += 1;
                out.first_error.get_or_insert_with(|| e.clone());
            }
            None => {
                if sent_at >= measure_from {
                    latencies.push(at.saturating_duration_since(sent_at));
                    late_ok += 1;
                    last_late = last_late.max(at);
                }
                if at >= measure_from && at <= end {
                    measured_ok += 1;
                }
            }
        }
        if let (Load::Closed(_), Some(&slot)) = (load, slot_of.get(&i))
            && Instant::now() < end
        {
            let now = Instant::now();
            if send(swarm, slot, seq, now) {
                outstanding.insert(seq);
                out.sent += 1;
            } else {
                out.not_sent += 1;
            }
            seq += 1;
        }
    }
    out.missing = outstanding.len() as u64;
    // Closed loop: answers within the window. Open loop: the answers to what was sent after
    // the warm-up, over the time it took to get them (never more than the offered rate
    // because a backlog from the warm-up drains into the window).
    let (done, window) = match load {
        Load::Closed(_) => (measured_ok, (end - measure_from).as_secs_f64()),
        Load::Rate(_) => (late_ok, (last_late - measure_from).as_secs_f64()),
    };
    out.achieved_per_s = if window > 0.0 { done as f64 / window } else { 0.0 };
    out.latency = latencies.summary();
    out
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_round_trips() {
        let payload = Echo.encode(7, 123_456);
        assert_eq!(payload.len(), ECHO_BYTES);
        assert_eq!(
            Echo.decode(&payload),
            Some(Reply {
                seq: 7,
                sent_ns: 123_456,
                error: None
            })
        );
        assert_eq!(Echo.decode(b"nope"), None);
    }

    #[test]
    fn requests_are_matched_by_request_id() {
        let w = ParkingRequests::default();
        let request = Request::decode(w.encode(42, 99).as_slice()).unwrap();
        assert_eq!(request.method, LIST_NEARBY_LOTS);
        assert_eq!(request.request_id, "fb-42-99");
        let ok = Response::ok("fb-42-99", vec![1, 2]).encode_to_vec();
        assert_eq!(w.decode(&ok).unwrap().error, None);
        let failed = Response::error("fb-42-99", proto::vehicle::v1::Code::Unavailable, "partner down").encode_to_vec();
        let reply = w.decode(&failed).unwrap();
        assert_eq!((reply.seq, reply.sent_ns), (42, 99));
        assert!(reply.error.unwrap().contains("partner down"));
    }
}
