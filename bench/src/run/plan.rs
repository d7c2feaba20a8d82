//! What a benchmark run runs: the fleet, the storms, the traffic rates, the ledger runs and the
//! optional scenarios, and the settings its traffic gateways get beyond the bench's own.

use serde::Serialize;

use super::*;

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Vehicles in the storms.
    pub vehicles: usize,
    /// Vehicles sending in the traffic phases.
    pub active: usize,
    /// Loopback addresses the vehicles spread over (the brokers listen on 0.0.0.0 when > 1).
    pub hosts: Vec<IpAddr>,
    /// How storms connect.
    pub storm: StormSettings,
    /// Length of each traffic run.
    pub duration: Duration,
    /// Warm-up excluded from each traffic run.
    pub warmup: Duration,
    /// The traffic runs' rates, and the real agents.
    pub rates: Rates,
    /// What the agents ask for.
    pub agent_mix: Mix,
    /// The brokers measured (the ledger runs' gateways declare no method read-only).
    pub brokers: BrokerSetup,
    /// The request runs repeated, each on a gateway of its own with only the active vehicles
    /// connected and no read-only methods, so every request goes through the idempotency ledger.
    pub ledger_runs: Vec<LedgerRun>,
    /// How long to wait for the gateway's connection log to catch up after the storms
    /// before the traffic runs (zero: do not wait or measure).
    pub registry_wait: Duration,
    /// Longest wait for the broker to go idle after the fleet disconnected, before the
    /// resumed storm (zero: reconnect at once, while the broker still cleans up).
    pub settle: Duration,
    /// Extra disconnect/reconnect rounds after the resumed storm, recording RSS after each
    /// (memory that grows round after round is not reused).
    pub reconnect_rounds: usize,
    /// The reconnect storm (broker killed and restarted under the fleet), if run.
    pub restart: Option<RestartPlan>,
    /// Settings of the traffic gateways (the main one and the ledger ones) beyond the bench's
    /// own: their few active cars stand in for a fleet, so the per-car rates are lifted.
    pub gateway_overrides: Vec<ConfigOverride>,
    /// The abusive-car scenario, each broker started afresh for it, if run.
    pub abuse: Option<AbusePlan>,
    /// Settings of the abuse scenario's gateway beyond the bench's own (non-default bounds).
    pub abuse_overrides: Vec<ConfigOverride>,
    /// Traffic from connected vehicles during a connect storm of the others, if run.
    pub under_storm: Option<UnderStormPlan>,
    /// The command line, for the report.
    pub command: String,
    /// Notes for the report.
    pub notes: Vec<String>,
    /// Print progress to stderr.
    pub verbose: bool,
}

/// The traffic runs' rates and the real agents: what the plan asks for and what the report's
/// settings say it asked for.
#[derive(Debug, Clone, Serialize)]
pub struct Rates {
    /// Open-loop publish round-trip rates (both brokers).
    pub echo_rates: Vec<f64>,
    /// Open-loop request rates (gateway).
    pub request_rates: Vec<f64>,
    /// Messages in flight for the maximum-throughput runs (0 = skip them).
    pub closed_in_flight: usize,
    /// Real agents (`vehicle_agent::GatewayLink`) for the agent request runs (0 = none).
    pub agents: usize,
    /// Their open-loop rates.
    pub agent_rates: Vec<f64>,
}

/// The per-car and per-address bounds lifted on the traffic gateways, whose few active cars
/// stand in for a fleet: their closed-loop runs send hundreds of messages per second from each
/// car, which the defaults (100 packets and 20 requests per second per car) would throttle
/// and refuse, every car connects from one loopback address, whose quota of sockets still
/// handshaking (64) a storm of 100 attempts in flight would exceed, and the storms reconnect
/// the same cars again and again.
pub fn traffic_overrides() -> Vec<ConfigOverride> {
    [
        "requests.max_per_second_per_car",
        "requests.burst_per_car",
        "mqtt.max_packets_per_second",
        "mqtt.packet_burst",
        "mqtt.max_pending_per_source",
        "mqtt.max_connects_per_minute",
        "mqtt.connect_burst",
    ]
    .into_iter()
    .map(|setting| format!("{setting}=1000000").parse().expect("well-formed setting"))
    .collect()
}

/// One gateway whose requests all go through the idempotency ledger.
#[derive(Debug, Clone)]
pub struct LedgerRun {
    /// For the report, e.g. "disk" or "tmpfs".
    pub label: String,
    /// Where its SQLite database goes.
    pub db_dir: PathBuf,
}
