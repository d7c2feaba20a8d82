//! kill -9 mid-payment, of the gateway or of the agent: the driver is charged exactly once and
//! sees the result. Real processes, killed with SIGKILL, on SQLite and on PostgreSQL.

use std::time::Duration;

use integration_tests::*;
use proto::parking::v1::EndSessionRequest;
use proto::parking::v1::parking_payment_client::ParkingPaymentClient;

#[derive(Clone, Copy, Debug)]
enum Db {
    Sqlite,
    Postgres,
}

fn storage(pki: &TestPki, db: Db) -> String {
    match db {
        Db::Sqlite => format!("sqlite://{}", pki.dir.path().join("gateway.db").display()),
        Db::Postgres => postgres_schema_url(),
    }
}

async fn start_gateway_process(config_path: &std::path::Path) -> Process {
    let mut gateway = Process::spawn("gateway", &["run", "--config", config_path.to_str().unwrap()], &[]);
    gateway.wait_for_line("gateway listening").await;
    gateway
}

async fn gateway_killed_mid_payment(db: Db) {
    let (platform, partner) = Platform::start_scripted(ScriptedParking::holding_ends).await;
    // The in-process gateway of the platform is not used: this one runs as a process.
    let port = free_port();
    let mut config = gateway_config(
        &platform.pki,
        vec![partner_entry(&platform.pki, PARKING, platform.parking_server.addr)],
    );
    config.mqtt.listen = format!("127.0.0.1:{port}").parse().unwrap();
    config.storage.url = storage(&platform.pki, db);
    let config_path = write_gateway_toml(&platform.pki, &config);
    let gateway = start_gateway_process(&config_path).await;

    let mut agent_config = platform.agent_config(VIN_A);
    agent_config.gateway = format!("localhost:{port}");
    agent_config.state_dir = platform.pki.dir.path().join("agent-state");
    let car = vehicle_agent::Agent::start(agent_config).await.unwrap();
    within(Duration::from_secs(10), car.wait_connected(), "agent connects").await;
    let mut app = in_car_app(&car).await;
    let session = park_from_the_app(&mut app).await;

    let arrived = partner.end_arrived();
    let mut request = tonic::Request::new(EndSessionRequest {
        session_id: session.session_id,
    });
    request.set_timeout(Duration::from_secs(60));
    let call = tokio::spawn(async move { app.end_session(request).await });
    within(Duration::from_secs(10), arrived, "payment reaches the partner").await;

    gateway.kill9().await;
    // The partner finishes the charge; its answer has no gateway to go back to.
    partner.release(10);
    let _gateway = start_gateway_process(&config_path).await;

    let ended = within(Duration::from_secs(30), call, "result after the gateway restarts")
        .await
        .unwrap();
    let receipt = ended.expect("payment completes").into_inner().receipt.expect("receipt");
    assert!(!receipt.receipt_id.is_empty());
    assert_eq!(platform.parking.charges(), 1, "charged exactly once");
    car.shutdown().await;
}

#[tokio::test]
async fn gateway_killed_mid_payment_on_sqlite() {
    gateway_killed_mid_payment(Db::Sqlite).await;
}

#[tokio::test]
async fn gateway_killed_mid_payment_on_postgres() {
    gateway_killed_mid_payment(Db::Postgres).await;
}

async fn agent_killed_mid_payment(db: Db) {
    let (platform, partner) = Platform::start_scripted(|p| p.holding_ends()).await;
    // Use the requested database for the platform's gateway too.
    let mut config = gateway_config(
        &platform.pki,
        vec![partner_entry(&platform.pki, PARKING, platform.parking_server.addr)],
    );
    config.storage.url = storage(&platform.pki, db);
    let gateway = start_gateway(config).await;

    let me = platform.pki.vehicle(VIN_A);
    let local_port = free_port();
    let state_dir = platform.pki.dir.path().join("agent-state");
    let toml = format!(
        "gateway = \"localhost:{}\"\nca_cert = {:?}\ncert = {:?}\nkey = {:?}\nlocal_listen = \"127.0.0.1:{local_port}\"\nstate_dir = {:?}\nbackoff_initial = \"50ms\"\nbackoff_max = \"500ms\"\n",
        gateway.mqtt_addr().port(),
        platform.pki.ca_cert,
        me.cert,
        me.key,
        state_dir
    );
    let agent_toml = platform.pki.dir.path().join("agent.toml");
    std::fs::write(&agent_toml, toml).unwrap();
    let start_agent = || async {
        let mut agent = Process::spawn("vehicle-agent", &["run", "--config", agent_toml.to_str().unwrap()], &[]);
        agent.wait_for_line("connected to the gateway").await;
        agent
    };
    let agent = start_agent().await;
    let url = format!("http://127.0.0.1:{local_port}");
    let mut app = ParkingPaymentClient::connect(url.clone()).await.unwrap();
    let session = park_from_the_app(&mut app).await;

    let arrived = partner.end_arrived();
    let pay = |session_id: String| {
        let mut r = tonic::Request::new(EndSessionRequest { session_id });
        r.metadata_mut().insert("x-request-id", "pay-123".parse().unwrap());
        r.set_timeout(Duration::from_secs(60));
        r
    };
    let first = tokio::spawn({
        let mut app = app.clone();
        let request = pay(session.session_id.clone());
        async move { app.end_session(request).await }
    });
    within(Duration::from_secs(10), arrived, "payment reaches the partner").await;
    agent.kill9().await;
    assert!(first.await.unwrap().is_err(), "the app loses its call with the agent");
    // The gateway completes the payment while the car's unit is down.
    partner.release(10);

    let _agent = start_agent().await;
    // The restarted app asks again under the same request id and gets the outcome.
    let mut app = ParkingPaymentClient::connect(url.clone()).await.unwrap();
    let ended = within(
        Duration::from_secs(30),
        app.end_session(pay(session.session_id)),
        "result after restart",
    )
    .await
    .expect("payment result");
    assert!(ended.into_inner().receipt.is_some());
    let mut agent_api = proto::agent::v1::vehicle_agent_client::VehicleAgentClient::connect(url)
        .await
        .unwrap();
    let result = agent_api
        .get_result(proto::agent::v1::GetResultRequest {
            request_id: "pay-123".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(result.state(), proto::agent::v1::ResultState::Done);
    assert_eq!(platform.parking.charges(), 1, "charged exactly once");
    gateway.shutdown().await;
}

#[tokio::test]
async fn agent_killed_mid_payment_on_sqlite() {
    agent_killed_mid_payment(Db::Sqlite).await;
}

#[tokio::test]
async fn agent_killed_mid_payment_on_postgres() {
    agent_killed_mid_payment(Db::Postgres).await;
}

#[tokio::test]
async fn an_unreachable_database_at_startup_is_a_clear_error_and_exit_69() {
    init();
    let pki = TestPki::new();
    let mut config = gateway_config(&pki, vec![]);
    config.storage.url = "postgres://postgres:s3cret@127.0.0.1:1/test".into();
    let path = write_gateway_toml(&pki, &config);
    let gateway = Process::spawn("gateway", &["run", "--config", path.to_str().unwrap()], &[]);
    let (code, output) = gateway.exit().await;
    assert_eq!(code, Some(69), "{output}");
    assert!(output.contains("127.0.0.1:1"), "names the database: {output}");
    assert!(!output.contains("s3cret"), "never prints the password: {output}");
}
