//! The abusive-car scenario: a fleet of well-behaved cars stays connected, makes requests and
//! receives (and acknowledges) partner events at a steady rate, first alone (the baseline),
//! then while one authenticated car abuses MQTT at full speed, one abuse after the other, and
//! while unauthenticated sockets flood the listener. Per abuse: the broker's memory during and
//! after it, what the good cars saw, and what the abuser saw (disconnects and their reasons).
//!
//! Against Mosquitto (optional) only the abuser runs: Mosquitto has no partner behind it and
//! no per-client bounds by default, so its memory is the figure.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use crate::abuser::{self, Abuse, AbuseSizes, AbuserOutcome, AbuserTarget, SocketFloodOutcome};
use crate::brokers::{self, Adapter, Broker, BrokerKind, BrokerSetup, ConfigOverride, GatewayOptions};
use crate::fleet::{Fleet, HandshakeCounter};
use crate::partner::{self, EventWindow, PartnerEvents};
use crate::procfs::{self, Roles};
use crate::report::{RunInfo, notes_markdown};
use crate::swarm::{StormSettings, Swarm, Target};
use crate::traffic::{self, Load, ParkingRequests, Schedule, TrafficOutcome};

mod good_fleet;
mod markdown;
use good_fleet::{GoodFleet, Slot, session_ends};
pub use markdown::{AbuseRun, markdown};

/// What the scenario runs.
#[derive(Debug, Clone)]
pub struct AbusePlan {
    /// Well-behaved cars (the fleet's first ones).
    pub good_vehicles: usize,
    /// Their requests per second, all together (ListNearbyLots, read-only).
    pub request_rate: f64,
    /// Partner events per second to them, all together.
    pub event_rate: f64,
    /// The abuses, in order.
    pub abuses: Vec<Abuse>,
    /// How long each abuse lasts (and the baseline).
    pub abuse_time: Duration,
    /// How long the good cars go on after each abuse before the memory is read again.
    pub recovery: Duration,
    /// Traffic before the baseline, left out of every figure.
    pub warmup: Duration,
    /// How big each abuse is.
    pub sizes: AbuseSizes,
    /// How the good cars connect. They all come from one address, so fewer attempts in flight
    /// than the gateway's per-source quota of sockets still handshaking (64 by default).
    pub storm: StormSettings,
}

impl Default for AbusePlan {
    fn default() -> Self {
        AbusePlan {
            good_vehicles: 1000,
            request_rate: 200.0,
            event_rate: 100.0,
            abuses: Abuse::ALL.to_vec(),
            abuse_time: Duration::from_secs(20),
            recovery: Duration::from_secs(10),
            // Long enough for the gateway's caches to fill (its heap grows a little at first).
            warmup: Duration::from_secs(10),
            sizes: AbuseSizes::default(),
            storm: StormSettings {
                max_inflight: 32,
                retries: 10,
                ..StormSettings::default()
            },
        }
    }
}

impl AbusePlan {
    /// Vehicles the scenario needs from the fleet: the good ones, the abuser and the car that
    /// connects during the socket flood (the fleet's last two).
    pub fn vehicles_needed(&self) -> usize {
        self.good_vehicles + 2
    }
}

/// Broker memory around one phase, KiB.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Rss {
    /// When the phase started.
    pub before_kib: u64,
    /// Highest sample during it (every 100 ms).
    pub peak_kib: u64,
    /// When it ended.
    pub end_kib: u64,
    /// After the recovery time, the abuser gone.
    pub after_kib: u64,
}

impl Rss {
    /// Peak over the start, KiB (never negative).
    pub fn growth_kib(&self) -> u64 {
        self.peak_kib.saturating_sub(self.before_kib)
    }

    /// After the recovery over the start, KiB (negative: below it).
    pub fn left_kib(&self) -> i64 {
        self.after_kib as i64 - self.before_kib as i64
    }
}

/// What the good cars saw in one window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GoodWindow {
    /// Their requests.
    pub requests: TrafficOutcome,
    /// Events due in the window and their delivery.
    pub events: EventWindow,
    /// Good cars whose connection was lost in the window.
    pub lost_connections: u64,
}

