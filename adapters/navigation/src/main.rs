//! `navigation-adapter`: runs the reference navigation partner service.
//!
//! ```text
//! navigation-adapter --listen 127.0.0.1:50062 --cert navigation.pem --key navigation.key --client-ca gateway-clients-ca.pem
//! navigation-adapter --listen 127.0.0.1:50062     # plaintext, for local development only
//! ```
//!
//! Under a service manager that passes it a listening socket (systemd socket activation,
//! `LISTEN_FDS`), it serves on that socket instead of binding `--listen`.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use clap::error::ErrorKind;
use navigation_adapter::{NavigationService, serve};
use proto::adapter::cli::{EX_USAGE, Listen, TlsFiles, passed_sockets, shutdown_signal};
use tracing_subscriber::EnvFilter;

/// Reference partner adapter for navigation.v1.Navigation.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on; not bound when a service manager passes a listening socket
    /// (systemd socket activation: LISTEN_FDS, with LISTEN_PID unset or this process).
    #[arg(long, default_value = "127.0.0.1:50062")]
    listen: SocketAddr,
    /// PEM certificate the adapter presents to the gateway.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long)]
    key: Option<PathBuf>,
    /// PEM CA that the gateway's client certificate must chain to, and that signs nothing else
    /// (gateway-clients-ca.pem in the development PKI); calls must also carry role gateway-client.
    #[arg(long)]
    client_ca: Option<PathBuf>,
}

fn main() -> ExitCode {
    // Taken while the process has one thread: it clears LISTEN_FDS, as the protocol asks.
    let passed = passed_sockets(1, "the service");
    // rustls needs exactly one process-wide crypto provider; install it before any TLS use.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        // Logs go to stderr so that stdout carries only the "listening" line scripts wait for.
        .with_writer(std::io::stderr)
        // No colour codes when logs go to a file or a log collector.
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => e.exit(),
        Err(e) => {
            // A value clap cannot read is a bad configuration like any other: EX_USAGE.
            let _ = e.print();
            return ExitCode::from(EX_USAGE);
        }
    };
    let usage = |problem: String| {
        eprintln!("navigation-adapter: {problem}");
        ExitCode::from(EX_USAGE)
    };
    let tls_files = match TlsFiles::from_options(args.cert.as_deref(), args.key.as_deref(), args.client_ca.as_deref()) {
        Ok(files) => files,
        Err(problem) => return usage(problem),
    };
    let listen = match passed {
        Ok(mut sockets) => sockets.pop().map_or(Listen::Bind(args.listen), Listen::Activated),
        Err(problem) => return usage(problem),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("navigation-adapter: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(listen, tls_files)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("navigation-adapter: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(listen: Listen, tls_files: Option<TlsFiles>) -> anyhow::Result<()> {
    let tls = match tls_files {
        Some(files) => Some(files.server_config().await?),
        None => None,
    };
    let mode = if tls.is_some() { "mTLS" } else { "plaintext" };
    let signal = shutdown_signal().context("cannot handle SIGINT and SIGTERM")?;
    let listener = listen.listener().await?;
    let addr = listener.local_addr().context("cannot read the listening address")?;
    println!("navigation adapter listening on {addr} ({mode})");

    let shutdown = async move {
        let name = signal.await;
        tracing::info!(signal = name, "shutting down");
    };
    serve(listener, tls, NavigationService::new(), shutdown).await?;
    tracing::info!("navigation adapter stopped");
    Ok(())
}
