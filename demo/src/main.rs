//! `demo`: the whole system on one machine with no setup. Makes development certificates,
//! starts the reference parking adapter, the gateway and one simulated car, pays for parking
//! from a simulated in-car app, prints what happened, then keeps running for you to try.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use certs::{DevPki, IssuingCa};
use clap::Parser;
use gateway::config::PartnerConfig;
use gateway::{Gateway, GatewayConfig};
use parking_adapter::ParkingService;
use proto::Vin;
use proto::parking::v1::parking_payment_client::ParkingPaymentClient;
use proto::parking::v1::{EndSessionRequest, GeoPoint, GetReceiptRequest, ListNearbyLotsRequest, StartSessionRequest};
use tonic::transport::Channel;
use vehicle_agent::{Agent, AgentConfig};

/// The demo car.
const DEMO_VIN: &str = "LSVAU2180N2183294";

#[derive(Parser)]
#[command(
    name = "demo",
    about = "Run gateway, reference parking adapter and a simulated car on this machine"
)]
struct Args {
    /// Where development certificates and sample configs are kept (created if missing).
    #[arg(long, default_value = "dev-certs")]
    dir: PathBuf,
    /// Vehicle-facing MQTT over mTLS listener of the gateway.
    #[arg(long, default_value = "127.0.0.1:8883")]
    mqtt_listen: SocketAddr,
    /// The reference parking adapter's gRPC listener.
    #[arg(long, default_value = "127.0.0.1:50061")]
    adapter_listen: SocketAddr,
    /// The simulated car's local gRPC endpoint for in-car apps.
    #[arg(long, default_value = "127.0.0.1:50051")]
    agent_listen: SocketAddr,
    /// Exit after the demo round trip instead of running until Ctrl-C.
    #[arg(long)]
    once: bool,
    /// After the demo, time this many sequential round trips and print latency percentiles.
    #[arg(long, value_name = "N")]
    bench: Option<usize>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .init();

    let files = DemoFiles::ensure(&args.dir)?;
    files.write_sample_configs(&args)?;
    println!(
        "certificates in {}/ (root and per-role CAs, gateway, partner and vehicle {DEMO_VIN})",
        args.dir.display()
    );

    // The adapter's state (sessions, charges, answers to retries) outlives the demo, as it
    // would a restart of a real adapter.
    let parking = ParkingService::open(&args.dir.join("parking.db")).await?;
    let adapter = tokio::net::TcpListener::bind(args.adapter_listen)
        .await
        .with_context(|| format!("adapter cannot listen on {}", args.adapter_listen))?;
    let adapter_addr = adapter.local_addr()?;
    let tls = parking_adapter::mtls_config(
        &std::fs::read_to_string(&files.parking_cert)?,
        &std::fs::read_to_string(&files.parking_key)?,
        // Only the gateway's client certificate opens the adapter, not the car's.
        &std::fs::read_to_string(&files.gateway_clients_ca)?,
    );
    let (stop_adapter, adapter_stopped) = tokio::sync::oneshot::channel::<()>();
    let adapter_task = tokio::spawn(parking_adapter::serve(adapter, Some(tls), parking.clone(), async {
        let _ = adapter_stopped.await;
    }));
    println!("parking adapter   https://{adapter_addr}  (parking.v1.ParkingPayment, mTLS)");

    let mut config = GatewayConfig::new(
        files.gateway_cert.clone(),
        files.gateway_key.clone(),
        files.vehicles_ca.clone(),
    );
    config.mqtt.listen = args.mqtt_listen;
    config.partners = vec![files.partner_entry(adapter_addr)];
    config.storage.url = format!("sqlite://{}", args.dir.join("gateway.db").display());
    config.validate()?;
    let gateway = Gateway::start(config).await?;
    println!(
        "gateway           mqtts://{}  (MQTT 3.1.1, mutual TLS)",
        gateway.mqtt_addr()
    );

    let mut agent_config = AgentConfig::new(
        format!("localhost:{}", gateway.mqtt_addr().port()),
        files.ca_cert.clone(),
        files.vehicle_cert.clone(),
        files.vehicle_key.clone(),
    );
    agent_config.local_listen = args.agent_listen;
    agent_config.state_dir = args.dir.join("agent-state");
    let car = Agent::start(agent_config).await?;
    tokio::time::timeout(Duration::from_secs(10), car.wait_connected())
        .await
        .context("the simulated car did not connect within 10 s")?;
    println!(
        "simulated car     {} connected; in-car apps call http://{}\n",
        car.vin(),
        car.local_addr()
    );

