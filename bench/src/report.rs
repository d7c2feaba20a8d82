//! The report: every figure of a run (`report.json`) and the same as Markdown tables
//! (`report.md`), with the issue's targets checked side by side.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::procfs::{CpuSplit, Machine};
use crate::stats::Summary;
use crate::traffic::TrafficOutcome;

mod markdown;

/// A run under way: when and where it started.
pub struct Started {
    at: Instant,
    date_utc: String,
    machine: Machine,
}

impl Started {
    /// Notes the time, the date and the machine now.
    pub fn now() -> Started {
        Started {
            at: Instant::now(),
            date_utc: utc_now(),
            machine: crate::procfs::machine(),
        }
    }

    /// Prints `msg` to stderr after the seconds since the start.
    pub fn say(&self, msg: &str) {
        eprintln!("[{:6.1}s] {msg}", self.at.elapsed().as_secs_f64());
    }

    /// What every report opens with, now that the run made by `command` ends.
    pub fn finish(&self, command: String) -> RunInfo {
        RunInfo {
            date_utc: self.date_utc.clone(),
            command,
            machine: self.machine.clone(),
            loadavg_at_end: crate::procfs::loadavg(),
            total_wall_s: self.at.elapsed().as_secs_f64(),
        }
    }
}

/// When, by which command and where a run ran, and how busy the machine was when it ended.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    /// When the run started (UTC).
    pub date_utc: String,
    /// The command that produced it.
    pub command: String,
    /// Where.
    pub machine: Machine,
    /// Load average when the run ended.
    pub loadavg_at_end: String,
    /// Wall-clock time of the whole run.
    pub total_wall_s: f64,
}

impl RunInfo {
    /// `title`, then the lines every report opens with: the date, the command, the machine.
    pub fn markdown(&self, md: &mut String, title: &str) {
        let _ = writeln!(md, "# {title}\n");
        let _ = writeln!(
            md,
            "- date: {} (UTC), whole run {:.0} s",
            self.date_utc, self.total_wall_s
        );
        let _ = writeln!(md, "- command: `{}`", self.command);
        let m = &self.machine;
        let _ = writeln!(
            md,
            "- machine: {} cores ({}), {} MiB, Linux {}; load average {} at start, {} at end",
            m.nproc, m.cpu_model, m.mem_total_mib, m.kernel, m.loadavg_at_start, self.loadavg_at_end
        );
    }
}

/// The notes section of a report (none without notes).
pub fn notes_markdown(md: &mut String, notes: &[String]) {
    if !notes.is_empty() {
        let _ = writeln!(md, "\n## Notes\n");
        for n in notes {
            let _ = writeln!(md, "- {n}");
        }
    }
}

/// A Markdown table's `header` line (`| a | b |`) and the separator line under it.
pub fn table_head(md: &mut String, header: &str) {
    let columns = header.trim().matches('|').count().saturating_sub(1);
    let _ = writeln!(md, "{header}\n{}|", "|---".repeat(columns));
}

/// Writes `{stem}.json` (`report`) and `{stem}.md` (`markdown`) into `out`.
pub fn write_files(out: &Path, stem: &str, report: &impl Serialize, markdown: &str) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    let json = out.join(format!("{stem}.json"));
    let md = out.join(format!("{stem}.md"));
    std::fs::write(&json, serde_json::to_string_pretty(report)? + "\n")?;
    std::fs::write(&md, markdown)?;
    Ok((json, md))
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When, how and where.
    #[serde(flatten)]
    pub run: RunInfo,
    /// With what settings.
    pub settings: Settings,
    /// Issuing the fleet's certificates.
    pub certificates: Certificates,
    /// Per broker: storms, memory, publish round trips.
    pub brokers: Vec<BrokerReport>,
    /// Full requests through the gateway (and the diagnostic variant, if run).
    pub requests: Vec<RequestReport>,
    /// The abusive-car scenario, per broker, if run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub abuse: Vec<crate::abuse::AbuseReport>,
    /// Things the reader must know.
    pub notes: Vec<String>,
    /// Mean 4 KiB write + fsync on the disk holding the gateway's database, ms.
    pub disk_fsync_ms: Option<f64>,
}

/// The run's settings.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Vehicles in the storms (each with its own certificate).
    pub vehicles: usize,
    /// Vehicles sending in the traffic phases (the others stay connected and idle).
    pub active: usize,
    /// Loopback destination addresses the vehicles spread over.
    pub loopback_addrs: usize,
    /// Connection attempts in flight at once (0 = unbounded).
    pub max_inflight: usize,
    /// Vehicles started per second (0 = all at once).
    pub connect_rate: f64,
    /// MQTT keep-alive of the raw vehicles.
    pub keep_alive_s: u64,
    /// Length of each traffic run.
    pub duration_s: f64,
    /// Warm-up excluded from each traffic run's figures.
    pub warmup_s: f64,
    /// The traffic runs' rates, and the real agents.
    #[serde(flatten)]
    pub rates: crate::run::Rates,
    /// What they ask for, by weight.
    pub agent_mix: String,
    /// Settings of the traffic gateways beyond their defaults.
    pub gateway_overrides: Vec<String>,
}

/// Certificate issuance.
#[derive(Debug, Clone, Serialize)]
pub struct Certificates {
    /// Vehicle certificates issued.
    pub vehicles: usize,
    /// Time it took.
    pub issue_s: f64,
}

