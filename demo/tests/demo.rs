//! The newcomer's first command works: the demo makes certificates, runs everything, and a
//! parking round trip succeeds.

use std::process::Command;

#[test]
fn the_demo_pays_for_parking_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_demo"))
        .args(["--once", "--bench", "20", "--dir"])
        .arg(dir.path().join("certs"))
        .args([
            "--mqtt-listen",
            "127.0.0.1:0",
            "--adapter-listen",
            "127.0.0.1:0",
            "--agent-listen",
            "127.0.0.1:0",
        ])
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in [
        "1. ListNearbyLots",
        "2. StartSession",
        "3. EndSession",
        "4. GetReceipt",
        "partner charged 1 time(s)",
        "bench: 20",
    ] {
        assert!(stdout.contains(step), "missing {step:?} in:\n{stdout}");
    }
    assert!(dir.path().join("certs/gateway.toml").exists());
    assert!(dir.path().join("certs/agent.toml").exists());
}
