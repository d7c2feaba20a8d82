//! The checks every service gets, whatever its messages: mutual TLS ([`mtls`]), the metadata
//! and deadlines ([`calls`]) and malformed messages. Service-specific checks live in
//! [`crate::profile`].

pub mod calls;
pub mod mtls;

use std::time::Duration;

use futures::FutureExt as _;
use tonic::Code;

use crate::connection::{Answer, code_name};
use crate::report::{Contract, Outcome};
use crate::{Check, Kit};

/// Longest the kit waits for an answer to a call with the normal 5 s deadline.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(10);

/// The checks every service gets, in the order they run.
pub const GENERIC: &[Check] = &[
    Check {
        name: "mtls.gateway-certificate",
        contract: mtls::CONNECTING,
        run: |kit| mtls::gateway_certificate(kit).boxed(),
    },
    Check {
        name: "mtls.no-client-certificate",
        contract: mtls::CONNECTING,
        run: |kit| mtls::no_client_certificate(kit).boxed(),
    },
    Check {
        name: "mtls.forged-gateway-certificate",
        contract: mtls::CONNECTING,
        run: |kit| mtls::forged_gateway_certificate(kit).boxed(),
    },
    Check {
        name: "mtls.vehicle-certificate",
        contract: mtls::ONLY_THE_GATEWAY,
        run: |kit| mtls::vehicle_certificate(kit).boxed(),
    },
    Check {
        name: "mtls.role-check",
        contract: mtls::ROLE,
        run: |kit| mtls::role_check(kit).boxed(),
    },
    Check {
        name: "metadata.vin-required",
        contract: calls::VIN,
        run: |kit| calls::vin_required(kit).boxed(),
    },
    Check {
        name: "deadline.short",
        contract: calls::DEADLINE,
        run: |kit| calls::short_deadline(kit).boxed(),
    },
    Check {
        name: "deadline.normal",
        contract: calls::DEADLINE,
        run: |kit| calls::normal_deadline(kit).boxed(),
    },
    Check {
        name: "errors.malformed-message",
        contract: calls::MALFORMED,
        run: |kit| calls::malformed_message(kit).boxed(),
    },
];

/// PASS if `answer` is one of `expected`, else FAIL saying what came instead; `what` names the
/// call, e.g. "StartSession for a lot that does not exist".
pub fn expect_codes(what: &str, answer: &Answer, expected: &[Code]) -> Outcome {
    let names = expected.iter().map(|c| code_name(*c)).collect::<Vec<_>>().join(" or ");
    match answer.code() {
        Some(code) if expected.contains(&code) => Outcome::Pass(format!("{what}: {}", answer.describe())),
        _ => Outcome::Fail(format!("{what}: expected {names}, got {}", answer.describe())),
    }
}

/// The outcome of a check that could not even connect as the gateway.
pub fn no_connection(error: &impl std::fmt::Display) -> Outcome {
    Outcome::Fail(format!(
        "cannot connect with the gateway's client certificate ({error}); see mtls.gateway-certificate"
    ))
}

/// What a check that needs a method says when it has none.
pub fn needs_a_method(kit: &Kit) -> Outcome {
    Outcome::Skip(format!(
        "no profile for {} and no --method given: name a method of the service for the kit to call",
        kit.config.service
    ))
}

/// The contract's section on errors.
pub const ERRORS: &str = "docs/partners.md#errors";

/// A contract sentence in the errors section.
pub const fn errors_say(says: &'static str) -> Contract {
    Contract { section: ERRORS, says }
}
