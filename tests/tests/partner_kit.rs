//! The partner kit tells a conforming adapter from a careless one: the reference adapter passes
//! every check (events included, through the real gateway's partner API), an adapter that
//! breaks the contract five ways fails each matching check with a message naming what is
//! wrong, a service without a profile gets the generic checks, an adapter the kit cannot reach
//! or trust passes nothing (not even the refusals it never saw), and the `partner-kit` binary
//! prints one line per check and exits by the verdict.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use integration_tests::*;
use parking_adapter::ParkingService;
use partner_kit::{ClientCertificate, Endpoint, Outcome, PartnerApi, Report, SigningCa};
use proto::parking::v1::parking_payment_server::{ParkingPayment, ParkingPaymentServer};
use proto::parking::v1::{
    EndSessionRequest, EndSessionResponse, GetReceiptRequest, ListNearbyLotsRequest, ListNearbyLotsResponse, Receipt,
    RefundSessionRequest, RefundSessionResponse, StartSessionRequest, StartSessionResponse,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::{Request, Response, Status};

/// The result of `name`, which must have run.
fn outcome<'r>(report: &'r Report, name: &str) -> &'r Outcome {
    &report
        .get(name)
        .unwrap_or_else(|| panic!("no check {name} in\n{report}"))
        .outcome
}

/// Asserts that `name` failed with a reason containing `says`.
fn failed_saying(report: &Report, name: &str, says: &str) {
    match outcome(report, name) {
        Outcome::Fail(reason) => assert!(
            reason.contains(says),
            "{name}: {reason:?} should say {says:?}\n{report}"
        ),
        other => panic!("{name} should fail, got {other:?}\n{report}"),
    }
}

/// The platform with the partner API on, in front of the reference adapter.
async fn platform_with_partner_api() -> Platform {
    Platform::start_with_pki(|pki, c| c.partner_api = partner_api(pki.partners_ca())).await
}

/// The kit's report on `platform`'s parking adapter, the kit publishing events to the
/// gateway's partner API with the certificate of partner `name`.
async fn check_publishing_as(platform: &Platform, name: &str) -> Report {
    let addr = platform.gateway.partner_api_addr().expect("the partner API is on");
    let me = platform.pki.partner(name);
    let mut config = kit_config(&platform.pki, platform.parking_server.addr, PARKING);
    config.partner_api = Some(PartnerApi {
        endpoint: Endpoint::parse(&format!("https://localhost:{}", addr.port()), None).unwrap(),
        certificate: ClientCertificate::read(&me.cert, &me.key).unwrap(),
    });
    partner_kit::check(config).await
}

#[tokio::test]
async fn the_reference_adapter_passes_every_check() {
    let platform = platform_with_partner_api().await;
    let report = check_publishing_as(&platform, "parking").await;
    println!("{report}");

    assert!(report.passed(), "{report}");
    let not_passed: Vec<_> = report
        .results
        .iter()
        .filter(|r| !matches!(r.outcome, Outcome::Pass(_)))
        .collect();
    assert!(not_passed.is_empty(), "every check runs and passes:\n{report}");
    assert_eq!(
        platform.parking.charges(),
        4,
        "one charge per session the kit ended, none for retries:\n{report}"
    );
}

#[tokio::test]
async fn a_partner_whose_certificate_the_gateway_does_not_name_cannot_publish() {
    let platform = platform_with_partner_api().await;
    let report = check_publishing_as(&platform, "valet").await;

    failed_saying(
        &report,
        "events.publish-own-service",
        "name = \"<your certificate's CN>\"",
    );
    assert!(
        matches!(outcome(&report, "events.publish-other-service"), Outcome::Pass(_)),
        "{report}"
    );
}

/// A parking partner that breaks the contract five ways: it takes every car for one (the VIN
/// metadata ignored, a call without one served), ignores idempotency keys, starts sessions at
/// lots that do not exist, keeps working past short deadlines, and, served by
/// [`serve_careless`], lets in any certificate the root signed, a car's included.
#[derive(Clone)]
struct CarelessParking {
    inner: ParkingService,
}

const THE_ONE_CAR: &str = "CARELESS000000001";

