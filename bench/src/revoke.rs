//! `fleet-bench revoke`: how long a revocation takes to cut a car off. N cars connect over mTLS
//! (raw MQTT, each watching its own socket); then, one car after the other, an operator calls
//! `fleet.v1.FleetOps/RevokeVehicle` for it over gRPC on the ops listener, and the bench notes
//! the RPC's round trip and the time from the call's start to the moment that car's socket is
//! closed by the gateway (EOF or error on the car's side). A sample of the revoked cars then
//! tries to come back once with the TLS session they had (a resumed handshake) and once with a
//! fresh one (a full handshake): each must get CONNACK 5, not authorized.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures::StreamExt as _;
use proto::fleet::v1::session_change::Kind;
use proto::fleet::v1::{
    ListRevocationsRequest, ListSessionsRequest, RevokeVehicleRequest, SessionChange, WatchSessionsRequest,
};
use rustls::ClientConfig;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::brokers::{self, ConfigOverride, GatewayBinArgs, GatewayLaunch, GatewayOptions};
use crate::fleet::{Fleet, HandshakeCounter};
use crate::ops;
use crate::procfs::Roles;
use crate::rawmqtt::{self, ConnectReturnCode, RawWriter};
use crate::report::{RunInfo, Started, notes_markdown, table_head};
use crate::stats::{Latencies, Summary};

/// Keep-alive the cars announce (they send no PINGREQ; the run is far shorter).
const KEEP_ALIVE: Duration = Duration::from_secs(600);
/// Longest wait for a CONNACK.
const CONNECT_LIMIT: Duration = Duration::from_secs(30);
/// Connection attempts in flight while the cars connect.
const CONNECTING_AT_ONCE: usize = 32;

/// What the scenario does.
#[derive(Debug, Clone)]
pub struct RevokePlan {
    /// Cars connected, then revoked one after the other.
    pub vehicles: usize,
    /// Pause after one car's socket closed before the next revocation.
    pub interval: Duration,
    /// Revoked cars that try to come back (resumed, then full handshake), spread over the fleet.
    pub sample: usize,
    /// How long to wait for a revoked car's socket to close before counting it as not closed.
    pub close_limit: Duration,
    /// Settings of the gateway beyond the defaults (the `[ops]` section is added).
    pub overrides: Vec<ConfigOverride>,
}

/// `fleet-bench revoke`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct RevokeArgs {
    /// Where revoke.json and revoke.md go.
    #[arg(long, default_value = "docs/benchmarks")]
    pub out: std::path::PathBuf,
    /// Cars connected, then revoked one after the other.
    #[arg(long, default_value_t = 200)]
    pub vehicles: usize,
    /// Milliseconds between one car's close and the next revocation.
    #[arg(long, default_value_t = 50)]
    pub interval_ms: u64,
    /// Revoked cars that try to come back, once resumed and once with a full handshake.
    #[arg(long, default_value_t = 20)]
    pub sample: usize,
    /// The gateway binary and the work files.
    #[command(flatten)]
    pub gateway: GatewayBinArgs,
}

impl RevokeArgs {
    /// The plan these options make, with the per-car bounds lifted.
    pub fn plan(&self) -> RevokePlan {
        RevokePlan {
            vehicles: self.vehicles,
            interval: Duration::from_millis(self.interval_ms),
            sample: self.sample,
            close_limit: Duration::from_secs(5),
            overrides: crate::run::traffic_overrides(),
        }
    }
}

/// The reconnect attempts of one kind (resumed or full handshakes).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Reconnects {
    /// Attempts made.
    pub tried: usize,
    /// Answered CONNACK 5, not authorized.
    pub not_authorized: usize,
    /// Answered CONNACK 0: the revoked car got back in.
    pub accepted: usize,
    /// Answered with another code, or no answer at all.
    pub other: usize,
    /// Handshakes that resumed an earlier TLS session (rustls on the car's side says so).
    pub resumed_handshakes: usize,
    /// The first answer that was not "not authorized".
    pub first_other: Option<String>,
    /// From the TCP connect to the CONNACK.
    pub connack: Summary,
}

