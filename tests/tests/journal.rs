//! The interaction journal end to end: a car connects and pays for parking through the real
//! agent, gateway and parking adapter; the vehicle's timeline (and its owner's) then holds the
//! connect and the request, with code OK and the amount the adapter reported.

use std::time::Duration;

use gateway::store::{CustomerId, Interaction, JournalEntry, SessionChange, TimelineQuery, VehicleRole};
use integration_tests::*;
use proto::Vin;

/// Every wait is bounded by this: a missing row fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(20);

fn everything() -> TimelineQuery {
    TimelineQuery {
        from_ms: 0,
        to_ms: i64::MAX,
        after: None,
        limit: 1000,
    }
}

/// Waits (on the journal's written counter, never a fixed sleep) until the vehicle's timeline
/// satisfies `done`, and returns it.
async fn timeline_when(platform: &Platform, vin: &Vin, done: impl Fn(&[JournalEntry]) -> bool) -> Vec<JournalEntry> {
    let journal = platform.gateway.journal();
    tokio::time::timeout(PATIENCE, async {
        loop {
            let written = journal.stats().written;
            let page = platform
                .gateway
                .store()
                .vehicle_timeline(vin, everything())
                .await
                .unwrap();
            if done(&page.entries) {
                return page.entries;
            }
            journal.written(written + 1).await;
        }
    })
    .await
    .expect("the journal holds the rows in time")
}

fn is_paid_request(e: &JournalEntry) -> bool {
    matches!(&e.what, Interaction::Request(r) if r.method == "EndSession")
}

#[tokio::test]
async fn a_paid_parking_request_and_the_connect_are_in_the_timeline() {
    let platform = Platform::start().await;
    let vin = Vin::parse(VIN_A).unwrap();
    let owner = platform.gateway.store().create_customer("Wang Fang").await.unwrap();
    platform
        .gateway
        .store()
        .link_vehicle(&owner.id, &vin, VehicleRole::Owner, 0)
        .await
        .unwrap();

    let (car, mut app) = platform.car_and_app(VIN_A).await;
    let session = park_from_the_app(&mut app).await;
    let paid = pay_from_the_app(&mut app, &session.session_id).await;
    let fee = paid.receipt.expect("receipt").fee.expect("fee");
    assert!(fee.amount_minor > 0, "the stay is charged: {fee:?}");

    let timeline = timeline_when(&platform, &vin, |entries| {
        entries.iter().any(is_paid_request)
            && entries
                .iter()
                .any(|e| matches!(&e.what, Interaction::Session(s) if s.change == SessionChange::Connected))
    })
    .await;
    let connect = timeline
        .iter()
        .find(|e| matches!(&e.what, Interaction::Session(_)))
        .expect("the connect");
    let Interaction::Session(connected) = &connect.what else {
        unreachable!()
    };
    assert_eq!(
        connected.change,
        SessionChange::Connected,
        "the first session row is the connect"
    );
    assert!(
        connected.detail.starts_with("127.0.0.1:"),
        "from where: {}",
        connected.detail
    );

    let request = timeline.iter().find(|e| is_paid_request(e)).unwrap();
    let Interaction::Request(r) = &request.what else {
        unreachable!()
    };
    assert_eq!(r.service, "parking.v1.ParkingPayment");
    assert_eq!(r.code, 0, "OK");
    assert!(r.latency_us > 0);
    assert!(!r.request_id.is_empty());
    let amount = r.amount.as_ref().expect("the adapter reported the charge");
    assert_eq!(
        (amount.minor_units, amount.currency.as_str()),
        (fee.amount_minor, fee.currency.as_str())
    );
    assert_eq!(r.request_payload, None, "bodies are not stored by default");
    assert!(connect.at_ms <= request.at_ms);
    // The StartSession before it charged nothing, so it reports no amount.
    let started = timeline
        .iter()
        .find_map(|e| match &e.what {
            Interaction::Request(r) if r.method == "StartSession" => Some(r),
            _ => None,
        })
        .expect("the StartSession");
    assert_eq!((started.code, &started.amount), (0, &None));

    // The owner's timeline holds the same rows.
    let theirs = platform
        .gateway
        .store()
        .customer_timeline(&CustomerId(owner.id.0.clone()), everything())
        .await
        .unwrap();
    assert!(theirs.entries.iter().any(|e| e.id == request.id));

    car.shutdown().await;
}
