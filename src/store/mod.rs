//! The hold store: sensitive mail for recipients without a secure route or a certificate,
//! kept encrypted until the recipient collects it from the portal or it expires.
//!
//! Each held message gets a random AES-256-GCM data key that seals the message and,
//! separately, its envelope (queue id, sender, recipient, subject). A master key from
//! `keys/store-master-<id>.key` wraps the data key, and the record keeps the master key's
//! id, so master keys can be rotated. Nothing of the message or its addresses is stored in
//! clear. The recipient's link carries a random token, and the store keeps only its
//! SHA-256 hash. Expiry and revocation delete the ciphertexts and the wrapped key, and
//! keep the record.
//!
//! The tables live in the queue database, in SQL that PostgreSQL also accepts.

mod config;
mod master;
pub mod notification;
mod seal;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use base64::Engine;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use sha2::{Digest, Sha256};

pub(crate) use config::is_web_url;
pub use config::{PortalConfig, StoreConfig};
#[cfg(test)]
pub(crate) use master::test_master_keys;
pub use master::{MasterKeys, create_master_key, ensure_master_key, key_path};

use crate::config::Config;
use crate::queue::store::{add_missing_columns, now_millis};
use seal::DataKey;
pub(crate) use seal::{OpenFailure, open_record, seal_record};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS held_messages (
    id                   TEXT PRIMARY KEY,
    queue_id             TEXT NOT NULL,
    created_at           BIGINT NOT NULL,
    expires_at           BIGINT NOT NULL,
    state                TEXT NOT NULL,
    key_id               INTEGER NOT NULL,
    wrapped_key          BLOB,
    token_hash           BLOB NOT NULL,
    nonce                BLOB,
    ciphertext           BLOB,
    envelope_nonce       BLOB,
    envelope_ciphertext  BLOB,
    passcode_hash        BLOB,
    passcode_created_at  BIGINT,
    passcode_attempts    INTEGER NOT NULL DEFAULT 0,
    passcode_sends       INTEGER NOT NULL DEFAULT 0,
    passcode_last_sent_at BIGINT,
    passcode_window_started_at BIGINT,
    passcode_window_sends INTEGER NOT NULL DEFAULT 0,
    passcode_locked_at   BIGINT
);
CREATE UNIQUE INDEX IF NOT EXISTS held_messages_token ON held_messages (token_hash);
CREATE INDEX IF NOT EXISTS held_messages_queue ON held_messages (queue_id);
CREATE INDEX IF NOT EXISTS held_messages_due ON held_messages (state, expires_at);
";

/// Random bytes in an access token: 256 bits, well above the 128 that make guessing one
/// hopeless.
const TOKEN_BYTES: usize = 32;

/// A hold store operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed an operation.
    #[error("hold store database error: {0}")]
    Database(#[from] rusqlite::Error),
    /// A file or folder could not be used.
    #[error("failed to use {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No master key file with the needed id exists.
    #[error(
        "master key {path} not found; create one with `sealgate init` or `sealgate held new-key`"
    )]
    MasterKeyMissing {
        /// The file that was expected.
        path: PathBuf,
    },
    /// A master key file exists but cannot be used.
    #[error("master key {path}: {reason}")]
    MasterKeyInvalid {
        /// The file.
        path: PathBuf,
        /// The problem found.
        reason: String,
    },
    /// No held message has this id.
    #[error("held message {0} not found")]
    NotFound(HeldId),
    /// The held message expired or was revoked, so its content is gone.
    #[error("held message {id} is {state}; its content has been deleted")]
    NotActive {
        /// The held id.
        id: HeldId,
        /// Its state.
        state: HeldState,
    },
    /// The master key that wrapped this message's key is not loaded.
    #[error("held message {id} needs master key {key_id}, which is not in the keys folder")]
    KeyUnavailable {
        /// The held id.
        id: HeldId,
        /// The master key id the record names.
        key_id: u32,
    },
    /// Decryption failed: a wrong key or changed bytes.
    #[error("held message {0} failed to decrypt: wrong key or damaged record")]
    Decrypt(HeldId),
}

/// Names one held message: 16 uppercase hex digits, random.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HeldId(String);

impl HeldId {
    /// Draws a new random id.
    pub fn generate() -> HeldId {
        HeldId(format!("{:016X}", rand::random::<u64>()))
    }

