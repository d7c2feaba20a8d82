//! Writing certificates and private keys to disk.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::CertsError;

/// Permissions of private key files: readable by the owner only.
const KEY_MODE: u32 = 0o600;
/// Permissions of certificate files (further restricted by the umask).
const CERT_MODE: u32 = 0o644;

/// A freshly issued certificate and its private key, both PEM-encoded.
#[derive(Clone)]
pub struct IssuedCert {
    /// The certificate, PEM-encoded.
    pub cert_pem: String,
    /// The PKCS#8 private key, PEM-encoded.
    pub key_pem: String,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Debug output ends up in logs; the key must not.
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[elided]")
            .finish()
    }
}

impl IssuedCert {
    /// Writes `<dir>/<stem>.pem` and `<dir>/<stem>.key` (mode 0600), creating `dir` if needed.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf), CertsError> {
        check_stem(stem)?;
        create_dir(dir)?;
        let cert_path = dir.join(format!("{stem}.pem"));
        let key_path = dir.join(format!("{stem}.key"));
        write_key(&key_path, &self.key_pem)?;
        write_cert(&cert_path, &self.cert_pem)?;
        Ok((cert_path, key_path))
    }
}

/// Refuses stems that are empty or would place the files outside `dir`.
fn check_stem(stem: &str) -> Result<(), CertsError> {
    let bad =
        stem.is_empty() || stem == "." || stem == ".." || stem.contains(['/', '\\', '\0']) || stem.starts_with('.');
    if bad {
        return Err(CertsError::InvalidFileStem(stem.to_owned()));
    }
    Ok(())
}

pub(crate) fn create_dir(dir: &Path) -> Result<(), CertsError> {
    fs::create_dir_all(dir).map_err(CertsError::io("create directory", dir))
}

/// Writes a private key so that it is never, even briefly, readable by anyone but the owner.
pub(crate) fn write_key(path: &Path, pem: &str) -> Result<(), CertsError> {
    write_replacing(path, pem.as_bytes(), KEY_MODE, true)
}

/// Writes a certificate.
pub(crate) fn write_cert(path: &Path, pem: &str) -> Result<(), CertsError> {
    write_replacing(path, pem.as_bytes(), CERT_MODE, false)
}

/// Writes a certificate revocation list (PEM) atomically: a reader (the gateway reloading it)
/// sees the old list or the new one, never half of one.
pub fn write_revocation_list(path: &Path, pem: &str) -> Result<(), CertsError> {
    write_replacing(path, pem.as_bytes(), CERT_MODE, false)
}

/// Writes `contents` to a new temporary file created with `mode`, then renames it over `path`.
///
/// Writing in place would keep the permissions of an existing file (perhaps world-readable) and
/// could leave a truncated file behind; the rename replaces the file atomically.
fn write_replacing(path: &Path, contents: &[u8], mode: u32, exact_mode: bool) -> Result<(), CertsError> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
    let result = write_new(&tmp, contents, mode, exact_mode)
        .and_then(|()| fs::rename(&tmp, path).map_err(CertsError::io("write", path)));
    if result.is_err() {
        // Best effort: the original error matters more than a leftover temporary file.
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_new(path: &Path, contents: &[u8], mode: u32, exact_mode: bool) -> Result<(), CertsError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    set_mode(&mut options, mode);
    let mut file = options.open(path).map_err(CertsError::io("create", path))?;
    if exact_mode {
        // The umask can only remove bits; this restores owner read/write under a strict umask.
        set_exact_mode(&file, mode).map_err(CertsError::io("set permissions of", path))?;
    }
    file.write_all(contents).map_err(CertsError::io("write", path))?;
    file.sync_all().map_err(CertsError::io("write", path))
}

#[cfg(unix)]
fn set_mode(options: &mut OpenOptions, mode: u32) {
    use std::os::unix::fs::OpenOptionsExt;
    options.mode(mode);
}

#[cfg(not(unix))]
fn set_mode(_options: &mut OpenOptions, _mode: u32) {}

#[cfg(unix)]
fn set_exact_mode(file: &fs::File, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_exact_mode(_file: &fs::File, _mode: u32) -> std::io::Result<()> {
    Ok(())
}

/// Reads a whole text file, mapping "not found" to `missing()`.
pub(crate) fn read_to_string(path: &Path, missing: impl FnOnce() -> CertsError) -> Result<String, CertsError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(missing()),
        Err(e) => Err(CertsError::io("read", path)(e)),
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn key_is_private_and_replaces_a_world_readable_file() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("x.key");
        fs::write(&key, "old").unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();

        write_key(&key, "secret").unwrap();

        assert_eq!(mode(&key), 0o600);
        assert_eq!(fs::read_to_string(&key).unwrap(), "secret");
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temporary file left behind");
    }

    #[test]
    fn write_creates_the_directory_and_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("a/b");
        let issued = IssuedCert {
            cert_pem: "CERT".into(),
            key_pem: "KEY".into(),
        };

        let (cert, key) = issued.write(&out, "thing").unwrap();

        assert_eq!(cert, out.join("thing.pem"));
        assert_eq!(key, out.join("thing.key"));
        assert_eq!(fs::read_to_string(&cert).unwrap(), "CERT");
        assert_eq!(mode(&key), 0o600);
        assert!(!format!("{issued:?}").contains("KEY"));
    }

    #[test]
    fn stems_cannot_escape_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let issued = IssuedCert {
            cert_pem: String::new(),
            key_pem: String::new(),
        };
        for stem in ["", "..", "../x", "a/b", ".hidden"] {
            assert!(
                matches!(issued.write(dir.path(), stem), Err(CertsError::InvalidFileStem(_))),
                "{stem:?} accepted"
            );
        }
    }
}
