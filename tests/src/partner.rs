//! Partners the gateway calls, each on its own mTLS listener on port 0 trusting only the
//! gateway-clients CA: the reference parking adapter, any other `ParkingPayment` standing in
//! for one (stalling, talkative, scripted, steered while it runs), the reference navigation
//! adapter, and an address where nobody answers. Also what a driver asks of them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use gateway::config::PartnerConfig;
use parking_adapter::ParkingService;
use proto::parking::v1::parking_payment_server::{ParkingPayment, ParkingPaymentServer};
use proto::parking::v1::{
    EndSessionRequest, EndSessionResponse, GeoPoint, GetReceiptRequest, ListNearbyLotsRequest, ListNearbyLotsResponse,
    Receipt, RefundSessionRequest, RefundSessionResponse, StartSessionRequest, StartSessionResponse,
};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, oneshot};
use tonic::service::Routes;
use tonic::{Request, Response, Status};

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
    PartnerConfig {
        service: service.into(),
        name: Some("parking".into()),
        read_only_methods: vec!["ListNearbyLots".into(), "GetReceipt".into()],
        endpoint: format!("https://localhost:{}", addr.port()),
        timeout: Some(Duration::from_secs(5)),
        connect_timeout: Duration::from_secs(2),
        ca_cert: Some(pki.ca_cert.clone()),
        client_cert: Some(client.cert.clone()),
        client_key: Some(client.key.clone()),
        tls_server_name: None,
        max_concurrent_calls: gateway::config::DEFAULT_MAX_CONCURRENT_CALLS,
        breaker_failures: gateway::config::DEFAULT_BREAKER_FAILURES,
        breaker_open_for: gateway::config::DEFAULT_BREAKER_OPEN_FOR,
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

/// A parking partner that wraps the reference one with scripted faults: it can fail the first
/// EndSession with UNAVAILABLE, or hold EndSession calls until the test releases them. It
/// counts the EndSession calls that reach it (the reference service counts actual charges).
#[derive(Clone)]
pub struct ScriptedParking {
    inner: ParkingService,
    fail_first_end: Arc<AtomicBool>,
    hold: Arc<Semaphore>,
    holding: bool,
    arrived: Arc<Notify>,
    end_calls: Arc<AtomicU64>,
}

impl ScriptedParking {
    /// Behaves exactly like `inner`.
    pub fn new(inner: ParkingService) -> ScriptedParking {
        ScriptedParking {
            inner,
            fail_first_end: Arc::default(),
            hold: Arc::new(Semaphore::new(0)),
            holding: false,
            arrived: Arc::default(),
            end_calls: Arc::default(),
        }
    }

    /// The first EndSession answers UNAVAILABLE without touching the session.
    pub fn failing_first_end(self) -> Self {
        self.fail_first_end.store(true, Ordering::SeqCst);
        self
    }

    /// Every EndSession waits for [`ScriptedParking::release`] before running.
    pub fn holding_ends(mut self) -> Self {
        self.holding = true;
        self
    }

    /// Lets `n` held EndSession calls proceed.
    pub fn release(&self, n: usize) {
        self.hold.add_permits(n);
    }

    /// Resolves when an EndSession call has reached the partner (register before triggering).
    pub fn end_arrived(&self) -> tokio::sync::futures::OwnedNotified {
        self.arrived.clone().notified_owned()
    }

    /// EndSession calls that reached this partner.
    pub fn end_calls(&self) -> u64 {
        self.end_calls.load(Ordering::SeqCst)
    }

    /// Resolves once `n` EndSession calls in all have reached the partner.
    pub async fn ends_arrived(&self, n: u64) {
        loop {
            // Registered before the check, so an arrival in between is not missed.
            let arrived = self.end_arrived();
            if self.end_calls() >= n {
                return;
            }
            arrived.await;
        }
    }
}

#[tonic::async_trait]
impl ParkingPayment for ScriptedParking {
    async fn list_nearby_lots(
        &self,
        r: Request<ListNearbyLotsRequest>,
    ) -> Result<Response<ListNearbyLotsResponse>, Status> {
        self.inner.list_nearby_lots(r).await
    }

    async fn start_session(&self, r: Request<StartSessionRequest>) -> Result<Response<StartSessionResponse>, Status> {
        self.inner.start_session(r).await
    }

    async fn end_session(&self, r: Request<EndSessionRequest>) -> Result<Response<EndSessionResponse>, Status> {
        self.end_calls.fetch_add(1, Ordering::SeqCst);
        self.arrived.notify_waiters();
        if self.fail_first_end.swap(false, Ordering::SeqCst) {
            return Err(Status::unavailable("payment provider briefly unavailable"));
        }
        if self.holding {
            self.hold.acquire().await.expect("hold semaphore").forget();
        }
        self.inner.end_session(r).await
    }

    async fn get_receipt(&self, r: Request<GetReceiptRequest>) -> Result<Response<Receipt>, Status> {
        self.inner.get_receipt(r).await
    }

    async fn refund_session(
        &self,
        r: Request<RefundSessionRequest>,
    ) -> Result<Response<RefundSessionResponse>, Status> {
        self.inner.refund_session(r).await
    }
}

/// What a [`SteeredParking`] does with the calls it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steering {
    /// Answers as the reference adapter does.
    Answer,
    /// Holds every call until [`SteeredParking::release`], then answers.
    Hang,
    /// Fails every call with this code.
    Fail(tonic::Code),
}

