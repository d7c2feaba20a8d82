//! `fleet-bench report`: runs every scenario against the gateway and Mosquitto, one after the
//! other with the same fleet, and writes `report.json` and `report.md`. `fleet-bench abuse`
//! runs only the abusive-car scenario and writes `abuse.json` and `abuse.md`; `fleet-bench
//! services` compares a service known by configuration only with a compiled-in one; `fleet-bench
//! revoke` times revocations from the operator's call to the car cut off; `fleet-bench
//! journal-cost` compares request round trips with the interaction journal off and on.
//!
//! ```text
//! cargo run --release -p fleet-bench -- report --vehicles 2000 --out docs/benchmarks
//! cargo run --release -p fleet-bench -- abuse --out docs/benchmarks
//! cargo run --release -p fleet-bench -- services --out docs/benchmarks
//! cargo run --release -p fleet-bench -- revoke --out docs/benchmarks
//! cargo run --release -p fleet-bench -- journal-cost --out docs/benchmarks
//! ```

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use fleet_bench::abuse::{self, AbuseBrokers, AbusePlan, AbuseRun};
use fleet_bench::abuser::{Abuse, AbuseSizes};
use fleet_bench::agents::Mix;
use fleet_bench::brokers::{self, BrokerSetup, ConfigOverride, GatewayLaunch};
use fleet_bench::fleet::Fleet;
use fleet_bench::journal_cost;
use fleet_bench::phased::PhasedArgs;
use fleet_bench::report::Started;
use fleet_bench::restart::RestartPlan;
use fleet_bench::revoke::{self, RevokeArgs};
use fleet_bench::run::{self, LedgerRun, Plan, Rates};
use fleet_bench::services;
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
    Report(Box<Args>),
    /// Runs only the abusive-car scenario and writes abuse.json and abuse.md.
    Abuse(Box<AbuseOnly>),
    /// Compares a service the gateway knows by configuration only with a compiled-in one and
    /// writes services.json and services.md.
    #[command(
        mut_arg("rate", |a| a.required(false).default_value("500")),
        mut_arg("phase", |a| a.required(false).default_value("10"))
    )]
    Services(Box<PhasedArgs>),
    /// Revokes connected cars one by one over the ops API, timing the call and the car's
    /// disconnection, and writes revoke.json and revoke.md.
    Revoke(Box<RevokeArgs>),
    /// Sends the same requests with the interaction journal off and on, in alternating phases,
    /// and writes journal-cost.json and journal-cost.md.
    #[command(
        mut_arg("rate", |a| a.required(false).default_value("300")),
        mut_arg("phase", |a| a.required(false).default_value("15"))
    )]
    JournalCost(Box<PhasedArgs>),
    /// Measures the rows per second the gateway's journal writer sustains into SQLite (a file)
    /// and PostgreSQL, and prints a table.
    Journal(Box<JournalOnly>),
}

/// The journal writer scenario.
#[derive(clap::Args)]
struct JournalOnly {
    /// Request rows recorded per database.
    #[arg(long, default_value_t = 200_000)]
    rows: u64,
    /// Rows per transaction (`journal.max_batch_rows`).
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// The PostgreSQL database (a fresh schema is made in it, and dropped).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    postgres: String,
}

/// Which brokers, and how to get them.
#[derive(clap::Args)]
struct BrokerArgs {
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
    /// Parking methods declared read-only (they skip the idempotency ledger; the demo declares
    /// these two); not on the ledger runs' gateways. Empty = none.
    #[arg(long, value_delimiter = ',', default_value = "ListNearbyLots,GetReceipt")]
    read_only_methods: Vec<String>,
    /// Keep the temporary directory (certificates, configs, broker logs).
    #[arg(long)]
    keep_work: bool,
}

