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

/// How many certificates a PEM file holds.
fn pem_blocks(pem_path: &Path) -> usize {
    let pem = std::fs::read(pem_path).unwrap();
    x509_parser::pem::Pem::iter_from_buffer(&pem).count()
}

/// A directory holding a PKI made by `certs init`.
fn initialised_pki() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    assert_success(&certs(&["init", "--out", arg(dir.path())]));
    dir
}

/// Runs `certs` with `args` and `--out dir`, which must fail: what it said.
fn refusal(args: &[&str], dir: &Path) -> String {
    assert_failure(&certs(&[args, &["--out", arg(dir)]].concat()))
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
    for stem in [
        "ca",
        "vehicles-ca",
        "partners-ca",
        "gateway-clients-ca",
        "operators-ca",
        "gateway",
        "gateway-client",
    ] {
        for file in [format!("{stem}.pem"), format!("{stem}.key")] {
            assert!(
                stdout(&init).lines().any(|line| line == arg(&pki.join(&file))),
                "{file} not listed: {}",
                stdout(&init)
            );
            assert!(pki.join(&file).is_file(), "{file} not written");
        }
        assert_private(&pki.join(format!("{stem}.key")));
    }
    assert_eq!(stdout(&init).lines().count(), 14, "{}", stdout(&init));
    assert_eq!(
        subject_of(&pki.join("gateway.pem")),
        ("gateway".into(), "gateway".into())
    );
    assert_eq!(
        subject_of(&pki.join("gateway-client.pem")),
        ("gateway-client".into(), "gateway".into())
    );
    assert_eq!(
        pem_blocks(&pki.join("gateway-client.pem")),
        2,
        "leaf then gateway-clients-ca"
    );
    assert_eq!(pem_blocks(&pki.join("vehicles-ca.pem")), 1, "the intermediate alone");

    let cars = dir.path().join("cars");
    let vehicle = certs(&["vehicle", VIN, "--out", arg(&cars), "--ca", arg(&pki)]);
    assert_success(&vehicle);
    assert!(stdout(&vehicle).contains(arg(&cars.join(format!("{VIN}.pem")))));
    assert_eq!(
        subject_of(&cars.join(format!("{VIN}.pem"))),
        ("vehicle".into(), VIN.into())
    );
    assert_private(&cars.join(format!("{VIN}.key")));
    assert_eq!(pem_blocks(&cars.join(format!("{VIN}.pem"))), 2, "leaf then vehicles-ca");

    // --ca defaults to --out.
    assert_success(&certs(&["partner", "parking", "--out", arg(&pki)]));
    assert_eq!(
        subject_of(&pki.join("parking.pem")),
        ("partner".into(), "parking".into())
    );
    assert_private(&pki.join("parking.key"));

    let ops = dir.path().join("ops");
    let operator = certs(&["operator", "night-shift", "--out", arg(&ops), "--ca", arg(&pki)]);
    assert_success(&operator);
    assert!(stdout(&operator).contains(arg(&ops.join("night-shift.pem"))));
    assert_eq!(
        subject_of(&ops.join("night-shift.pem")),
        ("operator".into(), "night-shift".into())
    );
    assert_eq!(pem_blocks(&ops.join("night-shift.pem")), 2, "leaf then operators-ca");
    assert_private(&ops.join("night-shift.key"));
}

#[test]
fn init_refuses_to_replace_a_ca_without_force() {
    let dir = initialised_pki();
    let before = std::fs::read(dir.path().join("ca.pem")).unwrap();

    let err = refusal(&["init"], dir.path());
    assert!(err.contains("already exists") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), before);

    assert_success(&certs(&["init", "--out", arg(dir.path()), "--force"]));
    assert_ne!(std::fs::read(dir.path().join("ca.pem")).unwrap(), before);
}

#[test]
fn bad_vins_are_refused_with_the_reason() {
    let dir = initialised_pki();

    let err = refusal(&["vehicle", "WBA3B5C50DF12345I"], dir.path());
    assert!(err.contains("'I'") && err.contains("position 17"), "{err}");

    let err = refusal(&["vehicle", "WBA3B5C50DF12345"], dir.path());
    assert!(err.contains("17 characters") && err.contains("has 16"), "{err}");

    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 14, "files were written");
}

#[test]
fn vehicle_without_a_ca_explains_how_to_create_one() {
    let dir = tempfile::tempdir().unwrap();
    let err = refusal(&["vehicle", VIN], dir.path());
    assert!(err.contains("ca.pem") && err.contains("certs init"), "{err}");
    assert!(!dir.path().join(format!("{VIN}.pem")).exists());
}

#[test]
fn bad_partner_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = refusal(&["partner", "Parking"], dir.path());
    assert!(err.contains("partner name") && err.contains("'P'"), "{err}");
}

#[test]
fn bad_operator_names_are_refused() {
    let dir = initialised_pki();
    let err = refusal(&["operator", "ops.team"], dir.path());
    assert!(err.contains("operator name") && err.contains("'.'"), "{err}");
    assert!(!dir.path().join("ops.team.pem").exists());
}

#[test]
fn a_pki_from_before_issuing_cas_is_reported_with_the_way_out() {
    let dir = initialised_pki();
    std::fs::remove_file(dir.path().join("vehicles-ca.pem")).unwrap();
    std::fs::remove_file(dir.path().join("vehicles-ca.key")).unwrap();

    let err = refusal(&["vehicle", VIN], dir.path());
    assert!(err.contains("vehicles-ca.pem") && err.contains("--force"), "{err}");

    let err = refusal(&["init"], dir.path());
    assert!(err.contains("already exists"), "{err}");
    assert_success(&certs(&["init", "--out", arg(dir.path()), "--force"]));
    assert_success(&certs(&["vehicle", VIN, "--out", arg(dir.path())]));
}

#[test]
fn bad_gateway_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = refusal(&["init", "--name", "no spaces"], dir.path());
    assert!(err.contains("\"no spaces\""), "{err}");
}

#[test]
fn usage_errors_are_reported_by_clap() {
    let output = certs(&["vehicle", VIN]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("--out"), "{}", stderr(&output));
}
