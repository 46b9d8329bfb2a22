//! The queue database: messages with their envelope and body, and one row per recipient
//! with its route, delivery state and last result.
//!
//! SQLite in WAL mode with `synchronous = FULL`, so a committed transaction is on disk
//! before the commit returns. Bodies are stored encrypted: each gets a random AES-256-GCM
//! key, wrapped by a master key from `keys/store-master-<id>.key` whose id is kept in
//! `body_key_id`, so no plaintext of a message reaches the database, its WAL or free pages. The SQL keeps to what PostgreSQL also accepts, so the same
//! schema can back several instances later.

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};

use super::QueueError;
use crate::envelope::{AcceptedMessage, QueueId};
use crate::policy::Route;
use crate::store::{MasterKeys, OpenFailure, begin_write, open_record, seal_record};

/// Associated-data name of a queued body, bound into its ciphertext.
const BODY_PART: &str = "body";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    id          TEXT PRIMARY KEY,
    sender      TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    routed_at   BIGINT,
    size        BIGINT NOT NULL,
    body_8bit   INTEGER NOT NULL,
    smtputf8    INTEGER NOT NULL,
    client      TEXT NOT NULL,
    auth_user   TEXT,
    is_dsn      INTEGER NOT NULL,
    body        BLOB NOT NULL,
    body_key_id INTEGER,
    notification INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS recipients (
    message_id    TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    position      INTEGER NOT NULL,
    address       TEXT NOT NULL,
    route         TEXT,
    reason        TEXT,
    state         TEXT NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_attempt  BIGINT NOT NULL,
    claimed_until BIGINT NOT NULL DEFAULT 0,
    last_status   TEXT,
    last_relay    TEXT,
    last_tls      TEXT,
    last_detail   TEXT,
    dsn_pending   INTEGER NOT NULL DEFAULT 0,
    expired       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (message_id, address)
);
CREATE INDEX IF NOT EXISTS recipients_due ON recipients (state, next_attempt);
CREATE INDEX IF NOT EXISTS recipients_dsn ON recipients (dsn_pending);
";

/// Delivery state of one recipient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecipientState {
    /// Not yet routed by policy.
    Incoming,
    /// Waiting for its next attempt.
    Pending,
    /// Held by its route (`portal` or `review`); never delivered by SMTP.
    Held,
    /// Moved into the encrypted hold store and notified; final.
    Portal,
    /// Accepted by the next hop.
    Sent,
    /// Failed permanently or expired; a DSN has been queued when the sender is not `<>`.
    Bounced,
}

/// A recipient row as the CLI and the manager read it.
#[derive(Clone, Debug)]
pub struct RecipientRow {
    /// Envelope address.
    pub address: String,
    /// Route name, once routed.
    pub route: Option<String>,
    /// Reason for that route.
    pub reason: Option<String>,
    /// Delivery state.
    pub state: RecipientState,
    /// Attempts made.
    pub attempts: u32,
    /// Unix milliseconds of the next attempt.
    pub next_attempt: i64,
    /// Enhanced status code of the last attempt.
    pub last_status: Option<String>,
    /// Relay of the last attempt.
    pub last_relay: Option<String>,
    /// TLS of the last attempt.
    pub last_tls: Option<String>,
    /// Reply or failure text of the last attempt.
    pub last_detail: Option<String>,
    /// Bounced, and not yet reported in a DSN.
    pub dsn_pending: bool,
    /// Bounced because the queue lifetime ran out.
    pub expired: bool,
}

/// A message row without its body.
#[derive(Clone, Debug)]
pub struct MessageSummary {
    /// Queue id.
    pub id: QueueId,
    /// Envelope sender, empty for `<>`.
    pub sender: String,
    /// Unix milliseconds of acceptance.
    pub received_at: i64,
    /// Unix milliseconds of routing, once routed.
    pub routed_at: Option<i64>,
    /// Body size in bytes.
    pub size: u64,
    /// The body has 8-bit bytes.
    pub body_8bit: bool,
    /// The client declared SMTPUTF8.
    pub smtputf8: bool,
    /// Client description, `helo[ip]:port`.
    pub client: String,
    /// The message is a DSN sealgate wrote.
    pub is_dsn: bool,
    /// The message is a portal notification or sender receipt sealgate wrote, which is
    /// routed without classification.
    pub is_notification: bool,
    /// Set when an administrator released the message from review, for its next routing.
    pub review_release: Option<super::review::ReleaseMode>,
}

/// The last result of an attempt, stored per recipient.
#[derive(Clone, Debug, Default)]
pub struct AttemptRecord {
    /// Enhanced status code.
    pub status: String,
    /// `host[ip]:port`, when a connection was made.
    pub relay: Option<String>,
    /// TLS outcome as text.
    pub tls: String,
    /// Reply or failure text.
    pub detail: String,
}

/// The new state of one recipient after an attempt.
pub struct RecipientUpdate {
    /// The recipient's address.
    pub address: String,
    /// Its new state; ignored when `to_portal` is set.
    pub state: RecipientState,
    /// When to try again, for `Pending`.
    pub next_attempt: i64,
    /// The facts of the attempt.
    pub record: AttemptRecord,
    /// It bounced because its time in the queue ran out.
    pub expired: bool,
    /// Verified TLS kept failing: the recipient moves to the `portal` route.
    pub to_portal: bool,
}

/// A held `portal` recipient whose copy is in the hold store, with the mails that tell of
/// it.
pub struct PortalCompletion {
    /// Queue id of the message.
    pub id: QueueId,
    /// The recipient.
    pub address: String,
    /// The facts of the hold, kept as the recipient's last attempt.
    pub record: AttemptRecord,
    /// The notification and, when configured, the sender's receipt, each with its queue id.
    pub notifications: Vec<(QueueId, AcceptedMessage)>,
}

