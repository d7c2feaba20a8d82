//! Cars: vehicle agents ([`Platform::agent`]) and the in-car apps that call them, stock MQTT
//! 3.1.1 clients that play a car by hand ([`RawCar`]), and a car speaking MQTT byte by byte
//! for what a stock client will not send ([`WireCar`]). All over mTLS with their own
//! certificates.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::BytesMut;
use prost::Message;
use proto::Vin;
use proto::parking::v1::parking_payment_client::ParkingPaymentClient;
use proto::parking::v1::{EndSessionRequest, EndSessionResponse, GetReceiptRequest, ParkingSession, Receipt};
use proto::vehicle::v1::{Code, Event, EventAck, Response};
use rumqttc::mqttbytes::v4::Packet as WirePacket;
use rumqttc::{AsyncClient, EventLoop, MqttOptions, Packet, QoS, SubscribeReasonCode, TlsConfiguration, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;
use vehicle_agent::{Agent, AgentConfig};

use crate::partner::{BUND_LOT, PARKING, parking_at, parking_at_the_bund};
use crate::pki::{Credentials, client_tls};
use crate::platform::Platform;
use crate::wait::{SOON, connack, next_incoming, within};
use crate::wire::{keyed_envelope, response_of, status_code};

/// The car most tests drive.
pub const VIN_A: &str = "LSVAU2180N2183294";
/// A second car, for isolation tests.
pub const VIN_B: &str = "WBA3B5C50DF123456";

impl Platform {
    /// Agent configuration for `vin` dialling this gateway (local gRPC on port 0, a state
    /// directory of its own, quick reconnects).
    pub fn agent_config(&self, vin: &str) -> AgentConfig {
        let me = self.pki.vehicle(vin);
        let mut config = AgentConfig::new(
            format!("localhost:{}", self.mqtt_addr().port()),
            self.pki.ca_cert.clone(),
            me.cert,
            me.key,
        );
        config.local_listen = "127.0.0.1:0".parse().unwrap();
        config.state_dir = self.pki.path(&format!("agent-{vin}-{}", crate::unique_name()));
        config.backoff_initial = Duration::from_millis(50);
        config.backoff_max = Duration::from_millis(500);
        config
    }

    /// A started agent for `vin`, connected to the gateway.
    pub async fn agent(&self, vin: &str) -> Agent {
        connected_agent(self.agent_config(vin)).await
    }

    /// A started agent for `vin` forwarding the parking service and `services`, connected.
    pub async fn agent_forwarding(&self, vin: &str, services: &[&str]) -> Agent {
        let mut config = self.agent_config(vin);
        config.services = [PARKING].iter().chain(services).map(|s| (*s).to_owned()).collect();
        connected_agent(config).await
    }

    /// A stock MQTT client presenting `creds`, with client id `client_id`.
    pub fn mqtt_client(&self, creds: &Credentials, client_id: &str) -> (AsyncClient, EventLoop) {
        mqtt_client(self.mqtt_addr(), &self.pki.ca_cert, creds, client_id)
    }

    /// A stock MQTT client for `vin` (its own certificate and client id) with `tweak` applied
    /// to its options.
    pub fn mqtt_client_with(&self, vin: &str, tweak: impl FnOnce(&mut MqttOptions)) -> (AsyncClient, EventLoop) {
        let mut options = mqtt_options(self.mqtt_addr(), &self.pki.ca_cert, &self.pki.vehicle(vin), vin);
        tweak(&mut options);
        AsyncClient::new(options, 100)
    }
}

impl Platform {
    /// A connected agent for `vin`, and an in-car app on it.
    pub async fn car_and_app(&self, vin: &str) -> (Agent, ParkingPaymentClient<Channel>) {
        let car = self.agent(vin).await;
        let app = in_car_app(&car).await;
        (car, app)
    }
}

/// An agent started with `config`, once connected.
pub async fn connected_agent(config: AgentConfig) -> Agent {
    let agent = Agent::start(config).await.expect("the agent starts");
    within(SOON, agent.wait_connected(), "the agent connects").await;
    agent
}

/// A generated parking client talking to an agent's local gRPC endpoint, as an in-car app would.
pub async fn in_car_app(agent: &Agent) -> ParkingPaymentClient<Channel> {
    ParkingPaymentClient::connect(format!("http://{}", agent.local_addr()))
        .await
        .expect("connect to agent")
}

/// Starts [`parking_at_the_bund`] from an in-car app and returns the session the partner opened.
pub async fn park_from_the_app(app: &mut ParkingPaymentClient<Channel>) -> ParkingSession {
    park_from_the_app_at(app, BUND_LOT).await
}

/// [`park_from_the_app`] in the lot `lot_id` ([`parking_at`]).
pub async fn park_from_the_app_at(app: &mut ParkingPaymentClient<Channel>, lot_id: &str) -> ParkingSession {
    app.start_session(parking_at(lot_id))
        .await
        .expect("the parking session starts")
        .into_inner()
        .session
        .expect("a started session")
}

/// Ends session `session_id` from an in-car app, which pays for it, and returns the answer.
pub async fn pay_from_the_app(app: &mut ParkingPaymentClient<Channel>, session_id: &str) -> EndSessionResponse {
    let pay = EndSessionRequest {
        session_id: session_id.into(),
    };
    app.end_session(pay).await.expect("the session ends").into_inner()
}

/// The receipt `receipt_id` as an in-car app asks for it again.
pub async fn receipt_from_the_app(app: &mut ParkingPaymentClient<Channel>, receipt_id: &str) -> Receipt {
    let request = GetReceiptRequest {
        receipt_id: receipt_id.into(),
    };
    app.get_receipt(request)
        .await
        .expect("the receipt is kept")
        .into_inner()
}

/// A stock MQTT 3.1.1 client over mTLS, for tests that play a misbehaving car.
pub fn mqtt_client(addr: SocketAddr, ca: &Path, creds: &Credentials, client_id: &str) -> (AsyncClient, EventLoop) {
    AsyncClient::new(mqtt_options(addr, ca, creds, client_id), 100)
}

/// The options of [`mqtt_client`] (clean session, 30 s keep-alive), for tests that change some.
pub fn mqtt_options(addr: SocketAddr, ca: &Path, creds: &Credentials, client_id: &str) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, "localhost", addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(1024 * 1024, 1024 * 1024);
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(client_tls(
        ca, creds,
    ))));
    options
}

