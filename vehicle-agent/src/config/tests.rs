//! The agent's settings from file, `AGENT_*` variables and defaults, and the checks on them.

use super::*;
use figment::providers::Serialized;

fn base() -> AgentConfig {
    AgentConfig::new("localhost:8883", "ca.pem".into(), "car.pem".into(), "car.key".into())
}

fn err_of(c: &AgentConfig) -> String {
    c.validate_values().unwrap_err().to_string()
}

#[test]
fn defaults() {
    let c = base();
    assert_eq!(c.gateway_addr().unwrap(), ("localhost".to_owned(), 8883));
    assert_eq!(c.server_name().unwrap(), "localhost");
    assert_eq!(c.local_listen, "127.0.0.1:50051".parse().unwrap());
    assert_eq!(c.keep_alive, Duration::from_secs(30));
    assert_eq!(c.backoff_initial, Duration::from_millis(500));
    assert_eq!(c.backoff_max, Duration::from_secs(60));
    assert_eq!(c.default_timeout, Duration::from_secs(30));
    assert_eq!(c.max_payload_bytes, 131_072);
    assert_eq!(c.state_dir, PathBuf::from("/var/lib/vehicle-agent"));
    assert_eq!(c.outbox_capacity, 1000);
    assert_eq!(c.result_retention, Duration::from_secs(86_400));
    assert_eq!(c.local_socket, None);
    assert_eq!(c.services, ["parking.v1.ParkingPayment"]);
    c.validate_values().unwrap();
}

#[test]
fn services_are_full_grpc_names_listed_once_and_never_the_agents_own() {
    let mut c = base();
    c.services = vec!["parking.v1.ParkingPayment".into(), "karaoke.v1.Karaoke".into()];
    c.validate_values().unwrap();
    c.services = vec![];
    c.validate_values().unwrap();
    for (services, says) in [
        (vec!["Karaoke"], "not a fully qualified gRPC service"),
        (vec!["karaoke..Karaoke"], "not a fully qualified gRPC service"),
        (vec!["karaoke.v1/Karaoke"], "not a fully qualified gRPC service"),
        (vec!["agent.v1.VehicleAgent"], "the agent's own API"),
        (vec!["a.B", "a.B"], "listed twice"),
    ] {
        c.services = services.iter().map(|s| s.to_string()).collect();
        let e = err_of(&c);
        assert!(e.starts_with("services:") && e.contains(says), "{services:?}: {e}");
    }
    c.services = (0..=MAX_SERVICES).map(|i| format!("s{i}.v1.S")).collect();
    assert!(err_of(&c).contains("at most 64"));
}

#[test]
fn gateway_forms() {
    let mut c = base();
    c.gateway = "[::1]:1883".into();
    assert_eq!(c.gateway_addr().unwrap(), ("::1".to_owned(), 1883));
    assert!(err_of(&c).contains("IPv6"));
    for bad in [
        "localhost",
        "localhost:",
        "localhost:99999",
        ":8883",
        "::1:8883",
        "[::1:8883",
        "[x]:1",
        "a/b:1",
    ] {
        c.gateway = bad.into();
        let e = err_of(&c);
        assert!(e.starts_with("gateway:"), "{bad}: {e}");
    }
    c.gateway = "10.0.0.1:8883".into();
    c.server_name = Some("gw.example".into());
    assert_eq!(c.server_name().unwrap(), "gw.example");
    c.server_name = Some("not a name".into());
    assert!(err_of(&c).starts_with("server_name:"));
}

#[test]
fn ranges_name_the_field() {
    let mut c = base();
    c.keep_alive = Duration::from_secs(4);
    assert!(
        err_of(&c).starts_with("keep_alive: 4s is out of range"),
        "{}",
        err_of(&c)
    );
    c.keep_alive = Duration::from_secs(3601);
    assert!(err_of(&c).starts_with("keep_alive:"));
    c.keep_alive = Duration::from_secs(5);
    c.validate_values().unwrap();

    let mut c = base();
    c.backoff_initial = Duration::from_secs(61);
    assert_eq!(err_of(&c), "backoff_initial: 1m 1s is greater than backoff_max (1m)");
    c.backoff_initial = Duration::ZERO;
    assert!(err_of(&c).starts_with("backoff_initial:"));

    let mut c = base();
    c.default_timeout = Duration::ZERO;
    assert!(err_of(&c).starts_with("default_timeout:"));

    let mut c = base();
    c.max_payload_bytes = 0;
    assert!(err_of(&c).starts_with("max_payload_bytes:"));

    let mut c = base();
    c.max_kept_events = 0;
    assert!(
        err_of(&c).starts_with("max_kept_events: 0 is out of range"),
        "{}",
        err_of(&c)
    );
    c.max_kept_events = MAX_KEPT_EVENTS_LIMIT + 1;
    assert!(err_of(&c).starts_with("max_kept_events:"));

    let mut c = base();
    c.outbox_capacity = 0;
    assert_eq!(err_of(&c), "outbox_capacity: must be at least 1");
    let mut c = base();
    c.result_retention = Duration::from_millis(10);
    assert_eq!(
        err_of(&c),
        "result_retention: 10ms is too short: it must be at least 1s"
    );
    let mut c = base();
    c.state_dir = PathBuf::new();
    assert!(err_of(&c).starts_with("state_dir:"));
}

