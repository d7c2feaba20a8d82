//! What the scenarios that alternate two settings of the gateway in phases share
//! ([`crate::services`], [`crate::journal_cost`]): the command-line options, the load plan,
//! the load as their reports give it, what one setting's phases add up to, connecting the
//! cars before the phases, and the per-phase table.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use rustls::ClientConfig;
use serde::Serialize;

use crate::brokers::ConfigOverride;
use crate::fleet::Fleet;
use crate::report::{Started, TrafficReport, table_head};
use crate::swarm::{StormSettings, Swarm, Target};
use crate::traffic::{Load, Schedule};

/// The cars reach the gateway on this one address.
pub const HOSTS: [IpAddr; 1] = [IpAddr::V4(Ipv4Addr::LOCALHOST)];

/// A phased scenario's command-line options. `--rate` and `--phase` have no default here:
/// each scenario's subcommand sets its own (`#[command(mut_arg(...))]`).
#[derive(Debug, Clone, clap::Args)]
pub struct PhasedArgs {
    /// Directory the report's .json and .md go in.
    #[arg(long, default_value = "docs/benchmarks")]
    pub out: std::path::PathBuf,
    /// Cars connected, all sending.
    #[arg(long, default_value_t = 200)]
    pub vehicles: usize,
    /// Requests per second, all cars together.
    #[arg(long)]
    pub rate: f64,
    /// Seconds per phase.
    #[arg(long)]
    pub phase: f64,
    /// Seconds at the start of each phase left out of its figures.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Rounds; each runs one phase per setting.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// The gateway binary and the work files.
    #[command(flatten)]
    pub gateway: crate::brokers::GatewayBinArgs,
}

impl PhasedArgs {
    /// The plan these options make, with the per-car bounds lifted.
    pub fn plan(&self) -> PhasedPlan {
        PhasedPlan {
            vehicles: self.vehicles,
            rate: self.rate,
            phase: Duration::from_secs_f64(self.phase),
            warmup: Duration::from_secs_f64(self.warmup),
            rounds: self.rounds,
            overrides: crate::run::traffic_overrides(),
        }
    }
}

/// The load of a phased scenario: the same cars send at the same open-loop rate in every phase.
#[derive(Debug, Clone)]
pub struct PhasedPlan {
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
    /// Settings of the gateway beyond the defaults (the per-car rates lifted); each scenario
    /// adds the setting it compares.
    pub overrides: Vec<ConfigOverride>,
}

impl PhasedPlan {
    /// Checks that the plan sends something, then issues one certificate per car (for
    /// [`HOSTS`]) under `work`.
    pub fn issue_fleet(&self, started: &Started, work: &Path) -> Result<Fleet> {
        if self.vehicles == 0 || self.rounds == 0 || self.rate <= 0.0 {
            bail!("need vehicles, rounds and a rate");
        }
        started.say(&format!("issuing {} vehicle certificates", self.vehicles));
        Fleet::create(&work.join("pki"), self.vehicles, &HOSTS)
    }

    /// Every phase's schedule.
    pub fn schedule(&self) -> Schedule {
        Schedule {
            load: Load::Rate(self.rate),
            duration: self.phase,
            warmup: self.warmup,
        }
    }

    /// How many connections the gateway must accept: the cars and some to spare.
    pub fn max_connections(&self) -> usize {
        self.vehicles + 100
    }

    /// One phase's figures, `scenario` naming what was sent.
    pub fn traffic_report(
        &self,
        scenario: &str,
        outcome: crate::traffic::TrafficOutcome,
        cpu: crate::procfs::CpuSplit,
    ) -> TrafficReport {
        TrafficReport::new(scenario, Load::Rate(self.rate).describe(), outcome, cpu)
    }

    /// The load as the report gives it.
    pub fn load(&self) -> PhasedLoad {
        PhasedLoad {
            vehicles: self.vehicles,
            rate: self.rate,
            phase_s: self.phase.as_secs_f64(),
            warmup_s: self.warmup.as_secs_f64(),
        }
    }

    /// Connects every car of `swarm` to `port` and returns them; fails unless all of them
    /// connected, since a phase with fewer cars would not compare with the others.
    pub async fn connect_all(&self, swarm: &mut Swarm, configs: &[Arc<ClientConfig>], port: u16) -> Result<Vec<usize>> {
        let target = Target {
            hosts: HOSTS.to_vec(),
            port,
        };
        let outcome = swarm.storm(configs, &target, &StormSettings::default()).await?;
        if outcome.connected < self.vehicles {
            bail!(
                "{} of {} vehicles connected: {:?}",
                outcome.connected,
                self.vehicles,
                outcome.first_error
            );
        }
        Ok(swarm.connected())
    }
}

