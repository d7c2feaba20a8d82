//! The social login partner (the reference identity adapter and its verification page) for
//! the end-to-end tests, and an in-car app starting a device login. The car's side of polling
//! one is [`proto::device_login::DevicePoller`], re-exported here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gateway::config::PartnerConfig;
use identity_adapter::{DeviceLogins, GuessLimits, LoginSettings, SocialLoginService, SystemClock};
use proto::social_login::v1::social_login_client::SocialLoginClient;
use proto::social_login::v1::{SocialProvider, StartDeviceLoginRequest, StartDeviceLoginResponse};
use tokio::sync::oneshot;
use tonic::transport::Channel;
use vehicle_agent::Agent;

use crate::partner::{partner_entry, tokio_listener};
use crate::pki::TestPki;

/// The social login partner's gRPC service.
pub const SOCIAL_LOGIN: &str = "identity.v1.SocialLogin";

/// The reference identity adapter, running: its gRPC service over mTLS (trusting only the
/// gateway-clients CA) and its verification page; dropping it stops both.
pub struct RunningIdentity {
    /// Where the gateway calls it.
    pub addr: SocketAddr,
    /// `http://127.0.0.1:<port>`, the page's base URL.
    pub page: String,
    /// The logins both sides share.
    pub logins: DeviceLogins,
    _stop: (oneshot::Sender<()>, oneshot::Sender<()>),
}

/// Starts the identity adapter on `listener` (bound by the caller, so that the gateway's
/// partner entry can name it first), telling cars to poll every `interval`.
pub async fn start_identity(pki: &TestPki, listener: std::net::TcpListener, interval: Duration) -> RunningIdentity {
    let listener = tokio_listener(listener);
    let addr = listener.local_addr().expect("the adapter's address");
    let page_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the page");
    let page = format!("http://{}", page_listener.local_addr().expect("the page's address"));
    let mut settings = LoginSettings::new(format!("{page}/device"));
    settings.interval = interval;
    let logins = DeviceLogins::new(settings, Arc::new(SystemClock));
    let me = pki.partner("identity");
    let tls = identity_adapter::mtls_config(&me.pem.cert_pem, &me.pem.key_pem, pki.gateway_clients_ca_pem());
    let (stop_grpc, grpc_stopped) = oneshot::channel::<()>();
    let (stop_page, page_stopped) = oneshot::channel::<()>();
    tokio::spawn(identity_adapter::serve(
        listener,
        Some(tls),
        SocialLoginService::new(logins.clone()),
        async {
            let _ = grpc_stopped.await;
        },
    ));
    let router = identity_adapter::web::router(logins.clone(), GuessLimits::default());
    tokio::spawn(identity_adapter::web::serve_page(page_listener, router, async {
        let _ = page_stopped.await;
    }));
    RunningIdentity {
        addr,
        page,
        logins,
        _stop: (stop_grpc, stop_page),
    }
}

/// The gateway's entry for the identity partner at `addr`: polls skip the ledger.
pub fn identity_entry(pki: &TestPki, addr: SocketAddr) -> PartnerConfig {
    PartnerConfig {
        name: Some("identity".into()),
        // Polls are reads, and a LINKED answer holds a token the ledger must not keep.
        read_only_methods: vec!["PollDeviceLogin".into()],
        ..partner_entry(pki, SOCIAL_LOGIN, addr)
    }
}

pub use proto::device_login::{DevicePoller, LoginEnd};

/// A generated social login client on a car's local endpoint, as an in-car app would hold.
pub async fn sign_in_app(car: &Agent) -> SocialLoginClient<Channel> {
    SocialLoginClient::connect(format!("http://{}", car.local_addr()))
        .await
        .expect("connect to the agent")
}

/// A device login with `provider`, started from an in-car app.
pub async fn start_login_from_the_app(
    app: &mut SocialLoginClient<Channel>,
    provider: SocialProvider,
) -> StartDeviceLoginResponse {
    let start = StartDeviceLoginRequest {
        provider: provider.into(),
    };
    app.start_device_login(start)
        .await
        .expect("a device login starts")
        .into_inner()
}
