//! `gateway fleet ...`: the operators' command line, a client of `fleet.v1.FleetOps` on a
//! gateway's ops listener, presenting an operator certificate.
//!
//! It uses only `proto` and crates, never the rest of the gateway (tests/tests/tidy.rs holds it
//! to that): it is a client of the contract, so it must work against any gateway serving it, and
//! must not learn anything a remote gateway would not tell it. `args.rs` is the command line,
//! `output.rs` the tables and JSON it prints, `tls.rs` tells a refused certificate from an
//! unreachable listener.

mod args;
mod output;
mod tls;

use std::error::Error as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use proto::fleet::v1 as fleet;
use proto::fleet::v1::fleet_ops_client::FleetOpsClient;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub use args::FleetArgs;
use args::{ConnectionArgs, CustomerBy, CustomerCommand, FleetCommand, TimelineArgs};
use output::Printer;

/// Exit code for a command line that cannot run: missing or unreadable files, a bad URL
/// (sysexits' EX_USAGE, as the gateway's own bad configuration).
const EXIT_USAGE: u8 = 64;
/// How long connecting to the ops listener may take before the URL counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a fleet command failed; each says what to fix.
#[derive(Debug)]
enum Failure {
    /// The command line or a file it names cannot be used (exit 64).
    Usage(String),
    /// The ops listener could not be reached or refused the connection (exit 1).
    Unreachable { url: String, detail: String },
    /// The gateway answered with an error (exit 1).
    Rpc(tonic::Status),
    /// The ops listener refused our certificate at the TLS handshake (exit 1).
    CertificateRefused(rustls::AlertDescription),
    /// Anything else that stops the command (exit 1).
    Other(String),
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        Failure::Rpc(status)
    }
}

/// Runs a `gateway fleet` command; the process's exit status.
pub fn main(args: FleetArgs) -> ExitCode {
    // One thread is plenty for one client, and leaves the cores to the gateways.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("{}", describe(&failure));
            match failure {
                Failure::Usage(_) => ExitCode::from(EXIT_USAGE),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// The line printed for `failure`: `error: <CODE>: <message>` for the gateway's answers.
fn describe(failure: &Failure) -> String {
    match failure {
        Failure::Usage(why) | Failure::Other(why) => format!("error: {why}"),
        Failure::Unreachable { url, detail } => {
            format!("error: UNAVAILABLE: the ops URL {url} could not be reached: {detail}")
        }
        Failure::CertificateRefused(alert) => format!(
            "error: PERMISSION_DENIED: the ops listener refused this client certificate at the TLS \
             handshake ({alert:?}): an operator certificate (OU=operator) from the operators CA is required"
        ),
        Failure::Rpc(status) => {
            let message = match status.message() {
                "" => "(no message)",
                m => m,
            };
            format!(
                "error: {}: {}",
                proto::status::code_name(status.code() as i32),
                crate::logsafe::printable_whole(message)
            )
        }
    }
}

async fn run(args: FleetArgs) -> Result<(), Failure> {
    let settings = Settings::from_args(&args.connection)?;
    let out = Printer::new(args.json);
    let result = match connect(&settings).await {
        Ok(channel) => command(&mut FleetOpsClient::new(channel), &out, args.command).await,
        Err(e) => Err(e),
    };
    let transport_failed = match &result {
        Err(Failure::Unreachable { .. }) => true,
        // A status tonic made of a transport error (it has a source) is not the gateway's answer.
        Err(Failure::Rpc(status)) => status.source().is_some(),
        _ => false,
    };
    if !transport_failed {
        return result;
    }
    if let Some(alert) = tls::refused_certificate(&settings.target()).await {
        return Err(Failure::CertificateRefused(alert));
    }
    match result {
        Err(Failure::Rpc(status)) => Err(Failure::Unreachable {
            url: settings.url,
            detail: format!(
                "{}: {}",
                status.message(),
                status.source().map(error_chain).unwrap_or_default()
            ),
        }),
        other => other,
    }
}

async fn command(client: &mut FleetOpsClient<Channel>, out: &Printer, command: FleetCommand) -> Result<(), Failure> {
    match command {
        FleetCommand::Sessions { prefix, closed } => {
            let request = fleet::ListSessionsRequest {
                vin_prefix: prefix.unwrap_or_default(),
                closed_limit: closed,
                live_limit: 0,
            };
            let response = client.list_sessions(request).await?.into_inner();
            out.sessions(&response)
        }
        FleetCommand::Watch { prefix } => {
            let request = fleet::WatchSessionsRequest {
                vin_prefix: prefix.unwrap_or_default(),
            };
            let mut changes = client.watch_sessions(request).await?.into_inner();
            // On stderr, so that stdout holds the changes only; tells a script the watch is on.
            eprintln!("watching sessions (Ctrl-C to stop)");
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                    next = changes.message() => match next? {
                        Some(change) => out.session_change(&change)?,
                        None => return Err(Failure::Other("the gateway ended the session stream (shutting down?)".into())),
                    },
                }
            }
        }
        FleetCommand::Timeline { vin, range } => {
            timeline(out, range, |page_token, range| {
                let request = fleet::VehicleTimelineRequest {
                    vin: vin.to_string(),
                    from_ms: range.from.unwrap_or(0),
                    to_ms: range.to.unwrap_or(0),
                    page_size: range.page_size.unwrap_or(0),
                    page_token,
                };
                let mut client = client.clone();
                async move { client.vehicle_timeline(request).await.map(|r| r.into_inner()) }
            })
            .await
        }
        FleetCommand::CustomerTimeline { id, range } => {
            timeline(out, range, |page_token, range| {
                let request = fleet::CustomerTimelineRequest {
                    customer_id: id.clone(),
                    from_ms: range.from.unwrap_or(0),
                    to_ms: range.to.unwrap_or(0),
                    page_size: range.page_size.unwrap_or(0),
                    page_token,
                };
                let mut client = client.clone();
                async move { client.customer_timeline(request).await.map(|r| r.into_inner()) }
            })
            .await
        }
        FleetCommand::Partners => {
            let response = client
                .partner_health(fleet::PartnerHealthRequest {})
                .await?
                .into_inner();
            out.partners(&response)
        }
        FleetCommand::Kick { vin } => {
            let request = fleet::KickVehicleRequest { vin: vin.to_string() };
            let response = client.kick_vehicle(request).await?.into_inner();
            out.kicked(vin.as_str(), &response)
        }
        FleetCommand::Revoke { vin, reason } => {
            let request = fleet::RevokeVehicleRequest {
                vin: vin.to_string(),
                reason,
            };
            let response = client.revoke_vehicle(request).await?.into_inner();
            out.revoked(vin.as_str(), &response)
        }
        FleetCommand::Revocations => {
            let response = client
                .list_revocations(fleet::ListRevocationsRequest {})
                .await?
                .into_inner();
            out.revocations(&response)
        }
        FleetCommand::Customer(command) => customer(client, out, command).await,
        FleetCommand::DashboardLink { valid } => {
            let request = fleet::CreateDashboardLinkRequest {
                valid_seconds: valid.unwrap_or(0),
            };
            let response = client.create_dashboard_link(request).await?.into_inner();
            out.dashboard_link(&response)
        }
    }
}

