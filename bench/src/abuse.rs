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

/// The well-behaved cars: connected, subscribed to `resp` and `events`, making requests and
/// acknowledging the events a partner pushes to them.
struct GoodFleet {
    swarm: Swarm,
    cars: Vec<usize>,
    requests: ParkingRequests,
    events: PartnerEvents,
    rate: f64,
    /// Windows whose event figures are still to compute (once every event had its chance
    /// to arrive), with where they go.
    pending: Vec<(Slot, Duration, Duration)>,
}

/// Where a window's figures go.
#[derive(Clone, Copy)]
enum Slot {
    Warmup,
    Baseline,
    Abuse(usize),
    Recovery(usize),
}

impl GoodFleet {
    async fn connect(
        fleet: &Fleet,
        broker: &Broker,
        n: usize,
        host: IpAddr,
        plan: &AbusePlan,
        say: &impl Fn(String),
    ) -> Result<GoodFleet> {
        let mut swarm = Swarm::new(fleet.vehicles[..n].iter().map(|v| v.vin.clone()).collect());
        let configs = fleet.client_configs(0..n, &HandshakeCounter::default())?;
        let target = Target {
            hosts: vec![host],
            port: broker.port,
        };
        let outcome = swarm.storm(&configs, &target, &plan.storm).await?;
        if outcome.connected != n {
            bail!(
                "{} of {n} good cars connected: {:?}",
                outcome.connected,
                outcome.first_error
            );
        }
        let cars = swarm.connected();
        let granted = swarm
            .subscribe(&cars, |vin| {
                vec![proto::topics::responses(vin), proto::topics::events(vin)]
            })
            .await?;
        if granted != n {
            bail!("{granted} of {n} good cars were granted their subscriptions");
        }
        let api = broker.partner_api.context("the gateway's partner API is not enabled")?;
        say(format!(
            "good cars: {n} connected and subscribed; {:.0} requests/s, {:.0} events/s from the partner",
            plan.request_rate, plan.event_rate
        ));
        let client = partner::client(fleet, api).await?;
        let vins = cars.iter().map(|&i| swarm.vin(i).clone()).collect();
        Ok(GoodFleet {
            events: PartnerEvents::start(client, vins, plan.event_rate),
            swarm,
            cars,
            requests: ParkingRequests::default(),
            rate: plan.request_rate,
            pending: Vec::new(),
        })
    }

    /// Requests and events for `duration`; the events' figures come in [`GoodFleet::finish`].
    async fn window(&mut self, duration: Duration, slot: Slot) -> GoodWindow {
        let lost = self.swarm.lost;
        let from = self.events.now();
        let events = &self.events;
        let schedule = Schedule {
            load: Load::Rate(self.rate),
            duration,
            warmup: Duration::ZERO,
        };
        let requests = traffic::run_with(
            &mut self.swarm,
            &self.cars,
            &self.requests,
            schedule,
            &mut |swarm, m| events.on_message(swarm, m),
        )
        .await;
        self.pending.push((slot, from, from + duration));
        GoodWindow {
            requests,
            events: EventWindow::default(),
            lost_connections: self.swarm.lost - lost,
        }
    }

    /// Stops the partner, lets the last events arrive, fills in every window's event figures
    /// and disconnects the cars.
    async fn finish(&mut self, report: &mut AbuseReport) {
        self.events.stop().await;
        // Events published last still arrive; read them (and acknowledge them) for a while.
        let until = Instant::now() + Duration::from_secs(2);
        let events = &self.events;
        while let Ok(Some((i, event))) = tokio::time::timeout_at(until.into(), self.swarm.next()).await {
            if let crate::swarm::Event::Message { topic, payload, at } = event {
                events.on_message(
                    &self.swarm,
                    traffic::Other {
                        vehicle: i,
                        topic: &topic,
                        payload: &payload,
                        at,
                    },
                );
            }
        }
        for &(slot, from, to) in &self.pending {
            let window = self.events.window(from, to);
            let target = match slot {
                Slot::Warmup => None,
                Slot::Baseline => report.baseline.as_mut(),
                Slot::Abuse(i) => report.phases.get_mut(i).and_then(|p| p.good.as_mut()),
                Slot::Recovery(i) => report.phases.get_mut(i).and_then(|p| p.recovery.as_mut()),
            };
            if let Some(w) = target {
                w.events = window;
            }
        }
        let _ = self.swarm.disconnect_all().await;
    }
}

