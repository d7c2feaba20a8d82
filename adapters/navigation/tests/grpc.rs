//! The adapter as the gateway sees it: a real server on a loopback port over mutual TLS, with
//! the development PKI's certificates, called with the generated client and the metadata the
//! gateway attaches. Only the gateway's client certificate gets a call through.

use certs::{CertificateAuthority, IssuedCert, IssuingCa};
use navigation_adapter::{NavigationService, mtls_config, serve};
use proto::adapter::testing::{OnLoopback, from_car_with_key, mtls_channel, on_loopback};
use proto::navigation::v1::navigation_client::NavigationClient;
use proto::navigation::v1::{
    GeoPoint, Maneuver, PlaceCategory, RouteRequest, RouteResponse, SearchPlacesRequest, SearchPlacesResponse,
};
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

const CAR: &str = "LSVAU2180N2183294";
/// Where the driver is going: Nanjing East Road, near the Bund.
const DESTINATION: GeoPoint = GeoPoint {
    latitude: 31.2365,
    longitude: 121.4840,
};
/// Where the car is: by Jing'an Temple.
const CAR_POSITION: GeoPoint = GeoPoint {
    latitude: 31.2236,
    longitude: 121.4454,
};

/// A running adapter on 127.0.0.1 port 0 with a certificate of `pki`; dropping it stops the
/// server.
struct Adapter {
    server: OnLoopback,
    pki: CertificateAuthority,
}

/// An adapter trusting only the gateway-clients CA of a fresh PKI.
async fn start_adapter() -> Adapter {
    let pki = CertificateAuthority::generate().unwrap();
    let gateway_clients = pki.issuing_cert_pem(IssuingCa::GatewayClients).to_owned();
    start_adapter_trusting(pki, &gateway_clients).await
}

/// An adapter trusting `client_ca_pem` for its clients.
async fn start_adapter_trusting(pki: CertificateAuthority, client_ca_pem: &str) -> Adapter {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let me = pki.issue_partner("navigation").unwrap();
    let tls = mtls_config(&me.cert_pem, &me.key_pem, client_ca_pem);
    let server = on_loopback(|listener, stopped| serve(listener, Some(tls), NavigationService::new(), stopped)).await;
    Adapter { server, pki }
}

impl Adapter {
    /// A client presenting `certificate` (none if None), verifying the adapter against the root.
    async fn client(&self, certificate: Option<&IssuedCert>) -> Result<NavigationClient<Channel>, String> {
        let client = certificate.map(|c| (c.cert_pem.as_str(), c.key_pem.as_str()));
        let channel = mtls_channel(self.server.addr, self.pki.root_cert_pem(), client).await?;
        Ok(NavigationClient::new(channel))
    }

    /// A client with the gateway's client certificate.
    async fn gateway(&self) -> NavigationClient<Channel> {
        let certificate = self.pki.issue_gateway_client().unwrap();
        self.client(Some(&certificate)).await.expect("the gateway connects")
    }
}

/// A request as the gateway sends it: VIN, request id and idempotency key in the metadata.
fn call<T>(message: T) -> Request<T> {
    from_car_with_key(CAR, "key-1", message)
}

fn parking_near(point: GeoPoint) -> SearchPlacesRequest {
    SearchPlacesRequest {
        near: Some(point),
        radius_m: 1_500,
        category: PlaceCategory::Parking.into(),
        ..Default::default()
    }
}

async fn search(
    client: &mut NavigationClient<Channel>,
    request: SearchPlacesRequest,
) -> Result<SearchPlacesResponse, Status> {
    client
        .search_places(call(request))
        .await
        .map(tonic::Response::into_inner)
}

async fn route(client: &mut NavigationClient<Channel>, request: RouteRequest) -> Result<RouteResponse, Status> {
    client.route(call(request)).await.map(tonic::Response::into_inner)
}

#[tokio::test]
async fn the_gateway_finds_parking_near_a_destination_and_a_route_to_it() {
    let adapter = start_adapter().await;
    let mut gateway = adapter.gateway().await;

    let places = search(&mut gateway, parking_near(DESTINATION)).await.unwrap().places;
    let lot = places.first().expect("a car park near the Bund");
    assert_eq!(lot.place_id, "lot-bund-01");
    assert_eq!(lot.parking_lot_id, "lot-bund-01");
    assert_eq!(lot.local_name, "外滩滨江停车库");
    assert!(
        places.iter().all(|p| p.category() == PlaceCategory::Parking),
        "{places:?}"
    );

    let to_the_lot = RouteRequest {
        origin: Some(CAR_POSITION),
        destination: lot.location,
    };
    let drive = route(&mut gateway, to_the_lot).await.unwrap();
    // Jing'an to the Bund: about 4 km as the crow flies, more along the streets.
    assert!((4_000..8_000).contains(&drive.distance_m), "{}", drive.distance_m);
    assert!(drive.duration_s > 0);
    let kinds: Vec<Maneuver> = drive.steps.iter().map(|s| s.maneuver()).collect();
    assert_eq!(kinds.first(), Some(&Maneuver::Depart));
    assert_eq!(kinds.last(), Some(&Maneuver::Arrive));
    assert!(kinds.len() > 2, "{kinds:?}");
    assert_eq!(drive.steps.iter().map(|s| s.distance_m).sum::<u32>(), drive.distance_m);
    assert_eq!(drive.steps.iter().map(|s| s.duration_s).sum::<u32>(), drive.duration_s);
    assert!(drive.polyline.len() >= 2);
    assert!(drive.destination_approach_m < 400, "{}", drive.destination_approach_m);

    // Reading only: the same question gets the same answer.
    let again = route(&mut gateway, to_the_lot).await.unwrap();
    assert_eq!(again, drive);
}

