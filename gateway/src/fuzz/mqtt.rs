//! The MQTT targets: the packet reader alone (`mqtt_packet`), and a whole session over an
//! in-memory stream (`mqtt_session`), with the invariants each holds the gateway to.

// The parent's fixtures (the cars, the limits, the runtime) and imports serve both files.
use super::*;

// ---------------------------------------------------------------------------------------------
// mqtt_packet

/// Frames `data` (after its first byte) with the gateway's MQTT reader, delivered in chunks of
/// the size the first byte says and then in one piece. How the stream splits the bytes must
/// change nothing, and no packet may come out of a frame that breaks a reserved-bits rule
/// (MQTT 3.1.1 §2.2.2, §3.1.2.3) or the size limit.
pub fn mqtt_packet(data: &[u8]) {
    let Some((&split, bytes)) = data.split_first() else {
        return;
    };
    let whole = frame_all(bytes, bytes.len().max(1));
    let trickled = frame_all(bytes, usize::from(split % 64) + 1);
    assert_eq!(whole, trickled, "framing depends on how the bytes arrive");
    let mut rest = bytes;
    for packet in &whole.0 {
        let frame = mqttbytes::check(rest.iter(), MAX_PACKET_BYTES)
            .unwrap_or_else(|e| panic!("{packet:?} was read from a frame that is not whole: {e}"))
            .frame_length();
        assert_eq!(
            reserved_bits_problem(&rest[..frame]),
            None,
            "{packet:?} was read from a frame that breaks a reserved-bits rule"
        );
        rest = &rest[frame..];
    }
}

/// Every packet the reader makes of `bytes`, and why it stopped.
fn frame_all(bytes: &[u8], chunk: usize) -> (Vec<Packet>, DisconnectReason) {
    RUNTIME.with(|rt| {
        rt.block_on(async {
            let mut io = MqttIo::new(Trickle { bytes, chunk }, MAX_PACKET_BYTES, Duration::from_secs(30));
            let mut packets = Vec::new();
            loop {
                match io.read().await {
                    Ok(packet) => packets.push(packet),
                    Err(reason) => return (packets, reason),
                }
            }
        })
    })
}

/// A stream that yields its bytes at most `chunk` at a time, then ends; writes go nowhere.
struct Trickle<'a> {
    bytes: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let n = self.chunk.min(self.bytes.len()).min(buf.remaining());
        let (now, later) = self.bytes.split_at(n);
        buf.put_slice(now);
        self.bytes = later;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Trickle<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

// ---------------------------------------------------------------------------------------------
// mqtt_session

/// Feeds `data` as the car [`VIN`]'s side of a TLS stream to a gateway session (CONNECT, then
/// the connected loop), ends the stream, and reads everything the session writes back. Real
/// mailboxes and saved sessions; inboxes that answer every request a moment later and count
/// acknowledgements. The session must end; what it writes must be whole MQTT packets answering
/// what the car sent, in order, on the car's own topics only; and the other car's mailbox and
/// retained messages must be as they were.
pub fn mqtt_session(data: &[u8]) {
    RUNTIME.with(|rt| rt.block_on(run_session(data)));
}

/// Answers every request as routing does, after a yield (so that requests pile up against the
/// car's in-flight limit): a response in the car's mailbox, then the request's slot back.
struct AnsweringInbox {
    car: Vin,
    mailboxes: Mailboxes,
    tasks: TaskTracker,
    handed: AtomicUsize,
}

impl RequestInbox for AnsweringInbox {
    fn request(&self, vin: Vin, envelope: Bytes, slot: OwnedSemaphorePermit) {
        assert_eq!(vin, self.car, "a request was handed on under another VIN");
        self.handed.fetch_add(1, Ordering::Relaxed);
        let mailboxes = self.mailboxes.clone();
        self.tasks.spawn(async move {
            tokio::task::yield_now().await;
            let answer = Response::error("", Code::Unimplemented, format!("{} bytes", envelope.len()));
            mailboxes.deliver(&vin, Outbound::Responses, Bytes::from(answer.encode_to_vec()));
            drop(slot);
        });
    }
}

/// Counts acknowledgements.
struct CountingAcks {
    car: Vin,
    handed: AtomicUsize,
}