/// The scenario's report.
#[derive(Debug, Clone, Serialize)]
pub struct RevokeRun {
    /// When and where.
    pub run: RunInfo,
    /// Cars connected and revoked.
    pub vehicles: usize,
    /// Pause between one car's close and the next revocation, ms.
    pub interval_ms: f64,
    /// Time to CONNACK of the cars' first connections (full handshakes, 32 at once).
    pub connect: Summary,
    /// RevokeVehicle calls answered OK.
    pub revoked: usize,
    /// Of those, answers saying the car was connected.
    pub was_connected: usize,
    /// Calls that failed.
    pub rpc_failed: usize,
    /// The first failure.
    pub first_rpc_error: Option<String>,
    /// Cars whose socket the gateway closed within the limit.
    pub closed: usize,
    /// Of those, sockets closed before the RPC's answer arrived.
    pub closed_before_answer: usize,
    /// Cars still connected after the limit.
    pub not_closed: usize,
    /// The RevokeVehicle round trip (call to answer).
    pub rpc: Summary,
    /// From the call's start to the car seeing its socket closed.
    pub to_close: Summary,
    /// Why the gateway says the revoked cars' sessions ended (ListSessions, recently closed).
    pub recorded_reasons: BTreeMap<String, usize>,
    /// Revocations the gateway lists (ListRevocations).
    pub listed_revocations: usize,
    /// Gateway CPU over the revocations, milliseconds per revocation.
    pub gateway_cpu_ms_per_revocation: f64,
    /// Reconnects with the TLS session each car had.
    pub resumed: Reconnects,
    /// Reconnects with a fresh TLS configuration (full handshakes).
    pub full: Reconnects,
    /// What to know to read it.
    pub notes: Vec<String>,
}

/// One connected car: its writer (kept open) and the news of its socket's end.
struct Car {
    _writer: RawWriter,
    closed: oneshot::Receiver<(Instant, String)>,
}

