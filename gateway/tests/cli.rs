//! The gateway binary refuses a configuration it cannot run, with a clear message and exit 64.

use std::path::PathBuf;
use std::process::Command;

use gateway::GatewayConfig;

fn gateway(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.args(args).env_remove("GATEWAY_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run gateway")
}

/// `config` as a TOML file in `dir`.
fn config_file(dir: &tempfile::TempDir, config: &GatewayConfig) -> PathBuf {
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, toml::to_string(config).unwrap()).unwrap();
    path
}

/// A configuration naming `cert`, `key` and `client_ca`, otherwise the defaults.
fn naming(cert: impl Into<PathBuf>, key: impl Into<PathBuf>, client_ca: impl Into<PathBuf>) -> GatewayConfig {
    GatewayConfig::new(cert.into(), key.into(), client_ca.into())
}

#[test]
fn a_missing_config_file_exits_64_with_its_name() {
    let out = gateway(&["run", "--config", "/nonexistent/gateway.toml"], &[]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/gateway.toml"));
}

#[test]
fn missing_certificates_exit_64_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(&dir, &naming("/nope/cert.pem", "/nope/key.pem", "/nope/ca.pem"));
    let out = gateway(&["check-config", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tls.cert"), "{stderr}");
}

#[test]
fn an_invalid_environment_override_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(&dir, &naming("a", "b", "c"));
    let out = gateway(
        &["check-config", "--config", path.to_str().unwrap()],
        &[("GATEWAY_MQTT__LISTEN", "not-an-address")],
    );
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .to_lowercase()
            .contains("mqtt.listen")
    );
}

#[test]
fn a_valid_configuration_checks_out() {
    let dir = tempfile::tempdir().unwrap();
    let pki = certs::DevPki::init(dir.path(), &[], false).unwrap();
    let path = config_file(&dir, &naming(pki.gateway_cert(), pki.gateway_key(), pki.ca_cert()));
    let out = gateway(&["check-config", "--config", path.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn logs_carry_no_colour_codes_when_they_do_not_go_to_a_terminal() {
    use std::io::{BufRead, BufReader};

    let dir = tempfile::tempdir().unwrap();
    let pki = certs::DevPki::init(dir.path(), &[], false).unwrap();
    let vehicles_ca = pki.issuing_ca_cert(certs::IssuingCa::Vehicles);
    let mut config = naming(pki.gateway_cert(), pki.gateway_key(), vehicles_ca);
    config.mqtt.listen = "127.0.0.1:0".parse().unwrap();
    config.storage.url = format!("sqlite://{}", dir.path().join("gateway.db").display());
    let path = config_file(&dir, &config);

    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["run", "--config", path.to_str().unwrap()])
        .env_remove("GATEWAY_CONFIG")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run gateway");
    let mut logged = String::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        logged.push_str(&line);
        logged.push('\n');
        if line.contains("gateway listening for vehicles") {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(logged.contains("INFO"), "{logged}");
    assert!(!logged.contains('\x1b'), "colour codes in a pipe: {logged:?}");
}
