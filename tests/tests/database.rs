//! The database going away during traffic: requests fail cleanly with UNAVAILABLE (nothing is
//! half-done), and service resumes by itself when the database returns. Needs the local
//! PostgreSQL (and `psql`), and fails saying so without them.

use integration_tests::*;
use prost::Message;
use proto::vehicle::v1::Code;

const START: &str = "/parking.v1.ParkingPayment/StartSession";

fn start() -> Vec<u8> {
    parking_at_the_bund().encode_to_vec()
}

#[tokio::test]
async fn requests_fail_cleanly_while_postgres_is_down_and_recover_when_it_returns() {
    let db = postgres::Database::create("outage");
    let platform = Platform::start_with(|c| c.storage.url = db.url()).await;
    let mut car = RawCar::connect(&platform, VIN_A).await;
    car.publish_request(keyed_envelope("before", "k-before", LIST, nearby_lots()))
        .await;
    assert_eq!(status_code(&car.next_response().await), Code::Ok);

    // The database stops accepting connections and drops the ones it has.
    // A payment-like call needs the ledger, so it is refused before the partner is called.
    db.go_away();
    let during = car.ask(keyed_envelope("during", "k-during", START, start())).await;
    assert_eq!(outcome(&during), ("during", Code::Unavailable), "{during:?}");
    assert!(during.status.unwrap().message.contains("storage"));

    db.come_back();
    // The same key again: the failed attempt left nothing behind, so it simply goes through.
    let after = car.ask(keyed_envelope("after", "k-during", START, start())).await;
    assert_eq!(outcome(&after), ("after", Code::Ok), "{after:?}");
    assert_eq!(platform.parking.charges(), 0);
    drop(car);
    platform.gateway.shutdown().await;
}