/// Checks that `result` was refused with `code` and a message containing `text`.
fn expect<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, text: &str) {
    let status = result.expect_err("refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(text), "{:?} lacks {text:?}", status.message());
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let adapter = start_adapter().await;
    let mut gateway = adapter.gateway().await;

    let bad_routes = [
        (
            RouteRequest {
                origin: None,
                destination: Some(DESTINATION),
            },
            Code::InvalidArgument,
            "origin is required",
        ),
        (
            RouteRequest {
                origin: Some(CAR_POSITION),
                destination: Some(GeoPoint {
                    latitude: 31.2,
                    longitude: 200.0,
                }),
            },
            Code::InvalidArgument,
            "destination must have latitude within ±90 and longitude within ±180",
        ),
        (
            // From Hangzhou.
            RouteRequest {
                origin: Some(GeoPoint {
                    latitude: 30.2741,
                    longitude: 120.1551,
                }),
                destination: Some(DESTINATION),
            },
            Code::NotFound,
            "the map covers",
        ),
    ];
    for (request, code, text) in bad_routes {
        expect(route(&mut gateway, request).await, code, text);
    }

    let bad_searches = [
        (SearchPlacesRequest::default(), "give near, query or both"),
        (
            SearchPlacesRequest {
                max_results: 51,
                ..parking_near(DESTINATION)
            },
            "max_results 51",
        ),
        (
            SearchPlacesRequest {
                radius_m: 50_001,
                ..parking_near(DESTINATION)
            },
            "radius_m 50001",
        ),
    ];
    for (request, text) in bad_searches {
        expect(search(&mut gateway, request).await, Code::InvalidArgument, text);
    }
}

/// How a call presenting some certificate ended.
#[derive(Debug)]
enum Outcome {
    Answered,
    Status(Code, String),
    /// Refused at TLS: the connection, or (TLS 1.3, where the server checks the client
    /// certificate after the client thinks the handshake done) the first call.
    Refused(String),
}

async fn search_presenting(adapter: &Adapter, certificate: Option<&IssuedCert>) -> Outcome {
    let mut client = match adapter.client(certificate).await {
        Ok(client) => client,
        Err(e) => return Outcome::Refused(e),
    };
    match search(&mut client, parking_near(DESTINATION)).await {
        Ok(_) => Outcome::Answered,
        Err(status) if matches!(status.code(), Code::Unknown | Code::Unavailable) => {
            Outcome::Refused(format!("{status:?}"))
        }
        Err(status) => Outcome::Status(status.code(), status.message().to_owned()),
    }
}

#[tokio::test]
async fn only_the_gateway_gets_through_a_vehicle_certificate_is_refused() {
    let adapter = start_adapter().await;
    let gateway = adapter.pki.issue_gateway_client().unwrap();
    assert!(matches!(
        search_presenting(&adapter, Some(&gateway)).await,
        Outcome::Answered
    ));

    let car = adapter.pki.issue_vehicle(&CAR.parse().unwrap()).unwrap();
    let partner = adapter.pki.issue_partner("navigation").unwrap();
    let operator = adapter.pki.issue_operator("night-shift").unwrap();
    for (who, certificate) in [
        ("a car", Some(&car)),
        ("a partner", Some(&partner)),
        ("an operator", Some(&operator)),
        ("nobody", None),
    ] {
        match search_presenting(&adapter, certificate).await {
            Outcome::Refused(reason) => assert!(!reason.is_empty()),
            other => panic!("{who} was not refused at TLS: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_car_certificate_is_refused_by_role_even_behind_a_ca_that_signs_cars() {
    // A misconfigured adapter trusting the root (which chains to every role): the handshake
    // admits a car, the role check on each call still refuses it.
    let pki = CertificateAuthority::generate().unwrap();
    let mut trusts_everyone = pki.root_cert_pem().to_owned();
    for ca in IssuingCa::ALL {
        trusts_everyone.push_str(pki.issuing_cert_pem(ca));
    }
    let adapter = start_adapter_trusting(pki, &trusts_everyone).await;

    let car = adapter.pki.issue_vehicle(&CAR.parse().unwrap()).unwrap();
    match search_presenting(&adapter, Some(&car)).await {
        Outcome::Status(Code::PermissionDenied, message) => {
            assert!(message.contains("only the gateway may call this adapter"), "{message}");
            assert!(message.contains("role vehicle"), "{message}");
        }
        other => panic!("expected PERMISSION_DENIED, got {other:?}"),
    }
    let gateway = adapter.pki.issue_gateway_client().unwrap();
    assert!(matches!(
        search_presenting(&adapter, Some(&gateway)).await,
        Outcome::Answered
    ));
}

#[tokio::test]
async fn invalid_pem_is_reported_by_serve() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls = mtls_config("not a certificate", "not a key", "not a CA");
    let result = serve(listener, Some(tls), NavigationService::new(), std::future::pending()).await;
    assert!(result.is_err());
}
