//! The newcomer's first command works: the demo makes certificates, runs the three reference
//! partners, the gateway and a car, and the whole journey succeeds: a car park near the Bund
//! and a route there (navigation), parking paid for (parking), a WeChat sign-in that the
//! demo approves itself on the verification page (identity), and a session the lot's exit gate
//! ends, which reaches the car as an event through the gateway's partner API. And it tells the
//! newcomer how to see the fleet: a dashboard sign-in link and the operator CLI's command line.

use std::path::Path;
use std::process::Command;

/// Runs the demo once on loopback ports with its certificates in `certs`; returns its stdout.
fn run_demo(certs: &Path, extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_demo"))
        .arg("--once")
        .args(extra)
        .arg("--dir")
        .arg(certs)
        .args([
            "--mqtt-listen",
            "127.0.0.1:0",
            "--adapter-listen",
            "127.0.0.1:0",
            "--navigation-listen",
            "127.0.0.1:0",
            "--identity-listen",
            "127.0.0.1:0",
            "--identity-page-listen",
            "127.0.0.1:0",
            "--partner-api-listen",
            "127.0.0.1:0",
            "--agent-listen",
            "127.0.0.1:0",
            "--ops-listen",
            "127.0.0.1:0",
        ])
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "demo failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn the_demo_makes_the_whole_journey_with_all_three_partners() {
    let dir = tempfile::tempdir().unwrap();
    let stdout = run_demo(&dir.path().join("certs"), &["--bench", "20"]);
    for step in [
        "1. SearchPlaces",
        "lot-bund-01",
        "2. Route",
        "Head ",
        "3. StartSession",
        "4. EndSession",
        "/h = ",
        "5. GetReceipt",
        "6. StartDeviceLogin",
        "/device?user_code=",
        // The QR code's half blocks.
        "▀",
        "7. PollDeviceLogin",
        "linked Demo Driver (WeChat)",
        "8. StartSession",
        "the exit gate reads",
        "9. SubscribeEvents",
        "SessionEndedByLot",
        "acknowledged",
        "parking partner charged 2 time(s)",
        "bench: 20",
    ] {
        assert!(stdout.contains(step), "missing {step:?} in:\n{stdout}");
    }
    // The user code as the driver types it.
    let code = stdout
        .split("-> code ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    assert!(
        code.len() == 9 && code.as_bytes()[4] == b'-' && code.chars().filter(char::is_ascii_uppercase).count() == 8,
        "{code}"
    );
    // Every listener was asked for port 0 and is printed with the port it got.
    assert!(!stdout.contains(":0 "), "{stdout}");
    assert!(!stdout.contains(":0/"), "{stdout}");

    // The way to the fleet dashboard: a sign-in link on the ops listener, the warning about the
    // development CA with the root to import, and the CLI with the demo operator's files.
    let ops = stdout
        .split("ops listener       https://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no ops listener in:\n{stdout}"));
    let link = format!("https://{ops}/signin?token=");
    assert!(stdout.contains(&link), "missing {link:?} in:\n{stdout}");
    let certs = dir.path().join("certs");
    let root = certs.join("ca.pem");
    assert!(stdout.contains("not private"), "{stdout}");
    assert!(
        stdout.contains(&format!("import\n  {} as a trusted", root.display())),
        "{stdout}"
    );
    let cli = format!(
        "cargo run -q -p gateway -- fleet --ops https://{ops} --cert {} --key {} --ca {} sessions",
        certs.join("demo-operator.pem").display(),
        certs.join("demo-operator.key").display(),
        root.display()
    );
    assert!(stdout.contains(&cli), "missing {cli:?} in:\n{stdout}");

    let agent_toml = std::fs::read_to_string(dir.path().join("certs/agent.toml")).unwrap();
    for service in [
        "parking.v1.ParkingPayment",
        "navigation.v1.Navigation",
        "identity.v1.SocialLogin",
    ] {
        assert!(agent_toml.contains(service), "{agent_toml}");
    }
    // Each listener trusts one role: cars on MQTT; the gateway presents its own client
    // certificate to the adapter and verifies the adapter against the root.
    let gateway_toml = std::fs::read_to_string(dir.path().join("certs/gateway.toml")).unwrap();
    let client_ca = gateway_toml.lines().find(|l| l.starts_with("client_ca")).unwrap();
    assert!(client_ca.ends_with("vehicles-ca.pem\""), "{client_ca}");
    // The ops listener trusts operators only.
    let ops_table = gateway_toml.split("[ops]").nth(1).expect("an [ops] table");
    let ops_ca = ops_table.lines().find(|l| l.starts_with("client_ca")).unwrap();
    assert!(ops_ca.ends_with("operators-ca.pem\""), "{ops_ca}");
    let client_cert = gateway_toml.lines().find(|l| l.starts_with("client_cert")).unwrap();
    assert!(client_cert.ends_with("gateway-client.pem\""), "{client_cert}");
    let partners: Vec<&str> = gateway_toml.lines().filter(|l| l.starts_with("name = ")).collect();
    assert_eq!(
        partners,
        ["name = \"parking\"", "name = \"navigation\"", "name = \"identity\""],
        "{gateway_toml}"
    );
    // Each partner has its own certificate.
    for partner in ["parking", "navigation", "identity"] {
        assert!(dir.path().join(format!("certs/{partner}.pem")).is_file(), "{partner}");
    }
}

#[test]
fn a_certificate_directory_from_before_per_role_cas_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    // All an earlier demo left: one CA that signed everything.
    std::fs::write(certs.join("ca.pem"), "an old CA").unwrap();
    std::fs::write(certs.join("ca.key"), "its key").unwrap();

    let stdout = run_demo(&certs, &[]);

    assert!(stdout.contains("replacing the development PKI"), "{stdout}");
    assert!(stdout.contains("9. SubscribeEvents"), "{stdout}");
    assert!(certs.join("vehicles-ca.pem").is_file());
}
