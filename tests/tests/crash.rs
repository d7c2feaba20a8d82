//! kill -9 mid-payment, of the gateway or of the agent: the driver is charged exactly once and
//! sees the result. Real processes (the binaries cargo built for this run), killed with SIGKILL
//! and started again on the same listening socket, which the test holds throughout, on SQLite
//! and on PostgreSQL.

use std::time::Duration;

use integration_tests::*;
use proto::agent::v1::vehicle_agent_client::VehicleAgentClient;
use proto::agent::v1::{GetResultRequest, ResultState};
use proto::parking::v1::EndSessionRequest;
use proto::parking::v1::parking_payment_client::ParkingPaymentClient;

#[derive(Clone, Copy, Debug)]
enum Db {
    Sqlite,
    Postgres,
}

impl Db {
    fn url(self, pki: &TestPki) -> String {
        match self {
            Db::Sqlite => sqlite_url(pki),
            Db::Postgres => integration_tests::postgres::schema_url(),
        }
    }
}

/// `binary run --config config` as a process serving on `port` (handed over: socket
/// activation), once it has printed `ready`.
async fn started(binary: Binary, config: &std::path::Path, port: &KeptPort, ready: &str) -> Process {
    let args = ["run", "--config", config.to_str().unwrap()];
    let mut process = Process::spawn_on(binary, &args, port.socket());
    process.wait_for_line("(socket activation)").await;
    process.wait_for_line(ready).await;
    process
}

/// The gateway as a process, serving vehicles on `port`, once it is listening.
async fn gateway_process(config: &std::path::Path, port: &KeptPort) -> Process {
    started(built_binary!("gateway"), config, port, "gateway listening").await
}

/// The agent as a process, serving apps on `port`, once it is connected.
async fn agent_process(config: &std::path::Path, port: &KeptPort) -> Process {
    started(built_binary!("vehicle-agent"), config, port, "connected to the gateway").await
}

/// Paying for the session `session_id` as request `pay-123`, waiting up to a minute.
fn pay(session_id: String) -> tonic::Request<EndSessionRequest> {
    let mut request = tonic::Request::new(EndSessionRequest { session_id });
    request
        .metadata_mut()
        .insert("x-request-id", "pay-123".parse().unwrap());
    request.set_timeout(Duration::from_secs(60));
    request
}

async fn gateway_killed_mid_payment(db: Db) {
    let (platform, partner) = Platform::start_scripted(ScriptedParking::holding_ends).await;
    // The in-process gateway of the platform is not used: this one runs as a process.
    let port = KeptPort::bind();
    let mut config = platform.config.clone();
    config.mqtt.listen = port.addr();
    config.storage.url = db.url(&platform.pki);
    let config = write_gateway_toml(&platform.pki, &config);
    let gateway = gateway_process(&config, &port).await;

    let mut agent_config = platform.agent_config(VIN_A);
    agent_config.gateway = port.dial();
    let car = connected_agent(agent_config).await;
    let mut app = in_car_app(&car).await;
    let session = park_from_the_app(&mut app).await;

    let arrived = partner.end_arrived();
    let call = tokio::spawn(async move { app.end_session(pay(session.session_id)).await });
    within(SOON, arrived, "the payment reaches the partner").await;

    gateway.kill9().await;
    // The partner finishes the charge; its answer has no gateway to go back to.
    partner.release(10);
    let _gateway = gateway_process(&config, &port).await;

    let ended = within(Duration::from_secs(30), call, "the result after the gateway restarts")
        .await
        .unwrap();
    let receipt = ended.expect("payment completes").into_inner().receipt.expect("receipt");
    assert!(!receipt.receipt_id.is_empty());
    assert_eq!(platform.parking.charges(), 1, "charged exactly once");
    car.shutdown().await;
}

async fn agent_killed_mid_payment(db: Db) {
    let (platform, partner) =
        Platform::start_scripted_with(ScriptedParking::holding_ends, |pki, c| c.storage.url = db.url(pki)).await;
    // The agent runs as a process, serving apps on a port the test holds across its lives.
    let apps = KeptPort::bind();
    let mut config = platform.agent_config(VIN_A);
    config.local_listen = apps.addr();
    let config = write_agent_toml(&platform.pki, &config);
    let agent = agent_process(&config, &apps).await;
    let url = format!("http://{}", apps.addr());
    let mut app = ParkingPaymentClient::connect(url.clone()).await.unwrap();
    let session = park_from_the_app(&mut app).await;

    let arrived = partner.end_arrived();
    let first = tokio::spawn({
        let mut app = app.clone();
        let request = pay(session.session_id.clone());
        async move { app.end_session(request).await }
    });
    within(SOON, arrived, "the payment reaches the partner").await;
    agent.kill9().await;
    assert!(first.await.unwrap().is_err(), "the app loses its call with the agent");
    // The gateway completes the payment while the car's unit is down.
    partner.release(10);

    let _agent = agent_process(&config, &apps).await;
    // The app asks again under the same request id, on the same port, and gets the outcome.
    let mut app = ParkingPaymentClient::connect(url.clone()).await.unwrap();
    let ended = within(
        Duration::from_secs(30),
        app.end_session(pay(session.session_id)),
        "the result after the restart",
    )
    .await
    .expect("payment result");
    assert!(ended.into_inner().receipt.is_some());
    let asked = GetResultRequest {
        request_id: "pay-123".into(),
    };
    let mut agent_api = VehicleAgentClient::connect(url).await.unwrap();
    assert_eq!(
        agent_api.get_result(asked).await.unwrap().into_inner().state(),
        ResultState::Done
    );
    assert_eq!(platform.parking.charges(), 1, "charged exactly once");
}

/// Runs each named `async fn(Db)` as two tests: `sqlite::NAME` and `postgres::NAME`.
macro_rules! on_both_databases {
    ($($case:ident),+) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $case() {
                super::$case(super::Db::Sqlite).await
            })+
        }
        mod postgres {
            $(#[tokio::test]
            async fn $case() {
                super::$case(super::Db::Postgres).await
            })+
        }
    };
}

on_both_databases!(gateway_killed_mid_payment, agent_killed_mid_payment);

#[tokio::test]
async fn an_unreachable_database_at_startup_is_a_clear_error_and_exit_69() {
    init();
    let pki = TestPki::new();
    let mut config = gateway_config(&pki, vec![]);
    config.storage.url = "postgres://postgres:s3cret@127.0.0.1:1/test".into();
    let path = write_gateway_toml(&pki, &config);
    let gateway = Process::spawn(built_binary!("gateway"), &["run", "--config", path.to_str().unwrap()]);
    let (code, output) = gateway.exit().await;
    assert_eq!(code, Some(69), "{output}");
    assert!(output.contains("127.0.0.1:1"), "names the database: {output}");
    assert!(!output.contains("s3cret"), "never prints the password: {output}");
}
