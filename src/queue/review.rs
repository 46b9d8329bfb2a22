//! The review queue: messages whose recipients a `review` rule holds, and the actions an
//! administrator takes on them.
//!
//! A release puts the held recipients back to `incoming` and marks the message, so the
//! queue manager routes it again with the `review` action read as `protect`. A sensitive
//! message then still leaves only by forced TLS, S/MIME or the portal. A release as not
//! sensitive routes it with no classification at all. A rejection bounces the recipients with
//! the administrator's reason, and the manager's usual bounce report sends the DSN.
//!
//! Nothing here stores message content: the list reads envelope columns, and pages parse
//! the subject from [`Store::body`] for the rows they show.

use rusqlite::{OptionalExtension, params};

use super::QueueError;
use super::store::{Store, escape_like, now_millis};
use crate::audit::{AuditEvent, AuditLog, AuditRecord};
use crate::envelope::QueueId;
use crate::policy::classify::{Action, Classification};
use crate::store::begin_write;

/// Enhanced status of a rejected recipient (RFC 3463: 5.7.1, delivery not authorized).
pub const REJECTED_STATUS: &str = "5.7.1";

/// Routing mode of a released message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseMode {
    /// As sensitive: the `review` action counts as `protect`.
    Protected,
    /// As ordinary mail, without classification.
    NotSensitive,
}

impl ReleaseMode {
    /// Returns the name stored in `messages.review_release` and written in audit entries.
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseMode::Protected => "protected",
            ReleaseMode::NotSensitive => "not-sensitive",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<ReleaseMode> {
        match name {
            "protected" => Some(ReleaseMode::Protected),
            "not-sensitive" => Some(ReleaseMode::NotSensitive),
            _ => None,
        }
    }
}

/// Applies a release to the classification of a message being routed again.
pub fn apply_release(
    classification: Classification,
    release: Option<ReleaseMode>,
) -> Classification {
    match release {
        None => classification,
        Some(ReleaseMode::NotSensitive) => Classification::default(),
        Some(ReleaseMode::Protected) => {
            let action = classification.action.map(|_| Action::Protect);
            Classification {
                action,
                ..classification
            }
        }
    }
}

/// Conditions of a review list; a field left `None` matches every message.
#[derive(Clone, Debug, Default)]
pub struct ReviewFilter {
    /// Part of the envelope sender, case-insensitive.
    pub sender: Option<String>,
    /// Part of a held recipient's address, case-insensitive.
    pub recipient: Option<String>,
    /// Unix milliseconds of acceptance, inclusive.
    pub since: Option<i64>,
    /// Unix milliseconds of acceptance, exclusive.
    pub until: Option<i64>,
    /// Part of the routing reason, such as a rule name `pattern:codename`.
    pub rule: Option<String>,
}

/// One message in the review list.
#[derive(Clone, Debug)]
pub struct ReviewItem {
    /// Queue id.
    pub id: QueueId,
    /// Envelope sender, empty for `<>`.
    pub sender: String,
    /// Unix milliseconds of acceptance.
    pub received_at: i64,
    /// Body size in bytes.
    pub size: u64,
    /// Held recipients, in RCPT order.
    pub recipients: Vec<String>,
    /// Routing reason of the first held recipient: the rules that matched and where.
    pub reason: String,
}

/// A release waiting for a second administrator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseRequest {
    /// Requested mode.
    pub mode: ReleaseMode,
    /// Administrator who asked.
    pub requested_by: String,
    /// Reason given.
    pub reason: String,
}

const REVIEW_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS review_requests (
    message_id   TEXT PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
    mode         TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    reason       TEXT NOT NULL,
    requested_at BIGINT NOT NULL
);
";

/// The `WHERE` clause shared by the list and its count; parameters ?1 to ?5 follow
/// [`ReviewFilter`]'s fields. The recipient condition is an uncorrelated `IN` so that it
/// runs once over the state index rather than once per message.
const FILTER: &str = "
    FROM messages m
    WHERE m.id IN (SELECT r.message_id FROM recipients r
                   WHERE r.state = 'held' AND r.route = 'review'
                   AND (?2 IS NULL OR LOWER(r.address) LIKE ?2 ESCAPE '\\')
                   AND (?5 IS NULL OR r.reason LIKE ?5 ESCAPE '\\'))
      AND (?1 IS NULL OR LOWER(m.sender) LIKE ?1 ESCAPE '\\')
      AND (?3 IS NULL OR m.received_at >= ?3)
      AND (?4 IS NULL OR m.received_at < ?4)";

