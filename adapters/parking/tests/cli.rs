//! The `parking-adapter` command line refuses what cannot work with a clear message and exit
//! code 64 (EX_USAGE), and a database it cannot open with the path named, before serving.

use std::process::Output;
use std::time::Duration;

use tokio::process::Command;

/// Runs the adapter binary with `args` (plus a database in `dir`) until it exits.
async fn run(dir: &std::path::Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_parking-adapter"));
    cmd.args(["--listen", "127.0.0.1:0", "--database"])
        .arg(dir.join("parking.db"))
        .args(args)
        .env_remove("LISTEN_FDS")
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .expect("the adapter exits at once")
        .unwrap()
}

#[tokio::test]
async fn unusable_options_are_refused_with_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--cert", "c.pem"], "--cert, --key and --client-ca go together"),
        (
            &["--partner-api", "https://localhost:8443"],
            "--partner-api and --partner-api-ca go together",
        ),
        (
            &["--partner-api", "https://localhost:8443", "--partner-api-ca", "ca.pem"],
            "--partner-api needs --cert and --key",
        ),
        (
            &["--lot-client-ca", "operators-ca.pem"],
            "--lot-client-ca without --lot-listen",
        ),
        (
            &[
                "--cert",
                "c.pem",
                "--key",
                "k.pem",
                "--client-ca",
                "ca.pem",
                "--lot-listen",
                "127.0.0.1:0",
            ],
            "needs --lot-client-ca",
        ),
        (&["--max-stay-hours", "0"], "max-stay-hours"),
    ];
    for (args, says) in cases {
        let out = run(dir.path(), args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?} should say {says:?}: {stderr}");
    }
}

#[tokio::test]
async fn a_database_that_cannot_be_opened_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_parking-adapter"))
        .args(["--listen", "127.0.0.1:0", "--database"])
        .arg(dir.path().join("no-such-dir").join("parking.db"))
        .env_remove("LISTEN_FDS")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), out)
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot open the database"), "{stderr}");
    assert!(stderr.contains("no-such-dir"), "{stderr}");
}

#[tokio::test]
async fn sigterm_stops_both_ports_and_exits_0() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let dir = tempfile::tempdir().unwrap();
    let mut adapter = Command::new(env!("CARGO_BIN_EXE_parking-adapter"))
        .args(["--listen", "127.0.0.1:0", "--lot-listen", "127.0.0.1:0", "--database"])
        .arg(dir.path().join("parking.db"))
        .env_remove("LISTEN_FDS")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(adapter.stdout.take().unwrap()).lines();
    for port in ["parking adapter listening on", "parking lot listening on"] {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("the adapter announces its ports")
            .unwrap()
            .unwrap();
        assert!(line.starts_with(port), "{line}");
    }
    let pid = adapter.id().unwrap().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    assert!(sent.success());
    let status = tokio::time::timeout(Duration::from_secs(20), adapter.wait())
        .await
        .expect("the adapter stops on SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