impl AckInbox for CountingAcks {
    fn acknowledged(&self, vin: &Vin, _ack: Bytes) {
        assert_eq!(*vin, self.car, "an acknowledgement was handed on under another VIN");
        self.handed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Collects session events; when a car's events subscription goes live, puts an event in its
/// mailbox, as event delivery does.
async fn collect(mut events: mpsc::Receiver<ConnectionEvent>, mailboxes: Mailboxes) -> Vec<ConnectionEvent> {
    let mut seen = Vec::new();
    while let Some(event) = events.recv().await {
        if let ConnectionEvent::EventsSubscribed { vin, .. } = &event {
            let event = Event {
                partner: PARTNER_SERVICE.into(),
                kind: "fuzz".into(),
                payload: Vec::new(),
                sequence: seen.len() as u64 + 1,
            };
            mailboxes.deliver(vin, Outbound::Events, Bytes::from(event.encode_to_vec()));
        }
        seen.push(event);
    }
    seen
}

async fn run_session(data: &[u8]) {
    let (car, other) = (car(), other_car());
    let limits = session_limits();
    let mailboxes = Mailboxes::new(MAILBOX_LIMITS);
    let saved = SavedSessions::default();
    // The other car is away: a message waits in its parked mailbox and it keeps a retained one.
    let others_mailbox = mailboxes.open(&other, true);
    mailboxes.close(&other, &others_mailbox, true);
    mailboxes.deliver(&other, Outbound::Responses, Bytes::from_static(b"for the other car"));
    let others_topic = format!("{}status", topics::namespace(&other));
    saved
        .retain(&other, &others_topic, Bytes::from_static(b"parked"), 1, limits.retained)
        .expect("room for the other car's retained message");

    let tasks = TaskTracker::new();
    let requests = Arc::new(AnsweringInbox {
        car: car.clone(),
        mailboxes: mailboxes.clone(),
        tasks: tasks.clone(),
        handed: AtomicUsize::new(0),
    });
    let acks = Arc::new(CountingAcks {
        car: car.clone(),
        handed: AtomicUsize::new(0),
    });
    let (events_tx, events_rx) = mpsc::channel(16);
    let collector = tokio::spawn(collect(events_rx, mailboxes.clone()));
    let services = SessionServices {
        mailboxes: mailboxes.clone(),
        requests: requests.clone(),
        acks: acks.clone(),
        events: ConnectionEventSink(events_tx),
        saved: saved.clone(),
        packet_limiter: Arc::new(PacketLimiter::new(PacketRate {
            // A car over its burst is throttled for a millisecond per publish, not a second.
            per_second: NonZeroU32::new(1000).expect("non-zero"),
            burst: NonZeroU32::new(40).expect("non-zero"),
            flood_disconnect_after: Duration::from_secs(1),
        })),
        // Each run is the car's first connection.
        connect_limiter: Arc::new(ConnectLimiter::new(NonZeroU32::MAX, NonZeroU32::MAX)),
        limits: limits.clone(),
        revocations: Default::default(),
        metrics: crate::metrics::Metrics::new(None),
    };
    let peer = Peer {
        conn: 1,
        vin: car.clone(),
        fingerprint: "fuzz".into(),
        certificate: Default::default(),
        remote: ([127, 0, 0, 1], 50_000).into(),
    };
    let shutdown = CancellationToken::new();
    let (car_end, gateway_end) = tokio::io::duplex(16 * 1024);
    let (mut from_gateway, mut to_gateway) = tokio::io::split(car_end);
    let session = async {
        let car_writes = async {
            // The gateway may close first: what it did not read does not matter.
            let _ = to_gateway.write_all(data).await;
            let _ = to_gateway.shutdown().await;
        };
        let car_reads = async {
            let mut written = Vec::new();
            from_gateway
                .read_to_end(&mut written)
                .await
                .expect("reading an in-memory stream");
            written
        };
        let (reason, (), written) = tokio::join!(
            serve_vehicle(gateway_end, &peer, &services, &shutdown),
            car_writes,
            car_reads
        );
        (reason, written)
    };
    let (reason, written) = tokio::time::timeout(SESSION_TIME_LIMIT, session)
        .await
        .expect("the session ends once the car's bytes run out");
    drop(services);
    tasks.close();
    tasks.wait().await;
    let events = collector.await.expect("the event collector");

    assert!(
        !matches!(
            reason,
            DisconnectReason::KeepAliveTimeout | DisconnectReason::Kicked | DisconnectReason::ServerShutdown
        ),
        "a session whose car's stream ended stopped for another reason: {reason}"
    );
    let sent = Sent::parse(data);
    let answers = parse_written(&written);
    check_answers(&car, &sent, &answers, &limits);
    let connected = matches!(
        answers.first(),
        Some(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Success
    );
    check_session_events(&car, &events, connected, &reason);
    assert!(
        requests.handed.load(Ordering::Relaxed) <= sent.requests + 1,
        "more requests handed on than the car published (and its will)"
    );
    assert!(
        acks.handed.load(Ordering::Relaxed) <= sent.acks + 1,
        "more acknowledgements handed on than the car published (and its will)"
    );
    assert_eq!(mailboxes.live(), 0, "the session's mailbox outlived it");
    assert_eq!(
        others_mailbox.state(),
        MailboxState::Parked,
        "the other car's mailbox changed"
    );
    assert_eq!(others_mailbox.len(), 1, "the other car's waiting message changed");
    let others_retained = saved.retained_matching(&other, &format!("{}#", topics::namespace(&other)));
    assert_eq!(
        others_retained.iter().map(|r| r.topic.as_str()).collect::<Vec<_>>(),
        [others_topic.as_str()],
        "the other car's retained messages changed"
    );
}

/// What the car sent, as far as it parses without the gateway's extra checks: the gateway
/// reads no further than this, so its answers answer a prefix of it.
#[derive(Default)]
struct Sent {
    /// The first packet, if it is a CONNECT, with the bytes of its frame.
    connect: Option<(rumqttc::mqttbytes::v4::Connect, Vec<u8>)>,
    subscribes: Vec<rumqttc::mqttbytes::v4::Subscribe>,
    unsubscribes: Vec<u16>,
    /// Packet ids of QoS 1 and QoS 2 publishes, in order.
    qos1: Vec<u16>,
    qos2: Vec<u16>,
    pubrels: Vec<u16>,
    pings: usize,
    /// Topics the car published on (its will's included).
    topics: HashSet<String>,
    requests: usize,
    acks: usize,
}

impl Sent {
    fn parse(data: &[u8]) -> Sent {
        let (vin, mut sent) = (car(), Sent::default());
        let mut buffer = BytesMut::from(data);
        let mut first = true;
        loop {
            let frame_start = data.len() - buffer.len();
            let Ok(packet) = Packet::read(&mut buffer, MAX_PACKET_BYTES) else {
                return sent;
            };
            match packet {
                Packet::Connect(connect) if first => {
                    if let Some(will) = &connect.last_will {
                        sent.topics.insert(will.topic.clone());
                    }
                    let frame = data[frame_start..data.len() - buffer.len()].to_vec();
                    sent.connect = Some((connect, frame));
                }
                Packet::Publish(publish) => {
                    match publish.qos {
                        QoS::AtMostOnce => {}
                        QoS::AtLeastOnce => sent.qos1.push(publish.pkid),
                        QoS::ExactlyOnce => sent.qos2.push(publish.pkid),
                    }
                    sent.requests += usize::from(publish.topic == topics::requests(&vin));
                    sent.acks += usize::from(publish.topic == topics::event_acks(&vin));
                    sent.topics.insert(publish.topic);
                }
                Packet::Subscribe(subscribe) => sent.subscribes.push(subscribe),
                Packet::Unsubscribe(unsubscribe) => sent.unsubscribes.push(unsubscribe.pkid),
                Packet::PubRel(rel) => sent.pubrels.push(rel.pkid),
                Packet::PingReq => sent.pings += 1,
                _ => {}
            }
            first = false;
        }
    }
}

/// Everything the gateway wrote, which must be whole, valid MQTT packets.
fn parse_written(written: &[u8]) -> Vec<Packet> {
    let mut buffer = BytesMut::from(written);
    let mut packets = Vec::new();
    while !buffer.is_empty() {
        match Packet::read(&mut buffer, usize::MAX) {
            Ok(packet) => packets.push(packet),
            Err(e) => panic!("the gateway wrote something that is not a whole MQTT packet: {e}"),
        }
    }
    packets
}

/// The gateway's answers answer what the car sent, in order, and stay in its namespace.
fn check_answers(car: &Vin, sent: &Sent, answers: &[Packet], limits: &SessionLimits) {
    let Some((first, rest)) = answers.split_first() else {
        return;
    };
    let Packet::ConnAck(connack) = first else {
        panic!("the gateway's first packet is {first:?}, not CONNACK");
    };
    if connack.code != ConnectReturnCode::Success {
        assert!(
            rest.is_empty(),
            "the gateway went on after refusing the CONNECT: {rest:?}"
        );
        return;
    }
    let Some((connect, frame)) = &sent.connect else {
        panic!("CONNACK without a CONNECT from the car");
    };
    assert_eq!(
        connect.protocol,
        Protocol::V4,
        "a CONNECT other than MQTT 3.1.1 was accepted"
    );
    assert!(
        connect.client_id == car.as_str() || connect.client_id.is_empty() && connect.clean_session,
        "client id {:?} was accepted for {car}",
        connect.client_id
    );
    assert_eq!(
        reserved_bits_problem(frame),
        None,
        "a CONNECT breaking a reserved-bits rule was accepted"
    );

    let (mut subacks, mut unsubacks, mut pubacks, mut pubrecs, mut pubcomps, mut pingresps) = (0, 0, 0, 0, 0, 0);
    for packet in rest {
        match packet {
            Packet::Publish(publish) => {
                assert!(
                    topics::is_within_tenant(car, &publish.topic),
                    "the gateway published on {:?}, outside {car}'s namespace",
                    publish.topic
                );
                assert!(publish.qos != QoS::ExactlyOnce, "the gateway never sends QoS 2");
                assert!(
                    publish.qos == QoS::AtMostOnce || publish.pkid != 0,
                    "QoS 1 with packet id 0"
                );
                if publish.topic == topics::responses(car) {
                    Response::decode(publish.payload.clone()).expect("a response is a vehicle.v1.Response");
                } else if publish.topic == topics::events(car) {
                    Event::decode(publish.payload.clone()).expect("an event is a vehicle.v1.Event");
                } else {
                    assert!(
                        sent.topics.contains(&publish.topic),
                        "the gateway published on {:?}, where this car never published",
                        publish.topic
                    );
                }
            }
            Packet::SubAck(suback) => {
                let subscribe = sent
                    .subscribes
                    .get(subacks)
                    .expect("a SUBACK for each SUBSCRIBE at most");
                assert_eq!(suback.pkid, subscribe.pkid, "SUBACKs answer the SUBSCRIBEs in order");
                assert_eq!(
                    suback.return_codes.len(),
                    subscribe.filters.len(),
                    "one code per filter"
                );
                for (code, filter) in suback.return_codes.iter().zip(&subscribe.filters) {
                    if let SubscribeReasonCode::Success(granted) = code {
                        // Stated apart from the session's own check, which is what is tested.
                        let grantable = filter.path.starts_with(&format!("/tenants/{car}/"))
                            && mqttbytes::valid_filter(&filter.path)
                            && !filter.path.contains('\0')
                            && filter.path.len() <= limits.max_topic_bytes;
                        assert!(grantable, "filter {:?} was granted to {car}", filter.path);
                        assert!(
                            *granted <= filter.qos && *granted != QoS::ExactlyOnce,
                            "granted {granted:?}"
                        );
                    }
                }
                subacks += 1;
            }
            Packet::UnsubAck(unsuback) => {
                assert_eq!(
                    Some(&unsuback.pkid),
                    sent.unsubscribes.get(unsubacks),
                    "UNSUBACKs in order"
                );
                unsubacks += 1;
            }
            Packet::PubAck(ack) => {
                assert_eq!(Some(&ack.pkid), sent.qos1.get(pubacks), "PUBACKs in order");
                pubacks += 1;
            }
            Packet::PubRec(rec) => {
                assert_eq!(Some(&rec.pkid), sent.qos2.get(pubrecs), "PUBRECs in order");
                pubrecs += 1;
            }
            Packet::PubComp(comp) => {
                assert_eq!(Some(&comp.pkid), sent.pubrels.get(pubcomps), "PUBCOMPs in order");
                pubcomps += 1;
            }
            Packet::PingResp => {
                pingresps += 1;
                assert!(pingresps <= sent.pings, "more PINGRESPs than PINGREQs");
            }
            other => panic!("the gateway sent {other:?}, which a server never sends here"),
        }
    }
}

/// One connect and one disconnect are recorded for an accepted session, none for a refused one,
/// and every event is about this car.
fn check_session_events(car: &Vin, events: &[ConnectionEvent], connected: bool, reason: &DisconnectReason) {
    let (mut connects, mut disconnects) = (0, 0);
    for event in events {
        match event {
            ConnectionEvent::Connected(info) => {
                assert_eq!(info.vin, *car);
                connects += 1;
            }
            ConnectionEvent::EventsSubscribed { vin, .. } => {
                assert_eq!(*vin, *car);
                assert_eq!(connects, 1, "events subscribed outside a session");
            }
            ConnectionEvent::Disconnected {
                vin, reason: recorded, ..
            } => {
                assert_eq!(*vin, *car);
                assert_eq!(recorded, reason, "the recorded reason is not the session's");
                disconnects += 1;
            }
        }
    }
    let expected = usize::from(connected);
    assert_eq!(
        (connects, disconnects),
        (expected, expected),
        "session events {events:?}"
    );
}
