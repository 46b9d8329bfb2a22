//! The audit trail: an append-only, hash-chained table in the queue database of routing
//! decisions, delivery results, portal accesses, hold store changes and administrator
//! actions.
//!
//! Every entry carries the time, the actor, the held or queue id it concerns, the outcome
//! and a short detail, plus the SHA-256 hash of the entry before it (see [`chain`]), so
//! [`AuditLog::verify`] detects an edited or deleted entry. Entries never contain message
//! content: no subjects, bodies, file names, passcodes or tokens.

mod chain;

use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::config::Config;
use crate::queue::store::{escape_like, now_millis};
use crate::store::{HeldId, StoreError};

pub use chain::GENESIS;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit (
    id       INTEGER PRIMARY KEY,
    at       BIGINT NOT NULL,
    event    TEXT NOT NULL,
    held_id  TEXT,
    queue_id TEXT,
    detail   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_held ON audit (held_id);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
";

/// Columns added after the first release, with their SQL type.
const CHAIN_COLUMNS: [(&str, &str); 4] = [
    ("actor", "TEXT NOT NULL DEFAULT 'system'"),
    ("outcome", "TEXT NOT NULL DEFAULT 'ok'"),
    ("prev_hash", "TEXT"),
    ("hash", "TEXT"),
];

const COLUMNS: &str = "id, at, event, actor, held_id, queue_id, outcome, detail, prev_hash, hash";

/// Something that happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditEvent {
    /// The notification with the portal link was queued.
    NotificationSent,
    /// A one-time passcode was sent to the recipient.
    PasscodeSent,
    /// A wrong passcode was entered.
    PasscodeFailed,
    /// The recipient opened the message on the portal.
    Opened,
    /// The recipient downloaded an attachment.
    AttachmentDownloaded,
    /// The recipient sent a reply from the portal.
    ReplySent,
    /// The retention period ended and the content was deleted.
    Expired,
    /// An administrator revoked the message.
    Revoked,
    /// An administrator moved the expiry of a portal message.
    ExpiryExtended,
    /// The policy gave a recipient its route.
    Routed,
    /// A delivery attempt for a recipient ended: sent, deferred, bounced or expired.
    Delivery,
    /// An administrator signed in, or failed to.
    AdminLogin,
    /// An administrator account was added, changed or removed.
    AdminAccount,
    /// An administrator opened a held message.
    ReviewViewed,
    /// An administrator asked for a release that a second one must approve.
    ReleaseRequested,
    /// An administrator released a held message for routing.
    ReviewReleased,
    /// An administrator rejected a held message; the sender gets a DSN.
    ReviewRejected,
    /// An administrator deleted a held message without a DSN.
    ReviewDeleted,
}

impl AuditEvent {
    /// Returns the dotted name stored for the event.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditEvent::NotificationSent => "portal.notification.sent",
            AuditEvent::PasscodeSent => "portal.passcode.sent",
            AuditEvent::PasscodeFailed => "portal.passcode.failed",
            AuditEvent::Opened => "portal.message.opened",
            AuditEvent::AttachmentDownloaded => "portal.attachment.downloaded",
            AuditEvent::ReplySent => "portal.reply.sent",
            AuditEvent::Expired => "store.expired",
            AuditEvent::Revoked => "store.revoked",
            AuditEvent::ExpiryExtended => "store.extended",
            AuditEvent::Routed => "queue.routed",
            AuditEvent::Delivery => "delivery.result",
            AuditEvent::AdminLogin => "admin.login",
            AuditEvent::AdminAccount => "admin.account",
            AuditEvent::ReviewViewed => "review.viewed",
            AuditEvent::ReleaseRequested => "review.release.requested",
            AuditEvent::ReviewReleased => "review.released",
            AuditEvent::ReviewRejected => "review.rejected",
            AuditEvent::ReviewDeleted => "review.deleted",
        }
    }

    /// Returns the actor of events that have one by nature: the recipient for portal
    /// accesses, `system` for everything else unless the caller names one.
    pub(crate) fn default_actor(self) -> &'static str {
        match self {
            AuditEvent::PasscodeSent
            | AuditEvent::PasscodeFailed
            | AuditEvent::Opened
            | AuditEvent::AttachmentDownloaded
            | AuditEvent::ReplySent => "recipient",
            _ => "system",
        }
    }
}

