//! A refund from the car, through the gateway, to the reference adapter: retried with the same
//! idempotency key it refunds once and answers the same; more than was charged is refused with
//! a status the car can read.

use integration_tests::*;
use prost::Message;
use proto::parking::v1::{EndSessionRequest, EndSessionResponse, Money, RefundSessionRequest, RefundSessionResponse};
use proto::vehicle::v1::{Code, Response};

const END: &str = "/parking.v1.ParkingPayment/EndSession";
const REFUND: &str = "/parking.v1.ParkingPayment/RefundSession";

fn refund_of(session_id: &str, fen: i64) -> Vec<u8> {
    RefundSessionRequest {
        session_id: session_id.into(),
        amount: Some(Money {
            currency: "CNY".into(),
            amount_minor: fen,
        }),
        reason: "charged while the barrier was stuck".into(),
    }
    .encode_to_vec()
}

async fn ask(car: &mut RawCar, request_id: &str, key: &str, method: &str, payload: Vec<u8>) -> Response {
    car.publish_request(keyed_envelope(request_id, key, method, payload))
        .await;
    car.next_response().await
}

#[tokio::test]
async fn a_refund_retried_through_the_gateway_refunds_once() {
    let platform = Platform::start().await;
    let mut car = RawCar::connect(&platform, VIN_A).await;
    let session_id = car.park().await;
    let end = EndSessionRequest {
        session_id: session_id.clone(),
    };
    let paid = ask(&mut car, "end-1", "end-key", END, end.encode_to_vec()).await;
    assert_eq!(status_code(&paid), Code::Ok, "{paid:?}");
    let fee = EndSessionResponse::decode(paid.payload.as_slice())
        .unwrap()
        .receipt
        .unwrap()
        .fee
        .unwrap();
    assert!(fee.amount_minor > 100, "{fee:?}");

    let first = ask(&mut car, "refund-1", "refund-key", REFUND, refund_of(&session_id, 100)).await;
    assert_eq!(status_code(&first), Code::Ok, "{first:?}");
    // The car lost the answer and asks again under a new request id, with the same key.
    let retry = ask(&mut car, "refund-2", "refund-key", REFUND, refund_of(&session_id, 100)).await;
    assert_eq!(retry.payload, first.payload);
    let refunded = RefundSessionResponse::decode(first.payload.as_slice()).unwrap();
    assert_eq!(refunded.receipt.unwrap().refunded.unwrap().amount_minor, 100);

    let too_much = ask(
        &mut car,
        "refund-3",
        "other-key",
        REFUND,
        refund_of(&session_id, fee.amount_minor),
    )
    .await;
    assert_eq!(status_code(&too_much), Code::FailedPrecondition, "{too_much:?}");
    let message = too_much.status.unwrap().message;
    assert!(message.contains("remain"), "{message}");
}
