//! Publishing events through the gateway's `events.v1.PartnerEvents`: the partner's own
//! certificate may publish for its service and for no other. This checks the partner's
//! setup (its certificate, and the gateway's `[[partners]]` entry naming it), not the adapter.

use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt as _;
use prost::Message as _;
use proto::events::v1::{PublishRequest, PublishResponse};
use tonic::Code;

use crate::checks::GIVE_UP_AFTER;
use crate::connection::{Answer, CallMetadata, Connection};
use crate::report::{Contract, Outcome, section};
use crate::{Check, Kit, PartnerApi, probe_vin};

const PUBLISH: &str = "/events.v1.PartnerEvents/Publish";

/// A service no partner has: publishing for it must be refused.
pub const NOT_YOURS: &str = "partnerkit.v1.NobodysService";

/// How long the gateway keeps the kit's probe event for a car that does not exist.
const PROBE_TTL: Duration = Duration::from_secs(60);

const PUSHING_EVENTS: Contract = Contract::new(
    section::PUSHING_EVENTS,
    "a partner publishes with its own certificate (OU=partner, CN=<name>) for the service whose [[partners]] entry says name = \"<name>\"; any other service is PERMISSION_DENIED",
);

/// The events checks, in the order they run.
pub const CHECKS: &[Check] = &[
    Check {
        name: "events.publish-own-service",
        contract: PUSHING_EVENTS,
        run: |kit| own_service(kit).boxed(),
    },
    Check {
        name: "events.publish-other-service",
        contract: PUSHING_EVENTS,
        run: |kit| other_service(kit).boxed(),
    },
];

async fn publish(kit: &Kit, api: &PartnerApi, service: &str) -> Answer {
    let tls = match kit.config.anchors.client_config(Some(&api.certificate)) {
        Ok(tls) => tls,
        Err(e) => return Answer::Transport(format!("{e:#}")),
    };
    let mut connection = match Connection::open(&api.endpoint, tls).await {
        Ok(connection) => connection,
        Err(e) => return Answer::Transport(e.message),
    };
    let event = PublishRequest {
        vin: probe_vin(),
        service: service.into(),
        kind: "partner-kit.probe".into(),
        payload: Vec::new(),
        event_id: crate::probe_key(),
        ttl_seconds: u32::try_from(PROBE_TTL.as_secs()).unwrap_or(u32::MAX),
    };
    let metadata = CallMetadata {
        vin: None,
        idempotency_key: None,
        deadline: Some(Duration::from_secs(5)),
    };
    connection
        .call(PUBLISH, Bytes::from(event.encode_to_vec()), &metadata, GIVE_UP_AFTER)
        .await
        .answer
}

fn skipped() -> Outcome {
    Outcome::Skip("no --partner-api, --partner-cert and --partner-key given: publishing events was not tried".into())
}

async fn own_service(kit: &Kit) -> Outcome {
    let Some(api) = &kit.config.partner_api else {
        return skipped();
    };
    let service = &kit.config.service;
    let answer = publish(kit, api, service).await;
    match &answer {
        Answer::Ok(bytes) => {
            let sequence = PublishResponse::decode(bytes.clone())
                .map(|r| r.sequence)
                .unwrap_or_default();
            Outcome::Pass(format!("published an event for {service} (sequence {sequence})"))
        }
        Answer::Status(Code::PermissionDenied, message) => Outcome::Fail(format!(
            "the gateway refused an event for {service} from this certificate: PERMISSION_DENIED {message:?}; \
             its [[partners]] entry for {service} must say name = \"<your certificate's CN>\""
        )),
        Answer::Transport(e) => Outcome::Fail(format!(
            "cannot reach the partner API with the partner's certificate: {e} \
             (it must be signed by the partners CA, which partner_api.client_ca names)"
        )),
        other => Outcome::Fail(format!("Publish for {service}: expected OK, got {}", other.describe())),
    }
}

async fn other_service(kit: &Kit) -> Outcome {
    let Some(api) = &kit.config.partner_api else {
        return skipped();
    };
    let answer = publish(kit, api, NOT_YOURS).await;
    match &answer {
        Answer::Status(Code::PermissionDenied, _) => {
            Outcome::Pass(format!("Publish for {NOT_YOURS}: {}", answer.describe()))
        }
        Answer::Ok(_) => Outcome::Fail(format!(
            "the gateway let this certificate publish for {NOT_YOURS}, a service that is not its own"
        )),
        other => Outcome::Fail(format!(
            "Publish for {NOT_YOURS}: expected PERMISSION_DENIED, got {}",
            other.describe()
        )),
    }
}
