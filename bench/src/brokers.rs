//! The brokers under test and the partner adapter: our gateway (its release binary as its
//! own process, or in-process for the smoke test) and Mosquitto (always its own process, with
//! an mTLS listener using the same certificates), plus the reference parking adapter.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use crate::fleet::Fleet;
pub use crate::process::{ChildProcess, Launch, log_tail};

/// A free TCP port on `ip` (bound then released: fine on a machine we control).
pub fn free_port(ip: IpAddr) -> Result<u16> {
    Ok(std::net::TcpListener::bind((ip, 0))?.local_addr()?.port())
}

/// A binary of this workspace built with the same profile as the running executable: next to
/// it for the bench binary (`target/release/`), one level up for test binaries (`deps/`).
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("executable has no directory")?.to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir.join(name))
}

/// Builds the gateway and the parking adapter with the profile of the running executable, so
/// that the figures are always those of the current source.
pub fn build_workspace_binaries() -> Result<()> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("executable has no directory")?.to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_owned(),
        Some(other) => other.to_owned(),
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    eprintln!("building gateway and parking-adapter (profile {profile}) ...");
    let status = Command::new(cargo)
        .args([
            "build",
            "--profile",
            &profile,
            "-p",
            "gateway",
            "-p",
            "parking-adapter",
            "--manifest-path",
        ])
        .arg(&manifest)
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("cargo build of gateway and parking-adapter failed ({status})");
    }
    Ok(())
}

/// Makes sure Mosquitto is installed: returns its path, installing Debian's package if
/// `install` is set. The second value says what was done, for the report.
pub fn ensure_mosquitto(path: &Path, install: bool) -> (Option<PathBuf>, Option<String>) {
    if path.exists() {
        return (Some(path.to_path_buf()), None);
    }
    if !install {
        return (
            None,
            Some(format!("{} is missing; Mosquitto was not measured", path.display())),
        );
    }
    eprintln!("{} is missing: apt-get install -y mosquitto ...", path.display());
    let apt = |args: &[&str]| Command::new("apt-get").args(args).status().is_ok_and(|s| s.success());
    let installed = apt(&["install", "-y", "mosquitto"]) || (apt(&["update"]) && apt(&["install", "-y", "mosquitto"]));
    if installed && path.exists() {
        (
            Some(path.to_path_buf()),
            Some("Mosquitto was installed by the bench (apt-get install -y mosquitto)".into()),
        )
    } else {
        (
            None,
            Some("Mosquitto is missing and apt-get install -y mosquitto failed; Mosquitto was not measured".into()),
        )
    }
}

