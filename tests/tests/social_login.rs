//! Social login from the dashboard, end to end: an in-car app starts a device login through
//! the agent and the gateway, polls it by the rules (interval, slow_down), the driver opens the
//! QR code's link in a real browser (headless Chromium), sees the code filled in and approves,
//! and the app gets the linked account. Another car cannot poll it.

use std::time::Duration;

use gateway::store::VehicleRole;
use integration_tests::browser::{Chromium, click, fill, input_value, text_of};
use integration_tests::*;
use proto::social_login::v1::poll_device_login_response::Outcome;
use proto::social_login::v1::social_login_client::SocialLoginClient;
use proto::social_login::v1::{
    LoginPending, PollDeviceLoginRequest, PollDeviceLoginResponse, SocialProvider, StartDeviceLoginRequest,
};
use tonic::transport::Channel;
use tonic::{Code, Status};
use vehicle_agent::Agent;

/// The gateway with the parking and identity partners, and a car whose agent serves both.
struct SignInDesk {
    platform: Platform,
    identity: RunningIdentity,
    car: Agent,
    other_car: Agent,
}

impl SignInDesk {
    async fn open() -> SignInDesk {
        let (platform, [listener]) = Platform::start_beside([&identity_entry]).await;
        // 3 s between polls keeps the test short (cars are told 5 s by default) and leaves two
        // round trips through agent, gateway and partner 2.4 s to prove a poll "too soon", even
        // on a loaded machine.
        let identity = start_identity(&platform.pki, listener, Duration::from_secs(3)).await;
        let car = platform.agent_forwarding(VIN_A, &[SOCIAL_LOGIN]).await;
        let other_car = platform.agent_forwarding(VIN_B, &[SOCIAL_LOGIN]).await;
        SignInDesk {
            platform,
            identity,
            car,
            other_car,
        }
    }
}

/// Polls `login` from `app` by the rules until it ends, on a task of its own.
fn poll_until_it_ends(
    app: &SocialLoginClient<Channel>,
    mut poller: DevicePoller,
    device_code: &str,
) -> tokio::task::JoinHandle<Result<LoginEnd, Status>> {
    let app = app.clone();
    let device_code = device_code.to_owned();
    tokio::spawn(async move {
        poller
            .run(|| {
                let mut app = app.clone();
                let device_code = device_code.clone();
                async move { poll(&mut app, &device_code).await }
            })
            .await
    })
}

async fn poll(app: &mut SocialLoginClient<Channel>, device_code: &str) -> Result<PollDeviceLoginResponse, Status> {
    let request = PollDeviceLoginRequest {
        device_code: device_code.into(),
    };
    app.poll_device_login(request).await.map(tonic::Response::into_inner)
}

