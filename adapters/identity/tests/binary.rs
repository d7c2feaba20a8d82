//! The `identity-adapter` binary: under a service manager it serves gRPC on the first socket it
//! is passed and the page on the second (systemd socket activation, `LISTEN_FDS=2`); a command
//! line it cannot use exits 64 saying why.

use std::path::Path;

use proto::adapter::activation::start_on_passed_sockets;
use proto::adapter::testing::from_car;
use proto::social_login::v1::social_login_client::SocialLoginClient;
use proto::social_login::v1::{SocialProvider, StartDeviceLoginRequest};
use tokio::process::Command;

const ADAPTER: &str = env!("CARGO_BIN_EXE_identity-adapter");

#[tokio::test]
async fn the_adapter_serves_grpc_and_the_page_on_the_sockets_it_is_passed() {
    let grpc = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let page = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (grpc_addr, page_addr) = (grpc.local_addr().unwrap(), page.local_addr().unwrap());
    let public = format!("http://{page_addr}");
    // The addresses named must not be bound: the passed sockets win.
    let args = [
        "--listen",
        "192.0.2.1:9",
        "--web-listen",
        "192.0.2.1:10",
        "--public-url",
        &public,
        "--poll-interval",
        "2s",
    ];
    let (mut adapter, line) = start_on_passed_sockets(Path::new(ADAPTER), &args, &[&grpc, &page]).await;
    assert_eq!(
        line,
        format!(
            "identity adapter listening on {grpc_addr} (plaintext); verification page on {public} ({public}/device)"
        )
    );

    let mut client = SocialLoginClient::connect(format!("http://{grpc_addr}")).await.unwrap();
    let start = StartDeviceLoginRequest {
        provider: SocialProvider::Weibo.into(),
    };
    let login = client
        .start_device_login(from_car("LSVAU2180N2183294", start))
        .await
        .expect("served on the passed socket")
        .into_inner();
    assert_eq!(login.interval, 2);
    assert_eq!(login.verification_uri, format!("{public}/device"));
    let form = reqwest::get(&login.verification_uri_complete).await.unwrap();
    assert_eq!(form.status(), reqwest::StatusCode::OK);
    assert!(form.text().await.unwrap().contains(&login.user_code));
    adapter.kill().await.unwrap();
}

#[tokio::test]
async fn a_command_line_it_cannot_use_exits_64_saying_why() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--poll-interval", "0s"],
            "--poll-interval 0s must be whole seconds between 1s and 300s",
        ),
        (
            &["--poll-interval", "soon"],
            "invalid value 'soon' for '--poll-interval",
        ),
        (&["--poll-interval", "1500ms"], "must be whole seconds"),
        (
            &["--code-lifetime", "2h"],
            "--code-lifetime 2h must be between 1m and 1h",
        ),
        (
            &["--max-pending-per-car", "0"],
            "--max-pending-per-car 0 must be between 1 and 100",
        ),
        (&["--wrong-codes-per-client", "5000"], "between 1 and 1000"),
        (
            &["--public-url", "ftp://login.example.com"],
            "must be an http:// or https:// URL",
        ),
        (&["--cert", "identity.pem"], "--cert, --key and --client-ca go together"),
    ];
    for (args, says) in cases {
        let out = Command::new(ADAPTER)
            .args(*args)
            .env_remove("LISTEN_FDS")
            .output()
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
