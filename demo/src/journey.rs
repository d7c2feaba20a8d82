//! The journey an in-car app makes through the car's local endpoint, printed step by step
//! (method, outcome, time): the car is at Jing'an Temple and the driver wants to go to the
//! Bund. Navigation finds car parks near the Bund and a route to one; parking starts a session
//! there, ends it and pays, and fetches the receipt; the driver signs in with WeChat; later the
//! car parks again and the lot's exit gate ends the session, which the car hears about.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use parking_adapter::ParkingService;
use proto::agent::v1::vehicle_agent_client::VehicleAgentClient;
use proto::navigation::v1::navigation_client::NavigationClient;
use proto::navigation::v1::{self as navigation, PlaceCategory, RouteRequest, SearchPlacesRequest};
use proto::parking::v1::parking_payment_client::ParkingPaymentClient;
use proto::parking::v1::{EndSessionRequest, GetReceiptRequest, Money, StartSessionRequest};
use proto::social_login::v1::social_login_client::SocialLoginClient;
use tonic::transport::Channel;

use crate::lot::leave_through_the_exit_gate;
use crate::sign_in::sign_in_with_wechat;

/// Where the car is: Jing'an Temple.
const CAR_AT: navigation::GeoPoint = navigation::GeoPoint {
    latitude: 31.2236,
    longitude: 121.4454,
};

/// Where the driver is going: the Bund.
const GOING_TO: navigation::GeoPoint = navigation::GeoPoint {
    latitude: 31.2400,
    longitude: 121.4900,
};

/// The demo car's plate.
const PLATE: &str = "沪A12345";

/// Turn-by-turn instructions printed; the rest are counted.
const STEPS_SHOWN: usize = 4;

/// One in-car app's clients, all on the car's local endpoint.
pub struct InCarApp {
    /// navigation.v1.Navigation.
    pub navigation: NavigationClient<Channel>,
    /// parking.v1.ParkingPayment.
    pub parking: ParkingPaymentClient<Channel>,
    /// identity.v1.SocialLogin.
    pub social_login: SocialLoginClient<Channel>,
    /// The agent's own API: partner events.
    pub agent: VehicleAgentClient<Channel>,
}

impl InCarApp {
    /// Connects to the car's endpoint `url` (`http://host:port`).
    pub async fn connect(url: String) -> Result<InCarApp> {
        let channel = Channel::from_shared(url)?.connect().await?;
        Ok(InCarApp {
            navigation: NavigationClient::new(channel.clone()),
            parking: ParkingPaymentClient::new(channel.clone()),
            social_login: SocialLoginClient::new(channel.clone()),
            agent: VehicleAgentClient::new(channel),
        })
    }
}

/// The whole journey; `once` lets the demo approve the sign-in itself. `lot` is the parking
/// partner, whose exit gate the demo plays.
pub async fn jingan_to_the_bund(app: &mut InCarApp, lot: &ParkingService, once: bool) -> Result<()> {
    let search = SearchPlacesRequest {
        near: Some(GOING_TO),
        radius_m: 1_500,
        category: PlaceCategory::Parking.into(),
        max_results: 3,
        ..Default::default()
    };
    let (found, took) = timed(app.navigation.search_places(search)).await?;
    let places = found.places;
    step(
        1,
        "SearchPlaces",
        format!("{} car parks near the Bund", places.len()),
        took,
    );
    for place in &places {
        println!(
            "     {:<28} {:>5} m  {}",
            place.name, place.distance_m, place.parking_lot_id
        );
    }
    let car_park = places
        .iter()
        .find(|p| !p.parking_lot_id.is_empty())
        .context("no car park with a parking partner near the Bund")?;

    let route = RouteRequest {
        origin: Some(CAR_AT),
        destination: car_park.location,
    };
    let (drive, took) = timed(app.navigation.route(route)).await?;
    let summary = format!(
        "{:.1} km, about {} min to {}",
        f64::from(drive.distance_m) / 1e3,
        drive.duration_s.div_ceil(60),
        car_park.name
    );
    step(2, "Route", summary, took);
    for turn in drive.steps.iter().take(STEPS_SHOWN) {
        println!("     {:>5} m  {}", turn.distance_m, turn.instruction);
    }
    if drive.steps.len() > STEPS_SHOWN {
        println!("     … {} more steps", drive.steps.len() - STEPS_SHOWN);
    }

    let parking = StartSessionRequest {
        lot_id: car_park.parking_lot_id.clone(),
        plate: PLATE.into(),
    };
    let (started, took) = timed(app.parking.start_session(parking)).await?;
    let session = started.session.context("no session")?;
    step(
        3,
        "StartSession",
        format!("{} at {}", session.session_id, car_park.name),
        took,
    );

    let end = EndSessionRequest {
        session_id: session.session_id.clone(),
    };
    let (ended, took) = timed(app.parking.end_session(end)).await?;
    let receipt = ended.receipt.context("no receipt")?;
    let paid = format!("fee {}, receipt {}", yuan(receipt.fee.as_ref()), receipt.receipt_id);
    step(4, "EndSession", paid, took);
    if let Some(breakdown) = &receipt.breakdown {
        let rules = breakdown.rules.clone().unwrap_or_default();
        let mut lines = vec![format!(
            "{} h × {}/h = {}",
            breakdown.billed_hours,
            yuan(rules.hourly_rate.as_ref()),
            yuan(breakdown.before_cap.as_ref())
        )];
        if rules.free_minutes > 0 {
            lines.push(format!(
                "{} of {} free minutes used",
                breakdown.free_minutes_used, rules.free_minutes
            ));
        }
        let capped = breakdown.cap_discount.as_ref().is_some_and(|d| d.amount_minor != 0);
        lines.push(match capped {
            true => format!(
                "daily cap {} takes off {}",
                yuan(rules.daily_cap.as_ref()),
                yuan(breakdown.cap_discount.as_ref())
            ),
            false => format!("daily cap {}", yuan(rules.daily_cap.as_ref())),
        });
        println!("     {}", lines.join("; "));
    }

    let get = GetReceiptRequest {
        receipt_id: receipt.receipt_id.clone(),
    };
    let (again, took) = timed(app.parking.get_receipt(get)).await?;
    let by = format!("{} paid by {}", again.receipt_id, again.payment_reference);
    step(5, "GetReceipt", by, took);

    sign_in_with_wechat(&mut app.social_login, 6, once).await?;

    leave_through_the_exit_gate(app, lot, &car_park.parking_lot_id, PLATE, 8).await
}

/// `money` as yuan, e.g. ¥12.50 (absent is ¥0.00).
pub fn yuan(money: Option<&Money>) -> String {
    let minor = money.map_or(0, |m| m.amount_minor);
    let sign = if minor < 0 { "-" } else { "" };
    format!(
        "{sign}¥{}.{:02}",
        minor.unsigned_abs() / 100,
        minor.unsigned_abs() % 100
    )
}

/// The answer to `call` and how long it took.
pub async fn timed<T>(call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>) -> Result<(T, Duration)> {
    let t = Instant::now();
    let answer = call.await?.into_inner();
    Ok((answer, t.elapsed()))
}

/// Prints step `n` of the journey: the method called, what came back, how long it took.
pub fn step(n: u32, method: &str, outcome: String, took: Duration) {
    println!("{n}. {method:<18}-> {outcome} ({:.1} ms)", took.as_secs_f64() * 1e3);
}
