//! Unit tests of configuration parsing and validation.

use super::*;

fn files() -> (tempfile::TempDir, GatewayConfig) {
    let dir = tempfile::tempdir().unwrap();
    for f in ["cert.pem", "key.pem", "ca.pem"] {
        std::fs::write(dir.path().join(f), "x").unwrap();
    }
    let c = GatewayConfig::new(
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
        dir.path().join("ca.pem"),
    );
    (dir, c)
}

fn partner(endpoint: &str) -> PartnerConfig {
    PartnerConfig {
        service: "parking.v1.ParkingPayment".into(),
        name: None,
        read_only_methods: vec![],
        endpoint: endpoint.into(),
        timeout: None,
        connect_timeout: Duration::from_secs(1),
        ca_cert: None,
        client_cert: None,
        client_key: None,
        tls_server_name: None,
    }
}

#[test]
fn defaults_are_valid() {
    let (_d, c) = files();
    c.validate().unwrap();
    assert_eq!(c.storage.url, "sqlite://gateway.db");
    assert_eq!(c.idempotency.retention, Duration::from_secs(86_400));
    assert_eq!(c.requests.max_payload_bytes, 131_072);
    assert_eq!(c.mqtt.listen.port(), 8883);
}

#[test]
fn missing_certificate_names_the_field() {
    let (_d, mut c) = files();
    c.tls.key = "/nonexistent/key.pem".into();
    let e = c.validate().unwrap_err().to_string();
    assert!(e.starts_with("tls.key:"), "{e}");
}

#[test]
fn per_car_bounds_are_checked() {
    let (_d, mut c) = files();
    c.mqtt.max_subscriptions = 0;
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .starts_with("mqtt.max_subscriptions:")
    );
    c.mqtt.max_subscriptions = 32;
    c.mqtt.packet_burst = NonZeroU32::new(1).unwrap();
    assert!(c.validate().unwrap_err().to_string().starts_with("mqtt.packet_burst:"));
    c.mqtt.packet_burst = NonZeroU32::new(1000).unwrap();
    c.requests.max_response_bytes = 2 << 20;
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .starts_with("requests.max_response_bytes:")
    );
    c.requests.max_response_bytes = 1024;
    c.mqtt.first_flight_timeout = Duration::ZERO;
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .starts_with("mqtt.first_flight_timeout:")
    );
    c.mqtt.first_flight_timeout = Duration::from_secs(3);
    c.storage.acquire_timeout = Duration::ZERO;
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .starts_with("storage.acquire_timeout:")
    );
}

#[test]
fn session_limits_are_checked() {
    let (_d, mut c) = files();
    c.mqtt.max_requests_in_flight = 0;
    let e = c.validate().unwrap_err().to_string();
    assert!(e.starts_with("mqtt.max_requests_in_flight:"), "{e}");
    c.mqtt.max_requests_in_flight = 64;
    c.mqtt.handshake_threads = 1000;
    let e = c.validate().unwrap_err().to_string();
    assert!(e.starts_with("mqtt.handshake_threads:"), "{e}");
}

#[test]
fn partner_entries_are_checked() {
    let (_d, mut c) = files();
    c.partners = vec![partner("https://127.0.0.1:50061")];
    assert!(c.validate().unwrap_err().to_string().contains("partners[0].ca_cert"));
    c.partners = vec![partner("ftp://x:1")];
    assert!(c.validate().unwrap_err().to_string().contains("partners[0].endpoint"));
    c.partners = vec![partner("http://127.0.0.1:50061"), partner("http://127.0.0.1:50062")];
    assert!(c.validate().unwrap_err().to_string().contains("configured twice"));
    c.partners = vec![PartnerConfig {
        service: "Parking".into(),
        ..partner("http://127.0.0.1:1")
    }];
    assert!(c.validate().unwrap_err().to_string().contains("partners[0].service"));
}

#[test]
fn toml_file_and_env_are_merged() {
    let (dir, c) = files();
    let toml = format!(
        "[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n[mqtt]\nlisten = \"127.0.0.1:9999\"\n[[partners]]\nservice = \"parking.v1.ParkingPayment\"\nendpoint = \"http://127.0.0.1:50061\"\ntimeout = \"2s\"\n",
        c.tls.cert, c.tls.key, c.tls.client_ca
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, toml).unwrap();
    let loaded = GatewayConfig::load(Some(&path)).unwrap();
    assert_eq!(loaded.mqtt.listen.port(), 9999);
    assert_eq!(loaded.partners[0].timeout, Some(Duration::from_secs(2)));
    assert_eq!(loaded.mqtt.handshake_timeout, Duration::from_secs(10));
}

#[test]
fn partner_api_without_client_ca_names_the_field() {
    let (dir, c) = files();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n[partner_api]\nlisten = \"127.0.0.1:0\"\n",
            c.tls.cert, c.tls.key, c.tls.client_ca
        ),
    )
    .unwrap();
    let e = GatewayConfig::load(Some(&path)).unwrap_err().to_string();
    assert!(e.starts_with("partner_api.client_ca: required"), "{e}");
    assert!(e.contains("partners-ca.pem"), "{e}");

    std::fs::write(dir.path().join("partners-ca.pem"), "x").unwrap();
    let with_ca = format!(
        "{}client_ca = {:?}\n",
        std::fs::read_to_string(&path).unwrap(),
        dir.path().join("partners-ca.pem")
    );
    std::fs::write(&path, with_ca).unwrap();
    let loaded = GatewayConfig::load(Some(&path)).unwrap();
    assert_eq!(
        loaded.partner_api.unwrap().client_ca,
        dir.path().join("partners-ca.pem")
    );
}

#[test]
fn partner_api_client_ca_must_exist() {
    let (_d, mut c) = files();
    c.partner_api = Some(PartnerApiConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        client_ca: "/nonexistent/partners-ca.pem".into(),
    });
    let e = c.validate().unwrap_err().to_string();
    assert!(e.starts_with("partner_api.client_ca:"), "{e}");
}

#[test]
fn unknown_keys_are_refused() {
    let (dir, c) = files();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\ncrl = []\n",
            c.tls.cert, c.tls.key, c.tls.client_ca
        ),
    )
    .unwrap();
    let e = GatewayConfig::load(Some(&path)).unwrap_err().to_string();
    assert!(e.contains("crl"), "{e}");
}

#[test]
fn durations_added_to_clocks_are_bounded() {
    use super::validate::MAX_DURATION;
    let (_d, mut c) = files();
    c.idempotency.retention = Duration::from_secs(300_000_000 * 365 * 24 * 3600);
    let e = c.validate().unwrap_err().to_string();
    assert!(e.starts_with("idempotency.retention:"), "{e}");
    c.idempotency.retention = MAX_DURATION;
    c.requests.max_timeout = MAX_DURATION + Duration::from_secs(1);
    let e = c.validate().unwrap_err().to_string();
    assert!(e.starts_with("requests.max_timeout:"), "{e}");
    c.requests.max_timeout = Duration::from_secs(300);
    c.events.max_ttl = Duration::MAX;
    let e = c.validate().unwrap_err().to_string();
    assert!(e.starts_with("events.max_ttl:"), "{e}");
}
