//! The reference parking adapter program, built by cargo for this crate's tests (see
//! `process.rs`): the same `parking_adapter::cli::main` as the `parking-adapter` binary.

fn main() -> std::process::ExitCode {
    parking_adapter::cli::main()
}
