//! The session registry: records every vehicle connect and disconnect in the store, then
//! passes the event on (to event delivery and to anyone watching).

use std::collections::HashMap;

use tokio::sync::{broadcast, mpsc};
use tracing::warn;

use crate::broker::SessionEvent;
use crate::events::EventDelivery;
use crate::store::{NewSession, SessionId, Store};

/// Records sessions until every sender of `events` is gone.
pub async fn record(
    mut events: mpsc::Receiver<SessionEvent>,
    store: Store,
    node: String,
    delivery: EventDelivery,
    watchers: broadcast::Sender<SessionEvent>,
) {
    let mut open: HashMap<u64, SessionId> = HashMap::new();
    while let Some(event) = events.recv().await {
        match &event {
            SessionEvent::Connected(info) => {
                let session = NewSession {
                    vin: info.vin.clone(),
                    node: node.clone(),
                    cert_fingerprint: info.fingerprint.clone(),
                    agent_version: info.agent_version.clone(),
                    remote_addr: info.remote.to_string(),
                    connected_at_ms: info.at_ms,
                };
                match store.open_session(&session).await {
                    Ok(id) => {
                        open.insert(info.conn, id);
                    }
                    // The car is served anyway; the registry is history, not admission.
                    Err(e) => warn!(vin = %info.vin, error = %e, "session not recorded"),
                }
            }
            SessionEvent::EventsSubscribed { conn, vin } => delivery.subscribed(vin.clone(), *conn),
            SessionEvent::Disconnected {
                conn,
                vin,
                reason,
                at_ms,
            } => {
                delivery.gone(vin.clone(), *conn);
                if let Some(id) = open.remove(conn)
                    && let Err(e) = store.close_session(id, &reason.to_string(), *at_ms).await
                {
                    warn!(%vin, error = %e, "session end not recorded");
                }
            }
        }
        let _ = watchers.send(event);
    }
}