impl std::fmt::Display for AuditEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry to append.
#[derive(Clone, Copy, Debug)]
pub struct AuditRecord<'a> {
    /// What happened.
    pub event: AuditEvent,
    /// Actor: an administrator's name, `recipient`, `policy`, `delivery` or `system`.
    pub actor: &'a str,
    /// Held id, when the event concerns one.
    pub held_id: Option<&'a str>,
    /// Queue id, when the event concerns one.
    pub queue_id: Option<&'a str>,
    /// Result in one word or a few, such as `ok`, `sent`, `denied` or a route name.
    pub outcome: &'a str,
    /// Facts such as an address, a route reason or an administrator's reason. Never message
    /// content, passcodes or tokens.
    pub detail: &'a str,
}

/// One audit entry as read back.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    /// Sequence number, increasing by one.
    pub id: i64,
    /// Unix milliseconds.
    pub at: i64,
    /// Dotted event name.
    pub event: String,
    /// Actor: an administrator, `recipient`, `policy`, `delivery` or `system`.
    pub actor: String,
    /// Held id, when the event concerns one.
    pub held_id: Option<String>,
    /// Queue id, when the event concerns one.
    pub queue_id: Option<String>,
    /// Result.
    pub outcome: String,
    /// Free text such as a client address or a notification's queue id.
    pub detail: String,
    /// Hash of the entry before, [`GENESIS`] for the first.
    pub prev_hash: String,
    /// Hash of this entry over `prev_hash` and its fields.
    pub hash: String,
}

/// Conditions of an audit search; a field left `None` matches every entry.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// Unix milliseconds, inclusive.
    pub since: Option<i64>,
    /// Unix milliseconds, exclusive.
    pub until: Option<i64>,
    /// Event name or its dotted prefix, such as `review` or `review.released`.
    pub event: Option<String>,
    /// Exact actor.
    pub actor: Option<String>,
    /// Exact queue id.
    pub queue_id: Option<String>,
}

/// The first entry that does not fit the chain.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("audit entry {id} is invalid: {reason}")]
pub struct ChainBreak {
    /// Id of the entry.
    pub id: i64,
    /// Description of the mismatch.
    pub reason: String,
}

/// Result of a chain that verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainHead {
    /// Number of entries.
    pub entries: u64,
    /// Id of the last entry, 0 when there is none.
    pub last_id: i64,
    /// Hash of the last entry, [`GENESIS`] when there is none.
    pub hash: String,
}

/// The audit log; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    connection: Arc<Mutex<Connection>>,
}