/// What its slow backend takes when the caller is in a hurry.
const SLOW_BACKEND: Duration = Duration::from_millis(1500);

impl CarelessParking {
    fn as_the_one_car<T>(mut request: Request<T>) -> Request<T> {
        let metadata = request.metadata_mut();
        metadata.insert(proto::metadata::VIN, THE_ONE_CAR.parse().unwrap());
        metadata.remove(proto::metadata::IDEMPOTENCY_KEY);
        request
    }
}

/// True if the call's `grpc-timeout` is under a second.
fn in_a_hurry<T>(request: &Request<T>) -> bool {
    let Some(timeout) = request.metadata().get("grpc-timeout").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let (amount, unit) = timeout.split_at(timeout.len() - 1);
    let amount: u64 = amount.parse().unwrap_or(u64::MAX);
    let nanos_per_unit: u64 = match unit {
        "n" => 1,
        "u" => 1_000,
        "m" => 1_000_000,
        _ => 1_000_000_000,
    };
    amount.saturating_mul(nanos_per_unit) < 1_000_000_000
}

#[tonic::async_trait]
impl ParkingPayment for CarelessParking {
    async fn list_nearby_lots(
        &self,
        request: Request<ListNearbyLotsRequest>,
    ) -> Result<Response<ListNearbyLotsResponse>, Status> {
        if in_a_hurry(&request) {
            // A backend call it never bounds by the caller's deadline.
            tokio::time::sleep(SLOW_BACKEND).await;
        }
        self.inner.list_nearby_lots(request).await
    }

    async fn start_session(
        &self,
        request: Request<StartSessionRequest>,
    ) -> Result<Response<StartSessionResponse>, Status> {
        let mut request = CarelessParking::as_the_one_car(request);
        let lot = &mut request.get_mut().lot_id;
        if !lot.is_empty() && parking_adapter::catalogue::find(lot).is_none() {
            *lot = "lot-bund-01".into();
        }
        self.inner.start_session(request).await
    }

    async fn end_session(&self, request: Request<EndSessionRequest>) -> Result<Response<EndSessionResponse>, Status> {
        self.inner.end_session(CarelessParking::as_the_one_car(request)).await
    }

    async fn get_receipt(&self, request: Request<GetReceiptRequest>) -> Result<Response<Receipt>, Status> {
        self.inner.get_receipt(CarelessParking::as_the_one_car(request)).await
    }

    async fn refund_session(
        &self,
        request: Request<RefundSessionRequest>,
    ) -> Result<Response<RefundSessionResponse>, Status> {
        self.inner
            .refund_session(CarelessParking::as_the_one_car(request))
            .await
    }
}

/// A server task, stopped when dropped.
struct Serving(tokio::task::JoinHandle<()>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves `partner` on 127.0.0.1 port 0 with hyper directly (tonic's server would enforce
/// grpc-timeout for it), trusting the root CA for clients: any certificate the PKI issued.
async fn serve_careless(pki: &TestPki, partner: CarelessParking) -> (SocketAddr, Serving) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(&pki.ca_cert).unwrap()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .unwrap();
    let me = pki.partner("parking");
    let chain = CertificateDer::pem_file_iter(&me.cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let mut tls = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, PrivateKeyDer::from_pem_file(&me.key).unwrap())
        .unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let routes = tonic::service::Routes::new(ParkingPaymentServer::new(partner));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, routes) = (acceptor.clone(), routes.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), TowerToHyperService::new(routes))
                    .await;
            });
        }
    });
    (addr, Serving(task))
}

/// A careless partner running, and the kit's configuration for it.
async fn careless_partner() -> (TestPki, SocketAddr, Serving) {
    init();
    let pki = TestPki::new();
    let partner = CarelessParking {
        inner: parking_service(&pki).await,
    };
    let (addr, serving) = serve_careless(&pki, partner).await;
    (pki, addr, serving)
}

