//! `vehicle-agent`: see [`vehicle_agent::cli`].

fn main() -> std::process::ExitCode {
    vehicle_agent::cli::main()
}
