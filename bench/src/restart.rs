//! The reconnect storm: a connected fleet loses its broker (killed as a crash would kill it)
//! and the broker is started again at once; every vehicle reconnects by itself with the
//! agent's backoff, as cars would. On the gateway, real agents keep making payments
//! (StartSession, each with its own idempotency key, through their durable outboxes) across
//! the crash, and every one must be answered.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde::Serialize;

use crate::agents::{Agents, Calls, pay};
use crate::brokers::{Broker, BrokerKind};
use crate::fleet::{Fleet, HandshakeCounter};
use crate::procfs;
use crate::stats::{Latencies, Summary};
use crate::swarm::{Event, StormSettings, Swarm, Target};

/// What to run.
#[derive(Debug, Clone)]
pub struct RestartPlan {
    /// Vehicles connected when the broker dies.
    pub vehicles: usize,
    /// How they connect at first (reconnects use the same backoff).
    pub storm: StormSettings,
    /// Payment calls per second from the agents (gateway only; 0 = none).
    pub request_rate: f64,
    /// Payments made before the kill.
    pub before_kill: Duration,
    /// Payments go on this long after every vehicle is back.
    pub after_back: Duration,
    /// Longest wait for the fleet to come back.
    pub limit: Duration,
}

/// What the reconnect storm measured on one broker.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestartReport {
    /// Which broker.
    pub broker: String,
    /// How it was stopped.
    pub kill: String,
    /// Vehicles connected before the kill.
    pub vehicles: usize,
    /// Backoff of the vehicles (the agent's defaults): first ceiling and cap, ms.
    pub backoff_ms: (u64, u64),
    /// From the kill until the broker listened again.
    pub down_s: f64,
    /// Vehicles connected again within the limit.
    pub reconnected: usize,
    /// From the kill until the last vehicle was back (None: not all came back).
    pub all_back_s: Option<f64>,
    /// From the restart (listening) until the last vehicle was back.
    pub all_back_after_restart_s: Option<f64>,
    /// Time from the kill to each vehicle's new CONNACK.
    pub back_after_kill: Summary,
    /// Most reconnections within one second.
    pub peak_connects_per_s: usize,
    /// Attempts that failed before the broker listened again: refused (nothing listening) or
    /// reset (the dying process's sockets).
    pub failed_while_down: u64,
    /// Attempts that failed once it listened (shed before TLS by admission control, failed
    /// handshakes, timeouts).
    pub failed_attempts: u64,
    /// The first such failure.
    pub first_failure: Option<String>,
    /// Reconnections that needed a full TLS handshake (the rest resumed their session).
    pub full_handshakes: u64,
    /// CPU seconds of the restarted broker from its start until every vehicle was back.
    pub broker_cpu_s: f64,
    /// The agents' payments across the crash (gateway only).
    pub payments: Option<PaymentReport>,
}

/// Payment calls (StartSession, EndSession) made by real agents across the crash.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PaymentReport {
    /// Agents making them.
    pub agents: usize,
    /// Calls made (each accepted into the agent's durable outbox first).
    pub sent: u64,
    /// Answered OK.
    pub ok: u64,
    /// Answered with an error.
    pub errors: u64,
    /// The first error.
    pub first_error: Option<String>,
    /// Never answered: lost.
    pub lost: u64,
    /// Calls in flight (sent, not answered) at the moment of the kill.
    pub in_flight_at_kill: u64,
    /// Calls made between the kill and the moment every vehicle was back: accepted by an
    /// agent that may not have been connected yet.
    pub made_during_outage: u64,
    /// From each call to its answer.
    pub latency: Summary,
}

