//! `fleet-bench journal-cost`: what the interaction journal costs the request path. The same
//! cars send the same `ListNearbyLots` requests at the same open-loop rate in alternating
//! phases against the gateway with `journal.enabled = false` and `= true`. Between phases the
//! gateway is stopped and started again with the other setting on the same SQLite file, and the
//! cars connect again; the order is ABBA (off, on, on, off, ...), so neither setting always
//! runs first after a restart or on the larger database. Per setting: the median over its
//! phases of the p50 and p99 round trips, the gateway's CPU per request, and the relative
//! change of p99 with the journal on.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};
use gateway::store::{Interaction, MAX_PAGE, Store, TimelineQuery};
use serde::Serialize;

use crate::brokers::{self, ConfigOverride, GatewayLaunch, GatewayOptions};
use crate::fleet::Fleet;
use crate::procfs::Roles;
use crate::report::{PhaseSummary, RunInfo, Started, TrafficReport, notes_markdown, table_head};
use crate::swarm::{StormSettings, Swarm, Target};
use crate::traffic::{self, Load, ParkingRequests, Schedule};

/// How long after a phase's last answer its gateway CPU is read, so that the journal's last
/// batch is counted (the same wait for both settings).
const SETTLE: Duration = Duration::from_secs(1);

/// `fleet-bench journal-cost`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct JournalCostArgs {
    /// Where journal-cost.json and journal-cost.md go.
    #[arg(long, default_value = "docs/benchmarks")]
    pub out: std::path::PathBuf,
    /// Cars connected, all sending.
    #[arg(long, default_value_t = 200)]
    pub vehicles: usize,
    /// Requests per second, all cars together.
    #[arg(long, default_value_t = 300.0)]
    pub rate: f64,
    /// Seconds per phase.
    #[arg(long, default_value_t = 15.0)]
    pub phase: f64,
    /// Seconds at the start of each phase left out of its figures.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Rounds; each runs one phase per setting.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Do not run `cargo build` for the gateway first.
    #[arg(long)]
    pub no_build: bool,
    /// Gateway binary (default: next to this executable).
    #[arg(long)]
    pub gateway_bin: Option<std::path::PathBuf>,
    /// Keep the temporary directory (certificates, configs, the gateway's logs, the database).
    #[arg(long)]
    pub keep_work: bool,
}

impl JournalCostArgs {
    /// The plan these options make, with the per-car bounds lifted.
    pub fn plan(&self) -> JournalCostPlan {
        JournalCostPlan {
            vehicles: self.vehicles,
            rate: self.rate,
            phase: Duration::from_secs_f64(self.phase),
            warmup: Duration::from_secs_f64(self.warmup),
            rounds: self.rounds,
            overrides: crate::run::traffic_overrides(),
        }
    }
}

/// What the scenario does.
#[derive(Debug, Clone)]
pub struct JournalCostPlan {
    /// Cars connected, all sending.
    pub vehicles: usize,
    /// Requests per second, all cars together, open loop.
    pub rate: f64,
    /// How long each phase sends.
    pub phase: Duration,
    /// The first part of each phase left out of its figures.
    pub warmup: Duration,
    /// Rounds of one phase per setting.
    pub rounds: usize,
    /// Settings of the gateway beyond the defaults (the per-car rates lifted); the bench adds
    /// `journal.enabled`.
    pub overrides: Vec<ConfigOverride>,
}

/// One phase: one setting, one round.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// `journal.enabled`.
    pub journal: bool,
    /// Which round.
    pub round: usize,
    /// Its figures.
    pub traffic: TrafficReport,
}

/// One setting over every round.
#[derive(Debug, Clone, Serialize)]
pub struct SettingTotals {
    /// `journal.enabled`.
    pub journal: bool,
    /// Answers received, warm-ups included.
    pub answered: u64,
    /// Non-OK answers and requests never answered.
    pub failed: u64,
    /// Gateway CPU per answer over all its phases, microseconds.
    pub gateway_cpu_us_per_request: f64,
    /// The median of its phases' p50 round trips, milliseconds.
    pub p50_ms: f64,
    /// The median of its phases' p99 round trips, milliseconds.
    pub p99_ms: f64,
    /// The lowest and highest p99 of its phases.
    pub p99_range_ms: (f64, f64),
}

/// The scenario's report.
#[derive(Debug, Clone, Serialize)]
pub struct JournalCostRun {
    /// When and where.
    pub run: RunInfo,
    /// Cars, all sending.
    pub vehicles: usize,
    /// Requests per second.
    pub rate: f64,
    /// Seconds per phase.
    pub phase_s: f64,
    /// Seconds of each phase left out.
    pub warmup_s: f64,
    /// Every phase in order.
    pub phases: Vec<Phase>,
    /// Off, then on.
    pub totals: Vec<SettingTotals>,
    /// p99 with the journal on relative to off, percent (positive: slower with it).
    pub p99_change_pct: f64,
    /// Gateway CPU per request with the journal on relative to off, percent.
    pub cpu_change_pct: f64,
    /// Request rows the journal holds at the end, read from the database (every one written
    /// during the phases with the journal on).
    pub journal_request_rows: Option<u64>,
    /// Requests sent during the phases with the journal on (warm-ups included): what it
    /// should hold.
    pub requests_with_journal: u64,
    /// What to know to read it.
    pub notes: Vec<String>,
}

