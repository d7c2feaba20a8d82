//! The `navigation-adapter` binary: a command line it cannot use exits 64 saying why, and
//! under a service manager it serves on the listening socket it is passed (systemd socket
//! activation: fd 3, `LISTEN_FDS=1`) instead of binding `--listen`.

use std::path::Path;

use proto::adapter::activation::start_on_passed_sockets;
use proto::navigation::v1::SearchPlacesRequest;
use proto::navigation::v1::navigation_client::NavigationClient;
use tokio::process::Command;

const BINARY: &str = env!("CARGO_BIN_EXE_navigation-adapter");

#[tokio::test]
async fn half_a_tls_configuration_exits_64() {
    let out = Command::new(BINARY)
        .args(["--listen", "127.0.0.1:0", "--cert", "navigation.pem"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--cert, --key and --client-ca go together"), "{stderr}");
}

#[tokio::test]
async fn an_option_it_cannot_read_exits_64() {
    let out = Command::new(BINARY)
        .args(["--listen", "nowhere"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen"));
}

#[tokio::test]
async fn the_adapter_serves_on_the_socket_it_is_passed() {
    // The service manager's socket: bound here, on port 0, and kept while the adapter runs.
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    // --listen names an address it must not bind: the passed socket wins.
    let args = ["--listen", "192.0.2.1:9"];
    let (mut adapter, line) = start_on_passed_sockets(Path::new(BINARY), &args, &[&socket]).await;
    assert_eq!(line, format!("navigation adapter listening on {addr} (plaintext)"));

    let mut client = NavigationClient::connect(format!("http://{addr}")).await.unwrap();
    let places = client
        .search_places(SearchPlacesRequest {
            query: "IFC".into(),
            ..Default::default()
        })
        .await
        .expect("served on the passed socket");
    assert_eq!(places.into_inner().places[0].parking_lot_id, "lot-lujiazui-01");
    adapter.kill().await.unwrap();
}
