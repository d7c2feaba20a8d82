//! The database going away during traffic: requests fail cleanly with UNAVAILABLE (nothing is
//! half-done), and service resumes by itself when the database returns.

use integration_tests::*;
use prost::Message;
use proto::vehicle::v1::Code;

const START: &str = "/parking.v1.ParkingPayment/StartSession";

fn psql(sql: &str) {
    let base = std::env::var("TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let status = std::process::Command::new("psql")
        .args([base.as_str(), "-qtAc", sql])
        .status()
        .expect("psql");
    assert!(status.success(), "psql failed: {sql}");
}

fn start() -> Vec<u8> {
    parking_at_the_bund().encode_to_vec()
}

/// Drops the database when the test ends, however it ends.
struct Database(String);

impl Drop for Database {
    fn drop(&mut self) {
        psql(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", self.0));
        psql(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0));
    }
}

#[tokio::test]
async fn requests_fail_cleanly_while_postgres_is_down_and_recover_when_it_returns() {
    let name = format!("gw_outage_{}_{}", std::process::id(), free_port());
    psql(&format!("CREATE DATABASE {name}"));
    let db = Database(name);
    let url = format!("postgres://postgres@127.0.0.1:5432/{}", db.0);
    let platform = Platform::start_with(|c| c.storage.url = url.clone()).await;
    let mut car = RawCar::connect(&platform, VIN_A).await;
    car.publish_request(keyed_envelope("before", "k-before", LIST, nearby_lots()))
        .await;
    assert_eq!(status_code(&car.next_response().await), Code::Ok);

    // The database stops accepting connections and drops the ones it has.
    // A payment-like call needs the ledger, so it is refused before the partner is called.
    psql(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS false", db.0));
    psql(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
        db.0
    ));
    car.publish_request(keyed_envelope("during", "k-during", START, start()))
        .await;
    let during = car.next_response().await;
    assert_eq!(
        (during.request_id.as_str(), status_code(&during)),
        ("during", Code::Unavailable),
        "{during:?}"
    );
    assert!(during.status.unwrap().message.contains("storage"));

    psql(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", db.0));
    // The same key again: the failed attempt left nothing behind, so it simply goes through.
    car.publish_request(keyed_envelope("after", "k-during", START, start()))
        .await;
    let after = car.next_response().await;
    assert_eq!(
        (after.request_id.as_str(), status_code(&after)),
        ("after", Code::Ok),
        "{after:?}"
    );
    assert_eq!(platform.parking.charges(), 0);
    drop(car);
    platform.gateway.shutdown().await;
}
