//! The brokers under test and the partner adapter: our gateway (its release binary as its
//! own process, or in-process for the smoke test) and Mosquitto (always its own process, with
//! an mTLS listener using the same certificates), plus the reference parking adapter.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result};

use crate::fleet::Fleet;
pub use crate::process::{ChildProcess, Launch, log_tail};

mod binaries;
mod gateway_config;
mod mosquitto;
pub use binaries::{GatewayBinArgs, build_workspace_binaries, gateway_binary, workspace_binary};
pub use gateway_config::{ConfigOverride, GatewayOptions, gateway_toml};
pub use mosquitto::{ensure_mosquitto, mosquitto_conf, mosquitto_version, start_mosquitto};

/// A free TCP port on `ip` (bound then released: fine on a machine we control).
pub fn free_port(ip: IpAddr) -> Result<u16> {
    Ok(std::net::TcpListener::bind((ip, 0))?.local_addr()?.port())
}

/// Which broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// Our gateway.
    Gateway,
    /// Eclipse Mosquitto.
    Mosquitto,
}

impl BrokerKind {
    /// Short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            BrokerKind::Gateway => "gateway",
            BrokerKind::Mosquitto => "mosquitto",
        }
    }
}

/// The line the gateway logs once a second when sockets were refused or dropped.
const REFUSALS_LINE: &str = "vehicle sockets refused or dropped";

/// Where the gateway listener's refusals stood, for [`Broker::refusals_since`].
#[derive(Debug, Clone)]
pub enum RefusalsMark {
    /// The in-process gateway's counters.
    Counters(Refusals),
    /// The gateway process's log length.
    LogOffset(u64),
}

/// Vehicle sockets the gateway refused or dropped before a session, by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Refusals {
    /// Closed at once: the connection limit.
    pub connection_limit: u64,
    /// Closed at once: their source address had its maximum of sockets still handshaking.
    pub per_source: u64,
    /// Closed after the ClientHello: the handshake capacity.
    pub handshake_capacity: u64,
    /// Dropped without a whole ClientHello within the first-flight timeout.
    pub first_flight_timeout: u64,
    /// Handshakes that failed.
    pub failed: u64,
}

impl Refusals {
    fn from_log_line(line: &str) -> Refusals {
        let mut r = Refusals::default();
        for (key, value) in log_fields(line) {
            let Ok(n) = value.parse::<u64>() else { continue };
            match key {
                "connection_limit" => r.connection_limit = n,
                "per_source" => r.per_source = n,
                "handshake_capacity" => r.handshake_capacity = n,
                "first_flight_timeout" => r.first_flight_timeout = n,
                "failed" => r.failed = n,
                _ => {}
            }
        }
        r
    }

    fn plus(&self, o: &Refusals) -> Refusals {
        Refusals {
            connection_limit: self.connection_limit + o.connection_limit,
            per_source: self.per_source + o.per_source,
            handshake_capacity: self.handshake_capacity + o.handshake_capacity,
            first_flight_timeout: self.first_flight_timeout + o.first_flight_timeout,
            failed: self.failed + o.failed,
        }
    }

    /// What happened between `earlier` and these counts.
    pub fn since(&self, earlier: &Refusals) -> Refusals {
        Refusals {
            connection_limit: self.connection_limit.saturating_sub(earlier.connection_limit),
            per_source: self.per_source.saturating_sub(earlier.per_source),
            handshake_capacity: self.handshake_capacity.saturating_sub(earlier.handshake_capacity),
            first_flight_timeout: self.first_flight_timeout.saturating_sub(earlier.first_flight_timeout),
            failed: self.failed.saturating_sub(earlier.failed),
        }
    }
}

enum Handle {
    Process(ChildProcess),
    InProcess(Box<gateway::Gateway>),
    /// Between a kill and the restart.
    Gone,
}

/// How the broker is brought back by [`Broker::restart`].
enum Relaunch {
    Process(Launch),
    /// The in-process gateway: its configuration file and the address it listened on.
    InProcess(PathBuf, SocketAddr),
}

