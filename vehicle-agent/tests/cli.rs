//! The `vehicle-agent` binary: exit codes, messages, logs, and full runs against a stand-in
//! gateway.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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

use common::{Goodbye, Pki, Rig, SOON, StandIn, VIN, install_provider, soon};
use proto::parking::v1::{ListNearbyLotsRequest, ListNearbyLotsResponse, Lot};
use proto::vehicle::v1::Response;
use vehicle_agent::local::{self, AppCall, Caller};

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

fn write_config(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("agent.toml");
    std::fs::write(&path, body).unwrap();
    path
}

/// `agent.toml` for car [`VIN`] of `pki` dialling `gateway`, with its local endpoint on a
/// port of its choosing, and the CA, its state and its socket given relative to the file.
fn car_config_file(pki: &Pki, gateway: &str) -> PathBuf {
    let mut config = pki.agent_config(VIN, gateway);
    config.ca_cert = "ca.pem".into();
    config.state_dir = "state".into();
    config.local_socket = Some("agent.sock".into());
    config.backoff_max = Duration::from_millis(100);
    write_config(pki.dir.path(), &toml::to_string(&config).unwrap())
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
    let partner = pki.partner("parking");
    std::fs::copy(&partner.cert, pki.dir.path().join("p.pem")).unwrap();
    let path = write_config(
        pki.dir.path(),
        "ca_cert = \"ca.pem\"\ncert = \"p.pem\"\nkey = \"parking.key\"\n",
    );
    let (code, _, err) = output(agent().args(["run", "--config"]).arg(&path)).await;
    assert_eq!(code, Some(64));
    assert!(
        err.starts_with("error: cert: ") && err.contains("not a vehicle certificate"),
        "{err}"
    );

    // AGENT_* variables override the file: the car's certificate, and a bad setting.
    let car = pki.vehicle(VIN);
    let refused_with = async |name: &str, value: &str| {
        let (code, _, err) = output(
            agent()
                .args(["run", "--config"])
                .arg(&path)
                .env("AGENT_CERT", &car.cert)
                .env("AGENT_KEY", &car.key)
                .env(name, value),
        )
        .await;
        assert_eq!(code, Some(64), "{name}={value}");
        err
    };
    let err = refused_with("AGENT_KEEP_ALIVE", "1s").await;
    assert_eq!(
        err.trim(),
        "error: keep_alive: 1s is out of range: it must be between 5s and 1h"
    );

    // A list from the environment, in TOML's array syntax.
    let err = refused_with("AGENT_SERVICES", r#"["karaoke.v1.Karaoke", "Karaoke"]"#).await;
    assert!(
        err.trim()
            .starts_with(r#"error: services: "Karaoke" is not a fully qualified gRPC service"#),
        "{err}"
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
    fn call(&self, call: AppCall) -> BoxFuture<'static, Result<Bytes, Status>> {
        *self.1.lock().unwrap() = Some((call.payload, call.timeout, call.ids.idempotency_key));
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
    let server = local::LocalServer {
        caller: stub.clone(),
        services: vec!["parking.v1.ParkingPayment".into()],
        api: None,
        default_timeout: Duration::from_secs(30),
    };
    tokio::spawn(server.serve_tcp(listener, futures::future::pending()));
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

    // No agent there.
    let nowhere = tempfile::tempdir().unwrap();
    let socket = nowhere.path().join("agent.sock");
    let (code, _, err) = output(agent().args(["call", LIST, "{}", "--socket"]).arg(&socket)).await;
    assert_eq!(code, Some(1));
    assert!(err.starts_with("error: Unavailable: "), "{err}");
    assert!(err.contains(&socket.display().to_string()), "{err}");
}

#[tokio::test]
async fn a_weak_app_token_exits_64_without_echoing_it() {
    let (code, _, err) = output(agent().args(["result", "r-1", "--app-token", "hunter2"])).await;
    assert_eq!(code, Some(64));
    assert!(
        err.starts_with("error: --app-token: x-app-token must be 16 to 1024"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
    let (code, _, err) =
        output(agent().args(["result", "r-1", "--socket", "/run/a.sock", "--agent", "http://x"])).await;
    assert_eq!(code, Some(2), "--socket or --agent, not both: {err}");
}

type Log = tokio::io::Lines<BufReader<tokio::process::ChildStderr>>;

/// A running `vehicle-agent run`, its log so far, and where apps reach it.
struct RunningAgent {
    child: tokio::process::Child,
    log: Log,
    lines: Vec<String>,
    /// `http://<local_addr>`, read back from its log: it listens on a port of its choosing.
    url: String,
}

impl RunningAgent {
    /// `vehicle-agent run --config path` (logs as `RUST_LOG` says, if given), once it has
    /// logged that it is connected.
    async fn start(path: &Path, rust_log: Option<&str>) -> RunningAgent {
        let mut cmd = agent();
        cmd.args(["run", "--config"])
            .arg(path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        match rust_log {
            Some(filter) => cmd.env("RUST_LOG", filter),
            None => cmd.env_remove("RUST_LOG"),
        };
        let mut child = cmd.spawn().unwrap();
        let log = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut agent = RunningAgent {
            child,
            log,
            lines: Vec::new(),
            url: String::new(),
        };
        let started = agent.wait_for("vehicle agent started").await;
        let addr = started
            .split_whitespace()
            .find_map(|field| field.strip_prefix("local_addr="))
            .and_then(|addr| addr.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| panic!("no local_addr in {started:?}"));
        agent.url = format!("http://{addr}");
        // The link may connect before the local endpoint is announced, or after it.
        if !agent.lines.iter().any(|l| l.contains("connected to the gateway")) {
            agent.wait_for("connected to the gateway").await;
        }
        agent
    }

    /// Reads the log up to the next line containing `text`, and returns that line.
    async fn wait_for(&mut self, text: &str) -> String {
        let log = &mut self.log;
        let lines = &mut self.lines;
        let found = tokio::time::timeout(SOON, async {
            while let Some(line) = log.next_line().await.unwrap() {
                lines.push(line.clone());
                if line.contains(text) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            Ok(None) => panic!("the agent exited before logging {text:?}:\n{}", lines.join("\n")),
            Err(_) => panic!(
                "the agent did not log {text:?} within {SOON:?}; its log:\n{}",
                lines.join("\n")
            ),
        }
    }

    /// SIGTERM, then the rest of its log; it must exit successfully.
    async fn terminate(mut self) -> String {
        let pid = self.child.id().unwrap().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
        assert!(killed.success());
        while let Some(line) = soon("the agent's log ends", self.log.next_line()).await.unwrap() {
            self.lines.push(line);
        }
        let log = self.lines.join("\n");
        let status = soon("the agent exits", self.child.wait()).await.unwrap();
        assert!(status.success(), "{status:?}\n{log}");
        log
    }
}

const TOKEN: &str = "token-of-the-parking-app";

#[tokio::test]
async fn run_serves_calls_until_sigterm() {
    let mut rig = Rig::with_stand_in().await;
    let path = car_config_file(&rig.pki, &rig.gateway.address());
    let socket = rig.pki.dir.path().join("agent.sock");
    let running = RunningAgent::start(&path, Some("info,vehicle_agent=debug")).await;
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o660, "the socket is for the agent's user and group only");

    // An app on TCP with its token (from the environment, as apps' launchers set it).
    let url = running.url.clone();
    let call = tokio::spawn(async move {
        output(
            agent()
                .args([
                    "call",
                    LIST,
                    r#"{"maxResults":1}"#,
                    "--agent",
                    &url,
                    "--request-id",
                    "lots-7",
                ])
                .env("AGENT_APP_TOKEN", TOKEN),
        )
        .await
    });
    let (vin, req) = rig.gateway.next_request().await;
    assert_eq!(vin, VIN);
    let lots = ListNearbyLotsResponse {
        lots: vec![Lot {
            name: "Lot B".into(),
            ..Default::default()
        }],
    };
    rig.gateway
        .respond(VIN, Response::ok(req.request_id, lots.encode_to_vec()))
        .await;
    let (code, out, err) = call.await.unwrap();
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("Lot B"), "{out}");

    // Its result is the token's: other apps see nothing there.
    let result = |token: Option<&str>| {
        let mut cmd = agent();
        cmd.args(["result", "lots-7", "--agent", &running.url]);
        if let Some(token) = token {
            cmd.args(["--app-token", token]);
        }
        cmd
    };
    let (code, out, err) = output(&mut result(Some(TOKEN))).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("DONE OK\n") && out.contains("Lot B"), "{out}");
    for other in [Some("token-of-some-other-app"), None] {
        let (code, out, err) = output(&mut result(other)).await;
        assert_eq!((code, out.as_str()), (Some(0), "UNKNOWN\n"), "{other:?}: {err}");
    }
    let (_, out, _) = output(agent().args(["result", "lots-7", "--socket"]).arg(&socket)).await;
    assert_eq!(out, "UNKNOWN\n", "the socket's user is another app than the token's");

    let log = running.terminate().await;
    assert!(log.contains("disconnected from the gateway"), "{log}");
    assert!(!log.to_lowercase().contains("private key"), "{log}");
    assert!(!log.contains(TOKEN), "the app's token is never logged:\n{log}");
    assert!(
        !log.contains('\x1b'),
        "no colour codes when stderr is not a terminal:\n{log}"
    );
    assert!(!socket.exists(), "the socket is removed at shutdown");
}

#[tokio::test]
async fn a_call_survives_kill_9_and_result_shows_it() {
    let mut rig = Rig::with_stand_in().await;
    let path = car_config_file(&rig.pki, &rig.gateway.address());
    let socket = rig.pki.dir.path().join("agent.sock");
    let on_socket = |args: &[&str]| {
        let mut cmd = agent();
        cmd.args(args).arg("--socket").arg(&socket);
        cmd
    };
    let call_args = [
        "call",
        LIST,
        r#"{"maxResults":1}"#,
        "--timeout",
        "60s",
        "--request-id",
        "lots-1",
        "--idempotency-key",
        "intent-9",
    ];

    let mut running = RunningAgent::start(&path, None).await;
    let mut call = on_socket(&call_args);
    let call = tokio::spawn(async move { output(&mut call).await });
    let (_, sent) = rig.gateway.next_request().await;
    assert_eq!(
        (sent.request_id.as_str(), sent.idempotency_key.as_str()),
        ("lots-1", "intent-9")
    );
    // kill -9: no shutdown, no flush; only what was fsynced before the call was sent counts.
    running.child.kill().await.unwrap();
    let (code, _, _) = call.await.unwrap();
    assert_eq!(code, Some(1));
    assert!(socket.exists(), "a killed agent leaves its socket file");

    // The next agent replaces the dead socket and sends the request again.
    let mut running = RunningAgent::start(&path, None).await;
    let (_, again) = rig.gateway.next_request().await;
    assert_eq!(again.request_id, "lots-1");
    assert_eq!(again.idempotency_key, "intent-9");
    assert_eq!(again.payload, sent.payload);
    let (code, out, err) = output(&mut on_socket(&["result", "lots-1"])).await;
    assert_eq!((code, out.as_str()), (Some(0), "PENDING\n"), "{err}");

    let lots = ListNearbyLotsResponse {
        lots: vec![Lot {
            name: "Lot C".into(),
            ..Default::default()
        }],
    };
    rig.gateway
        .respond(VIN, Response::ok("lots-1", lots.encode_to_vec()))
        .await;
    // The app retries the same call: it gets the stored answer (or waits for it).
    let (code, out, err) = output(&mut on_socket(&call_args)).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("Lot C"), "{out}");

    let (code, out, err) = output(&mut on_socket(&["result", "lots-1"])).await;
    assert_eq!(code, Some(0), "{err}");
    let (state, json) = out.split_once('\n').unwrap();
    assert_eq!(state, "DONE OK");
    let printed: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(printed["lots"][0]["name"], "Lot C");
    // Another app (here: anonymous, on TCP) does not see it.
    let (code, out, _) = output(agent().args(["result", "lots-1", "--agent", &running.url])).await;
    assert_eq!((code, out.as_str()), (Some(0), "UNKNOWN\n"));
    let (code, out, _) = output(&mut on_socket(&["result", "nope"])).await;
    assert_eq!((code, out.as_str()), (Some(0), "UNKNOWN\n"));
    let (code, _, err) = output(&mut on_socket(&["result", "a/b"])).await;
    assert_eq!(code, Some(64), "{err}");

    running.child.kill().await.unwrap();
}

/// The sequences of the next `n` events an app of the agent at `url` is shown after `after`.
async fn events_shown(url: &str, after_sequence: u64, n: usize) -> Vec<u64> {
    use proto::agent::v1::{SubscribeEventsRequest, vehicle_agent_client::VehicleAgentClient};
    let mut app = VehicleAgentClient::connect(url.to_owned()).await.unwrap();
    let mut stream = app
        .subscribe_events(SubscribeEventsRequest { after_sequence })
        .await
        .unwrap()
        .into_inner();
    let mut shown = Vec::new();
    while shown.len() < n {
        let event = soon("an event reaches the app", stream.message()).await.unwrap();
        shown.push(event.expect("the stream goes on").sequence);
    }
    shown
}

/// The stand-in delivers events `sequences` to the car, as the gateway does.
async fn deliver(gw: &StandIn, sequences: std::ops::RangeInclusive<u64>) {
    let topic = proto::topics::events(&VIN.parse().unwrap());
    for sequence in sequences {
        let event = proto::vehicle::v1::Event {
            partner: "parking.v1.ParkingPayment".into(),
            kind: format!("kind-{sequence}"),
            payload: vec![],
            sequence,
        };
        gw.publish(&topic, event.encode_to_vec()).await;
    }
}

#[tokio::test]
async fn events_survive_kill_9_and_reach_the_app_once() {
    use proto::agent::v1::{AckEventsRequest, vehicle_agent_client::VehicleAgentClient};
    let mut rig = Rig::with_stand_in().await;
    let path = car_config_file(&rig.pki, &rig.gateway.address());
    // Shown to an app (so on disk), not acknowledged, then kill -9.
    let mut running = RunningAgent::start(&path, None).await;
    deliver(&rig.gateway, 1..=3).await;
    assert_eq!(events_shown(&running.url, 0, 3).await, [1, 2, 3]);
    running.child.kill().await.unwrap();

    // The gateway redelivers them; the app that subscribes to the restarted agent gets each
    // once, in order, then the new one.
    let mut running = RunningAgent::start(&path, None).await;
    deliver(&rig.gateway, 1..=4).await;
    assert_eq!(events_shown(&running.url, 0, 4).await, [1, 2, 3, 4]);
    let mut app = VehicleAgentClient::connect(running.url.clone()).await.unwrap();
    let acked = app.ack_events(AckEventsRequest { up_to_sequence: 4 }).await.unwrap();
    assert_eq!(acked.into_inner().kept, 0);
    assert_eq!(rig.gateway.next_ack().await.1.sequence, 4, "the first ack is the app's");
    running.child.kill().await.unwrap();

    // Nothing taken comes back after another kill -9: the redelivered 4 is acknowledged again.
    let mut running = RunningAgent::start(&path, None).await;
    deliver(&rig.gateway, 4..=5).await;
    assert_eq!(rig.gateway.next_ack().await.1.sequence, 4);
    assert_eq!(events_shown(&running.url, 0, 1).await, [5]);
    running.child.kill().await.unwrap();
}

#[tokio::test]
async fn a_gateway_hanging_up_is_a_warning_and_the_agent_reconnects() {
    let pki = Pki::new();
    let gateway = StandIn::start(&pki).await;
    let path = car_config_file(&pki, &gateway.address());
    // The default log filter, as deployed.
    let mut running = RunningAgent::start(&path, None).await;
    for goodbye in [Goodbye::Disconnect, Goodbye::Close] {
        gateway.hang_up(goodbye);
        running.wait_for("disconnected from the gateway").await;
        running.wait_for("connected to the gateway").await;
    }
    let log = running.terminate().await;

    let disconnections: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("disconnected from the gateway") && l.contains("reason"))
        .collect();
    assert_eq!(disconnections.len(), 2, "{log}");
    let said = |line: &str, reason: &str| line.contains(" WARN ") && line.contains(reason);
    assert!(
        said(disconnections[0], "reason=\"the gateway sent DISCONNECT\""),
        "{log}"
    );
    assert!(
        said(disconnections[1], "reason=\"the gateway closed the connection"),
        "{log}"
    );
    assert_eq!(
        log.matches("connected to the gateway gateway").count(),
        3,
        "once per connection:\n{log}"
    );
    assert!(!log.contains("ERROR"), "a gateway hanging up is not an error:\n{log}");
    assert!(
        !log.contains('\x1b'),
        "no colour codes when stderr is not a terminal:\n{log}"
    );
}
