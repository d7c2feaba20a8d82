//! A service known to the gateway by configuration alone costs it no more than a compiled-in
//! one: the same cars send the same `ListNearbyLots` request to `parking.v1.ParkingPayment`
//! (whose contract is compiled into the code base) and to `karaoke.v1.Karaoke` (which no Rust
//! code of ours mentions: a `[[partners]]` entry is all the gateway knows of it), in
//! alternating phases, against one partner that answers both with the reference parking
//! service, so that only the gateway's handling can differ. Per phase: the gateway's CPU per
//! request and the round trip.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use anyhow::{Context as _, Result};
use parking_adapter::ParkingService;
use proto::parking::v1::parking_payment_server::ParkingPaymentServer;
use serde::Serialize;
use tonic::service::Routes;
use tower::ServiceExt as _;

use crate::brokers::{self, GatewayLaunch, GatewayOptions};
use crate::fleet::Fleet;
use crate::phased::{HOSTS, PhaseSummary, PhasedLoad, PhasedPlan, phases_markdown};
use crate::procfs::Roles;
use crate::report::{RunInfo, Started, TrafficReport, notes_markdown, table_head};
use crate::swarm::Swarm;
use crate::traffic::{self, LIST_NEARBY_LOTS, ParkingRequests};

/// The service whose contract is compiled in.
pub const COMPILED: &str = "parking.v1.ParkingPayment";
/// The service the gateway knows by configuration only (same messages, another name).
pub const CONFIGURED: &str = "karaoke.v1.Karaoke";

/// One phase: one service, one round.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// The service called.
    pub service: String,
    /// Which round.
    pub round: usize,
    /// Its figures.
    pub traffic: TrafficReport,
}

/// One service over every round.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceTotals {
    /// The service.
    pub service: String,
    /// How the gateway knows it.
    pub kind: String,
    /// Its phases added up.
    #[serde(flatten)]
    pub summary: PhaseSummary,
}

/// The scenario's report.
#[derive(Debug, Clone, Serialize)]
pub struct ServicesRun {
    /// When and where.
    pub run: RunInfo,
    /// Cars, rate, phases.
    #[serde(flatten)]
    pub load: PhasedLoad,
    /// Every phase in order.
    pub phases: Vec<Phase>,
    /// Per service.
    pub totals: Vec<ServiceTotals>,
    /// What to know to read it.
    pub notes: Vec<String>,
}

/// Runs the scenario with the gateway as `launch` says, files in `work`.
pub async fn run(plan: &PhasedPlan, launch: &GatewayLaunch, work: &Path, command: String) -> Result<ServicesRun> {
    let started = Started::now();
    let fleet = plan.issue_fleet(&started, work)?;
    let (partner, _stop_partner) = start_twin_partner(&fleet, work).await?;
    let dir = work.join("gateway");
    std::fs::create_dir_all(&dir)?;
    let read_only = vec!["ListNearbyLots".to_owned()];
    let extra = vec![CONFIGURED.to_owned()];
    let options = GatewayOptions {
        max_connections: plan.max_connections(),
        adapter: partner,
        read_only_methods: &read_only,
        partner_api: false,
        overrides: &plan.overrides,
        extra_services: &extra,
    };
    started.say("starting the gateway");
    let broker = brokers::start_gateway(launch, &fleet, &dir, &work.join("db"), &HOSTS, &options).await?;
    let roles = Roles::new(broker.pid, None);
    let mut swarm = Swarm::new(fleet.vehicles.iter().map(|v| v.vin.clone()).collect());
    let configs = fleet.client_configs(0..plan.vehicles, &Default::default())?;
    let active = plan.connect_all(&mut swarm, &configs, broker.port).await?;
    let compiled = ParkingRequests::default();
    let configured = ParkingRequests::calling(&LIST_NEARBY_LOTS.replace(COMPILED, CONFIGURED));
    traffic::prepare(&mut swarm, &active, &compiled).await?;
    let mut phases = Vec::new();
    for round in 1..=plan.rounds {
        for (service, workload) in [(COMPILED, &compiled), (CONFIGURED, &configured)] {
            started.say(&format!("round {round}: {service}, {:.0} requests/s", plan.rate));
            let mark = roles.mark();
            let outcome = traffic::run(&mut swarm, &active, workload, plan.schedule()).await;
            let scenario = format!("ListNearbyLots via {service}");
            phases.push(Phase {
                service: service.into(),
                round,
                traffic: plan.traffic_report(&scenario, outcome, roles.since(&mark)),
            });
        }
    }
    let _ = swarm.disconnect_all().await;
    broker.stop().await;
    let totals = [(COMPILED, "compiled-in contract"), (CONFIGURED, "configuration only")]
        .into_iter()
        .map(|(service, kind)| totals(service, kind, &phases))
        .collect();
    let notes = vec![
        "The gateway runs its release binary as its own process (default logging, SQLite on disk); ListNearbyLots \
         is read-only for both entries, so neither phase goes through the idempotency ledger."
            .into(),
        format!(
            "One partner in the load generator's process serves both services with the reference parking service \
             ({CONFIGURED}/M is answered as {COMPILED}/M), so the partner's work is the same for both; its CPU is \
             the load generator's, not the gateway's."
        ),
        "Gateway CPU per request is the gateway process's CPU time over the whole phase divided by the \
         phase's answers (both warm-up included): compare the two services, not with other reports."
            .into(),
    ];
    Ok(ServicesRun {
        run: started.finish(command),
        load: plan.load(),
        phases,
        totals,
        notes,
    })
}

