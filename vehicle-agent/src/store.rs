//! Crash-safe files in the agent's state directory.
//!
//! Every file is replaced whole: written to a temporary name, flushed to the disk, renamed
//! over the old one and the directory flushed, so that after a crash or a power cut a reader
//! sees either the old content or the new one, never a mix.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Suffix of files being written; leftovers from a crash are removed on startup.
pub const TEMP_SUFFIX: &str = ".tmp";

/// The lock file that keeps a second agent off a state directory.
pub const LOCK_FILE: &str = "lock";

/// Longest request id, in characters; it is a file name on disk.
pub const MAX_REQUEST_ID_CHARS: usize = 128;

/// Whether `id` may name a request: 1 to 128 characters of `A-Z a-z 0-9 . _ -`, so that it is
/// a safe file name (no `/`, no NUL, not empty).
pub fn is_valid_request_id(id: &str) -> bool {
    (1..=MAX_REQUEST_ID_CHARS).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The wall clock in milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The writes and removals the outbox makes in the state directory. Behind a trait so that a
/// test can make them fail (a full disk) or wait (a slow one); [`Disk`] is the real thing.
pub trait StateFiles: Send + Sync + 'static {
    /// Replaces `dir/name` with `bytes` crash-safely, as [`write_atomic`] does.
    fn write(&self, dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()>;
    /// Removes `dir/name` durably, missing being fine, as [`remove_durable`] does.
    fn remove(&self, dir: &Path, name: &str) -> io::Result<()>;
}

/// The disk: [`write_atomic`] and [`remove_durable`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Disk;

impl StateFiles for Disk {
    fn write(&self, dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
        write_atomic(dir, name, bytes)
    }

    fn remove(&self, dir: &Path, name: &str) -> io::Result<()> {
        remove_durable(dir, name)
    }
}

/// Replaces `dir/name` with `bytes` crash-safely: temp file, fsync, rename, fsync of `dir`.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let temp = dir.join(format!("{name}{TEMP_SUFFIX}"));
    let written = (|| {
        let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, dir.join(name))?;
        sync_dir(dir)
    })();
    if written.is_err() {
        // A half-written temp file must not linger (e.g. on a full disk); it is never read.
        let _ = fs::remove_file(&temp);
    }
    written
}

/// Removes `dir/name` and flushes `dir`, so the removal survives a power cut. Missing is fine.
pub fn remove_durable(dir: &Path, name: &str) -> io::Result<()> {
    match fs::remove_file(dir.join(name)) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Flushes a directory's entries (new, renamed and removed names) to the disk.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `path` (and parents) if needed and flushes its parent, so it survives a reboot.
pub fn create_dir(path: &Path) -> io::Result<()> {
    fs::create_dir_all(path)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Takes the exclusive lock of `state_dir` (created if needed); held while the file lives.
pub fn lock_state_dir(state_dir: &Path) -> io::Result<File> {
    create_dir(state_dir)?;
    let path = state_dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(io::Error::new(
            io::ErrorKind::ResourceBusy,
            format!("{} is in use by another vehicle agent", state_dir.display()),
        )),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

/// The regular files directly in `dir` as (name, path); temp files left by a crash are removed.
pub fn list_files(dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if name.ends_with(TEMP_SUFFIX) {
            let _ = fs::remove_file(&path);
            continue;
        }
        if entry.file_type()?.is_file() {
            files.push((name, path));
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_safe_file_names() {
        for ok in ["a", "req-0001", "A.b_c-9", "..", &"x".repeat(128)] {
            assert!(is_valid_request_id(ok), "{ok:?}");
        }
        for bad in ["", "a/b", "a b", "é", "a\0", "../x", &"x".repeat(129), "a:b"] {
            assert!(!is_valid_request_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        write_atomic(dir.path(), "f", b"one").unwrap();
        write_atomic(dir.path(), "f", b"two").unwrap();
        assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"two");
        fs::write(dir.path().join("g.pb.tmp"), b"half").unwrap();
        let names: Vec<String> = list_files(dir.path()).unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec!["f".to_owned()]);
        remove_durable(dir.path(), "f").unwrap();
        remove_durable(dir.path(), "f").unwrap();
    }

    #[test]
    fn one_agent_per_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let held = lock_state_dir(&state).unwrap();
        let e = lock_state_dir(&state).unwrap_err();
        assert!(e.to_string().contains("in use by another vehicle agent"), "{e}");
        drop(held);
        lock_state_dir(&state).unwrap();
    }
}