/// The routes policy chose for one message's recipients.
pub struct MessageRoutes<'a> {
    /// Queue id.
    pub id: &'a QueueId,
    /// `(address, route, reason)` for each recipient.
    pub routes: &'a [(String, Route, String)],
    /// A replacement for the stored message, as when a subject tag was removed.
    pub body: Option<&'a [u8]>,
}

/// One open connection to the queue database, with the master keys for its bodies.
pub struct Store {
    pub(super) connection: Connection,
    keys: Arc<MasterKeys>,
}

impl Store {
    /// Opens (creating when missing) the database at `path`, applies the schema, and
    /// encrypts with `keys` any body that an older version stored in clear.
    ///
    /// # Errors
    ///
    /// [`QueueError::Io`] when the folder cannot be created, [`QueueError::Database`]
    /// when SQLite cannot open or set up the file.
    pub fn open(path: &Path, keys: Arc<MasterKeys>) -> Result<Store, QueueError> {
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder).map_err(|source| QueueError::Io {
                path: folder.to_owned(),
                source,
            })?;
        }
        let connection = Connection::open(path)?;
        connection.busy_timeout(std::time::Duration::from_secs(30))?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.pragma_update(None, "foreign_keys", "ON")?;
        // Deleted bodies are overwritten rather than left in free pages, which matters once
        // a `portal` message has moved into the encrypted hold store.
        connection.pragma_update(None, "secure_delete", "ON")?;
        connection.execute_batch(SCHEMA)?;
        add_missing_columns(
            &connection,
            "messages",
            &[
                ("notification", "INTEGER NOT NULL DEFAULT 0"),
                // A missing `body_key_id` means a body stored in clear.
                ("body_key_id", "INTEGER"),
            ],
        )?;
        let mut store = Store { connection, keys };
        store.add_review_schema()?;
        store.encrypt_clear_bodies()?;
        Ok(store)
    }

    /// Inserts accepted messages in one transaction; the commit is the fsync that the
    /// `250` reply waits for.
    pub fn insert_messages(
        &mut self,
        messages: &[(QueueId, &AcceptedMessage, bool)],
    ) -> Result<(), QueueError> {
        let sealed: Vec<SealedBody> = messages
            .iter()
            .map(|(id, message, _)| SealedBody::seal(&self.keys, id, &message.body))
            .collect();
        let rows: Vec<_> = messages
            .iter()
            .zip(&sealed)
            .map(|((id, message, is_dsn), sealed)| (id.clone(), *message, sealed, *is_dsn))
            .collect();
        self.insert_sealed(&rows)
    }

    /// As [`Store::insert_messages`], with each body already sealed by
    /// [`SealedBody::seal`], so that the encryption can run before the writer's turn.
    pub fn insert_sealed(
        &mut self,
        messages: &[(QueueId, &AcceptedMessage, &SealedBody, bool)],
    ) -> Result<(), QueueError> {
        let now = now_millis();
        let transaction = begin_write(&mut self.connection)?;
        for (id, message, sealed, is_dsn) in messages {
            insert_message(&transaction, id, message, sealed, *is_dsn, false, now)?;
        }
        transaction.commit()?;
        Ok(())
    }

    /// Ids of messages that still have unrouted recipients, oldest first.
    pub fn incoming_messages(&self, limit: usize) -> Result<Vec<QueueId>, QueueError> {
        let mut statement = self.connection.prepare_cached(
            "SELECT DISTINCT m.id, m.received_at FROM messages m
             JOIN recipients r ON r.message_id = m.id
             WHERE r.state = 'incoming' ORDER BY m.received_at LIMIT ?1",
        )?;
        let rows = statement.query_map([limit as i64], |row| row.get::<_, String>(0))?;
        collect_ids(rows)
    }

    /// Stores the route of each recipient and makes them due now (or held, for held
    /// routes). `body`, when given, replaces the stored message in the same transaction,
    /// as when a subject tag was removed.
    pub fn set_routes(
        &mut self,
        id: &QueueId,
        routes: &[(String, Route, String)],
        body: Option<&[u8]>,
    ) -> Result<(), QueueError> {
        self.set_routes_of_all(&[MessageRoutes { id, routes, body }])
    }

    /// Stores the routes of several messages as [`Store::set_routes`] does, all in one
    /// transaction, so that one commit serves a whole batch of incoming mail.
    pub fn set_routes_of_all(&mut self, messages: &[MessageRoutes<'_>]) -> Result<(), QueueError> {
        let now = now_millis();
        let transaction = begin_write(&mut self.connection)?;
        for message in messages {
            store_routes(&transaction, &self.keys, message, now)?;
        }
        transaction.commit()?;
        Ok(())
    }

    /// Claims due recipients for delivery until `lease_until`, so that no other scan or
    /// instance starts them again, and returns `(message id, address, route)` triples.
    pub fn claim_due(
        &mut self,
        now: i64,
        lease_until: i64,
        limit: usize,
    ) -> Result<Vec<(QueueId, String, String)>, QueueError> {
        let transaction = begin_write(&mut self.connection)?;
        let claimed = {
            let mut select = transaction.prepare_cached(
                "SELECT message_id, address, route FROM recipients
                 WHERE state = 'pending' AND next_attempt <= ?1 AND claimed_until <= ?1
                 ORDER BY next_attempt LIMIT ?2",
            )?;
            let rows = select
                .query_map(params![now, limit as i64], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get(2)?,
                    ))
                })?
                .collect::<Result<Vec<(String, String, String)>, _>>()?;
            let mut claim = transaction.prepare_cached(
                "UPDATE recipients SET claimed_until = ?3 WHERE message_id = ?1 AND address = ?2",
            )?;
            let mut claimed = Vec::with_capacity(rows.len());
            for (id, address, route) in rows {
                claim.execute(params![id, address, lease_until])?;
                if let Some(id) = QueueId::parse(&id) {
                    claimed.push((id, address, route));
                }
            }
            claimed
        };
        transaction.commit()?;
        Ok(claimed)
    }

    /// Releases every claim. A single instance calls this at startup: claims left by a
    /// process that died would otherwise delay its mail until the lease ran out.
    pub fn release_claims(&self) -> Result<usize, QueueError> {
        Ok(self.connection.execute(
            "UPDATE recipients SET claimed_until = 0 WHERE claimed_until <> 0",
            [],
        )?)
    }

    /// Reads a message's summary.
    pub fn message(&self, id: &QueueId) -> Result<Option<MessageSummary>, QueueError> {
        let mut statement = self.connection.prepare_cached(
            "SELECT id, sender, received_at, routed_at, size, body_8bit, smtputf8, client, is_dsn,
                    notification, review_release
             FROM messages WHERE id = ?1",
        )?;
        Ok(statement
            .query_row([id.as_str()], summary_from_row)
            .optional()?)
    }

    /// Reads and decrypts a message's body.
    ///
    /// # Errors
    ///
    /// [`QueueError::BodyUnreadable`] when its master key is not loaded or the stored bytes
    /// are damaged, [`QueueError::Database`] when the row cannot be read.
    pub fn body(&self, id: &QueueId) -> Result<Option<Vec<u8>>, QueueError> {
        let mut statement = self
            .connection
            .prepare_cached("SELECT body, body_key_id FROM messages WHERE id = ?1")?;
        let row: Option<(Vec<u8>, Option<u32>)> = statement
            .query_row([id.as_str()], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        let Some((stored, key_id)) = row else {
            return Ok(None);
        };
        let Some(key_id) = key_id else {
            // Only a body written by an older version, in the moment before `open`
            // encrypted it, has no key id.
            return Ok(Some(stored));
        };
        open_body(&self.keys, key_id, id.as_str(), &stored).map(Some)
    }

    /// Reads all recipients of a message, in RCPT order.
    pub fn recipients(&self, id: &QueueId) -> Result<Vec<RecipientRow>, QueueError> {
        let mut statement = self.connection.prepare_cached(
            "SELECT address, route, reason, state, attempts, next_attempt, last_status,
                    last_relay, last_tls, last_detail, dsn_pending, expired
             FROM recipients WHERE message_id = ?1 ORDER BY position",
        )?;
        let rows = statement.query_map([id.as_str()], |row| {
            Ok(RecipientRow {
                address: row.get(0)?,
                route: row.get(1)?,
                reason: row.get(2)?,
                state: parse_state(&row.get::<_, String>(3)?),
                attempts: row.get(4)?,
                next_attempt: row.get(5)?,
                last_status: row.get(6)?,
                last_relay: row.get(7)?,
                last_tls: row.get(8)?,
                last_detail: row.get(9)?,
                dsn_pending: row.get(10)?,
                expired: row.get(11)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records the results of attempts, each a message's id with the new state of the
    /// recipients it tried, in one transaction. In the same transaction it deletes each
    /// message that has nothing left to do: every recipient sent, or bounced and reported.
    /// Returns, for each entry in order, whether its message was deleted then.
    ///
    /// A recipient with `to_portal` moves to the `portal` route and is held with
    /// `portal_reason`. Every other one gets its new state and next attempt time. A
    /// `Bounced` one is marked for the next DSN, and `expired` records why it bounced. Each
    /// recipient's claim is released and the facts of the attempt are kept.
    pub fn record_results(
        &mut self,
        attempts: &[(QueueId, Vec<RecipientUpdate>)],
        portal_reason: &str,
    ) -> Result<Vec<bool>, QueueError> {
        let now = now_millis();
        let transaction = begin_write(&mut self.connection)?;
        let mut deleted = Vec::with_capacity(attempts.len());
        for (id, updates) in attempts {
            for update in updates {
                record_result(&transaction, id, update, portal_reason, now)?;
            }
            deleted.push(delete_if_done(&transaction, id)?);
        }
        transaction.commit()?;
        Ok(deleted)
    }

    /// True while any recipient of the message is claimed by a delivery attempt.
    pub fn in_flight(&self, id: &QueueId, now: i64) -> Result<bool, QueueError> {
        let claimed: i64 = self.connection.query_row(
            "SELECT COUNT(*) FROM recipients WHERE message_id = ?1 AND claimed_until > ?2",
            params![id.as_str(), now],
            |row| row.get(0),
        )?;
        Ok(claimed > 0)
    }

    /// Ids of up to `limit` messages that have nothing left to do: every recipient sent, or
    /// bounced and reported, or moved to the portal. They are removed when the attempt or
    /// hold that finished them commits; these are the ones whose removal failed.
    pub fn finished_messages(&self, limit: usize) -> Result<Vec<QueueId>, QueueError> {
        let mut statement = self.connection.prepare_cached(
            "SELECT m.id FROM messages m
             WHERE NOT EXISTS (
                 SELECT 1 FROM recipients r
                 WHERE r.message_id = m.id
                   AND (r.state IN ('incoming', 'pending', 'held') OR r.dsn_pending = 1))
             LIMIT ?1",
        )?;
        let rows = statement.query_map([limit as i64], |row| row.get::<_, String>(0))?;
        collect_ids(rows)
    }

    /// Ids of messages with bounced recipients not yet reported in a DSN.
    pub fn messages_with_pending_dsn(&self) -> Result<Vec<QueueId>, QueueError> {
        let mut statement = self
            .connection
            .prepare_cached("SELECT DISTINCT message_id FROM recipients WHERE dsn_pending = 1")?;
        let rows = statement.query_map([], |row| row.get::<_, String>(0))?;
        collect_ids(rows)
    }

    /// Marks recipients as reported in a DSN.
    pub fn clear_dsn_pending(
        &mut self,
        id: &QueueId,
        addresses: &[String],
    ) -> Result<(), QueueError> {
        let transaction = begin_write(&mut self.connection)?;
        {
            let mut update = transaction.prepare_cached(
                "UPDATE recipients SET dsn_pending = 0 WHERE message_id = ?1 AND address = ?2",
            )?;
            for address in addresses {
                update.execute(params![id.as_str(), address])?;
            }
        }
        transaction.commit()?;
        Ok(())
    }

    /// Deletes each message whose recipients are all sent or bounced and reported, in one
    /// transaction; returns, for each in order, whether it did.
    pub fn delete_if_done(&mut self, ids: &[QueueId]) -> Result<Vec<bool>, QueueError> {
        let transaction = begin_write(&mut self.connection)?;
        let deleted = ids
            .iter()
            .map(|id| delete_if_done(&transaction, id))
            .collect::<Result<Vec<_>, _>>()?;
        transaction.commit()?;
        Ok(deleted)
    }

    /// Deletes a message and its recipients; returns whether it existed.
    pub fn delete(&mut self, id: &QueueId) -> Result<bool, QueueError> {
        let transaction = begin_write(&mut self.connection)?;
        let deleted = delete_message(&transaction, id)?;
        transaction.commit()?;
        Ok(deleted)
    }

    /// `(message id, address)` of held `portal` recipients not yet moved into the hold
    /// store whose next try is due, oldest first.
    pub fn due_portal_recipients(
        &self,
        now: i64,
        limit: usize,
    ) -> Result<Vec<(QueueId, String)>, QueueError> {
        let mut statement = self.connection.prepare_cached(
            "SELECT message_id, address FROM recipients
             WHERE state = 'held' AND route = 'portal' AND next_attempt <= ?1
             ORDER BY next_attempt LIMIT ?2",
        )?;
        let rows = statement
            .query_map(params![now, limit as i64], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, address)| QueueId::parse(&id).map(|id| (id, address)))
            .collect())
    }

    /// Puts off the next try to move a held `portal` recipient into the hold store.
    pub fn defer_portal(
        &self,
        id: &QueueId,
        address: &str,
        next_attempt: i64,
        detail: &str,
    ) -> Result<(), QueueError> {
        self.connection.execute(
            "UPDATE recipients SET next_attempt = ?3, attempts = attempts + 1, last_detail = ?4
             WHERE message_id = ?1 AND address = ?2 AND state = 'held'",
            params![id.as_str(), address, next_attempt, detail],
        )?;
        Ok(())
    }

    /// In one transaction, queues the notifications for held `portal` recipients and moves
    /// each to the final state `portal`, so that a crash leaves either both or neither.
    /// Returns, for each in order, whether it was done: false, queueing nothing for it,
    /// when the recipient was no longer held.
    pub fn complete_portal(
        &mut self,
        completions: &[PortalCompletion],
    ) -> Result<Vec<bool>, QueueError> {
        let now = now_millis();
        let transaction = begin_write(&mut self.connection)?;
        let mut completed = Vec::with_capacity(completions.len());
        for completion in completions {
            let record = &completion.record;
            let updated = transaction
                .prepare_cached(
                    "UPDATE recipients SET state = 'portal', attempts = attempts + 1,
                         next_attempt = ?3, last_status = ?4, last_relay = NULL,
                         last_tls = ?5, last_detail = ?6
                     WHERE message_id = ?1 AND address = ?2 AND state = 'held'
                       AND route = 'portal'",
                )?
                .execute(params![
                    completion.id.as_str(),
                    completion.address,
                    now,
                    record.status,
                    record.tls,
                    record.detail
                ])?;
            completed.push(updated > 0);
            if updated == 0 {
                continue;
            }
            for (notification_id, message) in &completion.notifications {
                let sealed = SealedBody::seal(&self.keys, notification_id, &message.body);
                insert_message(
                    &transaction,
                    notification_id,
                    message,
                    &sealed,
                    false,
                    true,
                    now,
                )?;
            }
        }
        transaction.commit()?;
        Ok(completed)
    }

    /// Makes every pending recipient due now; returns how many.
    pub fn flush(&self) -> Result<usize, QueueError> {
        Ok(self.connection.execute(
            "UPDATE recipients SET next_attempt = ?1 WHERE state = 'pending'",
            [now_millis()],
        )?)
    }

    /// Encrypts every body still stored in clear by a version before body encryption, in
    /// one transaction, then truncates the WAL so that its copies of those pages go too.
    fn encrypt_clear_bodies(&mut self) -> Result<(), QueueError> {
        let transaction = begin_write(&mut self.connection)?;
        let clear: Vec<(String, Vec<u8>)> = {
            let mut select =
                transaction.prepare("SELECT id, body FROM messages WHERE body_key_id IS NULL")?;
            let rows = select.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        if clear.is_empty() {
            return Ok(());
        }
        {
            let mut update = transaction
                .prepare("UPDATE messages SET body = ?2, body_key_id = ?3 WHERE id = ?1")?;
            for (id, body) in &clear {
                let (key_id, sealed) = seal_body(&self.keys, id, body);
                update.execute(params![id, sealed, key_id])?;
            }
        }
        transaction.commit()?;
        self.connection
            .pragma_update(None, "wal_checkpoint", "TRUNCATE")?;
        tracing::info!(
            messages = clear.len(),
            "encrypted queued bodies stored in clear"
        );
        Ok(())
    }

    /// Summaries of every message in the queue, oldest first.
    pub fn list(&self) -> Result<Vec<MessageSummary>, QueueError> {
        let mut statement = self.connection.prepare(
            "SELECT id, sender, received_at, routed_at, size, body_8bit, smtputf8, client, is_dsn,
                    notification, review_release
             FROM messages ORDER BY received_at",
        )?;
        let rows = statement.query_map([], summary_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}

fn summary_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<MessageSummary> {
    let id: String = row.get(0)?;
    Ok(MessageSummary {
        id: QueueId::parse(&id).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                0,
                rusqlite::types::Type::Text,
                format!("invalid queue id {id:?}").into(),
            )
        })?,
        sender: row.get(1)?,
        received_at: row.get(2)?,
        routed_at: row.get(3)?,
        size: row.get::<_, i64>(4)? as u64,
        body_8bit: row.get(5)?,
        smtputf8: row.get(6)?,
        client: row.get(7)?,
        is_dsn: row.get(8)?,
        is_notification: row.get(9)?,
        review_release: row
            .get::<_, Option<String>>(10)?
            .as_deref()
            .and_then(super::review::ReleaseMode::parse),
    })
}

/// Encrypts a body for the message with queue id `id`; returns the master key id and the
/// blob.
fn seal_body(keys: &MasterKeys, id: &str, body: &[u8]) -> (u32, Vec<u8>) {
    seal_record(keys, &body_record(id), BODY_PART, body)
}

fn open_body(
    keys: &MasterKeys,
    key_id: u32,
    id: &str,
    sealed: &[u8],
) -> Result<Vec<u8>, QueueError> {
    open_record(keys, key_id, &body_record(id), BODY_PART, sealed).map_err(|failure| {
        let reason = match failure {
            OpenFailure::KeyUnavailable => {
                format!("master key {key_id} is not in the keys folder")
            }
            OpenFailure::Damaged => "wrong key or damaged record".to_string(),
        };
        QueueError::BodyUnreadable {
            id: id.to_string(),
            reason,
        }
    })
}

/// Record name bound into a queued body's ciphertext. The `queue:` prefix keeps it apart
/// from held ids, which are bare hex.
fn body_record(id: &str) -> String {
    format!("queue:{id}")
}

/// A message body encrypted for the queue database, with the id of its master key.
pub struct SealedBody {
    key_id: u32,
    blob: Vec<u8>,
}

impl SealedBody {
    /// Encrypts `body` for the message with queue id `id`.
    pub fn seal(keys: &MasterKeys, id: &QueueId, body: &[u8]) -> SealedBody {
        let (key_id, blob) = seal_body(keys, id.as_str(), body);
        SealedBody { key_id, blob }
    }
}

/// Stores one message's routes inside the caller's transaction.
fn store_routes(
    connection: &Connection,
    keys: &MasterKeys,
    message: &MessageRoutes<'_>,
    now: i64,
) -> Result<(), QueueError> {
    let id = message.id.as_str();
    let mut update = connection.prepare_cached(
        "UPDATE recipients SET route = ?3, reason = ?4, state = ?5, next_attempt = ?6
         WHERE message_id = ?1 AND address = ?2 AND state = 'incoming'",
    )?;
    for (address, route, reason) in message.routes {
        let state = if route.is_held() {
            RecipientState::Held
        } else {
            RecipientState::Pending
        };
        update.execute(params![
            id,
            address,
            route.as_str(),
            reason,
            state_name(state),
            now
        ])?;
    }
    connection.execute(
        "UPDATE messages SET routed_at = ?2 WHERE id = ?1",
        params![id, now],
    )?;
    if let Some(body) = message.body {
        let (key_id, sealed) = seal_body(keys, id, body);
        connection.execute(
            "UPDATE messages SET body = ?2, body_key_id = ?3, size = ?4 WHERE id = ?1",
            params![id, sealed, key_id, body.len() as i64],
        )?;
    }
    Ok(())
}

/// Stores one recipient's result inside the caller's transaction.
fn record_result(
    connection: &Connection,
    id: &QueueId,
    update: &RecipientUpdate,
    portal_reason: &str,
    now: i64,
) -> Result<(), QueueError> {
    let record = &update.record;
    if update.to_portal {
        connection
            .prepare_cached(
                "UPDATE recipients SET route = 'portal', state = 'held', reason = ?3,
                     attempts = attempts + 1, next_attempt = ?4, claimed_until = 0,
                     last_status = ?5, last_relay = ?6, last_tls = ?7, last_detail = ?8
                 WHERE message_id = ?1 AND address = ?2",
            )?
            .execute(params![
                id.as_str(),
                update.address,
                portal_reason,
                now,
                record.status,
                record.relay,
                record.tls,
                record.detail,
            ])?;
    } else {
        connection
            .prepare_cached(
                "UPDATE recipients SET state = ?3, attempts = attempts + 1, next_attempt = ?4,
                     claimed_until = 0, last_status = ?5, last_relay = ?6, last_tls = ?7,
                     last_detail = ?8, dsn_pending = ?9, expired = ?10
                 WHERE message_id = ?1 AND address = ?2",
            )?
            .execute(params![
                id.as_str(),
                update.address,
                state_name(update.state),
                update.next_attempt,
                record.status,
                record.relay,
                record.tls,
                record.detail,
                update.state == RecipientState::Bounced,
                update.expired,
            ])?;
    }
    Ok(())
}

/// Deletes the message inside the caller's transaction when every recipient is sent, or
/// bounced and reported; returns whether it did. A claimed recipient is still `pending`.
fn delete_if_done(connection: &Connection, id: &QueueId) -> Result<bool, QueueError> {
    let open: i64 = connection.query_row(
        "SELECT COUNT(*) FROM recipients
         WHERE message_id = ?1
           AND (state IN ('incoming', 'pending', 'held') OR dsn_pending = 1)",
        [id.as_str()],
        |row| row.get(0),
    )?;
    if open > 0 {
        return Ok(false);
    }
    delete_message(connection, id)
}

/// Deletes a message and its recipients inside the caller's transaction; returns whether
/// it existed.
fn delete_message(connection: &Connection, id: &QueueId) -> Result<bool, QueueError> {
    connection.execute(
        "DELETE FROM recipients WHERE message_id = ?1",
        [id.as_str()],
    )?;
    let deleted = connection.execute("DELETE FROM messages WHERE id = ?1", [id.as_str()])?;
    Ok(deleted > 0)
}

/// Inserts one message and its recipients, all `incoming`.
fn insert_message(
    connection: &Connection,
    id: &QueueId,
    message: &AcceptedMessage,
    sealed: &SealedBody,
    is_dsn: bool,
    notification: bool,
    now: i64,
) -> Result<(), QueueError> {
    let mut insert_message = connection.prepare_cached(
        "INSERT INTO messages (id, sender, received_at, size, body_8bit, smtputf8,
             client, auth_user, is_dsn, body, body_key_id, notification)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?;
    let mut insert_recipient = connection.prepare_cached(
        "INSERT INTO recipients (message_id, position, address, state, next_attempt)
         VALUES (?1, ?2, ?3, 'incoming', ?4)",
    )?;
    let client = format!(
        "{}[{}]:{}",
        message.client.helo,
        message.client.addr.ip(),
        message.client.addr.port()
    );
    insert_message.execute(params![
        id.as_str(),
        message.sender,
        now,
        message.body.len() as i64,
        message.body_8bit,
        message.smtputf8,
        client,
        message.client.auth_user,
        is_dsn,
        sealed.blob,
        sealed.key_id,
        notification,
    ])?;
    for (position, address) in message.recipients.iter().enumerate() {
        insert_recipient.execute(params![id.as_str(), position as i64, address, now])?;
    }
    Ok(())
}

/// Adds each `(name, definition)` column that `table` lacks, as in a database created by
/// an older version.
pub(crate) fn add_missing_columns(
    connection: &Connection,
    table: &str,
    columns: &[(&str, &str)],
) -> rusqlite::Result<()> {
    for (name, definition) in columns {
        let present = connection
            .prepare(&format!("SELECT {name} FROM {table} LIMIT 0"))
            .is_ok();
        if !present {
            connection.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN {name} {definition}"
            ))?;
        }
    }
    Ok(())
}

/// Escapes `\\`, `%` and `_` for a `LIKE` pattern with `ESCAPE '\\'`.
pub(crate) fn escape_like(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

fn collect_ids(
    rows: impl Iterator<Item = rusqlite::Result<String>>,
) -> Result<Vec<QueueId>, QueueError> {
    let mut ids = Vec::new();
    for row in rows {
        if let Some(id) = QueueId::parse(&row?) {
            ids.push(id);
        }
    }
    Ok(ids)
}

fn state_name(state: RecipientState) -> &'static str {
    match state {
        RecipientState::Incoming => "incoming",
        RecipientState::Pending => "pending",
        RecipientState::Held => "held",
        RecipientState::Portal => "portal",
        RecipientState::Sent => "sent",
        RecipientState::Bounced => "bounced",
    }
}

fn parse_state(name: &str) -> RecipientState {
    match name {
        "incoming" => RecipientState::Incoming,
        "held" => RecipientState::Held,
        "portal" => RecipientState::Portal,
        "sent" => RecipientState::Sent,
        "bounced" => RecipientState::Bounced,
        _ => RecipientState::Pending,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::envelope::ClientInfo;
    use crate::store::test_master_keys;

    const MARKER: &[u8] = b"body-marker-7f3a";

    /// A message from a loopback client to one recipient, `rcpt@example.net`.
    pub(in crate::queue) fn accepted(body: &[u8]) -> AcceptedMessage {
        AcceptedMessage {
            sender: "sender@example.org".into(),
            recipients: vec!["rcpt@example.net".into()],
            body: body.to_vec(),
            body_8bit: false,
            smtputf8: false,
            client: ClientInfo {
                addr: "127.0.0.1:40000".parse().expect("socket address"),
                helo: "client.example.org".into(),
                tls: None,
                auth_user: None,
            },
        }
    }

    /// Reads the bytes of the database and of its `-wal` and `-shm` files.
    fn database_bytes(path: &Path) -> Vec<u8> {
        let mut bytes = Vec::new();
        for suffix in ["", "-wal", "-shm"] {
            let file = format!("{}{suffix}", path.display());
            bytes.extend(std::fs::read(file).unwrap_or_default());
        }
        bytes
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack
            .windows(needle.len())
            .any(|window| window == needle)
    }

    fn message_body(marker: &[u8]) -> Vec<u8> {
        [b"Subject: results\r\n\r\n".as_slice(), marker, b"\r\n"].concat()
    }

    /// Opens a store under `folder` with one message to two recipients, both routed
    /// `opportunistic`; returns the store, the message's id and the routes.
    fn routed_to_two(folder: &Path) -> (Store, QueueId, Vec<(String, Route, String)>) {
        let keys = test_master_keys(&folder.join("keys"));
        let mut store = Store::open(&folder.join("queue.sqlite"), keys).expect("store");
        let id = QueueId::generate();
        let mut message = accepted(&message_body(MARKER));
        message.recipients.push("second@example.net".into());
        store
            .insert_messages(&[(id.clone(), &message, false)])
            .expect("insert");
        let routes: Vec<_> = ["rcpt@example.net", "second@example.net"]
            .into_iter()
            .map(|address| (address.to_string(), Route::Opportunistic, String::new()))
            .collect();
        store.set_routes(&id, &routes, None).expect("routes");
        (store, id, routes)
    }

    fn result(address: &str, state: RecipientState, status: &str) -> RecipientUpdate {
        RecipientUpdate {
            address: address.into(),
            state,
            next_attempt: now_millis() + 60_000,
            record: AttemptRecord {
                status: status.into(),
                relay: Some("mx.example.net[127.0.0.1]:25".into()),
                tls: "none".into(),
                detail: "reply".into(),
            },
            expired: false,
            to_portal: false,
        }
    }

    fn states(store: &Store, id: &QueueId) -> Vec<(String, Option<String>, RecipientState)> {
        store
            .recipients(id)
            .expect("recipients")
            .into_iter()
            .map(|row| (row.address, row.route, row.state))
            .collect()
    }

    #[test]
    fn set_routes_of_all_stores_each_message() {
        let dir = tempfile::tempdir().expect("temp dir");
        let keys = test_master_keys(&dir.path().join("keys"));
        let mut store = Store::open(&dir.path().join("queue.sqlite"), keys).expect("store");
        let (first, second) = (QueueId::generate(), QueueId::generate());
        let body = message_body(MARKER);
        store
            .insert_messages(&[
                (first.clone(), &accepted(&body), false),
                (second.clone(), &accepted(&body), false),
            ])
            .expect("insert");
        let relayed = [(
            "rcpt@example.net".to_string(),
            Route::Opportunistic,
            "no rule".to_string(),
        )];
        let held = [(
            "rcpt@example.net".to_string(),
            Route::Portal,
            "sensitive".to_string(),
        )];
        let stripped = message_body(b"tag removed");
        store
            .set_routes_of_all(&[
                MessageRoutes {
                    id: &first,
                    routes: &relayed,
                    body: None,
                },
                MessageRoutes {
                    id: &second,
                    routes: &held,
                    body: Some(&stripped),
                },
            ])
            .expect("routes");

        assert!(store.incoming_messages(10).expect("incoming").is_empty());
        let route = |name: &str| Some(name.to_string());
        assert_eq!(
            states(&store, &first),
            [(
                "rcpt@example.net".into(),
                route("opportunistic"),
                RecipientState::Pending
            )]
        );
        assert_eq!(
            states(&store, &second),
            [(
                "rcpt@example.net".into(),
                route("portal"),
                RecipientState::Held
            )]
        );
        assert_eq!(store.body(&first).expect("body"), Some(body));
        assert_eq!(store.body(&second).expect("body"), Some(stripped));
    }

    #[test]
    fn results_delete_the_message_once_nothing_is_left() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut store, id, _) = routed_to_two(dir.path());
        let now = now_millis();
        assert_eq!(
            store.claim_due(now, now + 60_000, 10).expect("claim").len(),
            2
        );

        // One sent, one deferred: the message stays, and the deferred one is no longer
        // claimed.
        let first = vec![
            result("rcpt@example.net", RecipientState::Sent, "2.0.0"),
            result("second@example.net", RecipientState::Pending, "4.4.1"),
        ];
        let deleted = store
            .record_results(&[(id.clone(), first)], "")
            .expect("first results");
        assert_eq!(deleted, [false]);
        assert!(!store.in_flight(&id, now).expect("in flight"));
        let rows = store.recipients(&id).expect("recipients");
        assert_eq!(rows[1].state, RecipientState::Pending);
        assert_eq!(rows[1].attempts, 1);
        assert_eq!(rows[1].last_status.as_deref(), Some("4.4.1"));

        // A bounce waits for its DSN before the message may go.
        let bounce = vec![result(
            "second@example.net",
            RecipientState::Bounced,
            "5.1.1",
        )];
        let deleted = store
            .record_results(&[(id.clone(), bounce)], "")
            .expect("bounce");
        assert_eq!(deleted, [false]);
        assert_eq!(
            store.messages_with_pending_dsn().expect("pending DSN"),
            std::slice::from_ref(&id)
        );
        store
            .clear_dsn_pending(&id, &["second@example.net".into()])
            .expect("reported");
        assert_eq!(
            store
                .delete_if_done(std::slice::from_ref(&id))
                .expect("delete"),
            [true]
        );
        assert!(store.message(&id).expect("message").is_none());
    }

    #[test]
    fn record_results_handles_a_batch() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut store, id, routes) = routed_to_two(dir.path());
        let [other, third] = [(); 2].map(|()| {
            let single = QueueId::generate();
            store
                .insert_messages(&[(single.clone(), &accepted(&message_body(MARKER)), false)])
                .expect("insert");
            store
                .set_routes(&single, &routes[..1], None)
                .expect("routes");
            single
        });

        // `id` had its two recipients in two groups, whose reports arrive in one batch: the
        // message goes once the second is recorded. `third` has one moved to the portal,
        // which is still open.
        let mut moved = result("rcpt@example.net", RecipientState::Pending, "4.7.5");
        moved.to_portal = true;
        let deleted = store
            .record_results(
                &[
                    (
                        id.clone(),
                        vec![result("rcpt@example.net", RecipientState::Sent, "2.0.0")],
                    ),
                    (
                        other.clone(),
                        vec![result("rcpt@example.net", RecipientState::Sent, "2.0.0")],
                    ),
                    (third.clone(), vec![moved]),
                    (
                        id.clone(),
                        vec![result("second@example.net", RecipientState::Sent, "2.0.0")],
                    ),
                ],
                "verified TLS failed",
            )
            .expect("results");
        assert_eq!(deleted, [false, true, false, true]);
        assert!(store.message(&id).expect("message").is_none());
        assert!(store.recipients(&other).expect("recipients").is_empty());
        let rows = store.recipients(&third).expect("recipients");
        assert_eq!(rows[0].route.as_deref(), Some("portal"));
        assert_eq!(rows[0].state, RecipientState::Held);
        assert_eq!(rows[0].reason.as_deref(), Some("verified TLS failed"));
    }

    #[test]
    fn finished_messages_are_found_for_removal() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut store, id, routes) = routed_to_two(dir.path());
        let other = QueueId::generate();
        store
            .insert_messages(&[(other.clone(), &accepted(&message_body(MARKER)), false)])
            .expect("insert");
        store
            .set_routes(&other, &routes[..1], None)
            .expect("routes");
        assert!(store.finished_messages(10).expect("finished").is_empty());

        // Both recipients of `id` are done, but it is still queued, as when the commit
        // that would have removed it failed.
        store
            .connection
            .execute(
                "UPDATE recipients SET state = 'sent' WHERE message_id = ?1",
                [id.as_str()],
            )
            .expect("mark sent");
        assert_eq!(
            store.finished_messages(10).expect("finished"),
            std::slice::from_ref(&id)
        );
        assert_eq!(
            store
                .delete_if_done(&[id.clone(), other.clone()])
                .expect("delete"),
            [true, false]
        );
        assert!(store.finished_messages(10).expect("finished").is_empty());
        assert!(store.message(&other).expect("message").is_some());
    }

    #[test]
    fn write_transactions_take_the_lock_at_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("queue.sqlite");
        let keys = test_master_keys(&dir.path().join("keys"));
        let mut store = Store::open(&path, keys).expect("store");
        let other = Connection::open(&path).expect("second connection");
        other
            .busy_timeout(std::time::Duration::from_millis(50))
            .expect("busy timeout");
        let transaction = begin_write(&mut store.connection).expect("write transaction");
        // Nothing is written yet, and still the other connection must wait: the lock was
        // taken at BEGIN.
        let blocked = other.execute("DELETE FROM messages WHERE id = 'none'", []);
        assert!(blocked.is_err(), "a second writer got in: {blocked:?}");
        drop(transaction);
        other
            .execute("DELETE FROM messages WHERE id = 'none'", [])
            .expect("writes once the transaction ends");
    }

    #[test]
    fn bodies_are_encrypted_on_disk() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("queue.sqlite");
        let keys = test_master_keys(&dir.path().join("keys"));
        let mut store = Store::open(&path, Arc::clone(&keys)).expect("store");
        let id = QueueId::generate();
        let body = message_body(MARKER);
        let message = accepted(&body);
        store
            .insert_messages(&[(id.clone(), &message, false)])
            .expect("insert");
        assert_eq!(store.body(&id).expect("body"), Some(body.clone()));
        assert!(!contains(&database_bytes(&path), MARKER));

        let replaced = message_body(b"replaced-marker-91c2");
        store
            .set_routes(&id, &[], Some(&replaced))
            .expect("replace body");
        assert_eq!(store.body(&id).expect("body"), Some(replaced));
        assert!(!contains(&database_bytes(&path), b"replaced-marker-91c2"));
    }

    #[test]
    fn clear_bodies_are_encrypted_at_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("queue.sqlite");
        let keys = test_master_keys(&dir.path().join("keys"));
        let id = QueueId::generate();
        let body = message_body(MARKER);
        {
            let mut store = Store::open(&path, Arc::clone(&keys)).expect("store");
            store
                .insert_messages(&[(id.clone(), &accepted(&body), false)])
                .expect("insert");
            // Write the body back in clear, as a version without encryption stored it.
            store
                .connection
                .execute(
                    "UPDATE messages SET body = ?2, body_key_id = NULL WHERE id = ?1",
                    params![id.as_str(), body],
                )
                .expect("clear body");
        }
        let store = Store::open(&path, keys).expect("reopen");
        let stored: Vec<u8> = store
            .connection
            .query_row("SELECT body FROM messages", [], |row| row.get(0))
            .expect("stored body");
        assert!(!contains(&stored, MARKER));
        assert_eq!(store.body(&id).expect("body"), Some(body));
        assert!(!contains(&database_bytes(&path), MARKER));
    }

    #[test]
    fn bodies_survive_key_rotation() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("queue.sqlite");
        let keys_dir = dir.path().join("keys");
        let old_id = QueueId::generate();
        let old_body = message_body(b"before-rotation");
        {
            let mut store = Store::open(&path, test_master_keys(&keys_dir)).expect("store");
            store
                .insert_messages(&[(old_id.clone(), &accepted(&old_body), false)])
                .expect("insert");
        }
        crate::store::create_master_key(&keys_dir).expect("second master key");
        let keys = Arc::new(MasterKeys::load(&keys_dir, None).expect("both keys"));
        let mut store = Store::open(&path, keys).expect("reopen");
        let new_id = QueueId::generate();
        let new_body = message_body(b"after-rotation");
        store
            .insert_messages(&[(new_id.clone(), &accepted(&new_body), false)])
            .expect("insert");
        assert_eq!(store.body(&old_id).expect("old body"), Some(old_body));
        assert_eq!(store.body(&new_id).expect("new body"), Some(new_body));
        let key_ids: Vec<u32> = store
            .connection
            .prepare("SELECT body_key_id FROM messages ORDER BY body_key_id")
            .expect("select")
            .query_map([], |row| row.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(key_ids, [1, 2]);
    }

    #[test]
    fn body_needs_its_master_key() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("queue.sqlite");
        let id = QueueId::generate();
        {
            let keys = test_master_keys(&dir.path().join("first"));
            let mut store = Store::open(&path, keys).expect("store");
            store
                .insert_messages(&[(id.clone(), &accepted(b"Subject: x\r\n\r\nx\r\n"), false)])
                .expect("insert");
        }
        // A different key with the same id 1 fails authentication.
        let other = test_master_keys(&dir.path().join("second"));
        let store = Store::open(&path, other).expect("reopen");
        let error = store.body(&id).expect_err("wrong key");
        assert!(
            matches!(&error, QueueError::BodyUnreadable { reason, .. } if reason.contains("damaged")),
            "{error}"
        );
        store
            .connection
            .execute("UPDATE messages SET body_key_id = 7", [])
            .expect("set key id");
        let error = store.body(&id).expect_err("missing key");
        assert!(error.to_string().contains("master key 7"), "{error}");
    }
}
