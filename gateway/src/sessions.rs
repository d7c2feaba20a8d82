//! The session registry: records every vehicle connect and disconnect in the store, then
//! passes the event on (to event delivery and to anyone watching).
//!
//! Events are recorded in batches (whatever is queued, in order, in one store call), so a
//! reconnect storm of thousands of cars costs a few database commits instead of one per car,
//! and the registry keeps up with the storm instead of trailing it by minutes.

use std::collections::HashMap;

use tokio::sync::{broadcast, mpsc};
use tracing::warn;

use crate::broker::SessionEvent;
use crate::events::EventDelivery;
use crate::store::{NewSession, SessionChange, SessionId, Store};

/// Most session events recorded in one store call.
const MAX_BATCH: usize = 1024;

/// Records sessions until every sender of `events` is gone.
pub async fn record(
    mut events: mpsc::Receiver<SessionEvent>,
    store: Store,
    node: String,
    delivery: EventDelivery,
    watchers: broadcast::Sender<SessionEvent>,
) {
    let mut open: HashMap<u64, SessionId> = HashMap::new();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while events.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let changes: Vec<SessionChange> = batch
            .iter()
            .filter_map(|event| match event {
                SessionEvent::Connected(info) => Some(SessionChange::Open {
                    conn: info.conn,
                    session: NewSession {
                        vin: info.vin.clone(),
                        node: node.clone(),
                        cert_fingerprint: info.fingerprint.clone(),
                        agent_version: info.agent_version.clone(),
                        remote_addr: info.remote.to_string(),
                        connected_at_ms: info.at_ms,
                    },
                }),
                SessionEvent::Disconnected {
                    conn, reason, at_ms, ..
                } => Some(SessionChange::Close {
                    conn: *conn,
                    id: open.remove(conn),
                    reason: reason.to_string(),
                    at_ms: *at_ms,
                }),
                SessionEvent::EventsSubscribed { .. } => None,
            })
            .collect();
        if !changes.is_empty() {
            match store.record_sessions(changes).await {
                Ok(opened) => open.extend(opened),
                // The cars are served anyway; the registry is history, not admission.
                Err(e) => warn!(error = %e, events = batch.len(), "sessions not recorded"),
            }
        }
        for event in batch.drain(..) {
            match &event {
                SessionEvent::Connected(_) => {}
                SessionEvent::EventsSubscribed { conn, vin } => delivery.subscribed(vin.clone(), *conn),
                SessionEvent::Disconnected { conn, vin, .. } => {
                    open.remove(conn);
                    delivery.gone(vin, *conn);
                }
            }
            let _ = watchers.send(event);
        }
    }
}