/// Runs the scenario with the gateway as `launch` says, files in `work`.
pub async fn run(plan: &RevokePlan, launch: &GatewayLaunch, work: &Path, command: String) -> Result<RevokeRun> {
    let started = Started::now();
    if plan.vehicles == 0 {
        bail!("need vehicles");
    }
    let host = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let hosts = vec![host];
    started.say(&format!("issuing {} vehicle certificates", plan.vehicles));
    let fleet = Fleet::create(&work.join("pki"), plan.vehicles, &hosts)?;
    let adapter = brokers::start_adapter(None, &fleet, work).await?;
    let ops_addr = SocketAddr::new(host, brokers::free_port(host)?);
    let mut overrides = plan.overrides.clone();
    overrides.extend(ops::ops_settings(&fleet, ops_addr));
    let dir = work.join("gateway");
    std::fs::create_dir_all(&dir)?;
    let options = GatewayOptions {
        max_connections: plan.vehicles + 100,
        adapter: adapter.addr,
        read_only_methods: &[],
        partner_api: false,
        overrides: &overrides,
        extra_services: &[],
    };
    started.say("starting the gateway");
    let broker = brokers::start_gateway(launch, &fleet, &dir, &work.join("db"), &hosts, &options).await?;
    let roles = Roles::new(broker.pid, None);
    let addr = SocketAddr::new(host, broker.port);
    let counter = HandshakeCounter::default();
    let configs = fleet.client_configs(0..plan.vehicles, &counter)?;

    started.say(&format!("connecting {} cars", plan.vehicles));
    let (mut cars, connect) = connect_all(&fleet, &configs, addr).await?;
    let mut operator = ops::operator_client(&fleet, ops_addr).await?;
    // The first call sets up the HTTP/2 connection; the measured ones reuse it.
    operator.list_revocations(ListRevocationsRequest {}).await?;
    // The connection log tells watchers of a close once it has stored it; the recorded reasons
    // are read only after every close seen by a car has been told, or they could miss the last.
    let mut log = operator
        .watch_sessions(WatchSessionsRequest::default())
        .await?
        .into_inner();

    started.say(&format!("revoking {} cars one after the other", plan.vehicles));
    let mut rpc = Latencies::default();
    let mut to_close = Latencies::default();
    let (mut revoked, mut was_connected, mut rpc_failed, mut first_rpc_error) = (0, 0, 0, None);
    let (mut closed, mut closed_before_answer) = (0, 0);
    let mark = roles.mark();
    for (vehicle, car) in fleet.vehicles.iter().zip(cars.iter_mut()) {
        let call = Instant::now();
        let answer = operator
            .revoke_vehicle(RevokeVehicleRequest {
                vin: vehicle.vin.to_string(),
                reason: "fleet-bench".into(),
            })
            .await;
        let answered = Instant::now();
        match answer {
            Ok(a) => {
                revoked += 1;
                was_connected += usize::from(a.into_inner().was_connected);
                rpc.push(answered - call);
            }
            Err(e) => {
                rpc_failed += 1;
                first_rpc_error.get_or_insert_with(|| format!("{}: {e}", vehicle.vin));
                continue;
            }
        }
        if let Ok(Ok((at, _))) = tokio::time::timeout(plan.close_limit, &mut car.closed).await {
            closed += 1;
            closed_before_answer += usize::from(at < answered);
            to_close.push(at.saturating_duration_since(call));
        }
        tokio::time::sleep(plan.interval).await;
    }
    let cpu = roles.since(&mark);
    let logged = closes_logged(&mut log, closed, plan.close_limit).await;
    if logged < closed {
        bail!(
            "the connection log recorded {logged} of the {closed} closes within {:?}",
            plan.close_limit
        );
    }

    started.say(&format!(
        "{} revoked cars try to come back",
        plan.sample.min(plan.vehicles)
    ));
    let sample = sample_indexes(plan.vehicles, plan.sample);
    let resumed = reconnects(&fleet, &sample, |i| configs[i].clone(), addr).await;
    let fresh = fleet.client_configs(0..plan.vehicles, &counter)?;
    let full = reconnects(&fleet, &sample, |i| fresh[i].clone(), addr).await;

    let sessions = operator
        .list_sessions(ListSessionsRequest {
            closed_limit: 1000,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut recorded_reasons = BTreeMap::new();
    for s in &sessions.recently_closed {
        *recorded_reasons.entry(s.disconnect_reason.clone()).or_default() += 1;
    }
    let listed_revocations = operator
        .list_revocations(ListRevocationsRequest {})
        .await?
        .into_inner()
        .revocations
        .len();
    drop(cars);
    broker.stop().await;
    drop(adapter);

    let notes = vec![
        "The gateway runs as its own process (release binary, default logging, SQLite on disk) with its ops \
         listener on; the operator's gRPC client (tonic, mTLS with an operator certificate) and the cars (raw MQTT \
         over rustls, one task per car reading its socket) run in the load generator, on the same 2 cores."
            .into(),
        "One revocation at a time: the call, then the wait for that car's socket to close, then the pause. The \
         RPC's round trip includes storing the revocation in the database; the close is seen when the car's \
         reading task gets EOF or an error, so its wake-up is part of the figure."
            .into(),
        "The first ListRevocations call, not measured, set up the operator's HTTP/2 connection. The gateway's per-car \
         bounds are lifted (as in the other fleet scenarios: every car comes from 127.0.0.1)."
            .into(),
        "The recorded reasons are read once a WatchSessions stream, opened before the first revocation, has told \
         every close: the connection log tells a close after storing it, and a car can see its socket close first."
            .into(),
        "Reconnects: each car of the sample tries once with the TLS configuration it connected with (its session \
         cache holds the gateway's ticket, so the handshake resumes and the certificate is not verified again), then \
         once with a fresh configuration (a full handshake). Gateway CPU is its process's CPU time during the \
         revocations (pauses included) divided by the revocations."
            .into(),
    ];
    Ok(RevokeRun {
        run: started.finish(command),
        vehicles: plan.vehicles,
        interval_ms: plan.interval.as_secs_f64() * 1e3,
        connect: connect.summary(),
        revoked,
        was_connected,
        rpc_failed,
        first_rpc_error,
        closed,
        closed_before_answer,
        not_closed: revoked - closed,
        rpc: rpc.summary(),
        to_close: to_close.summary(),
        recorded_reasons,
        listed_revocations,
        gateway_cpu_ms_per_revocation: cpu.broker_ms_per(revoked as u64),
        resumed,
        full,
        notes,
    })
}

/// Connects every car, at most [`CONNECTING_AT_ONCE`] at a time, each with a task that reads
/// its socket until the gateway closes it. Returns the cars in fleet order and their times to
/// CONNACK.
async fn connect_all(fleet: &Fleet, configs: &[Arc<ClientConfig>], addr: SocketAddr) -> Result<(Vec<Car>, Latencies)> {
    let server_name = addr.ip().to_string();
    let attempts = fleet.vehicles.iter().zip(configs).map(|(v, config)| {
        let (config, vin, server_name) = (config.clone(), v.vin.to_string(), server_name.clone());
        async move {
            rawmqtt::open(config, addr, &server_name, &vin, KEEP_ALIVE, CONNECT_LIMIT)
                .await?
                .accepted()
        }
    });
    let connected: Vec<_> = futures::stream::iter(attempts)
        .buffered(CONNECTING_AT_ONCE)
        .collect()
        .await;
    let mut cars = Vec::with_capacity(connected.len());
    let mut latencies = Latencies::default();
    for (vehicle, result) in fleet.vehicles.iter().zip(connected) {
        let (writer, mut reader, took) =
            result.map_err(|e| anyhow::anyhow!("{} did not connect: {e:#}", vehicle.vin))?;
        latencies.push(took);
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            // Anything the gateway sends before closing (session tickets are TLS, not MQTT) is read
            // and dropped; the end is what counts.
            let why = loop {
                if let Err(e) = reader.next().await {
                    break e.to_string();
                }
            };
            let _ = tx.send((Instant::now(), why));
        });
        cars.push(Car {
            _writer: writer,
            closed: rx,
        });
    }
    Ok((cars, latencies))
}