/// Connects `plan.vehicles` self-reconnecting vehicles, kills and restarts `broker`, and
/// measures the way back.
pub async fn reconnect_storm(
    plan: &RestartPlan,
    fleet: &Fleet,
    broker: &mut Broker,
    target: &Target,
    agents_dir: &std::path::Path,
    agents: usize,
    say: &impl Fn(String),
) -> Result<RestartReport> {
    let n = plan.vehicles;
    // The agent's own defaults, so the fleet backs off exactly as deployed cars do.
    let defaults = vehicle_agent::AgentConfig::new("localhost:1", "ca".into(), "c".into(), "k".into());
    let settings = StormSettings {
        reconnect: true,
        subscribe_on_connect: true,
        backoff_initial: defaults.backoff_initial,
        backoff_max: defaults.backoff_max,
        ..plan.storm.clone()
    };
    let counter = HandshakeCounter::default();
    let configs = fleet.client_configs(0..n, &counter)?;
    let mut swarm = Swarm::new(fleet.vehicles[..n].iter().map(|v| v.vin.clone()).collect());
    let first = swarm.storm(&configs, target, &settings).await?;
    if first.connected != n {
        bail!(
            "reconnect storm: only {} of {n} vehicles connected at first ({:?})",
            first.connected,
            first.first_error
        );
    }
    let paying = broker.kind == BrokerKind::Gateway && plan.request_rate > 0.0 && agents > 0;
    let agents = if paying {
        let host = target.hosts[0].to_string();
        Some(Agents::start(fleet, n..n + agents, &host, target.port, agents_dir).await?)
    } else {
        None
    };
    let (calls, mut done_rx) = Calls::new(Duration::from_secs(120));
    let payments = agents.as_ref().map(|a| Payments::start(a, plan.request_rate, calls));
    if payments.is_some() {
        tokio::time::sleep(plan.before_kill).await;
    }
    let in_flight_at_kill = payments.as_ref().map_or(0, |p| p.in_flight());

    say(format!(
        "{}: kill and restart with {n} vehicles connected",
        broker.kind.name()
    ));
    let full_before = counter.full_handshakes();
    let restarted = broker.restart().await?;
    let cpu_start = procfs::cpu_ticks(broker.pid).unwrap_or(0);
    let mut report = RestartReport {
        broker: broker.kind.name().into(),
        kill: broker.kill_method().into(),
        vehicles: n,
        backoff_ms: (
            settings.backoff_initial.as_millis() as u64,
            settings.backoff_max.as_millis() as u64,
        ),
        down_s: (restarted.ready - restarted.killed).as_secs_f64(),
        ..RestartReport::default()
    };
    let mut back: HashMap<usize, Instant> = HashMap::new();
    let mut lost = vec![false; n];
    let deadline = restarted.ready + plan.limit;
    while back.len() < n {
        let Ok(Some((i, event))) = tokio::time::timeout_at(deadline.into(), swarm.next()).await else {
            break;
        };
        match event {
            Event::Lost { .. } => lost[i] = true,
            Event::Reconnected { at, .. } if lost[i] => {
                back.insert(i, at);
            }
            Event::AttemptFailed { at, .. } if at < restarted.ready => report.failed_while_down += 1,
            Event::AttemptFailed { error, .. } => {
                report.failed_attempts += 1;
                report.first_failure.get_or_insert(error);
            }
            _ => {}
        }
    }
    swarm.forget_losses();
    let mut times: Vec<Instant> = back.values().copied().collect();
    times.sort_unstable();
    report.reconnected = times.len();
    if let Some(last) = times.last().filter(|_| times.len() == n) {
        report.all_back_s = Some((*last - restarted.killed).as_secs_f64());
        report.all_back_after_restart_s = Some(last.saturating_duration_since(restarted.ready).as_secs_f64());
    }
    let mut latencies = Latencies::default();
    for t in &times {
        latencies.push(*t - restarted.killed);
    }
    report.back_after_kill = latencies.summary();
    report.peak_connects_per_s = peak_per_second(&times);
    report.full_handshakes = counter.full_handshakes() - full_before;
    report.broker_cpu_s =
        procfs::cpu_ticks(broker.pid).unwrap_or(0).saturating_sub(cpu_start) as f64 / procfs::ticks_per_second();
    say(format!(
        "{}: {} of {n} back {} after the kill",
        broker.kind.name(),
        report.reconnected,
        report
            .all_back_s
            .map_or("(not all)".to_owned(), |s| format!("{s:.1} s"))
    ));

    if let (Some(payments), Some(agents)) = (payments, agents) {
        tokio::time::sleep(plan.after_back).await;
        // Every cycle under way completes before this returns: all calls are in `done_rx`.
        let sent = payments.stop().await;
        let mut p = PaymentReport {
            agents: agents.len(),
            sent,
            in_flight_at_kill,
            ..PaymentReport::default()
        };
        let mut latency = Latencies::default();
        let drain_until = Instant::now() + plan.limit;
        while p.ok + p.errors < sent {
            let Ok(Some(call)) = tokio::time::timeout_at(drain_until.into(), done_rx.recv()).await else {
                break;
            };
            // A call is made when it is due: its due time is when the agent accepted it.
            if call.due >= restarted.killed && times.last().is_none_or(|back| call.due <= *back) {
                p.made_during_outage += 1;
            }
            match call.error {
                None => {
                    p.ok += 1;
                    latency.push(call.done - call.due);
                }
                Some(e) => {
                    p.errors += 1;
                    p.first_error.get_or_insert(e);
                }
            }
        }
        p.lost = sent - p.ok - p.errors;
        p.latency = latency.summary();
        report.payments = Some(p);
        agents.shutdown().await;
    }
    let _ = swarm.disconnect_all().await;
    Ok(report)
}

