//! The adapter in this process on 127.0.0.1 port 0: its gRPC service in plaintext (the mTLS
//! path is the gateway's, tested end to end) and its verification page, on a manual clock.

#![allow(dead_code)]

use std::sync::Arc;

use identity_adapter::{DeviceLogins, GuessLimits, LoginSettings, ManualClock, SocialLoginService, serve, web};
use proto::adapter::testing::{OnLoopback, from_car, on_listener, on_loopback};
use proto::social_login::v1::poll_device_login_response::Outcome;
use proto::social_login::v1::social_login_client::SocialLoginClient;
use proto::social_login::v1::{
    PollDeviceLoginRequest, SocialProvider, StartDeviceLoginRequest, StartDeviceLoginResponse,
};
use tokio::net::TcpListener;
use tonic::transport::Channel;

pub const CAR: &str = "LSVAU2180N2183294";
pub const OTHER_CAR: &str = "WBA3B5C50DF123456";

/// A running adapter; dropping it stops both servers.
pub struct Adapter {
    pub grpc: SocialLoginClient<Channel>,
    /// `http://127.0.0.1:<port>`, where the page is.
    pub page: String,
    pub clock: ManualClock,
    _servers: [OnLoopback; 2],
}

pub async fn start(limits: GuessLimits) -> Adapter {
    let page_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page = format!("http://{}", page_listener.local_addr().unwrap());
    let clock = ManualClock::default();
    let logins = DeviceLogins::new(LoginSettings::new(format!("{page}/device")), Arc::new(clock.clone()));
    let grpc_server =
        on_loopback(|listener, stopped| serve(listener, None, SocialLoginService::new(logins.clone()), stopped)).await;
    // The page's address is in its settings, so its listener is bound before they are made.
    let page_server = on_listener(page_listener, |listener, stopped| {
        web::serve_page(listener, web::router(logins, limits), stopped)
    });
    let grpc = SocialLoginClient::connect(grpc_server.url()).await.unwrap();
    Adapter {
        grpc,
        page,
        clock,
        _servers: [grpc_server, page_server],
    }
}

impl Adapter {
    pub async fn start_login(&mut self, vin: &str) -> StartDeviceLoginResponse {
        let start = StartDeviceLoginRequest {
            provider: SocialProvider::Wechat.into(),
        };
        self.grpc
            .start_device_login(from_car(vin, start))
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn poll(&mut self, vin: &str, device_code: &str) -> Result<Outcome, tonic::Status> {
        let poll = PollDeviceLoginRequest {
            device_code: device_code.into(),
        };
        let answer = self.grpc.poll_device_login(from_car(vin, poll)).await?.into_inner();
        Ok(answer.outcome.expect("an outcome"))
    }
}
