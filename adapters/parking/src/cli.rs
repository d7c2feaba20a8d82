//! The `parking-adapter` command line: options, socket activation, and running the service,
//! its lot port and its event publisher. `main.rs` only calls [`main`]; so do the test
//! binaries that run the adapter as a process.
//!
//! ```text
//! parking-adapter --listen 127.0.0.1:50061 --database parking.db \
//!     --cert parking.pem --key parking.key --client-ca gateway-clients-ca.pem \
//!     [--lot-listen 127.0.0.1:50062 --lot-client-ca operators-ca.pem] \
//!     [--partner-api https://gateway:8443 --partner-api-ca ca.pem] [--max-stay-hours 72]
//! parking-adapter --listen 127.0.0.1:50061     # plaintext, for local development only
//! ```
//!
//! Under a service manager that passes it listening sockets (systemd socket activation,
//! `LISTEN_FDS`), it serves on them instead of binding: the first for `--listen`, the second,
//! if passed, for the lot port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;

use proto::adapter::cli::{
    Listen, Started, TlsFiles, TlsOptions, read_text, run_to_exit, shutdown_signal, start, usage_error,
};

use crate::{ParkingService, PartnerApi, serve, serve_lot};

/// Reference partner adapter for parking.v1.ParkingPayment.
#[derive(Debug, Parser)]
#[command(name = "parking-adapter", version)]
struct Args {
    /// Address to listen on; not bound when a service manager passes a listening socket
    /// (systemd socket activation: LISTEN_FDS, with LISTEN_PID unset or this process).
    #[arg(long, default_value = "127.0.0.1:50061")]
    listen: SocketAddr,
    /// SQLite database file with the sessions, charges, refunds, idempotency answers and
    /// events for cars (created if missing). Keep it across restarts.
    #[arg(long, default_value = "parking.db")]
    database: PathBuf,
    /// The TLS files: all three for mTLS, none for plaintext.
    #[command(flatten)]
    tls: TlsOptions,
    /// Serve parking.v1.ParkingLot (the exit gate ending sessions) on this address; off if
    /// unset. Bound unless a service manager passes a second socket.
    #[arg(long)]
    lot_listen: Option<SocketAddr>,
    /// PEM CA of the lot's systems (e.g. operators-ca.pem); required with --lot-listen over
    /// mTLS. Calls must also carry role operator.
    #[arg(long)]
    lot_client_ca: Option<PathBuf>,
    /// The gateway's partner API (https://host:port), where events for cars are published
    /// with --cert/--key. Without it, events wait in the database.
    #[arg(long)]
    partner_api: Option<String>,
    /// PEM CA that verifies the partner API's server certificate (the root ca.pem).
    #[arg(long)]
    partner_api_ca: Option<PathBuf>,
    /// The lot's maximum stay, in hours: older sessions are ended and charged by the lot, and
    /// their cars told (checked every minute). Off if unset.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=24 * 366))]
    max_stay_hours: Option<u32>,
}

/// Runs the adapter with the process's arguments; the exit code says how it ended.
pub fn main() -> ExitCode {
    // fd 3 serves --listen, fd 4 (if passed) the lot port; what was not passed is bound.
    let Started { args, passed } = match start::<Args>("parking-adapter", 2, "the service, then the lot port") {
        Ok(started) => started,
        Err(exit) => return exit,
    };
    let usage = |problem: &str| usage_error("parking-adapter", problem);
    let settings = match Settings::check(&args) {
        Ok(settings) => settings,
        Err(problem) => return usage(&problem),
    };
    let mut sockets = passed.into_iter().map(Listen::Activated);
    let listen = sockets.next().unwrap_or(Listen::Bind(args.listen));
    let lot_listen = sockets.next().or(args.lot_listen.map(Listen::Bind));
    let lot_problem = match (&lot_listen, &args.lot_client_ca) {
        (Some(_), None) if settings.tls.is_some() => {
            Some("the lot port over mTLS needs --lot-client-ca, the CA of the lot's systems")
        }
        (None, Some(_)) => Some("--lot-client-ca without --lot-listen (or a second passed socket)"),
        _ => None,
    };
    if let Some(problem) = lot_problem {
        return usage(problem);
    }
    run_to_exit("parking-adapter", run(&args, settings, listen, lot_listen))
}