#[tokio::test]
async fn a_careless_adapter_fails_each_broken_promise_with_a_message_naming_it() {
    let (pki, addr, _serving) = careless_partner().await;
    let mut config = kit_config(&pki, addr, PARKING);
    config.deadline_slack = Duration::from_millis(500);
    // Minted by the kit from the vehicles CA: the careless adapter taking it shows it is a car's.
    config.vehicle = Some(
        ClientCertificate::mint_vehicle(
            &SigningCa::read(
                &pki.vehicles_ca(),
                &pki.layout.issuing_ca_key(certs::IssuingCa::Vehicles),
            )
            .unwrap(),
        )
        .unwrap(),
    );

    let report = partner_kit::check(config).await;
    println!("{report}");

    assert!(!report.passed(), "{report}");
    assert!(
        matches!(outcome(&report, "mtls.gateway-certificate"), Outcome::Pass(_)),
        "{report}"
    );
    failed_saying(&report, "mtls.vehicle-certificate", "a car's certificate was let in");
    failed_saying(
        &report,
        "mtls.role-check",
        "a certificate of the gateway-clients CA with OU=vehicle was let in",
    );
    failed_saying(
        &report,
        "metadata.vin-required",
        "expected UNAUTHENTICATED or INVALID_ARGUMENT, got NOT_FOUND",
    );
    failed_saying(
        &report,
        "metadata.vin-isolation",
        "does not keep cars apart by x-vehicle-vin",
    );
    failed_saying(&report, "deadline.short", "does not stop at grpc-timeout");
    failed_saying(
        &report,
        "idempotency.start-session",
        "StartSession twice with idempotency-key",
    );
    failed_saying(&report, "errors.unknown-lot", "expected NOT_FOUND, got OK");
    let text = report.to_string();
    assert!(
        text.contains("contract: deduplicate side effects on (x-vehicle-vin, idempotency-key)"),
        "a failure quotes the contract:\n{text}"
    );
    assert!(
        text.contains("(docs/partners.md#what-every-call-carries)"),
        "and names its section:\n{text}"
    );
}

/// A contract no profile of the kit knows.
const KARAOKE_PROTO: &str = r#"
syntax = "proto3";
package karaoke.v1;
service Karaoke {
  rpc Queue(QueueRequest) returns (QueueResponse);
}
message QueueRequest { string song = 1; }
message QueueResponse { uint32 position = 1; }
"#;

#[tokio::test]
async fn a_service_without_a_profile_gets_the_generic_checks() {
    init();
    let pki = TestPki::new();
    let contract = compile_proto(&pki.path("protos"), "karaoke/v1/karaoke.proto", KARAOKE_PROTO);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let karaoke = start_described_partner(
        &pki,
        listener,
        contract.service("karaoke.v1.Karaoke"),
        Arc::new(|method, _request, metadata| {
            if metadata.get(proto::metadata::VIN).is_none() {
                return Err(Status::unauthenticated("x-vehicle-vin metadata is missing"));
            }
            Ok(prost_reflect::DynamicMessage::new(method.output()))
        }),
    );

    let mut config = kit_config(&pki, karaoke.addr, "karaoke.v1.Karaoke");
    let without_a_method = partner_kit::check(config.clone()).await;
    config.method = Some("Queue".into());
    let report = partner_kit::check(config).await;

    assert!(report.passed(), "{report}");
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("no profile for karaoke.v1.Karaoke")),
        "{report}"
    );
    assert!(
        report.get("idempotency.start-session").is_none(),
        "no parking checks:\n{report}"
    );
    for name in [
        "mtls.vehicle-certificate",
        "metadata.vin-required",
        "deadline.short",
        "errors.malformed-message",
    ] {
        assert!(matches!(outcome(&report, name), Outcome::Pass(_)), "{name}:\n{report}");
    }
    assert!(without_a_method.passed(), "{without_a_method}");
    match outcome(&without_a_method, "deadline.short") {
        Outcome::Skip(why) => assert!(why.contains("--method"), "{why}"),
        other => panic!("deadline.short without a method: {other:?}"),
    }
}

