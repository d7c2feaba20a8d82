//! The vehicle agent program, built by cargo for this crate's tests (see `process.rs`): the
//! same `vehicle_agent::cli::main` as the `vehicle-agent` binary.

fn main() -> std::process::ExitCode {
    vehicle_agent::cli::main()
}