/// Subscribes a stock client to `filter` and returns what the SUBACK granted.
pub async fn subscribe(client: &AsyncClient, eventloop: &mut EventLoop, filter: &str) -> Vec<SubscribeReasonCode> {
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    suback(eventloop).await
}

/// The return codes of the next SUBACK.
pub async fn suback(eventloop: &mut EventLoop) -> Vec<SubscribeReasonCode> {
    next_incoming(eventloop, |p| match p {
        Packet::SubAck(ack) => Some(ack.return_codes.clone()),
        _ => None,
    })
    .await
    .expect("a SUBACK")
}

/// Asks for [`crate::nearby_lots`] as `request_id` from a stock client playing `vin`, and
/// returns the next response it gets.
pub async fn ask_for_lots(client: &AsyncClient, eventloop: &mut EventLoop, vin: &Vin, request_id: &str) -> Response {
    let request = crate::wire::envelope(request_id, crate::partner::LIST, crate::partner::nearby_lots());
    client
        .publish(proto::topics::requests(vin), QoS::AtLeastOnce, false, request)
        .await
        .unwrap();
    next_incoming(eventloop, response_of).await.expect("a response")
}

/// A car played by a stock client: connected as itself, subscribed to its own responses,
/// ready to publish envelopes.
pub struct RawCar {
    /// The VIN.
    pub vin: Vin,
    /// The client.
    pub client: AsyncClient,
    /// Its event loop; poll it to make progress.
    pub eventloop: EventLoop,
}