/// One abuse.
#[derive(Debug, Clone, Serialize)]
pub struct AbusePhase {
    /// Which.
    pub abuse: Abuse,
    /// What the abuser did.
    pub what: String,
    /// Broker memory.
    pub rss: Rss,
    /// Broker CPU seconds during the abuse.
    pub broker_cpu_s: f64,
    /// What the good cars saw meanwhile (gateway only).
    pub good: Option<GoodWindow>,
    /// What they saw in the recovery time after it.
    pub recovery: Option<GoodWindow>,
    /// What the abuser did and got (not for the socket flood).
    pub abuser: Option<AbuserOutcome>,
    /// Why the gateway ended the abuser's connections (those it opened during the abuse and that
    /// ended before the abuser left), from the gateway's connection log.
    pub disconnect_reasons: BTreeMap<String, u64>,
    /// How the abuser's connections still open when it left ended, from the connection log.
    pub open_when_it_left: BTreeMap<String, u64>,
    /// Connections of the abuser the connection log recorded (rows of its `connections` table).
    pub connections_recorded: u64,
    /// The socket flood and the car connecting meanwhile.
    pub sockets: Option<SocketFloodOutcome>,
    /// Bytes the gateway logged during the abuse.
    pub log_bytes: Option<u64>,
    /// Growth of the gateway's database (and its WAL) during the abuse.
    pub database_bytes: Option<i64>,
}

/// The scenario on one broker.
#[derive(Debug, Clone, Serialize)]
pub struct AbuseReport {
    /// `gateway` or `mosquitto`.
    pub broker: String,
    /// Name and version.
    pub label: String,
    /// Good cars connected (0 on Mosquitto).
    pub good_vehicles: usize,
    /// Their requests per second.
    pub request_rate: f64,
    /// Events per second to them.
    pub event_rate: f64,
    /// Length of each abuse, s.
    pub abuse_s: f64,
    /// Recovery after each, s.
    pub recovery_s: f64,
    /// Sizes of the abuses.
    pub sizes: AbuseSizes,
    /// The gateway's configuration file as the bench wrote it.
    pub config_file: Option<String>,
    /// The bounds in force (`[mqtt]`, `[requests]`, `[events]`, defaults included).
    pub bounds: Option<serde_json::Value>,
    /// The good cars without abuse.
    pub baseline: Option<GoodWindow>,
    /// Broker memory over the baseline.
    pub baseline_rss: Rss,
    /// Each abuse.
    pub phases: Vec<AbusePhase>,
}

/// Where the scenario runs.
pub struct AbuseTarget<'a> {
    /// The fleet (the good cars first, the abuser and the flood-time car last).
    pub fleet: &'a Fleet,
    /// The broker, listening on `host`.
    pub broker: &'a Broker,
    /// The adapter's process, for the CPU split.
    pub adapter_pid: Option<u32>,
    /// Where cars connect.
    pub host: IpAddr,
}