/// `mosquitto -h`'s first line, e.g. "mosquitto version 2.0.11".
pub fn mosquitto_version(bin: &Path) -> String {
    Command::new(bin)
        .arg("-h")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "mosquitto (version unknown)".into())
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
    /// The gateway's database URL.
    pub storage_url: Option<String>,
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
                let process = tokio::task::spawn_blocking(move || launch.spawn(&log)).await??;
                self.pid = process.pid;
                self.handle = Handle::Process(process);
            }
            Relaunch::InProcess(toml, addr) => {
                let mut config = gateway::GatewayConfig::load(Some(toml)).map_err(|e| anyhow::anyhow!("{e}"))?;
                config.mqtt.listen = *addr;
                let listener = gateway::bind(*addr)?;
                let gw = gateway::Gateway::start_on(config, listener)
                    .await
                    .map_err(|e| anyhow::anyhow!("gateway did not restart: {e}"))?;
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

    /// The gateway's session registry, read through the gateway's own store code.
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

/// Mosquitto's configuration: an mTLS listener with the fleet's server certificate, cars
/// identified by their certificate, no persistence.
pub fn mosquitto_conf(fleet: &Fleet, listen: SocketAddr) -> String {
    format!(
        "# written by fleet-bench\n\
         listener {port} {ip}\n\
         cafile {ca}\n\
         certfile {cert}\n\
         keyfile {key}\n\
         require_certificate true\n\
         use_identity_as_username true\n\
         allow_anonymous true\n\
         max_keepalive 65535\n\
         max_connections -1\n\
         persistence false\n\
         log_dest stderr\n\
         log_type error\n\
         log_type warning\n\
         log_type notice\n\
         log_type information\n\
         connection_messages true\n\
         {user}",
        // As root, Mosquitto drops to the `mosquitto` user before reading the key, which
        // lives in our private temporary directory: stay who we are.
        user = if running_as_root() { "user root\n" } else { "" },
        port = listen.port(),
        ip = listen.ip(),
        ca = fleet.ca_file.display(),
        cert = fleet.server.cert.display(),
        key = fleet.server.key.display(),
    )
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Uid:")).map(str::to_owned))
        .and_then(|uids| uids.split_whitespace().nth(1).map(|euid| euid == "0"))
        .unwrap_or(false)
}

/// Starts Mosquitto with [`mosquitto_conf`].
pub fn start_mosquitto(bin: &Path, fleet: &Fleet, dir: &Path, hosts: &[IpAddr]) -> Result<Broker> {
    let ip = listen_ip(hosts);
    let port = free_port(hosts[0])?;
    let conf = dir.join("mosquitto.conf");
    std::fs::write(&conf, mosquitto_conf(fleet, SocketAddr::new(ip, port)))?;
    let launch = Launch {
        name: "mosquitto".into(),
        program: bin.to_path_buf(),
        args: vec!["-c".into(), conf.into_os_string()],
        env: Vec::new(),
        env_remove: Vec::new(),
        ready: " running".into(),
    };
    let log = dir.join("mosquitto.log");
    let process = launch.spawn(&log)?;
    Ok(Broker {
        kind: BrokerKind::Mosquitto,
        label: mosquitto_version(bin),
        pid: process.pid,
        port,
        storage_url: None,
        log: Some(log),
        handle: Handle::Process(process),
        relaunch: Relaunch::Process(launch),
    })
}

/// The gateway's configuration file: MQTT on `listen`, the fleet's certificates, SQLite at
/// `db`, the parking adapter at `adapter` over mTLS with `read_only_methods` skipping the ledger.
pub fn gateway_toml(
    fleet: &Fleet,
    listen: SocketAddr,
    max_connections: usize,
    db: &Path,
    adapter: SocketAddr,
    read_only_methods: &[String],
) -> String {
    format!(
        "# written by fleet-bench\n\
         [mqtt]\nlisten = \"{listen}\"\nmax_connections = {max_connections}\n\n\
         [tls]\ncert = {cert:?}\nkey = {key:?}\nclient_ca = {ca:?}\n\n\
         [storage]\nurl = {url:?}\n\n\
         [[partners]]\nservice = \"parking.v1.ParkingPayment\"\nname = \"parking\"\nread_only_methods = {read_only:?}\n\
         endpoint = \"https://localhost:{adapter_port}\"\ntimeout = \"30s\"\n\
         ca_cert = {ca:?}\nclient_cert = {client_cert:?}\nclient_key = {client_key:?}\n",
        cert = fleet.server.cert,
        key = fleet.server.key,
        ca = fleet.ca_file,
        url = format!("sqlite://{}", db.display()),
        adapter_port = adapter.port(),
        client_cert = fleet.gateway_client.cert,
        client_key = fleet.gateway_client.key,
        read_only = read_only_methods,
    )
}

/// How to run the gateway.
#[derive(Debug, Clone)]
pub enum GatewayLaunch {
    /// Its binary as its own process (the real benchmark).
    Binary(PathBuf),
    /// `gateway::Gateway` inside this process (the smoke test).
    InProcess,
}

/// Starts the gateway with [`gateway_toml`]; its database goes in `db_dir`.
#[allow(clippy::too_many_arguments)]
pub async fn start_gateway(
    launch: &GatewayLaunch,
    fleet: &Fleet,
    dir: &Path,
    db_dir: &Path,
    hosts: &[IpAddr],
    max_connections: usize,
    adapter: SocketAddr,
    read_only_methods: &[String],
) -> Result<Broker> {
    std::fs::create_dir_all(db_dir)?;
    let db = db_dir.join(format!("gw-{}.db", std::process::id()));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let url = format!("sqlite://{}", db.display());
    let ip = listen_ip(hosts);
    match launch {
        GatewayLaunch::Binary(bin) => {
            let port = free_port(hosts[0])?;
            let toml = dir.join("gateway.toml");
            std::fs::write(
                &toml,
                gateway_toml(
                    fleet,
                    SocketAddr::new(ip, port),
                    max_connections,
                    &db,
                    adapter,
                    read_only_methods,
                ),
            )?;
            // The gateway's own default log level (info), as deployed.
            let launch = Launch {
                name: "gateway".into(),
                program: bin.clone(),
                args: vec!["run".into(), "--config".into(), toml.into_os_string()],
                env: vec![("NO_COLOR".into(), "1".into())],
                env_remove: vec!["RUST_LOG".into()],
                ready: "gateway listening for vehicles".into(),
            };
            let log = dir.join("gateway.log");
            let process = launch.spawn(&log)?;
            Ok(Broker {
                kind: BrokerKind::Gateway,
                label: format!("gateway {} (release binary)", env!("CARGO_PKG_VERSION")),
                pid: process.pid,
                port,
                storage_url: Some(url),
                log: Some(log),
                handle: Handle::Process(process),
                relaunch: Relaunch::Process(launch),
            })
        }
        GatewayLaunch::InProcess => {
            let toml = dir.join("gateway.toml");
            std::fs::write(
                &toml,
                gateway_toml(
                    fleet,
                    SocketAddr::new(ip, 0),
                    max_connections,
                    &db,
                    adapter,
                    read_only_methods,
                ),
            )?;
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
                storage_url: Some(url),
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
            tokio::spawn(parking_adapter::serve(
                listener,
                Some(tls),
                parking_adapter::ParkingService::new(),
                async {
                    let _ = stopped.await;
                },
            ));
            Ok(Adapter {
                addr,
                pid: None,
                _process: None,
                _stop: Some(stop),
            })
        }
    }
}