/// How the abuser's connections ended, by abuse window (unix ms, from the abuser's start to its
/// departure), from the gateway's connection log: a connection belongs to the window it began in,
/// and either ended before the abuser left (the gateway's doing) or was open when it left.
/// Read once every session of the abuser is recorded as closed (or 15 s have passed).
async fn session_ends(broker: &Broker, vin: &proto::Vin, windows: &[(i64, i64)]) -> Vec<(Reasons, Reasons)> {
    let mut out = vec![(Reasons::new(), Reasons::new()); windows.len()];
    let Some(store) = broker.registry().await else {
        return out;
    };
    let started = Instant::now();
    let sessions = loop {
        let sessions = store.connections_of(vin, u32::MAX).await.unwrap_or_default();
        if sessions.iter().all(|s| s.disconnected_at_ms.is_some()) || started.elapsed() > Duration::from_secs(15) {
            break sessions;
        }
        // The log is written in batches: poll the gateway's database until it has caught up.
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for s in sessions {
        let (Some(at), Some(reason)) = (s.disconnected_at_ms, s.disconnect_reason) else {
            continue;
        };
        let Some(k) = windows
            .iter()
            .position(|(from, to)| (*from..*to).contains(&s.connection.connected_at_ms))
        else {
            continue;
        };
        let (during, left) = &mut out[k];
        let reasons = if at < windows[k].1 { during } else { left };
        *reasons.entry(reason).or_default() += 1;
    }
    if broker.is_process() {
        store.close().await;
    }
    out
}

/// Disconnect reasons and how many connections ended with each.
type Reasons = BTreeMap<String, u64>;

/// The scenario alone (`fleet-bench abuse`): its report files are `abuse.json` and `abuse.md`.
#[derive(Debug, Clone, Serialize)]
pub struct AbuseRun {
    /// When, how and where.
    #[serde(flatten)]
    pub run: RunInfo,
    /// Per broker.
    pub brokers: Vec<AbuseReport>,
    /// Things the reader must know.
    pub notes: Vec<String>,
}

impl AbuseRun {
    /// The run as Markdown.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        self.run.markdown(&mut md, "Abusive car: gateway bounds under abuse");
        markdown(&mut md, &self.brokers);
        notes_markdown(&mut md, &self.notes);
        md
    }
}

const MIB: f64 = 1024.0;

fn ms_pair(s: &crate::stats::Summary) -> String {
    if s.count == 0 {
        "-".into()
    } else {
        format!("{:.1} / {:.1}", s.p50_ms, s.p99_ms)
    }
}

/// The good cars' failures in a window, in a few words.
fn good_failures(w: &GoodWindow) -> String {
    let r = &w.requests;
    let e = &w.events;
    let refused: u64 = e.refused.values().sum();
    format!(
        "{} / {} / {} / {}",
        r.errors,
        r.missing + r.not_sent,
        e.published.saturating_sub(e.received) + refused,
        w.lost_connections
    )
}

/// The goal: at most 1 MiB more while the abuser is at it, and back within 1 MiB after it left.
fn verdict(rss: &Rss) -> &'static str {
    if rss.growth_kib() <= 1024 && rss.left_kib() <= 1024 {
        "met"
    } else {
        "**not met**"
    }
}

