//! `parking.v1.ParkingPayment`: cars kept apart by `x-vehicle-vin`, StartSession and
//! EndSession once per idempotency key, and the error codes of its contract.
//!
//! Every session the kit starts it ends, under VINs no real car has ([`crate::probe_vin`]), so
//! a run leaves nothing open and runs never meet.

use bytes::Bytes;
use futures::FutureExt as _;
use prost::Message;
use proto::parking::v1::{
    EndSessionRequest, EndSessionResponse, GeoPoint, ListNearbyLotsRequest, ListNearbyLotsResponse,
    StartSessionRequest, StartSessionResponse,
};
use tonic::Code;

use super::{Probe, Profile};
use crate::checks::{GIVE_UP_AFTER, expect_codes, no_connection, outcome};
use crate::connection::{Answer, CallMetadata, Connection};
use crate::report::{Contract, Outcome, section};
use crate::{Check, Kit, probe_key, probe_vin};

const SERVICE: &str = "parking.v1.ParkingPayment";
const LIST: &str = "/parking.v1.ParkingPayment/ListNearbyLots";
const START: &str = "/parking.v1.ParkingPayment/StartSession";
const END: &str = "/parking.v1.ParkingPayment/EndSession";

/// Where the kit looks for a lot: central Shanghai, 50 km around.
const SEARCH_FROM: GeoPoint = GeoPoint {
    latitude: 31.2304,
    longitude: 121.4737,
};
const SEARCH_RADIUS_M: u32 = 50_000;
const PLATE: &str = "沪A12345";
const NO_SUCH_LOT: &str = "partner-kit-no-such-lot";
const NO_SUCH_SESSION: &str = "partner-kit-no-such-session";

/// Dedupe side effects on (x-vehicle-vin, idempotency-key).
const IDEMPOTENCY: Contract = Contract::new(
    section::EVERY_CALL,
    "deduplicate side effects on (x-vehicle-vin, idempotency-key): store the answer per key and replay it",
);

/// Each car sees only its own sessions.
const ISOLATION: Contract = Contract::new(
    section::EVERY_CALL,
    "x-vehicle-vin is the only identity to trust: another car's session is NOT_FOUND (or PERMISSION_DENIED)",
);

/// The parking profile.
pub struct Parking;

impl Profile for Parking {
    fn service(&self) -> &'static str {
        SERVICE
    }

    fn harmless_call(&self) -> Probe {
        Probe {
            method: LIST.into(),
            message: lots_near(1).encode_to_vec().into(),
            expects_ok: true,
        }
    }

    fn call_needing_a_car(&self) -> Probe {
        // Ending a session that does not exist: refused whoever asks, so it never acts, even
        // on an adapter that lets anyone in.
        Probe {
            method: END.into(),
            message: end(NO_SUCH_SESSION).encode_to_vec().into(),
            expects_ok: false,
        }
    }

    fn checks(&self) -> &'static [Check] {
        CHECKS
    }
}

const CHECKS: &[Check] = &[
    Check {
        name: "metadata.vin-isolation",
        contract: ISOLATION,
        run: |kit| vin_isolation(kit).boxed(),
    },
    Check {
        name: "idempotency.start-session",
        contract: IDEMPOTENCY,
        run: |kit| start_once_per_key(kit).boxed(),
    },
    Check {
        name: "idempotency.end-session",
        contract: IDEMPOTENCY,
        run: |kit| end_once_per_key(kit).boxed(),
    },
    Check {
        name: "errors.unknown-lot",
        contract: Contract::new(section::ERRORS, "a lot that does not exist is NOT_FOUND"),
        run: |kit| unknown_lot(kit).boxed(),
    },
    Check {
        name: "errors.unknown-session",
        contract: Contract::new(section::ERRORS, "a session that does not exist is NOT_FOUND"),
        run: |kit| unknown_session(kit).boxed(),
    },
    Check {
        name: "errors.empty-fields",
        contract: Contract::new(
            section::ERRORS,
            "a request without its required fields is INVALID_ARGUMENT",
        ),
        run: |kit| empty_fields(kit).boxed(),
    },
];

fn lots_near(max_results: u32) -> ListNearbyLotsRequest {
    ListNearbyLotsRequest {
        near: Some(SEARCH_FROM),
        radius_m: SEARCH_RADIUS_M,
        max_results,
    }
}

fn start(lot_id: &str) -> StartSessionRequest {
    StartSessionRequest {
        lot_id: lot_id.into(),
        plate: PLATE.into(),
    }
}

fn end(session_id: &str) -> EndSessionRequest {
    EndSessionRequest {
        session_id: session_id.into(),
    }
}

/// The gateway's connection to the parking adapter, calling as any car.
struct Gateway {
    connection: Connection,
}

impl Gateway {
    async fn open(kit: &Kit) -> Result<Gateway, Outcome> {
        match kit.connect_as_gateway().await {
            Ok(connection) => Ok(Gateway { connection }),
            Err(e) => Err(no_connection(&e)),
        }
    }