/// The settings in ABBA order for `rounds` rounds: off, on, on, off, off, on, ...
fn order(rounds: usize) -> Vec<(usize, bool)> {
    (1..=rounds)
        .flat_map(|round| {
            let first = round % 2 == 0;
            [(round, first), (round, !first)]
        })
        .collect()
}

/// Runs the scenario with the gateway as `launch` says, files in `work`.
pub async fn run(
    plan: &JournalCostPlan,
    launch: &GatewayLaunch,
    work: &Path,
    command: String,
) -> Result<JournalCostRun> {
    let started = Started::now();
    if plan.vehicles == 0 || plan.rounds == 0 || plan.rate <= 0.0 {
        bail!("need vehicles, rounds and a rate");
    }
    let hosts = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
    started.say(&format!("issuing {} vehicle certificates", plan.vehicles));
    let fleet = Fleet::create(&work.join("pki"), plan.vehicles, &hosts)?;
    let adapter = brokers::start_adapter(None, &fleet, work).await?;
    let db_dir = work.join("db");
    std::fs::create_dir_all(&db_dir)?;
    let db = db_dir.join("gateway.db");
    let read_only = vec!["ListNearbyLots".to_owned()];
    let mut swarm = Swarm::new(fleet.vehicles.iter().map(|v| v.vin.clone()).collect());
    let configs = fleet.client_configs(0..plan.vehicles, &Default::default())?;
    let workload = ParkingRequests::default();
    let schedule = Schedule {
        load: Load::Rate(plan.rate),
        duration: plan.phase,
        warmup: plan.warmup,
    };
    let mut phases = Vec::new();
    let mut storage_url = None;
    for (k, (round, journal)) in order(plan.rounds).into_iter().enumerate() {
        let mut overrides = plan.overrides.clone();
        overrides.push(ConfigOverride {
            section: "journal".into(),
            key: "enabled".into(),
            value: journal.to_string(),
        });
        let options = GatewayOptions {
            max_connections: plan.vehicles + 100,
            adapter: adapter.addr,
            read_only_methods: &read_only,
            partner_api: false,
            overrides: &overrides,
            extra_services: &[],
        };
        let dir = work.join(format!("gateway-{}", k + 1));
        std::fs::create_dir_all(&dir)?;
        let setting = if journal { "on" } else { "off" };
        started.say(&format!(
            "round {round}: journal {setting}, {:.0} requests/s",
            plan.rate
        ));
        let broker = brokers::launch_gateway(launch, &fleet, &dir, &db, &hosts, &options).await?;
        storage_url.clone_from(&broker.storage_url);
        let roles = Roles::new(broker.pid, None);
        let target = Target {
            hosts: hosts.clone(),
            port: broker.port,
        };
        let outcome = swarm.storm(&configs, &target, &StormSettings::default()).await?;
        if outcome.connected < plan.vehicles {
            bail!(
                "{} of {} vehicles connected: {:?}",
                outcome.connected,
                plan.vehicles,
                outcome.first_error
            );
        }
        let active = swarm.connected();
        traffic::prepare(&mut swarm, &active, &workload).await?;
        let mark = roles.mark();
        let outcome = traffic::run(&mut swarm, &active, &workload, schedule).await;
        tokio::time::sleep(SETTLE).await;
        let cpu = roles.since(&mark);
        let scenario = format!("ListNearbyLots, journal {setting}");
        phases.push(Phase {
            journal,
            round,
            traffic: TrafficReport::new(&scenario, Load::Rate(plan.rate).describe(), outcome, cpu),
        });
        swarm.disconnect_all().await?;
        broker.stop().await;
    }
    drop(adapter);
    let totals: Vec<SettingTotals> = [false, true].into_iter().map(|j| totals(j, &phases)).collect();
    let change = |off: f64, on: f64| if off > 0.0 { (on / off - 1.0) * 100.0 } else { 0.0 };
    let p99_change_pct = change(totals[0].p99_ms, totals[1].p99_ms);
    let cpu_change_pct = change(
        totals[0].gateway_cpu_us_per_request,
        totals[1].gateway_cpu_us_per_request,
    );
    let requests_with_journal = phases
        .iter()
        .filter(|p| p.journal)
        .map(|p| p.traffic.outcome.sent)
        .sum();
    let journal_request_rows = match &storage_url {
        Some(url) => request_rows(url, &fleet).await,
        None => None,
    };
    let notes = vec![
        "The gateway runs its release binary as its own process (default logging, SQLite on disk, the same file \
         for every phase); the reference parking service answers in the load generator's process. ListNearbyLots \
         is read-only (no idempotency ledger), so the journal is the only difference between the settings."
            .into(),
        "One gateway at a time, restarted between phases with the other setting (rather than two gateways side by \
         side): both settings run on the same database file and the same port conditions, and an idle second \
         gateway cannot take CPU from the measured one. The cars reconnect after each restart (full handshakes: \
         the ticket keys died with the process) before the phase starts; connecting is not measured."
            .into(),
        format!(
            "Gateway CPU per request is the gateway process's CPU time from the phase's first request to {} s after \
             its last answer (so the journal's last batch is counted) divided by the phase's answers (warm-up \
             included): compare the two settings, not with other reports.",
            SETTLE.as_secs()
        ),
    ];
    Ok(JournalCostRun {
        run: started.finish(command),
        vehicles: plan.vehicles,
        rate: plan.rate,
        phase_s: plan.phase.as_secs_f64(),
        warmup_s: plan.warmup.as_secs_f64(),
        phases,
        totals,
        p99_change_pct,
        cpu_change_pct,
        journal_request_rows,
        requests_with_journal,
        notes,
    })
}

