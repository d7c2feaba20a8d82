//! One benchmark run: every scenario against each broker with the same fleet, certificates
//! and load generator, one broker after the other.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::abuse::{self, AbuseBrokers, AbusePlan};
use crate::agents::{Agents, Mix};
use crate::brokers::{self, Adapter, Broker, BrokerKind, BrokerSetup, ConfigOverride, GatewayOptions};
use crate::fleet::{Fleet, HandshakeCounter};
use crate::procfs::{self, Roles};
use crate::report::{
    BrokerReport, Certificates, MemoryReport, RegistryReport, Report, RequestReport, Settings, Started, StormReport,
    TrafficReport,
};
use crate::restart::{RestartPlan, reconnect_storm};
use crate::swarm::{StormOutcome, StormSettings, Swarm, Target};
use crate::traffic::{self, Echo, Load, ParkingRequests, Schedule};
use crate::under_storm::{UnderStormPlan, served_during_storm};

mod plan;
pub use plan::{LedgerRun, Plan, Rates, traffic_overrides};

/// Runs `plan` with its files in `work`.
pub async fn run(plan: &Plan, work: &Path) -> Result<Report> {
    let started = Started::now();
    let say = |msg: String| {
        if plan.verbose {
            started.say(&msg);
        }
    };
    let total = plan.vehicles + plan.rates.agents;
    if let Some(limit) = procfs::open_files_limit()
        && (total as u64) + 256 > limit
    {
        bail!("{total} vehicles need more open files than the limit of {limit} (ulimit -n)");
    }
    if plan.hosts.is_empty() || plan.vehicles == 0 {
        bail!("need at least one vehicle and one loopback address");
    }

    let disk_fsync_ms = plan
        .brokers
        .gateway
        .as_ref()
        .and_then(|_| procfs::fsync_ms(&plan.brokers.db_dir));
    say(format!("issuing {total} vehicle certificates"));
    let fleet = Fleet::create(&work.join("pki"), total, &plan.hosts)?;
    let mut notes = plan.notes.clone();
    let mut brokers_out = Vec::new();
    let mut requests = Vec::new();

    let adapter = plan.brokers.start_adapter(&fleet, work).await?;

    if let (Some(launch), Some(adapter)) = (&plan.brokers.gateway, &adapter) {
        say("starting the gateway".into());
        let dir = work.join("gateway");
        std::fs::create_dir_all(&dir)?;
        let options = GatewayOptions {
            max_connections: total + 1000,
            adapter: adapter.addr,
            read_only_methods: &plan.brokers.read_only_methods,
            partner_api: false,
            overrides: &plan.gateway_overrides,
            extra_services: &[],
        };
        let broker = brokers::start_gateway(launch, &fleet, &dir, &plan.brokers.db_dir, &plan.hosts, &options).await?;
        let (report, request_report) = measure(plan, &fleet, broker, Some(adapter), &dir, &say).await?;
        brokers_out.push(report);
        requests.extend(request_report);
    }
    if let Some(bin) = &plan.brokers.mosquitto {
        say("starting Mosquitto".into());
        let dir = work.join("mosquitto");
        std::fs::create_dir_all(&dir)?;
        let broker = brokers::start_mosquitto(bin, &fleet, &dir, &plan.hosts)?;
        let (report, _) = measure(plan, &fleet, broker, None, &dir, &say).await?;
        brokers_out.push(report);
    }
    if let (Some(launch), Some(adapter)) = (&plan.brokers.gateway, &adapter)
        && (!plan.rates.request_rates.is_empty() || plan.rates.closed_in_flight > 0)
    {
        for (k, run) in plan.ledger_runs.iter().enumerate() {
            say(format!(
                "gateway with every request through the ledger, database on {}",
                run.label
            ));
            let dir = work.join(format!("gateway-ledger-{k}"));
            std::fs::create_dir_all(&dir)?;
            let options = GatewayOptions {
                max_connections: total + 1000,
                adapter: adapter.addr,
                read_only_methods: &[],
                partner_api: false,
                overrides: &plan.gateway_overrides,
                extra_services: &[],
            };
            let broker = brokers::start_gateway(launch, &fleet, &dir, &run.db_dir, &plan.hosts, &options).await?;
            let place = match run.label.as_str() {
                "tmpfs" => "tmpfs (/dev/shm: no fsync cost)".to_owned(),
                "disk" => "disk (the run's temporary directory)".to_owned(),
                other => other.to_owned(),
            };
            let setup = format!(
                "every request through the idempotency ledger (no read-only methods: what a method with side \
                 effects pays), SQLite on {place}, only the {} active vehicles connected",
                plan.active
            );
            let short = format!("through the ledger, SQLite on {}", run.label);
            requests.push(ledger_requests(plan, &fleet, broker, adapter, &short, &setup, &say).await?);
        }
    }
    let abuse = match (&plan.abuse, plan.hosts.first()) {
        (Some(abuse_plan), Some(_)) => {
            let brokers = AbuseBrokers {
                setup: &plan.brokers,
                adapter: adapter.as_ref(),
                overrides: &plan.abuse_overrides,
                hosts: &plan.hosts,
            };
            abuse::run_all(abuse_plan, &fleet, &brokers, work, &say).await?
        }
        _ => Vec::new(),
    };
    drop(adapter);

    if brokers_out.iter().any(|b| b.name == "gateway") {
        notes.push(
            "The gateway runs its release binary as its own process with its default logging (info), SQLite in WAL \
             mode with synchronous=FULL as configured; the partner adapter runs as its own process at log level warn."
                .into(),
        );
    }
    Ok(Report {
        run: started.finish(plan.command.clone()),
        settings: Settings {
            vehicles: plan.vehicles,
            active: plan.active,
            loopback_addrs: plan.hosts.len(),
            max_inflight: plan.storm.max_inflight,
            connect_rate: plan.storm.connect_rate,
            keep_alive_s: plan.storm.keep_alive.as_secs(),
            duration_s: plan.duration.as_secs_f64(),
            warmup_s: plan.warmup.as_secs_f64(),
            rates: plan.rates.clone(),
            agent_mix: plan.agent_mix.to_string(),
            gateway_overrides: plan.gateway_overrides.iter().map(ToString::to_string).collect(),
        },
        certificates: Certificates {
            vehicles: total,
            issue_s: fleet.issue_time.as_secs_f64(),
        },
        brokers: brokers_out,
        requests,
        abuse,
        notes,
        disk_fsync_ms,
    })
}