    /// The connection and a lot to park at, for a check that starts sessions.
    async fn open_at_a_lot(kit: &Kit) -> Result<(Gateway, String), Outcome> {
        let mut gateway = Gateway::open(kit).await?;
        let lot = gateway.lot().await?;
        Ok((gateway, lot))
    }

    async fn call(&mut self, method: &str, message: &impl Message, vin: &str, key: &str) -> Answer {
        let message = Bytes::from(message.encode_to_vec());
        let metadata = CallMetadata::from_car(vin, key);
        self.connection
            .call(method, message, &metadata, GIVE_UP_AFTER)
            .await
            .answer
    }

    /// A lot to park at, from ListNearbyLots.
    async fn lot(&mut self) -> Result<String, Outcome> {
        let answer = self.call(LIST, &lots_near(1), &probe_vin(), &probe_key()).await;
        let lots = match &answer {
            Answer::Ok(bytes) => ListNearbyLotsResponse::decode(bytes.clone()).map_err(|e| {
                Outcome::Fail(format!(
                    "ListNearbyLots answered bytes that are not a ListNearbyLotsResponse: {e}"
                ))
            })?,
            _ => {
                return Err(Outcome::Fail(format!(
                    "ListNearbyLots, to find a lot to park at, answered {}",
                    answer.describe()
                )));
            }
        };
        match lots.lots.into_iter().next() {
            Some(lot) => Ok(lot.lot_id),
            None => Err(Outcome::Skip(format!(
                "ListNearbyLots found no lot within {SEARCH_RADIUS_M} m of ({}, {}): the kit parks near Shanghai's centre",
                SEARCH_FROM.latitude, SEARCH_FROM.longitude
            ))),
        }
    }

    /// Calls `method` as `car` expecting a refusal; a session a StartSession starts anyway is
    /// ended, so that the run leaves nothing open.
    async fn call_to_be_refused(&mut self, method: &str, message: &impl Message, car: &str) -> Answer {
        let answer = self.call(method, message, car, &probe_key()).await;
        if method == START
            && let Some(session) = session_of(&answer)
        {
            self.call(END, &end(&session), car, &probe_key()).await;
        }
        answer
    }

    /// Starts a session for `vin` at `lot`: its id, or the outcome saying why not.
    async fn started(&mut self, vin: &str, key: &str, lot: &str, who: &str) -> Result<(String, Answer), Outcome> {
        let answer = self.call(START, &start(lot), vin, key).await;
        match session_of(&answer) {
            Some(id) => Ok((id, answer)),
            None => Err(Outcome::Fail(format!(
                "StartSession as {who} at lot {lot:?}: expected OK with a session, got {}",
                answer.describe()
            ))),
        }
    }
}

fn session_of(answer: &Answer) -> Option<String> {
    match answer {
        Answer::Ok(bytes) => StartSessionResponse::decode(bytes.clone())
            .ok()?
            .session
            .map(|s| s.session_id)
            .filter(|id| !id.is_empty()),
        _ => None,
    }
}

async fn vin_isolation(kit: &Kit) -> Outcome {
    outcome(async {
        let (mut gateway, lot) = Gateway::open_at_a_lot(kit).await?;
        let (car_a, car_b) = (probe_vin(), probe_vin());
        let (session, _) = gateway.started(&car_a, &probe_key(), &lot, "car A").await?;
        let by_b = gateway.call(END, &end(&session), &car_b, &probe_key()).await;
        let verdict = match by_b.code() {
            Some(Code::NotFound | Code::PermissionDenied) => Outcome::Pass(format!(
                "car B ending car A's session {session}: {}",
                by_b.describe()
            )),
            Some(Code::Ok) => Outcome::Fail(format!(
                "car B ended car A's session {session} and was answered OK: the adapter does not keep cars apart by x-vehicle-vin \
                 (does it read the car from the request body, or not at all?)"
            )),
            _ => expect_codes(
                &format!("car B ending car A's session {session}"),
                &by_b,
                &[Code::NotFound, Code::PermissionDenied],
            ),
        };
        gateway.call(END, &end(&session), &car_a, &probe_key()).await;
        Ok(verdict)
    })
    .await
}

