//! Links the sign-ins identity partners report (`carlink-signed-in`) to the car's customer, off
//! the request path and one at a time in the order they were reported, in a bounded queue that
//! shutdown drains. An app may poll a login again after its answer was lost, and the partner
//! reports the same sign-in again: the store links it once however many links of it run at
//! once, on this node or another (`Store::link_sign_in`); one at a time keeps this node from
//! racing itself and keeps the links in the order reported.

use proto::Vin;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::store::Store;

/// Sign-ins waiting to be linked at most; beyond it one is dropped with a warning (the driver's
/// next sign-in links it).
pub const MAX_PENDING_SIGN_INS: usize = 1024;

/// One driver's sign-in, as an identity partner reported it.
#[derive(Debug)]
struct SignIn {
    vin: Vin,
    provider: String,
    subject: String,
}

/// Where reported sign-ins queue for the one task that links them. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SignInLinker {
    queue: Option<mpsc::Sender<SignIn>>,
}

impl SignInLinker {
    /// Spawns the linking task on `tracker`, `capacity` sign-ins queued at most (the gateway's is
    /// [`MAX_PENDING_SIGN_INS`]). Once `drain` is cancelled (the gateway stops, its requests have
    /// finished) it links what is queued and ends, before the store closes.
    pub fn spawn(store: Store, capacity: usize, drain: CancellationToken, tracker: &TaskTracker) -> SignInLinker {
        let (queue, mut reported) = mpsc::channel::<SignIn>(capacity);
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    Some(sign_in) = reported.recv() => link(&store, sign_in).await,
                    _ = drain.cancelled() => break,
                }
            }
            reported.close();
            while let Some(sign_in) = reported.recv().await {
                link(&store, sign_in).await;
            }
        });
        SignInLinker { queue: Some(queue) }
    }

    /// A linker that links nothing (a router without a store behind it, in tests).
    pub fn disabled() -> SignInLinker {
        SignInLinker { queue: None }
    }

    /// Queues `subject` at `provider` signing in on `vin`'s dashboard; never waits.
    pub fn report(&self, vin: &Vin, provider: String, subject: String) {
        let Some(queue) = &self.queue else { return };
        let sign_in = SignIn {
            vin: vin.clone(),
            provider,
            subject,
        };
        if let Err(e) = queue.try_send(sign_in) {
            warn!(%vin, error = %e, "a driver's sign-in was not queued for linking to the car's customer");
        }
    }
}

async fn link(store: &Store, s: SignIn) {
    let at_ms = crate::clock::now_ms();
    if let Err(e) = store.link_sign_in(&s.vin, &s.provider, &s.subject, at_ms).await {
        let vin = &s.vin;
        warn!(%vin, provider = s.provider, error = %e, "a driver's sign-in was not linked to the car's customer");
    }
}
