//! Runs the built `certs` binary the way developers and the demo scripts do.

use std::path::Path;
use std::process::{Command, Output};

const VIN: &str = "WBA3B5C50DF123456";

fn certs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_certs"))
        .args(args)
        .output()
        .expect("run certs")
}

fn arg(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_success(output: &Output) {
    assert!(output.status.success(), "failed: {}", stderr(output));
}

fn assert_failure(output: &Output) -> String {
    assert_eq!(output.status.code(), Some(1), "stdout: {}", stdout(output));
    let err = stderr(output);
    assert!(err.starts_with("error: "), "{err}");
    err
}

fn subject_of(pem_path: &Path) -> (String, String) {
    let pem = std::fs::read(pem_path).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let cert = pem.parse_x509().unwrap();
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    let ou = cert
        .subject()
        .iter_organizational_unit()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    (ou, cn)
}

#[cfg(unix)]
fn assert_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", path.display());
}

#[cfg(not(unix))]
fn assert_private(_path: &Path) {}

#[test]
fn init_then_vehicle_and_partner() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");

    let init = certs(&[
        "init",
        "--out",
        arg(&pki),
        "--name",
        "gw.example.com",
        "--name",
        "192.168.1.10",
    ]);
    assert_success(&init);
    for file in ["ca.pem", "ca.key", "gateway.pem", "gateway.key"] {
        assert!(
            stdout(&init).contains(arg(&pki.join(file))),
            "{file} not listed: {}",
            stdout(&init)
        );
    }
    assert_private(&pki.join("ca.key"));
    assert_private(&pki.join("gateway.key"));
    assert_eq!(
        subject_of(&pki.join("gateway.pem")),
        ("gateway".into(), "gateway".into())
    );

    let cars = dir.path().join("cars");
    let vehicle = certs(&["vehicle", VIN, "--out", arg(&cars), "--ca", arg(&pki)]);
    assert_success(&vehicle);
    assert!(stdout(&vehicle).contains(arg(&cars.join(format!("{VIN}.pem")))));
    assert_eq!(
        subject_of(&cars.join(format!("{VIN}.pem"))),
        ("vehicle".into(), VIN.into())
    );
    assert_private(&cars.join(format!("{VIN}.key")));

    // --ca defaults to --out.
    assert_success(&certs(&["partner", "parking", "--out", arg(&pki)]));
    assert_eq!(
        subject_of(&pki.join("parking.pem")),
        ("partner".into(), "parking".into())
    );
    assert_private(&pki.join("parking.key"));
}

#[test]
fn init_refuses_to_replace_a_ca_without_force() {
    let dir = tempfile::tempdir().unwrap();
    assert_success(&certs(&["init", "--out", arg(dir.path())]));
    let before = std::fs::read(dir.path().join("ca.pem")).unwrap();

    let err = assert_failure(&certs(&["init", "--out", arg(dir.path())]));
    assert!(err.contains("already exists") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), before);

    assert_success(&certs(&["init", "--out", arg(dir.path()), "--force"]));
    assert_ne!(std::fs::read(dir.path().join("ca.pem")).unwrap(), before);
}

#[test]
fn bad_vins_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    assert_success(&certs(&["init", "--out", arg(dir.path())]));

    let err = assert_failure(&certs(&["vehicle", "WBA3B5C50DF12345I", "--out", arg(dir.path())]));
    assert!(err.contains("'I'") && err.contains("position 17"), "{err}");

    let err = assert_failure(&certs(&["vehicle", "WBA3B5C50DF12345", "--out", arg(dir.path())]));
    assert!(err.contains("17 characters") && err.contains("has 16"), "{err}");

    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 4, "files were written");
}

#[test]
fn vehicle_without_a_ca_explains_how_to_create_one() {
    let dir = tempfile::tempdir().unwrap();
    let err = assert_failure(&certs(&["vehicle", VIN, "--out", arg(dir.path())]));
    assert!(err.contains("ca.pem") && err.contains("certs init"), "{err}");
    assert!(!dir.path().join(format!("{VIN}.pem")).exists());
}

#[test]
fn bad_partner_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = assert_failure(&certs(&["partner", "Parking", "--out", arg(dir.path())]));
    assert!(err.contains("partner name") && err.contains("'P'"), "{err}");
}

#[test]
fn bad_gateway_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = assert_failure(&certs(&["init", "--out", arg(dir.path()), "--name", "no spaces"]));
    assert!(err.contains("\"no spaces\""), "{err}");
}

#[test]
fn usage_errors_are_reported_by_clap() {
    let output = certs(&["vehicle", VIN]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("--out"), "{}", stderr(&output));
}