/// When a restarted broker went down and came back.
#[derive(Debug, Clone, Copy)]
pub struct Restarted {
    /// When it was killed.
    pub killed: std::time::Instant,
    /// When it was listening again.
    pub ready: std::time::Instant,
}

/// A running broker.
pub struct Broker {
    /// Which one.
    pub kind: BrokerKind,
    /// Name and version for the report.
    pub label: String,
    /// Its process (this process when in-process).
    pub pid: u32,
    /// Where vehicles connect.
    pub port: u16,
    /// Where partners push events (the gateway, when its partner API is on).
    pub partner_api: Option<SocketAddr>,
    /// The gateway's database URL.
    pub storage_url: Option<String>,
    /// The gateway's configuration file.
    pub config: Option<PathBuf>,
    /// Its log file, if it runs as a process.
    pub log: Option<PathBuf>,
    handle: Handle,
    relaunch: Relaunch,
}

impl Broker {
    /// Stops the broker (a process is killed: its state is throwaway).
    pub async fn stop(self) {
        match self.handle {
            // Graceful, so that tools wrapped around the broker (valgrind, perf) see it exit.
            Handle::Process(p) => {
                let _ = tokio::task::spawn_blocking(move || p.stop(Duration::from_secs(15))).await;
            }
            Handle::InProcess(g) => {
                let _ = tokio::time::timeout(Duration::from_secs(30), g.shutdown()).await;
            }
            Handle::Gone => {}
        }
    }

    /// Kills the broker as a crash would (SIGKILL; the in-process gateway can only be shut
    /// down) and starts it again at once on the same port with the same configuration and
    /// database. Returns when it listens again.
    pub async fn restart(&mut self) -> Result<Restarted> {
        let killed = std::time::Instant::now();
        match std::mem::replace(&mut self.handle, Handle::Gone) {
            Handle::Process(mut p) => tokio::task::spawn_blocking(move || p.kill()).await?,
            Handle::InProcess(g) => {
                let _ = tokio::time::timeout(Duration::from_secs(30), g.shutdown()).await;
            }
            Handle::Gone => {}
        }
        match &self.relaunch {
            Relaunch::Process(launch) => {
                let log = self
                    .log
                    .as_ref()
                    .map(|l| l.with_extension("restarted.log"))
                    .context("a broker process has a log")?;
                let launch = launch.clone();
                let spawned_log = log.clone();
                let process = tokio::task::spawn_blocking(move || launch.spawn(&spawned_log)).await??;
                self.pid = process.pid;
                self.handle = Handle::Process(process);
                if self.partner_api.is_some() {
                    self.partner_api = partner_api_from_log(&log);
                }
            }
            Relaunch::InProcess(toml, addr) => {
                let mut config = gateway::GatewayConfig::load(Some(toml)).map_err(|e| anyhow::anyhow!("{e}"))?;
                config.mqtt.listen = *addr;
                let listener = gateway::bind(*addr)?;
                let gw = gateway::Gateway::start_on(config, listener)
                    .await
                    .map_err(|e| anyhow::anyhow!("gateway did not restart: {e}"))?;
                self.partner_api = gw.partner_api_addr();
                self.handle = Handle::InProcess(Box::new(gw));
            }
        }
        Ok(Restarted {
            killed,
            ready: std::time::Instant::now(),
        })
    }

