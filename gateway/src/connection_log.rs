//! The connection log: records every vehicle connect and disconnect in the store, then
//! passes the event on (to event delivery and to anyone watching).
//!
//! Events are recorded in batches (whatever is queued, in order, in one store call), so a
//! reconnect storm of thousands of cars costs a few database commits instead of one per car,
//! and the log keeps up with the storm instead of trailing it by minutes.

use std::collections::HashMap;

use tokio::sync::{broadcast, mpsc};
use tracing::warn;

use crate::broker::ConnectionEvent;
use crate::events::EventDelivery;
use crate::journal::Journal;
use crate::store::{
    ConnectionChange, ConnectionId, Interaction, JournalEntry, NewConnection, SessionChange, SessionRecord, Store,
};

/// Most connection events recorded in one store call.
const MAX_BATCH: usize = 1024;

/// Records connections until every sender of `events` is gone, each connect and disconnect
/// in the journal too.
pub async fn record(
    mut events: mpsc::Receiver<ConnectionEvent>,
    store: Store,
    node: String,
    delivery: EventDelivery,
    watchers: broadcast::Sender<ConnectionEvent>,
    journal: Journal,
) {
    let mut open: HashMap<u64, ConnectionId> = HashMap::new();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while events.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let changes: Vec<ConnectionChange> = batch
            .iter()
            .filter_map(|event| match event {
                ConnectionEvent::Connected(info) => Some(ConnectionChange::Open {
                    conn: info.conn,
                    connection: NewConnection {
                        vin: info.vin.clone(),
                        node: node.clone(),
                        cert_fingerprint: info.fingerprint.clone(),
                        agent_version: info.agent_version.clone(),
                        remote_addr: info.remote.to_string(),
                        connected_at_ms: info.at_ms,
                    },
                }),
                ConnectionEvent::Disconnected {
                    conn, reason, at_ms, ..
                } => Some(ConnectionChange::Close {
                    conn: *conn,
                    id: open.remove(conn),
                    reason: reason.to_string(),
                    at_ms: *at_ms,
                }),
                ConnectionEvent::EventsSubscribed { .. } => None,
            })
            .collect();
        if !changes.is_empty() {
            match store.record_connections(changes).await {
                Ok(opened) => open.extend(opened),
                // The cars are served anyway; the log is history, not admission.
                Err(e) => warn!(error = %e, events = batch.len(), "connections not recorded"),
            }
        }
        for event in batch.drain(..) {
            if let Some(entry) = journal_entry(&event) {
                journal.record(entry);
            }
            match &event {
                ConnectionEvent::Connected(_) => {}
                ConnectionEvent::EventsSubscribed { conn, vin } => delivery.subscribed(vin.clone(), *conn),
                ConnectionEvent::Disconnected { conn, vin, .. } => {
                    open.remove(conn);
                    delivery.gone(vin, *conn);
                }
            }
            let _ = watchers.send(event);
        }
    }
}

/// The journal's row for a connect or disconnect: from where it connected, why it ended. (An
/// operator's kick or revocation is a row of its own, with who and why, recorded by the ops
/// API; the session's end it causes is a disconnect like any other.)
fn journal_entry(event: &ConnectionEvent) -> Option<JournalEntry> {
    let (vin, at_ms, change, detail) = match event {
        ConnectionEvent::Connected(info) => (&info.vin, info.at_ms, SessionChange::Connected, info.remote.to_string()),
        ConnectionEvent::Disconnected { vin, reason, at_ms, .. } => {
            (vin, *at_ms, SessionChange::Disconnected, reason.to_string())
        }
        ConnectionEvent::EventsSubscribed { .. } => return None,
    };
    Some(JournalEntry {
        id: 0,
        at_ms,
        vin: vin.clone(),
        what: Interaction::Session(SessionRecord { change, detail }),
    })
}
