//! Bad input gets a clear error and the gateway keeps serving: malformed envelopes, unknown
//! services and methods, oversize payloads, partners that are down or slow.

use std::time::Duration;

use integration_tests::*;
use proto::parking::v1::parking_payment_server::ParkingPayment;
use proto::parking::v1::*;
use proto::vehicle::v1::Code;
use tonic::{Request, Response, Status};

#[tokio::test]
async fn a_malformed_envelope_gets_invalid_argument_and_the_gateway_keeps_serving() {
    let platform = Platform::start().await;
    let mut car = RawCar::connect(&platform, VIN_A).await;
    let answer = car.ask(vec![0xff, 0xff, 0xff, 0x07, 0x01]).await;
    assert_eq!(status_code(&answer), Code::InvalidArgument);
    assert!(answer.status.unwrap().message.contains("malformed"), "clear message");

    let answer = car.ask(envelope("ok-1", LIST, nearby_lots())).await;
    assert_eq!(outcome(&answer), ("ok-1", Code::Ok));
}

#[tokio::test]
async fn a_malformed_partner_message_is_the_partners_invalid_argument() {
    let platform = Platform::start().await;
    let mut car = RawCar::connect(&platform, VIN_A).await;
    let answer = car.ask(envelope("bad-payload", LIST, vec![0x0a, 0xff, 0xff])).await;
    assert_eq!(answer.request_id, "bad-payload");
    assert_ne!(status_code(&answer), Code::Ok);
}

#[tokio::test]
async fn unknown_services_and_methods_are_unimplemented() {
    let platform = Platform::start().await;
    let mut car = RawCar::connect(&platform, VIN_A).await;
    let answer = car.ask(envelope("u-1", "/teleport.v1.Teleporter/Beam", vec![])).await;
    assert_eq!(outcome(&answer), ("u-1", Code::Unimplemented));
    assert!(answer.status.unwrap().message.contains("teleport.v1.Teleporter"));

    let answer = car
        .ask(envelope("u-2", "/parking.v1.ParkingPayment/Teleport", vec![]))
        .await;
    assert_eq!(outcome(&answer), ("u-2", Code::Unimplemented));

    let answer = car.ask(envelope("u-3", "not a method", vec![])).await;
    assert_eq!(outcome(&answer), ("u-3", Code::InvalidArgument));
}

#[tokio::test]
async fn an_oversize_payload_is_refused_with_a_clear_error() {
    let platform = Platform::start_with(|c| c.requests.max_payload_bytes = 1024).await;
    let mut car = RawCar::connect(&platform, VIN_A).await;
    car.publish_request(envelope("big", LIST, vec![0u8; 2048])).await;
    let answer = car.next_response().await;
    assert_eq!(status_code(&answer), Code::ResourceExhausted);
    assert!(answer.status.unwrap().message.contains("1024-byte limit"));
    assert_eq!(platform.parking.charges(), 0);
}

#[tokio::test]
async fn a_packet_beyond_the_frame_limit_closes_only_that_connection() {
    let platform = Platform::start_with(|c| c.requests.max_payload_bytes = 1024).await;
    let mut events = platform.connection_events();
    let mut car = RawCar::connect(&platform, VIN_A).await;
    let mut other = RawCar::connect(&platform, VIN_B).await;
    // 1 KiB limit + 16 KiB envelope headroom: 64 KiB cannot be a request.
    car.publish_request(vec![0u8; 64 * 1024]).await;
    closed(&mut car.eventloop).await;
    disconnected_for_protocol_error(&mut events, VIN_A, "exceeds").await;
    assert_eq!(outcome(&other.ask_for_lots("still-ok").await), ("still-ok", Code::Ok));
}

