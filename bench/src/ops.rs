//! The gateway's ops listener from the bench's side: the `[ops]` settings that turn it on,
//! trusting the fleet's operators CA, and a `fleet.v1.FleetOps` client presenting the fleet's
//! operator certificate.

use std::net::SocketAddr;

use anyhow::{Context as _, Result};
use proto::fleet::v1::fleet_ops_client::FleetOpsClient;
use tonic::transport::Channel;

use crate::brokers::ConfigOverride;
use crate::fleet::Fleet;

/// The settings of an ops listener on `listen` that admits the fleet's operators.
pub fn ops_settings(fleet: &Fleet, listen: SocketAddr) -> Vec<ConfigOverride> {
    vec![
        ConfigOverride {
            section: "ops".into(),
            key: "listen".into(),
            value: format!("{:?}", listen.to_string()),
        },
        ConfigOverride {
            section: "ops".into(),
            key: "client_ca".into(),
            value: format!("{:?}", fleet.operators_ca_file.display().to_string()),
        },
    ]
}

/// A `fleet.v1.FleetOps` client on `addr` as the fleet's operator, verifying the gateway's
/// certificate (issued for `localhost`) against the fleet's root; connected before it returns.
pub async fn operator_client(fleet: &Fleet, addr: SocketAddr) -> Result<FleetOpsClient<Channel>> {
    let channel = fleet
        .grpc_channel(&fleet.operator, addr)
        .await
        .with_context(|| format!("connect to the ops listener at {addr}"))?;
    Ok(FleetOpsClient::new(channel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_settings_are_toml_strings() {
        let dir = tempfile::tempdir().unwrap();
        let fleet = Fleet::create(dir.path(), 0, &["127.0.0.1".parse().unwrap()]).unwrap();
        let settings = ops_settings(&fleet, "127.0.0.1:4000".parse().unwrap());
        assert_eq!(settings[0].to_string(), "ops.listen = \"127.0.0.1:4000\"");
        assert!(settings[1].value.starts_with('"') && settings[1].value.ends_with("operators-ca.pem\""));
        assert!(fleet.operator.cert.is_file() && fleet.operators_ca_file.is_file());
    }
}
