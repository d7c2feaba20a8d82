//! The `vehicle-agent` binary: exit codes, messages, and a full run against a broker.

mod common;

use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use prost::Message;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::Command;
use tonic::{Code, Status};

use common::{Broker, FakeGateway, Pki, SOON, VIN, free_port, install_provider, mosquitto_available};
use proto::MethodPath;
use proto::parking::v1::{ListNearbyLotsRequest, ListNearbyLotsResponse, Lot};
use proto::vehicle::v1::Response;
use vehicle_agent::CallIds;
use vehicle_agent::local::{self, Caller};

const LIST: &str = "/parking.v1.ParkingPayment/ListNearbyLots";

fn agent() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vehicle-agent"));
    // Whatever the developer's shell has set must not leak into the agent under test.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AGENT_") {
            cmd.env_remove(key);
        }
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

async fn output(cmd: &mut Command) -> (Option<i32>, String, String) {
    let Output { status, stdout, stderr } = tokio::time::timeout(SOON, cmd.output()).await.unwrap().unwrap();
    (
        status.code(),
        String::from_utf8(stdout).unwrap(),
        String::from_utf8(stderr).unwrap(),
    )
}

fn write_config(dir: &Path, body: &str) -> std::path::PathBuf {
    let path = dir.join("agent.toml");
    std::fs::write(&path, body).unwrap();
    path
}

#[tokio::test]
async fn bad_configuration_exits_64_with_the_reason() {
    install_provider();
    let (code, _, err) = output(agent().args(["run", "--config", "/nonexistent/agent.toml"])).await;
    assert_eq!(code, Some(64));
    assert_eq!(
        err.trim(),
        "error: config: /nonexistent/agent.toml is not a readable file"
    );

    // Relative paths resolve next to the file; the certificate is not a vehicle's.
    let pki = Pki::new();
    let partner = pki.issue(
        "partner",
        "parking",
        Some("partner"),
        &[],
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    );
    std::fs::copy(&partner.cert, pki.dir.path().join("p.pem")).unwrap();
    let path = write_config(
        pki.dir.path(),
        "ca_cert = \"ca.pem\"\ncert = \"p.pem\"\nkey = \"partner.key\"\n",
    );
    let (code, _, err) = output(agent().args(["run", "--config"]).arg(&path)).await;
    assert_eq!(code, Some(64));
    assert!(
        err.starts_with("error: cert: ") && err.contains("not a vehicle certificate"),
        "{err}"
    );

    // AGENT_* variables override the file.
    let car = pki.vehicle(VIN);
    let (code, _, err) = output(
        agent()
            .args(["run", "--config"])
            .arg(&path)
            .env("AGENT_CERT", &car.cert)
            .env("AGENT_KEY", &car.key)
            .env("AGENT_KEEP_ALIVE", "1s"),
    )
    .await;
    assert_eq!(code, Some(64));
    assert_eq!(
        err.trim(),
        "error: keep_alive: 1s is out of range: it must be between 5s and 1h"
    );

    // Without a file, the environment alone must name the files.
    let (code, _, err) = output(agent().arg("run")).await;
    assert_eq!(code, Some(64));
    assert!(err.contains("ca_cert"), "{err}");
}