    let mut app = ParkingPaymentClient::connect(format!("http://{}", car.local_addr())).await?;
    drive_to_the_bund_and_park(&mut app).await?;
    println!("\npartner charged {} time(s)", parking.charges());

    if let Some(n) = args.bench {
        bench(&mut app, n).await?;
    }

    if !args.once {
        println!(
            "\nRunning. Try, from another terminal:\n  cargo run -q -p vehicle-agent -- call /parking.v1.ParkingPayment/ListNearbyLots \
             '{{\"near\":{{\"latitude\":31.2304,\"longitude\":121.4737}}}}'\nCtrl-C to stop."
        );
        tokio::signal::ctrl_c().await?;
    }
    car.shutdown().await;
    gateway.shutdown().await;
    let _ = stop_adapter.send(());
    adapter_task.await??;
    Ok(())
}

async fn drive_to_the_bund_and_park(app: &mut ParkingPaymentClient<Channel>) -> Result<()> {
    let near_the_bund = ListNearbyLotsRequest {
        near: Some(GeoPoint {
            latitude: 31.2400,
            longitude: 121.4900,
        }),
        radius_m: 5_000,
        max_results: 3,
    };
    let (nearby, took) = timed(app.list_nearby_lots(near_the_bund)).await?;
    let lots = nearby.lots;
    step(1, "ListNearbyLots", format!("{} lots", lots.len()), took);
    for lot in &lots {
        let price = lot.price_per_hour.as_ref().map_or(0, |p| p.amount_minor);
        println!(
            "     {:<28} {:>5} m  ¥{}.{:02}/h",
            lot.name,
            lot.distance_m,
            price / 100,
            price % 100
        );
    }
    let lot = lots.first().context("no lot nearby")?;
    let parking = StartSessionRequest {
        lot_id: lot.lot_id.clone(),
        plate: "沪A12345".into(),
    };
    let (started, took) = timed(app.start_session(parking)).await?;
    let session = started.session.context("no session")?;
    step(
        2,
        "StartSession",
        format!("{} at {}", session.session_id, lot.name),
        took,
    );
    let (ended, took) = timed(app.end_session(EndSessionRequest {
        session_id: session.session_id.clone(),
    }))
    .await?;
    let receipt = ended.receipt.context("no receipt")?;
    let fee = receipt.fee.as_ref().map_or(0, |f| f.amount_minor);
    let paid = format!("fee ¥{}.{:02}, receipt {}", fee / 100, fee % 100, receipt.receipt_id);
    step(3, "EndSession", paid, took);
    let (again, took) = timed(app.get_receipt(GetReceiptRequest {
        receipt_id: receipt.receipt_id.clone(),
    }))
    .await?;
    let by = format!("{} paid by {}", again.receipt_id, again.payment_reference);
    step(4, "GetReceipt", by, took);
    Ok(())
}

/// The answer to `call` and how long it took.
async fn timed<T>(call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>) -> Result<(T, Duration)> {
    let t = Instant::now();
    let answer = call.await?.into_inner();
    Ok((answer, t.elapsed()))
}

/// Sequential round trips app -> agent -> gateway -> adapter -> back; prints percentiles.
async fn bench(app: &mut ParkingPaymentClient<Channel>, n: usize) -> Result<()> {
    let request = ListNearbyLotsRequest {
        near: Some(GeoPoint {
            latitude: 31.2304,
            longitude: 121.4737,
        }),
        radius_m: 5_000,
        max_results: 5,
    };
    for _ in 0..n.min(100) {
        app.list_nearby_lots(request).await?;
    }
    let mut samples = Vec::with_capacity(n);
    let started = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        app.list_nearby_lots(request).await?;
        samples.push(t.elapsed());
    }
    let total = started.elapsed();
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)].as_secs_f64() * 1e3;
    println!(
        "\nbench: {n} sequential ListNearbyLots round trips (app -> agent -> MQTT/mTLS -> gateway -> gRPC/mTLS -> adapter)\n  \
         p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({:.0} req/s on one connection)",
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(1.0),
        n as f64 / total.as_secs_f64()
    );
    Ok(())
}

/// Prints step `n` of the round trip: the method called, what came back, how long it took.
fn step(n: u32, method: &str, outcome: String, took: Duration) {
    println!("{n}. {method:<16}-> {outcome} ({:.1} ms)", took.as_secs_f64() * 1e3);
}