/// A configuration value as the file would have it, without JSON's quotes.
fn plain(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn rss_cells(rss: &Rss) -> String {
    format!(
        "{:.1} / {:.1} / {:.1} | {} / {}",
        rss.before_kib as f64 / MIB,
        rss.peak_kib as f64 / MIB,
        rss.after_kib as f64 / MIB,
        rss.growth_kib(),
        rss.left_kib()
    )
}

fn abuser_cells(p: &AbusePhase) -> (String, String) {
    match (&p.abuser, &p.sockets) {
        (Some(a), _) => (
            format!(
                "{} connections ({} failed), {} packets, {:.1} MB",
                a.connects,
                a.connect_failures,
                a.packets_sent,
                a.bytes_sent as f64 / 1e6
            ),
            a.answers(),
        ),
        (None, Some(s)) => (
            format!("{} sockets opened ({} failed)", s.opened, s.open_failures),
            format!(
                "{} closed at once, {} after waiting; the car: {} of {} connected",
                s.closed_at_once, s.closed_later, s.car.connected, s.car.attempts
            ),
        ),
        (None, None) => ("-".into(), "-".into()),
    }
}

fn count_reasons(reasons: &Reasons) -> String {
    let parts: Vec<String> = reasons.iter().map(|(reason, n)| format!("{n}× {reason}")).collect();
    parts.join("; ")
}

/// The scenario's sections of a report.
pub fn markdown(md: &mut String, reports: &[AbuseReport]) {
    for r in reports {
        let _ = writeln!(md, "\n## Abusive car: {} ({})\n", r.broker, r.label);
        let with_good = r.good_vehicles > 0;
        if with_good {
            let _ = writeln!(
                md,
                "{} well-behaved cars stay connected, making {:.0} ListNearbyLots requests/s and receiving {:.0} partner events/s \
                 (published on the partner API, acknowledged by the cars). Each abuse lasts {:.0} s at full speed, by one \
                 authenticated car that reconnects at once whenever it is disconnected; then {:.0} s without it. Latency of \
                 requests from their due time, of events from their publish time to the car reading them (p50 / p99, ms). Good \
                 cars' failures: request errors / unanswered requests / events not delivered / connections lost.\n",
                r.good_vehicles, r.request_rate, r.event_rate, r.abuse_s, r.recovery_s
            );
        } else {
            let _ = writeln!(
                md,
                "The abuser alone (no partner behind this broker, so no requests or events), {:.0} s per abuse, then {:.0} s \
                 without it.\n",
                r.abuse_s, r.recovery_s
            );
        }
        if let Some(b) = &r.bounds {
            let m = |k: &str| plain(&b["mqtt"][k]);
            let _ = writeln!(
                md,
                "Bounds in force: `mqtt.max_subscriptions` {}, `max_topic_bytes` {}, `max_qos2_awaiting_release` {}, \
                 `max_retained_messages` {} / `max_retained_bytes` {}, `max_queued_messages` {} / `max_queued_bytes` {}, \
                 `max_packets_per_second` {} (burst {}, `flood_disconnect_after` {}), `first_flight_timeout` {}, \
                 `max_pending_per_source` {}; `requests.max_per_second_per_car` {} (burst {}); \
                 `events.max_per_second_per_partner` {}.\n",
                m("max_subscriptions"),
                m("max_topic_bytes"),
                m("max_qos2_awaiting_release"),
                m("max_retained_messages"),
                m("max_retained_bytes"),
                m("max_queued_messages"),
                m("max_queued_bytes"),
                m("max_packets_per_second"),
                m("packet_burst"),
                m("flood_disconnect_after"),
                m("first_flight_timeout"),
                m("max_pending_per_source"),
                plain(&b["requests"]["max_per_second_per_car"]),
                plain(&b["requests"]["burst_per_car"]),
                plain(&b["events"]["max_per_second_per_partner"]),
            );
        }
        if with_good {
            crate::report::table_head(
                md,
                "| abuse | abuser: connections, packets sent | what it got | disconnected by the broker: seen by the abuser (reasons recorded) | RSS before / peak / after MiB | growth at peak / left after, KiB | good requests p50 / p99 | good events p50 / p99 | good failures | ≤ 1 MiB, back after |",
            );
        } else {
            crate::report::table_head(
                md,
                "| abuse | abuser: connections, packets sent | what it got | disconnected by the broker | RSS before / peak / after MiB | growth at peak / left after, KiB | ≤ 1 MiB, back after |",
            );
        }
        if let Some(b) = &r.baseline {
            let rss = Rss {
                after_kib: r.baseline_rss.end_kib,
                ..r.baseline_rss
            };
            let _ = writeln!(
                md,
                "| none (baseline) | - | - | - | {} | {} | {} | {} | - |",
                rss_cells(&rss),
                ms_pair(&b.requests.latency),
                ms_pair(&b.events.latency),
                good_failures(b)
            );
        }
        for p in &r.phases {
            let (did, got) = abuser_cells(p);
            let seen = p.abuser.as_ref().map_or(0, |a| a.disconnects);
            let disconnected = match p.disconnect_reasons.is_empty() {
                true => seen.to_string(),
                false => format!("{seen} ({})", count_reasons(&p.disconnect_reasons)),
            };
            let good = |f: &dyn Fn(&GoodWindow) -> String| p.good.as_ref().map_or("-".into(), f);
            let _ = match with_good {
                true => writeln!(
                    md,
                    "| {} | {did} | {got} | {disconnected} | {} | {} | {} | {} | {} |",
                    p.abuse.name(),
                    rss_cells(&p.rss),
                    good(&|g| ms_pair(&g.requests.latency)),
                    good(&|g| ms_pair(&g.events.latency)),
                    good(&good_failures),
                    verdict(&p.rss)
                ),
                false => writeln!(
                    md,
                    "| {} | {did} | {got} | {disconnected} | {} | {} |",
                    p.abuse.name(),
                    rss_cells(&p.rss),
                    verdict(&p.rss)
                ),
            };
        }
        let _ = writeln!(md, "\nWhat each abuse is:\n");
        for p in &r.phases {
            let _ = writeln!(md, "- `{}`: {}", p.abuse.name(), p.what);
        }
        crate::report::table_head(
            md,
            "\n| abuse | broker CPU s | log written MB | database growth MB | connections recorded | the abuser's connections open when it left, and how they ended |",
        );
        for p in &r.phases {
            let left = match (p.open_when_it_left.is_empty(), &p.abuser) {
                (false, _) => count_reasons(&p.open_when_it_left),
                (true, Some(a)) if a.connects > a.disconnects => "(not recorded)".into(),
                _ => "-".into(),
            };
            let _ = writeln!(
                md,
                "| {} | {:.1} | {} | {} | {} | {left} |",
                p.abuse.name(),
                p.broker_cpu_s,
                p.log_bytes.map_or("-".into(), |b| format!("{:.1}", b as f64 / 1e6)),
                p.database_bytes
                    .map_or("-".into(), |b| format!("{:.1}", b as f64 / 1e6)),
                if with_good {
                    p.connections_recorded.to_string()
                } else {
                    "-".into()
                },
            );
        }
        for p in &r.phases {
            let Some(s) = &p.sockets else { continue };
            let _ = writeln!(
                md,
                "\nSocket flood: {} sockets from {}, {} opened ({} could not be opened{}), {} closed by the broker at once, {} \
                 after waiting, {} still open at the end.{} A car connecting from 127.0.0.1 every second (full handshake): \
                 {} of {} connected, time to CONNACK p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms{}.",
                s.sockets,
                s.source,
                s.opened,
                s.open_failures,
                s.first_open_error.as_ref().map_or(String::new(), |e| format!(", first: `{e}`")),
                s.closed_at_once,
                s.closed_later,
                s.open_at_end,
                s.gateway_refusals.map_or(String::new(), |g| format!(
                    " The gateway counted {} refused for their source's quota, {} dropped at the first-flight timeout, {} \
                     refused for handshake capacity, {} failed handshakes.",
                    g.per_source, g.first_flight_timeout, g.handshake_capacity, g.failed
                )),
                s.car.connected,
                s.car.attempts,
                s.car.latency.p50_ms,
                s.car.latency.p99_ms,
                s.car.latency.max_ms,
                s.car.first_error.as_ref().map_or(String::new(), |e| format!("; first failure: `{e}`"))
            );
        }
    }
}