fn storm_report(kind: &str, vehicles: usize, o: StormOutcome, full: u64, cpu: procfs::CpuSplit) -> StormReport {
    let connected = o.connected as u64;
    let wall = o.wall.as_secs_f64();
    StormReport {
        kind: kind.into(),
        vehicles,
        connected: o.connected,
        failed_attempts: o.failed_attempts,
        gave_up: o.gave_up,
        first_error: o.first_error,
        wall_s: wall,
        connects_per_s: if wall > 0.0 { o.connected as f64 / wall } else { 0.0 },
        time_to_connack: o.latencies.summary(),
        full_handshakes: full,
        resumed_handshakes: connected.saturating_sub(full),
        broker_cpu_ms_per_connect: cpu.broker_ms_per(connected),
        loadgen_cpu_ms_per_connect: if connected == 0 {
            0.0
        } else {
            cpu.loadgen_cpu_s * 1e3 / connected as f64
        },
        cpu,
    }
}

/// Storms, memory, registry, publish round trips and (gateway) requests against one broker.
async fn measure(
    plan: &Plan,
    fleet: &Fleet,
    mut broker: Broker,
    adapter: Option<&Adapter>,
    dir: &Path,
    say: &impl Fn(String),
) -> Result<(BrokerReport, Option<RequestReport>)> {
    let name = broker.kind.name();
    let roles = Roles::new(broker.pid, adapter.and_then(|a| a.pid));
    let target = Target {
        hosts: plan.hosts.clone(),
        port: broker.port,
    };
    let n = plan.vehicles;
    let mut swarm = Swarm::new(fleet.vehicles[..n].iter().map(|v| v.vin.clone()).collect());
    let counter = HandshakeCounter::default();
    let configs = fleet.client_configs(0..n, &counter)?;
    let mut memory = MemoryReport {
        vehicles: n,
        baseline_kib: roles.broker_rss_kib(),
        ..MemoryReport::default()
    };

    say(format!("{name}: storm of {n} vehicles, full handshakes"));
    let mark = roles.mark();
    let outcome = swarm.storm(&configs, &target, &plan.storm).await?;
    let full = storm_report("full", n, outcome, counter.full_handshakes(), roles.since(&mark));
    memory.connected_kib = roles.broker_rss_kib();
    memory.threads_connected = roles.broker_threads();
    let connected = swarm.connected();
    say(format!(
        "{name}: {} connected at {:.0}/s; subscribing each to resp and events",
        full.connected, full.connects_per_s
    ));
    swarm
        .subscribe(&connected, |vin| {
            vec![proto::topics::responses(vin), proto::topics::events(vin)]
        })
        .await?;
    memory.subscribed_kib = roles.broker_rss_kib();
    let per = |kib: u64| {
        if connected.is_empty() {
            0.0
        } else {
            kib.saturating_sub(memory.baseline_kib) as f64 / connected.len() as f64
        }
    };
    memory.per_vehicle_connected_kib = per(memory.connected_kib);
    memory.per_vehicle_subscribed_kib = per(memory.subscribed_kib);
    swarm.disconnect_all().await?;
    let settled = settle(&roles, plan.settle).await;
    memory.after_disconnect_kib = roles.broker_rss_kib();

    say(format!(
        "{name}: storm of {n} vehicles reconnecting with their TLS sessions"
    ));
    let before = counter.full_handshakes();
    let resumed_since_ms = gateway::clock::now_ms() - 1;
    let mark = roles.mark();
    let outcome = swarm.storm(&configs, &target, &plan.storm).await?;
    let resumed = storm_report(
        "resumed",
        n,
        outcome,
        counter.full_handshakes() - before,
        roles.since(&mark),
    );
    memory.reconnected_kib = roles.broker_rss_kib();
    say(format!(
        "{name}: {} reconnected at {:.0}/s, {} resumed",
        resumed.connected, resumed.connects_per_s, resumed.resumed_handshakes
    ));

    for round in 0..plan.reconnect_rounds {
        say(format!(
            "{name}: reconnect round {} of {}",
            round + 1,
            plan.reconnect_rounds
        ));
        swarm.disconnect_all().await?;
        settle(&roles, plan.settle).await;
        let o = swarm.storm(&configs, &target, &plan.storm).await?;
        memory.rounds_kib.push(roles.broker_rss_kib());
        if o.connected != n {
            bail!(
                "reconnect round {}: {} of {n} connected ({:?})",
                round + 1,
                o.connected,
                o.first_error
            );
        }
    }

    let registry = if broker.kind == BrokerKind::Gateway && !plan.registry_wait.is_zero() {
        say(format!("{name}: waiting for the connection log to catch up"));
        Some(wait_registry(&broker, resumed_since_ms, resumed.connected, plan.registry_wait).await)
    } else {
        None
    };

    let active: Vec<usize> = swarm.connected().into_iter().take(plan.active).collect();
    let mut echo = Vec::new();
    if !plan.rates.echo_rates.is_empty() || plan.rates.closed_in_flight > 0 {
        traffic::prepare(&mut swarm, &active, &Echo).await?;
        let mut loads: Vec<Load> = plan.rates.echo_rates.iter().map(|r| Load::Rate(*r)).collect();
        if plan.rates.closed_in_flight > 0 {
            loads.push(Load::Closed(plan.rates.closed_in_flight));
        }
        for load in loads {
            say(format!("{name}: publish round trips, {}", load.describe()));
            echo.push(traffic_run(&mut swarm, &active, &Echo, load, plan, &roles, "publish QoS 1").await);
        }
    }

    let mut request_report = None;
    if broker.kind == BrokerKind::Gateway {
        let raw = request_runs(&mut swarm, &active, plan, &roles, say).await?;
        let mut agent_runs = Vec::new();
        if plan.rates.agents > 0 && !plan.rates.agent_rates.is_empty() {
            say(format!("{name}: starting {} real agents", plan.rates.agents));
            let agents = Agents::start(
                fleet,
                n..n + plan.rates.agents,
                &plan.hosts[0].to_string(),
                broker.port,
                &dir.join("agents"),
            )
            .await?;
            for rate in &plan.rates.agent_rates {
                say(format!("{name}: agent requests at {rate}/s"));
                let mark = roles.mark();
                let outcome = agents
                    .run_mix(&plan.agent_mix, *rate, plan.duration, plan.warmup)
                    .await?;
                agent_runs.push(TrafficReport::new(
                    &format!("request mix ({}) via vehicle-agent GatewayLink::call", plan.agent_mix),
                    format!("{rate:.0}/s"),
                    outcome,
                    roles.since(&mark),
                ));
            }
            agents.shutdown().await;
        }
        request_report = Some(RequestReport {
            short: "read-only method, no ledger".into(),
            setup: format!(
                "{} declared read-only (they skip the idempotency ledger, as the demo configures them), every \
                 vehicle of the storm still connected, SQLite (connection log) on disk",
                if plan.brokers.read_only_methods.is_empty() {
                    "no method".to_owned()
                } else {
                    plan.brokers.read_only_methods.join(" and ")
                }
            ),
            raw,
            agents: agent_runs,
        });
    }

    let _ = swarm.disconnect_all().await;
    let (lost_connections, first_loss) = (swarm.lost, swarm.first_loss.clone());
    drop(swarm);
    let under_storm = match &plan.under_storm {
        Some(u) => {
            say(format!(
                "{name}: traffic from {} connected vehicles during a connect storm",
                u.active
            ));
            served_during_storm(u, n, fleet, &broker, &target, &roles).await?
        }
        None => Vec::new(),
    };
    let restart = match &plan.restart {
        Some(restart) => {
            let agents = if broker.kind == BrokerKind::Gateway {
                plan.rates.agents
            } else {
                0
            };
            Some(
                reconnect_storm(
                    restart,
                    fleet,
                    &mut broker,
                    &target,
                    &dir.join("restart-agents"),
                    agents,
                    say,
                )
                .await?,
            )
        }
        None => None,
    };
    let report = BrokerReport {
        restart,
        under_storm,
        settle_after_disconnect_s: settled,
        name: name.into(),
        label: broker.label.clone(),
        storms: vec![full, resumed],
        memory,
        registry,
        echo,
        lost_connections,
        first_loss,
    };
    broker.stop().await;
    Ok((report, request_report))
}

