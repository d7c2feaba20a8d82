//! The idempotency ledger under any interleaving of retries with one idempotency key, each
//! used as the request router uses it (admit; if admitted, call the partner, then
//! `finish_later`), against a partner whose successive calls answer as scripted: OK, a final
//! error, or a transient failure (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED), which
//! the ledger does not store, so a retry after one may call the partner again.
//!
//! The property, precisely:
//! - at most one partner call is in progress for the key at any moment;
//! - at most one partner call gets a final answer, and none is made after it;
//! - every attempt is answered either with a transient failure or with that final answer
//!   (status and payload identical), under its own request id;
//! - once the outcomes are recorded, a further retry gets the final answer without calling the
//!   partner; if there was none, it may call the partner again.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use gateway::routing::Ledger;
use gateway::routing::idempotency::Admission;
use gateway::store::Store;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use proto::Vin;
use proto::vehicle::v1::{Code, Response};
use tokio::time::Instant;

const METHOD: &str = "/parking.v1.ParkingPayment/StartSession";
const PAYLOAD: &[u8] = b"\x0a\x02hi";

/// What one partner call answers.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Ok(u8),
    NotFound,
    Unavailable,
    DeadlineExceeded,
    ResourceExhausted,
}

impl Outcome {
    fn is_final(self) -> bool {
        matches!(self, Outcome::Ok(_) | Outcome::NotFound)
    }

    fn response(self, request_id: &str) -> Response {
        match self {
            Outcome::Ok(byte) => Response::ok(request_id, vec![byte]),
            Outcome::NotFound => Response::error(request_id, Code::NotFound, "no such lot"),
            Outcome::Unavailable => Response::error(request_id, Code::Unavailable, "partner restarting"),
            Outcome::DeadlineExceeded => Response::error(request_id, Code::DeadlineExceeded, "too slow"),
            Outcome::ResourceExhausted => Response::error(request_id, Code::ResourceExhausted, "busy"),
        }
    }
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        any::<u8>().prop_map(Outcome::Ok),
        Just(Outcome::NotFound),
        Just(Outcome::Unavailable),
        Just(Outcome::DeadlineExceeded),
        Just(Outcome::ResourceExhausted),
    ]
}

/// One retry: how long it waits before asking the ledger and, if admitted, how long its
/// partner call takes (both in scheduler yields), and which request id it carries.
#[derive(Debug, Clone)]
struct Attempt {
    starts_after: u8,
    call_takes: u8,
    request_id: u8,
}

fn attempt() -> impl Strategy<Value = Attempt> {
    (0..20u8, 0..20u8, 0..3u8).prop_map(|(starts_after, call_takes, request_id)| Attempt {
        starts_after,
        call_takes,
        request_id,
    })
}

/// A partner answering its successive calls as scripted (the last outcome repeats), counting
/// calls and how many overlap.
struct Partner {
    script: Vec<Outcome>,
    calls: AtomicUsize,
    in_progress: AtomicUsize,
    most_at_once: AtomicUsize,
}

impl Partner {
    async fn call(&self, request_id: &str, takes: u8) -> Response {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.in_progress.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_at_once.fetch_max(now, Ordering::SeqCst);
        for _ in 0..takes {
            tokio::task::yield_now().await;
        }
        self.in_progress.fetch_sub(1, Ordering::SeqCst);
        self.script[n.min(self.script.len() - 1)].response(request_id)
    }
}

/// One retry, as the request router makes it.
async fn retry(ledger: Arc<Ledger>, partner: Arc<Partner>, key: String, attempt: Attempt) -> (String, Response) {
    for _ in 0..attempt.starts_after {
        tokio::task::yield_now().await;
    }
    let vin = Vin::parse("WBA3B5C50DF123456").unwrap();
    let request_id = format!("r-{}", attempt.request_id);
    let deadline = Instant::now() + Duration::from_secs(30);
    let response = match ledger.admit(&vin, &key, METHOD, PAYLOAD, &request_id, deadline).await {
        Admission::Answer(response) => response,
        Admission::Proceed(claim) => {
            let response = partner.call(&request_id, attempt.call_takes).await;
            ledger.finish_later(claim, response.clone());
            response
        }
    };
    (request_id, response)
}