/// A phased scenario's load, as its report gives it (flattened into the report).
#[derive(Debug, Clone, Serialize)]
pub struct PhasedLoad {
    /// Cars, all sending.
    pub vehicles: usize,
    /// Requests per second.
    pub rate: f64,
    /// Seconds per phase.
    pub phase_s: f64,
    /// Seconds of each phase left out.
    pub warmup_s: f64,
}

/// What several phases of one setting add up to (flattened into each scenario's totals).
#[derive(Debug, Clone, Serialize)]
pub struct PhaseSummary {
    /// Answers received, warm-ups included.
    pub answered: u64,
    /// Non-OK answers and requests never answered.
    pub failed: u64,
    /// Gateway CPU per answer over all the phases (warm-ups included), microseconds.
    pub gateway_cpu_us_per_request: f64,
    /// The median of the phases' p50 round trips, milliseconds.
    pub p50_ms: f64,
    /// The median of the phases' p99 round trips, milliseconds.
    pub p99_ms: f64,
    /// The phases' p99 round trips, sorted, milliseconds.
    #[serde(skip)]
    pub p99s_ms: Vec<f64>,
}

impl PhaseSummary {
    /// Adds up `phases`.
    pub fn of<'a>(phases: impl IntoIterator<Item = &'a TrafficReport>) -> PhaseSummary {
        let phases: Vec<&TrafficReport> = phases.into_iter().collect();
        let answered: u64 = phases.iter().map(|t| t.outcome.replies - t.outcome.errors).sum();
        let cpu_s: f64 = phases.iter().map(|t| t.cpu.broker_cpu_s).sum();
        let sorted = |f: fn(&TrafficReport) -> f64| {
            let mut v: Vec<f64> = phases.iter().map(|t| f(t)).collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let p99s_ms = sorted(|t| t.outcome.latency.p99_ms);
        PhaseSummary {
            answered,
            failed: phases.iter().map(|t| t.outcome.errors + t.outcome.missing).sum(),
            gateway_cpu_us_per_request: if answered == 0 {
                0.0
            } else {
                cpu_s * 1e6 / answered as f64
            },
            p50_ms: median(&sorted(|t| t.outcome.latency.p50_ms)),
            p99_ms: median(&p99s_ms),
            p99s_ms,
        }
    }

    /// Its figures as the cells of a totals row: answered, failed, gateway CPU per request,
    /// p50 and p99 (without the outer `|`).
    pub fn cells(&self) -> String {
        format!(
            "{} | {} | {:.0} | {:.2} | {:.2}",
            self.answered, self.failed, self.gateway_cpu_us_per_request, self.p50_ms, self.p99_ms
        )
    }

    /// The lowest and highest p99 of the phases, milliseconds (0 for none).
    pub fn p99_range_ms(&self) -> (f64, f64) {
        (
            self.p99s_ms.first().copied().unwrap_or(0.0),
            self.p99s_ms.last().copied().unwrap_or(0.0),
        )
    }
}

/// The middle of sorted `values` (the upper one of an even count), 0 for none.
fn median(values: &[f64]) -> f64 {
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// The "Phases" section: one row per phase in order, `(round, setting, figures)`, the setting
/// (as Markdown) in the column headed `setting`.
pub fn phases_markdown<'a>(
    md: &mut String,
    setting: &str,
    phases: impl IntoIterator<Item = (usize, String, &'a TrafficReport)>,
) {
    let _ = writeln!(md, "\n## Phases\n");
    table_head(
        md,
        &format!("| round | {setting} | answered | errors | missing | gateway CPU µs / request | p50 ms | p99 ms |"),
    );
    for (round, label, traffic) in phases {
        let o = &traffic.outcome;
        let _ = writeln!(
            md,
            "| {round} | {label} | {} | {} | {} | {:.0} | {:.2} | {:.2} |",
            o.replies - o.errors,
            o.errors,
            o.missing,
            traffic.broker_cpu_us_per_msg,
            o.latency.p50_ms,
            o.latency.p99_ms
        );
    }
}
