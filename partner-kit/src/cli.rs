//! The command line: `partner-kit check ...` parses and validates its arguments (exit 64 on a
//! bad one), runs the checks, prints the report and exits 0 only if no check failed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use certs::{DevPki, IssuingCa};

use crate::{ClientCertificate, Endpoint, KitConfig, MAX_DEADLINE_SLACK, PartnerApi, SigningCa, TrustAnchors};

/// Exit status for a command line that cannot be used (sysexits.h EX_USAGE).
pub const EX_USAGE: u8 = 64;
/// Exit status when a check failed.
pub const EX_FAILED: u8 = 1;

/// Checks a partner adapter against the Carlink partner contract (docs/partners.md).
#[derive(Debug, Parser)]
#[command(name = "partner-kit", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs every check against an adapter and prints one line per check: PASS, FAIL (why, and
    /// what the contract says) or SKIP (what to give for it to run). Exits 0 only if none failed.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// The adapter, as the gateway's [[partners]] endpoint names it: https://host:port.
    #[arg(long)]
    endpoint: String,
    /// The name the adapter's certificate must carry, if not the endpoint's host.
    #[arg(long)]
    server_name: Option<String>,
    /// A development PKI directory (`certs init --out DIR`): the default of --ca,
    /// --client-cert, --client-key, --vehicles-ca-* and --gateway-clients-ca-*.
    #[arg(long)]
    pki: Option<PathBuf>,
    /// PEM CA the adapter's certificate (and the partner API's) chains to: ca.pem.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// The gateway's client certificate, PEM (gateway-client.pem).
    #[arg(long)]
    client_cert: Option<PathBuf>,
    /// Its key (gateway-client.key).
    #[arg(long)]
    client_key: Option<PathBuf>,
    /// A car's certificate (`certs vehicle <VIN>`), which the adapter must refuse.
    #[arg(long, requires = "vehicle_key")]
    vehicle_cert: Option<PathBuf>,
    /// Its key.
    #[arg(long, requires = "vehicle_cert")]
    vehicle_key: Option<PathBuf>,
    /// Instead of --vehicle-cert: the vehicles CA (vehicles-ca.pem) to mint a car's
    /// certificate from, for a VIN no car has.
    #[arg(long, requires = "vehicles_ca_key", conflicts_with = "vehicle_cert")]
    vehicles_ca_cert: Option<PathBuf>,
    /// Its key (vehicles-ca.key).
    #[arg(long, requires = "vehicles_ca_cert")]
    vehicles_ca_key: Option<PathBuf>,
    /// The gateway-clients CA (gateway-clients-ca.pem), to mint certificates the adapter's
    /// TLS trusts but whose role is not the gateway's: its role check must refuse them.
    #[arg(long, requires = "gateway_clients_ca_key")]
    gateway_clients_ca_cert: Option<PathBuf>,
    /// Its key (gateway-clients-ca.key).
    #[arg(long, requires = "gateway_clients_ca_cert")]
    gateway_clients_ca_key: Option<PathBuf>,
    /// The service the adapter implements: package.Service.
    #[arg(long, default_value = "parking.v1.ParkingPayment")]
    service: String,
    /// For a service the kit has no profile for: a method the generic checks call (with an
    /// empty message), e.g. GetRoute.
    #[arg(long)]
    method: Option<String>,
    /// The gateway's partner API (partner_api.listen) as https://host:port, to check that the
    /// partner's certificate may publish events for its service and no other.
    #[arg(long, requires_all = ["partner_cert", "partner_key"])]
    partner_api: Option<String>,
    /// The partner's own certificate (`certs partner <name>`).
    #[arg(long, requires = "partner_api")]
    partner_cert: Option<PathBuf>,
    /// Its key.
    #[arg(long, requires = "partner_api")]
    partner_key: Option<PathBuf>,
    /// How long past a short deadline the kit still waits for the answer, in milliseconds
    /// (at most 30000).
    #[arg(long, default_value_t = 1000)]
    deadline_slack_ms: u64,
}

/// Runs the command line of the `partner-kit` binary.
pub fn main() -> ExitCode {
    // The process's one crypto provider, as in every binary; the kit's own TLS names ring too.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let Command::Check(args) = cli.command;
    let config = match config(args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("partner-kit: {e:#}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("partner-kit: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(crate::check(config));
    print!("{report}");
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EX_FAILED)
    }
}

