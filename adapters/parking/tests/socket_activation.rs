//! The `parking-adapter` binary under a service manager: it serves on the listening socket it
//! is passed (systemd socket activation: fd 3, `LISTEN_FDS=1`) instead of binding `--listen`.

use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
use proto::parking::v1::parking_payment_client::ParkingPaymentClient;
use proto::parking::v1::{GeoPoint, ListNearbyLotsRequest};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test]
async fn the_adapter_serves_on_the_socket_it_is_passed() {
    // The service manager's socket: bound here, on port 0, and kept while the adapter runs.
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let passed: OwnedFd = socket.try_clone().unwrap().into();
    let db = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_parking-adapter"));
    // --listen names an address it must not bind: the passed socket wins.
    cmd.args(["--listen", "192.0.2.1:9"])
        .arg("--database")
        .arg(db.path().join("parking.db"))
        .env("LISTEN_FDS", "1")
        .env_remove("LISTEN_PID")
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    cmd.fd_mappings(vec![FdMapping {
        parent_fd: passed,
        child_fd: 3,
    }])
    .unwrap();
    let mut adapter = cmd.spawn().unwrap();
    let mut out = BufReader::new(adapter.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), out.next_line())
        .await
        .expect("the adapter says where it listens")
        .unwrap()
        .expect("a line");
    assert_eq!(line, format!("parking adapter listening on {addr} (plaintext)"));

    let mut client = ParkingPaymentClient::connect(format!("http://{addr}")).await.unwrap();
    let mut request = tonic::Request::new(ListNearbyLotsRequest {
        near: Some(GeoPoint {
            latitude: 31.23,
            longitude: 121.47,
        }),
        radius_m: 5_000,
        max_results: 1,
    });
    request
        .metadata_mut()
        .insert(proto::metadata::VIN, "LSVAU2180N2183294".parse().unwrap());
    let lots = client
        .list_nearby_lots(request)
        .await
        .expect("served on the passed socket");
    assert_eq!(lots.into_inner().lots.len(), 1);
    adapter.kill().await.unwrap();
}