    /// How [`Broker::restart`] stops it, for the report.
    pub fn kill_method(&self) -> &'static str {
        match self.relaunch {
            Relaunch::Process(_) => "kill -9",
            Relaunch::InProcess(..) => "graceful shutdown (in-process gateway)",
        }
    }

    /// Whether it runs as its own process.
    pub fn is_process(&self) -> bool {
        matches!(self.handle, Handle::Process(_))
    }

    /// Where the gateway listener's refusals stand now, for [`Broker::refusals_since`]
    /// (`None` for Mosquitto).
    pub fn refusals_mark(&self) -> Option<RefusalsMark> {
        match &self.handle {
            Handle::InProcess(g) => {
                let s = g.listener_stats();
                let n = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
                Some(RefusalsMark::Counters(Refusals {
                    connection_limit: n(&s.shed_connections),
                    per_source: n(&s.shed_per_source),
                    handshake_capacity: n(&s.shed_handshakes),
                    first_flight_timeout: n(&s.first_flight_timeouts),
                    failed: n(&s.failed_handshakes),
                }))
            }
            Handle::Process(_) if self.kind == BrokerKind::Gateway => self.log_bytes().map(RefusalsMark::LogOffset),
            Handle::Process(_) | Handle::Gone => None,
        }
    }

    /// The sockets the gateway refused or dropped since `mark`: from its counters in-process,
    /// else summed from the once-a-second lines it logged since.
    pub fn refusals_since(&self, mark: &RefusalsMark) -> Option<Refusals> {
        match (mark, self.refusals_mark()?) {
            (RefusalsMark::Counters(before), RefusalsMark::Counters(now)) => Some(now.since(before)),
            (RefusalsMark::LogOffset(offset), RefusalsMark::LogOffset(_)) => {
                use std::io::{BufRead as _, Seek as _};
                let mut file = std::fs::File::open(self.log.as_ref()?).ok()?;
                file.seek(std::io::SeekFrom::Start(*offset)).ok()?;
                let lines = std::io::BufReader::new(file).lines().map_while(Result::ok);
                Some(
                    lines
                        .filter(|l| l.contains(REFUSALS_LINE))
                        .fold(Refusals::default(), |total, line| {
                            total.plus(&Refusals::from_log_line(&line))
                        }),
                )
            }
            _ => None,
        }
    }

    /// Bytes of the gateway's log file so far (`None` in-process or for Mosquitto's, which
    /// logs little).
    pub fn log_bytes(&self) -> Option<u64> {
        if self.kind != BrokerKind::Gateway {
            return None;
        }
        std::fs::metadata(self.log.as_ref()?).ok().map(|m| m.len())
    }

    /// Bytes of the gateway's SQLite database and its write-ahead log.
    pub fn database_bytes(&self) -> Option<u64> {
        let path = self.storage_url.as_deref()?.strip_prefix("sqlite://")?;
        let size = |suffix: &str| std::fs::metadata(format!("{path}{suffix}")).map_or(0, |m| m.len());
        Some(size("") + size("-wal"))
    }

    /// The gateway's connection log, read through the gateway's own store code.
    pub async fn registry(&self) -> Option<gateway::store::Store> {
        match &self.handle {
            Handle::InProcess(g) => Some(g.store().clone()),
            Handle::Process(_) | Handle::Gone => {
                gateway::store::Store::connect(self.storage_url.as_deref()?).await.ok()
            }
        }
    }
}

/// What the brokers listen on: one loopback address, or all when cars use several.
pub fn listen_ip(hosts: &[IpAddr]) -> IpAddr {
    match hosts {
        [one] => *one,
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    }
}

/// Which brokers a run measures, and how to start them.
#[derive(Debug, Clone)]
pub struct BrokerSetup {
    /// How to run the gateway (None = not measured).
    pub gateway: Option<GatewayLaunch>,
    /// The parking adapter binary (None = in-process).
    pub adapter_bin: Option<PathBuf>,
    /// Mosquitto (None = not measured).
    pub mosquitto: Option<PathBuf>,
    /// Where the gateway's SQLite database goes.
    pub db_dir: PathBuf,
    /// Methods of the parking partner declared read-only (they skip the idempotency ledger),
    /// as the demo configures them.
    pub read_only_methods: Vec<String>,
}

impl BrokerSetup {
    /// The parking adapter the gateway calls, when the gateway is measured.
    pub async fn start_adapter(&self, fleet: &Fleet, dir: &Path) -> Result<Option<Adapter>> {
        match &self.gateway {
            Some(_) => Ok(Some(start_adapter(self.adapter_bin.as_deref(), fleet, dir).await?)),
            None => Ok(None),
        }
    }
}

/// How to run the gateway.
#[derive(Debug, Clone)]
pub enum GatewayLaunch {
    /// Its binary as its own process (the real benchmark).
    Binary(PathBuf),
    /// `gateway::Gateway` inside this process (the smoke test).
    InProcess,
}

/// The line the gateway logs when its partner API listens, with `addr=`.
const PARTNER_API_LINE: &str = "partner API listening";

