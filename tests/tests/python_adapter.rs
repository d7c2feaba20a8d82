//! "Partners implement the contract in any language": the Python example adapter
//! (`examples/python-parking`, grpcio) passes every check of the partner kit that the Rust
//! reference adapter passes.
//!
//! It needs Python 3 with the example's requirements in `target/python-venv` (or the Python
//! named by `PARTNER_KIT_PYTHON`), which `scripts/test.sh` sets up; without them the test fails saying
//! how to set them up.

use std::path::{Path, PathBuf};

use certs::IssuingCa;
use integration_tests::*;
use partner_kit::Outcome;

/// How to make the Python the test needs, from the workspace root.
const SETUP: &str = "python3 -m venv target/python-venv && \
                     target/python-venv/bin/pip install -r examples/python-parking/requirements.txt";

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the workspace")
}

/// The Python with grpcio, grpcio-tools and cryptography installed, or a panic saying how to
/// get it.
async fn python() -> PathBuf {
    let python = std::env::var_os("PARTNER_KIT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/python-venv/bin/python"));
    let imports = tokio::process::Command::new(&python)
        .args(["-c", "import grpc, grpc_tools, cryptography"])
        .output()
        .await;
    match imports {
        Ok(out) if out.status.success() => python,
        Ok(out) => panic!(
            "{} cannot import the example's requirements ({}); from the workspace root: {SETUP}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!(
            "no Python at {} ({e}); from the workspace root: {SETUP} (or set PARTNER_KIT_PYTHON)",
            python.display()
        ),
    }
}

#[tokio::test]
async fn the_python_example_adapter_passes_the_partner_kit() {
    init();
    let python = python().await;
    let pki = TestPki::new();
    let me = pki.partner("parking");
    let script = workspace_root().join("examples/python-parking/parking_adapter.py");
    let client_ca = pki.layout.issuing_ca_cert(IssuingCa::GatewayClients);
    let binary = Binary {
        name: "python parking adapter",
        path: Box::leak(python.display().to_string().into_boxed_str()),
    };
    let args = [
        script.display().to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--cert".into(),
        me.cert.display().to_string(),
        "--key".into(),
        me.key.display().to_string(),
        "--client-ca".into(),
        client_ca.display().to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut adapter = Process::spawn(binary, &args);
    let line = adapter.wait_for_line("python parking adapter listening on").await;
    let addr = line
        .split_whitespace()
        .find_map(|word| word.parse::<std::net::SocketAddr>().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));

    let report = partner_kit::check(kit_config(&pki, addr, PARKING)).await;

    assert!(report.passed(), "{report}");
    let ran: Vec<_> = report
        .results
        .iter()
        .filter(|r| !matches!(r.outcome, Outcome::Skip(_)))
        .map(|r| r.name)
        .collect();
    assert!(
        ran.contains(&"idempotency.end-session") && ran.contains(&"mtls.vehicle-certificate"),
        "the service's own checks and the car's certificate ran:\n{report}"
    );
    adapter.kill9().await;
}
