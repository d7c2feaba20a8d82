//! Whose results an in-car app sees, over the agent's real Unix socket and TCP endpoint: an
//! app on the socket is its uid, an app on TCP its `x-app-token`, or anonymous without one.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use common::Offline;
use proto::agent::v1::vehicle_agent_client::VehicleAgentClient;
use proto::agent::v1::{GetResultRequest, ResultState};
use proto::parking::v1::StartSessionRequest;
use proto::parking::v1::parking_payment_client::ParkingPaymentClient;
use vehicle_agent::Agent;

/// An in-car app: a connection to the agent and, on TCP, perhaps a token.
struct App {
    name: &'static str,
    channel: Channel,
    token: Option<&'static str>,
}

impl App {
    async fn on_socket(name: &'static str, socket: &Path) -> App {
        let channel = Endpoint::from_shared(format!("unix://{}", socket.display()))
            .unwrap()
            .connect()
            .await
            .unwrap();
        App {
            name,
            channel,
            token: None,
        }
    }

    async fn on_tcp(name: &'static str, addr: SocketAddr, token: Option<&'static str>) -> App {
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        App { name, channel, token }
    }

    fn request<T>(&self, message: T, request_id: &str) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let metadata = request.metadata_mut();
        metadata.insert("x-request-id", MetadataValue::try_from(request_id).unwrap());
        if let Some(token) = self.token {
            metadata.insert("x-app-token", MetadataValue::from_static(token));
        }
        request
    }

    /// Pays for parking with `request_id`, waiting at most `timeout`.
    async fn pay(&self, request_id: &str, timeout: Duration) -> Result<(), tonic::Status> {
        let message = StartSessionRequest {
            lot_id: "lot-1".into(),
            plate: "沪A12345".into(),
        };
        let mut request = self.request(message, request_id);
        request.set_timeout(timeout);
        ParkingPaymentClient::new(self.channel.clone())
            .start_session(request)
            .await
            .map(drop)
    }

    /// What the agent tells this app of `request_id`.
    async fn result(&self, request_id: &str) -> ResultState {
        let message = GetResultRequest {
            request_id: request_id.into(),
        };
        let request = self.request(message, request_id);
        let answer = VehicleAgentClient::new(self.channel.clone())
            .get_result(request)
            .await
            .unwrap();
        answer.into_inner().state()
    }
}

/// A car whose gateway never answers, serving apps on TCP and on a socket in `dir`.
async fn agent_with_a_socket(car: &Offline, dir: &Path) -> (Agent, PathBuf) {
    let socket = dir.join("agent.sock");
    let mut config = car.car_config();
    config.local_socket = Some(socket.clone());
    let agent = Agent::start(config).await.unwrap();
    assert_eq!(agent.local_socket(), Some(socket.as_path()));
    (agent, socket)
}