/// Most of `times` (sorted) within any one second.
fn peak_per_second(times: &[Instant]) -> usize {
    let mut best = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end] - times[start] >= Duration::from_secs(1) {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

/// Parking payments until stopped: each agent in turn pays ([`crate::agents::pay`]: a
/// session started and ended, both calls through its durable outbox with their own
/// idempotency keys), one payment at a time per agent (the partner allows one open session per
/// car), at `rate` calls per second over all agents.
struct Payments {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    calls: Calls,
}

impl Payments {
    fn start(agents: &Agents, rate: f64, calls: Calls) -> Payments {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let per_agent = rate / agents.len().max(1) as f64;
        let tasks = agents
            .links()
            .iter()
            .enumerate()
            .map(|(a, link)| {
                let (link, calls, mut stopped) = (link.clone(), calls.clone(), stopped.clone());
                tokio::spawn(async move {
                    let epoch = Instant::now();
                    for cycle in 0u64.. {
                        // A payment is two calls.
                        let due = epoch + Duration::from_secs_f64(2.0 * cycle as f64 / per_agent);
                        tokio::select! {
                            _ = stopped.wait_for(|s| *s) => break,
                            _ = tokio::time::sleep_until(due.into()) => {}
                        }
                        let key = format!("restart-{}-{a}-{cycle}", std::process::id());
                        pay(&link, &key, due, &calls).await;
                    }
                })
            })
            .collect();
        Payments { stop, tasks, calls }
    }

    fn in_flight(&self) -> u64 {
        self.calls.in_flight()
    }

    /// Stops starting payments (one under way completes); returns how many calls were made.
    async fn stop(self) -> u64 {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        self.calls.started()
    }
}

/// The reconnect storm section of the report.
pub fn markdown(md: &mut String, reports: &[RestartReport]) {
    if reports.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\n## Reconnect storm: the broker is killed and restarted under a connected fleet\n"
    );
    crate::report::table_head(
        md,
        "| broker | stopped by | vehicles | down s | back | all back after kill s | after restart s | p50 / p99 s | peak connects/s | attempts failed while down | failed after restart | full handshakes | broker CPU s |",
    );
    for r in reports {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.2} | {}/{} | {} | {} | {:.1} / {:.1} | {} | {} | {} | {} | {:.2} |",
            r.broker,
            r.kill,
            r.vehicles,
            r.down_s,
            r.reconnected,
            r.vehicles,
            r.all_back_s.map_or("-".into(), |s| format!("{s:.1}")),
            r.all_back_after_restart_s.map_or("-".into(), |s| format!("{s:.1}")),
            r.back_after_kill.p50_ms / 1e3,
            r.back_after_kill.p99_ms / 1e3,
            r.peak_connects_per_s,
            r.failed_while_down,
            r.failed_attempts,
            r.full_handshakes,
            r.broker_cpu_s
        );
    }
    let backoff = reports[0].backoff_ms;
    let _ = writeln!(
        md,
        "\nVehicles reconnect by themselves with the agent's default backoff (full jitter, first ceiling {} ms, cap {} s), \
         and subscribe to their `resp` and `events` topics after each CONNACK, as the agent does.",
        backoff.0,
        backoff.1 / 1000
    );
    for r in reports {
        if let Some(e) = &r.first_failure {
            let _ = writeln!(md, "\n{}: first failed attempt after the restart: `{e}`", r.broker);
        }
        if let Some(p) = &r.payments {
            let _ = writeln!(
                md,
                "\n{}: payments across the crash by {} real agents (StartSession then EndSession, each through the durable outbox \
                 with its own idempotency key): {} calls, {} of them in flight at the kill and {} made between the kill and the \
                 last vehicle's return, {} answered OK, {} errors, **{} lost**; call to answer p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms.",
                r.broker,
                p.agents,
                p.sent,
                p.in_flight_at_kill,
                p.made_during_outage,
                p.ok,
                p.errors,
                p.lost,
                p.latency.p50_ms,
                p.latency.p99_ms,
                p.latency.max_ms
            );
            if let Some(e) = &p.first_error {
                let _ = writeln!(md, "\nfirst payment error: `{e}`");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_counts_the_busiest_second() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(peak_per_second(&[]), 0);
        assert_eq!(
            peak_per_second(&[at(0), at(100), at(999), at(1000), at(1500), at(1600), at(1700)]),
            5
        );
    }
}