/// A parking partner the test steers while it runs: it answers, hangs, or fails with a
/// chosen code, and recovers when told to ([`Steering`]). It counts the ListNearbyLots and
/// StartSession calls that reach it, which are the ones it steers.
#[derive(Clone)]
pub struct SteeredParking {
    inner: ParkingService,
    steering: Arc<std::sync::Mutex<Steering>>,
    hold: Arc<Semaphore>,
    arrived: Arc<Notify>,
    calls: Arc<AtomicU64>,
}

impl SteeredParking {
    /// Answers like `inner` until steered otherwise.
    pub fn new(inner: ParkingService) -> SteeredParking {
        SteeredParking {
            inner,
            steering: Arc::new(std::sync::Mutex::new(Steering::Answer)),
            hold: Arc::new(Semaphore::new(0)),
            arrived: Arc::default(),
            calls: Arc::default(),
        }
    }

    /// What calls arriving from now on get.
    pub fn steer(&self, steering: Steering) {
        *self.steering.lock().expect("steering") = steering;
    }

    /// Lets `n` calls held by [`Steering::Hang`] go on and answer.
    pub fn release(&self, n: usize) {
        self.hold.add_permits(n);
    }

    /// Steered calls that reached this partner.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Resolves once `n` steered calls in all have reached the partner.
    pub async fn calls_arrived(&self, n: u64) {
        loop {
            // Registered before the check, so an arrival in between is not missed.
            let arrived = self.arrived.clone().notified_owned();
            if self.calls() >= n {
                return;
            }
            arrived.await;
        }
    }

    /// Counts the call, then does what it is steered to.
    async fn steered(&self) -> Result<(), Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.arrived.notify_waiters();
        let steering = *self.steering.lock().expect("steering");
        match steering {
            Steering::Answer => Ok(()),
            Steering::Hang => {
                self.hold.acquire().await.expect("hold semaphore").forget();
                Ok(())
            }
            Steering::Fail(code) => Err(Status::new(code, "steered to fail")),
        }
    }
}

#[tonic::async_trait]
impl ParkingPayment for SteeredParking {
    async fn list_nearby_lots(
        &self,
        r: Request<ListNearbyLotsRequest>,
    ) -> Result<Response<ListNearbyLotsResponse>, Status> {
        self.steered().await?;
        self.inner.list_nearby_lots(r).await
    }

    async fn start_session(&self, r: Request<StartSessionRequest>) -> Result<Response<StartSessionResponse>, Status> {
        self.steered().await?;
        self.inner.start_session(r).await
    }

    async fn end_session(&self, r: Request<EndSessionRequest>) -> Result<Response<EndSessionResponse>, Status> {
        self.inner.end_session(r).await
    }

    async fn get_receipt(&self, r: Request<GetReceiptRequest>) -> Result<Response<Receipt>, Status> {
        self.inner.get_receipt(r).await
    }

    async fn refund_session(
        &self,
        r: Request<RefundSessionRequest>,
    ) -> Result<Response<RefundSessionResponse>, Status> {
        self.inner.refund_session(r).await
    }
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
