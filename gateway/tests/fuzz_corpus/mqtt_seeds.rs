//! The MQTT seeds: packets written with rumqttc's encoder as a car writes them, well-behaved
//! sessions first, then each rule broken once.

use super::*;

/// `packets` as a car writes them.
pub(crate) fn wire(packets: &[Packet]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for packet in packets {
        packet.write(&mut out, usize::MAX).expect("an encodable packet");
    }
    out.to_vec()
}

pub(crate) fn connect_as(client_id: &str, clean_session: bool) -> Connect {
    let mut connect = Connect::new(client_id);
    connect.keep_alive = 30;
    connect.clean_session = clean_session;
    connect.login = Some(Login::new("vehicle-agent/0.1.0", ""));
    connect
}

pub(crate) fn connect() -> Packet {
    Packet::Connect(connect_as(VIN, true))
}

pub(crate) fn subscribe(pkid: u16, filters: &[(&str, QoS)]) -> Packet {
    Packet::Subscribe(Subscribe {
        pkid,
        filters: filters
            .iter()
            .map(|(path, qos)| SubscribeFilter::new((*path).to_owned(), *qos))
            .collect(),
    })
}

pub(crate) fn publish(topic: &str, qos: QoS, pkid: u16, payload: impl Into<Bytes>) -> Packet {
    let mut publish = Publish::new(topic, qos, payload.into());
    publish.pkid = pkid;
    Packet::Publish(publish)
}

