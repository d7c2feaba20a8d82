//! `fleet-bench journal-cost`: what the interaction journal costs the request path. The same
//! cars send the same `ListNearbyLots` requests at the same open-loop rate in alternating
//! phases against the gateway with `journal.enabled = false` and `= true`. Between phases the
//! gateway is stopped and started again with the other setting on the same SQLite file, and the
//! cars connect again; the order is ABBA (off, on, on, off, ...), so neither setting always
//! runs first after a restart or on the larger database. Per setting: the median over its
//! phases of the p50 and p99 round trips, the gateway's CPU per request, and the relative
//! change of p99 with the journal on.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use gateway::store::{Interaction, MAX_PAGE, Store, TimelineQuery};
use serde::Serialize;

use crate::brokers::{self, ConfigOverride, GatewayLaunch, GatewayOptions};
use crate::fleet::Fleet;
use crate::phased::{HOSTS, PhaseSummary, PhasedLoad, PhasedPlan, phases_markdown};
use crate::procfs::Roles;
use crate::report::{RunInfo, Started, TrafficReport, notes_markdown, table_head};
use crate::swarm::Swarm;
use crate::traffic::{self, ParkingRequests};

/// How long after a phase's last answer its gateway CPU is read, so that the journal's last
/// batch is counted (the same wait for both settings).
const SETTLE: Duration = Duration::from_secs(1);

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
    /// Its phases added up.
    #[serde(flatten)]
    pub summary: PhaseSummary,
    /// The lowest and highest p99 of its phases.
    pub p99_range_ms: (f64, f64),
}

/// The scenario's report.
#[derive(Debug, Clone, Serialize)]
pub struct JournalCostRun {
    /// When and where.
    pub run: RunInfo,
    /// Cars, rate, phases.
    #[serde(flatten)]
    pub load: PhasedLoad,
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
pub async fn run(plan: &PhasedPlan, launch: &GatewayLaunch, work: &Path, command: String) -> Result<JournalCostRun> {
    let started = Started::now();
    let fleet = plan.issue_fleet(&started, work)?;
    let adapter = brokers::start_adapter(None, &fleet, work).await?;
    let db_dir = work.join("db");
    std::fs::create_dir_all(&db_dir)?;
    let db = db_dir.join("gateway.db");
    let read_only = vec!["ListNearbyLots".to_owned()];
    let mut swarm = Swarm::new(fleet.vehicles.iter().map(|v| v.vin.clone()).collect());
    let configs = fleet.client_configs(0..plan.vehicles, &Default::default())?;
    let workload = ParkingRequests::default();
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
            max_connections: plan.max_connections(),
            adapter: adapter.addr,
            read_only_methods: &read_only,
            partner_api: false,
            overrides: &overrides,
            extra_services: &[],
        };
        let dir = work.join(format!("gateway-{}", k + 1));
        std::fs::create_dir_all(&dir)?;
        let setting = on_off(journal);
        started.say(&format!(
            "round {round}: journal {setting}, {:.0} requests/s",
            plan.rate
        ));
        let broker = brokers::launch_gateway(launch, &fleet, &dir, &db, &HOSTS, &options).await?;
        storage_url.clone_from(&broker.storage_url);
        let roles = Roles::new(broker.pid, None);
        let active = plan.connect_all(&mut swarm, &configs, broker.port).await?;
        traffic::prepare(&mut swarm, &active, &workload).await?;
        let mark = roles.mark();
        let outcome = traffic::run(&mut swarm, &active, &workload, plan.schedule()).await;
        tokio::time::sleep(SETTLE).await;
        let cpu = roles.since(&mark);
        phases.push(Phase {
            journal,
            round,
            traffic: plan.traffic_report(&format!("ListNearbyLots, journal {setting}"), outcome, cpu),
        });
        swarm.disconnect_all().await?;
        broker.stop().await;
    }
    drop(adapter);
    let totals: Vec<SettingTotals> = [false, true].into_iter().map(|j| totals(j, &phases)).collect();
    let change = |off: f64, on: f64| if off > 0.0 { (on / off - 1.0) * 100.0 } else { 0.0 };
    let (off, on) = (&totals[0].summary, &totals[1].summary);
    let p99_change_pct = change(off.p99_ms, on.p99_ms);
    let cpu_change_pct = change(off.gateway_cpu_us_per_request, on.gateway_cpu_us_per_request);
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
        load: plan.load(),
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
    let summary = PhaseSummary::of(phases.iter().filter(|p| p.journal == journal).map(|p| &p.traffic));
    SettingTotals {
        journal,
        p99_range_ms: summary.p99_range_ms(),
        summary,
    }
}

/// `journal.enabled` as the tables give it.
fn on_off(journal: bool) -> &'static str {
    if journal { "on" } else { "off" }
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
            self.load.vehicles, self.load.rate, self.load.phase_s, self.load.warmup_s
        );
        table_head(
            &mut md,
            "| journal | answered | failed | gateway CPU µs / request | p50 ms (median of phases) | p99 ms (median of phases) | p99 ms, phases' range |",
        );
        for t in &self.totals {
            let _ = writeln!(
                md,
                "| {} | {} | {:.2} to {:.2} |",
                on_off(t.journal),
                t.summary.cells(),
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
        phases_markdown(
            &mut md,
            "journal",
            self.phases
                .iter()
                .map(|p| (p.round, on_off(p.journal).to_owned(), &p.traffic)),
        );
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
