//! What an attacker does to a broker: one authenticated car abusing MQTT at full speed
//! (subscriptions, retained messages, topic names, acknowledgements, QoS 2, requests),
//! reconnecting at once whenever it is disconnected; and a flood of unauthenticated sockets
//! that never finish their TLS ClientHello, while a real car tries to connect every second.
//!
//! Each runs on a single-threaded runtime of its own thread, so the well-behaved fleet's
//! latency measures the broker, not the load generator's own queue behind the attacker.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use prost::Message as _;
use proto::Vin;
use proto::vehicle::v1::{EventAck, Request, Response};
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{Publish, Subscribe, SubscribeFilter, SubscribeReasonCode};
use rustls::ClientConfig;
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpSocket;

use crate::brokers::{BrokerKind, Refusals};
use crate::rawmqtt::{self, Packet, RawReader, RawWriter};
use crate::stats::{Latencies, Summary};
use crate::traffic::{LIST_NEARBY_LOTS, ParkingRequests};

mod socket_flood;
pub use socket_flood::{CarConnects, SocketFloodOutcome, car_connects, spawn_socket_flood};

/// Keep-alive the abuser asks for: it never pings, and it is never silent that long.
const KEEP_ALIVE: Duration = Duration::from_secs(600);
/// How long one connection attempt (TCP, TLS, CONNECT) may take, as a car's connect timeout.
const CONNECT_LIMIT: Duration = Duration::from_secs(10);
/// Pause after a failed connection attempt (none after a disconnect: an attacker comes back at once).
const RETRY_PAUSE: Duration = Duration::from_millis(10);
/// Bytes the abuser queues before each write.
const BATCH_BYTES: usize = 64 * 1024;
/// Packets the abuser queues before each write.
const BATCH_PACKETS: usize = 256;
/// The first 6 bytes of a TLS ClientHello record: a record header and the start of a handshake.
const HALF_CLIENT_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01];
/// A socket the broker closes sooner than this after it opened was refused at once.
const AT_ONCE: Duration = Duration::from_millis(500);

/// One kind of abuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Abuse {
    /// SUBSCRIBE to ever more distinct filters in its namespace.
    Subscriptions,
    /// Large retained messages on distinct topics.
    Retained,
    /// Large messages on distinct topic names, which it subscribes to.
    Topics,
    /// Topic names far beyond any sensible length.
    LongTopics,
    /// `EventAck`s on its acknowledgement topic, QoS 0.
    EventAcks,
    /// QoS 2 publishes, never released (no PUBREL).
    Qos2,
    /// Requests to the partner as fast as it can.
    Requests,
    /// Unauthenticated sockets that never finish their ClientHello, from another address.
    Sockets,
}

impl Abuse {
    /// Every abuse, in the order they run.
    pub const ALL: [Abuse; 8] = [
        Abuse::Subscriptions,
        Abuse::Retained,
        Abuse::Topics,
        Abuse::LongTopics,
        Abuse::EventAcks,
        Abuse::Qos2,
        Abuse::Requests,
        Abuse::Sockets,
    ];