fn totals(service: &str, kind: &str, phases: &[Phase]) -> ServiceTotals {
    ServiceTotals {
        service: service.into(),
        kind: kind.into(),
        summary: PhaseSummary::of(phases.iter().filter(|p| p.service == service).map(|p| &p.traffic)),
    }
}

/// One partner for both services: the reference parking service under its own name, and the
/// same under [`CONFIGURED`] (the path renamed before tonic's router sees it). Its mTLS is the
/// adapter's: the fleet's partner certificate, gateway clients only.
async fn start_twin_partner(fleet: &Fleet, work: &Path) -> Result<(SocketAddr, tokio::sync::oneshot::Sender<()>)> {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let read = |p: &Path| std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()));
    let tls = parking_adapter::mtls_config(
        &read(&fleet.adapter.cert)?,
        &read(&fleet.adapter.key)?,
        fleet.gateway_clients_ca_pem(),
    );
    let service = ParkingService::open(&work.join("twin-parking.db"))
        .await
        .context("open the twin partner's database")?;
    let parking = ParkingPaymentServer::new(service);
    let renamed = parking.clone().map_request(|mut req: http::Request<axum::body::Body>| {
        let path = req.uri().path().replacen(CONFIGURED, COMPILED, 1);
        *req.uri_mut() = path.parse().expect("a renamed gRPC path is a valid URI");
        req
    });
    let router = Routes::new(parking)
        .into_axum_router()
        .route_service(&format!("/{CONFIGURED}/{{*method}}"), renamed);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .tls_config(tls)?
        .add_routes(Routes::from(router))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
            let _ = stopped.await;
        });
    tokio::spawn(server);
    Ok((addr, stop))
}

impl ServicesRun {
    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        self.run
            .markdown(&mut md, "A service by configuration alone: what it costs the gateway");
        let _ = writeln!(
            md,
            "- {} cars, {:.0} requests/s between them (open loop), {:.0} s per phase ({:.0} s warm-up left out), \
             the services alternating\n",
            self.load.vehicles, self.load.rate, self.load.phase_s, self.load.warmup_s
        );
        table_head(
            &mut md,
            "| service | the gateway knows it by | answered | failed | gateway CPU µs / request | p50 ms (median of phases) | p99 ms (median of phases) |",
        );
        for t in &self.totals {
            let _ = writeln!(md, "| `{}` | {} | {} |", t.service, t.kind, t.summary.cells());
        }
        phases_markdown(
            &mut md,
            "service",
            self.phases
                .iter()
                .map(|p| (p.round, format!("`{}`", p.service), &p.traffic)),
        );
        notes_markdown(&mut md, &self.notes);
        md
    }
}
