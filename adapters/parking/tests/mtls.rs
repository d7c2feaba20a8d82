//! The adapter over mutual TLS: the gateway's client certificate is required.

use parking_adapter::{ParkingService, mtls_config, serve};
use proto::parking::v1::parking_payment_client::ParkingPaymentClient;
use proto::parking::v1::{GeoPoint, ListNearbyLotsRequest};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// A certificate and its key, in PEM.
struct Pem {
    cert: String,
    key: String,
}

/// A throwaway CA that issues one server and any number of client certificates.
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

    fn issue(&self, name: &str, usage: ExtendedKeyUsagePurpose) -> Pem {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

fn lots_request() -> ListNearbyLotsRequest {
    ListNearbyLotsRequest {
        near: Some(GeoPoint {
            latitude: 31.2317,
            longitude: 121.4726,
        }),
        radius_m: 0,
        max_results: 0,
    }
}

/// Calls ListNearbyLots over TLS, presenting `client` if given; returns the number of lots.
async fn list_lots(port: u16, ca_pem: &str, client: Option<&Pem>) -> Result<usize, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some(client) = client {
        tls = tls.identity(Identity::from_pem(&client.cert, &client.key));
    }
    let endpoint = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap();
    // With TLS 1.3 the server may reject the client certificate after the client considers the
    // handshake done, so the failure can surface on connect or on the first call.
    let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
    let response = ParkingPaymentClient::new(channel)
        .list_nearby_lots(lots_request())
        .await
        .map_err(|e| e.to_string())?;
    Ok(response.into_inner().lots.len())
}

#[tokio::test]
async fn mtls_requires_a_client_certificate_from_the_trusted_ca() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = TestCa::new("test platform CA");
    let server = ca.issue("parking-adapter", ExtendedKeyUsagePurpose::ServerAuth);
    let gateway = ca.issue("gateway", ExtendedKeyUsagePurpose::ClientAuth);
    let stranger_ca = TestCa::new("someone else's CA");
    let stranger = stranger_ca.issue("stranger", ExtendedKeyUsagePurpose::ClientAuth);

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (_stop, stopped) = oneshot::channel::<()>();
    let tls = mtls_config(&server.cert, &server.key, &ca.cert_pem);
    tokio::spawn(serve(listener, Some(tls), ParkingService::new(), async {
        let _ = stopped.await;
    }));

    assert_eq!(list_lots(port, &ca.cert_pem, Some(&gateway)).await, Ok(3));
    assert!(list_lots(port, &ca.cert_pem, None).await.is_err());
    assert!(list_lots(port, &ca.cert_pem, Some(&stranger)).await.is_err());
}

#[tokio::test]
async fn invalid_pem_is_reported_by_serve() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls = mtls_config("not a certificate", "not a key", "not a CA");
    let result = serve(listener, Some(tls), ParkingService::new(), std::future::pending()).await;
    assert!(result.is_err());
}
