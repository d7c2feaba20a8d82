//! `navigation-adapter`: runs the reference navigation partner service.
//!
//! ```text
//! navigation-adapter --listen 127.0.0.1:50062 --cert navigation.pem --key navigation.key --client-ca gateway-clients-ca.pem
//! navigation-adapter --listen 127.0.0.1:50062     # plaintext, for local development only
//! ```
//!
//! Under a service manager that passes it a listening socket (systemd socket activation,
//! `LISTEN_FDS`), it serves on that socket instead of binding `--listen`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use navigation_adapter::{NavigationService, serve};
use proto::adapter::cli::{Listen, TlsFiles, passed_sockets, run_to_exit, shutdown_signal, start, usage_error};

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
    let args: Args = match start() {
        Ok(args) => args,
        Err(exit) => return exit,
    };
    let usage = |problem: String| usage_error("navigation-adapter", problem);
    let tls_files = match TlsFiles::from_options(args.cert.as_deref(), args.key.as_deref(), args.client_ca.as_deref()) {
        Ok(files) => files,
        Err(problem) => return usage(problem),
    };
    let listen = match passed {
        Ok(mut sockets) => sockets.pop().map_or(Listen::Bind(args.listen), Listen::Activated),
        Err(problem) => return usage(problem),
    };
    run_to_exit("navigation-adapter", run(listen, tls_files))
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
