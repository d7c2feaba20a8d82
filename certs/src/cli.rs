//! Command line of `certs`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use certs::{CertificateAuthority, CertsError, DevPki};
use clap::{Parser, Subcommand};

/// Development PKI for the connected-car platform: one CA, the gateway, vehicles and partners.
#[derive(Debug, Parser)]
#[command(name = "certs", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a CA and the gateway's server certificate.
    Init {
        /// Directory to write ca.pem, ca.key, gateway.pem and gateway.key to.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Extra host name or IP address of the gateway (besides localhost, 127.0.0.1 and ::1).
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
        /// Replace an existing CA (every certificate it signed stops being trusted).
        #[arg(long)]
        force: bool,
    },
    /// Issue a vehicle certificate: <OUT>/<VIN>.pem and <OUT>/<VIN>.key.
    Vehicle {
        /// The vehicle's VIN (17 characters, no I, O or Q).
        vin: String,
        /// Directory to write the certificate and key to.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Directory holding ca.pem and ca.key [default: the --out directory].
        #[arg(long, value_name = "DIR")]
        ca: Option<PathBuf>,
    },
    /// Issue a partner adapter certificate (client and server): <OUT>/<NAME>.pem and <OUT>/<NAME>.key.
    Partner {
        /// The partner's name (1 to 64 characters of a-z, 0-9 and '-').
        name: String,
        /// Directory to write the certificate and key to.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Directory holding ca.pem and ca.key [default: the --out directory].
        #[arg(long, value_name = "DIR")]
        ca: Option<PathBuf>,
    },
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
    match cli.command {
        Command::Init { out, names, force } => Ok(DevPki::init(&out, &names, force)?.files().to_vec()),
        Command::Vehicle { vin, out, ca } => {
            // Validate before touching the CA, so a typo is reported as such.
            let vin = proto::Vin::parse(&vin)?;
            let issued = load_ca(&out, ca.as_deref())?.issue_vehicle(&vin)?;
            written(issued.write(&out, vin.as_str())?)
        }
        Command::Partner { name, out, ca } => {
            certs::check_partner_name(&name)?;
            let issued = load_ca(&out, ca.as_deref())?.issue_partner(&name)?;
            written(issued.write(&out, &name)?)
        }
    }
}

fn load_ca(out: &Path, ca: Option<&Path>) -> Result<CertificateAuthority, CertsError> {
    CertificateAuthority::load(ca.unwrap_or(out))
}

fn written((cert, key): (PathBuf, PathBuf)) -> Result<Vec<PathBuf>, CertsError> {
    Ok(vec![cert, key])
}