impl Store {
    /// Creates the review tables and the `review_release` column when missing.
    pub(super) fn add_review_schema(&self) -> Result<(), QueueError> {
        self.connection.execute_batch(REVIEW_SCHEMA)?;
        let present = self
            .connection
            .prepare("SELECT review_release FROM messages LIMIT 0")
            .is_ok();
        if !present {
            self.connection
                .execute_batch("ALTER TABLE messages ADD COLUMN review_release TEXT")?;
        }
        Ok(())
    }

    /// Held review messages matching `filter`, newest first, `limit` from `offset`.
    pub fn review_list(
        &self,
        filter: &ReviewFilter,
        limit: u32,
        offset: u64,
    ) -> Result<Vec<ReviewItem>, QueueError> {
        let mut statement = self.connection.prepare(&format!(
            "SELECT m.id, m.sender, m.received_at, m.size {FILTER}
             ORDER BY m.received_at DESC, m.id LIMIT ?6 OFFSET ?7"
        ))?;
        let patterns = filter_patterns(filter);
        let rows = statement
            .query_map(
                params![
                    patterns[0],
                    patterns[1],
                    filter.since,
                    filter.until,
                    patterns[2],
                    i64::from(limit),
                    i64::try_from(offset).unwrap_or(i64::MAX)
                ],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, i64>(2)?,
                        row.get::<_, i64>(3)?,
                    ))
                },
            )?
            .collect::<Result<Vec<_>, _>>()?;
        let mut items = Vec::with_capacity(rows.len());
        for (id, sender, received_at, size) in rows {
            let Some(id) = QueueId::parse(&id) else {
                continue;
            };
            let held: Vec<_> = self
                .recipients(&id)?
                .into_iter()
                .filter(|row| is_held_for_review(row.route.as_deref(), row.state))
                .collect();
            items.push(ReviewItem {
                reason: held
                    .first()
                    .and_then(|row| row.reason.clone())
                    .unwrap_or_default(),
                recipients: held.into_iter().map(|row| row.address).collect(),
                id,
                sender,
                received_at,
                size: u64::try_from(size).unwrap_or(0),
            });
        }
        Ok(items)
    }

    /// Number of held review messages matching `filter`.
    pub fn review_count(&self, filter: &ReviewFilter) -> Result<u64, QueueError> {
        let patterns = filter_patterns(filter);
        let count: i64 = self.connection.query_row(
            &format!("SELECT COUNT(*) {FILTER}"),
            params![
                patterns[0],
                patterns[1],
                filter.since,
                filter.until,
                patterns[2]
            ],
            |row| row.get(0),
        )?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Returns whether the message has recipients held for review.
    pub fn is_in_review(&self, id: &QueueId) -> Result<bool, QueueError> {
        let count: i64 = self.connection.query_row(
            "SELECT COUNT(*) FROM recipients
             WHERE message_id = ?1 AND state = 'held' AND route = 'review'",
            [id.as_str()],
            |row| row.get(0),
        )?;
        Ok(count > 0)
    }

    /// Puts the message's review recipients back to `incoming`, to be routed again in
    /// `mode`, and drops any pending release request. Returns how many recipients
    /// were released.
    pub fn review_release(&mut self, id: &QueueId, mode: ReleaseMode) -> Result<usize, QueueError> {
        let transaction = begin_write(&mut self.connection)?;
        let released = transaction.execute(
            "UPDATE recipients SET state = 'incoming', route = NULL, reason = NULL,
                 next_attempt = ?2
             WHERE message_id = ?1 AND state = 'held' AND route = 'review'",
            params![id.as_str(), now_millis()],
        )?;
        if released > 0 {
            transaction.execute(
                "UPDATE messages SET review_release = ?2 WHERE id = ?1",
                params![id.as_str(), mode.as_str()],
            )?;
            transaction.execute(
                "DELETE FROM review_requests WHERE message_id = ?1",
                [id.as_str()],
            )?;
        }
        transaction.commit()?;
        Ok(released)
    }

    /// Bounces the message's review recipients with status 5.7.1 and `reason`, so the
    /// queue manager sends the sender one DSN for them. Returns how many were rejected.
    pub fn review_reject(&mut self, id: &QueueId, reason: &str) -> Result<usize, QueueError> {
        let detail = format!("rejected by an administrator: {reason}");
        let transaction = begin_write(&mut self.connection)?;
        let rejected = transaction.execute(
            "UPDATE recipients SET state = 'bounced', dsn_pending = 1, expired = 0,
                 last_status = ?2, last_relay = NULL, last_tls = 'none', last_detail = ?3
             WHERE message_id = ?1 AND state = 'held' AND route = 'review'",
            params![id.as_str(), REJECTED_STATUS, detail],
        )?;
        transaction.execute(
            "DELETE FROM review_requests WHERE message_id = ?1",
            [id.as_str()],
        )?;
        transaction.commit()?;
        Ok(rejected)
    }

    /// Deletes a message held for review, without a DSN; returns whether it did.
    pub fn review_delete(&mut self, id: &QueueId) -> Result<bool, QueueError> {
        if !self.is_in_review(id)? {
            return Ok(false);
        }
        self.delete(id)
    }

    /// Returns the release request waiting for approval, if any.
    pub fn release_request(&self, id: &QueueId) -> Result<Option<ReleaseRequest>, QueueError> {
        let row: Option<(String, String, String)> = self
            .connection
            .query_row(
                "SELECT mode, requested_by, reason FROM review_requests WHERE message_id = ?1",
                [id.as_str()],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()?;
        Ok(row.and_then(|(mode, requested_by, reason)| {
            Some(ReleaseRequest {
                mode: ReleaseMode::parse(&mode)?,
                requested_by,
                reason,
            })
        }))
    }

    /// Records a release request for a second administrator to approve, replacing an
    /// earlier one.
    pub fn request_release(
        &self,
        id: &QueueId,
        request: &ReleaseRequest,
    ) -> Result<(), QueueError> {
        self.connection.execute(
            "DELETE FROM review_requests WHERE message_id = ?1",
            [id.as_str()],
        )?;
        self.connection.execute(
            "INSERT INTO review_requests (message_id, mode, requested_by, reason, requested_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                id.as_str(),
                request.mode.as_str(),
                request.requested_by,
                request.reason,
                now_millis()
            ],
        )?;
        Ok(())
    }
}

