//! The gateway program, built by cargo for this crate's tests (see `process.rs`): the same
//! `gateway::cli::main` as the `gateway` binary.

fn main() -> std::process::ExitCode {
    gateway::cli::main()
}