impl RawCar {
    /// Connects as `vin` with its own certificate and subscribes to its responses.
    pub async fn connect(platform: &Platform, vin: &str) -> RawCar {
        let creds = platform.pki.vehicle(vin);
        let (client, mut eventloop) = platform.mqtt_client(&creds, vin);
        connack(&mut eventloop).await.expect("the raw car connects");
        let vin = Vin::parse(vin).unwrap();
        let granted = subscribe(&client, &mut eventloop, &proto::topics::responses(&vin)).await;
        assert_eq!(granted, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
        RawCar { vin, client, eventloop }
    }

    /// Subscribes to `filter` and returns what the SUBACK granted.
    pub async fn subscribe(&mut self, filter: &str) -> Vec<SubscribeReasonCode> {
        subscribe(&self.client, &mut self.eventloop, filter).await
    }

    /// Publishes `bytes` at QoS 1 on `topic`, which may be anyone's.
    pub async fn publish(&mut self, topic: String, bytes: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, bytes)
            .await
            .unwrap();
    }

    /// Publishes raw bytes on this car's request topic.
    pub async fn publish_request(&mut self, bytes: Vec<u8>) {
        self.publish(proto::topics::requests(&self.vin), bytes).await;
    }

    /// Publishes `request` (an envelope) and returns the next response.
    pub async fn ask(&mut self, request: Vec<u8>) -> Response {
        self.publish_request(request).await;
        self.next_response().await
    }

    /// Asks for [`crate::nearby_lots`] as `request_id` and returns the next response.
    pub async fn ask_for_lots(&mut self, request_id: &str) -> Response {
        ask_for_lots(&self.client, &mut self.eventloop, &self.vin, request_id).await
    }

    /// The next response envelope delivered to this car.
    pub async fn next_response(&mut self) -> Response {
        next_incoming(&mut self.eventloop, response_of).await.expect("response")
    }

    /// The next PUBACK: the gateway has taken what was published.
    pub async fn puback(&mut self) {
        next_incoming(&mut self.eventloop, |p| matches!(p, Packet::PubAck(_)).then_some(()))
            .await
            .expect("a PUBACK")
    }

    /// Subscribes to this car's events.
    pub async fn subscribe_events(&mut self) {
        let granted = self.subscribe(&proto::topics::events(&self.vin)).await;
        assert_eq!(granted, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
    }

    /// The next event delivered to this car.
    pub async fn next_event(&mut self) -> Event {
        next_incoming(&mut self.eventloop, |p| match p {
            Packet::Publish(p) if p.topic.ends_with("/v1/events") => Event::decode(p.payload.clone()).ok(),
            _ => None,
        })
        .await
        .expect("an event")
    }

    /// Acknowledges events up to `sequence`, once the gateway has taken the acknowledgement.
    pub async fn ack_events(&mut self, sequence: u64) {
        let ack = EventAck { sequence }.encode_to_vec();
        self.publish(proto::topics::event_acks(&self.vin), ack).await;
        self.puback().await;
    }

    /// Starts [`parking_at_the_bund`] over raw MQTT (idempotency key `start-key`) and returns
    /// the session id.
    pub async fn park(&mut self) -> String {
        let start = "/parking.v1.ParkingPayment/StartSession";
        let payload = parking_at_the_bund().encode_to_vec();
        self.publish_request(keyed_envelope("start-1", "start-key", start, payload))
            .await;
        let r = self.next_response().await;
        assert_eq!(status_code(&r), Code::Ok, "{r:?}");
        proto::parking::v1::StartSessionResponse::decode(r.payload.as_slice())
            .expect("a StartSessionResponse")
            .session
            .expect("a started session")
            .session_id
    }
}

/// A car speaking MQTT byte by byte over mTLS, for what a stock client will not send: reserved
/// flags, QoS 2 without PUBREL, raw bytes after CONNECT.
pub struct WireCar {
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    read: BytesMut,
}

impl WireCar {
    /// A TLS connection as `vin` (its own certificate), nothing sent yet.
    pub async fn open(platform: &Platform, vin: &str) -> WireCar {
        let config = client_tls(&platform.pki.ca_cert, &platform.pki.vehicle(vin));
        WireCar::open_with(platform, config).await
    }

