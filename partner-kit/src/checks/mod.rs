//! The checks every service gets, whatever its messages: mutual TLS ([`mtls`]), the metadata
//! and deadlines ([`calls`]) and malformed messages. Service-specific checks live in
//! [`crate::profile`].

pub mod calls;
pub mod mtls;

use std::time::Duration;

use futures::FutureExt as _;
use tonic::Code;

use crate::connection::{Answer, Connection, code_name};
use crate::report::Outcome;
use crate::{Check, Kit, Probe};

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

/// Runs `check`; an early `Err` is its outcome.
pub async fn outcome(check: impl Future<Output = Result<Outcome, Outcome>>) -> Outcome {
    check.await.unwrap_or_else(|outcome| outcome)
}

/// `probe`, the call a check makes, and a connection as the gateway to make it on; or the
/// outcome of a check that cannot make it: no method to call ([`needs_a_method`]), or no
/// connection ([`no_connection`]).
pub async fn connected(kit: &Kit, probe: Option<Probe>) -> Result<(Probe, Connection), Outcome> {
    let probe = probe.ok_or_else(|| needs_a_method(kit))?;
    let connection = kit.connect_as_gateway().await.map_err(|e| no_connection(&e))?;
    Ok((probe, connection))
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