/// The abusive-car scenario.
#[derive(clap::Args)]
struct AbuseArgs {
    /// Well-behaved cars that stay connected during the abuses.
    #[arg(long, default_value_t = 1000)]
    good_vehicles: usize,
    /// Their requests per second, all together (ListNearbyLots).
    #[arg(long, default_value_t = 200.0)]
    good_request_rate: f64,
    /// Partner events per second pushed to them, all together.
    #[arg(long, default_value_t = 100.0)]
    good_event_rate: f64,
    /// Abuses to run, in order: subscriptions, retained, topics, long-topics, event-acks, qos2,
    /// requests, sockets.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "subscriptions,retained,topics,long-topics,event-acks,qos2,requests,sockets"
    )]
    abuses: Vec<Abuse>,
    /// Seconds each abuse lasts (and the baseline without abuse).
    #[arg(long, default_value_t = 20.0)]
    abuse_seconds: f64,
    /// Seconds the good cars go on after each abuse before the broker's memory is read again.
    #[arg(long, default_value_t = 10.0)]
    abuse_recovery: f64,
    /// Distinct filters of the subscription abuse.
    #[arg(long, default_value_t = 20_000)]
    abuse_filters: usize,
    /// Distinct topics of the retained-message abuse (each message 140 kB).
    #[arg(long, default_value_t = 1_000)]
    abuse_retained: usize,
    /// Distinct topics of the topic-name abuse (each message 60 kB).
    #[arg(long, default_value_t = 2_000)]
    abuse_topics: usize,
    /// Unauthenticated sockets of the socket flood.
    #[arg(long, default_value_t = 400)]
    abuse_sockets: usize,
    /// Source address of the socket flood (another loopback address than the cars').
    #[arg(long, default_value = "127.0.0.2")]
    abuse_socket_source: IpAddr,
    /// A setting of the abuse scenario's gateway configuration, `section.key=value` (repeat it),
    /// e.g. `--gateway-set mqtt.max_subscriptions=64`; the defaults are the gateway's own.
    #[arg(long = "gateway-set")]
    gateway_set: Vec<ConfigOverride>,
}

impl AbuseArgs {
    fn plan(&self) -> AbusePlan {
        AbusePlan {
            good_vehicles: self.good_vehicles,
            request_rate: self.good_request_rate,
            event_rate: self.good_event_rate,
            abuses: self.abuses.clone(),
            abuse_time: Duration::from_secs_f64(self.abuse_seconds),
            recovery: Duration::from_secs_f64(self.abuse_recovery),
            sizes: AbuseSizes {
                filters: self.abuse_filters,
                retained_topics: self.abuse_retained,
                topics: self.abuse_topics,
                sockets: self.abuse_sockets,
                socket_source: self.abuse_socket_source,
                ..AbuseSizes::default()
            },
            ..AbusePlan::default()
        }
    }
}

#[derive(clap::Args)]
struct AbuseOnly {
    /// Where abuse.json and abuse.md go.
    #[arg(long, default_value = "docs/benchmarks")]
    out: PathBuf,
    #[command(flatten)]
    brokers: BrokerArgs,
    #[command(flatten)]
    abuse: AbuseArgs,
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
    /// Where the request runs through the ledger keep their database: `disk` (the run's
    /// temporary directory) and/or `tmpfs` (/dev/shm, no fsync cost). Empty = skip them.
    #[arg(long, value_delimiter = ',', default_value = "disk,tmpfs")]
    ledger_runs: Vec<String>,
    /// Seconds to wait for the gateway's connection log to catch up after the storms.
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
    /// A setting of the traffic gateways' configuration (the main one and the ledger ones),
    /// `section.key=value`, repeated; by default the per-car rates are lifted, since their few
    /// active cars stand in for a fleet.
    #[arg(long = "traffic-gateway-set", default_values_t = fleet_bench::run::traffic_overrides())]
    traffic_gateway_set: Vec<ConfigOverride>,
    /// Skip the abusive-car scenario.
    #[arg(long)]
    no_abuse: bool,
    #[command(flatten)]
    brokers: BrokerArgs,
    #[command(flatten)]
    abuse: AbuseArgs,
}

/// How the storms connect.
fn storm_settings(args: &Args) -> StormSettings {
    StormSettings {
        max_inflight: args.max_inflight,
        connect_rate: args.connect_rate,
        keep_alive: Duration::from_secs(args.keep_alive),
        ..StormSettings::default()
    }
}

