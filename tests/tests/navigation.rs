//! "Parking near my destination", end to end: an in-car app asks the navigation partner for
//! car parks near where the driver is going, routes from the car to the one it picks, and pays
//! for parking there with the parking partner, all through the car's agent and the gateway,
//! over the real wire (mTLS everywhere). The two partners know nothing of each other: the lot
//! id the navigation partner returns is what the parking partner takes.

use proto::navigation::v1::navigation_client::NavigationClient;
use proto::navigation::v1::{GeoPoint, Maneuver, Place, PlaceCategory, RouteRequest, SearchPlacesRequest};
use proto::parking::v1::{ListNearbyLotsRequest, SessionState};
use tonic::Code;
use tonic::transport::Channel;

use integration_tests::*;
use vehicle_agent::Agent;

/// The gateway in front of the parking and the navigation partners, and a car whose agent
/// forwards both services.
struct Town {
    platform: Platform,
    car: Agent,
    _navigation: RunningPartner,
}

impl Town {
    async fn open() -> Town {
        let (platform, [listener]) = Platform::start_beside([&navigation_entry]).await;
        let navigation = start_navigation(&platform.pki, listener);
        let car = platform.agent_forwarding(VIN_A, &[NAVIGATION]).await;
        Town {
            platform,
            car,
            _navigation: navigation,
        }
    }

    /// A navigation app on the car's local endpoint.
    async fn navigation_app(&self) -> NavigationClient<Channel> {
        NavigationClient::connect(format!("http://{}", self.car.local_addr()))
            .await
            .expect("connect to the agent")
    }

    /// Car parks within `radius_m` of `near`, nearest first, as the navigation app sees them.
    async fn car_parks_near(&self, near: GeoPoint, radius_m: u32) -> Vec<Place> {
        let search = SearchPlacesRequest {
            near: Some(near),
            radius_m,
            category: PlaceCategory::Parking.into(),
            ..Default::default()
        };
        let mut app = self.navigation_app().await;
        app.search_places(search)
            .await
            .expect("the search is answered")
            .into_inner()
            .places
    }
}

#[tokio::test]
async fn parking_near_my_destination_from_search_to_receipt() {
    let town = Town::open().await;

    // 1. Car parks near the destination, from the navigation partner.
    let places = town.car_parks_near(DESTINATION, 1_000).await;
    let lot = places.first().expect("a car park near Nanjing East Road").clone();
    assert_eq!(lot.parking_lot_id, "lot-bund-01");
    assert_eq!(lot.name, "The Bund Riverside Garage");
    assert!(lot.distance_m <= 1_000, "{}", lot.distance_m);

    // 2. A route there from where the car is.
    let mut navigation = town.navigation_app().await;
    let drive = navigation
        .route(RouteRequest {
            origin: Some(CAR_POSITION),
            destination: lot.location,
        })
        .await
        .expect("a route")
        .into_inner();
    assert!(
        drive.distance_m > 4_000,
        "Jing'an to the Bund is over 4 km: {}",
        drive.distance_m
    );
    assert!(drive.duration_s > 0);
    assert_eq!(drive.steps.first().map(|s| s.maneuver()), Some(Maneuver::Depart));
    assert_eq!(drive.steps.last().map(|s| s.maneuver()), Some(Maneuver::Arrive));
    assert_eq!(drive.steps.iter().map(|s| s.distance_m).sum::<u32>(), drive.distance_m);
    assert!(
        drive.steps.iter().any(|s| s.instruction.starts_with("Turn ")),
        "{:?}",
        drive.steps
    );

    // 3. Parking there, with the lot id the navigation partner gave, paid from the dashboard.
    let mut parking = in_car_app(&town.car).await;
    let session = park_from_the_app_at(&mut parking, &lot.parking_lot_id).await;
    assert_eq!(session.lot_id, lot.parking_lot_id);
    assert_eq!(session.state(), SessionState::Active);

    let paid = pay_from_the_app(&mut parking, &session.session_id).await;
    let receipt = paid.receipt.expect("a receipt");
    assert_eq!(paid.session.expect("the session").state(), SessionState::Ended);
    assert_eq!(receipt.lot_name, lot.name);
    assert_eq!(town.platform.parking.charges(), 1);

    let kept = receipt_from_the_app(&mut parking, &receipt.receipt_id).await;
    assert_eq!(kept, receipt);
}

#[tokio::test]
async fn every_car_park_the_navigation_partner_knows_is_one_the_parking_partner_sells() {
    let town = Town::open().await;
    let peoples_square = GeoPoint {
        latitude: 31.2317,
        longitude: 121.4726,
    };
    let places = town.car_parks_near(peoples_square, 20_000).await;
    assert_eq!(places.len(), 6, "{places:?}");

    // Asked around each car park's entrance, so that lots the parking partner adds elsewhere
    // change nothing here.
    let mut parking = in_car_app(&town.car).await;
    for place in &places {
        let there = place.location.expect("a location");
        let lots = parking
            .list_nearby_lots(ListNearbyLotsRequest {
                near: Some(proto::parking::v1::GeoPoint {
                    latitude: there.latitude,
                    longitude: there.longitude,
                }),
                radius_m: 50,
                max_results: 10,
            })
            .await
            .expect("the parking partner lists its lots")
            .into_inner()
            .lots;
        let lot = lots
            .iter()
            .find(|lot| lot.lot_id == place.parking_lot_id)
            .unwrap_or_else(|| panic!("no lot {:?} at {there:?}: {lots:?}", place.parking_lot_id));
        assert_eq!(lot.name, place.name);
        assert!(
            lot.distance_m <= 1,
            "{} is {} m from where navigation has it",
            lot.lot_id,
            lot.distance_m
        );
    }
}

#[tokio::test]
async fn a_destination_off_the_map_reaches_the_app_as_not_found() {
    let town = Town::open().await;
    let mut navigation = town.navigation_app().await;
    let hangzhou = GeoPoint {
        latitude: 30.2741,
        longitude: 120.1551,
    };
    let err = navigation
        .route(RouteRequest {
            origin: Some(CAR_POSITION),
            destination: Some(hangzhou),
        })
        .await
        .expect_err("Hangzhou is off the map");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("destination"), "{}", err.message());
    assert!(err.message().contains("the map covers"), "{}", err.message());

    let err = navigation
        .search_places(SearchPlacesRequest {
            query: "bund".into(),
            max_results: 51,
            ..Default::default()
        })
        .await
        .expect_err("above the cap");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("max_results 51"), "{}", err.message());
}
