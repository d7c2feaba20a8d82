//! The newcomer's first command works: the demo makes certificates, runs everything, and a
//! parking round trip succeeds.

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
            "--agent-listen",
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
fn the_demo_pays_for_parking_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let stdout = run_demo(&dir.path().join("certs"), &["--bench", "20"]);
    for step in [
        "1. ListNearbyLots",
        "2. StartSession",
        "3. EndSession",
        "4. GetReceipt",
        "partner charged 1 time(s)",
        "bench: 20",
    ] {
        assert!(stdout.contains(step), "missing {step:?} in:\n{stdout}");
    }
    assert!(dir.path().join("certs/agent.toml").exists());
    // Each listener trusts one role: cars on MQTT; the gateway presents its own client
    // certificate to the adapter and verifies the adapter against the root.
    let gateway_toml = std::fs::read_to_string(dir.path().join("certs/gateway.toml")).unwrap();
    let client_ca = gateway_toml.lines().find(|l| l.starts_with("client_ca")).unwrap();
    assert!(client_ca.ends_with("vehicles-ca.pem\""), "{client_ca}");
    let client_cert = gateway_toml.lines().find(|l| l.starts_with("client_cert")).unwrap();
    assert!(client_cert.ends_with("gateway-client.pem\""), "{client_cert}");
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
    assert!(stdout.contains("4. GetReceipt"), "{stdout}");
    assert!(certs.join("vehicles-ca.pem").is_file());
}