#[test]
fn file_paths_are_relative_to_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        "gateway = \"gw.example:8883\"\nca_cert = \"ca.pem\"\ncert = \"/abs/car.pem\"\nkey = \"car.key\"\nkeep_alive = \"10s\"\nlocal_listen = \"127.0.0.1:0\"\nlocal_socket = \"run/agent.sock\"\nmax_payload_bytes = 1000\nstate_dir = \"state\"\noutbox_capacity = 5\nresult_retention = \"1h\"\n",
    )
    .unwrap();
    // Environment overrides are tested through the binary (tests/cli.rs): setting
    // variables in-process would race with other tests.
    let c = AgentConfig::extract(Figment::new().merge(Toml::file_exact(&path))).unwrap();
    assert_eq!(c.gateway, "gw.example:8883");
    assert_eq!(c.ca_cert, dir.path().join("ca.pem"));
    assert_eq!(c.key, dir.path().join("car.key"));
    assert_eq!(c.cert, PathBuf::from("/abs/car.pem"));
    assert_eq!(c.keep_alive, Duration::from_secs(10));
    assert_eq!(c.backoff_initial, Duration::from_millis(500));
    assert_eq!(c.max_payload_bytes, 1000);
    assert_eq!(c.local_listen.port(), 0);
    assert_eq!(c.state_dir, dir.path().join("state"));
    assert_eq!(c.local_socket, Some(dir.path().join("run/agent.sock")));
    assert_eq!(c.outbox_capacity, 5);
    assert_eq!(c.result_retention, Duration::from_secs(3600));
}

#[test]
fn load_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let e = AgentConfig::load(Some(&missing)).unwrap_err().to_string();
    assert!(e.starts_with("config:") && e.contains("nope.toml"), "{e}");

    let path = dir.path().join("agent.toml");
    let refusal = |file: &str| {
        std::fs::write(&path, file).unwrap();
        AgentConfig::load(Some(&path)).unwrap_err().to_string()
    };
    let e = refusal("ca_cert = \"ca.pem\"\nkey = \"k\"\n");
    assert_eq!(e, "cert: missing: set it in the config file or as AGENT_CERT");
    let files = "ca_cert = \"a\"\ncert = \"b\"\nkey = \"c\"\n";
    let e = refusal(&format!("{files}keepalive = \"1s\"\n"));
    assert!(e.contains("keepalive"), "{e}");
    let e = refusal(&format!("{files}keep_alive = \"soon\"\n"));
    assert!(e.contains("keep_alive"), "{e}");
}

#[test]
fn every_field_is_a_setting() {
    let names = AgentConfig::setting_names();
    assert_eq!(names.len(), 17, "{names:?}");
    for name in [
        "gateway",
        "ca_cert",
        "local_socket",
        "result_retention",
        "max_kept_events",
        "services",
    ] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
}

#[test]
fn the_socket_path_fits_a_unix_socket() {
    let mut c = base();
    c.local_socket = Some(PathBuf::from(format!("/run/{}", "a".repeat(102))));
    c.validate_values().unwrap();
    c.local_socket = Some(PathBuf::from(format!("/run/{}", "a".repeat(103))));
    assert!(err_of(&c).starts_with("local_socket: /run/aaa"), "{}", err_of(&c));
    c.local_socket = Some(PathBuf::new());
    assert_eq!(err_of(&c), "local_socket: must not be empty");
}

#[test]
fn extract_from_serialized() {
    let c = AgentConfig::extract(Figment::from(Serialized::defaults(base()))).unwrap();
    assert_eq!(c, base());
}