/// Where the gateway process said in `log` its partner API listens (it binds port 0).
fn partner_api_from_log(log: &Path) -> Option<SocketAddr> {
    partner_api_in(&std::fs::read_to_string(log).ok()?)
}

/// Where the gateway's log `text` says its partner API listens.
fn partner_api_in(text: &str) -> Option<SocketAddr> {
    let line = text.lines().find(|l| l.contains(PARTNER_API_LINE))?;
    log_fields(line).find_map(|(k, v)| (k == "addr").then(|| v.parse().ok()).flatten())
}

/// The `key=value` fields of one of the gateway's log lines.
fn log_fields(line: &str) -> impl Iterator<Item = (&str, &str)> {
    line.split_whitespace().filter_map(|w| w.split_once('='))
}

/// Starts the gateway with [`gateway_toml`] on a fresh database in `db_dir` (any older one of
/// this process is removed first).
pub async fn start_gateway(
    launch: &GatewayLaunch,
    fleet: &Fleet,
    dir: &Path,
    db_dir: &Path,
    hosts: &[IpAddr],
    options: &GatewayOptions<'_>,
) -> Result<Broker> {
    std::fs::create_dir_all(db_dir)?;
    let db = db_dir.join(format!("gw-{}.db", std::process::id()));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    launch_gateway(launch, fleet, dir, &db, hosts, options).await
}

/// Starts the gateway with [`gateway_toml`] (written in `dir`, with its log) on the SQLite
/// file `db` as it is: a gateway started again on the same file finds what the last one stored.
pub async fn launch_gateway(
    launch: &GatewayLaunch,
    fleet: &Fleet,
    dir: &Path,
    db: &Path,
    hosts: &[IpAddr],
    options: &GatewayOptions<'_>,
) -> Result<Broker> {
    let db = db.to_path_buf();
    let url = format!("sqlite://{}", db.display());
    let ip = listen_ip(hosts);
    let toml = dir.join("gateway.toml");
    match launch {
        GatewayLaunch::Binary(bin) => {
            let port = free_port(hosts[0])?;
            std::fs::write(&toml, gateway_toml(fleet, SocketAddr::new(ip, port), &db, options))?;
            // The gateway's own default log level (info), as deployed.
            let launch = Launch {
                name: "gateway".into(),
                program: bin.clone(),
                args: vec!["run".into(), "--config".into(), toml.clone().into_os_string()],
                env: vec![("NO_COLOR".into(), "1".into())],
                env_remove: vec!["RUST_LOG".into()],
                ready: "gateway listening for vehicles".into(),
            };
            let log = dir.join("gateway.log");
            let process = launch.spawn(&log)?;
            let partner_api = match options.partner_api {
                true => Some(partner_api_from_log(&log).context("the gateway did not log its partner API address")?),
                false => None,
            };
            Ok(Broker {
                kind: BrokerKind::Gateway,
                label: format!("gateway {} (release binary)", env!("CARGO_PKG_VERSION")),
                pid: process.pid,
                port,
                partner_api,
                storage_url: Some(url),
                config: Some(toml),
                log: Some(log),
                handle: Handle::Process(process),
                relaunch: Relaunch::Process(launch),
            })
        }
        GatewayLaunch::InProcess => {
            std::fs::write(&toml, gateway_toml(fleet, SocketAddr::new(ip, 0), &db, options))?;
            let config = gateway::GatewayConfig::load(Some(&toml)).map_err(|e| anyhow::anyhow!("{e}"))?;
            let listener = gateway::bind(config.mqtt.listen)?;
            let gw = gateway::Gateway::start_on(config, listener)
                .await
                .map_err(|e| anyhow::anyhow!("gateway did not start: {e}"))?;
            let addr = gw.mqtt_addr();
            Ok(Broker {
                kind: BrokerKind::Gateway,
                label: format!("gateway {} (in-process)", env!("CARGO_PKG_VERSION")),
                pid: std::process::id(),
                port: addr.port(),
                partner_api: gw.partner_api_addr(),
                storage_url: Some(url),
                config: Some(toml.clone()),
                log: None,
                handle: Handle::InProcess(Box::new(gw)),
                relaunch: Relaunch::InProcess(toml, addr),
            })
        }
    }
}

