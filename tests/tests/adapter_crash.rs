//! kill -9 of the reference parking adapter behind the gateway: every session open at the
//! kill is paid after the restart, once. (When the adapter kept its sessions in memory, 17 of
//! 120 payments made across such a kill got NOT_FOUND.) The adapter runs as the binary cargo
//! built for this run, on a port the test holds across its lives (socket activation), on the
//! same database.

use integration_tests::*;
use prost::Message;
use proto::parking::v1::{EndSessionRequest, EndSessionResponse};
use proto::vehicle::v1::{Code, Response};

const END: &str = "/parking.v1.ParkingPayment/EndSession";

/// Pays for `session_id` as `car` with idempotency key `key`, asking again with the same key
/// while the answer is UNAVAILABLE (the adapter restarting), as a car's agent does.
async fn pay(car: &mut RawCar, session_id: &str, key: &str) -> Response {
    let end = EndSessionRequest {
        session_id: session_id.into(),
    }
    .encode_to_vec();
    for attempt in 0..10 {
        car.publish_request(keyed_envelope(&format!("{key}-{attempt}"), key, END, end.clone()))
            .await;
        let answer = car.next_response().await;
        if status_code(&answer) != Code::Unavailable {
            return answer;
        }
    }
    panic!("{key}: still UNAVAILABLE after 10 attempts");
}

#[tokio::test]
async fn every_session_open_at_the_kill_is_paid_after_the_restart_once() {
    let adapter_port = KeptPort::bind();
    let platform = Platform::start_with_pki(|pki, c| {
        c.partners = vec![partner_entry(pki, PARKING, adapter_port.addr())];
    })
    .await;
    let pki = &platform.pki;
    let database = pki.path("parking-process.db");
    let args = parking_adapter_args(pki, &database);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let start = || async {
        let mut adapter = Process::spawn_on(built_binary!("parking-adapter"), &args, adapter_port.socket());
        adapter.wait_for_line("parking adapter listening on").await;
        adapter
    };

    let first_life = start().await;
    let mut car_a = RawCar::connect(&platform, VIN_A).await;
    let mut car_b = RawCar::connect(&platform, VIN_B).await;
    let session_a = car_a.park().await;
    let session_b = car_b.park().await;
    first_life.kill9().await;

    // Car B pays while the adapter is down: its call waits in the port's backlog, or comes
    // back UNAVAILABLE and is asked again.
    let end_b = EndSessionRequest {
        session_id: session_b.clone(),
    };
    car_b
        .publish_request(keyed_envelope("end-b", "end-b", END, end_b.encode_to_vec()))
        .await;
    let _second_life = start().await;
    let mut paid_b = car_b.next_response().await;
    if status_code(&paid_b) == Code::Unavailable {
        paid_b = pay(&mut car_b, &session_b, "end-b").await;
    }
    let paid_a = pay(&mut car_a, &session_a, "end-a").await;

    for (paid, session) in [(&paid_a, &session_a), (&paid_b, &session_b)] {
        assert_eq!(status_code(paid), Code::Ok, "{paid:?}");
        let receipt = EndSessionResponse::decode(paid.payload.as_slice())
            .unwrap()
            .receipt
            .unwrap();
        assert_eq!(&receipt.session_id, session);
    }
    let records = parking_adapter::ParkingService::open(&database).await.unwrap();
    assert_eq!(records.charges_recorded().await.unwrap(), 2, "each charged once");
}