/// One broker's figures.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerReport {
    /// `gateway` or `mosquitto`.
    pub name: String,
    /// Name and version.
    pub label: String,
    /// The full-handshake storm, then the resumed one.
    pub storms: Vec<StormReport>,
    /// Resident memory as the fleet connects.
    pub memory: MemoryReport,
    /// How long the broker kept using CPU after the fleet disconnected (before the resumed
    /// storm); `None` when not waited for.
    pub settle_after_disconnect_s: Option<f64>,
    /// The gateway's connection log catching up after the storms.
    pub registry: Option<RegistryReport>,
    /// QoS 1 publish round trips.
    pub echo: Vec<TrafficReport>,
    /// The reconnect storm, if run.
    pub restart: Option<crate::restart::RestartReport>,
    /// Traffic from connected vehicles during a connect storm.
    pub under_storm: Vec<crate::under_storm::UnderStormReport>,
    /// Idle connections lost during the run (should be 0).
    pub lost_connections: u64,
    /// The first loss.
    pub first_loss: Option<String>,
}

/// One connect storm.
#[derive(Debug, Clone, Serialize)]
pub struct StormReport {
    /// `full` or `resumed`.
    pub kind: String,
    /// Vehicles that tried.
    pub vehicles: usize,
    /// Vehicles that got CONNACK.
    pub connected: usize,
    /// Failed attempts (each retried after a full-jitter backoff).
    pub failed_attempts: u64,
    /// Vehicles that gave up.
    pub gave_up: usize,
    /// The first failure.
    pub first_error: Option<String>,
    /// First attempt to last CONNACK.
    pub wall_s: f64,
    /// Connected vehicles per second of wall time.
    pub connects_per_s: f64,
    /// Start of a vehicle's first attempt to its CONNACK.
    pub time_to_connack: Summary,
    /// Handshakes in which the client verified the server certificate.
    pub full_handshakes: u64,
    /// Connected vehicles minus full handshakes.
    pub resumed_handshakes: u64,
    /// CPU time of broker and load generator during the storm.
    pub cpu: CpuSplit,
    /// Broker CPU per connected vehicle.
    pub broker_cpu_ms_per_connect: f64,
    /// Load generator CPU per connected vehicle.
    pub loadgen_cpu_ms_per_connect: f64,
}

/// Broker memory as the fleet connects.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MemoryReport {
    /// Vehicles connected for the figures.
    pub vehicles: usize,
    /// RSS before the first storm.
    pub baseline_kib: u64,
    /// RSS with every vehicle connected.
    pub connected_kib: u64,
    /// RSS with every vehicle connected and subscribed to its `resp` and `events` topics.
    pub subscribed_kib: u64,
    /// RSS after every vehicle disconnected.
    pub after_disconnect_kib: u64,
    /// RSS with every vehicle reconnected (resumed storm, not subscribed): growth over
    /// `subscribed_kib` would mean memory is not reused.
    pub reconnected_kib: u64,
    /// RSS after each extra disconnect/reconnect round.
    pub rounds_kib: Vec<u64>,
    /// Broker threads with every vehicle connected.
    pub threads_connected: u64,
    /// (connected - baseline) / vehicles.
    pub per_vehicle_connected_kib: f64,
    /// (subscribed - baseline) / vehicles: an idle car as the agent leaves it.
    pub per_vehicle_subscribed_kib: f64,
}

/// How far behind the gateway's connection log was.
#[derive(Debug, Clone, Serialize)]
pub struct RegistryReport {
    /// Whether it recorded every session of the resumed storm within the wait.
    pub caught_up: bool,
    /// Time from the end of the resumed storm until it had.
    pub lag_s: f64,
    /// Sessions of the resumed storm it had recorded when the wait ended.
    pub recorded: usize,
    /// Sessions it had to record.
    pub expected: usize,
}

/// One traffic run with its CPU split.
#[derive(Debug, Clone, Serialize)]
pub struct TrafficReport {
    /// What was sent.
    pub scenario: String,
    /// Open-loop rate or closed loop.
    pub load: String,
    /// Figures.
    pub outcome: TrafficOutcome,
    /// CPU time during the run.
    pub cpu: CpuSplit,
    /// Broker CPU per answered message, microseconds.
    pub broker_cpu_us_per_msg: f64,
    /// Load generator CPU per answered message, microseconds.
    pub loadgen_cpu_us_per_msg: f64,
}

impl TrafficReport {
    /// Pairs an outcome with its CPU split.
    pub fn new(scenario: &str, load: String, outcome: TrafficOutcome, cpu: CpuSplit) -> TrafficReport {
        let per = |s: f64| {
            if outcome.replies == 0 {
                0.0
            } else {
                s * 1e6 / outcome.replies as f64
            }
        };
        TrafficReport {
            scenario: scenario.into(),
            load,
            broker_cpu_us_per_msg: per(cpu.broker_cpu_s),
            loadgen_cpu_us_per_msg: per(cpu.loadgen_cpu_s),
            outcome,
            cpu,
        }
    }
}

/// Full requests car -> gateway -> parking adapter -> car.
#[derive(Debug, Clone, Serialize)]
pub struct RequestReport {
    /// Short name of the setup, for the targets table.
    pub short: String,
    /// Which gateway setup.
    pub setup: String,
    /// Raw MQTT cars publishing `vehicle.v1.Request` envelopes.
    pub raw: Vec<TrafficReport>,
    /// Real agents (`GatewayLink::call`).
    pub agents: Vec<TrafficReport>,
}

/// `YYYY-MM-DD HH:MM` (UTC) of now.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}", rem / 3600, rem % 3600 / 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_head_has_one_separator_per_column() {
        let mut md = String::new();
        table_head(&mut md, "\n| broker | p50 / p99 ms | wall s |");
        assert_eq!(md, "\n| broker | p50 / p99 ms | wall s |\n|---|---|---|\n");
    }

    #[test]
    fn date_is_well_formed() {
        let d = utc_now();
        assert_eq!(d.len(), 16, "{d}");
        assert!(d.starts_with("20"), "{d}");
    }
}