/// The demo's files: a development PKI plus sample configs for running the binaries yourself.
struct DemoFiles {
    /// The root: what the car and the gateway verify servers with.
    ca_cert: PathBuf,
    /// What the gateway's MQTT port trusts.
    vehicles_ca: PathBuf,
    /// What the parking adapter trusts.
    gateway_clients_ca: PathBuf,
    gateway_cert: PathBuf,
    gateway_key: PathBuf,
    parking_cert: PathBuf,
    parking_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    vehicle_cert: PathBuf,
    vehicle_key: PathBuf,
}

impl DemoFiles {
    /// Reuses the PKI in `dir` if there is a complete one, so repeated runs keep the same CAs.
    fn ensure(dir: &Path) -> Result<DemoFiles> {
        // Absolute paths, so that the sample configurations work from any directory.
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let dir = &std::fs::canonicalize(dir)?;
        let existing = DevPki::open(dir);
        let pki = if existing.is_complete() {
            existing
        } else if existing.ca_cert().exists() {
            // Made before the per-role CAs: its certificates would not pass the new trust.
            println!(
                "replacing the development PKI in {}/: it predates the per-role CAs",
                dir.display()
            );
            DevPki::init(dir, &[], true)?
        } else {
            DevPki::init(dir, &[], false)?
        };
        let ca = pki.authority()?;
        let vin = Vin::parse(DEMO_VIN)?;
        let (vehicle_cert, vehicle_key) = ca.issue_vehicle(&vin)?.write(dir, vin.as_str())?;
        let (parking_cert, parking_key) = ca.issue_partner("parking")?.write(dir, "parking")?;
        let files = DemoFiles {
            ca_cert: pki.ca_cert(),
            vehicles_ca: pki.issuing_ca_cert(IssuingCa::Vehicles),
            gateway_clients_ca: pki.issuing_ca_cert(IssuingCa::GatewayClients),
            gateway_cert: pki.gateway_cert(),
            gateway_key: pki.gateway_key(),
            parking_cert,
            parking_key,
            client_cert: pki.gateway_client_cert(),
            client_key: pki.gateway_client_key(),
            vehicle_cert,
            vehicle_key,
        };
        Ok(files)
    }

    fn partner_entry(&self, adapter: SocketAddr) -> PartnerConfig {
        PartnerConfig {
            service: "parking.v1.ParkingPayment".into(),
            name: Some("parking".into()),
            read_only_methods: vec!["ListNearbyLots".into(), "GetReceipt".into()],
            endpoint: format!("https://localhost:{}", adapter.port()),
            timeout: Some(Duration::from_secs(10)),
            connect_timeout: Duration::from_secs(3),
            ca_cert: Some(self.ca_cert.clone()),
            client_cert: Some(self.client_cert.clone()),
            client_key: Some(self.client_key.clone()),
            tls_server_name: None,
            max_concurrent_calls: gateway::config::DEFAULT_MAX_CONCURRENT_CALLS,
            breaker_failures: gateway::config::DEFAULT_BREAKER_FAILURES,
            breaker_open_for: gateway::config::DEFAULT_BREAKER_OPEN_FOR,
        }
    }

    /// `gateway.toml` and `agent.toml` matching this run of the demo (its addresses, its
    /// database and the car's state directory), for `gateway run` / `vehicle-agent run` in
    /// its place: the configuration structs themselves, serialized, so every setting is there
    /// with its default.
    fn write_sample_configs(&self, args: &Args) -> Result<()> {
        let dir = std::fs::canonicalize(&args.dir)?;
        let mut gateway = GatewayConfig::new(
            self.gateway_cert.clone(),
            self.gateway_key.clone(),
            self.vehicles_ca.clone(),
        );
        gateway.mqtt.listen = args.mqtt_listen;
        gateway.storage.url = format!("sqlite://{}", dir.join("gateway.db").display());
        gateway.partners = vec![self.partner_entry(args.adapter_listen)];
        let mut agent = AgentConfig::new(
            format!("localhost:{}", args.mqtt_listen.port()),
            self.ca_cert.clone(),
            self.vehicle_cert.clone(),
            self.vehicle_key.clone(),
        );
        agent.local_listen = args.agent_listen;
        agent.state_dir = dir.join("agent-state");
        let header = |what: &str| format!("# Sample {what} configuration written by `demo`.\n");
        let gateway = header("gateway") + &toml::to_string(&gateway)?;
        let agent = header("vehicle agent") + &toml::to_string(&agent)?;
        std::fs::write(dir.join("gateway.toml"), gateway)?;
        std::fs::write(dir.join("agent.toml"), agent)?;
        Ok(())
    }
}