    /// Its name on the command line and in tables.
    pub fn name(self) -> &'static str {
        match self {
            Abuse::Subscriptions => "subscriptions",
            Abuse::Retained => "retained",
            Abuse::Topics => "topics",
            Abuse::LongTopics => "long-topics",
            Abuse::EventAcks => "event-acks",
            Abuse::Qos2 => "qos2",
            Abuse::Requests => "requests",
            Abuse::Sockets => "sockets",
        }
    }

    /// What it does, for tables.
    pub fn describe(self, s: &AbuseSizes) -> String {
        match self {
            Abuse::Subscriptions => format!(
                "SUBSCRIBE to {} distinct filters in its namespace, {} per packet, over and over",
                s.filters, s.filters_per_subscribe
            ),
            Abuse::Retained => format!(
                "retained QoS 1 publishes of {} kB on {} distinct topics",
                s.retained_bytes / 1000,
                s.retained_topics
            ),
            Abuse::Topics => format!(
                "QoS 1 publishes of {} kB on {} distinct topics, all subscribed (`abuse/t/#`, QoS 0)",
                s.topic_payload_bytes / 1000,
                s.topics
            ),
            Abuse::LongTopics => format!(
                "QoS 1 publishes on distinct topic names of {} kB",
                s.long_topic_bytes / 1000
            ),
            Abuse::EventAcks => "EventAck flood on its `events/ack` topic, QoS 0".into(),
            Abuse::Qos2 => format!(
                "QoS 2 publishes of {} bytes, never sending PUBREL",
                s.qos2_payload_bytes
            ),
            Abuse::Requests => "ListNearbyLots requests, QoS 1, as fast as it can".into(),
            Abuse::Sockets => format!(
                "{} unauthenticated sockets from {} (half idle, half with 6 bytes of a ClientHello), each re-opened when dropped; a car connects from 127.0.0.1 every second",
                s.sockets, s.socket_source
            ),
        }
    }

    /// Whether it means anything on `broker` (Mosquitto has no partner behind it).
    pub fn applies_to(self, broker: BrokerKind) -> bool {
        broker == BrokerKind::Gateway || self != Abuse::Requests
    }
}

impl std::str::FromStr for Abuse {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Abuse::ALL.into_iter().find(|a| a.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Abuse::ALL.iter().map(|a| a.name()).collect();
            format!("unknown abuse {s:?}; one of {}", names.join(", "))
        })
    }
}

/// How big each abuse is.
#[derive(Debug, Clone, Serialize)]
pub struct AbuseSizes {
    /// Distinct filters the subscription abuse cycles through.
    pub filters: usize,
    /// Filters per SUBSCRIBE packet.
    pub filters_per_subscribe: usize,
    /// Distinct topics of the retained-message abuse.
    pub retained_topics: usize,
    /// Payload of each retained message.
    pub retained_bytes: usize,
    /// Distinct topics of the topic-name abuse.
    pub topics: usize,
    /// Payload of each of its messages.
    pub topic_payload_bytes: usize,
    /// Length of each long topic name.
    pub long_topic_bytes: usize,
    /// Payload of each QoS 2 publish.
    pub qos2_payload_bytes: usize,
    /// Unauthenticated sockets held open at once.
    pub sockets: usize,
    /// Their source address.
    pub socket_source: IpAddr,
}

impl Default for AbuseSizes {
    fn default() -> Self {
        AbuseSizes {
            filters: 20_000,
            filters_per_subscribe: 100,
            retained_topics: 1_000,
            retained_bytes: 140_000,
            topics: 2_000,
            topic_payload_bytes: 60_000,
            long_topic_bytes: 60_000,
            qos2_payload_bytes: 1_000,
            sockets: 400,
            socket_source: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
        }
    }
}

/// Where and as whom the abuser connects.
#[derive(Clone)]
pub struct AbuserTarget {
    /// The broker.
    pub addr: SocketAddr,
    /// The name its certificate is verified against.
    pub server_name: String,
    /// The abuser's VIN (its certificate's).
    pub vin: Vin,
    /// Its TLS identity; one config for the whole run, so reconnections resume TLS sessions.
    pub config: Arc<ClientConfig>,
}

/// What the abuser did and what the broker answered.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AbuserOutcome {
    /// Connections that got CONNACK 0.
    pub connects: u64,
    /// Connection attempts that failed.
    pub connect_failures: u64,
    /// The first such failure.
    pub first_connect_error: Option<String>,
    /// Connections the broker closed (the abuser closes none before the end).
    pub disconnects: u64,
    /// How the last of them ended, as the abuser saw it.
    pub last_disconnect: Option<String>,
    /// Abusive packets written to the socket.
    pub packets_sent: u64,
    /// Their bytes.
    pub bytes_sent: u64,
    /// SUBACK return codes granting a filter.
    pub filters_granted: u64,
    /// SUBACK return codes 0x80 (failure).
    pub filters_refused: u64,
    /// PUBACKs received.
    pub pubacks: u64,
    /// PUBRECs received.
    pub pubrecs: u64,
    /// PUBLISHes received on topics other than its response topic.
    pub messages_received: u64,
    /// Responses to its requests, by status code.
    pub responses: BTreeMap<String, u64>,
}