async fn customer(
    client: &mut FleetOpsClient<Channel>,
    out: &Printer,
    command: CustomerCommand,
) -> Result<(), Failure> {
    let (method, customer) = match command {
        CustomerCommand::Create { name } => {
            let request = fleet::CreateCustomerRequest { display_name: name };
            ("CreateCustomer", client.create_customer(request).await?)
        }
        CustomerCommand::Show { by } => {
            let by = match by {
                CustomerBy { id: Some(id), .. } => fleet::get_customer_request::By::CustomerId(id),
                CustomerBy { vin: Some(vin), .. } => fleet::get_customer_request::By::Vin(vin.to_string()),
                CustomerBy { social: Some(s), .. } => fleet::get_customer_request::By::SocialIdentity(s.into()),
                // clap's group requires exactly one of them.
                _ => return Err(Failure::Usage("one of --id, --vin or --social is required".into())),
            };
            let request = fleet::GetCustomerRequest { by: Some(by) };
            ("GetCustomer", client.get_customer(request).await?)
        }
        CustomerCommand::Link { id, vin, role } => {
            let request = fleet::LinkVehicleRequest {
                customer_id: id,
                vin: vin.to_string(),
                role: fleet::VehicleRole::from(role).into(),
            };
            ("LinkVehicle", client.link_vehicle(request).await?)
        }
        CustomerCommand::Unlink { id, vin } => {
            let request = fleet::UnlinkVehicleRequest {
                customer_id: id,
                vin: vin.to_string(),
            };
            ("UnlinkVehicle", client.unlink_vehicle(request).await?)
        }
        CustomerCommand::LinkSocial { id, identity } => {
            let request = fleet::LinkSocialIdentityRequest {
                customer_id: id,
                identity: Some(identity.into()),
            };
            ("LinkSocialIdentity", client.link_social_identity(request).await?)
        }
        CustomerCommand::UnlinkSocial { id, identity } => {
            let request = fleet::UnlinkSocialIdentityRequest {
                customer_id: id,
                identity: Some(identity.into()),
            };
            ("UnlinkSocialIdentity", client.unlink_social_identity(request).await?)
        }
    };
    out.customer(method, &customer.into_inner())
}

/// Prints the first page of a timeline, or with `--all` every page in turn, holding one page at
/// a time whatever the range.
async fn timeline<F, Fut>(out: &Printer, range: TimelineArgs, mut page: F) -> Result<(), Failure>
where
    F: FnMut(String, &TimelineArgs) -> Fut,
    Fut: std::future::Future<Output = Result<fleet::TimelinePage, tonic::Status>>,
{
    let mut token = range.page_token.clone().unwrap_or_default();
    let mut first = true;
    loop {
        let next = page(std::mem::take(&mut token), &range).await?;
        out.timeline_page(&next, first)?;
        first = false;
        if next.next_page_token.is_empty() {
            return Ok(());
        }
        if !range.all {
            // On stderr, so that `--json` output stays one page.
            eprintln!(
                "more entries: add --all for every page, or --page-token {} for the next",
                next.next_page_token
            );
            return Ok(());
        }
        token = next.next_page_token;
    }
}

