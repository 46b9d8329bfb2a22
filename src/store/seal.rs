//! AES-256-GCM envelope encryption: a random data key per held message seals its parts, and
//! a master key wraps the data key. Each seal binds the held id and the part's name as
//! associated data, so a ciphertext moved to another record or part fails to open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};

use super::master::{MasterKey, MasterKeys};

/// Bytes in an AES-GCM nonce.
pub(crate) const NONCE_LEN: usize = 12;
/// Bytes of a wrapped data key: nonce, 32-byte key and 16-byte tag.
const WRAPPED_KEY_LEN: usize = NONCE_LEN + 32 + 16;

/// A per-message data key.
pub(crate) struct DataKey([u8; 32]);

impl DataKey {
    pub(crate) fn generate() -> DataKey {
        DataKey(rand::random())
    }

    /// Wraps this key with `master`; returns `nonce || ciphertext`.
    pub(crate) fn wrap(&self, master: &MasterKey, held_id: &str) -> Vec<u8> {
        let (nonce, ciphertext) = seal(&master.0, &self.0, &aad(held_id, "data-key"));
        let mut wrapped = nonce.to_vec();
        wrapped.extend_from_slice(&ciphertext);
        wrapped
    }

    /// Unwraps a key written by [`DataKey::wrap`]; `None` when the master key is wrong or
    /// the bytes were changed.
    pub(crate) fn unwrap(wrapped: &[u8], master: &MasterKey, held_id: &str) -> Option<DataKey> {
        if wrapped.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = wrapped.split_at(NONCE_LEN);
        let key = open(&master.0, nonce, ciphertext, &aad(held_id, "data-key"))?;
        key.try_into().ok().map(DataKey)
    }

    /// Encrypts one part of a message; returns the nonce and the ciphertext with its tag.
    pub(crate) fn seal(&self, plaintext: &[u8], held_id: &str, part: &str) -> ([u8; 12], Vec<u8>) {
        seal(&self.0, plaintext, &aad(held_id, part))
    }

    /// Decrypts one part; `None` when the key is wrong or the bytes were changed.
    pub(crate) fn open(
        &self,
        nonce: &[u8],
        ciphertext: &[u8],
        held_id: &str,
        part: &str,
    ) -> Option<Vec<u8>> {
        open(&self.0, nonce, ciphertext, &aad(held_id, part))
    }
}

/// Encrypts one record's part under a new data key wrapped by the current master key, and
/// returns the master key's id and `wrapped key || nonce || ciphertext`. `record` names the
/// record in the associated data, so the blob opens only for the same record and part.
pub(crate) fn seal_record(
    keys: &MasterKeys,
    record: &str,
    part: &str,
    plaintext: &[u8],
) -> (u32, Vec<u8>) {
    let data_key = DataKey::generate();
    let (key_id, master) = keys.current();
    let mut blob = data_key.wrap(master, record);
    let (nonce, ciphertext) = data_key.seal(plaintext, record, part);
    blob.extend_from_slice(&nonce);
    blob.extend_from_slice(&ciphertext);
    (key_id, blob)
}

/// Outcome of [`open_record`] when it cannot return the plaintext.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum OpenFailure {
    /// The master key with the record's key id is not loaded.
    KeyUnavailable,
    /// The blob is damaged, or was sealed for another record or part.
    Damaged,
}

/// Decrypts a blob written by [`seal_record`] with the master key `key_id`.
pub(crate) fn open_record(
    keys: &MasterKeys,
    key_id: u32,
    record: &str,
    part: &str,
    blob: &[u8],
) -> Result<Vec<u8>, OpenFailure> {
    let master = keys.get(key_id).ok_or(OpenFailure::KeyUnavailable)?;
    if blob.len() < WRAPPED_KEY_LEN + NONCE_LEN {
        return Err(OpenFailure::Damaged);
    }
    let (wrapped, rest) = blob.split_at(WRAPPED_KEY_LEN);
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let data_key = DataKey::unwrap(wrapped, master, record).ok_or(OpenFailure::Damaged)?;
    data_key
        .open(nonce, ciphertext, record, part)
        .ok_or(OpenFailure::Damaged)
}

fn aad(held_id: &str, part: &str) -> Vec<u8> {
    format!("sealgate-store-v1:{held_id}:{part}").into_bytes()
}

fn seal(key: &[u8; 32], plaintext: &[u8], aad: &[u8]) -> ([u8; 12], Vec<u8>) {
    let cipher = Aes256Gcm::new(&(*key).into());
    // A random 96-bit nonce per seal. Every data key seals at most two parts, and a master
    // key wraps one data key per held or queued message, far below the 2^32 random nonces per key that
    // NIST SP 800-38D §8.3 allows.
    let nonce_bytes: [u8; NONCE_LEN] = rand::random();
    let nonce = Nonce::from(nonce_bytes);
    let ciphertext = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .expect("AES-GCM encryption of a message below 64 GiB cannot fail");
    (nonce_bytes, ciphertext)
}

fn open(key: &[u8; 32], nonce: &[u8], ciphertext: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
    let cipher = Aes256Gcm::new(&(*key).into());
    cipher
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .ok()
}
