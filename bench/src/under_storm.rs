//! Service during a connect storm: a few connected vehicles keep sending while every other
//! vehicle of the fleet connects at once (full TLS handshakes). Admission control must keep
//! the connected ones served: their latency is the figure.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use crate::brokers::{Broker, BrokerKind};
use crate::fleet::{Fleet, HandshakeCounter};
use crate::procfs::Roles;
use crate::report::TrafficReport;
use crate::swarm::{StormSettings, Swarm, Target};
use crate::traffic::{self, Echo, Load, ParkingRequests, Schedule, Workload};

/// One round: traffic from the connected vehicles while the others storm in.
#[derive(Debug, Clone, Serialize)]
pub struct UnderStormReport {
    /// Which broker.
    pub broker: String,
    /// Vehicles in the storm.
    pub storm_vehicles: usize,
    /// Of them, connected.
    pub storm_connected: usize,
    /// Their failed attempts (shed or refused, then retried after backoff).
    pub storm_failed_attempts: u64,
    /// The storm's connect rate.
    pub storm_connects_per_s: f64,
    /// How long the storm lasted (the traffic window is `traffic.outcome.duration_s`).
    pub storm_wall_s: f64,
    /// What the connected vehicles saw.
    pub traffic: TrafficReport,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct UnderStormPlan {
    /// Vehicles that stay connected and send.
    pub active: usize,
    /// Their rate, messages per second.
    pub rate: f64,
    /// How long they send (the storm should outlast it).
    pub duration: Duration,
    /// How the storm connects.
    pub storm: StormSettings,
}

/// Publish round trips (both brokers) and, on the gateway, full requests, each from
/// `plan.active` connected vehicles while the rest of `vehicles` connect.
pub async fn served_during_storm(
    plan: &UnderStormPlan,
    vehicles: usize,
    fleet: &Fleet,
    broker: &Broker,
    target: &Target,
    roles: &Roles,
) -> Result<Vec<UnderStormReport>> {
    let requests = ParkingRequests::default();
    let mut workloads: Vec<(&str, &dyn Workload)> = vec![("publish QoS 1 during a connect storm", &Echo)];
    if broker.kind == BrokerKind::Gateway {
        workloads.push(("request ListNearbyLots during a connect storm", &requests));
    }
    let active = plan.active.min(vehicles.saturating_sub(1)).max(1);
    let mut out = Vec::new();
    for (scenario, workload) in workloads {
        let mut senders = Swarm::new(fleet.vehicles[..active].iter().map(|v| v.vin.clone()).collect());
        let configs = fleet.client_configs(0..active, &HandshakeCounter::default())?;
        senders.storm(&configs, target, &plan.storm).await?;
        let all: Vec<usize> = senders.connected();
        traffic::prepare(&mut senders, &all, workload).await?;

        let vins = fleet.vehicles[active..vehicles].iter().map(|v| v.vin.clone()).collect();
        let storm_configs = fleet.client_configs(active..vehicles, &HandshakeCounter::default())?;
        let mark = roles.mark();
        // The storm's clients run on a runtime of their own, so the senders' latency is the
        // broker's and not the load generator's own handshake work queued ahead of them.
        let (target_, settings) = (target.clone(), plan.storm.clone());
        let storm = std::thread::spawn(move || -> Result<crate::swarm::StormOutcome> {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(async {
                let mut storm = Swarm::new(vins);
                let outcome = storm.storm(&storm_configs, &target_, &settings).await?;
                let _ = storm.disconnect_all().await;
                Ok(outcome)
            })
        });
        let schedule = Schedule {
            load: Load::Rate(plan.rate),
            duration: plan.duration,
            warmup: Duration::ZERO,
        };
        let outcome = traffic::run(&mut senders, &all, workload, schedule).await;
        let cpu = roles.since(&mark);
        let stormed = tokio::task::spawn_blocking(move || storm.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the storm's thread panicked"))??;
        out.push(UnderStormReport {
            broker: broker.kind.name().into(),
            storm_vehicles: vehicles - active,
            storm_connected: stormed.connected,
            storm_failed_attempts: stormed.failed_attempts,
            storm_connects_per_s: match stormed.wall.as_secs_f64() {
                w if w > 0.0 => stormed.connected as f64 / w,
                _ => 0.0,
            },
            storm_wall_s: stormed.wall.as_secs_f64(),
            traffic: TrafficReport::new(scenario, format!("{:.0}/s", plan.rate), outcome, cpu),
        });
        let _ = senders.disconnect_all().await;
    }
    Ok(out)
}

/// The section of the report.
pub fn markdown(md: &mut String, reports: &[UnderStormReport]) {
    if reports.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\n## Connected vehicles during a connect storm (admission control)\n\n\
         The first vehicles stay connected and send while all the others connect at once with full TLS handshakes.\n"
    );
    crate::report::table_head(
        md,
        "| broker | traffic | load | senders | sent | errors | unanswered | p50 ms | p99 ms | max ms | storm: vehicles connected | failed attempts | connects/s | storm s |",
    );
    for r in reports {
        let o = &r.traffic.outcome;
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {}/{} | {} | {:.0} | {:.1} |",
            r.broker,
            r.traffic.scenario,
            r.traffic.load,
            o.vehicles,
            o.sent,
            o.errors,
            o.missing + o.not_sent,
            o.latency.p50_ms,
            o.latency.p99_ms,
            o.latency.max_ms,
            r.storm_connected,
            r.storm_vehicles,
            r.storm_failed_attempts,
            r.storm_connects_per_s,
            r.storm_wall_s
        );
    }
}
