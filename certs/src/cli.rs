//! Command line of `certs`.

use std::path::PathBuf;
use std::process::ExitCode;

use certs::{CertificateAuthority, CertsError, DevPki};
use clap::{Args, Parser, Subcommand};
use proto::identity::Role;

/// Development PKI for the connected-car platform: a root CA, one issuing CA per client role
/// (vehicles, partners, gateway clients, operators), and the certificates they sign.
#[derive(Debug, Parser)]
#[command(name = "certs", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the root CA, the issuing CAs, and the gateway's server and client certificates.
    Init {
        /// Directory to write ca.pem, vehicles-ca.pem, partners-ca.pem, gateway-clients-ca.pem,
        /// operators-ca.pem, gateway.pem, gateway-client.pem (and their .key files) to.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Extra host name or IP address of the gateway (besides localhost, 127.0.0.1 and ::1).
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
        /// Replace existing CAs (every certificate they signed stops being trusted).
        #[arg(long)]
        force: bool,
    },
    /// Issue a vehicle certificate (signed by vehicles-ca): <OUT>/<VIN>.pem and <OUT>/<VIN>.key.
    Vehicle {
        /// The vehicle's VIN (17 characters, no I, O or Q).
        vin: String,
        #[command(flatten)]
        dirs: Dirs,
    },
    /// Issue a partner certificate (signed by partners-ca; the adapter's server certificate and
    /// its client certificate for the partner API): <OUT>/<NAME>.pem and <OUT>/<NAME>.key.
    Partner {
        /// The partner's name (1 to 64 characters of a-z, 0-9 and '-').
        name: String,
        #[command(flatten)]
        dirs: Dirs,
    },
    /// Issue an operator certificate (signed by operators-ca): <OUT>/<NAME>.pem and <OUT>/<NAME>.key.
    Operator {
        /// The operator's name (1 to 64 characters of a-z, 0-9 and '-').
        name: String,
        #[command(flatten)]
        dirs: Dirs,
    },
    /// Write a certificate revocation list signed by vehicles-ca revoking the given vehicle
    /// certificates, to <OUT>/vehicles.crl.pem; list it in the gateway's `tls.crls`, which it
    /// reads again when the file changes (no restart).
    Crl {
        /// The vehicle certificates (PEM files) to revoke: every one still revoked, as the
        /// new list replaces the old.
        certificates: Vec<PathBuf>,
        /// How many days the list is valid for.
        #[arg(long, default_value_t = 30)]
        days: i64,
        #[command(flatten)]
        dirs: Dirs,
    },
}

/// Where an issued certificate goes and which PKI signs it.
#[derive(Debug, Args)]
struct Dirs {
    /// Directory to write the certificate and key to.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Directory holding the PKI written by `certs init` [default: the --out directory].
    #[arg(long, value_name = "DIR")]
    ca: Option<PathBuf>,
}

impl Dirs {
    /// The CAs of `--ca`, or else of `--out`.
    fn authority(&self) -> Result<CertificateAuthority, CertsError> {
        CertificateAuthority::load(self.ca.as_deref().unwrap_or(&self.out))
    }
}

/// Parses the command line, runs it, and reports errors as `error: <message>` with exit code 1.
pub fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(written) => {
            for path in written {
                println!("{}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one command; returns the files it wrote.
fn run(cli: Cli) -> Result<Vec<PathBuf>, CertsError> {
    let (issued, dirs, stem) = match cli.command {
        Command::Crl {
            certificates,
            days,
            dirs,
        } => {
            let pems = certificates
                .iter()
                .map(|path| std::fs::read_to_string(path).map_err(CertsError::io("read", path)))
                .collect::<Result<Vec<_>, _>>()?;
            let pems: Vec<&str> = pems.iter().map(String::as_str).collect();
            let crl = dirs.authority()?.vehicle_revocation_list(&pems, days)?;
            let path = dirs.out.join("vehicles.crl.pem");
            certs::write_revocation_list(&path, &crl)?;
            return Ok(vec![path]);
        }
        Command::Init { out, names, force } => return Ok(DevPki::init(&out, &names, force)?.files()),
        Command::Vehicle { vin, dirs } => {
            // Validate before touching the CA, so a typo is reported as such.
            let vin = proto::Vin::parse(&vin)?;
            (dirs.authority()?.issue_vehicle(&vin)?, dirs, vin.to_string())
        }
        Command::Partner { name, dirs } => {
            certs::check_name(Role::Partner, &name)?;
            (dirs.authority()?.issue_partner(&name)?, dirs, name)
        }
        Command::Operator { name, dirs } => {
            certs::check_name(Role::Operator, &name)?;
            (dirs.authority()?.issue_operator(&name)?, dirs, name)
        }
    };
    let (cert, key) = issued.write(&dirs.out, &stem)?;
    Ok(vec![cert, key])
}