    /// A TLS connection with `config`: keep one config to resume its TLS session next time.
    pub async fn open_with(platform: &Platform, config: std::sync::Arc<rustls::ClientConfig>) -> WireCar {
        let tcp = tokio::net::TcpStream::connect(platform.mqtt_addr()).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .expect("TLS handshake");
        WireCar {
            tls,
            read: BytesMut::new(),
        }
    }

    /// A TLS connection as `vin` that sent CONNECT (client id = VIN, clean session) and got
    /// its CONNACK.
    pub async fn connect(platform: &Platform, vin: &str) -> WireCar {
        let mut car = WireCar::open(platform, vin).await;
        let connect = rumqttc::mqttbytes::v4::Connect::new(vin);
        car.send(&WirePacket::Connect(connect)).await;
        match car.read().await {
            Some(WirePacket::ConnAck(ack)) => {
                assert_eq!(ack.code, rumqttc::mqttbytes::v4::ConnectReturnCode::Success)
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
        car
    }

    /// Whether this connection's TLS handshake resumed an earlier session.
    pub fn resumed(&self) -> bool {
        self.tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    /// Sends CONNECT as `vin` (clean session) and returns the CONNACK's code, if one came.
    pub async fn connect_as(&mut self, vin: &str) -> Option<rumqttc::mqttbytes::v4::ConnectReturnCode> {
        self.send(&WirePacket::Connect(rumqttc::mqttbytes::v4::Connect::new(vin)))
            .await;
        match self.read().await {
            Some(WirePacket::ConnAck(ack)) => Some(ack.code),
            _ => None,
        }
    }

    /// Sends `packet`.
    pub async fn send(&mut self, packet: &WirePacket) {
        self.try_send(packet).await.expect("write to the gateway");
    }

    /// Sends `packet`, if the gateway still takes it.
    pub async fn try_send(&mut self, packet: &WirePacket) -> std::io::Result<()> {
        let mut bytes = BytesMut::new();
        packet.write(&mut bytes, usize::MAX).expect("encodable packet");
        self.tls.write_all(&bytes).await?;
        self.tls.flush().await
    }

    /// Sends `packets` in one write, if the gateway still takes them.
    pub async fn try_send_all(&mut self, packets: &[WirePacket]) -> std::io::Result<()> {
        let mut bytes = BytesMut::new();
        for packet in packets {
            packet.write(&mut bytes, usize::MAX).expect("encodable packet");
        }
        self.tls.write_all(&bytes).await?;
        self.tls.flush().await
    }

    /// Closes the car's sending side (TLS close_notify): the gateway sees the car go away
    /// without DISCONNECT, and can still answer what it sent.
    pub async fn close_sending(&mut self) -> std::io::Result<()> {
        self.tls.shutdown().await
    }

    /// Sends `bytes` as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.tls.write_all(bytes).await.expect("write to the gateway");
        self.tls.flush().await.expect("write to the gateway");
    }

    /// The next packet from the gateway; `None` once it closed the connection.
    pub async fn read(&mut self) -> Option<WirePacket> {
        within(
            SOON,
            async {
                loop {
                    match WirePacket::read(&mut self.read, usize::MAX) {
                        Ok(packet) => return Some(packet),
                        Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                        Err(e) => panic!("the gateway sent a malformed packet: {e}"),
                    }
                    match self.tls.read_buf(&mut self.read).await {
                        Ok(0) | Err(_) => return None,
                        Ok(_) => {}
                    }
                }
            },
            "a packet from the gateway",
        )
        .await
    }

    /// Every packet until the gateway closes the connection.
    pub async fn read_until_closed(&mut self) -> Vec<WirePacket> {
        let mut packets = Vec::new();
        while let Some(packet) = self.read().await {
            packets.push(packet);
        }
        packets
    }
}
