//! A write in progress: the request ids it is busy with, so that no lock is held while the
//! disk syncs and yet a request id is never written by two writes at once.

use std::sync::MutexGuard;

use super::{Index, Outbox};

/// A disk operation made without the lock: counted for [`Outbox::close`], its ids busy for
/// new requests. Settles when ended, or when dropped (a panic included) so nobody waits forever.
pub(super) struct InFlight<'a> {
    outbox: &'a Outbox,
    busy: Vec<String>,
    ended: bool,
}

impl<'a> InFlight<'a> {
    pub(super) fn begin(outbox: &'a Outbox, index: &mut Index, busy: Option<&str>) -> InFlight<'a> {
        index.in_flight += 1;
        let op = InFlight {
            outbox,
            busy: Vec::new(),
            ended: false,
        };
        match busy {
            Some(id) => op.also_busy(index, id),
            None => op,
        }
    }

    pub(super) fn also_busy(mut self, index: &mut Index, id: &str) -> InFlight<'a> {
        index.busy.insert(id.to_owned());
        self.busy.push(id.to_owned());
        self
    }

    /// Settles the operation with the lock already held, then releases the lock.
    pub(super) fn end(mut self, mut index: MutexGuard<'_, Index>) {
        self.settle(&mut index);
    }

    fn settle(&mut self, index: &mut Index) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        for id in &self.busy {
            index.busy.remove(id);
        }
        index.in_flight -= 1;
        self.outbox.settled.notify_all();
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.ended {
            let mut index = self.outbox.lock();
            self.settle(&mut index);
        }
    }
}