/// Runs `plan` against `target.broker`: with the good fleet on the gateway, the abuser alone
/// on Mosquitto.
pub async fn run(plan: &AbusePlan, target: &AbuseTarget<'_>, say: &impl Fn(String)) -> Result<AbuseReport> {
    let AbuseTarget { fleet, broker, .. } = *target;
    let total = fleet.vehicles.len();
    if total < 3 {
        bail!("the abuse scenario needs at least 3 vehicles in the fleet, not {total}");
    }
    let good = match broker.kind {
        BrokerKind::Gateway => plan.good_vehicles.min(total - 2),
        BrokerKind::Mosquitto => 0,
    };
    let roles = Roles::new(broker.pid, target.adapter_pid);
    let addr = SocketAddr::new(target.host, broker.port);
    let name = broker.kind.name();
    let mut report = AbuseReport {
        broker: name.into(),
        label: broker.label.clone(),
        good_vehicles: good,
        request_rate: if good > 0 { plan.request_rate } else { 0.0 },
        event_rate: if good > 0 { plan.event_rate } else { 0.0 },
        abuse_s: plan.abuse_time.as_secs_f64(),
        recovery_s: plan.recovery.as_secs_f64(),
        sizes: plan.sizes.clone(),
        config_file: broker.config.as_ref().and_then(|p| std::fs::read_to_string(p).ok()),
        bounds: broker.config.as_deref().map(bounds_in_force).transpose()?,
        baseline: None,
        baseline_rss: Rss::default(),
        phases: Vec::new(),
    };

    let mut fleet_load = match good {
        0 => None,
        n => {
            say(format!("{name}: connecting {n} well-behaved cars"));
            Some(GoodFleet::connect(fleet, broker, n, target.host, plan, say).await?)
        }
    };
    if let Some(load) = &mut fleet_load {
        load.window(plan.warmup, Slot::Warmup).await;
        say(format!(
            "{name}: baseline, {:.0} s without abuse",
            plan.abuse_time.as_secs_f64()
        ));
        let before = roles.broker_rss_kib();
        let sampler = PeakRss::start(broker.pid, Instant::now() + plan.abuse_time);
        let baseline = load.window(plan.abuse_time, Slot::Baseline).await;
        let end = roles.broker_rss_kib();
        report.baseline_rss = Rss {
            before_kib: before,
            peak_kib: sampler.peak().await.max(end),
            end_kib: end,
            after_kib: end,
        };
        report.baseline = Some(baseline);
    }

    let abuser_vin = fleet.vehicles[total - 2].vin.clone();
    let abuser = AbuserTarget {
        addr,
        server_name: target.host.to_string(),
        vin: abuser_vin.clone(),
        config: fleet
            .client_configs(total - 2..total - 1, &HandshakeCounter::default())?
            .remove(0),
    };
    let mut windows = Vec::new();
    for &abuse in plan.abuses.iter().filter(|a| a.applies_to(broker.kind)) {
        say(format!(
            "{name}: abuse {}, {:.0} s, then {:.0} s without",
            abuse.name(),
            plan.abuse_time.as_secs_f64(),
            plan.recovery.as_secs_f64()
        ));
        let before = roles.broker_rss_kib();
        let (log0, db0, refusals) = (broker.log_bytes(), broker.database_bytes(), broker.refusals_mark());
        let mark = roles.mark();
        // The gateway's own clock: the windows are matched against the times its connection log records.
        let started_ms = gateway::clock::now_ms();
        let until = Instant::now() + plan.abuse_time;
        windows.push((started_ms, started_ms + plan.abuse_time.as_millis() as i64));
        let sampler = PeakRss::start(broker.pid, until);
        let attacker = Attacker::start(abuse, &abuser, &plan.sizes, addr, until);
        let car = match abuse {
            Abuse::Sockets => {
                let probe = total - 1;
                // One fresh identity per attempt: each is a full handshake, as a new car's.
                let configs = (0..=plan.abuse_time.as_secs())
                    .map(|_| {
                        fleet
                            .client_configs(probe..probe + 1, &HandshakeCounter::default())
                            .map(|mut c| c.remove(0))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let (vin, server_name) = (fleet.vehicles[probe].vin.clone(), target.host.to_string());
                Some(tokio::spawn(async move {
                    abuser::car_connects(addr, &server_name, &vin, configs, until).await
                }))
            }
            _ => None,
        };
        let phase = report.phases.len();
        let good_window = match &mut fleet_load {
            Some(load) => Some(load.window(plan.abuse_time, Slot::Abuse(phase)).await),
            None => {
                tokio::time::sleep_until(until.into()).await;
                None
            }
        };
        let (abuser_out, mut sockets) = attacker.finish().await?;
        if let Some(s) = &mut sockets {
            if let Some(car) = car {
                s.car = car.await?;
            }
            s.gateway_refusals = refusals.and_then(|mark| broker.refusals_since(&mark));
        }
        let end = roles.broker_rss_kib();
        let cpu = roles.since(&mark);
        let (log1, db1) = (broker.log_bytes(), broker.database_bytes());
        let peak = sampler.peak().await.max(end);
        let recovery = match &mut fleet_load {
            Some(load) => Some(load.window(plan.recovery, Slot::Recovery(phase)).await),
            None => {
                tokio::time::sleep(plan.recovery).await;
                None
            }
        };
        let after = roles.broker_rss_kib();
        report.phases.push(AbusePhase {
            abuse,
            what: abuse.describe(&plan.sizes),
            rss: Rss {
                before_kib: before,
                peak_kib: peak,
                end_kib: end,
                after_kib: after,
            },
            broker_cpu_s: cpu.broker_cpu_s,
            good: good_window,
            recovery,
            abuser: abuser_out,
            disconnect_reasons: BTreeMap::new(),
            open_when_it_left: BTreeMap::new(),
            connections_recorded: 0,
            sockets,
            log_bytes: log0.zip(log1).map(|(a, b)| b.saturating_sub(a)),
            database_bytes: db0.zip(db1).map(|(a, b)| b as i64 - a as i64),
        });
        say(format!(
            "{name}: {}: RSS {:.1} -> peak {:.1} -> {:.1} MiB after",
            abuse.name(),
            before as f64 / 1024.0,
            peak as f64 / 1024.0,
            after as f64 / 1024.0
        ));
    }

    if let Some(mut load) = fleet_load {
        load.finish(&mut report).await;
    }
    if broker.kind == BrokerKind::Gateway {
        let ends = session_ends(broker, &abuser_vin, &windows).await;
        for (phase, (during, left)) in report.phases.iter_mut().zip(ends) {
            phase.connections_recorded = during.values().chain(left.values()).sum();
            phase.disconnect_reasons = during;
            phase.open_when_it_left = left;
        }
    }
    Ok(report)
}

/// The brokers the scenario runs against, each started afresh for it.
pub struct AbuseBrokers<'a> {
    /// Which brokers, and how to start them.
    pub setup: &'a BrokerSetup,
    /// The adapter behind the gateway, if the gateway is measured.
    pub adapter: Option<&'a Adapter>,
    /// Settings of the gateway's configuration beyond the bench's own (non-default bounds).
    pub overrides: &'a [ConfigOverride],
    /// Loopback addresses (the brokers listen on the first, or on all when there are several).
    pub hosts: &'a [IpAddr],
}

/// Starts each broker of `brokers` in turn, runs `plan` against it and stops it.
pub async fn run_all(
    plan: &AbusePlan,
    fleet: &Fleet,
    brokers: &AbuseBrokers<'_>,
    work: &Path,
    say: &impl Fn(String),
) -> Result<Vec<AbuseReport>> {
    let host = brokers.hosts.first().copied().context("no loopback address")?;
    let mut out = Vec::new();
    if let (Some(launch), Some(adapter)) = (&brokers.setup.gateway, brokers.adapter) {
        say("starting a gateway for the abusive-car scenario (partner API on)".into());
        let dir = work.join("gateway-abuse");
        std::fs::create_dir_all(&dir)?;
        let options = GatewayOptions {
            max_connections: fleet.vehicles.len() + plan.sizes.sockets + 1000,
            adapter: adapter.addr,
            read_only_methods: &brokers.setup.read_only_methods,
            partner_api: true,
            overrides: brokers.overrides,
            extra_services: &[],
        };
        let broker =
            brokers::start_gateway(launch, fleet, &dir, &brokers.setup.db_dir, brokers.hosts, &options).await?;
        let target = AbuseTarget {
            fleet,
            broker: &broker,
            adapter_pid: adapter.pid,
            host,
        };
        let report = run(plan, &target, say).await;
        broker.stop().await;
        out.push(report?);
    }
    if let Some(bin) = &brokers.setup.mosquitto {
        say("starting Mosquitto for the abusive-car scenario".into());
        let dir = work.join("mosquitto-abuse");
        std::fs::create_dir_all(&dir)?;
        let broker = brokers::start_mosquitto(bin, fleet, &dir, brokers.hosts)?;
        let target = AbuseTarget {
            fleet,
            broker: &broker,
            adapter_pid: None,
            host,
        };
        let report = run(plan, &target, say).await;
        broker.stop().await;
        out.push(report?);
    }
    Ok(out)
}

/// The `[mqtt]`, `[requests]` and `[events]` settings the gateway runs with (its own defaults
/// filled in), read from the file with the gateway's own loader.
fn bounds_in_force(toml: &Path) -> Result<serde_json::Value> {
    let config = gateway::GatewayConfig::load(Some(toml)).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(serde_json::json!({
        "mqtt": config.mqtt,
        "requests": config.requests,
        "events": config.events,
    }))
}

/// The abuser or the socket flood, running on a thread of its own until `until`.
enum Attacker {
    Car(std::thread::JoinHandle<Result<AbuserOutcome>>),
    Sockets(std::thread::JoinHandle<Result<SocketFloodOutcome>>),
}

impl Attacker {
    fn start(abuse: Abuse, car: &AbuserTarget, sizes: &AbuseSizes, addr: SocketAddr, until: Instant) -> Attacker {
        match abuse {
            Abuse::Sockets => Attacker::Sockets(abuser::spawn_socket_flood(
                addr,
                sizes.socket_source,
                sizes.sockets,
                until,
            )),
            _ => Attacker::Car(abuser::spawn(abuse, car.clone(), sizes.clone(), until)),
        }
    }

    async fn finish(self) -> Result<(Option<AbuserOutcome>, Option<SocketFloodOutcome>)> {
        let panicked = || anyhow::anyhow!("the attacker's thread panicked");
        match self {
            Attacker::Car(thread) => {
                let out = tokio::task::spawn_blocking(move || thread.join())
                    .await?
                    .map_err(|_| panicked())??;
                Ok((Some(out), None))
            }
            Attacker::Sockets(thread) => {
                let out = tokio::task::spawn_blocking(move || thread.join())
                    .await?
                    .map_err(|_| panicked())??;
                Ok((None, Some(out)))
            }
        }
    }
}

/// The highest RSS of a process, sampled every 100 ms until a deadline.
struct PeakRss(tokio::task::JoinHandle<u64>);

impl PeakRss {
    fn start(pid: u32, until: Instant) -> PeakRss {
        PeakRss(tokio::spawn(async move {
            let mut peak = 0;
            let mut ticks = tokio::time::interval(Duration::from_millis(100));
            while Instant::now() < until {
                ticks.tick().await;
                peak = peak.max(procfs::rss_kib(pid).unwrap_or(0));
            }
            peak
        }))
    }

    async fn peak(self) -> u64 {
        self.0.await.unwrap_or(0)
    }
}

/// Disconnect reasons and how many connections ended with each.
type Reasons = BTreeMap<String, u64>;
