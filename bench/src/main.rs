//! `fleet-bench report`: runs every scenario against the gateway and Mosquitto, one after the
//! other with the same fleet, and writes `report.json` and `report.md`.
//!
//! ```text
//! cargo run --release -p fleet-bench -- report --vehicles 2000 --out docs/benchmarks
//! ```

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use fleet_bench::agents::Mix;
use fleet_bench::brokers::{self, GatewayLaunch};
use fleet_bench::restart::RestartPlan;
use fleet_bench::run::{self, LedgerRun, Plan};
use fleet_bench::swarm::StormSettings;
use fleet_bench::under_storm::UnderStormPlan;

#[derive(Parser)]
#[command(
    name = "fleet-bench",
    version,
    about = "Fleet simulator: the gateway and Mosquitto side by side"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs every scenario against both brokers and writes report.json and report.md.
    Report(Args),
}

#[derive(clap::Args)]
struct Args {
    /// Vehicles in the connect storms, each with its own certificate.
    #[arg(long, default_value_t = 2000)]
    vehicles: usize,
    /// Vehicles that send in the traffic runs (the others stay connected and idle).
    #[arg(long, default_value_t = 100)]
    active: usize,
    /// Where report.json and report.md go.
    #[arg(long, default_value = "docs/benchmarks")]
    out: PathBuf,
    /// Loopback destination addresses (127.0.0.1 ..= 127.0.0.K) the vehicles spread over; more
    /// than one makes the brokers listen on 0.0.0.0. Needed only beyond ~28,000 vehicles.
    #[arg(long, default_value_t = 1)]
    loopback_addrs: u8,
    /// Connection attempts in flight at once (0 = unbounded: every vehicle at once).
    #[arg(long, default_value_t = 100)]
    max_inflight: usize,
    /// Vehicles started per second (0 = all at once, bounded only by --max-inflight).
    #[arg(long, default_value_t = 0.0)]
    connect_rate: f64,
    /// MQTT keep-alive of the simulated vehicles, seconds.
    #[arg(long, default_value_t = 120)]
    keep_alive: u64,
    /// Seconds per traffic run.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds at the start of each traffic run left out of its figures.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Open-loop publish round-trip rates, messages per second (both brokers; 0 = none).
    #[arg(long, value_delimiter = ',', default_value = "200,1000")]
    echo_rates: Vec<f64>,
    /// Open-loop request rates, requests per second (gateway).
    #[arg(long, value_delimiter = ',', default_value = "200,1000")]
    request_rates: Vec<f64>,
    /// Messages in flight in the maximum-throughput runs (0 = skip them).
    #[arg(long, default_value_t = 200)]
    closed_in_flight: usize,
    /// Real agents (vehicle_agent::GatewayLink) for the agent request runs (0 = skip).
    #[arg(long, default_value_t = 20)]
    agents: usize,
    /// What the agents ask for, by weight: lots (ListNearbyLots), pay (StartSession then
    /// EndSession, through the ledger), receipt (GetReceipt).
    #[arg(long, default_value = "lots=7,pay=2,receipt=1")]
    agent_mix: Mix,
    /// Open-loop rates of the agent request runs.
    #[arg(long, value_delimiter = ',', default_value = "200")]
    agent_rates: Vec<f64>,
    /// Brokers to measure.
    #[arg(long, value_delimiter = ',', default_value = "gateway,mosquitto")]
    brokers: Vec<String>,
    /// Mosquitto binary.
    #[arg(long, default_value = "/usr/sbin/mosquitto")]
    mosquitto: PathBuf,
    /// Do not apt-get install Mosquitto when it is missing.
    #[arg(long)]
    no_install: bool,
    /// Do not run `cargo build` for the gateway and the parking adapter first.
    #[arg(long)]
    no_build: bool,
    /// Gateway binary (default: next to this executable).
    #[arg(long)]
    gateway_bin: Option<PathBuf>,
    /// Parking adapter binary (default: next to this executable).
    #[arg(long)]
    adapter_bin: Option<PathBuf>,
    /// Directory of the gateway's SQLite database (default: the run's temporary directory).
    #[arg(long)]
    db_dir: Option<PathBuf>,
    /// Parking methods declared read-only on the main gateway (they skip the idempotency
    /// ledger; the demo declares these two). Empty = none.
    #[arg(long, value_delimiter = ',', default_value = "ListNearbyLots,GetReceipt")]
    read_only_methods: Vec<String>,
    /// Where the request runs through the ledger keep their database: `disk` (the run's
    /// temporary directory) and/or `tmpfs` (/dev/shm, no fsync cost). Empty = skip them.
    #[arg(long, value_delimiter = ',', default_value = "disk,tmpfs")]
    ledger_runs: Vec<String>,
    /// Seconds to wait for the gateway's session registry to catch up after the storms.
    #[arg(long, default_value_t = 120.0)]
    registry_wait: f64,
    /// Longest wait, in seconds, for a broker to go idle after the fleet disconnected, before
    /// the resumed storm (0 = reconnect at once).
    #[arg(long, default_value_t = 30.0)]
    settle: f64,
    /// Extra disconnect/reconnect rounds of the whole fleet, recording broker RSS after each.
    #[arg(long, default_value_t = 0)]
    reconnect_rounds: usize,
    /// Skip the traffic from connected vehicles during a connect storm of the others.
    #[arg(long)]
    no_under_storm: bool,
    /// Skip the reconnect storm (each broker killed with SIGKILL and restarted under the fleet).
    #[arg(long)]
    no_restart: bool,
    /// Payment calls per second the agents make across the gateway's crash (0 = none).
    #[arg(long, default_value_t = 200.0)]
    restart_rate: f64,
    /// Longest wait, in seconds, for the fleet to come back after the restart.
    #[arg(long, default_value_t = 120.0)]
    restart_limit: f64,
    /// Keep the temporary directory (certificates, configs, broker logs).
    #[arg(long)]
    keep_work: bool,
}

