//! The audit log: an append-only table of portal accesses and hold store changes in the
//! queue database. Entries name held and queue ids and never contain message content,
//! passcodes or tokens.

use std::sync::{Arc, Mutex};

use rusqlite::{Connection, params};

use crate::config::Config;
use crate::queue::store::now_millis;
use crate::store::{HeldId, StoreError};

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
";

/// Something that happened to a held message.
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
}

impl AuditEvent {
    /// The event's dotted name, as stored.
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
        }
    }
}

impl std::fmt::Display for AuditEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One audit entry as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// Sequence number, increasing.
    pub id: i64,
    /// Unix milliseconds.
    pub at: i64,
    /// Dotted event name.
    pub event: String,
    /// Held id, when the event concerns one.
    pub held_id: Option<String>,
    /// Queue id, when the event concerns one.
    pub queue_id: Option<String>,
    /// Free text such as a client address or a notification's queue id.
    pub detail: String,
}

/// The audit log; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    connection: Arc<Mutex<Connection>>,
}

impl AuditLog {
    /// Opens the audit table in the queue database.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] when the data folder cannot be created, [`StoreError::Database`]
    /// when SQLite fails.
    pub fn open(config: &Config) -> Result<AuditLog, StoreError> {
        let connection = crate::store::open_database(config)?;
        connection.execute_batch(SCHEMA)?;
        Ok(AuditLog {
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    /// Appends an entry. `detail` must not contain message content, passcodes or tokens;
    /// control characters in it are replaced.
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
        let detail: String = detail
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        self.lock().execute(
            "INSERT INTO audit (at, event, held_id, queue_id, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                now_millis(),
                event.as_str(),
                held_id.map(HeldId::as_str),
                queue_id,
                detail
            ],
        )?;
        Ok(())
    }

    /// Entries for one held message, oldest first.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub fn entries_for(&self, held_id: &HeldId) -> Result<Vec<AuditEntry>, StoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare(
            "SELECT id, at, event, held_id, queue_id, detail FROM audit
             WHERE held_id = ?1 ORDER BY id",
        )?;
        let rows = statement.query_map([held_id.as_str()], |row| {
            Ok(AuditEntry {
                id: row.get(0)?,
                at: row.get(1)?,
                event: row.get(2)?,
                held_id: row.get(3)?,
                queue_id: row.get(4)?,
                detail: row.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_appends_entries_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::development();
        config.server.data_dir = dir.path().join("data");
        let audit = AuditLog::open(&config).unwrap();
        let id = HeldId::parse("00000000000000AB").unwrap();

        audit
            .record(
                AuditEvent::NotificationSent,
                Some(&id),
                Some("0123456789ABCDEF"),
                "notification X",
            )
            .unwrap();
        audit
            .record(
                AuditEvent::PasscodeFailed,
                Some(&id),
                None,
                "client\r\n203.0.113.9",
            )
            .unwrap();

        let entries = audit.entries_for(&id).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].event, "portal.notification.sent");
        assert_eq!(entries[0].queue_id.as_deref(), Some("0123456789ABCDEF"));
        assert_eq!(entries[1].event, "portal.passcode.failed");
        assert_eq!(entries[1].detail, "client  203.0.113.9");
        assert!(entries[0].id < entries[1].id);
    }
}