async fn traffic_run(
    swarm: &mut Swarm,
    active: &[usize],
    workload: &dyn traffic::Workload,
    load: Load,
    plan: &Plan,
    roles: &Roles,
    scenario: &str,
) -> TrafficReport {
    let mark = roles.mark();
    let schedule = Schedule {
        load,
        duration: plan.duration,
        warmup: plan.warmup,
    };
    let outcome = traffic::run(swarm, active, workload, schedule).await;
    TrafficReport::new(scenario, load.describe(), outcome, roles.since(&mark))
}

async fn request_runs(
    swarm: &mut Swarm,
    active: &[usize],
    plan: &Plan,
    roles: &Roles,
    say: &impl Fn(String),
) -> Result<Vec<TrafficReport>> {
    let workload = ParkingRequests::default();
    traffic::prepare(swarm, active, &workload).await?;
    let mut loads: Vec<Load> = plan.rates.request_rates.iter().map(|r| Load::Rate(*r)).collect();
    if plan.rates.closed_in_flight > 0 {
        loads.push(Load::Closed(plan.rates.closed_in_flight));
    }
    let mut out = Vec::new();
    for load in loads {
        say(format!("gateway: requests (raw MQTT cars), {}", load.describe()));
        out.push(traffic_run(swarm, active, &workload, load, plan, roles, "request ListNearbyLots").await);
    }
    Ok(out)
}

