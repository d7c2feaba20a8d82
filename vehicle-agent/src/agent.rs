//! The running agent: the gateway link plus the local gRPC server that uses it (the
//! forwarded partner services and `agent.v1.VehicleAgent`).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{error, info};

use proto::Vin;

use crate::api::AgentApi;
use crate::config::AgentConfig;
use crate::link::GatewayLink;
use crate::local;

/// The agent: an MQTT link to the gateway and a loopback gRPC server for in-car apps.
#[derive(Debug)]
pub struct Agent {
    link: GatewayLink,
    local_addr: SocketAddr,
    stop_server: oneshot::Sender<()>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Agent {
    /// Binds the local gRPC listener (`config.local_listen`, port 0 ok), loads the state
    /// directory and starts the link; returns without waiting for the gateway.
    pub async fn start(config: AgentConfig) -> anyhow::Result<Agent> {
        let link = GatewayLink::start(&config)?;
        let listener = match TcpListener::bind(config.local_listen).await {
            Ok(listener) => listener,
            Err(e) => {
                link.shutdown().await;
                return Err(e).with_context(|| format!("local_listen: cannot listen on {}", config.local_listen));
            }
        };
        let local_addr = listener.local_addr().context("local_listen: no local address")?;
        let (stop_server, stopped) = oneshot::channel::<()>();
        let caller: Arc<dyn local::Caller> = Arc::new(link.clone());
        let api = AgentApi::new(link.clone());
        let server = tokio::spawn(local::serve_with_api(
            listener,
            caller,
            Some(api),
            config.default_timeout,
            async {
                let _ = stopped.await;
            },
        ));
        info!(vin = %link.vin(), %local_addr, gateway = %config.gateway, "vehicle agent started");
        Ok(Agent {
            link,
            local_addr,
            stop_server,
            server,
        })
    }

    /// The VIN in the agent's certificate.
    pub fn vin(&self) -> &Vin {
        self.link.vin()
    }

    /// Where in-car apps reach the local gRPC server.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The link to the gateway.
    pub fn link(&self) -> &GatewayLink {
        &self.link
    }

    /// Resolves once the link is subscribed on the gateway.
    pub async fn wait_connected(&self) {
        self.link.wait_connected().await;
    }

    /// Whether the link is subscribed on the gateway right now.
    pub fn is_connected(&self) -> bool {
        self.link.is_connected()
    }

    /// Sends MQTT DISCONNECT, stops the local server and waits for both to finish. Requests
    /// still waiting stay on disk and go out when the agent starts again.
    pub async fn shutdown(self) {
        // Stop taking calls first, then fail the ones in flight so the server's graceful
        // shutdown does not wait for their deadlines.
        let _ = self.stop_server.send(());
        self.link.shutdown().await;
        match self.server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!(error = %e, "the local gRPC server failed"),
            Err(e) => error!(error = %e, "the local gRPC server task failed"),
        }
        info!("vehicle agent stopped");
    }
}