impl AbuserOutcome {
    /// What the broker answered, in a few words.
    pub fn answers(&self) -> String {
        let mut parts = Vec::new();
        if self.filters_granted + self.filters_refused > 0 {
            parts.push(format!(
                "SUBACK: {} granted, {} refused (0x80)",
                self.filters_granted, self.filters_refused
            ));
        }
        if self.pubacks > 0 {
            parts.push(format!("{} PUBACK", self.pubacks));
        }
        if self.pubrecs > 0 {
            parts.push(format!("{} PUBREC", self.pubrecs));
        }
        if self.messages_received > 0 {
            parts.push(format!("{} messages delivered back", self.messages_received));
        }
        if !self.responses.is_empty() {
            let codes: Vec<String> = self.responses.iter().map(|(c, n)| format!("{c} {n}")).collect();
            parts.push(format!("responses: {}", codes.join(", ")));
        }
        if parts.is_empty() {
            "nothing".into()
        } else {
            parts.join("; ")
        }
    }
}

/// Runs `abuse` against `target` until `until`, on a thread and runtime of its own.
pub fn spawn(
    abuse: Abuse,
    target: AbuserTarget,
    sizes: AbuseSizes,
    until: Instant,
) -> std::thread::JoinHandle<Result<AbuserOutcome>> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(runtime.block_on(abuse_until(abuse, &target, &sizes, until)))
    })
}

