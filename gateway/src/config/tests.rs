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

/// `validate`'s refusal of a valid configuration after `change`.
fn refusal(change: impl FnOnce(&mut GatewayConfig)) -> String {
    let (_d, mut c) = files();
    change(&mut c);
    c.validate().expect_err("refused").to_string()
}

/// Checks that `change` makes a valid configuration invalid, naming `field` first.
#[track_caller]
fn check_refused(change: impl FnOnce(&mut GatewayConfig), field: &str) {
    let e = refusal(change);
    assert!(e.starts_with(&format!("{field}:")), "{e}");
}

/// A `gateway.toml` in `dir` naming the files of `c` in `[tls]`, then `rest`.
fn toml_file(dir: &tempfile::TempDir, c: &GatewayConfig, rest: &str) -> std::path::PathBuf {
    let path = dir.path().join("gateway.toml");
    let tls = format!(
        "[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n",
        c.tls.cert, c.tls.key, c.tls.client_ca
    );
    std::fs::write(&path, tls + rest).unwrap();
    path
}

fn partner(endpoint: &str) -> PartnerConfig {
    PartnerConfig {
        connect_timeout: Duration::from_secs(1),
        ..PartnerConfig::new("parking.v1.ParkingPayment", endpoint)
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
    check_refused(|c| c.tls.key = "/nonexistent/key.pem".into(), "tls.key");
}

#[test]
fn per_car_bounds_are_checked() {
    check_refused(|c| c.mqtt.max_subscriptions = 0, "mqtt.max_subscriptions");
    check_refused(
        |c| c.mqtt.packet_burst = NonZeroU32::new(1).unwrap(),
        "mqtt.packet_burst",
    );
    check_refused(
        |c| c.requests.max_response_bytes = 2 << 20,
        "requests.max_response_bytes",
    );
    check_refused(
        |c| c.mqtt.first_flight_timeout = Duration::ZERO,
        "mqtt.first_flight_timeout",
    );
    check_refused(
        |c| c.storage.acquire_timeout = Duration::ZERO,
        "storage.acquire_timeout",
    );
}

#[test]
fn session_limits_are_checked() {
    check_refused(|c| c.mqtt.max_requests_in_flight = 0, "mqtt.max_requests_in_flight");
    check_refused(|c| c.mqtt.handshake_threads = 1000, "mqtt.handshake_threads");
    check_refused(
        |c| c.mqtt.write_stall_timeout = Duration::ZERO,
        "mqtt.write_stall_timeout",
    );
    check_refused(
        |c| c.mqtt.write_stall_timeout = Duration::from_secs(3600),
        "mqtt.write_stall_timeout",
    );
}

#[test]
fn partner_entries_are_checked() {
    let refused = |partners: Vec<PartnerConfig>| refusal(|c| c.partners = partners);
    assert!(refused(vec![partner("https://127.0.0.1:50061")]).contains("partners[0].ca_cert"));
    assert!(refused(vec![partner("ftp://x:1")]).contains("partners[0].endpoint"));
    let twice = vec![partner("http://127.0.0.1:50061"), partner("http://127.0.0.1:50062")];
    assert!(refused(twice).contains("configured twice"));
    let misnamed = PartnerConfig {
        service: "Parking".into(),
        ..partner("http://127.0.0.1:1")
    };
    assert!(refused(vec![misnamed]).contains("partners[0].service"));
}

#[test]
fn an_https_partner_without_the_gateways_client_certificate_is_refused_at_startup() {
    let e = refusal(|c| {
        c.partners = vec![PartnerConfig {
            ca_cert: Some(c.tls.client_ca.clone()),
            ..partner("https://127.0.0.1:50061")
        }]
    });
    assert!(
        e.starts_with("partners[0].client_cert: required for an https endpoint"),
        "{e}"
    );
    assert!(e.contains("gateway-client.pem"), "{e}");
}

#[test]
fn partner_resilience_settings_are_checked() {
    let with = |change: fn(&mut PartnerConfig)| {
        move |c: &mut GatewayConfig| {
            let mut p = partner("http://127.0.0.1:50061");
            change(&mut p);
            c.partners = vec![p];
        }
    };
    check_refused(with(|p| p.max_concurrent_calls = 0), "partners[0].max_concurrent_calls");
    check_refused(
        with(|p| p.max_concurrent_calls = 100_001),
        "partners[0].max_concurrent_calls",
    );
    check_refused(with(|p| p.breaker_failures = 0), "partners[0].breaker_failures");
    check_refused(with(|p| p.breaker_failures = 1_001), "partners[0].breaker_failures");
    check_refused(
        with(|p| p.breaker_open_for = Duration::ZERO),
        "partners[0].breaker_open_for",
    );
    check_refused(
        with(|p| p.breaker_open_for = Duration::from_secs(3601)),
        "partners[0].breaker_open_for",
    );
    let (_d, mut c) = files();
    with(|p| {
        p.max_concurrent_calls = 1;
        p.breaker_failures = 1;
        p.breaker_open_for = Duration::from_millis(10);
    })(&mut c);
    c.validate().expect("the smallest settings are accepted");
}

#[test]
fn partner_resilience_settings_default_and_parse() {
    let (dir, c) = files();
    let entry = "[[partners]]\nservice = \"parking.v1.ParkingPayment\"\nendpoint = \"http://127.0.0.1:50061\"\n";
    let loaded = GatewayConfig::load(Some(&toml_file(&dir, &c, entry))).unwrap();
    let p = &loaded.partners[0];
    assert_eq!(p.max_concurrent_calls, 256);
    assert_eq!(p.breaker_failures, 5);
    assert_eq!(p.breaker_open_for, Duration::from_secs(10));
    let tuned = format!("{entry}max_concurrent_calls = 8\nbreaker_failures = 3\nbreaker_open_for = \"250ms\"\n");
    let loaded = GatewayConfig::load(Some(&toml_file(&dir, &c, &tuned))).unwrap();
    let p = &loaded.partners[0];
    assert_eq!(
        (p.max_concurrent_calls, p.breaker_failures, p.breaker_open_for),
        (8, 3, Duration::from_millis(250))
    );
}

#[test]
fn toml_file_and_env_are_merged() {
    let (dir, c) = files();
    let path = toml_file(
        &dir,
        &c,
        "[mqtt]\nlisten = \"127.0.0.1:9999\"\n[[partners]]\nservice = \"parking.v1.ParkingPayment\"\nendpoint = \"http://127.0.0.1:50061\"\ntimeout = \"2s\"\n",
    );
    let loaded = GatewayConfig::load(Some(&path)).unwrap();
    assert_eq!(loaded.mqtt.listen.port(), 9999);
    assert_eq!(loaded.partners[0].timeout, Some(Duration::from_secs(2)));
    assert_eq!(loaded.mqtt.handshake_timeout, Duration::from_secs(10));
}

#[test]
fn partner_api_without_client_ca_names_the_field() {
    let (dir, c) = files();
    let without_ca = "[partner_api]\nlisten = \"127.0.0.1:0\"\n";
    let path = toml_file(&dir, &c, without_ca);
    let e = GatewayConfig::load(Some(&path)).unwrap_err().to_string();
    assert!(e.starts_with("partner_api.client_ca: required"), "{e}");
    assert!(e.contains("partners-ca.pem"), "{e}");

    let ca = dir.path().join("partners-ca.pem");
    std::fs::write(&ca, "x").unwrap();
    let path = toml_file(&dir, &c, &format!("{without_ca}client_ca = {ca:?}\n"));
    let loaded = GatewayConfig::load(Some(&path)).unwrap();
    assert_eq!(loaded.partner_api.unwrap().client_ca, ca);
}

#[test]
fn partner_api_client_ca_must_exist() {
    let partner_api = PartnerApiConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        client_ca: "/nonexistent/partners-ca.pem".into(),
    };
    check_refused(|c| c.partner_api = Some(partner_api), "partner_api.client_ca");
}

