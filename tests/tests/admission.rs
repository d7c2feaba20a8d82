//! Admission: a socket that has not sent its whole ClientHello holds nothing scarce, so
//! sockets that connect and wait (or send half a ClientHello) cannot stop cars from
//! connecting; a complete ClientHello takes a handshake slot, and beyond the handshake
//! capacity new handshakes are shed before any crypto.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use integration_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Where the attacker's sockets come from: another loopback address than the cars'.
const ATTACKER: &str = "127.0.0.2";

/// A socket from `source` to `addr` that sends `first_bytes` and then nothing.
async fn silent_socket(source: &str, addr: SocketAddr, first_bytes: &[u8]) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse().unwrap())?;
    let mut stream = socket.connect(addr).await?;
    stream.write_all(first_bytes).await?;
    Ok(stream)
}

/// The first 6 bytes of a TLS ClientHello record: a record header and the start of a handshake.
const HALF_CLIENT_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01];

/// A car connecting with a full handshake (a fresh TLS config: no session to resume).
async fn a_car_connects(platform: &Platform) {
    let (_client, mut eventloop) = platform.mqtt_client(&platform.pki.vehicle(VIN_A), VIN_A);
    within(Duration::from_secs(10), connack(&mut eventloop), "the car's CONNACK")
        .await
        .expect("the car connects");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_silent_sockets_from_one_address_do_not_stop_a_car_from_connecting() {
    let platform = Platform::start_with(|c| {
        c.mqtt.first_flight_timeout = Duration::from_millis(300);
        // The car below connects as often as it takes, more than its connect rate allows.
        c.mqtt.max_connects_per_minute = std::num::NonZeroU32::MAX;
        c.mqtt.connect_burst = std::num::NonZeroU32::MAX;
    })
    .await;
    let addr = platform.mqtt_addr();
    // 400 sockets, half of them idle and half with 6 bytes of a ClientHello, each re-opened as
    // soon as the gateway drops it, as an attacker would.
    let attack = tokio::spawn(async move {
        let mut sockets = tokio::task::JoinSet::new();
        for i in 0..400 {
            let first = if i % 2 == 0 { &[][..] } else { HALF_CLIENT_HELLO };
            sockets.spawn(async move {
                loop {
                    let Ok(mut socket) = silent_socket(ATTACKER, addr, first).await else {
                        continue;
                    };
                    let mut byte = [0u8; 1];
                    // Held until the gateway drops it.
                    let _ = socket.read(&mut byte).await;
                }
            });
        }
        sockets.join_all().await
    });
    let stats = platform.gateway.listener_stats();
    // A car connects, again and again, while the attacker's sockets time out and come back.
    let mut connects = 0;
    while connects < 5 || stats.first_flight_timeouts.load(Ordering::Relaxed) < 128 {
        a_car_connects(&platform).await;
        connects += 1;
        assert!(connects < 500, "the attacker's sockets never timed out");
    }
    attack.abort();
    assert!(stats.completed_handshakes.load(Ordering::Relaxed) >= 5);
    assert!(
        stats.shed_per_source.load(Ordering::Relaxed) > 0,
        "the attacker's address went over its quota"
    );
}

#[tokio::test]
async fn a_socket_that_never_finishes_its_client_hello_is_dropped_after_the_first_flight_timeout() {
    let platform = Platform::start_with(|c| {
        c.mqtt.first_flight_timeout = Duration::from_millis(200);
        c.mqtt.max_handshakes_in_flight = 1;
    })
    .await;
    let mut half = silent_socket("127.0.0.1", platform.mqtt_addr(), HALF_CLIENT_HELLO)
        .await
        .unwrap();
    // While it waits, it holds no handshake slot: the one slot there is serves a car.
    a_car_connects(&platform).await;
    let mut rest = Vec::new();
    let closed = within(
        Duration::from_secs(10),
        half.read_to_end(&mut rest),
        "the gateway closes it",
    )
    .await;
    assert!(matches!(closed, Ok(0) | Err(_)), "nothing is sent to it: {closed:?}");
    let stats = platform.gateway.listener_stats();
    assert_eq!(stats.first_flight_timeouts.load(Ordering::Relaxed), 1);
    assert_eq!(stats.shed_handshakes.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn beyond_handshake_capacity_complete_client_hellos_are_shed_before_any_crypto() {
    let platform = Platform::start_with(|c| {
        c.mqtt.max_handshakes_in_flight = 1;
        c.mqtt.handshake_timeout = Duration::from_secs(20);
    })
    .await;
    // A whole ClientHello, then silence: it takes the only handshake slot.
    let creds = platform.pki.vehicle(VIN_B);
    let hello = client_hello(client_tls(&platform.pki.ca_cert, &creds));
    let stalled = silent_socket("127.0.0.1", platform.mqtt_addr(), &hello).await.unwrap();
    let stats = platform.gateway.listener_stats();
    within(
        Duration::from_secs(10),
        async {
            // Its ServerHello on the wire means the handshake took the slot.
            let mut byte = [0u8; 1];
            stalled.peek(&mut byte).await.unwrap();
        },
        "the gateway answers the ClientHello",
    )
    .await;

    let (_client, mut eventloop) = platform.mqtt_client(&platform.pki.vehicle(VIN_A), VIN_A);
    let err = connack(&mut eventloop).await.expect_err("shed while the slot is taken");
    assert!(
        !format!("{err:?}").contains("CertificateExpired"),
        "shed, not refused: {err:?}"
    );
    assert_eq!(stats.shed_handshakes.load(Ordering::Relaxed), 1);
    assert_eq!(stats.completed_handshakes.load(Ordering::Relaxed), 0);

    // Capacity frees up; an agent retrying with backoff gets in.
    drop(stalled);
    let car = platform.agent(VIN_A).await;
    assert!(stats.completed_handshakes.load(Ordering::Relaxed) >= 1);
    car.shutdown().await;
}

/// The bytes of a ClientHello that `config` would send to the gateway.
fn client_hello(config: Arc<rustls::ClientConfig>) -> Vec<u8> {
    let mut tls = rustls::ClientConnection::new(config, "localhost".try_into().unwrap()).unwrap();
    let mut hello = Vec::new();
    tls.write_tls(&mut hello).unwrap();
    hello
}
