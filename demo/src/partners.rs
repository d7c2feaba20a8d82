//! The three reference partners, started in this process as each partner would run its own:
//! parking (its SQLite database in the demo's directory), navigation, and identity (its gRPC
//! service and the verification page drivers open on their phones). Each serves the gateway
//! over mutual TLS with its own certificate and trusts only the gateway-clients CA.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use identity_adapter::{DeviceLogins, GuessLimits, LoginSettings, SocialLoginService, SystemClock};
use navigation_adapter::NavigationService;
use parking_adapter::ParkingService;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::files::{DemoFiles, PartnerAddrs};

/// How often the demo's identity partner tells cars to poll: short, so `--once` stays quick
/// (partners say 5 s by default).
const SIGN_IN_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Where to listen, from the command line (port 0 for any free port).
pub struct Listen {
    /// Parking's gRPC.
    pub parking: SocketAddr,
    /// Navigation's gRPC.
    pub navigation: SocketAddr,
    /// Identity's gRPC.
    pub identity: SocketAddr,
    /// Identity's verification page (plain HTTP).
    pub identity_page: SocketAddr,
}

/// The partners, running; [`Partners::stop`] stops them.
pub struct Partners {
    /// The parking service (to count its charges).
    pub parking: ParkingService,
    /// Where the gateway reaches them.
    pub addrs: PartnerAddrs,
    /// The verification page's base URL, `http://<addr>`.
    pub page: String,
    stops: Vec<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<Result<()>>>,
    publisher: Option<JoinHandle<()>>,
}

impl Partners {
    /// Binds every listener first (so a busy port is reported before anything runs), then serves.
    pub async fn start(files: &DemoFiles, listen: &Listen) -> Result<Partners> {
        let parking_listener = bind(listen.parking, "the parking adapter").await?;
        let navigation_listener = bind(listen.navigation, "the navigation adapter").await?;
        let identity_listener = bind(listen.identity, "the identity adapter").await?;
        let page_listener = bind(listen.identity_page, "the verification page").await?;
        let addrs = PartnerAddrs {
            parking: parking_listener.local_addr()?,
            navigation: navigation_listener.local_addr()?,
            identity: identity_listener.local_addr()?,
        };
        let page = format!("http://{}", page_listener.local_addr()?);
        let trusted = files.gateway_clients_ca_pem().await?;
        let mut partners = Partners {
            // The adapter's state (sessions, charges, answers to retries) outlives the demo, as
            // it would a restart of a real adapter.
            parking: ParkingService::open(&files.dir.join("parking.db")).await?,
            addrs,
            page,
            stops: Vec::new(),
            tasks: Vec::new(),
            publisher: None,
        };

        let (cert, key) = files.parking.read().await?;
        let tls = parking_adapter::mtls_config(&cert, &key, &trusted);
        let parking = partners.parking.clone();
        partners.run(|stopped| parking_adapter::serve(parking_listener, Some(tls), parking, stopped));

        let (cert, key) = files.navigation.read().await?;
        let tls = navigation_adapter::mtls_config(&cert, &key, &trusted);
        let navigation = NavigationService::new();
        partners.run(|stopped| navigation_adapter::serve(navigation_listener, Some(tls), navigation, stopped));

        let mut settings = LoginSettings::new(format!("{}/device", partners.page));
        settings.interval = SIGN_IN_POLL_INTERVAL;
        let logins = DeviceLogins::new(settings, Arc::new(SystemClock));
        let (cert, key) = files.identity.read().await?;
        let tls = identity_adapter::mtls_config(&cert, &key, &trusted);
        let identity = SocialLoginService::new(logins.clone());
        partners.run(|stopped| identity_adapter::serve(identity_listener, Some(tls), identity, stopped));
        let router = identity_adapter::web::router(logins, GuessLimits::default());
        partners.run(|stopped| identity_adapter::web::serve_page(page_listener, router, stopped));
        Ok(partners)
    }

    /// Lets the parking partner push its events (a session the lot ended) to the gateway's
    /// partner API at `partner_api`, with its own certificate.
    pub async fn publish_parking_events(&mut self, files: &DemoFiles, partner_api: SocketAddr) -> Result<()> {
        let (cert, key) = files.parking.read().await?;
        let api = parking_adapter::PartnerApi::new(
            &format!("https://localhost:{}", partner_api.port()),
            &files.ca_cert_pem().await?,
            &cert,
            &key,
        )?;
        self.publisher = Some(self.parking.publish_events(api));
        Ok(())
    }

    /// Spawns one server, handing it a shutdown signal that [`Partners::stop`] fires.
    fn run<F>(&mut self, serve: impl FnOnce(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> F)
    where
        F: Future<Output = Result<()>> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        self.stops.push(stop);
        self.tasks.push(tokio::spawn(serve(Box::pin(async {
            let _ = stopped.await;
        }))));
    }

    /// Stops every server and waits for them; the first failure of any is returned.
    pub async fn stop(self) -> Result<()> {
        if let Some(publisher) = self.publisher {
            publisher.abort();
        }
        for stop in self.stops {
            let _ = stop.send(());
        }
        for task in self.tasks {
            task.await??;
        }
        self.parking.close().await;
        Ok(())
    }
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("{what} cannot listen on {addr}"))
}
