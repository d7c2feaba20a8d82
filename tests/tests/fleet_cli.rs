//! The operator's command line, `gateway fleet ...`: the real `gateway` binary as a client of
//! a real gateway's ops listener over mutual TLS, with a real car connected. What an operator
//! types, what they read back, and what the car goes through.

use std::process::Output;
use std::time::Duration;

use gateway::{ConnectionEvent, DisconnectReason};
use integration_tests::*;
use tokio::sync::broadcast;
use vehicle_agent::Agent;

/// The gateway with its ops listener on, trusting the operators CA.
async fn platform() -> Platform {
    Platform::start_with_pki(|pki, config| config.ops = integration_tests::platform::ops(pki)).await
}

/// `gateway fleet` with the connection options for `platform`'s ops listener, presenting
/// `creds`, then `args`.
fn fleet_args(platform: &Platform, creds: &Credentials, args: &[&str]) -> Vec<String> {
    let addr = platform.gateway.ops_addr().expect("the ops listener is on");
    let mut all: Vec<String> = vec!["fleet".into(), "--ops".into(), format!("https://{addr}")];
    for (flag, path) in [
        ("--cert", &creds.cert),
        ("--key", &creds.key),
        ("--ca", &platform.pki.ca_cert),
    ] {
        all.push(flag.into());
        all.push(path.display().to_string());
    }
    all.extend(args.iter().map(|a| (*a).to_owned()));
    all
}

/// Runs `gateway` with `args` to its end, none of the CARLINK_OPS_* variables set.
async fn gateway_cli(args: &[String]) -> Output {
    let mut cmd = tokio::process::Command::new(built_binary!("gateway").path);
    cmd.args(args).kill_on_drop(true);
    for var in [
        "CARLINK_OPS_URL",
        "CARLINK_OPS_CERT",
        "CARLINK_OPS_KEY",
        "CARLINK_OPS_CA",
        "CARLINK_OPS_SERVER_NAME",
    ] {
        cmd.env_remove(var);
    }
    within(Duration::from_secs(30), cmd.output(), "gateway fleet finishes")
        .await
        .expect("run the gateway binary")
}

/// Runs `gateway fleet ... args` as operator alice and expects it to succeed; its stdout.
async fn alice(platform: &Platform, args: &[&str]) -> String {
    let out = gateway_cli(&fleet_args(platform, &platform.pki.operator("alice"), args)).await;
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "fleet {args:?}: {:?}\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}

/// [`platform`] with car [`VIN_A`] connected, its connect recorded; the connection events
/// since just before it connected.
async fn platform_with_a_car() -> (Platform, Agent, broadcast::Receiver<ConnectionEvent>) {
    let platform = platform().await;
    let mut events = platform.connection_events();
    let car = platform.agent(VIN_A).await;
    connected(&mut events, VIN_A).await;
    (platform, car, events)
}

/// Waits until `vin`'s connect is recorded (so that the connection log lists it).
async fn connected(events: &mut broadcast::Receiver<ConnectionEvent>, vin: &str) {
    within(
        SOON,
        async {
            loop {
                if let ConnectionEvent::Connected(info) = events.recv().await.expect("connection events")
                    && info.vin.as_str() == vin
                {
                    return;
                }
            }
        },
        "the car's connect is recorded",
    )
    .await
}

#[tokio::test]
async fn sessions_lists_a_connected_car_as_a_table_and_as_json() {
    let (platform, _car, _) = platform_with_a_car().await;

    let table = alice(&platform, &["sessions"]).await;
    let mut lines = table.lines();
    let header = lines.next().expect("a header");
    assert!(header.starts_with("VIN ") && header.contains("CONNECTED"), "{table}");
    let row = lines.next().expect("a row");
    assert!(row.starts_with(VIN_A), "{table}");
    // Aligned: the row's second column starts where the header's does.
    assert_eq!(header.find("NODE"), row.find(' ').map(|i| i + 2), "{table}");

    let json = alice(&platform, &["--json", "sessions"]).await;
    assert_eq!(json.lines().count(), 1, "one object per line: {json}");
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(parsed["live"][0]["vin"], VIN_A, "{json}");
    assert_eq!(
        parsed["liveTotal"], "1",
        "proto3 JSON writes uint64 as a string: {json}"
    );
}

#[tokio::test]
async fn kick_ends_the_cars_session() {
    let (platform, _car, mut events) = platform_with_a_car().await;

    let out = alice(&platform, &["kick", VIN_A]).await;
    assert!(out.contains("session ended"), "{out}");
    assert_eq!(
        disconnected(&mut events, VIN_A).await,
        DisconnectReason::KickedByOperator
    );
}

#[tokio::test]
async fn a_revoked_car_is_cut_off_and_listed_with_the_reason_and_who_did_it() {
    let (platform, _car, mut events) = platform_with_a_car().await;

    let out = alice(&platform, &["revoke", VIN_A, "--reason", "stolen in Pudong"]).await;
    assert!(
        out.contains("revoked at") && out.contains("its live session was ended"),
        "{out}"
    );
    assert_eq!(disconnected(&mut events, VIN_A).await, DisconnectReason::Revoked);

    let listed = alice(&platform, &["revocations"]).await;
    let row = listed
        .lines()
        .find(|l| l.starts_with(VIN_A))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(row.contains("alice") && row.ends_with("stolen in Pudong"), "{listed}");
}

#[tokio::test]
async fn dashboard_link_prints_a_one_time_https_url() {
    let platform = platform().await;
    let out = alice(&platform, &["dashboard-link", "--valid", "60"]).await;
    let url = out.trim();
    assert_eq!(out.lines().count(), 1, "the URL alone on stdout: {out}");
    assert!(url.starts_with("https://") && url.contains("token="), "{url}");
}

#[tokio::test]
async fn watch_prints_a_line_per_connect_as_it_happens() {
    let platform = platform().await;
    let args = fleet_args(&platform, &platform.pki.operator("alice"), &["watch"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut watch = Process::spawn(built_binary!("gateway"), &args);
    // Printed once the stream is open, so the connect below cannot come before it.
    watch.wait_for_line("watching sessions").await;
    let _car = platform.agent(VIN_A).await;
    let line = watch.wait_for_line(VIN_A).await;
    assert!(line.contains("connected"), "{line}");
}

#[tokio::test]
async fn a_vehicle_certificate_is_refused() {
    let platform = platform().await;
    let car = platform.pki.vehicle(VIN_A);
    let out = gateway_cli(&fleet_args(&platform, &car, &["sessions"])).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("PERMISSION_DENIED"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[tokio::test]
async fn a_missing_certificate_file_is_a_usage_error_naming_it() {
    let platform = platform().await;
    let mut creds = platform.pki.operator("alice");
    creds.cert = platform.pki.path("no-such-operator.pem");
    let out = gateway_cli(&fleet_args(&platform, &creds, &["sessions"])).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.starts_with("error: --cert ") && stderr.contains("no-such-operator.pem"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_unreachable_ops_listener_is_named() {
    let platform = platform().await;
    // A listener that hangs up on every connection: no TLS, no gRPC behind it.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = silent.accept().await {
            drop(socket);
        }
    });
    let mut args = fleet_args(&platform, &platform.pki.operator("alice"), &["sessions"]);
    args[2] = format!("https://{addr}");
    let out = gateway_cli(&args).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "error: UNAVAILABLE: the ops URL https://{addr} could not be reached"
        )),
        "{stderr}"
    );
}
