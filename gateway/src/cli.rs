//! The `gateway` command line: parses and validates the configuration, takes the listening
//! sockets a service manager passed (systemd socket activation) or binds its own, then runs
//! until SIGINT or SIGTERM. `main.rs` is only a call to [`main`], so that tests can build the
//! same program as a binary of their own.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

use crate::listeners::EndpointError;
use crate::{Gateway, GatewayConfig, StartError};

/// Exit code for a configuration that cannot run (sysexits' EX_USAGE).
const EXIT_BAD_CONFIG: u8 = 64;
/// Exit code when the database cannot be reached at startup (sysexits' EX_UNAVAILABLE).
const EXIT_UNAVAILABLE: u8 = 69;

/// What `--help` says of socket activation.
const SOCKET_ACTIVATION: &str = "Socket activation: when a service manager passes listening sockets \
(systemd's LISTEN_FDS, with LISTEN_PID unset or this process), the first is the vehicles' MQTT port \
and the second, if any, the partner API's; the configured mqtt.listen and partner_api.listen are then \
not bound. The sockets outlive a restart of the gateway, so cars connecting meanwhile wait in their \
backlog instead of being refused.";

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "Connected-car gateway: MQTT over mTLS for vehicles, gRPC to partners",
    after_help = SOCKET_ACTIVATION
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve vehicles until SIGINT/SIGTERM.
    #[command(after_help = SOCKET_ACTIVATION)]
    Run {
        /// TOML configuration file; GATEWAY_* environment variables override it.
        #[arg(long, short, env = "GATEWAY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate the configuration and exit.
    CheckConfig {
        /// TOML configuration file.
        #[arg(long, short, env = "GATEWAY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Operate a running fleet: sessions, timelines, partners, kick, revoke, customers (a
    /// client of the ops listener, with an operator certificate).
    Fleet(Box<crate::fleet_cli::FleetArgs>),
}

/// Listening sockets passed by a service manager: the MQTT port, then the partner API's.
struct Activated {
    mqtt: std::net::TcpListener,
    partner_api: Option<std::net::TcpListener>,
}

/// Takes the sockets passed with `LISTEN_FDS`, if any. Called first thing, while the process
/// has one thread: it clears the variables, as the protocol asks.
fn activated_sockets() -> Result<Option<Activated>, String> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return Ok(None);
    }
    if fds.len() > 2 {
        return Err(format!(
            "LISTEN_FDS={}: at most 2 sockets (the MQTT port, then the partner API)",
            fds.len()
        ));
    }
    let take = |fds: &mut listenfd::ListenFd, i: usize| {
        fds.take_tcp_listener(i)
            .map_err(|e| format!("passed socket {i} (fd {}): {e}", 3 + i))
            .map(|l| l.expect("a socket not taken before"))
    };
    let mqtt = take(&mut fds, 0)?;
    let partner_api = if fds.len() == 2 { Some(take(&mut fds, 1)?) } else { None };
    Ok(Some(Activated { mqtt, partner_api }))
}

/// Parses the command line and runs it; the process's exit status.
pub fn main() -> ExitCode {
    let activated = activated_sockets();
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (config, check_only) = match cli.command {
        Command::Run { config } => (config, false),
        Command::CheckConfig { config } => (config, true),
        // A client: no log lines (stdout is its output) and no configuration to load.
        Command::Fleet(args) => return crate::fleet_cli::main(*args),
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        // Colour codes only for a person at a terminal, never in a file or a log collector.
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    let config = match GatewayConfig::load(config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: invalid configuration: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if check_only {
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    let activated = match activated {
        Ok(Some(a)) if a.partner_api.is_some() && config.partner_api.is_none() => {
            eprintln!("error: socket activation: a partner API socket was passed, but [partner_api] is not configured");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: socket activation: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        let started = match activated {
            None => Gateway::start(config).await,
            Some(sockets) => start_activated(config, sockets).await,
        };
        let gateway = match started {
            Ok(g) => g,
            Err(e) => {
                eprintln!("error: {e}");
                return match e {
                    StartError::Endpoint(EndpointError::Bind { .. }) => ExitCode::FAILURE,
                    StartError::Tls(_) | StartError::Partner(_) | StartError::Crl(_) | StartError::Endpoint(_) => {
                        ExitCode::from(EXIT_BAD_CONFIG)
                    }
                    StartError::Storage(_) => ExitCode::from(EXIT_UNAVAILABLE),
                    _ => ExitCode::FAILURE,
                };
            }
        };
        shutdown_signal().await;
        gateway.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// Starts the gateway on the sockets a service manager passed.
async fn start_activated(config: GatewayConfig, sockets: Activated) -> Result<Gateway, StartError> {
    let configured = config.mqtt.listen;
    let tokio_listener = |listener: std::net::TcpListener| {
        let addr = listener.local_addr().unwrap_or(configured);
        listener
            .set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(listener))
            .map_err(|source| StartError::Bind { addr, source })
    };
    let mqtt = tokio_listener(sockets.mqtt)?;
    let partner_api = sockets.partner_api.map(tokio_listener).transpose()?;
    tracing::info!("serving on the sockets passed by the service manager (socket activation)");
    Gateway::start_on_listeners(config, mqtt, partner_api).await
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
