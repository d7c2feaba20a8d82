//! `parking-adapter`: runs the reference parking partner service; see `cli.rs` for the options.

fn main() -> std::process::ExitCode {
    parking_adapter::cli::main()
}