#[test]
fn unknown_keys_are_refused() {
    let (dir, c) = files();
    let path = toml_file(&dir, &c, "crl = []\n");
    let e = GatewayConfig::load(Some(&path)).unwrap_err().to_string();
    assert!(e.contains("crl"), "{e}");
}

#[test]
fn durations_added_to_clocks_are_bounded() {
    use super::validate::MAX_DURATION;
    let centuries = Duration::from_secs(300_000_000 * 365 * 24 * 3600);
    check_refused(|c| c.idempotency.retention = centuries, "idempotency.retention");
    let (_d, mut c) = files();
    c.idempotency.retention = MAX_DURATION;
    c.validate().expect("the longest duration is accepted");
    let over = MAX_DURATION + Duration::from_secs(1);
    check_refused(|c| c.requests.max_timeout = over, "requests.max_timeout");
    check_refused(|c| c.events.max_ttl = Duration::MAX, "events.max_ttl");
}

#[test]
fn journal_settings_default_parse_and_are_checked() {
    let (dir, c) = files();
    let loaded = GatewayConfig::load(Some(&toml_file(&dir, &c, ""))).unwrap();
    let j = &loaded.journal;
    assert!(j.enabled && !j.record_payloads);
    assert_eq!(j.retention, Duration::from_secs(90 * 24 * 3600));
    assert_eq!((j.max_queued_rows, j.max_batch_rows), (65_536, 1_000));
    let tuned = "[journal]\nenabled = false\nrecord_payloads = true\nretention = \"7days\"\nmax_queued_rows = 10\nmax_batch_rows = 5\n";
    let j = GatewayConfig::load(Some(&toml_file(&dir, &c, tuned))).unwrap().journal;
    assert!(!j.enabled && j.record_payloads);
    assert_eq!(j.retention, Duration::from_secs(7 * 24 * 3600));
    assert_eq!((j.max_queued_rows, j.max_batch_rows), (10, 5));

    check_refused(|c| c.journal.retention = Duration::from_secs(60), "journal.retention");
    check_refused(|c| c.journal.max_queued_rows = 0, "journal.max_queued_rows");
    check_refused(|c| c.journal.max_queued_rows = 20_000_000, "journal.max_queued_rows");
    check_refused(|c| c.journal.max_batch_rows = 0, "journal.max_batch_rows");
    check_refused(|c| c.journal.max_batch_rows = 10_001, "journal.max_batch_rows");
    check_refused(
        |c| c.journal.batch_delay = Duration::from_secs(2),
        "journal.batch_delay",
    );
}