    /// Accepts an id read back from the store or typed by an operator.
    pub fn parse(text: &str) -> Option<HeldId> {
        let valid = text.len() == 16 && text.bytes().all(|byte| byte.is_ascii_hexdigit());
        valid.then(|| HeldId(text.to_ascii_uppercase()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for HeldId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Lifecycle state of a held message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeldState {
    /// The content can be collected.
    Active,
    /// The retention period ended and the content was deleted.
    Expired,
    /// An administrator revoked it and the content was deleted.
    Revoked,
}

impl HeldState {
    /// The state's name as stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            HeldState::Active => "active",
            HeldState::Expired => "expired",
            HeldState::Revoked => "revoked",
        }
    }

    fn parse(name: &str) -> HeldState {
        match name {
            "active" => HeldState::Active,
            "expired" => HeldState::Expired,
            // An unknown state is treated as the most restrictive one.
            _ => HeldState::Revoked,
        }
    }
}

impl std::fmt::Display for HeldState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The envelope of a held message, stored encrypted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldEnvelope {
    /// Queue id of the original message.
    pub queue_id: String,
    /// Envelope sender, empty for `<>`.
    pub sender: String,
    /// The one recipient this copy is held for.
    pub recipient: String,
    /// The message's subject as text, empty when it has none.
    pub subject: String,
}

/// A new hold: its id, its access token (returned only here) and its expiry.
#[derive(Clone, Debug)]
pub struct NewHold {
    /// The held id.
    pub id: HeldId,
    /// Access token for the portal link, URL-safe base64 without padding. The store keeps
    /// only its SHA-256 hash, so this is the only copy.
    pub token: String,
    /// Unix milliseconds at which the content is deleted.
    pub expires_at: i64,
}

/// The clear-text facts of a held message, read without decrypting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldSummary {
    /// The held id.
    pub id: HeldId,
    /// The state. An active record past its expiry reads as `Expired` even before
    /// [`HoldStore::expire_due`] has deleted its content.
    pub state: HeldState,
    /// Unix milliseconds of the hold.
    pub created_at: i64,
    /// Unix milliseconds of the expiry.
    pub expires_at: i64,
}

/// A decrypted held message.
#[derive(Clone, Debug)]
pub struct OpenedMessage {
    /// The message as it was accepted (RFC 5322 bytes, CRLF line endings).
    pub message: Vec<u8>,
    /// Its envelope.
    pub envelope: HeldEnvelope,
}

/// Passcode state of a held message, for the portal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasscodeState {
    /// Hash of the current one-time passcode, as the portal computed it; `None` when no
    /// passcode is outstanding.
    pub passcode_hash: Option<Vec<u8>>,
    /// Unix milliseconds at which the current passcode was set.
    pub created_at: Option<i64>,
    /// Wrong entries of the current passcode.
    pub attempts: u32,
    /// Passcodes sent for this message in total.
    pub sends: u32,
    /// Unix milliseconds of the last send.
    pub last_sent_at: Option<i64>,
    /// Sends in the current period and the lockout, as the portal's limits use them.
    pub history: SendHistory,
}

/// The passcode mails of a held message and its last lockout, stored so that the portal's
/// limits survive a restart. Times are Unix milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendHistory {
    /// The last passcode mail.
    pub last_sent_at: Option<i64>,
    /// Start of the period in which `window_sends` counts.
    pub window_started_at: Option<i64>,
    /// Passcode mails since `window_started_at`.
    pub window_sends: u32,
    /// When too many wrong passcodes locked the message, until a new passcode is sent.
    pub locked_at: Option<i64>,
}

/// The hold store; cheap to clone, and safe to share between threads.
#[derive(Clone)]
pub struct HoldStore {
    connection: Arc<Mutex<Connection>>,
    keys: Arc<MasterKeys>,
    retention_millis: i64,
}