/// A running parking adapter.
pub struct Adapter {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its own process, if it has one.
    pub pid: Option<u32>,
    _process: Option<ChildProcess>,
    _stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Starts the reference parking adapter on mTLS: its binary, or in-process when `bin` is None.
pub async fn start_adapter(bin: Option<&Path>, fleet: &Fleet, dir: &Path) -> Result<Adapter> {
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    match bin {
        Some(bin) => {
            let addr = SocketAddr::new(ip, free_port(ip)?);
            let mut cmd = Command::new(bin);
            cmd.arg("--listen")
                .arg(addr.to_string())
                .arg("--cert")
                .arg(&fleet.adapter.cert)
                .arg("--key")
                .arg(&fleet.adapter.key)
                .arg("--client-ca")
                .arg(&fleet.gateway_clients_ca_file)
                .arg("--database")
                .arg(dir.join("parking.db"))
                // One log line per call would cost the adapter more than the call itself.
                .env("RUST_LOG", "warn")
                .env("NO_COLOR", "1");
            let (process, _) = ChildProcess::spawn(
                "parking-adapter",
                cmd,
                "parking adapter listening",
                &dir.join("adapter.log"),
            )?;
            Ok(Adapter {
                addr,
                pid: Some(process.pid),
                _process: Some(process),
                _stop: None,
            })
        }
        None => {
            let listener = tokio::net::TcpListener::bind((ip, 0)).await?;
            let addr = listener.local_addr()?;
            let cert = std::fs::read_to_string(&fleet.adapter.cert)?;
            let key = std::fs::read_to_string(&fleet.adapter.key)?;
            let tls = parking_adapter::mtls_config(&cert, &key, fleet.gateway_clients_ca_pem());
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let parking = parking_adapter::ParkingService::open(&dir.join("parking.db")).await?;
            tokio::spawn(parking_adapter::serve(listener, Some(tls), parking, async {
                let _ = stopped.await;
            }));
            Ok(Adapter {
                addr,
                pid: None,
                _process: None,
                _stop: Some(stop),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse_as_toml_values_and_bare_words_as_strings() {
        let o: ConfigOverride = "mqtt.max_subscriptions=64".parse().unwrap();
        assert_eq!(
            (o.section.as_str(), o.key.as_str(), o.value.as_str()),
            ("mqtt", "max_subscriptions", "64")
        );
        let o: ConfigOverride = "mqtt.flood_disconnect_after = 5s".parse().unwrap();
        assert_eq!(o.value, "\"5s\"");
        assert_eq!(o.to_string(), "mqtt.flood_disconnect_after = \"5s\"");
        assert_eq!(o.to_string().parse::<ConfigOverride>().unwrap(), o, "round trip");
        assert!("max_subscriptions=64".parse::<ConfigOverride>().is_err());
        assert!("mqtt.max subscriptions=64".parse::<ConfigOverride>().is_err());
    }

    #[test]
    fn refusals_are_read_from_the_gateways_log_line() {
        let line = "2026-12-04T23:15:48.000839Z  INFO gateway::broker::listener: vehicle sockets refused or dropped \
                    in the last second connection_limit=0 per_source=8123 handshake_capacity=1 first_flight_timeout=64 failed=2";
        let r = Refusals::from_log_line(line);
        assert_eq!(
            r,
            Refusals {
                connection_limit: 0,
                per_source: 8123,
                handshake_capacity: 1,
                first_flight_timeout: 64,
                failed: 2
            }
        );
        assert_eq!(r.plus(&r).since(&r), r);
    }

    #[test]
    fn the_partner_api_address_is_read_from_the_log() {
        let log = "x INFO gateway: partner API listening (gRPC over mTLS) addr=127.0.0.1:40123\n\
                   x INFO gateway listening for vehicles\n";
        assert_eq!(partner_api_in(log), Some("127.0.0.1:40123".parse().unwrap()));
        assert_eq!(partner_api_in("x INFO gateway listening for vehicles\n"), None);
    }
}