#[tokio::test]
async fn the_agent_refuses_an_oversize_request_before_sending_it() {
    let platform = Platform::start().await;
    let car = platform.agent(VIN_A).await;
    let method = proto::MethodPath::parse(LIST).unwrap();
    let err = car
        .link()
        .call(&method, vec![0u8; 200 * 1024].into(), Duration::from_secs(5), None)
        .await
        .expect_err("oversize");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    car.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_partner_is_unavailable_promptly() {
    let nobody = RefusingPartner::new();
    let platform =
        Platform::start_with_pki(|pki, c| c.partners = vec![partner_entry(pki, PARKING, nobody.addr())]).await;
    let mut car = RawCar::connect(&platform, VIN_A).await;
    let answer = car.ask(envelope("down-1", LIST, nearby_lots())).await;
    // UNAVAILABLE, not DEADLINE_EXCEEDED: a refused connection is reported at once rather
    // than waited out until the car's 5 s deadline.
    assert_eq!(status_code(&answer), Code::Unavailable, "{answer:?}");
    assert!(answer.status.unwrap().message.contains("parking.v1.ParkingPayment"));
}

/// A partner that accepts calls and never answers.
struct Stalling;

#[tonic::async_trait]
impl ParkingPayment for Stalling {
    async fn list_nearby_lots(
        &self,
        _: Request<ListNearbyLotsRequest>,
    ) -> Result<Response<ListNearbyLotsResponse>, Status> {
        std::future::pending().await
    }
    async fn start_session(&self, _: Request<StartSessionRequest>) -> Result<Response<StartSessionResponse>, Status> {
        std::future::pending().await
    }
    async fn end_session(&self, _: Request<EndSessionRequest>) -> Result<Response<EndSessionResponse>, Status> {
        std::future::pending().await
    }
    async fn get_receipt(&self, _: Request<GetReceiptRequest>) -> Result<Response<Receipt>, Status> {
        std::future::pending().await
    }
    async fn refund_session(
        &self,
        _: Request<RefundSessionRequest>,
    ) -> Result<Response<RefundSessionResponse>, Status> {
        std::future::pending().await
    }
}

#[tokio::test]
async fn a_partner_past_the_cars_deadline_is_deadline_exceeded() {
    let platform = Platform::start_partner(Stalling).await;
    let mut car = RawCar::connect(&platform, VIN_A).await;
    let answer = car.ask(request("slow-1", "", LIST, nearby_lots(), 300)).await;
    assert_eq!(outcome(&answer), ("slow-1", Code::DeadlineExceeded));
}

#[tokio::test]
async fn the_app_sees_deadline_exceeded_through_the_agent() {
    let platform = Platform::start_partner(Stalling).await;
    let car = platform.agent(VIN_A).await;
    let mut app = in_car_app(&car).await;
    let mut request = tonic::Request::new(ListNearbyLotsRequest::default());
    request.set_timeout(Duration::from_millis(400));
    let err = app.list_nearby_lots(request).await.expect_err("stalled partner");
    // The agent answers DEADLINE_EXCEEDED just before the app's deadline; on a loaded machine
    // tonic's own enforcement of the app's grpc-timeout can fire first, as CANCELLED
    // "Timeout expired". Either way the app learns its deadline passed, and nothing hangs.
    let deadline_passed = err.code() == tonic::Code::DeadlineExceeded
        || (err.code() == tonic::Code::Cancelled && err.message().contains("Timeout expired"));
    assert!(deadline_passed, "{err:?}");
    car.shutdown().await;
}

/// A partner that answers every lot query with far more than a car could ever need.
struct Talkative;

#[tonic::async_trait]
impl ParkingPayment for Talkative {
    async fn list_nearby_lots(
        &self,
        _: Request<ListNearbyLotsRequest>,
    ) -> Result<Response<ListNearbyLotsResponse>, Status> {
        let lot = Lot {
            name: "停车场".repeat(100),
            ..Lot::default()
        };
        Ok(Response::new(ListNearbyLotsResponse { lots: vec![lot; 200] }))
    }
    async fn start_session(&self, _: Request<StartSessionRequest>) -> Result<Response<StartSessionResponse>, Status> {
        Err(Status::unimplemented("lots only"))
    }
    async fn end_session(&self, _: Request<EndSessionRequest>) -> Result<Response<EndSessionResponse>, Status> {
        Err(Status::unimplemented("lots only"))
    }
    async fn get_receipt(&self, _: Request<GetReceiptRequest>) -> Result<Response<Receipt>, Status> {
        Err(Status::unimplemented("lots only"))
    }
    async fn refund_session(
        &self,
        _: Request<RefundSessionRequest>,
    ) -> Result<Response<RefundSessionResponse>, Status> {
        Err(Status::unimplemented("lots only"))
    }
}

#[tokio::test]
async fn a_partner_answer_over_the_maximum_size_is_refused_before_it_is_read() {
    let platform = Platform::start_partner_with(Talkative, |_, c| c.requests.max_response_bytes = 16 * 1024).await;
    let mut car = RawCar::connect(&platform, VIN_A).await;
    let answer = car.ask(envelope("too-much", LIST, nearby_lots())).await;
    assert_eq!(outcome(&answer), ("too-much", Code::OutOfRange), "{answer:?}");
    assert!(answer.status.unwrap().message.contains("16384"), "the limit is named");
}
