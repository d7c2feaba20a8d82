//! What every call carries: the car (`x-vehicle-vin`, required for a call that acts for a
//! car), the deadline (`grpc-timeout`, honoured) and a message (refused when malformed).

use std::time::Duration;

use bytes::Bytes;
use tonic::Code;

use super::{GIVE_UP_AFTER, connected, expect_codes, outcome};
use crate::connection::{Answer, CallMetadata, code_name};
use crate::report::{Contract, Outcome, section};
use crate::{Kit, probe_key};

/// `x-vehicle-vin` is who calls, and the only identity to trust.
pub const VIN: Contract = Contract::new(
    section::EVERY_CALL,
    "x-vehicle-vin is the calling car: a call that acts for a car without it is UNAUTHENTICATED (or INVALID_ARGUMENT)",
);

/// The deadline is `grpc-timeout`: an answer after it is wasted.
pub const DEADLINE: Contract = Contract::new(
    section::EVERY_CALL,
    "grpc-timeout is what is left of the car's deadline: stop at it (DEADLINE_EXCEEDED or CANCELLED), never answer after it",
);

/// Bytes that are not a protobuf message are refused, never acted on.
pub const MALFORMED: Contract = Contract::new(
    section::ERRORS,
    "a message that does not decode is INVALID_ARGUMENT (INTERNAL, what tonic and grpcio answer by themselves, is accepted), never OK",
);

/// The short deadline the kit gives: shorter than any real work, longer than nothing.
pub const SHORT_DEADLINE: Duration = Duration::from_millis(10);

/// The normal deadline, and the share of it a harmless call may take.
const NORMAL_DEADLINE: Duration = Duration::from_secs(5);
const WELL_WITHIN: Duration = Duration::from_millis(2500);

/// Field 1, length-delimited, announcing 5 bytes and carrying 1: no decoder accepts it.
const TRUNCATED_MESSAGE: &[u8] = &[0x0a, 0x05, 0x01];

/// A call acting for a car, without `x-vehicle-vin`, is refused.
pub async fn vin_required(kit: &Kit) -> Outcome {
    outcome(async {
        let (probe, mut connection) = connected(kit, kit.call_needing_a_car()).await?;
        let metadata = CallMetadata {
            vin: None,
            ..CallMetadata::from_car("", &probe_key())
        };
        let answered = connection
            .call(&probe.method, probe.message, &metadata, GIVE_UP_AFTER)
            .await;
        let what = format!("{} without x-vehicle-vin", probe.method);
        Ok(match answered.answer {
            Answer::Ok(_) => Outcome::Fail(format!(
                "{what}: answered OK, acting for a car it cannot know (does it read the car from the request body?)"
            )),
            answer => expect_codes(&what, &answer, &[Code::Unauthenticated, Code::InvalidArgument]),
        })
    })
    .await
}

/// A call with a 10 ms deadline ends by the deadline (plus slack), and never with OK after it.
pub async fn short_deadline(kit: &Kit) -> Outcome {
    outcome(async {
        let (probe, mut connection) = connected(kit, kit.harmless_call()).await?;
        let slack = kit.config.deadline_slack;
        let metadata = CallMetadata {
            deadline: Some(SHORT_DEADLINE),
            ..CallMetadata::from_probe_car()
        };
        let answered = connection
            .call(&probe.method, probe.message, &metadata, SHORT_DEADLINE + slack)
            .await;
        let ms = answered.elapsed.as_millis();
        let what = format!("{} with grpc-timeout {SHORT_DEADLINE:?}", probe.method);
        Ok(match &answered.answer {
            Answer::Status(code @ (Code::DeadlineExceeded | Code::Cancelled), _) => {
                Outcome::Pass(format!("{what}: {} after {ms} ms", code_name(*code)))
            }
            Answer::Transport(_) if answered.elapsed >= SHORT_DEADLINE + slack => Outcome::Fail(format!(
                "{what}: still no answer {slack:?} after the deadline passed: the adapter does not stop at grpc-timeout \
                 (read it from your framework: context.time_remaining() in grpcio)"
            )),
            Answer::Transport(e) => Outcome::Fail(format!("{what}: the connection failed: {e}")),
            answer if answered.elapsed <= SHORT_DEADLINE => Outcome::Pass(format!(
                "{what}: answered {} in {ms} ms, before the deadline passed",
                answer.describe()
            )),
            answer => Outcome::Pass(format!(
                "{what}: answered {} in {ms} ms, within the {slack:?} the kit allows past the deadline for the network",
                answer.describe()
            )),
        })
    })
    .await
}

/// A harmless call with the gateway's usual 5 s deadline is answered well within it.
pub async fn normal_deadline(kit: &Kit) -> Outcome {
    outcome(async {
        let (probe, mut connection) = connected(kit, kit.harmless_call()).await?;
        let metadata = CallMetadata {
            deadline: Some(NORMAL_DEADLINE),
            ..CallMetadata::from_probe_car()
        };
        let answered = connection
            .call(
                &probe.method,
                probe.message,
                &metadata,
                NORMAL_DEADLINE + kit.config.deadline_slack,
            )
            .await;
        let ms = answered.elapsed.as_millis();
        let what = format!("{} with grpc-timeout {NORMAL_DEADLINE:?}", probe.method);
        let answer = &answered.answer;
        Ok(match answer.code() {
            Some(_) if answered.elapsed > WELL_WITHIN => Outcome::Fail(format!(
                "{what}: answered {} after {ms} ms, more than {WELL_WITHIN:?}",
                answer.describe()
            )),
            Some(Code::Ok) => Outcome::Pass(format!("{what}: OK in {ms} ms")),
            Some(code @ (Code::DeadlineExceeded | Code::Cancelled | Code::Unavailable)) => Outcome::Fail(format!(
                "{what}: {} after {ms} ms: a deadline of 5 s was not enough for a harmless call ({})",
                code_name(code),
                answer.describe()
            )),
            Some(_) if !probe.expects_ok => Outcome::Pass(format!("{what}: {} in {ms} ms", answer.describe())),
            _ => Outcome::Fail(format!("{what}: expected OK, got {}", answer.describe())),
        })
    })
    .await
}

/// Bytes that do not decode as the method's request are refused.
pub async fn malformed_message(kit: &Kit) -> Outcome {
    outcome(async {
        let (probe, mut connection) = connected(kit, kit.harmless_call()).await?;
        let answered = connection
            .call(
                &probe.method,
                Bytes::from_static(TRUNCATED_MESSAGE),
                &CallMetadata::from_probe_car(),
                GIVE_UP_AFTER,
            )
            .await;
        Ok(expect_codes(
            &format!("{} with a truncated protobuf message", probe.method),
            &answered.answer,
            &[Code::InvalidArgument, Code::Internal],
        ))
    })
    .await
}