/// The rates worth running (`--echo-rates 0` skips the runs).
fn positive(rates: &[f64]) -> Vec<f64> {
    rates.iter().copied().filter(|r| *r > 0.0).collect()
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().// The agents' reconnect warnings during the reconnect storm are expected noise.
            unwrap_or_else(|_| "warn,rumqttd=off,vehicle_agent=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let Command::Report(args) = Cli::parse().command;
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(report(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn report(args: Args) -> anyhow::Result<()> {
    let mut notes = Vec::new();
    let wants = |name: &str| args.brokers.iter().any(|b| b == name);
    let gateway = if wants("gateway") {
        if !args.no_build && args.gateway_bin.is_none() {
            brokers::build_workspace_binaries()?;
        }
        let bin = match &args.gateway_bin {
            Some(p) => p.clone(),
            None => brokers::workspace_binary("gateway")?,
        };
        anyhow::ensure!(
            bin.exists(),
            "{} does not exist (build it or pass --gateway-bin)",
            bin.display()
        );
        Some(GatewayLaunch::Binary(bin))
    } else {
        None
    };
    let adapter_bin = match (&gateway, &args.adapter_bin) {
        (None, _) => None,
        (Some(_), Some(p)) => Some(p.clone()),
        (Some(_), None) => Some(brokers::workspace_binary("parking-adapter")?),
    };
    let mosquitto = if wants("mosquitto") {
        let (path, note) = brokers::ensure_mosquitto(&args.mosquitto, !args.no_install);
        notes.extend(note);
        path
    } else {
        None
    };

    let work = tempfile::Builder::new().prefix("fleet-bench-").tempdir()?;
    let hosts: Vec<IpAddr> = (1..=args.loopback_addrs.max(1))
        .map(|k| IpAddr::V4(Ipv4Addr::new(127, 0, 0, k)))
        .collect();
    let mut ledger_runs = Vec::new();
    for label in args.ledger_runs.iter().filter(|l| !l.is_empty()) {
        let db_dir = match label.as_str() {
            "disk" => work.path().join("db-ledger"),
            "tmpfs" if Path::new("/dev/shm").is_dir() => {
                PathBuf::from(format!("/dev/shm/fleet-bench-{}", std::process::id()))
            }
            "tmpfs" => {
                notes.push("/dev/shm is missing: the tmpfs ledger run was skipped".into());
                continue;
            }
            other => anyhow::bail!("--ledger-runs: {other:?} is neither disk nor tmpfs"),
        };
        ledger_runs.push(LedgerRun {
            label: label.clone(),
            db_dir,
        });
    }
    let mut command = String::from("cargo run --release -p fleet-bench --");
    for a in std::env::args().skip(1) {
        command.push(' ');
        command.push_str(&a);
    }
    let plan = Plan {
        vehicles: args.vehicles,
        active: args.active.min(args.vehicles),
        hosts,
        storm: StormSettings {
            max_inflight: args.max_inflight,
            connect_rate: args.connect_rate,
            keep_alive: Duration::from_secs(args.keep_alive),
            ..StormSettings::default()
        },
        duration: Duration::from_secs_f64(args.duration),
        warmup: Duration::from_secs_f64(args.warmup),
        echo_rates: positive(&args.echo_rates),
        request_rates: positive(&args.request_rates),
        closed_in_flight: args.closed_in_flight,
        agents: args.agents,
        agent_rates: positive(&args.agent_rates),
        agent_mix: args.agent_mix.clone(),
        gateway,
        adapter_bin,
        mosquitto,
        db_dir: args.db_dir.clone().unwrap_or_else(|| work.path().join("db")),
        read_only_methods: args
            .read_only_methods
            .iter()
            .filter(|m| !m.is_empty())
            .cloned()
            .collect(),
        ledger_runs: ledger_runs.clone(),
        registry_wait: Duration::from_secs_f64(args.registry_wait),
        settle: Duration::from_secs_f64(args.settle),
        reconnect_rounds: args.reconnect_rounds,
        under_storm: (!args.no_under_storm).then(|| UnderStormPlan {
            active: args.active,
            rate: 200.0,
            duration: Duration::from_secs_f64(args.duration),
            storm: StormSettings {
                max_inflight: args.max_inflight,
                connect_rate: args.connect_rate,
                keep_alive: Duration::from_secs(args.keep_alive),
                ..StormSettings::default()
            },
        }),
        restart: (!args.no_restart).then(|| RestartPlan {
            vehicles: args.vehicles,
            storm: StormSettings {
                max_inflight: args.max_inflight,
                connect_rate: args.connect_rate,
                keep_alive: Duration::from_secs(args.keep_alive),
                ..StormSettings::default()
            },
            request_rate: args.restart_rate,
            before_kill: Duration::from_secs(2),
            after_back: Duration::from_secs(2),
            limit: Duration::from_secs_f64(args.restart_limit),
        }),
        command,
        notes,
        verbose: true,
    };
    let report = run::run(&plan, work.path()).await;
    for run in &ledger_runs {
        if run.label == "tmpfs" {
            let _ = std::fs::remove_dir_all(&run.db_dir);
        }
    }
    let report = report?;
    let (json, md) = run::write_report(&report, &args.out)?;
    println!("{}", report.markdown());
    eprintln!("wrote {} and {}", md.display(), json.display());
    if args.keep_work {
        eprintln!("work files kept in {}", work.keep().display());
    }
    Ok(())
}