impl HoldStore {
    /// Opens the hold store tables in the queue database and loads the master keys.
    ///
    /// # Errors
    ///
    /// [`StoreError::MasterKeyMissing`] or [`StoreError::MasterKeyInvalid`] for the keys,
    /// [`StoreError::Io`] and [`StoreError::Database`] for the database.
    pub fn open(config: &Config) -> Result<HoldStore, StoreError> {
        let keys = MasterKeys::load(&config.server.keys_dir, config.store.master_key_id)?;
        let connection = open_database(config)?;
        connection.execute_batch(SCHEMA)?;
        add_missing_columns(
            &connection,
            "held_messages",
            &[
                ("passcode_window_started_at", "BIGINT"),
                ("passcode_window_sends", "INTEGER NOT NULL DEFAULT 0"),
                ("passcode_locked_at", "BIGINT"),
            ],
        )?;
        Ok(HoldStore {
            connection: Arc::new(Mutex::new(connection)),
            keys: Arc::new(keys),
            retention_millis: config.store.retention.0.as_millis() as i64,
        })
    }

    /// Encrypts and stores one recipient's copy of a message, and returns its new id and
    /// access token.
    ///
    /// Holding the same queue id and recipient again reuses the active record and gives it
    /// a fresh token. That happens after a crash between the hold and the queue update, so
    /// the message is stored once and only the newest token opens it.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`] when the record cannot be written.
    pub fn hold(&self, message: &[u8], envelope: &HeldEnvelope) -> Result<NewHold, StoreError> {
        let mut held = self.hold_all(&[(message, envelope)])?;
        Ok(held.remove(0))
    }