#[tokio::test]
async fn the_binary_prints_one_line_per_check_and_exits_by_the_verdict() {
    init();
    let pki = TestPki::new();
    let reference = start_parking(&pki, parking_service(&pki).await).await;
    let (careless_pki, careless_addr, _serving) = careless_partner().await;

    // Everything from the development PKI's directory: the gateway's client certificate, and
    // certificates the kit mints from the vehicles and gateway-clients CAs.
    let endpoint = format!("https://localhost:{}", reference.addr.port());
    let dir = pki.dir.path().display().to_string();
    let args = ["check", "--endpoint", &endpoint, "--pki", &dir];
    let (code, out) = Process::spawn(built_binary!("partner-kit"), &args).exit().await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("PASS  mtls.vehicle-certificate         a car's certificate: refused"),
        "{out}"
    );
    assert!(out.contains("PASS  mtls.role-check "), "{out}");
    assert!(out.contains("PASS  idempotency.end-session"), "{out}");
    assert!(out.contains("SKIP  events.publish-own-service"), "{out}");
    assert!(out.contains(" passed, 0 failed, 2 skipped"), "{out}");

    let args = kit_args(&careless_pki, careless_addr);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend(["--deadline-slack-ms", "500"]);
    let (code, out) = Process::spawn(built_binary!("partner-kit"), &args).exit().await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL  errors.unknown-lot"), "{out}");
    assert!(
        out.contains("contract: a lot that does not exist is NOT_FOUND (docs/partners.md#errors)"),
        "{out}"
    );

    let (code, out) = Process::spawn(
        built_binary!("partner-kit"),
        &[
            "check",
            "--endpoint",
            "http://localhost:1",
            "--ca",
            "ca.pem",
            "--client-cert",
            "c.pem",
            "--client-key",
            "c.key",
        ],
    )
    .exit()
    .await;
    assert_eq!(code, Some(64), "{out}");
    assert!(out.contains("must be https://host:port"), "{out}");

    let too_slack = kit_args(&pki, reference.addr);
    let mut args: Vec<&str> = too_slack.iter().map(String::as_str).collect();
    args.extend(["--deadline-slack-ms", "30001"]);
    let (code, out) = Process::spawn(built_binary!("partner-kit"), &args).exit().await;
    assert_eq!(code, Some(64), "{out}");
    assert!(out.contains("--deadline-slack-ms 30001 is more than 30000"), "{out}");
}

#[tokio::test]
async fn an_adapter_the_kit_cannot_reach_or_trust_passes_nothing() {
    init();
    let pki = TestPki::new();
    let nobody = RefusingPartner::new();
    let reference = start_parking(&pki, parking_service(&pki).await).await;
    let mut trusting_another_root = kit_config(&pki, reference.addr, PARKING);
    trusting_another_root.anchors = partner_kit::TrustAnchors::read(&TestPki::new().ca_cert).unwrap();

    for (what, config) in [
        ("nothing listening", kit_config(&pki, nobody.addr(), PARKING)),
        ("an adapter certificate the kit does not trust", trusting_another_root),
    ] {
        let report = partner_kit::check(config).await;
        let passed: Vec<_> = report
            .results
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Pass(_)))
            .collect();
        assert!(
            passed.is_empty(),
            "{what}: a refusal the kit never saw is no pass:\n{report}"
        );
        failed_saying(&report, "mtls.vehicle-certificate", "not tried, the kit cannot connect");
    }
}

#[tokio::test]
async fn the_navigation_and_social_login_reference_adapters_pass_the_generic_checks() {
    init();
    let pki = TestPki::new();
    let navigation = start_navigation(&pki, std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let identity = start_identity(
        &pki,
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        Duration::from_secs(5),
    )
    .await;
    for (addr, service, method) in [
        (navigation.addr, NAVIGATION, "SearchPlaces"),
        (identity.addr, SOCIAL_LOGIN, "PollDeviceLogin"),
    ] {
        let mut config = kit_config(&pki, addr, service);
        config.method = Some(method.into());
        let report = partner_kit::check(config).await;
        assert!(report.passed(), "{service}:\n{report}");
        for name in [
            "mtls.vehicle-certificate",
            "mtls.role-check",
            "metadata.vin-required",
            "deadline.short",
        ] {
            assert!(
                matches!(outcome(&report, name), Outcome::Pass(_)),
                "{service} {name}:\n{report}"
            );
        }
    }
}
