//! `partner-kit`: checks a partner adapter against the partner contract.
//!
//! ```text
//! partner-kit check --endpoint https://localhost:50061 --ca ca.pem \
//!     --client-cert gateway-client.pem --client-key gateway-client.key
//! ```

fn main() -> std::process::ExitCode {
    partner_kit::cli::main()
}
