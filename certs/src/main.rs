//! `certs`: creates the development PKI (see the `certs` library).

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
