//! `gateway`: parses and validates configuration, then runs until SIGINT or SIGTERM.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gateway::{Gateway, GatewayConfig, StartError};

/// Exit code for a configuration that cannot run (sysexits' EX_USAGE).
const EXIT_BAD_CONFIG: u8 = 64;
/// Exit code when the database cannot be reached at startup (sysexits' EX_UNAVAILABLE).
const EXIT_UNAVAILABLE: u8 = 69;

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "Connected-car gateway: MQTT over mTLS for vehicles, gRPC to partners"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve vehicles until SIGINT/SIGTERM.
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        // Colour codes only for a person at a terminal, never in a file or a log collector.
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (Command::Run { config } | Command::CheckConfig { config }) = &cli.command;
    let config = match GatewayConfig::load(config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: invalid configuration: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if let Command::CheckConfig { .. } = cli.command {
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        let gateway = match Gateway::start(config).await {
            Ok(g) => g,
            Err(e) => {
                eprintln!("error: {e}");
                return match e {
                    StartError::Tls(_) | StartError::Partner(_) => ExitCode::from(EXIT_BAD_CONFIG),
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

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