#[tokio::test]
async fn the_driver_approves_in_a_browser_and_the_app_gets_the_linked_account() {
    let desk = SignInDesk::open().await;
    let mut app = sign_in_app(&desk.car).await;
    let login = start_login_from_the_app(&mut app, SocialProvider::Wechat).await;
    assert_eq!(login.interval, 3);
    assert!((599..=600).contains(&login.expires_in), "{}", login.expires_in);
    assert_eq!(login.verification_uri, format!("{}/device", desk.identity.page));
    assert_eq!(
        login.verification_uri_complete,
        format!("{}?user_code={}", login.verification_uri, login.user_code)
    );
    assert!(identity_adapter::terminal_qr(&login.verification_uri_complete).is_ok());

    // The first poll comes at once (too eager, but first): pending. The second, at once too,
    // breaks the interval: slow down, 5 s more, for this and every later poll.
    let first = poll(&mut app, &login.device_code).await.unwrap();
    assert_eq!(first.outcome, Some(Outcome::Pending(LoginPending { interval: 3 })));
    let Some(Outcome::SlowDown(slow)) = poll(&mut app, &login.device_code).await.unwrap().outcome else {
        panic!("a poll within the interval is not slowed down");
    };
    assert_eq!(slow.interval, 8);

    // Another car holding the code learns nothing: the login is not its.
    let mut other_app = sign_in_app(&desk.other_car).await;
    let err = poll(&mut other_app, &login.device_code).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // The app polls by the rules while the driver scans the code.
    let mut poller = DevicePoller::new(&login);
    poller.slow_down(slow.interval);
    assert_eq!(poller.interval(), Duration::from_secs(8));
    let polling = poll_until_it_ends(&app, poller, &login.device_code);

    let chromium = Chromium::launch().await;
    let page = chromium.open(&login.verification_uri_complete).await;
    assert_eq!(input_value(&page, "#user_code").await, login.user_code);
    click(&page, "#continue").await;
    assert_eq!(
        text_of(&page, "#question").await,
        "Link your WeChat account to car LSV**********3294?"
    );
    fill(&page, "#display_name", "Li Wei").await;
    assert_eq!(input_value(&page, "#display_name").await, "Li Wei");
    click(&page, "#approve").await;
    assert_eq!(text_of(&page, "#outcome").await, "Linked");

    let end = within(Duration::from_secs(30), polling, "the app learns the outcome")
        .await
        .expect("the poller runs");
    let LoginEnd::Linked(identity) = end.expect("polling ends well") else {
        panic!("the login did not end linked");
    };
    assert_eq!(identity.provider, SocialProvider::Wechat as i32);
    assert_eq!(identity.display_name, "Li Wei");
    assert!(identity.subject_id.starts_with("wx-"), "{}", identity.subject_id);
    assert_eq!(identity.link_token.len(), 64);

    // Asked again (an answer lost on the way), the partner answers LINKED again.
    let again = poll(&mut app, &login.device_code).await.unwrap();
    assert_eq!(again.outcome, Some(Outcome::Linked(identity.clone())));

    // The partner reported the sign-in in a header; the gateway links the identity to a
    // customer (a new one: the car had none) who drives this car, off the request path but
    // before it stops: a gateway stopped and started again has the link.
    let (platform, ()) = desk.platform.restart_gateway(async {}).await;
    let store = platform.gateway.store();
    let customer = store
        .customer_by_social("wechat", &identity.subject_id)
        .await
        .unwrap()
        .expect("the sign-in is linked to a customer");
    assert!(
        customer
            .vehicles
            .iter()
            .any(|v| v.vin.as_str() == VIN_A && v.role == VehicleRole::Driver),
        "{customer:?}"
    );
    let cars_customer = store.customer_by_vin(&VIN_A.parse().unwrap()).await.unwrap();
    assert_eq!(cars_customer.map(|c| c.id), Some(customer.id));
}

#[tokio::test]
async fn the_driver_types_the_code_denies_and_the_app_is_told() {
    let desk = SignInDesk::open().await;
    let mut app = sign_in_app(&desk.car).await;
    let login = start_login_from_the_app(&mut app, SocialProvider::Alipay).await;
    let polling = poll_until_it_ends(&app, DevicePoller::new(&login), &login.device_code);

    // No QR code this time: the driver opens the page and types the code as they read it.
    let chromium = Chromium::launch().await;
    let page = chromium.open(&login.verification_uri).await;
    assert_eq!(input_value(&page, "#user_code").await, "");
    let as_typed = login.user_code.to_lowercase().replace('-', " ");
    fill(&page, "#user_code", &as_typed).await;
    click(&page, "#continue").await;
    assert_eq!(
        text_of(&page, "#question").await,
        "Link your Alipay account to car LSV**********3294?"
    );
    click(&page, "#deny").await;
    assert_eq!(text_of(&page, "#outcome").await, "Not linked");

    let end = within(Duration::from_secs(30), polling, "the app learns the outcome")
        .await
        .expect("the poller runs");
    assert_eq!(end.expect("polling ends well"), LoginEnd::Denied);
}

#[tokio::test]
async fn a_cars_own_certificate_cannot_call_the_identity_partner() {
    let desk = SignInDesk::open().await;
    let car = desk.platform.pki.vehicle(VIN_B);
    let start = || {
        let mut request = tonic::Request::new(StartDeviceLoginRequest {
            provider: SocialProvider::Wechat.into(),
        });
        // Claiming another car's VIN is the point of calling directly.
        request.metadata_mut().insert("x-vehicle-vin", VIN_A.parse().unwrap());
        request
    };
    // With TLS 1.3 the refusal of the client certificate may surface at the first call.
    let refused = match desk.platform.pki.grpc_channel(desk.identity.addr, &car).await {
        Err(_) => true,
        Ok(channel) => SocialLoginClient::new(channel)
            .start_device_login(start())
            .await
            .is_err(),
    };
    assert!(refused, "a car's certificate called the partner");
    assert_eq!(desk.identity.logins.held_count(), 0);
}
