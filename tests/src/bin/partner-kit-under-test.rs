//! The partner kit, built by cargo for this crate's tests (see `process.rs`): the same
//! `partner_kit::cli::main` as the `partner-kit` binary.

fn main() -> std::process::ExitCode {
    partner_kit::cli::main()
}
