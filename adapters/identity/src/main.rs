//! `identity-adapter`: runs the reference social login partner: the `identity.v1.SocialLogin`
//! gRPC service for the gateway, and the verification page for drivers.
//!
//! ```text
//! identity-adapter --listen 127.0.0.1:50063 --web-listen 127.0.0.1:50081 \
//!     --cert identity.pem --key identity.key --client-ca gateway-clients-ca.pem
//! identity-adapter --public-url https://login.example.com   # what verification_uri says
//! ```
//!
//! Under a service manager that passes it listening sockets (systemd socket activation,
//! `LISTEN_FDS`), it serves gRPC on the first and the page on the second, if passed, instead of
//! binding `--listen` and `--web-listen`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use humantime_serde::re::humantime;
use identity_adapter::{DeviceLogins, GuessLimits, LoginSettings, SocialLoginService, SystemClock, serve, web};
use proto::adapter::cli::{Listen, Started, TlsFiles, TlsOptions, run_to_exit, shutdown_signal, start, usage_error};

/// Reference partner adapter for identity.v1.SocialLogin (RFC 8628 device login) and its
/// verification page.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address of the gRPC service the gateway calls; not bound when a service manager passes
    /// listening sockets (LISTEN_FDS: the first is this one).
    #[arg(long, default_value = "127.0.0.1:50063")]
    listen: SocketAddr,
    /// Address of the verification page (plain HTTP); the second passed socket replaces it.
    #[arg(long, default_value = "127.0.0.1:50081")]
    web_listen: SocketAddr,
    /// Base URL drivers reach the page at (verification_uri is this plus /device); default
    /// http://<the page's address>.
    #[arg(long)]
    public_url: Option<String>,
    /// The TLS files: all three for mTLS, none for plaintext.
    #[command(flatten)]
    tls: TlsOptions,
    /// First polling interval told to cars (RFC 8628 `interval`), whole seconds, 1s to 300s.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// How long codes live (RFC 8628 `expires_in`), 1 minute to 1 hour.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    code_lifetime: Duration,
    /// Logins held at once, all cars together (1 to 1,000,000).
    #[arg(long, default_value_t = 10_000)]
    max_logins: usize,
    /// Pending logins one car may have at once (1 to 100).
    #[arg(long, default_value_t = 3)]
    max_pending_per_car: usize,
    /// Wrong user codes one client address may submit per minute (1 to 1,000).
    #[arg(long, default_value_t = 5)]
    wrong_codes_per_client: usize,
    /// Wrong user codes all clients together may submit per minute (1 to 100,000).
    #[arg(long, default_value_t = 100)]
    wrong_codes_global: usize,
}

fn main() -> ExitCode {
    let Started { args, passed } = match start::<Args>("identity-adapter", 2, "gRPC, then the page") {
        Ok(started) => started,
        Err(exit) => return exit,
    };
    let usage = |message: String| usage_error("identity-adapter", message);
    let tls_files = match args.tls.files() {
        Ok(files) => files,
        Err(problem) => return usage(problem),
    };
    if let Err(problem) = check_bounds(&args) {
        return usage(problem);
    }
    let public_url = args
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", args.web_listen));
    let public_url = public_url.trim_end_matches('/').to_owned();
    if !(public_url.starts_with("http://") || public_url.starts_with("https://"))
        || public_url.contains(['?', '#', ' '])
    {
        return usage(format!(
            "--public-url {public_url:?} must be an http:// or https:// URL without query or fragment"
        ));
    }

    let mut passed = passed.into_iter();
    let grpc = passed.next().map_or(Listen::Bind(args.listen), Listen::Activated);
    let page = passed.next().map_or(Listen::Bind(args.web_listen), Listen::Activated);

    run_to_exit("identity-adapter", run(&args, public_url, grpc, page, tls_files))
}

fn check_bounds(args: &Args) -> Result<(), String> {
    let within = |name: &str, value: usize, max: usize| {
        if (1..=max).contains(&value) {
            Ok(())
        } else {
            Err(format!("--{name} {value} must be between 1 and {max}"))
        }
    };
    within("max-logins", args.max_logins, 1_000_000)?;
    within("max-pending-per-car", args.max_pending_per_car, 100)?;
    within("wrong-codes-per-client", args.wrong_codes_per_client, 1_000)?;
    within("wrong-codes-global", args.wrong_codes_global, 100_000)?;
    let interval = args.poll_interval;
    if interval.subsec_nanos() != 0 || !(1..=300).contains(&interval.as_secs()) {
        return Err(format!(
            "--poll-interval {} must be whole seconds between 1s and 300s",
            humantime::format_duration(interval)
        ));
    }
    if !(Duration::from_secs(60)..=Duration::from_secs(3600)).contains(&args.code_lifetime) {
        return Err(format!(
            "--code-lifetime {} must be between 1m and 1h",
            humantime::format_duration(args.code_lifetime)
        ));
    }
    Ok(())
}

async fn run(
    args: &Args,
    public_url: String,
    grpc: Listen,
    page: Listen,
    tls_files: Option<TlsFiles>,
) -> anyhow::Result<()> {
    let tls = match tls_files {
        Some(files) => Some(files.server_config().await?),
        None => None,
    };
    let mode = if tls.is_some() { "mTLS" } else { "plaintext" };
    let (stop, _) = tokio::sync::broadcast::channel::<()>(1);
    let signal = shutdown_signal().context("cannot handle SIGINT and SIGTERM")?;
    let grpc = grpc.listener().await?;
    let page = page.listener().await?;
    let mut settings = LoginSettings::new(format!("{public_url}/device"));
    settings.interval = args.poll_interval;
    settings.expires_in = args.code_lifetime;
    settings.max_logins = args.max_logins;
    settings.max_pending_per_car = args.max_pending_per_car;
    let limits = GuessLimits {
        per_client: args.wrong_codes_per_client,
        global: args.wrong_codes_global,
        ..GuessLimits::default()
    };
    let logins = DeviceLogins::new(settings, Arc::new(SystemClock));
    println!(
        "identity adapter listening on {} ({mode}); verification page on http://{} ({public_url}/device)",
        grpc.local_addr().context("the gRPC address")?,
        page.local_addr().context("the page's address")?,
    );
    let stopped = |stop: &tokio::sync::broadcast::Sender<()>| {
        let mut rx = stop.subscribe();
        async move {
            let _ = rx.recv().await;
        }
    };
    let grpc_server = serve(grpc, tls, SocialLoginService::new(logins.clone()), stopped(&stop));
    let page_server = web::serve_page(page, web::router(logins, limits), stopped(&stop));
    let signalled = async {
        let name = signal.await;
        tracing::info!(signal = name, "shutting down");
        let _ = stop.send(());
    };
    let (grpc, page, ()) = tokio::join!(grpc_server, page_server, signalled);
    grpc?;
    page?;
    tracing::info!("identity adapter stopped");
    Ok(())
}
