//! The link drops (a tunnel, a gateway deploy): the agent reconnects by itself, and a request
//! an app made while the gateway was away, accepted into the agent's outbox then, goes out
//! and is answered when the gateway is back.

use integration_tests::*;

#[tokio::test]
async fn a_request_made_while_the_gateway_is_down_is_answered_after_it_returns() {
    let platform = Platform::start().await;
    let car = platform.agent(VIN_A).await;
    let mut link = car.link().connection_state();
    let mut app = in_car_app(&car).await;

    // A deploy: the gateway stops and starts again on the same port (which stays bound).
    // While it is down, the app's call is made and left running: awaited after the restart.
    #[expect(clippy::async_yields_async, reason = "the call is awaited once the gateway is back")]
    let (platform, call) = platform
        .restart_gateway(async {
            within(SOON, link.wait_for(|up| !*up), "the agent notices the drop")
                .await
                .unwrap();
            // The app asks while the gateway is away ...
            let mut request = tonic::Request::new(lots_near_the_bund(2));
            request.set_timeout(std::time::Duration::from_secs(20));
            let call = tokio::spawn(async move { app.list_nearby_lots(request).await });
            // ... and the agent accepts the request into its outbox, with nobody to send it to.
            eventually("the request waits in the outbox", || car.link().pending_requests() == 1).await;
            assert!(!car.is_connected(), "the gateway is still down");
            call
        })
        .await;

    let lots = within(SOON, call, "the answer after the gateway returns")
        .await
        .unwrap()
        .expect("answered");
    assert_eq!(lots.into_inner().lots.len(), 2);
    assert!(car.is_connected());
    assert_eq!(car.link().pending_requests(), 0, "nothing left in the outbox");
    car.shutdown().await;
    platform.gateway.shutdown().await;
}
