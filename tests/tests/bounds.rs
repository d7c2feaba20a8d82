//! Every bound on what one car can make the gateway hold or do, exceeded over the real wire:
//! subscriptions, topic size, retained messages, QoS 2 awaiting release, bytes queued for a
//! car that stops reading (its queue, and writes it takes no bytes of), the publish and request
//! rates, and saved sessions that expire.

use std::num::NonZeroU32;
use std::time::Duration;

use gateway::DisconnectReason;
use integration_tests::*;
use proto::vehicle::v1::Code;
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{Packet, PubRec, Publish, Subscribe, SubscribeFilter, SubscribeReasonCode};

fn rate(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

/// A topic of `vin`'s own namespace.
fn own(vin: &str, level: &str) -> String {
    format!("/tenants/{vin}/{level}")
}

fn subscribe(pkid: u16, filters: &[&str]) -> Packet {
    Packet::Subscribe(Subscribe {
        pkid,
        filters: filters
            .iter()
            .map(|f| SubscribeFilter::new(f.to_string(), QoS::AtLeastOnce))
            .collect(),
    })
}

async fn suback(car: &mut WireCar) -> Vec<SubscribeReasonCode> {
    match car.read().await {
        Some(Packet::SubAck(ack)) => ack.return_codes,
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

fn publish(topic: &str, qos: QoS, pkid: u16, payload: &[u8], retain: bool) -> Packet {
    let mut publish = Publish::new(topic, qos, payload.to_vec());
    publish.pkid = pkid;
    publish.retain = retain;
    Packet::Publish(publish)
}

/// A gateway allowing each car `per_second` packets a second, in bursts of as many, and
/// disconnecting a car that stays over that rate for `flooding_for`.
async fn a_gateway_allowing_packets(per_second: u32, flooding_for: Duration) -> Platform {
    Platform::start_with(|c| {
        c.mqtt.max_packets_per_second = rate(per_second);
        c.mqtt.packet_burst = rate(per_second);
        c.mqtt.flood_disconnect_after = flooding_for;
    })
    .await
}

/// A gateway answering each car's requests at `per_second`, in bursts of `burst`.
async fn a_gateway_allowing_requests(per_second: u32, burst: u32) -> Platform {
    Platform::start_with(|c| {
        c.requests.max_per_second_per_car = rate(per_second);
        c.requests.burst_per_car = rate(burst);
    })
    .await
}

/// A gateway accepting `per_minute` connections of each car, in bursts of `burst`.
async fn a_gateway_allowing_connects(per_minute: u32, burst: u32) -> Platform {
    Platform::start_with(|c| {
        c.mqtt.max_connects_per_minute = rate(per_minute);
        c.mqtt.connect_burst = rate(burst);
    })
    .await
}

#[tokio::test]
async fn a_car_holds_at_most_its_maximum_of_subscriptions() {
    let platform = Platform::start_with(|c| c.mqtt.max_subscriptions = 2).await;
    let mut car = WireCar::connect(&platform, VIN_A).await;
    let (a, b, c) = (own(VIN_A, "a"), own(VIN_A, "b"), own(VIN_A, "c"));
    car.send(&subscribe(1, &[&a, &b, &c])).await;
    assert_eq!(
        suback(&mut car).await,
        vec![
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::Failure,
        ],
        "the third filter is one too many"
    );
    // A filter it holds may be subscribed again; one more may not, until one goes.
    car.send(&subscribe(2, &[&a, &c])).await;
    assert_eq!(
        suback(&mut car).await,
        vec![
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::Failure
        ]
    );
    car.send(&Packet::Unsubscribe(rumqttc::mqttbytes::v4::Unsubscribe {
        pkid: 9,
        topics: vec![b],
    }))
    .await;
    assert!(matches!(car.read().await, Some(Packet::UnsubAck(_))));
    car.send(&subscribe(3, &[&c])).await;
    assert_eq!(
        suback(&mut car).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
}

#[tokio::test]
async fn a_topic_over_the_maximum_length_is_refused() {
    let platform = Platform::start_with(|c| c.mqtt.max_topic_bytes = 64).await;
    let mut events = platform.connection_events();
    let long = own(VIN_A, &"x".repeat(64));
    let mut car = WireCar::connect(&platform, VIN_A).await;
    car.send(&subscribe(1, &[&long])).await;
    assert_eq!(suback(&mut car).await, vec![SubscribeReasonCode::Failure]);
    car.send(&publish(&long, QoS::AtMostOnce, 0, b"x", false)).await;
    assert_eq!(car.read_until_closed().await.len(), 0);
    disconnected_over_a_limit(&mut events, VIN_A, "at most 64").await;
}

#[tokio::test]
async fn a_nul_in_a_topic_is_refused() {
    let platform = Platform::start().await;
    let mut events = platform.connection_events();
    let mut car = WireCar::connect(&platform, VIN_A).await;
    let with_nul = own(VIN_A, "a\0b");
    car.send(&subscribe(1, &[&with_nul])).await;
    assert_eq!(suback(&mut car).await, vec![SubscribeReasonCode::Failure]);
    car.send(&publish(&with_nul, QoS::AtMostOnce, 0, b"x", false)).await;
    car.read_until_closed().await;
    disconnected_for_protocol_error(&mut events, VIN_A, "NUL").await;
}

#[tokio::test]
async fn a_connect_with_its_reserved_flag_set_is_refused_without_a_connack() {
    let platform = Platform::start().await;
    let mut car = WireCar::open(&platform, VIN_A).await;
    // CONNECT, MQTT 3.1.1, flags = clean session | reserved, keep-alive 60, client id = VIN.
    let mut connect = vec![0x10, 0, 0, 4, b'M', b'Q', b'T', b'T', 4, 0b11, 0, 60, 0, 17];
    connect.extend_from_slice(VIN_A.as_bytes());
    connect[1] = (connect.len() - 2) as u8;
    car.send_raw(&connect).await;
    assert_eq!(car.read_until_closed().await, vec![], "closed, with no CONNACK");
    // The same CONNECT without the reserved flag is welcome.
    let mut car = WireCar::open(&platform, VIN_A).await;
    connect[9] = 0b10;
    car.send_raw(&connect).await;
    assert!(matches!(car.read().await, Some(Packet::ConnAck(_))));
}

#[tokio::test]
async fn qos2_messages_beyond_the_maximum_awaiting_release_disconnect_the_car() {
    let platform = Platform::start_with(|c| c.mqtt.max_qos2_awaiting_release = 3).await;
    let mut events = platform.connection_events();
    let mut car = WireCar::connect(&platform, VIN_A).await;
    let topic = own(VIN_A, "telemetry");
    for pkid in 1..=3 {
        car.send(&publish(&topic, QoS::ExactlyOnce, pkid, b"x", false)).await;
        assert_eq!(car.read().await, Some(Packet::PubRec(PubRec::new(pkid))));
    }
    // Never a PUBREL: the fourth is one too many.
    car.send(&publish(&topic, QoS::ExactlyOnce, 4, b"x", false)).await;
    assert_eq!(car.read_until_closed().await, vec![]);
    disconnected_over_a_limit(&mut events, VIN_A, "PUBREL").await;
}

#[tokio::test]
async fn retained_messages_are_capped_per_car_and_come_back_to_its_next_subscription() {
    let platform = Platform::start_with(|c| {
        c.mqtt.max_retained_messages = 2;
        c.mqtt.max_retained_bytes = 1024;
    })
    .await;
    let mut events = platform.connection_events();
    let mut car = WireCar::connect(&platform, VIN_A).await;
    for (pkid, level) in [(1, "status"), (2, "odometer")] {
        car.send(&publish(
            &own(VIN_A, level),
            QoS::AtLeastOnce,
            pkid,
            level.as_bytes(),
            true,
        ))
        .await;
        assert!(matches!(car.read().await, Some(Packet::PubAck(_))));
    }
    // A new value for a kept topic replaces it at no cost; a third topic is one too many.
    car.send(&publish(&own(VIN_A, "status"), QoS::AtLeastOnce, 3, b"parked", true))
        .await;
    assert!(matches!(car.read().await, Some(Packet::PubAck(_))));
    car.send(&publish(&own(VIN_A, "fuel"), QoS::AtLeastOnce, 4, b"80%", true))
        .await;
    car.read_until_closed().await;
    disconnected_over_a_limit(&mut events, VIN_A, "at most 2 topics").await;

    // Too many bytes is refused the same way.
    let mut car = WireCar::connect(&platform, VIN_A).await;
    car.send(&publish(
        &own(VIN_A, "odometer"),
        QoS::AtLeastOnce,
        1,
        &[b'x'; 2048],
        true,
    ))
    .await;
    car.read_until_closed().await;
    disconnected_over_a_limit(&mut events, VIN_A, "at most 1024 bytes").await;

    // What was kept is delivered, retained, to a new subscription.
    let mut car = WireCar::connect(&platform, VIN_A).await;
    car.send(&subscribe(1, &[&own(VIN_A, "#")])).await;
    suback(&mut car).await;
    let mut kept = Vec::new();
    for _ in 0..2 {
        match car.read().await {
            Some(Packet::Publish(p)) => {
                assert!(p.retain);
                kept.push((p.topic, p.payload));
            }
            other => panic!("expected a retained message, got {other:?}"),
        }
    }
    kept.sort();
    assert_eq!(
        kept,
        vec![
            (own(VIN_A, "odometer"), bytes::Bytes::from_static(b"odometer")),
            (own(VIN_A, "status"), bytes::Bytes::from_static(b"parked")),
        ]
    );
}

#[tokio::test]
async fn a_car_that_stops_acknowledging_is_disconnected_before_its_queue_exceeds_its_bytes() {
    let platform = Platform::start_with(|c| {
        c.mqtt.max_queued_bytes = 64 * 1024;
        c.requests.max_response_bytes = 64 * 1024;
        // Only the byte bound can cut it off.
        c.mqtt.max_queued_messages = 1_000_000;
    })
    .await;
    let mut events = platform.connection_events();
    let mut car = WireCar::connect(&platform, VIN_A).await;
    let topic = own(VIN_A, "camera");
    car.send(&subscribe(1, &[&topic])).await;
    suback(&mut car).await;
    // The car publishes to its own subscription and never acknowledges what comes back:
    // 100 messages fill its window of unacknowledged messages, the next wait in its queue.
    let image = vec![0u8; 8 * 1024];
    let mut pkid = 1;
    within(
        Duration::from_secs(20),
        async {
            loop {
                pkid += 1;
                if car
                    .try_send(&publish(&topic, QoS::AtLeastOnce, pkid, &image, false))
                    .await
                    .is_err()
                {
                    return;
                }
                // Keep reading (but never acknowledging), so TCP does not stop the car first.
                if tokio::time::timeout(Duration::from_millis(1), car.read()).await == Ok(None) {
                    return;
                }
            }
        },
        "the car is cut off",
    )
    .await;
    assert_eq!(disconnected(&mut events, VIN_A).await, DisconnectReason::SlowConsumer);
}

/// A gateway whose only bound on a car that reads nothing is the write stall timeout: queues
/// and packet rates far beyond what the tests send.
async fn a_gateway_bounding_only_stalled_writes(stall: Duration) -> Platform {
    Platform::start_with(move |c| {
        c.mqtt.write_stall_timeout = stall;
        c.mqtt.max_queued_bytes = 1 << 30;
        c.mqtt.max_queued_messages = 1_000_000;
        c.mqtt.max_packets_per_second = rate(1_000_000);
        c.mqtt.packet_burst = rate(1_000_000);
    })
    .await
}

/// The car subscribes to a topic of its own, then publishes to it and never reads what comes
/// back, until its own writes stop going through: the gateway, stuck writing to it, has
/// stopped reading (a write the kernel cannot take within a second), or has cut it off (a
/// write fails). Returns the car (its stream maybe cut mid-packet: only good for holding) and
/// whether its writes were still open (stalled, not cut off).
async fn stop_reading_until_the_gateway_stalls(mut car: WireCar) -> (WireCar, bool) {
    let topic = own(VIN_A, "camera");
    car.send(&subscribe(1, &[&topic])).await;
    suback(&mut car).await;
    let image = vec![0u8; 32 * 1024];
    let stalled = within(
        Duration::from_secs(60),
        async {
            loop {
                let sent = tokio::time::timeout(
                    Duration::from_secs(1),
                    car.try_send(&publish(&topic, QoS::AtMostOnce, 0, &image, false)),
                )
                .await;
                match sent {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return false,
                    Err(_) => return true,
                }
            }
        },
        "the car's writes stop going through",
    )
    .await;
    (car, stalled)
}

#[tokio::test]
async fn a_car_that_takes_no_bytes_is_disconnected_after_the_write_stall_timeout() {
    let platform = a_gateway_bounding_only_stalled_writes(Duration::from_secs(1)).await;
    let mut events = platform.connection_events();
    let mut car = WireCar::connect(&platform, VIN_A).await;
    let topic = own(VIN_A, "camera");
    car.send(&subscribe(1, &[&topic])).await;
    suback(&mut car).await;
    // It publishes to its own subscription for as long as the gateway lets it, reading nothing.
    let flood = tokio::spawn(async move {
        let image = vec![0u8; 32 * 1024];
        while car
            .try_send(&publish(&topic, QoS::AtMostOnce, 0, &image, false))
            .await
            .is_ok()
        {}
    });
    assert_eq!(disconnected(&mut events, VIN_A).await, DisconnectReason::SlowConsumer);
    flood.abort();
}

#[tokio::test]
async fn a_car_that_takes_no_bytes_does_not_hold_the_gateways_stop() {
    // The stall timeout (30 s by default) is longer than the test waits for the stop.
    let platform = a_gateway_bounding_only_stalled_writes(Duration::from_secs(600)).await;
    let car = WireCar::connect(&platform, VIN_A).await;
    let (_car, stalled) = stop_reading_until_the_gateway_stalls(car).await;
    assert!(stalled, "the gateway cut the car off instead of stalling on it");
    within(
        SOON,
        platform.restart_gateway(async {}),
        "the gateway's stop with a car stalled",
    )
    .await;
}

#[tokio::test]
async fn a_car_over_its_publish_rate_is_slowed_down_then_disconnected_for_flooding() {
    let platform = a_gateway_allowing_packets(20, Duration::from_millis(500)).await;
    let mut events = platform.connection_events();
    let mut car = WireCar::connect(&platform, VIN_A).await;
    // A burst within the burst allowance costs nothing.
    for pkid in 1..=20 {
        car.send(&publish(&own(VIN_A, "telemetry"), QoS::AtLeastOnce, pkid, b"x", false))
            .await;
        assert!(matches!(car.read().await, Some(Packet::PubAck(_))));
    }
    // Then it keeps going, as fast as it can.
    let flood = tokio::spawn(async move {
        let topic = own(VIN_A, "telemetry");
        loop {
            if car
                .try_send(&publish(&topic, QoS::AtMostOnce, 0, b"x", false))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let reason = disconnected(&mut events, VIN_A).await;
    flood.abort();
    assert_eq!(
        reason,
        DisconnectReason::Flooding {
            per_second: 20,
            for_: Duration::from_millis(500)
        }
    );
}

#[tokio::test]
async fn requests_over_the_cars_rate_are_refused_with_resource_exhausted() {
    let platform = a_gateway_allowing_requests(1, 2).await;
    let mut car = RawCar::connect(&platform, VIN_A).await;
    for i in 0..5 {
        car.publish_request(envelope(&format!("r{i}"), LIST, nearby_lots()))
            .await;
    }
    let mut codes = Vec::new();
    for _ in 0..5 {
        let answer = car.next_response().await;
        codes.push((answer.request_id.clone(), status_code(&answer)));
    }
    codes.sort();
    let refused = codes.iter().filter(|(_, c)| *c == Code::ResourceExhausted).count();
    let answered = codes.iter().filter(|(_, c)| *c == Code::Ok).count();
    assert_eq!((answered, refused), (2, 3), "{codes:?}");
    // Another car is not affected.
    let mut other = RawCar::connect(&platform, VIN_B).await;
    assert_eq!(outcome(&other.ask_for_lots("b").await), ("b", Code::Ok));
}

#[tokio::test]
async fn what_an_absent_car_kept_expires_after_the_session_expiry() {
    let platform = Platform::start_with(|c| c.mqtt.session_expiry = Duration::from_millis(200)).await;
    let mut events = platform.connection_events();
    let persistent = |o: &mut rumqttc::MqttOptions| {
        o.set_clean_session(false);
    };
    let (client, mut eventloop) = platform.mqtt_client_with(VIN_A, persistent);
    connack(&mut eventloop).await.unwrap();
    client
        .subscribe(own(VIN_A, "status"), rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    client
        .publish(
            own(VIN_A, "status"),
            rumqttc::QoS::AtLeastOnce,
            true,
            b"parked".to_vec(),
        )
        .await
        .unwrap();
    next_incoming(&mut eventloop, |p| {
        matches!(p, rumqttc::Packet::PubAck(_)).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(platform.gateway.saved_sessions().retained, 1);
    drop((client, eventloop));
    disconnected(&mut events, VIN_A).await;
    assert_eq!(platform.gateway.mailboxes().1, 1, "its mailbox is parked for it");

    eventually("the saved session expires", || {
        platform.gateway.saved_sessions() == gateway::broker::SavedStats::default()
    })
    .await;
    assert_eq!(
        platform.gateway.mailboxes(),
        (0, 0, 0),
        "and its parked mailbox with it"
    );
    let (_client, mut eventloop) = platform.mqtt_client_with(VIN_A, persistent);
    assert!(!connack(&mut eventloop).await.unwrap().session_present);
}

#[tokio::test]
async fn on_shutdown_the_gateway_closes_connections_without_sending_disconnect() {
    let platform = Platform::start().await;
    let mut car = WireCar::connect(&platform, VIN_A).await;
    let Platform { gateway, .. } = platform;
    let shutdown = tokio::spawn(gateway.shutdown());
    // A 3.1.1 server never sends DISCONNECT: the connection just closes.
    assert_eq!(car.read_until_closed().await, vec![]);
    shutdown.await.unwrap();
}

#[tokio::test]
async fn a_car_reconnecting_faster_than_its_connect_rate_gets_connack_3_and_no_log_row() {
    let platform = a_gateway_allowing_connects(1, 2).await;
    for _ in 0..2 {
        let mut car = WireCar::connect(&platform, VIN_A).await;
        car.send(&Packet::Disconnect).await;
        car.read_until_closed().await;
    }
    let mut car = WireCar::open(&platform, VIN_A).await;
    car.send(&Packet::Connect(rumqttc::mqttbytes::v4::Connect::new(VIN_A)))
        .await;
    match car.read().await {
        Some(Packet::ConnAck(ack)) => {
            assert_eq!(ack.code, rumqttc::mqttbytes::v4::ConnectReturnCode::ServiceUnavailable)
        }
        other => panic!("expected CONNACK 3, got {other:?}"),
    }
    // The refused one is not in the connection log: only the two accepted ones are.
    let vin = proto::Vin::parse(VIN_A).unwrap();
    until_answered("both accepted connections are logged, closed", || async {
        let logged = platform.gateway.store().connections_of(&vin, 10).await.unwrap();
        assert!(logged.len() <= 2, "{logged:?}");
        (logged.len() == 2 && logged.iter().all(|c| c.disconnected_at_ms.is_some())).then_some(())
    })
    .await;
    // Another car is not affected.
    WireCar::connect(&platform, VIN_B).await;
}

#[tokio::test]
async fn subscribe_and_unsubscribe_count_toward_the_packet_rate() {
    let platform = a_gateway_allowing_packets(10, Duration::from_millis(300)).await;
    let mut events = platform.connection_events();
    let car = WireCar::connect(&platform, VIN_A).await;
    let flood = tokio::spawn(async move {
        let mut car = car;
        let filter = own(VIN_A, "refused/#/filter");
        for pkid in 1.. {
            if car.try_send(&subscribe(pkid, &[&filter])).await.is_err() {
                return;
            }
        }
    });
    assert!(matches!(
        disconnected(&mut events, VIN_A).await,
        DisconnectReason::Flooding { per_second: 10, .. }
    ));
    flood.abort();
}

#[tokio::test]
async fn packet_identifier_zero_is_refused() {
    let platform = Platform::start().await;
    let topic = own(VIN_A, "a");
    // Written by hand: an encoder refuses packet identifier 0, as MQTT 3.1.1 §2.3.1 does.
    let with_topic = |first: u8, rest: &[u8]| {
        let mut packet = vec![first, 0, 0, 0, 0, topic.len() as u8];
        packet.extend_from_slice(topic.as_bytes());
        packet.extend_from_slice(rest);
        packet[1] = (packet.len() - 2) as u8;
        packet
    };
    // SUBSCRIBE: packet id 0, one filter at QoS 1.
    let mut car = WireCar::connect(&platform, VIN_A).await;
    car.send_raw(&with_topic(0x82, &[1])).await;
    assert_eq!(car.read_until_closed().await, vec![], "closed, no SUBACK");
    // PUBLISH QoS 1: topic, then packet id 0, then the payload.
    let mut publish = vec![0x32, 0, 0, topic.len() as u8];
    publish.extend_from_slice(topic.as_bytes());
    publish.extend_from_slice(&[0, 0, b'x']);
    publish[1] = (publish.len() - 2) as u8;
    let mut car = WireCar::connect(&platform, VIN_A).await;
    car.send_raw(&publish).await;
    assert_eq!(car.read_until_closed().await, vec![], "closed, no PUBACK");
}