fn code(response: &Response) -> Code {
    response.status.clone().unwrap_or_default().code()
}

fn is_transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted
    )
}

/// The answer without the request id it was addressed with.
fn content(response: &Response) -> (Option<proto::vehicle::v1::Status>, Vec<u8>) {
    (response.status.clone(), response.payload.clone())
}

async fn retries_with_one_key(ledger: Arc<Ledger>, key: String, script: Vec<Outcome>, attempts: Vec<Attempt>) {
    let partner = Arc::new(Partner {
        script: script.clone(),
        calls: AtomicUsize::new(0),
        in_progress: AtomicUsize::new(0),
        most_at_once: AtomicUsize::new(0),
    });
    let mut running = tokio::task::JoinSet::new();
    for attempt in attempts {
        running.spawn(retry(ledger.clone(), partner.clone(), key.clone(), attempt));
    }
    let answers = running.join_all().await;
    // Every outcome handed to the ledger so far (this key's included) is recorded after this.
    ledger.drain().await;

    let calls = partner.calls.load(Ordering::SeqCst);
    assert!(
        partner.most_at_once.load(Ordering::SeqCst) <= 1,
        "two partner calls at once"
    );
    let first_final = script.iter().position(|o| o.is_final());
    let final_answer = first_final
        .filter(|&i| i < calls)
        .map(|i| content(&script[i].response("")));
    // Calls beyond the script repeat its last outcome, so "none after the final one" is: the
    // calls made stop at the first final outcome of the script.
    if let Some(i) = first_final {
        assert!(calls <= i + 1, "{calls} calls, though call {} answered for good", i + 1);
    }
    for (request_id, answer) in &answers {
        assert_eq!(&answer.request_id, request_id, "an answer addressed to another attempt");
        if !is_transient(code(answer)) {
            assert_eq!(
                Some(content(answer)),
                final_answer,
                "an attempt got a final answer other than the partner's one final answer"
            );
        }
    }

    // A retry after everything is recorded.
    let vin = Vin::parse("WBA3B5C50DF123456").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    match ledger.admit(&vin, &key, METHOD, PAYLOAD, "r-late", deadline).await {
        Admission::Answer(replayed) => {
            assert_eq!(
                Some(content(&replayed)),
                final_answer,
                "the replay is not the final answer"
            );
            assert_eq!(replayed.request_id, "r-late");
        }
        Admission::Proceed(claim) => {
            assert_eq!(
                final_answer, None,
                "the partner would be called again after a final answer"
            );
            ledger
                .finish(&claim, &Response::error("r-late", Code::Unavailable, "done"))
                .await;
        }
    }
}

/// Several keys' retries at once, on one ledger, as on a gateway serving many cars.
#[derive(Debug, Clone)]
struct Scenario {
    script: Vec<Outcome>,
    attempts: Vec<Attempt>,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        proptest::collection::vec(outcome(), 1..5),
        proptest::collection::vec(attempt(), 1..7),
    )
        .prop_map(|(script, attempts)| Scenario { script, attempts })
}

#[test]
fn any_interleaving_of_retries_with_one_key_calls_the_partner_once_and_agrees() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // In memory: the property is about the ledger's logic, and file syncs would make it slow.
    let store = runtime
        .block_on(Store::connect("sqlite::memory:"))
        .expect("a SQLite store");
    let keys = AtomicUsize::new(0);
    TestRunner::new(Config {
        cases: 24,
        ..Config::default()
    })
    .run(&proptest::collection::vec(scenario(), 1..9), |scenarios| {
        let ledger = Arc::new(Ledger::new(store.clone(), "props".into(), Duration::from_secs(3600)));
        runtime.block_on(futures::future::join_all(scenarios.into_iter().map(|s| {
            // One store for every case; each scenario has a key of its own.
            let key = format!("key-{}", keys.fetch_add(1, Ordering::Relaxed));
            retries_with_one_key(ledger.clone(), key, s.script, s.attempts)
        })));
        Ok(())
    })
    .unwrap();
}
