//! Revoking a vehicle: stored first (so it holds across restarts and on every node), then in
//! force on this node at once, then the car's live session ended. And the reload that brings
//! CRL files and other nodes' revocations to this node.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use proto::Vin;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::broker::RevocationList;
use crate::broker::revocation::{crl_versions, read_crl_serials};
use crate::bus::{Eviction, Mailboxes};
use crate::clock::now_ms;
use crate::store::{RevocationRecord, Store, StoreError};

/// The revocations in force on this node, and the means to add one. Cheap to clone.
#[derive(Clone)]
pub struct Revocations {
    list: Arc<RevocationList>,
    store: Store,
    mailboxes: Mailboxes,
}

impl Revocations {
    /// Loads the stored revocations into `list`.
    pub async fn load(list: Arc<RevocationList>, store: Store, mailboxes: Mailboxes) -> Result<Self, StoreError> {
        let stored = store.revocations().await?;
        for r in &stored {
            list.revoke_vin(r.vin.clone(), r.revoked_at_ms);
        }
        if !stored.is_empty() {
            info!(vehicles = stored.len(), "revocations loaded");
        }
        Ok(Revocations { list, store, mailboxes })
    }

    /// Revokes `vin` now: stored, in force, and its live session (if on this node) ended.
    /// Returns the revocation and whether the car was connected here.
    pub async fn revoke(&self, vin: &Vin, reason: &str, by: &str) -> Result<(RevocationRecord, bool), StoreError> {
        let record = self.store.revoke_vehicle(vin, now_ms(), reason, by).await?;
        // Already in force if a reload pass saw it first; the session ends either way.
        self.list.revoke_vin(vin.clone(), record.revoked_at_ms);
        let was_connected = self.mailboxes.evict(vin, Eviction::Revocation);
        info!(%vin, by, was_connected, "vehicle revoked");
        Ok((record, was_connected))
    }

    /// Every stored revocation, newest first.
    pub async fn all(&self) -> Result<Vec<RevocationRecord>, StoreError> {
        self.store.revocations().await
    }
}

/// Every `interval` until shutdown (the first pass one interval after start, which loaded
/// both): reads the CRL files again if one changed, and the revocations other nodes stored,
/// ending the sessions here of VINs newly revoked elsewhere. Revocations are only ever added to
/// the list, so one made here while a pass reads the store is never lost.
pub async fn reload_revocations(
    revocations: Revocations,
    crls: Vec<PathBuf>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut seen_crls = None;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if !crls.is_empty() {
            let paths = crls.clone();
            let versions = tokio::task::spawn_blocking(move || crl_versions(&paths))
                .await
                .unwrap_or_default();
            if seen_crls.as_ref() != Some(&versions) {
                let paths = crls.clone();
                match tokio::task::spawn_blocking(move || read_crl_serials(&paths)).await {
                    Ok(Ok(serials)) => {
                        info!(serials = serials.len(), "certificate revocation lists loaded");
                        revocations.list.set_crl_serials(serials);
                        seen_crls = Some(versions);
                    }
                    // The serials loaded before stay in force.
                    Ok(Err(e)) => warn!(error = %e, "certificate revocation list not reloaded"),
                    Err(e) => warn!(error = %e, "certificate revocation list reload failed"),
                }
            }
        }
        match revocations.store.revocations().await {
            Ok(stored) => {
                for r in stored {
                    if revocations.list.revoke_vin(r.vin.clone(), r.revoked_at_ms) {
                        revocations.mailboxes.evict(&r.vin, Eviction::Revocation);
                    }
                }
            }
            Err(e) => warn!(error = %e, "revocations not reloaded from the store; will retry"),
        }
    }
}