fn config(args: CheckArgs) -> anyhow::Result<KitConfig> {
    if !proto::method::is_service_name(&args.service) {
        anyhow::bail!(
            "--service {:?} is not a gRPC service name (package.Service, e.g. parking.v1.ParkingPayment)",
            args.service
        );
    }
    if let Some(method) = &args.method
        && (method.is_empty() || !method.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    {
        anyhow::bail!("--method {method:?} is not a method name (e.g. GetRoute)");
    }
    let slack = Duration::from_millis(args.deadline_slack_ms);
    if slack > MAX_DEADLINE_SLACK {
        anyhow::bail!(
            "--deadline-slack-ms {} is more than {}: a deadline check that waits that long checks nothing",
            args.deadline_slack_ms,
            MAX_DEADLINE_SLACK.as_millis()
        );
    }
    let endpoint = Endpoint::parse(&args.endpoint, args.server_name.as_deref())?;
    let pki = args.pki.as_deref().map(DevPki::open);
    let from_pki = |given: Option<PathBuf>, flag: &str, in_pki: fn(&DevPki) -> PathBuf| match (given, &pki) {
        (Some(path), _) => Ok(path),
        (None, Some(pki)) => Ok(in_pki(pki)),
        (None, None) => Err(anyhow::anyhow!("give {flag}, or --pki DIR for a development PKI")),
    };
    let ca = from_pki(args.ca, "--ca", DevPki::ca_cert)?;
    let client_cert = from_pki(args.client_cert, "--client-cert", DevPki::gateway_client_cert)?;
    let client_key = from_pki(args.client_key, "--client-key", DevPki::gateway_client_key)?;
    let mut config = KitConfig::new(
        endpoint,
        &args.service,
        TrustAnchors::read(&ca).context("--ca")?,
        ClientCertificate::read(&client_cert, &client_key).context("--client-cert/--client-key")?,
    );
    config.deadline_slack = slack;
    config.method = args.method;
    let vehicles_ca = given_or_in_pki(
        args.vehicles_ca_cert,
        args.vehicles_ca_key,
        pki.as_ref(),
        IssuingCa::Vehicles,
    )
    .context("the vehicles CA")?;
    config.vehicle = match (&args.vehicle_cert, &args.vehicle_key, vehicles_ca) {
        (Some(cert), Some(key), _) => Some(ClientCertificate::read(cert, key).context("--vehicle-cert/--vehicle-key")?),
        (_, _, Some(ca)) => {
            Some(ClientCertificate::mint_vehicle(&ca).context("a car's certificate from the vehicles CA")?)
        }
        _ => None,
    };
    config.gateway_clients_ca = given_or_in_pki(
        args.gateway_clients_ca_cert,
        args.gateway_clients_ca_key,
        pki.as_ref(),
        IssuingCa::GatewayClients,
    )
    .context("the gateway-clients CA")?;
    if let (Some(api), Some(cert), Some(key)) = (&args.partner_api, &args.partner_cert, &args.partner_key) {
        config.partner_api = Some(PartnerApi {
            endpoint: Endpoint::parse(api, None).context("--partner-api")?,
            certificate: ClientCertificate::read(cert, key).context("--partner-cert/--partner-key")?,
        });
    }
    Ok(config)
}

/// The CA given as files, or `which` of the development PKI if its key is there.
fn given_or_in_pki(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    pki: Option<&DevPki>,
    which: IssuingCa,
) -> anyhow::Result<Option<SigningCa>> {
    match (cert, key, pki) {
        (Some(cert), Some(key), _) => SigningCa::read(&cert, &key).map(Some),
        (_, _, Some(pki)) if pki.issuing_ca_key(which).exists() => {
            SigningCa::read(&pki.issuing_ca_cert(which), &pki.issuing_ca_key(which)).map(Some)
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(args: &[&str]) -> String {
        let cli = Cli::try_parse_from([&["partner-kit", "check"], args].concat()).expect("parses");
        let Command::Check(args) = cli.command;
        format!("{:#}", config(args).expect_err("refused"))
    }

    #[test]
    fn a_bad_service_method_or_slack_is_refused_before_any_file_is_read() {
        let required = [
            "--endpoint",
            "https://localhost:1",
            "--ca",
            "/nonexistent",
            "--client-cert",
            "/c",
            "--client-key",
            "/k",
        ];
        let with = |extra: &[&'static str]| [&required[..], extra].concat();
        assert!(refused(&with(&["--service", "parking"])).contains("is not a gRPC service name"));
        assert!(refused(&with(&["--method", "Get/Route"])).contains("is not a method name"));
        assert!(refused(&with(&["--deadline-slack-ms", "30001"])).contains("more than 30000"));
        assert!(refused(&with(&["--deadline-slack-ms", "30000"])).contains("/nonexistent"));
    }
}
