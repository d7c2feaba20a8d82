//! Partner events kept on disk until an in-car app has taken them.
//!
//! Like a durable consumer (a JetStream consumer, a Kafka consumer group's offset), the agent
//! keeps one cursor per car: `taken`, the highest sequence an app acknowledged with
//! `AckEvents`. Every event above it that the gateway delivered is a file of its own under
//! `state_dir/events/` (`<sequence, 20 digits>.pb`, the encoded `vehicle.v1.Event`), written
//! crash-safely before anything else happens to it. Only when an app acknowledges it is the
//! cursor written (`state_dir/events/last_sequence`), the event acknowledged to the gateway
//! (cumulatively) and its file removed. So an event is acknowledged to the gateway only once
//! an app has it, and one the agent does not have on disk is never acknowledged: the gateway
//! keeps it and delivers it again.
//!
//! Kept events are in sequence order, with none the gateway sent missing between them: once
//! the agent refuses one (the store is full, `max_kept_events`, or the disk refused the write) it takes
//! no later one until that one arrives again; the gateway sends everything unacknowledged, in
//! order, on each new subscription (see `event_loop`). Unnumbered events (sequence 0) cannot be
//! kept in order nor acknowledged: the gateway never sends them, and the agent drops them with
//! a warning.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tracing::{error, warn};

use proto::vehicle::v1::Event;

use crate::store::{self, StateFiles};

/// The cursor: the highest sequence an app acknowledged (the name predates the event store,
/// when it was the highest sequence shown; both mean "never show these again").
const TAKEN_FILE: &str = "last_sequence";
/// The suffix of an event's file.
const EVENT_SUFFIX: &str = ".pb";
/// Most event subscriptions open at once (each holds a task and a stream): more than the apps
/// of one car need, few enough that an app opening them in a loop costs little.
pub const MAX_EVENT_FEEDS: usize = 64;

/// What became of an event the gateway delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Written to disk and shown to apps; acknowledged once an app takes it.
    Kept,
    /// Kept already (a redelivery): nothing to do.
    AlreadyKept,
    /// An app took it already (a redelivery): acknowledge the cursor to the gateway again.
    Taken(u64),
    /// Not kept: `max_kept_events` are waiting for an app. Not acknowledged.
    Full,
    /// Not kept: an earlier event was refused and must come first. Not acknowledged.
    Behind,
    /// Not kept: the disk refused it. Not acknowledged.
    NotWritten,
    /// Not kept: older than the newest kept yet unknown, so out of order. Not acknowledged.
    OutOfOrder,
    /// Sequence 0: cannot be kept in order or acknowledged.
    Unnumbered,
}

/// Why an app's acknowledgement or cursor is refused.
#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    /// Past the last event the agent received.
    #[error("no event after {last} has arrived, so {asked} is out of range")]
    Beyond {
        /// What the app asked for.
        asked: u64,
        /// The highest sequence received (kept or taken).
        last: u64,
    },
    /// [`MAX_EVENT_FEEDS`] subscriptions are open already.
    #[error("{MAX_EVENT_FEEDS} event subscriptions are open already; close one first")]
    TooManyFeeds,
    /// The cursor could not be written: the acknowledgement did not happen.
    #[error("cannot record the acknowledgement: {0}")]
    Disk(#[from] io::Error),
}

/// The events kept for apps, on disk, with their index in memory.
pub struct EventStore {
    dir: PathBuf,
    max_kept: usize,
    files: Arc<dyn StateFiles>,
    index: Mutex<Index>,
    /// The newest sequence kept: wakes the feeds when it changes.
    arrived: watch::Sender<u64>,
    /// One permit per open feed.
    feeds: Arc<Semaphore>,
}

impl std::fmt::Debug for EventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let index = self.index();
        f.debug_struct("EventStore")
            .field("dir", &self.dir)
            .field("taken", &index.taken)
            .field("kept", &index.kept.len())
            .finish()
    }
}

/// What is kept, in memory; never locked across disk IO.
#[derive(Debug, Default)]
struct Index {
    /// The highest sequence an app acknowledged.
    taken: u64,
    /// The sequences on disk, all above `taken`.
    kept: BTreeSet<u64>,
    /// The lowest sequence refused since the gateway last began delivering afresh: no later
    /// event is kept before it.
    refused_from: Option<u64>,
}