impl AuditLog {
    /// Opens the audit table in the queue database, adding the chain columns to a table
    /// created before them and chaining the entries that have no hash yet.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] when the data folder cannot be created, [`StoreError::Database`]
    /// when SQLite fails.
    pub fn open(config: &Config) -> Result<AuditLog, StoreError> {
        let mut connection = crate::store::open_database(config)?;
        connection.execute_batch(SCHEMA)?;
        for (column, definition) in CHAIN_COLUMNS {
            let present = connection
                .prepare(&format!("SELECT {column} FROM audit LIMIT 0"))
                .is_ok();
            if !present {
                connection.execute_batch(&format!(
                    "ALTER TABLE audit ADD COLUMN {column} {definition}"
                ))?;
            }
        }
        chain_unhashed(&mut connection)?;
        Ok(AuditLog {
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    /// Appends a portal or hold store entry with the event's usual actor and outcome `ok`.
    /// `detail` must not contain message content, passcodes or tokens.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub fn record(
        &self,
        event: AuditEvent,
        held_id: Option<&HeldId>,
        queue_id: Option<&str>,
        detail: &str,
    ) -> Result<(), StoreError> {
        self.append(&AuditRecord {
            event,
            actor: event.default_actor(),
            held_id: held_id.map(HeldId::as_str),
            queue_id,
            outcome: "ok",
            detail,
        })
        .map(|_| ())
    }

    /// Appends an entry, chained to the last one, and returns its id. Control characters
    /// in the text fields are replaced by spaces.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub fn append(&self, record: &AuditRecord<'_>) -> Result<i64, StoreError> {
        self.append_all(std::slice::from_ref(record))
    }

    /// Appends entries in order in one transaction (one disk sync for all of them) and
    /// returns the id of the last entry in the table afterwards (0 for an empty table).
    ///
    /// The last entry is read and the new ones written in one `BEGIN IMMEDIATE`
    /// transaction, so writers in other processes on the same database extend the chain
    /// one after the other.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`]; then none of the entries is written.
    pub fn append_all(&self, records: &[AuditRecord<'_>]) -> Result<i64, StoreError> {
        let mut connection = self.lock();
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let last: Option<(i64, Option<String>)> = transaction
            .query_row(
                "SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        let (mut last_id, mut prev_hash) = match last {
            Some((id, hash)) => (id, hash.unwrap_or_default()),
            None => (0, GENESIS.to_string()),
        };
        let at = now_millis();
        for record in records {
            let mut entry = AuditEntry {
                id: last_id + 1,
                at,
                event: record.event.as_str().to_string(),
                actor: clean(record.actor),
                held_id: record.held_id.map(clean),
                queue_id: record.queue_id.map(clean),
                outcome: clean(record.outcome),
                detail: clean(record.detail),
                prev_hash,
                hash: String::new(),
            };
            entry.hash = chain::entry_hash(&entry.prev_hash, &entry);
            insert(&transaction, &entry)?;
            last_id = entry.id;
            prev_hash = entry.hash;
        }
        transaction.commit()?;
        Ok(last_id)
    }

    /// Entries for one held message, oldest first.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub fn entries_for(&self, held_id: &HeldId) -> Result<Vec<AuditEntry>, StoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare(&format!(
            "SELECT {COLUMNS} FROM audit WHERE held_id = ?1 ORDER BY id"
        ))?;
        let rows = statement.query_map([held_id.as_str()], entry_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Entries matching `filter`, oldest first (or newest first with `newest_first`),
    /// skipping `offset` and returning at most `limit`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub fn search(
        &self,
        filter: &AuditFilter,
        newest_first: bool,
        limit: u32,
        offset: u64,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let connection = self.lock();
        let order = if newest_first { "DESC" } else { "ASC" };
        let mut statement = connection.prepare(&format!(
            "SELECT {COLUMNS} FROM audit
             WHERE (?1 IS NULL OR at >= ?1) AND (?2 IS NULL OR at < ?2)
               AND (?3 IS NULL OR event = ?3 OR event LIKE ?4 ESCAPE '\\')
               AND (?5 IS NULL OR actor = ?5) AND (?6 IS NULL OR queue_id = ?6)
             ORDER BY id {order} LIMIT ?7 OFFSET ?8"
        ))?;
        let prefix = filter
            .event
            .as_ref()
            .map(|event| format!("{}.%", escape_like(event)));
        let rows = statement.query_map(
            params![
                filter.since,
                filter.until,
                filter.event,
                prefix,
                filter.actor,
                filter.queue_id,
                i64::from(limit),
                i64::try_from(offset).unwrap_or(i64::MAX),
            ],
            entry_from_row,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Checks the whole chain from the first entry: ids follow each other, each
    /// `prev_hash` is the hash of the entry before, and each hash matches the entry's
    /// fields.
    ///
    /// NOTE: removing entries from the end leaves a shorter chain that still verifies.
    /// Comparing the returned head with one recorded elsewhere (a log line, a ticket)
    /// detects that.
    ///
    /// # Errors
    ///
    /// `Ok(Err(break))` names the first entry that does not fit; the outer error is
    /// [`StoreError::Database`].
    pub fn verify(&self) -> Result<Result<ChainHead, ChainBreak>, StoreError> {
        let connection = self.lock();
        let mut statement =
            connection.prepare(&format!("SELECT {COLUMNS} FROM audit ORDER BY id"))?;
        let mut rows = statement.query([])?;
        let mut head = ChainHead {
            entries: 0,
            last_id: 0,
            hash: GENESIS.to_string(),
        };
        while let Some(row) = rows.next()? {
            let entry = entry_from_row(row)?;
            if let Err(reason) = check_link(&head, &entry) {
                return Ok(Err(ChainBreak {
                    id: entry.id,
                    reason,
                }));
            }
            head.entries += 1;
            head.last_id = entry.id;
            head.hash = entry.hash;
        }
        Ok(Ok(head))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Checks that `entry` follows the verified `head`.
fn check_link(head: &ChainHead, entry: &AuditEntry) -> Result<(), String> {
    if entry.id != head.last_id + 1 {
        return Err(format!(
            "expected id {} after {}, so entries are missing",
            head.last_id + 1,
            head.last_id
        ));
    }
    if entry.prev_hash != head.hash {
        return Err(format!(
            "prev_hash {} is not the hash of the entry before it ({}), so an entry before it \
             was changed or removed",
            entry.prev_hash, head.hash
        ));
    }
    let expected = chain::entry_hash(&entry.prev_hash, entry);
    if entry.hash != expected {
        return Err(format!(
            "stored hash {} does not match its fields (expected {expected}), so the entry was \
             changed",
            entry.hash
        ));
    }
    Ok(())
}

/// Chains entries written before the table had hashes, in id order, after the last
/// hashed one. Runs once, when such entries exist.
fn chain_unhashed(connection: &mut Connection) -> Result<(), StoreError> {
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let unhashed: Vec<AuditEntry> = {
        let mut statement = transaction.prepare(&format!(
            "SELECT {COLUMNS} FROM audit WHERE hash IS NULL ORDER BY id"
        ))?;
        let rows = statement.query_map([], entry_from_row)?;
        rows.collect::<Result<_, _>>()?
    };
    if unhashed.is_empty() {
        return Ok(());
    }
    let mut prev_hash: String = transaction
        .query_row(
            "SELECT hash FROM audit WHERE hash IS NOT NULL ORDER BY id DESC LIMIT 1",
            [],
            |row| row.get(0),
        )
        .optional()?
        .unwrap_or_else(|| GENESIS.to_string());
    let mut next_id: i64 = transaction.query_row(
        "SELECT COALESCE(MAX(id), 0) FROM audit WHERE hash IS NOT NULL",
        [],
        |row| row.get(0),
    )?;
    for mut entry in unhashed {
        // Renumbering closes gaps, so ids of chained entries increase by one.
        transaction.execute("DELETE FROM audit WHERE id = ?1", [entry.id])?;
        next_id += 1;
        entry.id = next_id;
        entry.prev_hash = prev_hash;
        entry.hash = chain::entry_hash(&entry.prev_hash, &entry);
        insert(&transaction, &entry)?;
        prev_hash = entry.hash;
    }
    transaction.commit()?;
    Ok(())
}

fn insert(connection: &Connection, entry: &AuditEntry) -> Result<(), StoreError> {
    connection.execute(
        &format!("INSERT INTO audit ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
        params![
            entry.id,
            entry.at,
            entry.event,
            entry.actor,
            entry.held_id,
            entry.queue_id,
            entry.outcome,
            entry.detail,
            entry.prev_hash,
            entry.hash
        ],
    )?;
    Ok(())
}

fn entry_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        id: row.get(0)?,
        at: row.get(1)?,
        event: row.get(2)?,
        actor: row.get(3)?,
        held_id: row.get(4)?,
        queue_id: row.get(5)?,
        outcome: row.get(6)?,
        detail: row.get(7)?,
        prev_hash: row.get::<_, Option<String>>(8)?.unwrap_or_default(),
        hash: row.get::<_, Option<String>>(9)?.unwrap_or_default(),
    })
}

fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests;