/// Waits until `log` has told `closes` disconnections (each told after the store recorded it),
/// or `limit` passes; returns how many it told.
async fn closes_logged(log: &mut tonic::Streaming<SessionChange>, closes: usize, limit: Duration) -> usize {
    let mut told = 0;
    let _ = tokio::time::timeout(limit, async {
        while told < closes {
            match log.message().await {
                Ok(Some(change)) => told += usize::from(change.kind() == Kind::Disconnected),
                Ok(None) | Err(_) => return,
            }
        }
    })
    .await;
    told
}

/// `count` indexes out of `0..n`, spread evenly.
fn sample_indexes(n: usize, count: usize) -> Vec<usize> {
    let count = count.min(n);
    (0..count).map(|k| k * n / count).collect()
}

/// One reconnect attempt per car of `sample`, one after the other, with `config(i)`.
async fn reconnects(
    fleet: &Fleet,
    sample: &[usize],
    config: impl Fn(usize) -> Arc<ClientConfig>,
    addr: SocketAddr,
) -> Reconnects {
    let mut out = Reconnects::default();
    let mut connack = Latencies::default();
    let server_name = addr.ip().to_string();
    for &i in sample {
        let vin = fleet.vehicles[i].vin.as_str();
        out.tried += 1;
        // Only the answer: the connection closes here.
        let answer = rawmqtt::open(config(i), addr, &server_name, vin, KEEP_ALIVE, CONNECT_LIMIT).await;
        match answer.map(|opened| opened.answer) {
            Ok(a) => {
                connack.push(a.elapsed);
                out.resumed_handshakes += usize::from(a.resumed);
                match a.code {
                    ConnectReturnCode::NotAuthorized => out.not_authorized += 1,
                    ConnectReturnCode::Success => {
                        out.accepted += 1;
                        out.first_other
                            .get_or_insert_with(|| format!("{vin}: CONNACK 0, let back in"));
                    }
                    code => {
                        out.other += 1;
                        out.first_other
                            .get_or_insert_with(|| format!("{vin}: CONNACK {code:?}"));
                    }
                }
            }
            Err(e) => {
                out.other += 1;
                out.first_other.get_or_insert_with(|| format!("{vin}: {e:#}"));
            }
        }
    }
    out.connack = connack.summary();
    out
}

