//! The running agent: the gateway link plus the local gRPC server that uses it (the
//! forwarded partner services and `agent.v1.VehicleAgent`), on loopback TCP and, if
//! configured, a Unix socket.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info};

use proto::Vin;

use crate::api::AgentApi;
use crate::config::AgentConfig;
use crate::link::GatewayLink;
use crate::local::{self, SocketFile};

type Server = JoinHandle<Result<(), tonic::transport::Error>>;

/// The agent: an MQTT link to the gateway and a local gRPC server for in-car apps.
#[derive(Debug)]
pub struct Agent {
    link: GatewayLink,
    local_addr: SocketAddr,
    socket: Option<SocketFile>,
    stop_servers: watch::Sender<bool>,
    servers: Vec<Server>,
}

impl Agent {
    /// Binds the local gRPC listener (`config.local_listen`, port 0 ok), then as
    /// [`Agent::start_on`].
    pub async fn start(config: AgentConfig) -> anyhow::Result<Agent> {
        let listener = TcpListener::bind(config.local_listen)
            .await
            .with_context(|| format!("local_listen: cannot listen on {}", config.local_listen))?;
        Agent::start_on(config, listener).await
    }

    /// Serves in-car apps on `listener` (in place of `config.local_listen`) and on
    /// `config.local_socket` if set, loads the state directory and starts the link; returns
    /// without waiting for the gateway.
    pub async fn start_on(config: AgentConfig, listener: TcpListener) -> anyhow::Result<Agent> {
        let local_addr = listener.local_addr().context("local_listen: no local address")?;
        let link = GatewayLink::start(&config)?;
        let socket = match &config.local_socket {
            None => None,
            Some(path) => match bind_socket(path.clone()).await {
                Ok(bound) => Some(bound),
                Err(e) => {
                    link.shutdown().await;
                    return Err(e).with_context(|| format!("local_socket: cannot serve on {}", path.display()));
                }
            },
        };
        let stop_servers = watch::Sender::new(false);
        let stopped = || {
            let mut stop = stop_servers.subscribe();
            async move {
                let _ = stop.wait_for(|s| *s).await;
            }
        };
        let server = local::LocalServer {
            caller: Arc::new(link.clone()),
            services: config.services.clone(),
            api: Some(AgentApi::new(link.clone())),
            default_timeout: config.default_timeout,
        };
        let mut servers = vec![tokio::spawn(server.clone().serve_tcp(listener, stopped()))];
        let socket = socket.map(|(file, listener)| {
            servers.push(tokio::spawn(server.serve_unix(listener, stopped())));
            file
        });
        info!(
            vin = %link.vin(),
            %local_addr,
            local_socket = socket.as_ref().map(|s| s.path().display().to_string()),
            gateway = %config.gateway,
            "vehicle agent started"
        );
        Ok(Agent {
            link,
            local_addr,
            socket,
            stop_servers,
            servers,
        })
    }

    /// The VIN in the agent's certificate.
    pub fn vin(&self) -> &Vin {
        self.link.vin()
    }

    /// Where in-car apps reach the local gRPC server over TCP.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where in-car apps reach the local gRPC server on its Unix socket, if configured.
    pub fn local_socket(&self) -> Option<&Path> {
        self.socket.as_ref().map(SocketFile::path)
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

    /// Sends MQTT DISCONNECT, stops the local servers, waits for both and removes the
    /// socket file. Requests still waiting stay on disk and go out when the agent starts again.
    pub async fn shutdown(self) {
        // Stop taking calls first, then fail the ones in flight so the servers' graceful
        // shutdown does not wait for their deadlines.
        self.stop_servers.send_replace(true);
        self.link.shutdown().await;
        for server in self.servers {
            match server.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => error!(error = %e, "the local gRPC server failed"),
                Err(e) => error!(error = %e, "the local gRPC server task failed"),
            }
        }
        if let Some(socket) = self.socket {
            let _ = tokio::task::spawn_blocking(move || socket.remove()).await;
        }
        info!("vehicle agent stopped");
    }
}

/// [`SocketFile::bind`] off the async workers, handing the listener to tokio.
async fn bind_socket(path: PathBuf) -> anyhow::Result<(SocketFile, UnixListener)> {
    let (file, listener) = tokio::task::spawn_blocking(move || SocketFile::bind(&path)).await??;
    // Dropping the file on an error here would leave its socket behind: remove it first.
    match listener
        .set_nonblocking(true)
        .and_then(|()| UnixListener::from_std(listener))
    {
        Ok(listener) => Ok((file, listener)),
        Err(e) => {
            file.remove();
            Err(e.into())
        }
    }
}
