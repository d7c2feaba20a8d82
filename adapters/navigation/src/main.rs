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
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use navigation_adapter::{NavigationService, mtls_config, serve};
use tracing_subscriber::EnvFilter;

/// Exit status for a command line that cannot be used (sysexits.h EX_USAGE).
const EX_USAGE: u8 = 64;

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
    let mut activated = listenfd::ListenFd::from_env();
    // rustls needs exactly one process-wide crypto provider; install it before any TLS use.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        // Logs go to stderr so that stdout carries only the "listening" line scripts wait for.
        .with_writer(std::io::stderr)
        // No colour codes when logs go to a file or a log collector.
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let args = Args::parse();
    let tls_files = match (&args.cert, &args.key, &args.client_ca) {
        (Some(cert), Some(key), Some(ca)) => Some((cert.as_path(), key.as_path(), ca.as_path())),
        (None, None, None) => None,
        _ => {
            eprintln!(
                "navigation-adapter: --cert, --key and --client-ca go together: give all three for mTLS, or none for plaintext"
            );
            return ExitCode::from(EX_USAGE);
        }
    };

    let listener = match activated.take_tcp_listener(0) {
        Ok(None) => Listen::Bind(args.listen),
        Ok(Some(socket)) if activated.len() == 1 => Listen::Activated(socket),
        Ok(Some(_)) => {
            eprintln!("navigation-adapter: LISTEN_FDS={}: one socket only", activated.len());
            return ExitCode::from(EX_USAGE);
        }
        Err(e) => {
            eprintln!("navigation-adapter: the passed socket (fd 3): {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("navigation-adapter: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(listener, tls_files)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("navigation-adapter: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Where to serve: an address to bind, or a socket a service manager passed.
enum Listen {
    Bind(SocketAddr),
    Activated(std::net::TcpListener),
}

async fn run(listen: Listen, tls_files: Option<(&Path, &Path, &Path)>) -> anyhow::Result<()> {
    let tls = match tls_files {
        Some((cert, key, ca)) => Some(mtls_config(&read(cert)?, &read(key)?, &read(ca)?)),
        None => None,
    };
    let mode = if tls.is_some() { "mTLS" } else { "plaintext" };
    // Register signal handlers before announcing the address, so that a supervisor which stops
    // us right after reading the line still gets a graceful shutdown.
    let shutdown = shutdown_signal()?;
    let listener = match listen {
        Listen::Bind(addr) => tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?,
        Listen::Activated(socket) => {
            socket.set_nonblocking(true).context("the passed socket")?;
            tokio::net::TcpListener::from_std(socket).context("the passed socket")?
        }
    };
    let addr = listener.local_addr().context("cannot read the listening address")?;
    println!("navigation adapter listening on {addr} ({mode})");

    serve(listener, tls, NavigationService::new(), shutdown).await?;
    tracing::info!("navigation adapter stopped");
    Ok(())
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Completes on SIGINT or SIGTERM (Ctrl-C elsewhere); in-flight calls then finish before exit.
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    Ok(async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        tracing::info!(signal = name, "shutting down");
    })
}

/// Completes on Ctrl-C; in-flight calls then finish before exit.
#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    Ok(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("shutting down");
        } else {
            std::future::pending::<()>().await;
        }
    })
}