/// The files the options name, checked for combinations that cannot work.
struct Settings<'a> {
    /// Certificate, key and gateway-clients CA, for mTLS; `None` for plaintext.
    tls: Option<TlsFiles>,
    /// Partner API address and the CA verifying it.
    partner_api: Option<(&'a str, &'a Path)>,
}

impl<'a> Settings<'a> {
    fn check(args: &'a Args) -> Result<Settings<'a>, String> {
        let tls = args.tls.files()?;
        let partner_api = match (&args.partner_api, &args.partner_api_ca) {
            (Some(_), Some(_)) if tls.is_none() => {
                return Err("--partner-api needs --cert and --key: the adapter authenticates with them".into());
            }
            (Some(url), Some(ca)) => Some((url.as_str(), ca.as_path())),
            (None, None) => None,
            _ => return Err("--partner-api and --partner-api-ca go together".into()),
        };
        Ok(Settings { tls, partner_api })
    }
}

async fn run(args: &Args, settings: Settings<'_>, listen: Listen, lot_listen: Option<Listen>) -> anyhow::Result<()> {
    let tls = match &settings.tls {
        Some(files) => Some(files.server_config().await?),
        None => None,
    };
    let lot_tls = match (&settings.tls, &args.lot_client_ca) {
        (Some(files), Some(ca)) => Some(files.server_config_for(ca).await?),
        _ => None,
    };
    let mode = if tls.is_some() { "mTLS" } else { "plaintext" };
    // Register signal handlers before announcing the address, so that a supervisor which stops
    // us right after reading the line still gets a graceful shutdown.
    let signal = shutdown_signal().context("cannot handle SIGINT and SIGTERM")?;

    let service = ParkingService::open(&args.database).await?;
    tracing::info!(database = %args.database.display(), "database open");
    let publisher = match settings.partner_api {
        Some((url, ca)) => {
            let files = settings.tls.as_ref().context("--partner-api needs --cert and --key")?;
            let api = PartnerApi::new(
                url,
                &read_text(ca).await?,
                &read_text(&files.cert).await?,
                &read_text(&files.key).await?,
            )?;
            tracing::info!(partner_api = url, "publishing events for cars");
            Some(AbortOnDrop(service.publish_events(api)))
        }
        None => {
            let waiting = service.events_waiting().await.unwrap_or(0);
            tracing::warn!(
                waiting,
                "no --partner-api: events for cars (the exit gate ending a session) wait in the database"
            );
            None
        }
    };

    let max_stay = args.max_stay_hours.map(|hours| {
        tracing::info!(hours, "ending sessions at the maximum stay");
        AbortOnDrop(service.end_overstays_periodically(Duration::from_secs(u64::from(hours) * 60 * 60)))
    });

    let listener = listen.listener().await?;
    let addr = listener.local_addr().context("cannot read the listening address")?;
    println!("parking adapter listening on {addr} ({mode})");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    };
    let lot = match lot_listen {
        Some(lot_listen) => {
            let listener = lot_listen.listener().await?;
            let lot_addr = listener.local_addr().context("cannot read the lot port's address")?;
            println!("parking lot listening on {lot_addr} ({mode})");
            let lot = serve_lot(listener, lot_tls, service.clone(), until_stopped());
            Some(tokio::spawn(lot))
        }
        None => None,
    };
    tokio::spawn(async move {
        let name = signal.await;
        tracing::info!(signal = name, "shutting down");
        let _ = stop.send(true);
    });
    serve(listener, tls, service.clone(), until_stopped()).await?;
    if let Some(lot) = lot {
        lot.await.context("the lot port's task")??;
    }
    // The background tasks stop before the database closes under them.
    drop((publisher, max_stay));
    service.close().await;
    tracing::info!("parking adapter stopped");
    Ok(())
}

/// Aborts the task when dropped: the publisher stops with the server.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