/// The rates worth running (`--echo-rates 0` skips the runs).
fn positive(rates: &[f64]) -> Vec<f64> {
    rates.iter().copied().filter(|r| *r > 0.0).collect()
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The agents' reconnect warnings during the reconnect storm are expected noise.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,rumqttd=off,vehicle_agent=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let done = match Cli::parse().command {
        Command::Report(args) => runtime.block_on(report(*args)),
        Command::Abuse(args) => runtime.block_on(abuse_only(*args)),
        Command::Services(args) => runtime.block_on(services_only(*args)),
        Command::Revoke(args) => runtime.block_on(revoke_only(*args)),
        Command::JournalCost(args) => runtime.block_on(journal_cost_only(*args)),
        Command::Journal(args) => runtime.block_on(journal_only(*args)),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the journal scenario and prints its table.
async fn journal_only(args: JournalOnly) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let runs = fleet_bench::journal::sqlite_and_postgres(dir.path(), &args.postgres, args.rows, args.batch).await?;
    print!("{}", fleet_bench::journal::table(&runs));
    Ok(())
}

/// The brokers to measure, ready to start: the gateway (built first unless told not to) with
/// its adapter, and Mosquitto (installed if missing and allowed); files of the run go in
/// `work`. The notes say what was done.
fn prepare(args: &BrokerArgs, work: &Path) -> anyhow::Result<(BrokerSetup, Vec<String>)> {
    let mut notes = Vec::new();
    let wants = |name: &str| args.brokers.iter().any(|b| b == name);
    let gateway = if wants("gateway") {
        Some(GatewayLaunch::Binary(brokers::gateway_binary(
            args.no_build,
            args.gateway_bin.as_deref(),
        )?))
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
    let setup = BrokerSetup {
        gateway,
        adapter_bin,
        mosquitto,
        db_dir: args.db_dir.clone().unwrap_or_else(|| work.join("db")),
        read_only_methods: args
            .read_only_methods
            .iter()
            .filter(|m| !m.is_empty())
            .cloned()
            .collect(),
    };
    Ok((setup, notes))
}

/// Writes `{stem}.json` and `{stem}.md` into `out`, prints the Markdown, and keeps `work` if
/// `keep_work`.
fn publish(
    out: &Path,
    stem: &str,
    report: &impl serde::Serialize,
    markdown: &str,
    work: tempfile::TempDir,
    keep_work: bool,
) -> anyhow::Result<()> {
    let (json, md) = fleet_bench::report::write_files(out, stem, report, markdown)?;
    println!("{markdown}");
    eprintln!("wrote {} and {}", md.display(), json.display());
    if keep_work {
        eprintln!("work files kept in {}", work.keep().display());
    }
    Ok(())
}

/// The command line, for the report.
fn command_line() -> String {
    let mut command = String::from("cargo run --release -p fleet-bench --");
    for a in std::env::args().skip(1) {
        command.push(' ');
        command.push_str(&a);
    }
    command
}

/// `fleet-bench services`: a configuration-only service against a compiled-in one.
async fn services_only(args: PhasedArgs) -> anyhow::Result<()> {
    let work = tempfile::Builder::new().prefix("fleet-bench-services-").tempdir()?;
    let launch = GatewayLaunch::Binary(args.gateway.binary()?);
    let run = services::run(&args.plan(), &launch, work.path(), command_line()).await?;
    publish(
        &args.out,
        "services",
        &run,
        &run.markdown(),
        work,
        args.gateway.keep_work,
    )
}

/// `fleet-bench revoke`: revocation from the call to the car cut off.
async fn revoke_only(args: RevokeArgs) -> anyhow::Result<()> {
    let work = tempfile::Builder::new().prefix("fleet-bench-revoke-").tempdir()?;
    let launch = GatewayLaunch::Binary(args.gateway.binary()?);
    let run = revoke::run(&args.plan(), &launch, work.path(), command_line()).await?;
    publish(&args.out, "revoke", &run, &run.markdown(), work, args.gateway.keep_work)
}

/// `fleet-bench journal-cost`: request round trips with the journal off and on.
async fn journal_cost_only(args: PhasedArgs) -> anyhow::Result<()> {
    let work = tempfile::Builder::new().prefix("fleet-bench-journal-").tempdir()?;
    let launch = GatewayLaunch::Binary(args.gateway.binary()?);
    let run = journal_cost::run(&args.plan(), &launch, work.path(), command_line()).await?;
    publish(
        &args.out,
        "journal-cost",
        &run,
        &run.markdown(),
        work,
        args.gateway.keep_work,
    )
}

/// `fleet-bench abuse`: the abusive-car scenario alone.
async fn abuse_only(args: AbuseOnly) -> anyhow::Result<()> {
    let started = Started::now();
    let work = tempfile::Builder::new().prefix("fleet-bench-abuse-").tempdir()?;
    let (setup, mut notes) = prepare(&args.brokers, work.path())?;
    let plan = args.abuse.plan();
    let hosts = [IpAddr::V4(Ipv4Addr::LOCALHOST)];
    let say = |msg: String| started.say(&msg);
    say(format!("issuing {} vehicle certificates", plan.vehicles_needed()));
    let fleet = Fleet::create(&work.path().join("pki"), plan.vehicles_needed(), &hosts)?;
    let adapter = setup.start_adapter(&fleet, work.path()).await?;
    let brokers = AbuseBrokers {
        setup: &setup,
        adapter: adapter.as_ref(),
        overrides: &args.abuse.gateway_set,
        hosts: &hosts,
    };
    let reports = abuse::run_all(&plan, &fleet, &brokers, work.path(), &say).await?;
    drop(adapter);
    if setup.gateway.is_some() {
        notes.push(
            "The gateway runs its release binary as its own process with its default logging (info), SQLite in WAL \
             mode; the partner adapter runs as its own process at log level warn. The abuser and the socket flood run \
             on threads of their own in the load generator, which shares the machine's cores with the broker."
                .into(),
        );
    }
    let run = AbuseRun {
        run: started.finish(command_line()),
        brokers: reports,
        notes,
    };
    publish(&args.out, "abuse", &run, &run.markdown(), work, args.brokers.keep_work)
}

async fn report(args: Args) -> anyhow::Result<()> {
    let work = tempfile::Builder::new().prefix("fleet-bench-").tempdir()?;
    let (brokers, mut notes) = prepare(&args.brokers, work.path())?;
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
    let plan = Plan {
        vehicles: args.vehicles,
        active: args.active.min(args.vehicles),
        hosts,
        storm: storm_settings(&args),
        duration: Duration::from_secs_f64(args.duration),
        warmup: Duration::from_secs_f64(args.warmup),
        rates: Rates {
            echo_rates: positive(&args.echo_rates),
            request_rates: positive(&args.request_rates),
            closed_in_flight: args.closed_in_flight,
            agents: args.agents,
            agent_rates: positive(&args.agent_rates),
        },
        agent_mix: args.agent_mix.clone(),
        brokers,
        ledger_runs: ledger_runs.clone(),
        registry_wait: Duration::from_secs_f64(args.registry_wait),
        settle: Duration::from_secs_f64(args.settle),
        reconnect_rounds: args.reconnect_rounds,
        under_storm: (!args.no_under_storm).then(|| UnderStormPlan {
            active: args.active,
            rate: 200.0,
            duration: Duration::from_secs_f64(args.duration),
            storm: storm_settings(&args),
        }),
        restart: (!args.no_restart).then(|| RestartPlan {
            vehicles: args.vehicles,
            storm: storm_settings(&args),
            request_rate: args.restart_rate,
            before_kill: Duration::from_secs(2),
            after_back: Duration::from_secs(2),
            limit: Duration::from_secs_f64(args.restart_limit),
        }),
        gateway_overrides: args.traffic_gateway_set.clone(),
        abuse: (!args.no_abuse).then(|| args.abuse.plan()),
        abuse_overrides: args.abuse.gateway_set.clone(),
        command: command_line(),
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
    publish(
        &args.out,
        "report",
        &report,
        &report.markdown(),
        work,
        args.brokers.keep_work,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The load options of the two phased scenarios, parsed from `args` after the subcommand.
    fn load(args: &[&str]) -> (f64, f64, usize) {
        let cli = Cli::try_parse_from(["fleet-bench"].iter().chain(args)).unwrap();
        let load = match cli.command {
            Command::Services(a) | Command::JournalCost(a) => a,
            _ => unreachable!("not a phased scenario"),
        };
        (load.rate, load.phase, load.vehicles)
    }

    #[test]
    fn each_phased_scenario_has_its_own_default_rate_and_phase() {
        assert_eq!(load(&["services"]), (500.0, 10.0, 200));
        assert_eq!(load(&["journal-cost"]), (300.0, 15.0, 200));
        assert_eq!(
            load(&["journal-cost", "--rate", "40", "--phase", "2"]),
            (40.0, 2.0, 200)
        );
    }
}
