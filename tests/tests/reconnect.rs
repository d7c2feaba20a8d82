//! The link drops (a tunnel, a gateway deploy): the agent reconnects by itself, and a request
//! made while the gateway was away goes out when it is back.

use std::time::Duration;

use integration_tests::*;
use proto::parking::v1::{GeoPoint, ListNearbyLotsRequest};

#[tokio::test]
async fn a_request_made_while_the_gateway_is_down_is_answered_after_it_returns() {
    let platform = Platform::start().await;
    let addr = platform.mqtt_addr();
    let config = gateway_config(
        &platform.pki,
        vec![partner_entry(&platform.pki, PARKING, platform.parking_server.addr)],
    );
    let Platform {
        pki,
        parking,
        parking_server,
        gateway,
    } = platform;
    let car = {
        let me = pki.vehicle(VIN_A);
        let mut c = vehicle_agent::AgentConfig::new(
            format!("localhost:{}", addr.port()),
            pki.ca_cert.clone(),
            me.cert,
            me.key,
        );
        c.local_listen = "127.0.0.1:0".parse().unwrap();
        c.state_dir = pki.dir.path().join("agent-state");
        c.backoff_initial = Duration::from_millis(20);
        c.backoff_max = Duration::from_millis(200);
        vehicle_agent::Agent::start(c).await.unwrap()
    };
    within(Duration::from_secs(10), car.wait_connected(), "first connect").await;

    let mut state = car.link().connection_state();
    gateway.shutdown().await;
    within(
        Duration::from_secs(10),
        state.wait_for(|up| !*up),
        "agent notices the drop",
    )
    .await
    .unwrap();

    // The app asks while the gateway is away.
    let mut app = in_car_app(&car).await;
    let mut request = tonic::Request::new(ListNearbyLotsRequest {
        near: Some(GeoPoint {
            latitude: 31.23,
            longitude: 121.47,
        }),
        radius_m: 5_000,
        max_results: 2,
    });
    request.set_timeout(Duration::from_secs(20));
    let call = tokio::spawn(async move { app.list_nearby_lots(request).await });

    // Same port, new process state: like a deploy.
    let listener = gateway::bind(addr).expect("rebind the gateway's port");
    let mut config = config;
    config.mqtt.listen = addr;
    let gateway = gateway::Gateway::start_on(config, listener).await.unwrap();

    let lots = within(Duration::from_secs(20), call, "answer after reconnect")
        .await
        .unwrap()
        .expect("answered");
    assert_eq!(lots.into_inner().lots.len(), 2);
    assert!(car.is_connected());
    car.shutdown().await;
    gateway.shutdown().await;
    drop((parking, parking_server));
}