    /// Holds several recipients' copies as [`HoldStore::hold`] does, in one transaction,
    /// and returns their new ids and tokens in the same order. Either every copy is stored
    /// or none is.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`] when the records cannot be written.
    pub fn hold_all(&self, copies: &[(&[u8], &HeldEnvelope)]) -> Result<Vec<NewHold>, StoreError> {
        // Only the queue manager holds, one batch at a time, so no other hold for the same
        // queue id and recipient can start between this lookup and the commit.
        let reusable = copies
            .iter()
            .map(|(_, envelope)| self.find_active_hold(envelope))
            .collect::<Result<Vec<_>, _>>()?;
        let mut connection = self.lock();
        let transaction = begin_write(&mut connection)?;
        let mut held = Vec::with_capacity(copies.len());
        for ((message, envelope), reusable) in copies.iter().zip(reusable) {
            let token = generate_token();
            let token_hash = hash_token(&token);
            if let Some((id, expires_at)) = reusable {
                transaction.execute(
                    "UPDATE held_messages SET token_hash = ?2 WHERE id = ?1",
                    params![id.as_str(), token_hash.as_slice()],
                )?;
                held.push(NewHold {
                    id,
                    token,
                    expires_at,
                });
                continue;
            }

            let id = HeldId::generate();
            let now = now_millis();
            let expires_at = now + self.retention_millis;
            let data_key = DataKey::generate();
            let (key_id, master) = self.keys.current();
            let wrapped = data_key.wrap(master, id.as_str());
            let (nonce, ciphertext) = data_key.seal(message, id.as_str(), "message");
            let (envelope_nonce, envelope_ciphertext) =
                data_key.seal(&encode_envelope(envelope), id.as_str(), "envelope");
            transaction.execute(
                "INSERT INTO held_messages (id, queue_id, created_at, expires_at, state, key_id,
                     wrapped_key, token_hash, nonce, ciphertext, envelope_nonce,
                     envelope_ciphertext)
                 VALUES (?1, ?2, ?3, ?4, 'active', ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    id.as_str(),
                    envelope.queue_id,
                    now,
                    expires_at,
                    key_id,
                    wrapped,
                    token_hash.as_slice(),
                    nonce.as_slice(),
                    ciphertext,
                    envelope_nonce.as_slice(),
                    envelope_ciphertext,
                ],
            )?;
            held.push(NewHold {
                id,
                token,
                expires_at,
            });
        }
        transaction.commit()?;
        Ok(held)
    }

    /// Finds the held message a token opens, by the token's hash; `None` for an unknown
    /// token.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub fn find_by_token(&self, token: &str) -> Result<Option<HeldSummary>, StoreError> {
        let hash = hash_token(token);
        let connection = self.lock();
        let mut statement = connection.prepare_cached(
            "SELECT id, state, created_at, expires_at FROM held_messages WHERE token_hash = ?1",
        )?;
        Ok(statement
            .query_row([hash.as_slice()], summary_from_row)
            .optional()?)
    }

    /// Decrypts a held message and its envelope.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`], [`StoreError::NotActive`] once expired or revoked,
    /// [`StoreError::KeyUnavailable`] when its master key file is gone, and
    /// [`StoreError::Decrypt`] for a wrong key or damaged record.
    pub fn open_message(&self, id: &HeldId) -> Result<OpenedMessage, StoreError> {
        let sealed = self.read_sealed(id, true)?;
        let message = sealed
            .data_key
            .open(&sealed.nonce, &sealed.ciphertext, id.as_str(), "message")
            .ok_or_else(|| StoreError::Decrypt(id.clone()))?;
        Ok(OpenedMessage {
            message,
            envelope: sealed.envelope,
        })
    }

    /// Decrypts only the envelope of a held message, as the CLI and passcode mails need.
    ///
    /// # Errors
    ///
    /// As for [`HoldStore::open_message`].
    pub fn open_envelope(&self, id: &HeldId) -> Result<HeldEnvelope, StoreError> {
        Ok(self.read_sealed(id, false)?.envelope)
    }

    /// Stores the hash of a newly sent passcode, resets the failure count and counts the
    /// send.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`], [`StoreError::Database`].
    pub fn set_passcode(
        &self,
        id: &HeldId,
        passcode_hash: &[u8],
        now: i64,
    ) -> Result<(), StoreError> {
        let updated = self.lock().execute(
            "UPDATE held_messages SET passcode_hash = ?2, passcode_created_at = ?3,
                 passcode_attempts = 0, passcode_sends = passcode_sends + 1,
                 passcode_last_sent_at = ?3
             WHERE id = ?1",
            params![id.as_str(), passcode_hash, now],
        )?;
        found(updated, id)
    }

    /// Reads the passcode state; `None` when no held message has this id.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub fn passcode_state(&self, id: &HeldId) -> Result<Option<PasscodeState>, StoreError> {
        let connection = self.lock();
        read_passcode_state(&connection, id)
    }

    /// Stores the hash of a new passcode when `decide` allows another send, in one step
    /// so that concurrent requests cannot both pass the limits. `decide` gets the stored
    /// [`SendHistory`] and returns the history after this send, or how long to wait.
    /// Returns that wait, storing nothing, when `decide` refused.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`], [`StoreError::Database`].
    pub fn set_passcode_within(
        &self,
        id: &HeldId,
        passcode_hash: &[u8],
        now: i64,
        decide: impl FnOnce(&SendHistory) -> Result<SendHistory, std::time::Duration>,
    ) -> Result<Result<(), std::time::Duration>, StoreError> {
        let mut connection = self.lock();
        let transaction = begin_write(&mut connection)?;
        let state = read_passcode_state(&transaction, id)?
            .ok_or_else(|| StoreError::NotFound(id.clone()))?;
        let history = match decide(&state.history) {
            Ok(history) => history,
            Err(wait) => return Ok(Err(wait)),
        };
        transaction.execute(
            "UPDATE held_messages SET passcode_hash = ?2, passcode_created_at = ?3,
                 passcode_attempts = 0, passcode_sends = passcode_sends + 1,
                 passcode_last_sent_at = ?4, passcode_window_started_at = ?5,
                 passcode_window_sends = ?6, passcode_locked_at = ?7
             WHERE id = ?1",
            params![
                id.as_str(),
                passcode_hash,
                now,
                history.last_sent_at,
                history.window_started_at,
                history.window_sends,
                history.locked_at,
            ],
        )?;
        transaction.commit()?;
        Ok(Ok(()))
    }

    /// Removes the current passcode after too many wrong entries and records the lockout
    /// at `now`, which starts the cool-down before the next send.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`], [`StoreError::Database`].
    pub fn lock_out(&self, id: &HeldId, now: i64) -> Result<(), StoreError> {
        let updated = self.lock().execute(
            "UPDATE held_messages SET passcode_hash = NULL, passcode_created_at = NULL,
                 passcode_attempts = 0, passcode_locked_at = ?2
             WHERE id = ?1",
            params![id.as_str(), now],
        )?;
        found(updated, id)
    }

    /// Counts a wrong passcode entry and returns the failures so far.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`], [`StoreError::Database`].
    pub fn record_passcode_failure(&self, id: &HeldId) -> Result<u32, StoreError> {
        let connection = self.lock();
        let attempts: Option<u32> = connection
            .query_row(
                "UPDATE held_messages SET passcode_attempts = passcode_attempts + 1
                 WHERE id = ?1 RETURNING passcode_attempts",
                [id.as_str()],
                |row| row.get(0),
            )
            .optional()?;
        attempts.ok_or_else(|| StoreError::NotFound(id.clone()))
    }

    /// Removes the current passcode, after a correct entry or too many wrong ones. The
    /// send count stays.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`], [`StoreError::Database`].
    pub fn clear_passcode(&self, id: &HeldId) -> Result<(), StoreError> {
        let updated = self.lock().execute(
            "UPDATE held_messages SET passcode_hash = NULL, passcode_created_at = NULL,
                 passcode_attempts = 0
             WHERE id = ?1",
            [id.as_str()],
        )?;
        found(updated, id)
    }

    /// Deletes an active message's content and key and marks it `revoked`; returns false
    /// when it was not active.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`], [`StoreError::Database`].
    pub fn revoke(&self, id: &HeldId) -> Result<bool, StoreError> {
        let connection = self.lock();
        require_record(&connection, id)?;
        let updated = connection.execute(
            &format!("UPDATE held_messages SET state = 'revoked', {WIPE} WHERE id = ?1 AND state = 'active'"),
            [id.as_str()],
        )?;
        Ok(updated > 0)
    }

    /// Moves the expiry of an active message to `expires_at` (Unix milliseconds); returns
    /// false when the message is no longer active.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`] for an unknown id, [`StoreError::Database`].
    pub fn extend(&self, id: &HeldId, expires_at: i64) -> Result<bool, StoreError> {
        let connection = self.lock();
        require_record(&connection, id)?;
        let updated = connection.execute(
            "UPDATE held_messages SET expires_at = ?2 WHERE id = ?1 AND state = 'active'",
            params![id.as_str(), expires_at],
        )?;
        Ok(updated > 0)
    }

    /// Deletes the content and key of every active message whose expiry is at or before
    /// `now` and marks it `expired`; returns how many.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub fn expire_due(&self, now: i64) -> Result<usize, StoreError> {
        Ok(self.expire_due_ids(now)?.len())
    }

    /// As [`HoldStore::expire_due`], returning the ids so that each can be audited.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub fn expire_due_ids(&self, now: i64) -> Result<Vec<HeldId>, StoreError> {
        let mut connection = self.lock();
        let transaction = begin_write(&mut connection)?;
        let ids = {
            let mut statement = transaction.prepare(
                "SELECT id FROM held_messages WHERE state = 'active' AND expires_at <= ?1",
            )?;
            let rows = statement.query_map([now], |row| row.get::<_, String>(0))?;
            rows.collect::<Result<Vec<String>, _>>()?
        };
        {
            let mut update = transaction.prepare(&format!(
                "UPDATE held_messages SET state = 'expired', {WIPE} WHERE id = ?1"
            ))?;
            for id in &ids {
                update.execute([id])?;
            }
        }
        transaction.commit()?;
        Ok(ids.iter().filter_map(|id| HeldId::parse(id)).collect())
    }

    /// Lists every held message, oldest first.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub fn list(&self) -> Result<Vec<HeldSummary>, StoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare(
            "SELECT id, state, created_at, expires_at FROM held_messages ORDER BY created_at, id",
        )?;
        let rows = statement.query_map([], summary_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Id of the master key that wrapped a message's key; `None` for an unknown id.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub fn key_id(&self, id: &HeldId) -> Result<Option<u32>, StoreError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT key_id FROM held_messages WHERE id = ?1",
                [id.as_str()],
                |row| row.get(0),
            )
            .optional()?)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The active hold of the same queue id and recipient, found by decrypting the
    /// envelopes of that queue id's holds (the recipient is not stored in clear).
    fn find_active_hold(
        &self,
        envelope: &HeldEnvelope,
    ) -> Result<Option<(HeldId, i64)>, StoreError> {
        let candidates: Vec<(String, i64)> = {
            let connection = self.lock();
            // Without the index named, SQLite picks the one on `state`, which makes each
            // hold read every active record.
            let mut statement = connection.prepare_cached(
                "SELECT id, expires_at FROM held_messages INDEXED BY held_messages_queue
                 WHERE queue_id = ?1 AND state = 'active'",
            )?;
            let rows =
                statement.query_map([&envelope.queue_id], |row| Ok((row.get(0)?, row.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        for (id, expires_at) in candidates {
            let Some(id) = HeldId::parse(&id) else {
                continue;
            };
            match self.open_envelope(&id) {
                Ok(existing) if existing == *envelope => return Ok(Some((id, expires_at))),
                Ok(_) => {}
                // A record this process cannot read is not the same hold.
                Err(StoreError::KeyUnavailable { .. } | StoreError::Decrypt(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(None)
    }

    fn read_sealed(&self, id: &HeldId, with_message: bool) -> Result<Sealed, StoreError> {
        let row = {
            let connection = self.lock();
            let columns = if with_message {
                "nonce, ciphertext"
            } else {
                "NULL, NULL"
            };
            connection
                .query_row(
                    &format!(
                        "SELECT state, expires_at, key_id, wrapped_key, envelope_nonce,
                            envelope_ciphertext, {columns}
                         FROM held_messages WHERE id = ?1"
                    ),
                    [id.as_str()],
                    |row| {
                        Ok((
                            HeldState::parse(&row.get::<_, String>(0)?),
                            row.get::<_, i64>(1)?,
                            row.get::<_, u32>(2)?,
                            row.get::<_, Option<Vec<u8>>>(3)?,
                            row.get::<_, Option<Vec<u8>>>(4)?,
                            row.get::<_, Option<Vec<u8>>>(5)?,
                            row.get::<_, Option<Vec<u8>>>(6)?,
                            row.get::<_, Option<Vec<u8>>>(7)?,
                        ))
                    },
                )
                .optional()?
                .ok_or_else(|| StoreError::NotFound(id.clone()))?
        };
        let (state, expires_at, key_id, wrapped, envelope_nonce, envelope_ciphertext, nonce, body) =
            row;
        let state = effective_state(state, expires_at, now_millis());
        let not_active = || StoreError::NotActive {
            id: id.clone(),
            state,
        };
        if state != HeldState::Active {
            return Err(not_active());
        }
        let (Some(wrapped), Some(envelope_nonce), Some(envelope_ciphertext)) =
            (wrapped, envelope_nonce, envelope_ciphertext)
        else {
            return Err(not_active());
        };
        let master = self.keys.get(key_id).ok_or(StoreError::KeyUnavailable {
            id: id.clone(),
            key_id,
        })?;
        let data_key = DataKey::unwrap(&wrapped, master, id.as_str())
            .ok_or_else(|| StoreError::Decrypt(id.clone()))?;
        let envelope = data_key
            .open(
                &envelope_nonce,
                &envelope_ciphertext,
                id.as_str(),
                "envelope",
            )
            .and_then(|bytes| decode_envelope(&bytes))
            .ok_or_else(|| StoreError::Decrypt(id.clone()))?;
        if with_message && (nonce.is_none() || body.is_none()) {
            return Err(not_active());
        }
        Ok(Sealed {
            data_key,
            envelope,
            nonce: nonce.unwrap_or_default(),
            ciphertext: body.unwrap_or_default(),
        })
    }
}

fn read_passcode_state(
    connection: &Connection,
    id: &HeldId,
) -> Result<Option<PasscodeState>, StoreError> {
    let mut statement = connection.prepare_cached(
        "SELECT passcode_hash, passcode_created_at, passcode_attempts, passcode_sends,
                passcode_last_sent_at, passcode_window_started_at, passcode_window_sends,
                passcode_locked_at
         FROM held_messages WHERE id = ?1",
    )?;
    Ok(statement
        .query_row([id.as_str()], |row| {
            let last_sent_at = row.get(4)?;
            Ok(PasscodeState {
                passcode_hash: row.get(0)?,
                created_at: row.get(1)?,
                attempts: row.get(2)?,
                sends: row.get(3)?,
                last_sent_at,
                history: SendHistory {
                    last_sent_at,
                    window_started_at: row.get(5)?,
                    window_sends: row.get(6)?,
                    locked_at: row.get(7)?,
                },
            })
        })
        .optional()?)
}

/// Starts a write transaction that takes the database's write lock at `BEGIN`. A deferred
/// transaction that reads first cannot wait for the lock once another connection (the
/// spool writer, the audit log, a CLI command) has committed in between: SQLite then fails
/// it with "database is locked" whatever the busy timeout.
pub(crate) fn begin_write(connection: &mut Connection) -> rusqlite::Result<Transaction<'_>> {
    connection.transaction_with_behavior(TransactionBehavior::Immediate)
}

/// Opens the queue database with the queue's durability settings.
pub(crate) fn open_database(config: &Config) -> Result<Connection, StoreError> {
    let path = config.database_path();
    if let Some(folder) = path.parent() {
        std::fs::create_dir_all(folder).map_err(|source| StoreError::Io {
            path: folder.to_owned(),
            source,
        })?;
    }
    let connection = Connection::open(&path)?;
    connection.busy_timeout(std::time::Duration::from_secs(30))?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    // Deleted content is overwritten in the file rather than left in free pages.
    connection.pragma_update(None, "secure_delete", "ON")?;
    Ok(connection)
}

/// Fails with [`StoreError::NotFound`] unless a record with this id exists.
fn require_record(connection: &Connection, id: &HeldId) -> Result<(), StoreError> {
    let exists: Option<String> = connection
        .query_row(
            "SELECT state FROM held_messages WHERE id = ?1",
            [id.as_str()],
            |row| row.get(0),
        )
        .optional()?;
    match exists {
        Some(_) => Ok(()),
        None => Err(StoreError::NotFound(id.clone())),
    }
}

/// The columns that expiry and revocation clear.
const WIPE: &str = "wrapped_key = NULL, nonce = NULL, ciphertext = NULL, envelope_nonce = NULL,
    envelope_ciphertext = NULL, passcode_hash = NULL, passcode_created_at = NULL";

/// A record's unwrapped key and envelope, and its still sealed message.
struct Sealed {
    data_key: DataKey,
    envelope: HeldEnvelope,
    nonce: Vec<u8>,
    ciphertext: Vec<u8>,
}

/// Draws a new access token: 256 random bits as URL-safe base64 without padding.
fn generate_token() -> String {
    let bytes: [u8; TOKEN_BYTES] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// SHA-256 of a token, the only form in which the store keeps it.
fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn effective_state(state: HeldState, expires_at: i64, now: i64) -> HeldState {
    if state == HeldState::Active && expires_at <= now {
        HeldState::Expired
    } else {
        state
    }
}

fn found(updated: usize, id: &HeldId) -> Result<(), StoreError> {
    if updated == 0 {
        Err(StoreError::NotFound(id.clone()))
    } else {
        Ok(())
    }
}

fn summary_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<HeldSummary> {
    let id: String = row.get(0)?;
    let expires_at = row.get(3)?;
    Ok(HeldSummary {
        id: HeldId::parse(&id).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                0,
                rusqlite::types::Type::Text,
                format!("invalid held id {id:?}").into(),
            )
        })?,
        state: effective_state(
            HeldState::parse(&row.get::<_, String>(1)?),
            expires_at,
            now_millis(),
        ),
        created_at: row.get(2)?,
        expires_at,
    })
}

/// Serialises an envelope as four length-prefixed UTF-8 fields.
fn encode_envelope(envelope: &HeldEnvelope) -> Vec<u8> {
    let mut bytes = Vec::new();
    for field in [
        &envelope.queue_id,
        &envelope.sender,
        &envelope.recipient,
        &envelope.subject,
    ] {
        bytes.extend_from_slice(&(field.len() as u32).to_be_bytes());
        bytes.extend_from_slice(field.as_bytes());
    }
    bytes
}

fn decode_envelope(mut bytes: &[u8]) -> Option<HeldEnvelope> {
    let mut fields = Vec::with_capacity(4);
    for _ in 0..4 {
        let (length, rest) = bytes.split_first_chunk::<4>()?;
        let length = u32::from_be_bytes(*length) as usize;
        if rest.len() < length {
            return None;
        }
        let (field, rest) = rest.split_at(length);
        fields.push(String::from_utf8(field.to_vec()).ok()?);
        bytes = rest;
    }
    let [queue_id, sender, recipient, subject] = <[String; 4]>::try_from(fields).ok()?;
    Some(HeldEnvelope {
        queue_id,
        sender,
        recipient,
        subject,
    })
}

#[cfg(test)]
mod tests;