#[tokio::test]
async fn an_app_sees_its_own_results_only() {
    let car = Offline::new();
    let (agent, socket) = agent_with_a_socket(&car, car.pki.dir.path()).await;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660);

    let addr = agent.local_addr();
    let apps = [
        App::on_socket("the socket's user", &socket).await,
        App::on_tcp("app A", addr, Some("token-of-app-a-0001")).await,
        App::on_tcp("app B", addr, Some("token-of-app-b-0002")).await,
        App::on_tcp("an anonymous app", addr, None).await,
    ];
    let ids = ["sock-1", "a-1", "b-1", "anon-1"];
    // Nothing answers: each payment ends DEADLINE_EXCEEDED, and that is its stored result. The
    // app's own gRPC client enforces the same deadline and, on a loaded machine, may give up
    // first (CANCELLED): either way the app learns its deadline passed.
    for (app, id) in apps.iter().zip(ids) {
        let e = app.pay(id, Duration::from_millis(300)).await.unwrap_err();
        assert!(
            matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled),
            "{}: {e:?}",
            app.name
        );
    }
    // And app A has one still pending.
    let pending = tokio::spawn({
        let a = App::on_tcp("app A", addr, Some("token-of-app-a-0001")).await;
        async move { a.pay("a-2", Duration::from_secs(600)).await }
    });
    common::soon("a-2 is accepted", async {
        while apps[1].result("a-2").await != ResultState::Pending {
            tokio::task::yield_now().await;
        }
    })
    .await;

    for (reader, own) in apps.iter().zip(ids) {
        for id in ids {
            let expected = if id == own {
                ResultState::Done
            } else {
                ResultState::Unknown
            };
            assert_eq!(reader.result(id).await, expected, "{} reads {id}", reader.name);
        }
        let expected = if reader.name == "app A" {
            ResultState::Pending
        } else {
            ResultState::Unknown
        };
        assert_eq!(reader.result("a-2").await, expected, "{} reads a-2", reader.name);
    }

    // Another app's request id cannot be used, and the refusal tells nothing of the request.
    for (app, id) in [(&apps[2], "a-1"), (&apps[0], "a-2"), (&apps[3], "b-1")] {
        let e = app.pay(id, Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{} pays with {id}: {e:?}", app.name);
        assert!(
            !e.message().contains("StartSession") && !e.message().contains("token"),
            "{e:?}"
        );
    }
    // A token too weak to tell apps apart is refused.
    let weak = App::on_tcp("a weak app", addr, Some("1234")).await;
    let e = weak.pay("w-1", Duration::from_secs(5)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    agent.shutdown().await;
    assert!(pending.await.unwrap().is_err());
    assert!(!socket.exists(), "the socket is removed at shutdown");
}

#[tokio::test]
async fn another_user_on_the_socket_is_another_app() {
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap());
    assert_eq!(
        uid, 0,
        "this test runs the CLI as user nobody (65534) to be another app on the socket: run the tests as root, as CI does"
    );
    let car = Offline::new();
    // Reachable by nobody: a directory others may enter, and a socket others may open.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (agent, socket) = agent_with_a_socket(&car, dir.path()).await;
    let root = App::on_socket("root", &socket).await;
    root.pay("mine", Duration::from_millis(200)).await.unwrap_err();
    assert_eq!(root.result("mine").await, ResultState::Done);
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();

    let result_as = |uid: u32| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_vehicle-agent"));
        cmd.args(["result", "mine", "--socket"]).arg(&socket).uid(uid).gid(uid);
        async move { common::soon("the CLI answers", cmd.output()).await.unwrap() }
    };
    let nobody = result_as(65534).await;
    let (out, err) = (
        String::from_utf8_lossy(&nobody.stdout),
        String::from_utf8_lossy(&nobody.stderr),
    );
    assert_eq!(out, "UNKNOWN\n", "{err}");
    let owner = result_as(0).await;
    let out = String::from_utf8_lossy(&owner.stdout);
    assert!(out.starts_with("DONE DeadlineExceeded: "), "{out}");
    agent.shutdown().await;
}

#[tokio::test]
async fn a_socket_in_use_is_refused_and_a_dead_one_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let first = Offline::new();
    let (agent, socket) = agent_with_a_socket(&first, dir.path()).await;

    // A second agent (its own state directory) must not take a live socket over.
    let second = Offline::new();
    let mut config = second.car_config();
    config.local_socket = Some(socket.clone());
    let e = format!("{:#}", Agent::start(config.clone()).await.unwrap_err());
    assert!(
        e.starts_with("local_socket: cannot serve on ") && e.contains("is in use"),
        "{e}"
    );
    assert!(socket.exists());
    agent.shutdown().await;
    assert!(!socket.exists());

    // A socket file whose agent died is replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let agent = Agent::start(config.clone()).await.unwrap();
    let app = App::on_socket("an app", &socket).await;
    assert_eq!(app.result("nothing-yet").await, ResultState::Unknown);
    agent.shutdown().await;

    // Anything else at that path is left alone.
    std::fs::write(&socket, b"not a socket").unwrap();
    let e = format!("{:#}", Agent::start(config).await.unwrap_err());
    assert!(e.contains("exists and is not a socket"), "{e}");
    assert_eq!(std::fs::read(&socket).unwrap(), b"not a socket");
}