/// The request rows the journal at `url` holds for the fleet's cars, read page by page through
/// the gateway's own store code (`None` if the database cannot be read).
async fn request_rows(url: &str, fleet: &Fleet) -> Option<u64> {
    let store = Store::connect(url).await.ok()?;
    let mut rows = 0;
    for vehicle in &fleet.vehicles {
        let mut after = None;
        loop {
            let query = TimelineQuery {
                from_ms: 0,
                to_ms: i64::MAX,
                after,
                limit: MAX_PAGE,
            };
            let page = store.vehicle_timeline(&vehicle.vin, query).await.ok()?;
            rows += page
                .entries
                .iter()
                .filter(|e| matches!(e.what, Interaction::Request(_)))
                .count() as u64;
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
    }
    store.close().await;
    Some(rows)
}

fn totals(journal: bool, phases: &[Phase]) -> SettingTotals {
    let mine: Vec<&TrafficReport> = phases
        .iter()
        .filter(|p| p.journal == journal)
        .map(|p| &p.traffic)
        .collect();
    let summary = PhaseSummary::of(&mine);
    SettingTotals {
        journal,
        answered: summary.answered,
        failed: summary.failed,
        gateway_cpu_us_per_request: summary.gateway_cpu_us_per_request,
        p50_ms: summary.p50_ms,
        p99_ms: summary.p99_ms(),
        p99_range_ms: (
            summary.p99s_ms.first().copied().unwrap_or(0.0),
            summary.p99s_ms.last().copied().unwrap_or(0.0),
        ),
    }
}

impl JournalCostRun {
    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        self.run.markdown(&mut md, "The interaction journal's cost to requests");
        let _ = writeln!(
            md,
            "- {} cars, {:.0} ListNearbyLots requests/s between them (open loop), {:.0} s per phase ({:.0} s warm-up \
             left out), `journal.enabled` alternating (ABBA), the gateway restarted between phases on the same \
             database\n",
            self.vehicles, self.rate, self.phase_s, self.warmup_s
        );
        table_head(
            &mut md,
            "| journal | answered | failed | gateway CPU µs / request | p50 ms (median of phases) | p99 ms (median of phases) | p99 ms, phases' range |",
        );
        for t in &self.totals {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} to {:.2} |",
                if t.journal { "on" } else { "off" },
                t.answered,
                t.failed,
                t.gateway_cpu_us_per_request,
                t.p50_ms,
                t.p99_ms,
                t.p99_range_ms.0,
                t.p99_range_ms.1
            );
        }
        let _ = writeln!(
            md,
            "\n- p99 with the journal on: {:+.1} % (target: at most +10 %); gateway CPU per request: {:+.1} %",
            self.p99_change_pct, self.cpu_change_pct
        );
        let rows = self
            .journal_request_rows
            .map_or_else(|| "not read".to_owned(), |n| n.to_string());
        let _ = writeln!(
            md,
            "- request rows in the journal at the end: {rows}; requests sent while it was on: {}",
            self.requests_with_journal
        );
        let _ = writeln!(md, "\n## Phases\n");
        table_head(
            &mut md,
            "| round | journal | answered | errors | missing | gateway CPU µs / request | p50 ms | p99 ms |",
        );
        for p in &self.phases {
            let o = &p.traffic.outcome;
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {:.0} | {:.2} | {:.2} |",
                p.round,
                if p.journal { "on" } else { "off" },
                o.replies - o.errors,
                o.errors,
                o.missing,
                p.traffic.broker_cpu_us_per_msg,
                o.latency.p50_ms,
                o.latency.p99_ms
            );
        }
        notes_markdown(&mut md, &self.notes);
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_settings_alternate_abba() {
        let settings: Vec<bool> = order(3).into_iter().map(|(_, on)| on).collect();
        assert_eq!(settings, [false, true, true, false, false, true]);
        assert_eq!(order(2).iter().map(|(r, _)| *r).collect::<Vec<_>>(), [1, 1, 2, 2]);
    }
}
