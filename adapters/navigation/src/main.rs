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
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use navigation_adapter::{NavigationService, serve};
use proto::adapter::cli::{Listen, Started, TlsFiles, TlsOptions, run_to_exit, shutdown_signal, start, usage_error};

/// Reference partner adapter for navigation.v1.Navigation.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on; not bound when a service manager passes a listening socket
    /// (systemd socket activation: LISTEN_FDS, with LISTEN_PID unset or this process).
    #[arg(long, default_value = "127.0.0.1:50062")]
    listen: SocketAddr,
    /// The TLS files: all three for mTLS, none for plaintext.
    #[command(flatten)]
    tls: TlsOptions,
}

fn main() -> ExitCode {
    let Started { args, mut passed } = match start::<Args>("navigation-adapter", 1, "the service") {
        Ok(started) => started,
        Err(exit) => return exit,
    };
    let tls_files = match args.tls.files() {
        Ok(files) => files,
        Err(problem) => return usage_error("navigation-adapter", problem),
    };
    let listen = passed.pop().map_or(Listen::Bind(args.listen), Listen::Activated);
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