#[tokio::test]
async fn bad_method_or_json_exits_64() {
    let (code, _, err) = output(agent().args(["call", "parking/List", "{}"])).await;
    assert_eq!(code, Some(64));
    assert!(
        err.starts_with("error: ") && err.contains("not a gRPC method path"),
        "{err}"
    );

    let (code, _, err) = output(agent().args(["call", "/parking.v1.ParkingPayment/Teleport", "{}"])).await;
    assert_eq!(code, Some(64));
    assert!(err.contains("no method /parking.v1.ParkingPayment/Teleport"), "{err}");

    let (code, _, err) = output(agent().args(["call", LIST, r#"{"near": 5}"#])).await;
    assert_eq!(code, Some(64));
    assert!(err.contains("parking.v1.ListNearbyLotsRequest"), "{err}");
}

/// Answers every call with a fixed result and remembers the last request's payload.
struct Stub(
    Result<Vec<u8>, Status>,
    std::sync::Mutex<Option<(Bytes, Duration, Option<String>)>>,
);

impl Caller for Stub {
    fn call(
        &self,
        _: MethodPath,
        payload: Bytes,
        timeout: Duration,
        ids: CallIds,
    ) -> BoxFuture<'static, Result<Bytes, Status>> {
        *self.1.lock().unwrap() = Some((payload, timeout, ids.idempotency_key));
        let answer = match &self.0 {
            Ok(b) => Ok(Bytes::from(b.clone())),
            Err(s) => Err(Status::new(s.code(), s.message())),
        };
        Box::pin(async move { answer })
    }
}

async fn stub_agent(answer: Result<Vec<u8>, Status>) -> (String, Arc<Stub>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stub = Arc::new(Stub(answer, Default::default()));
    tokio::spawn(local::serve(
        listener,
        stub.clone(),
        Duration::from_secs(30),
        futures::future::pending(),
    ));
    (url, stub)
}

#[tokio::test]
async fn call_prints_the_response_as_json() {
    install_provider();
    let lots = ListNearbyLotsResponse {
        lots: vec![Lot {
            name: "Lot A".into(),
            free_spaces: 3,
            ..Default::default()
        }],
    };
    let (url, stub) = stub_agent(Ok(lots.encode_to_vec())).await;
    let json = r#"{"near":{"latitude":31.2,"longitude":121.5},"maxResults":3}"#;
    let (code, out, err) = output(agent().args([
        "call",
        LIST,
        json,
        "--agent",
        &url,
        "--timeout",
        "4s",
        "--idempotency-key",
        "k-9",
    ]))
    .await;
    assert_eq!(code, Some(0), "{err}");
    let printed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(printed["lots"][0]["name"], "Lot A");
    assert_eq!(printed["lots"][0]["freeSpaces"], 3);
    assert!(out.contains("\n  "), "pretty-printed: {out}");

    let (payload, timeout, key) = stub.1.lock().unwrap().clone().unwrap();
    assert_eq!(ListNearbyLotsRequest::decode(payload).unwrap().max_results, 3);
    assert!(
        timeout <= Duration::from_secs(4) && timeout > Duration::from_secs(3),
        "{timeout:?}"
    );
    assert_eq!(key.as_deref(), Some("k-9"));
}

#[tokio::test]
async fn call_reports_grpc_errors_and_exits_1() {
    install_provider();
    let (url, _) = stub_agent(Err(Status::new(Code::NotFound, "no such lot"))).await;
    let (code, out, err) = output(agent().args(["call", LIST, "{}", "--agent", &url])).await;
    assert_eq!(code, Some(1));
    assert_eq!(out, "");
    assert_eq!(err.trim(), "error: NotFound: no such lot");

    let url = format!("http://127.0.0.1:{}", free_port());
    let (code, _, err) = output(agent().args(["call", LIST, "{}", "--agent", &url])).await;
    assert_eq!(code, Some(1));
    assert!(err.starts_with("error: Unavailable: "), "{err}");
}

type Log = tokio::io::Lines<BufReader<tokio::process::ChildStderr>>;

/// `vehicle-agent run --config path`, once it has logged that it is connected.
async fn run_until_connected(path: &Path) -> (tokio::process::Child, Log) {
    let mut child = agent()
        .args(["run", "--config"])
        .arg(path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::time::timeout(SOON, async {
        while let Some(line) = log.next_line().await.unwrap() {
            if line.contains("connected to the gateway") {
                return;
            }
        }
        panic!("the agent exited before connecting");
    })
    .await
    .expect("the agent connects");
    (child, log)
}

#[tokio::test]
async fn run_serves_calls_until_sigterm() {
    install_provider();
    if !mosquitto_available() {
        return;
    }
    let pki = Pki::new();
    let broker = Broker::start(&pki, free_port()).await;
    let mut gw = FakeGateway::connect(&pki, broker.port).await;
    let car = pki.vehicle(VIN);
    let local = format!("127.0.0.1:{}", free_port());
    let path = write_config(
        pki.dir.path(),
        &format!(
            "gateway = \"localhost:{}\"\nca_cert = \"ca.pem\"\ncert = {:?}\nkey = {:?}\nlocal_listen = \"{local}\"\nbackoff_initial = \"50ms\"\nstate_dir = \"state\"\n",
            broker.port, car.cert, car.key
        ),
    );
    let (mut child, mut log) = run_until_connected(&path).await;

    let url = format!("http://{local}");
    let call =
        tokio::spawn(async move { output(agent().args(["call", LIST, r#"{"maxResults":1}"#, "--agent", &url])).await });
    let (vin, req) = gw.next_request().await;
    assert_eq!(vin, VIN);
    let lots = ListNearbyLotsResponse {
        lots: vec![Lot {
            name: "Lot B".into(),
            ..Default::default()
        }],
    };
    gw.respond(VIN, Response::ok(req.request_id, lots.encode_to_vec()))
        .await;
    let (code, out, err) = call.await.unwrap();
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("Lot B"), "{out}");

    let pid = child.id().unwrap().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    assert!(killed.success());
    let mut rest = String::new();
    while let Some(line) = tokio::time::timeout(SOON, log.next_line()).await.unwrap().unwrap() {
        rest.push_str(&line);
        rest.push('\n');
    }
    let status = tokio::time::timeout(SOON, child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status:?}\n{rest}");
    assert!(rest.contains("disconnected from the gateway"), "{rest}");
    assert!(!rest.to_lowercase().contains("private key"), "{rest}");
    broker.stop().await;
}

#[tokio::test]
async fn a_call_survives_kill_9_and_result_shows_it() {
    install_provider();
    if !mosquitto_available() {
        return;
    }
    let pki = Pki::new();
    let broker = Broker::start(&pki, free_port()).await;
    let mut gw = FakeGateway::connect(&pki, broker.port).await;
    let car = pki.vehicle(VIN);
    let local = format!("127.0.0.1:{}", free_port());
    let path = write_config(
        pki.dir.path(),
        &format!(
            "gateway = \"localhost:{}\"\nca_cert = \"ca.pem\"\ncert = {:?}\nkey = {:?}\nlocal_listen = \"{local}\"\nbackoff_initial = \"50ms\"\nstate_dir = \"state\"\n",
            broker.port, car.cert, car.key
        ),
    );
    let url = format!("http://{local}");
    let call_args = [
        "call",
        LIST,
        r#"{"maxResults":1}"#,
        "--agent",
        &url,
        "--timeout",
        "60s",
        "--request-id",
        "lots-1",
        "--idempotency-key",
        "intent-9",
    ]
    .map(str::to_owned);

    let (mut child, _log) = run_until_connected(&path).await;
    let call = tokio::spawn({
        let args = call_args.clone();
        async move { output(agent().args(args)).await }
    });
    let (_, sent) = gw.next_request().await;
    assert_eq!(
        (sent.request_id.as_str(), sent.idempotency_key.as_str()),
        ("lots-1", "intent-9")
    );
    // kill -9: no shutdown, no flush; only what was fsynced before the call was sent counts.
    child.kill().await.unwrap();
    let (code, _, _) = call.await.unwrap();
    assert_eq!(code, Some(1));

    let (mut child, _log) = run_until_connected(&path).await;
    let (_, again) = gw.next_request().await;
    assert_eq!(again.request_id, "lots-1");
    assert_eq!(again.idempotency_key, "intent-9");
    assert_eq!(again.payload, sent.payload);
    let (code, out, err) = output(agent().args(["result", "lots-1", "--agent", &url])).await;
    assert_eq!((code, out.as_str()), (Some(0), "PENDING\n"), "{err}");

    let lots = ListNearbyLotsResponse {
        lots: vec![Lot {
            name: "Lot C".into(),
            ..Default::default()
        }],
    };
    gw.respond(VIN, Response::ok("lots-1", lots.encode_to_vec())).await;
    // The app retries the same call: it gets the stored answer (or waits for it).
    let (code, out, err) = output(agent().args(call_args)).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("Lot C"), "{out}");

    let (code, out, err) = output(agent().args(["result", "lots-1", "--agent", &url])).await;
    assert_eq!(code, Some(0), "{err}");
    let (state, json) = out.split_once('\n').unwrap();
    assert_eq!(state, "DONE OK");
    let printed: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(printed["lots"][0]["name"], "Lot C");
    let (code, out, _) = output(agent().args(["result", "nope", "--agent", &url])).await;
    assert_eq!((code, out.as_str()), (Some(0), "UNKNOWN\n"));
    let (code, _, err) = output(agent().args(["result", "a/b", "--agent", &url])).await;
    assert_eq!(code, Some(64), "{err}");

    child.kill().await.unwrap();
    broker.stop().await;
}