/// Request runs on a gateway of their own with only the active vehicles connected.
async fn ledger_requests(
    plan: &Plan,
    fleet: &Fleet,
    broker: Broker,
    adapter: &Adapter,
    short: &str,
    setup: &str,
    say: &impl Fn(String),
) -> Result<RequestReport> {
    let roles = Roles::new(broker.pid, adapter.pid);
    let m = plan.active.min(plan.vehicles);
    let mut swarm = Swarm::new(fleet.vehicles[..m].iter().map(|v| v.vin.clone()).collect());
    let configs = fleet.client_configs(0..m, &HandshakeCounter::default())?;
    let target = Target {
        hosts: plan.hosts.clone(),
        port: broker.port,
    };
    let outcome = swarm.storm(&configs, &target, &plan.storm).await?;
    if outcome.connected == 0 {
        bail!("no vehicle connected to the ledger gateway: {:?}", outcome.first_error);
    }
    let active = swarm.connected();
    let raw = request_runs(&mut swarm, &active, plan, &roles, say).await?;
    let _ = swarm.disconnect_all().await;
    drop(swarm);
    broker.stop().await;
    Ok(RequestReport {
        short: short.into(),
        setup: setup.into(),
        raw,
        agents: Vec::new(),
    })
}

/// Polls the gateway's registry (its own store code, read-only queries) until every session of
/// the resumed storm is recorded, or `limit` passes.
async fn wait_registry(broker: &Broker, since_ms: i64, expected: usize, limit: Duration) -> RegistryReport {
    let started = Instant::now();
    let mut recorded = 0;
    if let Some(store) = broker.registry().await {
        loop {
            recorded = store
                .open_connections()
                .await
                .map(|s| s.iter().filter(|s| s.connection.connected_at_ms >= since_ms).count())
                .unwrap_or(recorded);
            if recorded >= expected || started.elapsed() >= limit {
                break;
            }
            // A measurement of the gateway's backlog, not synchronisation: poll its database.
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        if broker.is_process() {
            store.close().await;
        }
    }
    RegistryReport {
        caught_up: recorded >= expected,
        lag_s: started.elapsed().as_secs_f64(),
        recorded,
        expected,
    }
}

/// Waits (at most `limit`) until the broker has used no more than two clock ticks of CPU in a
/// quarter of a second, and returns how long that took: the broker's clean-up time after a
/// mass disconnect, measured instead of slept through.
async fn settle(roles: &Roles, limit: Duration) -> Option<f64> {
    if limit.is_zero() {
        return None;
    }
    let started = Instant::now();
    let mut last = procfs::cpu_ticks(roles.broker).unwrap_or(0);
    loop {
        // Sampling the broker's CPU counter: a measurement, not synchronisation.
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = procfs::cpu_ticks(roles.broker).unwrap_or(0);
        if now.saturating_sub(last) <= 2 || started.elapsed() >= limit {
            return Some(started.elapsed().as_secs_f64());
        }
        last = now;
    }
}

/// Writes `report.json` and `report.md` into `out`.
pub fn write_report(report: &Report, out: &Path) -> Result<(PathBuf, PathBuf)> {
    crate::report::write_files(out, "report", report, &report.markdown())
}