/// What cars send: well-behaved sessions, then each rule broken once.
pub(crate) fn mqtt_streams() -> Vec<(&'static str, Vec<u8>)> {
    let v = vin();
    let requests = proto::topics::requests(&v);
    let acks = proto::topics::event_acks(&v);
    let request = || envelope("r-1", "k-1", START, 5_000, vec![0x0a, 0x02, b'h', b'i']);
    let mut streams = vec![
        (
            "agent-session",
            wire(&[
                connect(),
                subscribe(
                    1,
                    &[
                        (&proto::topics::responses(&v), QoS::AtLeastOnce),
                        (&proto::topics::events(&v), QoS::AtLeastOnce),
                    ],
                ),
                publish(&requests, QoS::AtLeastOnce, 2, request()),
                publish(&acks, QoS::AtLeastOnce, 3, EventAck { sequence: 1 }.encode_to_vec()),
                Packet::PingReq,
                Packet::Disconnect,
            ]),
        ),
        (
            "persistent-with-will-retain-qos2",
            wire(&[
                Packet::Connect(Connect {
                    last_will: Some(LastWill::new(own("status"), "gone", QoS::AtLeastOnce, true)),
                    ..connect_as(VIN, false)
                }),
                subscribe(1, &[(&own("#"), QoS::ExactlyOnce)]),
                publish(&own("status"), QoS::AtLeastOnce, 2, "parked"),
                publish(&own("telemetry"), QoS::ExactlyOnce, 3, "42"),
                publish(&own("telemetry"), QoS::ExactlyOnce, 3, "42"),
                Packet::PubRel(PubRel::new(3)),
                Packet::Unsubscribe(Unsubscribe::new(own("#"))),
                Packet::PubAck(rumqttc::mqttbytes::v4::PubAck::new(1)),
            ]),
        ),
        (
            "will-on-the-request-topic",
            wire(&[Packet::Connect(Connect {
                last_will: Some(LastWill::new(&requests, request(), QoS::AtMostOnce, false)),
                ..connect_as("", true)
            })]),
        ),
        (
            "filters-outside-the-namespace",
            wire(&[
                connect(),
                subscribe(
                    7,
                    &[
                        ("#", QoS::AtLeastOnce),
                        ("+/+/+/+", QoS::AtLeastOnce),
                        ("/tenants/+/v1/resp", QoS::AtLeastOnce),
                        (&proto::topics::responses(&other()), QoS::AtLeastOnce),
                        (&format!("$share/g{}", own("#")), QoS::AtLeastOnce),
                        (&format!("/tenants/{VIN}"), QoS::AtLeastOnce),
                        (&format!("/tenants/{VIN}X/#"), QoS::AtLeastOnce),
                        (&own("a/#/b"), QoS::AtLeastOnce),
                        (&own("x+"), QoS::AtLeastOnce),
                        (&own(&"long/".repeat(20)), QoS::AtLeastOnce),
                        (&own("v1/resp"), QoS::AtLeastOnce),
                    ],
                ),
                Packet::PingReq,
            ]),
        ),
        (
            "publish-as-another-car",
            wire(&[
                connect(),
                publish(&proto::topics::requests(&other()), QoS::AtLeastOnce, 1, request()),
            ]),
        ),
        (
            "publish-on-the-gateways-topic",
            wire(&[
                connect(),
                publish(&proto::topics::responses(&v), QoS::AtMostOnce, 0, "forged"),
            ]),
        ),
        (
            "requests-over-the-in-flight-limit",
            wire(&[
                connect(),
                subscribe(1, &[(&proto::topics::responses(&v), QoS::AtLeastOnce)]),
                publish(&requests, QoS::AtLeastOnce, 2, request()),
                publish(&requests, QoS::AtLeastOnce, 3, request()),
                publish(&requests, QoS::AtLeastOnce, 4, request()),
                publish(&requests, QoS::ExactlyOnce, 5, request()),
                publish(&requests, QoS::AtMostOnce, 0, request()),
            ]),
        ),
        (
            "qos2-awaiting-release-over-the-limit",
            wire(&[
                connect(),
                publish(&own("a"), QoS::ExactlyOnce, 1, "1"),
                publish(&own("a"), QoS::ExactlyOnce, 2, "2"),
                publish(&own("a"), QoS::ExactlyOnce, 1, "1 again"),
                publish(&own("a"), QoS::ExactlyOnce, 3, "3"),
            ]),
        ),
        (
            "subscriptions-and-retained-over-their-limits",
            wire(&[
                connect(),
                subscribe(
                    1,
                    &[
                        (&own("a"), QoS::AtMostOnce),
                        (&own("b"), QoS::AtLeastOnce),
                        (&own("c"), QoS::ExactlyOnce),
                        (&own("d"), QoS::AtMostOnce),
                        (&own("e"), QoS::AtMostOnce),
                        (&own("a"), QoS::AtLeastOnce),
                    ],
                ),
                Packet::Publish(Publish {
                    retain: true,
                    pkid: 1,
                    ..Publish::new(own("a"), QoS::AtLeastOnce, "1")
                }),
                Packet::Publish(Publish {
                    retain: true,
                    pkid: 2,
                    ..Publish::new(own("b"), QoS::AtLeastOnce, "2")
                }),
                Packet::Publish(Publish {
                    retain: true,
                    pkid: 3,
                    ..Publish::new(own("c"), QoS::AtLeastOnce, "3")
                }),
            ]),
        ),
        (
            "client-id-of-another-car",
            wire(&[Packet::Connect(connect_as(OTHER_VIN, true))]),
        ),
        (
            "empty-client-id-persistent",
            wire(&[Packet::Connect(connect_as("", false))]),
        ),
        (
            "mqtt5-connect",
            wire(&[Packet::Connect(Connect {
                protocol: Protocol::V5,
                ..connect_as(VIN, true)
            })]),
        ),
        ("first-packet-not-connect", wire(&[Packet::PingReq, connect()])),
        ("second-connect", wire(&[connect(), connect()])),
        ("server-only-packet", wire(&[connect(), Packet::PingResp])),
    ];

    // Publishing past the burst: throttled, then over the mailbox for its own subscription.
    let mut burst = vec![connect(), subscribe(1, &[(&own("#"), QoS::AtLeastOnce)])];
    for pkid in 2..70 {
        burst.push(publish(&own("t"), QoS::AtLeastOnce, pkid, "x"));
    }
    streams.push(("publish-burst-to-its-own-subscription", wire(&burst)));

    // Byte-level breakage, after a valid CONNECT.
    let after_connect = |tail: &[u8]| {
        let mut bytes = wire(&[connect()]);
        bytes.extend_from_slice(tail);
        bytes
    };
    let mut reserved = wire(&[connect()]);
    // The connect flags byte: fixed header (2), protocol name (6), level (1).
    reserved[2 + 6 + 1] |= 1;
    streams.push(("connect-reserved-flag", reserved));
    let nul = wire(&[publish(&own("a\0b"), QoS::AtMostOnce, 0, "x")]);
    streams.push(("nul-in-topic", after_connect(&nul)));
    let mut qos3 = wire(&[publish(&own("a"), QoS::AtLeastOnce, 1, "x")]);
    qos3[0] |= 0b0110;
    streams.push(("publish-qos3", after_connect(&qos3)));
    let mut pubrel = wire(&[Packet::PubRel(PubRel::new(1))]);
    pubrel[0] = 0x60;
    streams.push(("pubrel-without-its-reserved-bits", after_connect(&pubrel)));
    streams.push(("pingreq-with-a-flag", after_connect(&[0xc1, 0])));
    streams.push(("huge-remaining-length", after_connect(&[0x30, 0xff, 0xff, 0xff, 0x7f])));
    streams.push((
        "five-byte-remaining-length",
        after_connect(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]),
    ));
    streams.push((
        "packet-over-the-size-limit",
        after_connect(&wire(&[publish(&own("big"), QoS::AtMostOnce, 0, vec![0u8; 2100])])),
    ));
    streams.push(("cut-mid-packet", {
        let mut bytes = after_connect(&wire(&[publish(&own("a"), QoS::AtMostOnce, 0, "x")]));
        bytes.pop();
        bytes
    }));
    streams.push(("packet-type-zero", after_connect(&[0x00, 0x00])));
    streams.push(("subscribe-without-filters", after_connect(&[0x82, 0x02, 0x00, 0x01])));
    streams.push((
        "topic-not-utf8",
        after_connect(&[0x30, 0x05, 0x00, 0x02, 0xc3, 0x28, b'x']),
    ));
    streams
}
