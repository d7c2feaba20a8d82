//! `demo`: the whole system on one machine with no setup. Makes development certificates,
//! starts the three reference partners (parking, navigation, identity and its sign-in page),
//! the gateway and one simulated car, then plays an in-car app's journey from Jing'an Temple to
//! the Bund (find a car park, route there, park and pay, sign in with WeChat, leave through
//! the lot's exit gate and hear what it charged), prints what happened, and keeps running for
//! you to try. It also prints a sign-in link to the gateway's fleet dashboard, where the car is
//! seen live, and the operator CLI's command line.
//!
//! Reading order: [`files`] (certificates and configs), [`partners`], [`ops`], [`journey`],
//! [`sign_in`], [`lot`].

mod files;
mod journey;
mod lot;
mod ops;
mod partners;
mod sign_in;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use gateway::Gateway;
use proto::parking::v1::parking_payment_client::ParkingPaymentClient;
use proto::parking::v1::{GeoPoint, ListNearbyLotsRequest};
use tonic::transport::Channel;
use vehicle_agent::Agent;

use crate::files::{DemoFiles, RunAddrs};
use crate::journey::InCarApp;
use crate::partners::{Listen, Partners};

/// The demo car.
const DEMO_VIN: &str = "LSVAU2180N2183294";

#[derive(Parser)]
#[command(
    name = "demo",
    about = "Run the gateway, the reference parking, navigation and identity adapters and a simulated car on this machine"
)]
struct Args {
    /// Where development certificates, sample configs and databases are kept (created if missing).
    #[arg(long, default_value = "dev-certs")]
    dir: PathBuf,
    /// Vehicle-facing MQTT over mTLS listener of the gateway.
    #[arg(long, default_value = "127.0.0.1:8883")]
    mqtt_listen: SocketAddr,
    /// The reference parking adapter's gRPC listener.
    #[arg(long, default_value = "127.0.0.1:50061")]
    adapter_listen: SocketAddr,
    /// The reference navigation adapter's gRPC listener.
    #[arg(long, default_value = "127.0.0.1:50062")]
    navigation_listen: SocketAddr,
    /// The reference identity adapter's gRPC listener.
    #[arg(long, default_value = "127.0.0.1:50063")]
    identity_listen: SocketAddr,
    /// The identity adapter's verification page (plain HTTP), where drivers approve sign-ins.
    #[arg(long, default_value = "127.0.0.1:50081")]
    identity_page_listen: SocketAddr,
    /// The gateway's partner API, where partners push events to cars (mTLS, partners only).
    #[arg(long, default_value = "127.0.0.1:50071")]
    partner_api_listen: SocketAddr,
    /// The gateway's ops listener: the fleet dashboard and `fleet.v1.FleetOps` (operators only).
    #[arg(long, default_value = "127.0.0.1:9443")]
    ops_listen: SocketAddr,
    /// The simulated car's local gRPC endpoint for in-car apps.
    #[arg(long, default_value = "127.0.0.1:50051")]
    agent_listen: SocketAddr,
    /// Exit after the journey instead of running until Ctrl-C; the demo approves the sign-in itself.
    #[arg(long)]
    once: bool,
    /// After the journey, time this many sequential round trips and print latency percentiles.
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

    // Issuing the certificates is disk and CPU work: off the async workers.
    let dir = args.dir.clone();
    let files = tokio::task::spawn_blocking(move || DemoFiles::ensure(&dir)).await??;
    println!(
        "certificates in {}/ (root and per-role CAs, gateway, partners parking, navigation and identity, vehicle {DEMO_VIN})",
        files.dir.display()
    );

    let listen = Listen {
        parking: args.adapter_listen,
        navigation: args.navigation_listen,
        identity: args.identity_listen,
        identity_page: args.identity_page_listen,
    };
    let mut partners = Partners::start(&files, &listen).await?;
    let at = partners.addrs;
    println!(
        "parking adapter    https://{}  (parking.v1.ParkingPayment, mTLS)",
        at.parking
    );
    println!(
        "navigation adapter https://{}  (navigation.v1.Navigation, mTLS)",
        at.navigation
    );
    println!(
        "identity adapter   https://{}  (identity.v1.SocialLogin, mTLS)",
        at.identity
    );
    println!("sign-in page       {}/device  (drivers approve here)", partners.page);

    let mut config = files.gateway_config(args.mqtt_listen, args.partner_api_listen, at);
    config.ops = Some(files.ops_config(args.ops_listen));
    config.validate()?;
    let gateway = Gateway::start(config).await?;
    let partner_api = gateway.partner_api_addr().context("the gateway's partner API is off")?;
    partners.publish_parking_events(&files, partner_api).await?;
    println!(
        "gateway            mqtts://{}  (MQTT 3.1.1, mutual TLS), partner API https://{partner_api}",
        gateway.mqtt_addr()
    );
    let ops = gateway.ops_addr().context("the gateway's ops listener is off")?;
    println!("ops listener       https://{ops}  (fleet dashboard and fleet.v1.FleetOps, operators only)");

    let car = Agent::start(files.agent_config(gateway.mqtt_addr(), args.agent_listen)).await?;
    tokio::time::timeout(Duration::from_secs(10), car.wait_connected())
        .await
        .context("the simulated car did not connect within 10 s")?;
    println!(
        "simulated car      {} connected; in-car apps call http://{}",
        car.vin(),
        car.local_addr()
    );
    files
        .write_sample_configs(&RunAddrs {
            mqtt: gateway.mqtt_addr(),
            partner_api,
            ops,
            agent: car.local_addr(),
            partners: at,
        })
        .await?;
    println!("sample configs     {}/gateway.toml, agent.toml", files.dir.display());
    // Asked for once the car is connected, so the dashboard shows it at once.
    let link = ops::dashboard_link(&files, ops).await?;
    ops::print_how_to_operate(&files, ops, &link);

    let mut app = InCarApp::connect(format!("http://{}", car.local_addr())).await?;
    // Waiting for a driver to approve may be cut short with Ctrl-C.
    let interrupted = tokio::select! {
        done = journey::jingan_to_the_bund(&mut app, &partners.parking, args.once) => {
            done?;
            false
        }
        _ = tokio::signal::ctrl_c() => true,
    };
    if !interrupted {
        println!("\nparking partner charged {} time(s)", partners.parking.charges());
        if let Some(n) = args.bench {
            bench(&mut app.parking, n).await?;
        }
        if !args.once {
            println!(
                "\nRunning. Try, from another terminal:\n  cargo run -q -p vehicle-agent -- call /parking.v1.ParkingPayment/ListNearbyLots \
                 '{{\"near\":{{\"latitude\":31.2304,\"longitude\":121.4737}}}}'\n  \
                 cargo run -q -p vehicle-agent -- call /navigation.v1.Navigation/SearchPlaces \
                 '{{\"near\":{{\"latitude\":31.24,\"longitude\":121.49}},\"category\":\"PLACE_CATEGORY_PARKING\"}}'\n\
                 Fleet dashboard: https://{ops}/ (sign in with the link above; `gateway fleet ... dashboard-link` makes another)\n\
                 Ctrl-C to stop."
            );
            tokio::signal::ctrl_c().await?;
        }
    }
    car.shutdown().await;
    gateway.shutdown().await;
    partners.stop().await
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
    if samples.is_empty() {
        return Ok(());
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
