//! Master keys: `store-master-<id>.key` files in `server.keys_dir`, each 32 random bytes
//! written as hex or base64. They wrap the per-message keys. Rotating means adding a file
//! with a higher id, and messages wrapped by an older key stay readable while its file
//! exists.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;

use super::StoreError;

const PREFIX: &str = "store-master-";
const SUFFIX: &str = ".key";

/// One 256-bit master key.
#[derive(Clone)]
pub(crate) struct MasterKey(pub(crate) [u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// The master keys found in a keys folder, by id. The hold store and the queue database
/// both wrap their per-message keys with them.
#[derive(Clone, Debug)]
pub struct MasterKeys {
    keys: BTreeMap<u32, MasterKey>,
    current: u32,
}

impl MasterKeys {
    /// Loads every `store-master-<id>.key` in `keys_dir`. `current` picks the key for new
    /// messages; the highest id when `None`.
    ///
    /// # Errors
    ///
    /// [`StoreError::MasterKeyMissing`] naming the expected file when there is no key or
    /// no key with id `current`, [`StoreError::MasterKeyInvalid`] for a file that is not
    /// 32 bytes or is readable by others, and [`StoreError::Io`] when the folder cannot be
    /// read.
    pub fn load(keys_dir: &Path, current: Option<u32>) -> Result<MasterKeys, StoreError> {
        let mut keys = BTreeMap::new();
        let entries = std::fs::read_dir(keys_dir).map_err(|source| StoreError::Io {
            path: keys_dir.to_owned(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| StoreError::Io {
                path: keys_dir.to_owned(),
                source,
            })?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(parse_file_name) else {
                continue;
            };
            keys.insert(id, read_key(&entry.path())?);
        }
        let current = match current {
            Some(id) if keys.contains_key(&id) => id,
            Some(id) => {
                return Err(StoreError::MasterKeyMissing {
                    path: key_path(keys_dir, id),
                });
            }
            None => match keys.keys().next_back() {
                Some(id) => *id,
                None => {
                    return Err(StoreError::MasterKeyMissing {
                        path: key_path(keys_dir, 1),
                    });
                }
            },
        };
        Ok(MasterKeys { keys, current })
    }

    /// The id and key that wrap new messages' keys.
    pub(crate) fn current(&self) -> (u32, &MasterKey) {
        (self.current, &self.keys[&self.current])
    }

    /// The key with this id, when its file was loaded.
    pub(crate) fn get(&self, id: u32) -> Option<&MasterKey> {
        self.keys.get(&id)
    }
}

/// Path of the master key file with this id.
pub fn key_path(keys_dir: &Path, id: u32) -> PathBuf {
    keys_dir.join(format!("{PREFIX}{id}{SUFFIX}"))
}

/// Writes a new random master key, with an id one above the highest in `keys_dir` (1 when
/// there is none), as hex into a file of mode 0600. Returns its id and path.
///
/// # Errors
///
/// [`StoreError::Io`] when the folder cannot be read or the file cannot be written.
pub fn create_master_key(keys_dir: &Path) -> Result<(u32, PathBuf), StoreError> {
    std::fs::create_dir_all(keys_dir).map_err(|source| StoreError::Io {
        path: keys_dir.to_owned(),
        source,
    })?;
    let highest = std::fs::read_dir(keys_dir)
        .map_err(|source| StoreError::Io {
            path: keys_dir.to_owned(),
            source,
        })?
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str().and_then(parse_file_name))
        .max()
        .unwrap_or(0);
    let id = highest + 1;
    let path = key_path(keys_dir, id);
    let key: [u8; 32] = rand::random();
    let mut text = to_hex(&key);
    text.push('\n');

    let write_error = |source| StoreError::Io {
        path: path.clone(),
        source,
    };
    // `create_new` never replaces a key, which would make its messages unreadable.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(write_error)?;
    file.write_all(text.as_bytes()).map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    Ok((id, path))
}

/// Creates the first master key when `keys_dir` has none; returns its path when it did.
///
/// # Errors
///
/// As for [`create_master_key`].
pub fn ensure_master_key(keys_dir: &Path) -> Result<Option<PathBuf>, StoreError> {
    let exists = std::fs::read_dir(keys_dir).is_ok_and(|entries| {
        entries.filter_map(Result::ok).any(|entry| {
            entry
                .file_name()
                .to_str()
                .and_then(parse_file_name)
                .is_some()
        })
    });
    if exists {
        return Ok(None);
    }
    create_master_key(keys_dir).map(|(_, path)| Some(path))
}

/// Creates a master key in `keys_dir` when it has none and loads the keys, for tests.
#[cfg(test)]
pub(crate) fn test_master_keys(keys_dir: &Path) -> std::sync::Arc<MasterKeys> {
    ensure_master_key(keys_dir).expect("master key written");
    std::sync::Arc::new(MasterKeys::load(keys_dir, None).expect("master key loads"))
}

fn parse_file_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|id| *id > 0)
}

fn read_key(path: &Path) -> Result<MasterKey, StoreError> {
    let invalid = |reason: &str| StoreError::MasterKeyInvalid {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let metadata = std::fs::metadata(path).map_err(|source| StoreError::Io {
        path: path.to_owned(),
        source,
    })?;
    if metadata.permissions().mode() & 0o077 != 0 {
        return Err(invalid(
            "readable by group or others; set mode 0600 with chmod 600",
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|source| StoreError::Io {
        path: path.to_owned(),
        source,
    })?;
    let text = text.trim();
    let bytes = if text.len() == 64 && text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        from_hex(text)
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| invalid("expected 32 bytes as 64 hex digits or base64"))?
    };
    let key: [u8; 32] = bytes
        .try_into()
        .map_err(|_| invalid("expected 32 bytes as 64 hex digits or base64"))?;
    Ok(MasterKey(key))
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn from_hex(text: &str) -> Vec<u8> {
    text.as_bytes()
        .chunks(2)
        .map(|pair| {
            let digits = std::str::from_utf8(pair).unwrap_or("00");
            u8::from_str_radix(digits, 16).unwrap_or(0)
        })
        .collect()
}
