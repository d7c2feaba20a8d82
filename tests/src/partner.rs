//! Partners the gateway calls, each on its own mTLS listener on port 0 trusting only the
//! gateway-clients CA: the reference parking adapter, any other `ParkingPayment` standing in
//! for one (stalling, talkative, or one of [`crate::stand_in`]), the reference navigation
//! adapter, and an address where nobody answers. Also what a driver asks of them.

use std::net::SocketAddr;
use std::time::Duration;

use gateway::config::PartnerConfig;
use parking_adapter::ParkingService;
use proto::parking::v1::parking_payment_server::{ParkingPayment, ParkingPaymentServer};
use proto::parking::v1::{GeoPoint, ListNearbyLotsRequest, StartSessionRequest};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::service::Routes;

use crate::pki::TestPki;

/// The parking partner's gRPC service.
pub const PARKING: &str = "parking.v1.ParkingPayment";
/// The navigation partner's gRPC service.
pub const NAVIGATION: &str = "navigation.v1.Navigation";
/// The method most tests call: read-only, cheap.
pub const LIST: &str = "/parking.v1.ParkingPayment/ListNearbyLots";
/// The payment.
pub const END: &str = "/parking.v1.ParkingPayment/EndSession";

/// A running partner; dropping it stops it.
pub struct RunningPartner {
    /// Where it listens.
    pub addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl RunningPartner {
    /// A partner serving on `addr` until `stop` is sent or dropped.
    pub fn new(addr: SocketAddr, stop: oneshot::Sender<()>) -> RunningPartner {
        RunningPartner { addr, _stop: stop }
    }
}

/// The reference adapter's service on a fresh SQLite file in `pki`'s directory.
pub async fn parking_service(pki: &TestPki) -> ParkingService {
    let path = pki.path(&format!("parking-{}.db", crate::unique_name()));
    ParkingService::open(&path)
        .await
        .unwrap_or_else(|e| panic!("open the parking database {}: {e:#}", path.display()))
}

/// Starts the reference parking adapter on mTLS, trusting only `pki`'s gateway-clients CA.
pub async fn start_parking(pki: &TestPki, service: ParkingService) -> RunningPartner {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the adapter");
    let addr = listener.local_addr().expect("the adapter's address");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(parking_adapter::serve(
        listener,
        Some(partner_tls(pki)),
        service,
        async {
            let _ = stopped.await;
        },
    ));
    RunningPartner { addr, _stop: stop }
}

/// Starts the reference navigation adapter on `listener` (bound first, so that its address
/// can go into the gateway's configuration) over mTLS, trusting only `pki`'s gateway-clients CA.
pub fn start_navigation(pki: &TestPki, listener: std::net::TcpListener) -> RunningPartner {
    let listener = tokio_listener(listener);
    let addr = listener.local_addr().expect("the adapter's address");
    let me = pki.partner("navigation");
    let tls = navigation_adapter::mtls_config(&me.pem.cert_pem, &me.pem.key_pem, pki.gateway_clients_ca_pem());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(navigation_adapter::serve(
        listener,
        Some(tls),
        navigation_adapter::NavigationService::new(),
        async {
            let _ = stopped.await;
        },
    ));
    RunningPartner { addr, _stop: stop }
}

/// The command line of the parking adapter's binary as the partner `parking` of `pki`: its
/// state in `database`, its certificate, and only the gateway-clients CA trusted.
pub fn parking_adapter_args(pki: &TestPki, database: &std::path::Path) -> Vec<String> {
    let me = pki.partner("parking");
    let gateway_clients_ca = pki.layout.issuing_ca_cert(certs::IssuingCa::GatewayClients);
    [
        "--database",
        &database.display().to_string(),
        "--cert",
        &me.cert.display().to_string(),
        "--key",
        &me.key.display().to_string(),
        "--client-ca",
        &gateway_clients_ca.display().to_string(),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Where the tests' driver is going: Nanjing East Road, a short walk from the Bund.
pub const DESTINATION: proto::navigation::v1::GeoPoint = proto::navigation::v1::GeoPoint {
    latitude: 31.2365,
    longitude: 121.4840,
};

/// Where the tests' car is: by Jing'an Temple.
pub const CAR_POSITION: proto::navigation::v1::GeoPoint = proto::navigation::v1::GeoPoint {
    latitude: 31.2236,
    longitude: 121.4454,
};

/// The gateway's entry for the navigation adapter at `addr`: both its methods only read.
pub fn navigation_entry(pki: &TestPki, addr: SocketAddr) -> PartnerConfig {
    PartnerConfig {
        name: Some("navigation".into()),
        read_only_methods: vec!["SearchPlaces".into(), "Route".into()],
        ..partner_entry(pki, NAVIGATION, addr)
    }
}

/// Starts any `ParkingPayment` as if it were the parking adapter: its TLS, and its check that
/// every call comes from the gateway.
pub async fn start_partner(pki: &TestPki, partner: impl ParkingPayment) -> RunningPartner {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the partner");
    serve_as_partner(pki, listener, Routes::new(ParkingPaymentServer::new(partner)))
}

/// Serves `routes` on `listener` as the parking adapter would: its TLS, and its check that
/// every call comes from the gateway.
pub(crate) fn serve_as_partner(pki: &TestPki, listener: TcpListener, routes: Routes) -> RunningPartner {
    let addr = listener.local_addr().expect("the partner's address");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .tls_config(partner_tls(pki))
        .expect("partner TLS")
        .layer(tonic::service::InterceptorLayer::new(
            parking_adapter::require_gateway_client,
        ))
        .add_routes(routes);
    tokio::spawn(server.serve_with_incoming_shutdown(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        async {
            let _ = stopped.await;
        },
    ));
    RunningPartner { addr, _stop: stop }
}

/// `listener`, bound beforehand so that its address could go into a configuration, for tokio.
pub(crate) fn tokio_listener(listener: std::net::TcpListener) -> TcpListener {
    listener.set_nonblocking(true).expect("non-blocking listener");
    TcpListener::from_std(listener).expect("a tokio listener")
}

/// The TLS of a partner adapter: its partner certificate, and only the gateway-clients CA trusted.
fn partner_tls(pki: &TestPki) -> tonic::transport::ServerTlsConfig {
    let me = pki.partner("parking");
    parking_adapter::mtls_config(&me.pem.cert_pem, &me.pem.key_pem, pki.gateway_clients_ca_pem())
}

/// A partner address that refuses every connection: a port held (bound, so nobody else gets
/// it) but not listening, for as long as this lives.
pub struct RefusingPartner {
    socket: tokio::net::TcpSocket,
}

impl RefusingPartner {
    /// Holds a port on 127.0.0.1.
    pub fn new() -> RefusingPartner {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
        RefusingPartner { socket }
    }

    /// Where connections are refused.
    pub fn addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("a bound socket")
    }
}

impl Default for RefusingPartner {
    fn default() -> Self {
        RefusingPartner::new()
    }
}

/// A partner entry pointing at `addr` over mTLS: the gateway presents its client certificate
/// and verifies the adapter against the root.
pub fn partner_entry(pki: &TestPki, service: &str, addr: SocketAddr) -> PartnerConfig {
    let client = &pki.gateway_client;
    let endpoint = format!("https://localhost:{}", addr.port());
    PartnerConfig {
        name: Some("parking".into()),
        read_only_methods: vec!["ListNearbyLots".into(), "GetReceipt".into()],
        timeout: Some(Duration::from_secs(5)),
        connect_timeout: Duration::from_secs(2),
        ..PartnerConfig::new(service, endpoint).over_mtls(pki.ca_cert.clone(), client.cert.clone(), client.key.clone())
    }
}

/// The lot the tests' driver parks in, by the Bund.
pub const BUND_LOT: &str = "lot-bund-01";

/// The parking the tests' driver does: lot `lot-bund-01` in Shanghai, plate 沪A12345.
pub fn parking_at_the_bund() -> StartSessionRequest {
    parking_at(BUND_LOT)
}

/// The tests' driver (plate 沪A12345) parking at `lot_id`.
pub fn parking_at(lot_id: &str) -> StartSessionRequest {
    StartSessionRequest {
        lot_id: lot_id.into(),
        plate: "沪A12345".into(),
    }
}

/// A `ListNearbyLotsRequest` around the Bund, Shanghai, for `max_results` lots.
pub fn lots_near_the_bund(max_results: u32) -> ListNearbyLotsRequest {
    ListNearbyLotsRequest {
        near: Some(GeoPoint {
            latitude: 31.23,
            longitude: 121.47,
        }),
        radius_m: 5000,
        max_results,
    }
}

/// An encoded [`lots_near_the_bund`] for one lot.
pub fn nearby_lots() -> Vec<u8> {
    prost::Message::encode_to_vec(&lots_near_the_bund(1))
}

/// The partner kit's configuration for checking the adapter at `addr` as the gateway of `pki`
/// would call it, with a car's certificate (`VIN_A`) for the kit to try as well, and the
/// gateway-clients CA to sign certificates of other roles with.
pub fn kit_config(pki: &TestPki, addr: SocketAddr, service: &str) -> partner_kit::KitConfig {
    let endpoint = partner_kit::Endpoint::parse(&format!("https://localhost:{}", addr.port()), None)
        .expect("the adapter's endpoint");
    let client = &pki.gateway_client;
    let mut config = partner_kit::KitConfig::new(
        endpoint,
        service,
        partner_kit::TrustAnchors::read(&pki.ca_cert).expect("the root"),
        partner_kit::ClientCertificate::read(&client.cert, &client.key).expect("the gateway's client certificate"),
    );
    let car = pki.vehicle(crate::car::VIN_A);
    config.vehicle = Some(partner_kit::ClientCertificate::read(&car.cert, &car.key).expect("a car's certificate"));
    let gateway_clients = certs::IssuingCa::GatewayClients;
    config.gateway_clients_ca = Some(
        partner_kit::SigningCa::read(
            &pki.layout.issuing_ca_cert(gateway_clients),
            &pki.layout.issuing_ca_key(gateway_clients),
        )
        .expect("the gateway-clients CA"),
    );
    config
}

/// The arguments of `partner-kit check` for the adapter at `addr`, as [`kit_config`] has them.
pub fn kit_args(pki: &TestPki, addr: SocketAddr) -> Vec<String> {
    let car = pki.vehicle(crate::car::VIN_A);
    let path = |p: &std::path::Path| p.display().to_string();
    vec![
        "check".into(),
        "--endpoint".into(),
        format!("https://localhost:{}", addr.port()),
        "--ca".into(),
        path(&pki.ca_cert),
        "--client-cert".into(),
        path(&pki.gateway_client.cert),
        "--client-key".into(),
        path(&pki.gateway_client.key),
        "--vehicle-cert".into(),
        path(&car.cert),
        "--vehicle-key".into(),
        path(&car.key),
    ]
}
