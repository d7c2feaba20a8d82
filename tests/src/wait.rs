//! Bounded waits on what a test can observe: a future finishing, a condition holding, a packet
//! arriving, a car disconnecting. Each fails the test, saying what did not happen, instead of
//! hanging it; none is a sleep standing in for synchronisation.

use std::future::Future;
use std::time::Duration;

use gateway::{ConnectionEvent, DisconnectReason};
use rumqttc::{ConnAck, ConnectionError, Event, EventLoop, Packet};
use tokio::sync::broadcast;

/// How long anything that should happen may take before the test fails.
pub const SOON: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test with `what` if it takes longer than `limit`. A guard against
/// hangs, not a synchronisation device.
pub async fn within<T>(limit: Duration, fut: impl Future<Output = T>, what: &str) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {limit:?}: {what}"))
}

/// Waits until `condition` holds, checking every few milliseconds, failing the test with `what`
/// after [`SOON`]. For state that is seen only by asking (counters, saved sessions, outboxes).
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    until_answered(what, || std::future::ready(condition().then_some(()))).await
}

/// Asks `ask` again every few milliseconds until it answers `Some`, and returns that answer,
/// failing the test with `what` after [`SOON`]. For state seen only by asking over the wire or
/// the database (a timeline filling, a file reloaded, an outbox emptied).
pub async fn until_answered<T, Fut>(what: &str, mut ask: impl FnMut() -> Fut) -> T
where
    Fut: Future<Output = Option<T>>,
{
    within(
        SOON,
        async {
            loop {
                if let Some(answer) = ask().await {
                    return answer;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        },
        what,
    )
    .await
}

/// Waits for the next `Disconnected` event of `vin` and returns its reason.
pub async fn disconnected(events: &mut broadcast::Receiver<ConnectionEvent>, vin: &str) -> DisconnectReason {
    within(
        SOON,
        async {
            loop {
                match events.recv().await.expect("connection events") {
                    ConnectionEvent::Disconnected { vin: v, reason, .. } if v.as_str() == vin => return reason,
                    _ => {}
                }
            }
        },
        "disconnect event",
    )
    .await
}

/// Polls a stock client until its CONNACK arrives (or the connection fails).
pub async fn connack(eventloop: &mut EventLoop) -> Result<ConnAck, ConnectionError> {
    next_incoming(eventloop, |p| match p {
        Packet::ConnAck(ack) => Some(ack.clone()),
        _ => None,
    })
    .await
}

/// Polls a stock client until a packet matching `pick` arrives, returning what `pick` returns.
pub async fn next_incoming<T>(
    eventloop: &mut EventLoop,
    mut pick: impl FnMut(&Packet) -> Option<T>,
) -> Result<T, ConnectionError> {
    within(
        SOON,
        async {
            loop {
                if let Event::Incoming(packet) = eventloop.poll().await?
                    && let Some(found) = pick(&packet)
                {
                    return Ok(found);
                }
            }
        },
        "incoming packet",
    )
    .await
}

/// Polls until the gateway closes the connection, returning the error that ended it.
pub async fn closed(eventloop: &mut EventLoop) -> ConnectionError {
    within(
        SOON,
        async {
            loop {
                if let Err(e) = eventloop.poll().await {
                    return e;
                }
            }
        },
        "connection closed",
    )
    .await
}

/// Waits for `fut` while driving a stock client's connection, which must stay up meanwhile.
pub async fn while_connected<T>(eventloop: &mut EventLoop, fut: impl Future<Output = T>, what: &str) -> T {
    within(
        SOON,
        async {
            tokio::select! {
                out = fut => out,
                e = closed(eventloop) => panic!("the connection ended while waiting until {what}: {e:?}"),
            }
        },
        what,
    )
    .await
}

/// Waits for `vin`'s next disconnection, which must be for a protocol error saying `why`.
pub async fn disconnected_for_protocol_error(events: &mut broadcast::Receiver<ConnectionEvent>, vin: &str, why: &str) {
    let reason = disconnected(events, vin).await;
    assert!(
        matches!(&reason, DisconnectReason::ProtocolError(said) if said.contains(why)),
        "{reason:?}"
    );
}

/// Waits for `vin`'s next disconnection, which must be for a limit exceeded, saying `why`.
pub async fn disconnected_over_a_limit(events: &mut broadcast::Receiver<ConnectionEvent>, vin: &str, why: &str) {
    let reason = disconnected(events, vin).await;
    assert!(
        matches!(&reason, DisconnectReason::LimitExceeded(said) if said.contains(why)),
        "{reason:?}"
    );
}