impl Index {
    fn newest(&self) -> u64 {
        self.kept.last().copied().unwrap_or(self.taken)
    }
}

impl EventStore {
    /// Opens `state_dir/events` (created if needed) and indexes the events kept there; files
    /// of events already taken (a crash between writing the cursor and removing them) are
    /// removed. An unreadable cursor counts as 0: events may then be shown again, which beats
    /// losing them. Blocking file IO.
    pub fn open(state_dir: &Path, max_kept: usize, files: Arc<dyn StateFiles>) -> io::Result<EventStore> {
        let dir = state_dir.join("events");
        store::create_dir(&dir)?;
        let cursor = dir.join(TAKEN_FILE);
        let taken = match std::fs::read_to_string(&cursor) {
            Ok(text) => text.trim().parse().unwrap_or_else(|_| {
                warn!(file = %cursor.display(), "ignoring an unreadable event cursor");
                0
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        let mut kept = BTreeSet::new();
        for (name, _) in store::list_files(&dir)? {
            let Some(sequence) = sequence_of(&name) else { continue };
            if sequence <= taken {
                files.remove(&dir, &name)?;
            } else {
                kept.insert(sequence);
            }
        }
        let newest = kept.last().copied().unwrap_or(taken);
        Ok(EventStore {
            dir,
            max_kept,
            files,
            index: Mutex::new(Index {
                taken,
                kept,
                refused_from: None,
            }),
            arrived: watch::Sender::new(newest),
            feeds: Arc::new(Semaphore::new(MAX_EVENT_FEEDS)),
        })
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        // A panic elsewhere must not take events down with it.
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes `event` from the gateway: keeps it on disk if it is the next one in order and
    /// there is room. Blocking file IO; one caller at a time (the event loop).
    pub fn arrive(&self, event: &Event) -> Arrival {
        let sequence = event.sequence;
        {
            let mut index = self.index();
            let verdict = match sequence {
                0 => Some(Arrival::Unnumbered),
                s if s <= index.taken => Some(Arrival::Taken(index.taken)),
                s if index.kept.contains(&s) => Some(Arrival::AlreadyKept),
                s if s < index.newest() => Some(Arrival::OutOfOrder),
                s if index.refused_from.is_some_and(|r| s > r) => Some(Arrival::Behind),
                _ if index.kept.len() >= self.max_kept => Some(Arrival::Full),
                _ => None,
            };
            if let Some(verdict) = verdict {
                if matches!(verdict, Arrival::Full | Arrival::Behind) {
                    refuse(&mut index, sequence);
                }
                return verdict;
            }
        }
        if let Err(e) = self
            .files
            .write(&self.dir, &file_name(sequence), &event.encode_to_vec())
        {
            error!(sequence, error = %e, "cannot keep an event on disk; not acknowledging it, the gateway delivers it again");
            refuse(&mut self.index(), sequence);
            return Arrival::NotWritten;
        }
        {
            let mut index = self.index();
            index.kept.insert(sequence);
            // Kept in order: what was refused before it came again and is taken now.
            index.refused_from = None;
        }
        self.arrived.send_replace(sequence);
        Arrival::Kept
    }

    /// The gateway begins delivering everything unacknowledged again, in order (a new
    /// connection's subscription): events refused before may now be kept.
    pub fn redelivery_begins(&self) {
        self.index().refused_from = None;
    }

    /// Whether an event was refused and the gateway must deliver again for the store to go on.
    pub fn waits_for_redelivery(&self) -> bool {
        self.index().refused_from.is_some()
    }

    /// The highest sequence an app acknowledged.
    pub fn taken(&self) -> u64 {
        self.index().taken
    }

    /// How many events are kept for apps.
    pub fn kept(&self) -> usize {
        self.index().kept.len()
    }

    /// An app's view of the kept events after `after` (at most the newest sequence received),
    /// until `closed` becomes true (shutdown).
    pub fn feed(self: &Arc<Self>, after: u64, closed: watch::Receiver<bool>) -> Result<EventFeed, CursorError> {
        let last = self.index().newest();
        if after > last {
            return Err(CursorError::Beyond { asked: after, last });
        }
        let permit = self
            .feeds
            .clone()
            .try_acquire_owned()
            .map_err(|_| CursorError::TooManyFeeds)?;
        Ok(EventFeed {
            store: self.clone(),
            after,
            arrivals: self.arrivals(),
            closed,
            _permit: permit,
        })
    }

    /// The first kept sequence after `after` (and after what was taken), if any.
    pub fn next_after(&self, after: u64) -> Option<u64> {
        let index = self.index();
        let from = after.max(index.taken);
        index.kept.range(from.saturating_add(1)..).next().copied()
    }

    /// Follows arrivals: changes whenever an event is kept.
    pub fn arrivals(&self) -> watch::Receiver<u64> {
        self.arrived.subscribe()
    }

    /// Reads kept event `sequence`; `None` if it is gone (taken meanwhile). Blocking file IO.
    pub fn read(&self, sequence: u64) -> io::Result<Option<Event>> {
        match std::fs::read(self.dir.join(file_name(sequence))) {
            Ok(bytes) => Event::decode(bytes.as_slice())
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// An app took every event up to `up_to`: writes the cursor, then forgets those events
    /// and removes their files. `Ok(false)`: nothing new (already taken). Blocking file IO;
    /// callers take turns (see `GatewayLink::ack_events`), so cursors are written in order.
    pub fn take(&self, up_to: u64) -> Result<bool, CursorError> {
        {
            let index = self.index();
            let last = index.newest();
            if up_to > last {
                return Err(CursorError::Beyond { asked: up_to, last });
            }
            if up_to <= index.taken {
                return Ok(false);
            }
        }
        self.files
            .write(&self.dir, TAKEN_FILE, format!("{up_to}\n").as_bytes())?;
        let gone: Vec<u64> = {
            let mut index = self.index();
            index.taken = up_to;
            let rest = index.kept.split_off(&up_to.saturating_add(1));
            std::mem::replace(&mut index.kept, rest).into_iter().collect()
        };
        for sequence in gone {
            // A file left behind is removed when the agent next starts: the cursor says it is taken.
            if let Err(e) = self.files.remove(&self.dir, &file_name(sequence)) {
                warn!(sequence, error = %e, "cannot remove a taken event's file");
            }
        }
        Ok(true)
    }
}

/// One app's view of the kept events: from its cursor on, in order, then each new one.
#[derive(Debug)]
pub struct EventFeed {
    store: Arc<EventStore>,
    /// The last sequence this feed handed out.
    after: u64,
    arrivals: watch::Receiver<u64>,
    closed: watch::Receiver<bool>,
    /// Its place among the [`MAX_EVENT_FEEDS`].
    _permit: OwnedSemaphorePermit,
}

impl EventFeed {
    /// The next event, waiting for one to arrive; `None` once the agent shuts down. Events an
    /// app acknowledged meanwhile are skipped: they were taken.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if *self.closed.borrow() {
                return None;
            }
            // Seen before looking, so an event kept after the look wakes the wait below.
            self.arrivals.borrow_and_update();
            if let Some(sequence) = self.store.next_after(self.after) {
                self.after = sequence;
                let store = self.store.clone();
                match tokio::task::spawn_blocking(move || store.read(sequence)).await {
                    Ok(Ok(Some(event))) => return Some(event),
                    // Taken by an app meanwhile.
                    Ok(Ok(None)) if sequence <= self.store.taken() => {}
                    Ok(Ok(None)) => error!(sequence, "a kept event's file is missing; skipping it"),
                    Ok(Err(e)) => error!(sequence, error = %e, "cannot read a kept event; skipping it"),
                    Err(_) => return None,
                }
                continue;
            }
            tokio::select! {
                _ = self.closed.wait_for(|c| *c) => return None,
                changed = self.arrivals.changed() => if changed.is_err() { return None },
            }
        }
    }
}

fn refuse(index: &mut Index, sequence: u64) {
    index.refused_from = Some(index.refused_from.map_or(sequence, |r| r.min(sequence)));
}

fn file_name(sequence: u64) -> String {
    format!("{sequence:020}{EVENT_SUFFIX}")
}

/// The sequence a kept event's file name holds, if it is one.
fn sequence_of(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(EVENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|s| *s > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Disk;

    fn event(sequence: u64) -> Event {
        Event {
            partner: "parking.v1.ParkingPayment".into(),
            kind: "session.ended".into(),
            payload: vec![1, 2, 3],
            sequence,
        }
    }

    fn open(dir: &Path, max: usize) -> EventStore {
        EventStore::open(dir, max, Arc::new(Disk)).unwrap()
    }

    #[test]
    fn kept_events_and_the_cursor_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let events = open(dir.path(), 10);
        for s in [1, 2, 3] {
            assert_eq!(events.arrive(&event(s)), Arrival::Kept);
        }
        assert_eq!(events.arrive(&event(2)), Arrival::AlreadyKept);
        assert!(events.take(1).unwrap());
        assert!(!events.take(1).unwrap(), "taking again changes nothing");
        let events = open(dir.path(), 10);
        assert_eq!(events.taken(), 1);
        assert_eq!(events.next_after(0), Some(2));
        assert_eq!(events.next_after(2), Some(3));
        assert_eq!(events.next_after(3), None);
        assert_eq!(events.read(2).unwrap(), Some(event(2)));
        assert_eq!(events.arrive(&event(1)), Arrival::Taken(1));
        assert_eq!(events.arrive(&event(0)), Arrival::Unnumbered);
        assert!(!dir.path().join("events").join(file_name(1)).exists());
    }

    #[test]
    fn nothing_is_kept_past_a_refused_event_until_it_comes_again() {
        let dir = tempfile::tempdir().unwrap();
        let events = open(dir.path(), 2);
        assert_eq!(events.arrive(&event(1)), Arrival::Kept);
        assert_eq!(events.arrive(&event(2)), Arrival::Kept);
        assert_eq!(events.arrive(&event(3)), Arrival::Full);
        events.take(2).unwrap();
        assert_eq!(events.arrive(&event(4)), Arrival::Behind, "3 first");
        assert!(events.waits_for_redelivery());
        assert_eq!(events.arrive(&event(3)), Arrival::Kept);
        assert_eq!(events.arrive(&event(4)), Arrival::Kept);
        assert_eq!(events.arrive(&event(5)), Arrival::Full);
        events.take(4).unwrap();
        // The gateway lost 5 meanwhile (it expired): a fresh delivery goes on from 6.
        events.redelivery_begins();
        assert_eq!(events.arrive(&event(6)), Arrival::Kept);
        assert_eq!(events.arrive(&event(5)), Arrival::OutOfOrder);
    }

    #[test]
    fn cursors_past_the_newest_event_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let events = Arc::new(open(dir.path(), 10));
        let (_, open) = watch::channel(false);
        events.feed(0, open.clone()).unwrap();
        events.arrive(&event(4));
        events.feed(4, open.clone()).unwrap();
        let e = events.feed(5, open).unwrap_err();
        assert_eq!(e.to_string(), "no event after 4 has arrived, so 5 is out of range");
        assert!(matches!(events.take(9), Err(CursorError::Beyond { asked: 9, last: 4 })));
    }

    #[test]
    fn feeds_are_bounded_and_a_closed_one_makes_room() {
        let dir = tempfile::tempdir().unwrap();
        let events = Arc::new(open(dir.path(), 10));
        let (_, open) = watch::channel(false);
        let mut feeds: Vec<EventFeed> = (0..MAX_EVENT_FEEDS)
            .map(|_| events.feed(0, open.clone()).unwrap())
            .collect();
        let e = events.feed(0, open.clone()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "64 event subscriptions are open already; close one first"
        );
        feeds.pop();
        events.feed(0, open).unwrap();
    }

    #[test]
    fn a_garbage_cursor_counts_as_zero_and_strange_files_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("events")).unwrap();
        std::fs::write(dir.path().join("events").join(TAKEN_FILE), "x\0").unwrap();
        std::fs::write(dir.path().join("events").join("notes.pb"), "x").unwrap();
        let events = open(dir.path(), 10);
        assert_eq!((events.taken(), events.kept()), (0, 0));
        assert_eq!(sequence_of(&file_name(42)), Some(42));
        assert_eq!(sequence_of("00000000000000000000.pb"), None);
    }
}