/// The connection settings, checked and with the files read.
struct Settings {
    url: String,
    uri: http::Uri,
    server_name: String,
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Vec<u8>,
}

impl Settings {
    /// Checks the options and reads the files they name: a usage error if any is missing.
    fn from_args(args: &ConnectionArgs) -> Result<Settings, Failure> {
        let required = |value: &Option<std::path::PathBuf>, flag: &str, env: &str| {
            value
                .clone()
                .ok_or_else(|| Failure::Usage(format!("{flag} (or {env}) is required")))
        };
        let url = args.url.clone().ok_or_else(|| {
            Failure::Usage("--ops (or CARLINK_OPS_URL) is required: the ops listener's https:// URL".into())
        })?;
        let cert = required(&args.cert, "--cert", "CARLINK_OPS_CERT")?;
        let key = required(&args.key, "--key", "CARLINK_OPS_KEY")?;
        let ca = required(&args.ca, "--ca", "CARLINK_OPS_CA")?;
        let uri: http::Uri = url
            .parse()
            .map_err(|e| Failure::Usage(format!("--ops {url:?}: not a URL: {e}")))?;
        if uri.scheme_str() != Some("https") || uri.port().is_none() {
            return Err(Failure::Usage(format!(
                "--ops {url:?}: must be an https:// URL with a host and port, e.g. https://127.0.0.1:9443"
            )));
        }
        Ok(Settings {
            cert: read_pem(&cert, "--cert", PemKind::Certificates)?,
            key: read_pem(&key, "--key", PemKind::PrivateKey)?,
            ca: read_pem(&ca, "--ca", PemKind::Certificates)?,
            url,
            uri,
            server_name: args.server_name.clone(),
        })
    }

    fn target(&self) -> tls::Target<'_> {
        tls::Target {
            authority: self.uri.authority().map_or("", |a| a.as_str()),
            server_name: &self.server_name,
            cert: &self.cert,
            key: &self.key,
            ca: &self.ca,
        }
    }
}

/// Connects to the ops listener over mutual TLS.
async fn connect(settings: &Settings) -> Result<Channel, Failure> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&settings.ca))
        .identity(Identity::from_pem(&settings.cert, &settings.key))
        .domain_name(settings.server_name.clone());
    let endpoint = Endpoint::from(settings.uri.clone())
        .connect_timeout(CONNECT_TIMEOUT)
        .tls_config(tls)
        .map_err(|e| Failure::Usage(format!("TLS settings: {}", error_chain(&e))))?;
    endpoint.connect().await.map_err(|e| Failure::Unreachable {
        url: settings.url.clone(),
        detail: error_chain(&e),
    })
}

/// What a PEM file given on the command line must hold.
#[derive(Clone, Copy)]
enum PemKind {
    Certificates,
    PrivateKey,
}

/// Reads a PEM file and checks it holds what it should, so that a wrong file is named here
/// rather than failing the TLS handshake obscurely.
fn read_pem(path: &Path, flag: &str, kind: PemKind) -> Result<Vec<u8>, Failure> {
    let bytes = std::fs::read(path).map_err(|e| Failure::Usage(format!("{flag} {}: {e}", path.display())))?;
    let fits = match kind {
        PemKind::Certificates => CertificateDer::pem_slice_iter(&bytes).next().is_some_and(|c| c.is_ok()),
        PemKind::PrivateKey => PrivateKeyDer::from_pem_slice(&bytes).is_ok(),
    };
    if !fits {
        let what = match kind {
            PemKind::Certificates => "a PEM certificate",
            PemKind::PrivateKey => "a PEM private key",
        };
        return Err(Failure::Usage(format!(
            "{flag} {}: does not hold {what}",
            path.display()
        )));
    }
    Ok(bytes)
}

/// An error and its sources, `: `-separated, each said once (wrappers often repeat their cause).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(e) = next {
        let text = e.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_error_reads_as_its_code_and_message() {
        let line = describe(&Failure::Rpc(tonic::Status::not_found("no customer c-42")));
        assert_eq!(line, "error: NOT_FOUND: no customer c-42");
    }

    #[test]
    fn a_missing_file_is_named_and_is_a_usage_error() {
        let err = read_pem(Path::new("/nonexistent/operator.pem"), "--cert", PemKind::Certificates).unwrap_err();
        let Failure::Usage(why) = err else { panic!("{err:?}") };
        assert!(why.starts_with("--cert /nonexistent/operator.pem: "), "{why}");
    }

    #[test]
    fn a_file_without_a_key_is_refused_before_connecting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-a-key.pem");
        std::fs::write(&path, "hello").unwrap();
        let err = read_pem(&path, "--key", PemKind::PrivateKey).unwrap_err();
        assert!(
            matches!(&err, Failure::Usage(w) if w.ends_with("does not hold a PEM private key")),
            "{err:?}"
        );
    }
}
