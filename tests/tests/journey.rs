//! The driver's whole journey, over the real wire, through one car's agent and the gateway to
//! the three reference partners: find a car park near the destination (navigation), route
//! there, park and pay exactly once (parking), keep the receipt, and sign in with a social
//! account by the device flow, approved in a real browser (headless Chromium).

use std::time::Duration;

use integration_tests::browser::{Chromium, click, fill, input_value, text_of};
use integration_tests::*;
use proto::navigation::v1::navigation_client::NavigationClient;
use proto::navigation::v1::{Maneuver, PlaceCategory, RouteRequest, SearchPlacesRequest};
use proto::parking::v1::{EndSessionRequest, SessionState};
use proto::social_login::v1::poll_device_login_response::Outcome;
use proto::social_login::v1::{PollDeviceLoginRequest, SocialProvider};
use vehicle_agent::Agent;

/// The gateway in front of all three reference partners, and a car whose agent forwards the
/// three services.
struct Shanghai {
    platform: Platform,
    identity: RunningIdentity,
    car: Agent,
    _navigation: RunningPartner,
}

impl Shanghai {
    async fn open() -> Shanghai {
        let (platform, [navigation, identity]) = Platform::start_beside([&navigation_entry, &identity_entry]).await;
        let navigation = start_navigation(&platform.pki, navigation);
        let identity = start_identity(&platform.pki, identity, Duration::from_secs(1)).await;
        let car = platform.agent_forwarding(VIN_A, &[NAVIGATION, SOCIAL_LOGIN]).await;
        Shanghai {
            platform,
            identity,
            car,
            _navigation: navigation,
        }
    }

    fn dashboard(&self) -> String {
        format!("http://{}", self.car.local_addr())
    }
}

#[tokio::test]
async fn find_route_park_pay_once_keep_the_receipt_and_sign_in_approved_in_a_browser() {
    let city = Shanghai::open().await;
    let mut navigation = NavigationClient::connect(city.dashboard()).await.unwrap();
    let mut parking = in_car_app(&city.car).await;
    let mut sign_in = sign_in_app(&city.car).await;

    // A car park near the destination, and the way there.
    let search = SearchPlacesRequest {
        near: Some(DESTINATION),
        radius_m: 1_000,
        category: PlaceCategory::Parking.into(),
        ..Default::default()
    };
    let places = navigation.search_places(search).await.unwrap().into_inner().places;
    let lot = places.first().expect("a car park near the destination").clone();
    assert_eq!(lot.parking_lot_id, "lot-bund-01");
    let route = RouteRequest {
        origin: Some(CAR_POSITION),
        destination: lot.location,
    };
    let drive = navigation.route(route).await.unwrap().into_inner();
    assert!(drive.distance_m > 0 && drive.duration_s > 0, "{drive:?}");
    assert_eq!(drive.steps.last().map(|s| s.maneuver()), Some(Maneuver::Arrive));

    // Parked there, by the lot id navigation gave; paid with one intent, sent twice.
    let session = park_from_the_app_at(&mut parking, &lot.parking_lot_id).await;
    assert_eq!(session.state(), SessionState::Active);
    let pay = || {
        let mut request = tonic::Request::new(EndSessionRequest {
            session_id: session.session_id.clone(),
        });
        request
            .metadata_mut()
            .insert("idempotency-key", "pay-at-the-bund-1".parse().unwrap());
        request
    };
    let paid = parking.end_session(pay()).await.unwrap().into_inner();
    let again = parking.end_session(pay()).await.unwrap().into_inner();
    assert_eq!(again, paid, "a retry of the payment is answered as the payment");
    assert_eq!(
        city.platform.parking.charges_recorded().await.unwrap(),
        1,
        "charged exactly once"
    );
    let receipt = paid.receipt.expect("a receipt");
    let kept = receipt_from_the_app(&mut parking, &receipt.receipt_id).await;
    assert_eq!(kept, receipt);

    // Signing in: the dashboard shows the code and its QR link; the driver approves on a phone.
    let login = start_login_from_the_app(&mut sign_in, SocialProvider::Wechat).await;
    assert_eq!(login.verification_uri, format!("{}/device", city.identity.page));
    let polling = {
        let (app, device_code, mut poller) = (sign_in.clone(), login.device_code.clone(), DevicePoller::new(&login));
        tokio::spawn(async move {
            poller
                .run(|| {
                    let mut app = app.clone();
                    let request = PollDeviceLoginRequest {
                        device_code: device_code.clone(),
                    };
                    async move { app.poll_device_login(request).await.map(tonic::Response::into_inner) }
                })
                .await
        })
    };
    let chromium = Chromium::launch().await;
    let page = chromium.open(&login.verification_uri_complete).await;
    assert_eq!(input_value(&page, "#user_code").await, login.user_code);
    click(&page, "#continue").await;
    fill(&page, "#display_name", "Li Wei").await;
    click(&page, "#approve").await;
    assert_eq!(text_of(&page, "#outcome").await, "Linked");
    let end = within(Duration::from_secs(30), polling, "the car learns it is signed in")
        .await
        .expect("the poller runs")
        .expect("polling ends well");
    let LoginEnd::Linked(account) = end else {
        panic!("the sign-in ended {end:?}");
    };
    assert_eq!(account.display_name, "Li Wei");
    assert_eq!(account.provider, SocialProvider::Wechat as i32);
    let asked_again = sign_in
        .poll_device_login(PollDeviceLoginRequest {
            device_code: login.device_code.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(asked_again.outcome, Some(Outcome::Linked(account)));
}