async fn start_once_per_key(kit: &Kit) -> Outcome {
    outcome(async {
        let (mut gateway, lot) = Gateway::open_at_a_lot(kit).await?;
        let car = probe_vin();
        let key = probe_key();
        let (first, first_answer) = gateway.started(&car, &key, &lot, "a car").await?;
        let retry = gateway.call(START, &start(&lot), &car, &key).await;
        let replayed = matches!((&first_answer, &retry), (Answer::Ok(a), Answer::Ok(b)) if a == b);
        let ended = gateway.call(END, &end(&first), &car, &probe_key()).await;
        if let Some(other) = session_of(&retry).filter(|other| *other != first) {
            gateway.call(END, &end(&other), &car, &probe_key()).await;
        }
        if !replayed {
            let retry_said = match session_of(&retry) {
                Some(other) if other != first => format!("session {other}: a second session for one intent"),
                Some(_) => "the same session, but not the same answer byte for byte".into(),
                None => retry.describe(),
            };
            return Ok(Outcome::Fail(format!(
                "StartSession twice with idempotency-key {key}: the first answered session {first}, the retry {retry_said}"
            )));
        }
        if ended.code() != Some(Code::Ok) {
            return Ok(Outcome::Fail(format!(
                "EndSession of session {first}, to start another, answered {}",
                ended.describe()
            )));
        }
        let (second, _) = gateway.started(&car, &probe_key(), &lot, "the same car with a new key").await?;
        gateway.call(END, &end(&second), &car, &probe_key()).await;
        if second == first {
            return Ok(Outcome::Fail(format!(
                "a new idempotency-key after the session ended gave session {first} again: a new intent is a new session"
            )));
        }
        Ok(Outcome::Pass(format!(
            "the same key twice: the same answer byte for byte (session {first}); a new key: a new session ({second})"
        )))
    })
    .await
}

async fn end_once_per_key(kit: &Kit) -> Outcome {
    outcome(async {
        let (mut gateway, lot) = Gateway::open_at_a_lot(kit).await?;
        let car = probe_vin();
        let (session, _) = gateway.started(&car, &probe_key(), &lot, "a car").await?;
        let key = probe_key();
        let first = gateway.call(END, &end(&session), &car, &key).await;
        let Answer::Ok(first_bytes) = &first else {
            return Ok(Outcome::Fail(format!(
                "EndSession of session {session}: expected OK, got {}",
                first.describe()
            )));
        };
        let retry = gateway.call(END, &end(&session), &car, &key).await;
        let receipt = |bytes: &Bytes| {
            EndSessionResponse::decode(bytes.clone())
                .ok()
                .and_then(|r| r.receipt)
                .map(|r| format!("receipt {:?}, payment {:?}", r.receipt_id, r.payment_reference))
                .unwrap_or_else(|| "no receipt".into())
        };
        Ok(match &retry {
            Answer::Ok(bytes) if bytes == first_bytes => Outcome::Pass(format!(
                "EndSession twice with one key: the same answer byte for byte ({})",
                receipt(first_bytes)
            )),
            Answer::Ok(bytes) => Outcome::Fail(format!(
                "EndSession twice with idempotency-key {key}: the first answered {}, the retry {}: a retry must replay the first answer (one charge)",
                receipt(first_bytes),
                receipt(bytes)
            )),
            other => Outcome::Fail(format!(
                "EndSession twice with idempotency-key {key}: the first answered OK ({}), the retry {}",
                receipt(first_bytes),
                other.describe()
            )),
        })
    })
    .await
}

/// One call, as a new car, that must be refused with one of `codes`; `what` names it.
async fn refused(kit: &Kit, what: &str, method: &str, message: &impl Message, codes: &[Code]) -> Outcome {
    outcome(async {
        let mut gateway = Gateway::open(kit).await?;
        let answer = gateway.call_to_be_refused(method, message, &probe_vin()).await;
        Ok(expect_codes(what, &answer, codes))
    })
    .await
}

async fn unknown_lot(kit: &Kit) -> Outcome {
    let what = format!("StartSession at lot {NO_SUCH_LOT:?}, which does not exist");
    refused(kit, &what, START, &start(NO_SUCH_LOT), &[Code::NotFound]).await
}

async fn unknown_session(kit: &Kit) -> Outcome {
    let what = format!("EndSession of session {NO_SUCH_SESSION:?}, which does not exist");
    refused(kit, &what, END, &end(NO_SUCH_SESSION), &[Code::NotFound]).await
}

async fn empty_fields(kit: &Kit) -> Outcome {
    outcome(async {
        let mut gateway = Gateway::open(kit).await?;
        let car = probe_vin();
        let empty_start = gateway
            .call_to_be_refused(START, &StartSessionRequest::default(), &car)
            .await;
        let empty_end = gateway.call_to_be_refused(END, &end(""), &car).await;
        let checks = [
            expect_codes(
                "StartSession without lot_id and plate",
                &empty_start,
                &[Code::InvalidArgument],
            ),
            expect_codes("EndSession without session_id", &empty_end, &[Code::InvalidArgument]),
        ];
        let failed: Vec<_> = checks
            .iter()
            .filter(|o| matches!(o, Outcome::Fail(_)))
            .map(Outcome::reason)
            .collect();
        let all: Vec<_> = checks.iter().map(Outcome::reason).collect();
        Ok(if failed.is_empty() {
            Outcome::Pass(all.join("; "))
        } else {
            Outcome::Fail(failed.join("; "))
        })
    })
    .await
}
