//! The fleet operator's way in: the demo asks its gateway's ops listener for a dashboard
//! sign-in link with the demo operator's certificate (`fleet.v1.FleetOps/CreateDashboardLink`
//! over mTLS, as `gateway fleet dashboard-link` would), and prints it with what a browser will
//! say about the development CA and the `gateway fleet` command line for the same operator.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use proto::fleet::v1::CreateDashboardLinkRequest;
use proto::fleet::v1::fleet_ops_client::FleetOpsClient;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::files::{DEMO_OPERATOR, DemoFiles};

/// How long the printed link may be used (once): the longest the gateway allows, since a
/// newcomer reads the whole output before opening it.
const LINK_VALID_SECONDS: u32 = 3600;

/// A one-time dashboard sign-in link from the ops listener at `ops`, asked for as [`DEMO_OPERATOR`].
pub async fn dashboard_link(files: &DemoFiles, ops: SocketAddr) -> Result<String> {
    let read = |path: &Path| {
        let path = path.to_owned();
        async move {
            tokio::fs::read(&path)
                .await
                .with_context(|| format!("cannot read {}", path.display()))
        }
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&files.ca_cert).await?))
        .identity(Identity::from_pem(
            read(&files.operator_cert).await?,
            read(&files.operator_key).await?,
        ))
        // The name on the development certificate; the address is dialled as it is.
        .domain_name("localhost");
    let channel = Endpoint::from_shared(format!("https://{ops}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("cannot reach the gateway's ops listener at {ops}"))?;
    let link = FleetOpsClient::new(channel)
        .create_dashboard_link(CreateDashboardLinkRequest {
            valid_seconds: LINK_VALID_SECONDS,
        })
        .await
        .context("the ops listener gave no dashboard link")?
        .into_inner();
    Ok(link.url)
}

/// What an operator needs: the sign-in `link`, the browser's certificate warning and how to
/// avoid it, and the CLI's command line with the demo operator's files.
pub fn print_how_to_operate(files: &DemoFiles, ops: SocketAddr, link: &str) {
    println!(
        "\nFleet dashboard (live sessions, revocation, partner health, timelines): open this sign-in link\n  \
         {link}\n  \
         It works once, within an hour, and signs that browser in as operator {DEMO_OPERATOR}.\n  \
         Your browser will warn that the connection is not private: the gateway's certificate is\n  \
         signed by the demo's development CA. Accept the warning for this address, or import\n  \
         {ca} as a trusted certificate authority to avoid it.\n\
         The fleet from a terminal, as the same operator (sessions, watch, timeline VIN, partners,\n\
         kick VIN, revoke VIN --reason WHY, dashboard-link for a new link):\n  \
         cargo run -q -p gateway -- fleet --ops https://{ops} --cert {cert} --key {key} --ca {ca} sessions\n",
        ca = files.ca_cert.display(),
        cert = files.operator_cert.display(),
        key = files.operator_key.display(),
    );
}
