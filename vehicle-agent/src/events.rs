//! The last partner event handed to apps, kept on disk so that dedupe survives a restart.
//!
//! The gateway redelivers an event until the car acknowledges it, so after a crash between
//! broadcasting and acknowledging the same event comes again: its sequence number, stored in
//! `state_dir/events/last_sequence` before the broadcast, tells the agent it was delivered.

use std::io;
use std::path::{Path, PathBuf};

use tracing::warn;

use crate::store;

const FILE: &str = "last_sequence";

/// What to do with an event, by its sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Unnumbered (sequence 0): broadcast, cannot be deduplicated or acknowledged.
    Unnumbered,
    /// New: store the sequence, broadcast, then acknowledge.
    New,
    /// Seen before (a redelivery): acknowledge again, do not broadcast.
    Seen,
}

/// The highest event sequence delivered to apps, persisted under the state directory.
#[derive(Debug)]
pub struct EventCursor {
    dir: PathBuf,
    last: u64,
}

impl EventCursor {
    /// Opens `state_dir/events` (created if needed); an unreadable file counts as 0 (events
    /// may then be shown twice, which beats losing them) and is rewritten on the next event.
    pub fn open(state_dir: &Path) -> io::Result<EventCursor> {
        let dir = state_dir.join("events");
        store::create_dir(&dir)?;
        let path = dir.join(FILE);
        let last = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse().unwrap_or_else(|_| {
                warn!(file = %path.display(), "ignoring an unreadable last event sequence");
                0
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        Ok(EventCursor { dir, last })
    }

    /// The highest sequence delivered so far (0: none).
    pub fn last(&self) -> u64 {
        self.last
    }

    /// How an event numbered `sequence` is to be handled.
    pub fn verdict(&self, sequence: u64) -> Verdict {
        match sequence {
            0 => Verdict::Unnumbered,
            s if s > self.last => Verdict::New,
            _ => Verdict::Seen,
        }
    }

    /// Persists `sequence` as the last delivered (crash-safely), then remembers it.
    pub fn advance(&mut self, sequence: u64) -> io::Result<()> {
        store::write_atomic(&self.dir, FILE, format!("{sequence}\n").as_bytes())?;
        self.last = sequence;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut cursor = EventCursor::open(dir.path()).unwrap();
        assert_eq!(cursor.last(), 0);
        assert_eq!(cursor.verdict(0), Verdict::Unnumbered);
        assert_eq!(cursor.verdict(1), Verdict::New);
        cursor.advance(7).unwrap();
        let cursor = EventCursor::open(dir.path()).unwrap();
        assert_eq!(cursor.last(), 7);
        assert_eq!(cursor.verdict(7), Verdict::Seen);
        assert_eq!(cursor.verdict(3), Verdict::Seen);
        assert_eq!(cursor.verdict(8), Verdict::New);
    }

    #[test]
    fn garbage_counts_as_zero() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("events")).unwrap();
        std::fs::write(dir.path().join("events").join(FILE), "x\0").unwrap();
        assert_eq!(EventCursor::open(dir.path()).unwrap().last(), 0);
    }
}