impl RevokeRun {
    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        self.run
            .markdown(&mut md, "Revocation: from the operator's call to the car cut off");
        let _ = writeln!(
            md,
            "- {} cars connected (time to CONNACK p50 {:.1} ms, p99 {:.1} ms), revoked one after the other, {:.0} ms \
             between one car's close and the next call\n",
            self.vehicles, self.connect.p50_ms, self.connect.p99_ms, self.interval_ms
        );
        table_head(&mut md, "| measured | count | p50 ms | p90 ms | p99 ms | max ms |");
        for (what, s) in [
            ("`RevokeVehicle` round trip (call to answer)", &self.rpc),
            ("call to the car's socket closed", &self.to_close),
        ] {
            let _ = writeln!(
                md,
                "| {what} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
                s.count, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms
            );
        }
        let _ = writeln!(
            md,
            "\n- calls answered OK: {} ({} said the car was connected), failed: {}{}",
            self.revoked,
            self.was_connected,
            self.rpc_failed,
            self.first_rpc_error
                .as_ref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            md,
            "- sockets closed: {} ({} before the call's answer arrived), not closed: {}",
            self.closed, self.closed_before_answer, self.not_closed
        );
        let reasons: Vec<String> = self
            .recorded_reasons
            .iter()
            .map(|(r, n)| format!("\"{r}\" × {n}"))
            .collect();
        let _ = writeln!(
            md,
            "- sessions' end as the gateway recorded it (ListSessions): {}; revocations listed: {}",
            reasons.join(", "),
            self.listed_revocations
        );
        let _ = writeln!(
            md,
            "- gateway CPU: {:.2} ms per revocation\n",
            self.gateway_cpu_ms_per_revocation
        );
        let _ = writeln!(md, "## Revoked cars coming back (one attempt each)\n");
        table_head(
            &mut md,
            "| handshake | tried | resumed handshakes | CONNACK 5 (not authorized) | let in | other | p50 ms to CONNACK | max ms |",
        );
        for (what, r) in [
            ("with the car's TLS session", &self.resumed),
            ("fresh (full)", &self.full),
        ] {
            let _ = writeln!(
                md,
                "| {what} | {} | {} | {} | {} | {} | {:.2} | {:.2} |",
                r.tried,
                r.resumed_handshakes,
                r.not_authorized,
                r.accepted,
                r.other,
                r.connack.p50_ms,
                r.connack.max_ms
            );
        }
        for r in [&self.resumed, &self.full] {
            if let Some(o) = &r.first_other {
                let _ = writeln!(md, "\nFirst unexpected answer: {o}");
            }
        }
        notes_markdown(&mut md, &self.notes);
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_spreads_over_the_fleet() {
        assert_eq!(sample_indexes(200, 4), [0, 50, 100, 150]);
        assert_eq!(sample_indexes(3, 20), [0, 1, 2]);
        assert!(sample_indexes(5, 0).is_empty());
    }
}
