//! The adapter over mutual TLS: only the gateway's client certificate gets a call through,
//! both at the TLS layer (the CA it is given) and on every call (the certificate's role); on
//! the lot port, only an operator's.

use parking_adapter::{ParkingService, mtls_config, serve, serve_lot};
use proto::adapter::testing::{OnLoopback, from_car_with_key, mtls_channel, on_loopback};
use proto::identity::Role;
use proto::parking::v1::parking_lot_client::ParkingLotClient;
use proto::parking::v1::parking_payment_client::ParkingPaymentClient;
use proto::parking::v1::{GeoPoint, ListNearbyLotsRequest, StartSessionRequest, VehicleExitedRequest};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use tokio::net::TcpListener;
use tonic::Code;
use tonic::transport::{Channel, ServerTlsConfig};

const CAR: &str = "LSVAU2180N2183294";
const OTHER_CAR: &str = "WBA3B5C50DF123456";

/// A certificate and its key, in PEM.
struct Pem {
    cert: String,
    key: String,
}

/// A throwaway CA that issues certificates with the platform's subject profile (OU = role).
struct TestCa {
    params: CertificateParams,
    key: KeyPair,
    cert_pem: String,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert_pem = params.self_signed(&key).unwrap().pem();
        TestCa { params, key, cert_pem }
    }

    /// A certificate for `name` whose subject has one OU per entry of `roles` (none if empty).
    fn issue(&self, name: &str, roles: &[&str], usage: ExtendedKeyUsagePurpose) -> Pem {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        for (i, role) in roles.iter().enumerate() {
            // rcgen keeps one value per attribute type; the raw OU OID adds a second one.
            let ou = if i == 0 {
                DnType::OrganizationalUnitName
            } else {
                DnType::CustomDnType(vec![2, 5, 4, 11])
            };
            params.distinguished_name.push(ou, *role);
        }
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn client(&self, name: &str, role: Role) -> Pem {
        self.issue(name, &[role.as_str()], ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// A running adapter on 127.0.0.1 port 0; dropping it stops the server.
struct Adapter {
    server: OnLoopback,
    /// The CA its server certificate chains to.
    server_ca: String,
    /// Holds its database file.
    _db: tempfile::TempDir,
}

/// The service on a fresh database in a temporary directory, which it must not outlive.
async fn fresh_service() -> (ParkingService, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let service = ParkingService::open(&dir.path().join("parking.db")).await.unwrap();
    (service, dir)
}

/// The server's TLS, trusting `client_ca` for clients, and the CA its certificate chains to.
fn server_tls(client_ca: &TestCa) -> (ServerTlsConfig, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server_ca = TestCa::new("partners CA");
    let server = server_ca.issue(
        "parking",
        &[Role::Partner.as_str()],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    (
        mtls_config(&server.cert, &server.key, &client_ca.cert_pem),
        server_ca.cert_pem,
    )
}

/// The adapter's service port, trusting `client_ca`.
async fn start_adapter(client_ca: &TestCa) -> Adapter {
    let (tls, server_ca) = server_tls(client_ca);
    let (service, db) = fresh_service().await;
    let server = on_loopback(|listener, stopped| serve(listener, Some(tls), service, stopped)).await;
    Adapter {
        server,
        server_ca,
        _db: db,
    }
}

/// A channel to `adapter` presenting `certificate` (none if None).
async fn channel(adapter: &Adapter, certificate: Option<&Pem>) -> Result<Channel, String> {
    let client = certificate.map(|c| (c.cert.as_str(), c.key.as_str()));
    mtls_channel(adapter.server.addr, &adapter.server_ca, client).await
}

/// How a call ended: the number of lots, a gRPC status code, or a transport error (TLS refusal).
#[derive(Debug, PartialEq)]
enum Outcome {
    Lots(usize),
    Status(Code, String),
    Transport(String),
}

async fn client(adapter: &Adapter, certificate: Option<&Pem>) -> Result<ParkingPaymentClient<Channel>, String> {
    Ok(ParkingPaymentClient::new(channel(adapter, certificate).await?))
}

fn outcome<T>(result: Result<T, tonic::Status>, ok: impl FnOnce(T) -> usize) -> Outcome {
    match result {
        Ok(value) => Outcome::Lots(ok(value)),
        // With TLS 1.3 the server may reject the client certificate after the client
        // considers the handshake done, so a refusal can surface on the first call.
        Err(status) if status.code() == Code::Unknown || status.code() == Code::Unavailable => {
            Outcome::Transport(format!("{status:?}"))
        }
        Err(status) => Outcome::Status(status.code(), status.message().to_owned()),
    }
}

/// Calls ListNearbyLots presenting `certificate` (if any).
async fn list_lots(adapter: &Adapter, certificate: Option<&Pem>) -> Outcome {
    let mut client = match client(adapter, certificate).await {
        Ok(client) => client,
        Err(e) => return Outcome::Transport(e),
    };
    let request = ListNearbyLotsRequest {
        near: Some(GeoPoint {
            latitude: 31.2317,
            longitude: 121.4726,
        }),
        radius_m: 0,
        max_results: 0,
    };
    outcome(client.list_nearby_lots(request).await, |r| r.into_inner().lots.len())
}

/// Calls StartSession as `vin` (the metadata the gateway would write) presenting `certificate`.
async fn start_session_as(adapter: &Adapter, certificate: &Pem, vin: &str) -> Outcome {
    let mut client = match client(adapter, Some(certificate)).await {
        Ok(client) => client,
        Err(e) => return Outcome::Transport(e),
    };
    let request = StartSessionRequest {
        lot_id: "lot-bund-01".into(),
        plate: "沪A12345".into(),
    };
    outcome(
        client.start_session(from_car_with_key(vin, "k-1", request)).await,
        |_| 1,
    )
}

fn assert_permission_denied(outcome: &Outcome, mentioning: &str) {
    match outcome {
        Outcome::Status(Code::PermissionDenied, message) => {
            assert!(message.contains("only the gateway"), "{message}");
            assert!(message.contains(mentioning), "{message}");
        }
        other => panic!("expected PERMISSION_DENIED, got {other:?}"),
    }
}

#[tokio::test]
async fn with_the_gateway_clients_ca_only_the_gateway_gets_through_the_handshake() {
    let gateway_clients_ca = TestCa::new("gateway clients CA");
    let vehicles_ca = TestCa::new("vehicles CA");
    let partners_ca = TestCa::new("partners CA");
    let adapter = start_adapter(&gateway_clients_ca).await;

    let gateway = gateway_clients_ca.client("gateway", Role::GatewayClient);
    assert_eq!(list_lots(&adapter, Some(&gateway)).await, Outcome::Lots(3));

    let car = vehicles_ca.client(CAR, Role::Vehicle);
    let partner = partners_ca.client("parking", Role::Partner);
    for (who, certificate) in [("a car", Some(&car)), ("a partner", Some(&partner)), ("nobody", None)] {
        let outcome = list_lots(&adapter, certificate).await;
        assert!(
            matches!(outcome, Outcome::Transport(_)),
            "{who} was not refused at TLS: {outcome:?}"
        );
    }
    let car_outcome = start_session_as(&adapter, &car, OTHER_CAR).await;
    assert!(matches!(car_outcome, Outcome::Transport(_)), "{car_outcome:?}");
}

#[tokio::test]
async fn with_a_ca_that_signs_every_role_a_car_still_cannot_act_as_another_car() {
    // The finding: one CA signs cars, partners and the gateway. The handshake admits them
    // all, so the role check on each call is what keeps a car from claiming another VIN.
    let shared_ca = TestCa::new("one CA for everyone");
    let adapter = start_adapter(&shared_ca).await;

    let car = shared_ca.client(CAR, Role::Vehicle);
    assert_permission_denied(&start_session_as(&adapter, &car, OTHER_CAR).await, "role vehicle");
    assert_permission_denied(&list_lots(&adapter, Some(&car)).await, "role vehicle");

    let partner = shared_ca.client("parking", Role::Partner);
    assert_permission_denied(&list_lots(&adapter, Some(&partner)).await, "role partner");

    let operator = shared_ca.client("night-shift", Role::Operator);
    assert_permission_denied(&list_lots(&adapter, Some(&operator)).await, "role operator");

    let gateway = shared_ca.client("gateway", Role::GatewayClient);
    assert_eq!(start_session_as(&adapter, &gateway, OTHER_CAR).await, Outcome::Lots(1));
}

#[tokio::test]
async fn a_certificate_that_claims_to_be_the_gateway_and_a_car_is_refused() {
    let shared_ca = TestCa::new("one CA for everyone");
    let adapter = start_adapter(&shared_ca).await;

    let two_faced = shared_ca.issue(
        "gateway",
        &[Role::GatewayClient.as_str(), Role::Vehicle.as_str()],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    assert_permission_denied(&list_lots(&adapter, Some(&two_faced)).await, "organizational units");

    let no_role = shared_ca.issue("gateway", &[], ExtendedKeyUsagePurpose::ClientAuth);
    assert_permission_denied(&list_lots(&adapter, Some(&no_role)).await, "organizational unit");
}

#[tokio::test]
async fn a_certificate_from_a_stranger_is_refused_at_the_handshake() {
    let gateway_clients_ca = TestCa::new("gateway clients CA");
    let adapter = start_adapter(&gateway_clients_ca).await;
    let stranger_ca = TestCa::new("someone else's CA");
    let stranger = stranger_ca.client("gateway", Role::GatewayClient);

    let outcome = list_lots(&adapter, Some(&stranger)).await;
    assert!(matches!(outcome, Outcome::Transport(_)), "{outcome:?}");
}

#[tokio::test]
async fn invalid_pem_is_reported_by_serve() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls = mtls_config("not a certificate", "not a key", "not a CA");
    let (service, _db) = fresh_service().await;
    let result = serve(listener, Some(tls), service, std::future::pending()).await;
    assert!(result.is_err());
}

#[tokio::test]
async fn the_lot_port_answers_operators_only() {
    // A CA that signs every role: the role check on each call is what keeps the others out.
    let lots_ca = TestCa::new("lot systems CA");
    let (tls, server_ca) = server_tls(&lots_ca);
    let (service, _db) = fresh_service().await;
    let lot = on_loopback(|listener, stopped| serve_lot(listener, Some(tls), service, stopped)).await;

    let exit_as = async |certificate: Pem| {
        let client = Some((certificate.cert.as_str(), certificate.key.as_str()));
        let mut gate = ParkingLotClient::new(mtls_channel(lot.addr, &server_ca, client).await.unwrap());
        let exit = VehicleExitedRequest {
            lot_id: "lot-bund-01".into(),
            plate: "沪A12345".into(),
        };
        gate.vehicle_exited(exit).await.unwrap_err()
    };
    // An operator gets through to the lot (no session of that plate there).
    let operator = exit_as(lots_ca.client("bund-exit-gate", Role::Operator)).await;
    assert_eq!(operator.code(), Code::NotFound, "{operator:?}");
    for role in [Role::GatewayClient, Role::Vehicle, Role::Partner] {
        let refused = exit_as(lots_ca.client("someone", role)).await;
        assert_eq!(refused.code(), Code::PermissionDenied, "{role:?}: {refused:?}");
    }
}
