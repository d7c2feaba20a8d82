//! The `parking-adapter` binary under a service manager: it serves on the listening socket it
//! is passed (systemd socket activation: fd 3, `LISTEN_FDS=1`) instead of binding `--listen`.

mod common;

use std::ffi::OsStr;

use common::{CAR_A, adapter_on_passed_socket};
use proto::adapter::testing::from_car;
use proto::parking::v1::parking_payment_client::ParkingPaymentClient;
use proto::parking::v1::{GeoPoint, ListNearbyLotsRequest};

#[tokio::test]
async fn the_adapter_serves_on_the_socket_it_is_passed() {
    // The service manager's socket: bound here, on port 0, and kept while the adapter runs.
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let db = tempfile::tempdir().unwrap();
    let database = db.path().join("parking.db");
    // --listen names an address it must not bind: the passed socket wins.
    let args = [
        OsStr::new("--listen"),
        OsStr::new("192.0.2.1:9"),
        OsStr::new("--database"),
        database.as_os_str(),
    ];
    let (mut adapter, line) = adapter_on_passed_socket(&socket, &args).await;
    assert_eq!(line, format!("parking adapter listening on {addr} (plaintext)"));

    let mut client = ParkingPaymentClient::connect(format!("http://{addr}")).await.unwrap();
    let request = ListNearbyLotsRequest {
        near: Some(GeoPoint {
            latitude: 31.23,
            longitude: 121.47,
        }),
        radius_m: 5_000,
        max_results: 1,
    };
    let lots = client
        .list_nearby_lots(from_car(CAR_A, request))
        .await
        .expect("served on the passed socket");
    assert_eq!(lots.into_inner().lots.len(), 1);
    adapter.kill().await.unwrap();
}