/// The counters, whoever panicked while holding them.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn abuse_until(abuse: Abuse, target: &AbuserTarget, sizes: &AbuseSizes, until: Instant) -> AbuserOutcome {
    let out = Mutex::new(AbuserOutcome::default());
    let mut packets = Packets::new(abuse, &target.vin, sizes);
    let responses = proto::topics::responses(&target.vin);
    while Instant::now() < until {
        let attempt = tokio::select! {
            _ = tokio::time::sleep_until(until.into()) => break,
            opened = rawmqtt::open(
                target.config.clone(),
                target.addr,
                &target.server_name,
                target.vin.as_str(),
                KEEP_ALIVE,
                CONNECT_LIMIT,
            ) => opened.and_then(rawmqtt::Opened::accepted),
        };
        let (mut writer, mut reader) = match attempt {
            Ok((writer, reader, _)) => (writer, reader),
            Err(e) => {
                {
                    let mut o = lock(&out);
                    o.connect_failures += 1;
                    o.first_connect_error.get_or_insert_with(|| format!("{e:#}"));
                }
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        lock(&out).connects += 1;
        let ended = tokio::select! {
            _ = tokio::time::sleep_until(until.into()) => None,
            why = read_all(&mut reader, &responses, &out) => Some(why),
            why = write_all(&mut writer, &mut packets, &out) => Some(why),
        };
        match ended {
            Some(why) => {
                let mut o = lock(&out);
                o.disconnects += 1;
                o.last_disconnect = Some(why);
            }
            None => break,
        }
    }
    out.into_inner().unwrap_or_else(PoisonError::into_inner)
}

/// Reads until the connection ends, counting what the broker sends; returns why it ended.
async fn read_all(reader: &mut RawReader, responses: &str, out: &Mutex<AbuserOutcome>) -> String {
    loop {
        let packet = match reader.next().await {
            Ok(packet) => packet,
            Err(e) => return format!("{e:#}"),
        };
        let mut o = lock(out);
        match &packet {
            Packet::SubAck(ack) => {
                for code in &ack.return_codes {
                    match code {
                        SubscribeReasonCode::Success(_) => o.filters_granted += 1,
                        SubscribeReasonCode::Failure => o.filters_refused += 1,
                    }
                }
            }
            Packet::PubAck(_) => o.pubacks += 1,
            Packet::PubRec(_) => o.pubrecs += 1,
            Packet::Publish(p) if p.topic == responses => {
                let code = Response::decode(p.payload.clone())
                    .map(|r| format!("{:?}", r.status.unwrap_or_default().code()))
                    .unwrap_or_else(|_| "undecodable".into());
                *o.responses.entry(code).or_default() += 1;
            }
            Packet::Publish(_) => o.messages_received += 1,
            _ => {}
        }
    }
}

/// Writes abusive packets until a write fails; returns why.
async fn write_all(writer: &mut RawWriter, packets: &mut Packets, out: &Mutex<AbuserOutcome>) -> String {
    for p in packets.on_connect() {
        if let Err(e) = writer.queue(&p) {
            return format!("{e:#}");
        }
    }
    loop {
        let mut n = 0u64;
        while n < BATCH_PACKETS as u64 && writer.queued() < BATCH_BYTES {
            if let Err(e) = writer.queue(&packets.next()) {
                return format!("{e:#}");
            }
            n += 1;
        }
        let bytes = writer.queued() as u64;
        if let Err(e) = writer.flush().await {
            return format!("{e:#}");
        }
        {
            let mut o = lock(out);
            o.packets_sent += n;
            o.bytes_sent += bytes;
        }
        // The socket may always be writable; the reader must get its turn.
        tokio::task::yield_now().await;
    }
}

/// The abusive packets of one abuse, numbered on across connections.
struct Packets {
    abuse: Abuse,
    vin: Vin,
    sizes: AbuseSizes,
    k: u64,
    pkid: u16,
    payload: Bytes,
    request: ParkingRequests,
}

impl Packets {
    fn new(abuse: Abuse, vin: &Vin, sizes: &AbuseSizes) -> Packets {
        let len = match abuse {
            Abuse::Retained => sizes.retained_bytes,
            Abuse::Topics => sizes.topic_payload_bytes,
            Abuse::Qos2 => sizes.qos2_payload_bytes,
            _ => 16,
        };
        Packets {
            abuse,
            vin: vin.clone(),
            sizes: sizes.clone(),
            k: 0,
            pkid: 0,
            payload: Bytes::from(vec![b'a'; len]),
            request: ParkingRequests::default(),
        }
    }

    /// What the abuser sends first on every connection.
    fn on_connect(&mut self) -> Vec<Packet> {
        let filter = match self.abuse {
            Abuse::Topics => format!("/tenants/{}/abuse/t/#", self.vin),
            Abuse::Requests => proto::topics::responses(&self.vin),
            _ => return Vec::new(),
        };
        // QoS 0: the abuser acknowledges nothing, and the broker needs no acknowledgement.
        let mut subscribe = Subscribe::new(filter, QoS::AtMostOnce);
        subscribe.pkid = self.next_pkid();
        vec![Packet::Subscribe(subscribe)]
    }

    /// The next packet id, 1 to 65535 and round again. Unlike the gateway's bookkeeping of
    /// what it sent, nothing is held until acknowledged: an abuser never waits for an answer.
    fn next_pkid(&mut self) -> u16 {
        self.pkid = self.pkid.checked_add(1).unwrap_or(1);
        self.pkid
    }

    fn publish(&mut self, topic: String, qos: QoS, retain: bool, payload: Bytes) -> Packet {
        let mut publish = Publish::from_bytes(topic, qos, payload);
        publish.retain = retain;
        if qos != QoS::AtMostOnce {
            publish.pkid = self.next_pkid();
        }
        Packet::Publish(publish)
    }

    fn next(&mut self) -> Packet {
        let k = self.k;
        self.k += 1;
        let (vin, s) = (&self.vin, &self.sizes);
        match self.abuse {
            Abuse::Subscriptions => {
                let per = s.filters_per_subscribe.max(1) as u64;
                let filters = (0..per)
                    .map(|j| {
                        let n = (k * per + j) % s.filters.max(1) as u64;
                        SubscribeFilter::new(format!("/tenants/{vin}/abuse/s/{n}"), QoS::AtMostOnce)
                    })
                    .collect();
                Packet::Subscribe(Subscribe {
                    pkid: self.next_pkid(),
                    filters,
                })
            }
            Abuse::Retained => {
                let topic = format!("/tenants/{vin}/abuse/r/{}", k % s.retained_topics.max(1) as u64);
                self.publish(topic, QoS::AtLeastOnce, true, self.payload.clone())
            }
            Abuse::Topics => {
                let topic = format!("/tenants/{vin}/abuse/t/{}", k % s.topics.max(1) as u64);
                self.publish(topic, QoS::AtLeastOnce, false, self.payload.clone())
            }
            Abuse::LongTopics => {
                let mut topic = format!("/tenants/{vin}/abuse/l/{k}/");
                let pad = s.long_topic_bytes.saturating_sub(topic.len());
                topic.extend(std::iter::repeat_n('x', pad));
                self.publish(topic, QoS::AtLeastOnce, false, self.payload.clone())
            }
            Abuse::EventAcks => {
                let ack = EventAck { sequence: k + 1 }.encode_to_vec();
                self.publish(proto::topics::event_acks(vin), QoS::AtMostOnce, false, ack.into())
            }
            Abuse::Qos2 => {
                let topic = format!("/tenants/{vin}/abuse/q2");
                self.publish(topic, QoS::ExactlyOnce, false, self.payload.clone())
            }
            Abuse::Requests => {
                let request = Request {
                    request_id: format!("abuse-{k}"),
                    idempotency_key: String::new(),
                    method: LIST_NEARBY_LOTS.into(),
                    timeout_ms: 30_000,
                    payload: self.request.payload().to_vec(),
                }
                .encode_to_vec();
                self.publish(proto::topics::requests(vin), QoS::AtLeastOnce, false, request.into())
            }
            // Not an MQTT abuse: see `socket_flood`.
            Abuse::Sockets => Packet::PingReq,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abuses_are_named_on_the_command_line_as_in_tables() {
        for a in Abuse::ALL {
            assert_eq!(a.name().parse::<Abuse>(), Ok(a));
            assert!(!a.describe(&AbuseSizes::default()).is_empty());
        }
        assert!("everything".parse::<Abuse>().is_err());
        assert!(!Abuse::Requests.applies_to(BrokerKind::Mosquitto));
        assert!(Abuse::Qos2.applies_to(BrokerKind::Mosquitto));
    }

    #[test]
    fn packets_stay_within_the_abuses_sizes() {
        let vin = crate::fleet::vin(7);
        let sizes = AbuseSizes {
            filters: 150,
            ..AbuseSizes::default()
        };
        let mut subscriptions = Packets::new(Abuse::Subscriptions, &vin, &sizes);
        let mut filters = std::collections::HashSet::new();
        for _ in 0..10 {
            let Packet::Subscribe(s) = subscriptions.next() else {
                panic!("a SUBSCRIBE")
            };
            assert_ne!(s.pkid, 0, "MQTT forbids packet id 0");
            filters.extend(s.filters.into_iter().map(|f| f.path));
        }
        assert_eq!(filters.len(), 150, "cycles through its distinct filters");
        let mut long = Packets::new(Abuse::LongTopics, &vin, &sizes);
        let Packet::Publish(p) = long.next() else {
            panic!("a PUBLISH")
        };
        assert_eq!(p.topic.len(), sizes.long_topic_bytes);
        assert!(p.topic.starts_with(&format!("/tenants/{vin}/")));
        let mut qos2 = Packets::new(Abuse::Qos2, &vin, &sizes);
        let Packet::Publish(p) = qos2.next() else {
            panic!("a PUBLISH")
        };
        assert_eq!((p.qos, p.payload.len()), (QoS::ExactlyOnce, sizes.qos2_payload_bytes));
        let mut topics = Packets::new(Abuse::Topics, &vin, &sizes);
        let Packet::Subscribe(s) = &topics.on_connect()[0] else {
            panic!("a SUBSCRIBE first")
        };
        assert_ne!(s.pkid, 0, "MQTT forbids packet id 0");
    }

    #[test]
    fn answers_say_what_came_back() {
        let mut o = AbuserOutcome {
            filters_granted: 32,
            filters_refused: 19_968,
            ..AbuserOutcome::default()
        };
        o.responses.insert("ResourceExhausted".into(), 3);
        assert_eq!(
            o.answers(),
            "SUBACK: 32 granted, 19968 refused (0x80); responses: ResourceExhausted 3"
        );
        assert_eq!(AbuserOutcome::default().answers(), "nothing");
    }
}