/// An audit entry the queue manager writes about a message.
pub(super) struct AuditNote {
    pub event: AuditEvent,
    pub actor: &'static str,
    pub outcome: String,
    pub detail: String,
}

/// Appends notes, each about the message with its queue id, to the audit trail in one
/// transaction on a blocking thread. A failure is logged: the routing or delivery they
/// describe has already been committed.
pub(super) async fn record_notes(audit: &AuditLog, notes: Vec<(QueueId, AuditNote)>) {
    if notes.is_empty() {
        return;
    }
    let audit = audit.clone();
    let count = notes.len();
    let written = tokio::task::spawn_blocking(move || {
        let records: Vec<AuditRecord<'_>> = notes
            .iter()
            .map(|(queue_id, note)| AuditRecord {
                event: note.event,
                actor: note.actor,
                held_id: None,
                queue_id: Some(queue_id.as_str()),
                outcome: &note.outcome,
                detail: &note.detail,
            })
            .collect();
        audit.append_all(&records)
    })
    .await;
    match written {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => tracing::error!(entries = count, %error, "failed to write audit entries"),
        Err(error) => tracing::error!(entries = count, %error, "audit task failed"),
    }
}

/// Returns whether a recipient row is held by the `review` route.
pub fn is_held_for_review(route: Option<&str>, state: super::store::RecipientState) -> bool {
    route == Some("review") && state == super::store::RecipientState::Held
}

/// `LIKE` patterns for the sender, recipient and rule filters.
fn filter_patterns(filter: &ReviewFilter) -> [Option<String>; 3] {
    let contains = |text: &Option<String>| {
        text.as_ref()
            .map(|text| format!("%{}%", escape_like(&text.to_lowercase())))
    };
    let rule = filter
        .rule
        .as_ref()
        .map(|text| format!("%{}%", escape_like(text)));
    [contains(&filter.sender), contains(&filter.recipient), rule]
}

#[cfg(test)]
mod tests;
