//! The `portal` route's step in the queue: each held `portal` recipient's copy moves into
//! the encrypted hold store, and a notification with the portal link is queued in its
//! place. The notification and the recipient's final state `portal` are committed in one
//! transaction. A crash before that commit leaves the recipient held, and the next try
//! reuses the stored copy with a fresh token, so the message is never stored twice and
//! never delivered by SMTP.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mail_parser::MessageParser;
use tokio::sync::Notify;

use super::QueueError;
use super::manager::BATCH_BYTES;
use super::store::{AttemptRecord, MessageSummary, PortalCompletion, Store, now_millis};
use crate::audit::{AuditEvent, AuditLog, AuditRecord};
use crate::config::Config;
use crate::envelope::{AcceptedMessage, ClientInfo, QueueId, display_address};
use crate::store::notification::{build_notification, build_sender_receipt};
use crate::store::{HeldEnvelope, HeldId, HoldStore, NewHold};
use crate::telemetry::{MAIL_LOG, escape};

/// Recipients moved per scan at most.
const HOLD_BATCH: usize = 50;
/// Wait before retrying a recipient whose hold or notification failed.
const RETRY_DELAY: Duration = Duration::from_secs(60);

/// The hold store and audit log as the queue manager uses them.
pub(super) struct PortalHold {
    config: Arc<Config>,
    hold_store: HoldStore,
    audit: AuditLog,
    /// The queue manager's wake-up, rung when due recipients are left for the next batch.
    wake: Arc<Notify>,
}

impl PortalHold {
    pub(super) fn new(
        config: Arc<Config>,
        hold_store: HoldStore,
        audit: AuditLog,
        wake: Arc<Notify>,
    ) -> PortalHold {
        PortalHold {
            config,
            hold_store,
            audit,
            wake,
        }
    }

    /// Moves every due `portal` recipient into the hold store, a batch at a time: one
    /// blocking task reads the messages, one transaction stores every copy in the hold
    /// store, and one more queues every notification. Returns the queue ids of messages
    /// that had a recipient moved, which may now be done.
    pub(super) async fn hold_due(&self, store: &Arc<Mutex<Store>>) -> Vec<QueueId> {
        let now = now_millis();
        let due = match blocking(store, move |store| {
            store.due_portal_recipients(now, HOLD_BATCH)
        })
        .await
        {
            Ok(due) => due,
            Err(error) => {
                tracing::error!(%error, "failed to read portal recipients");
                return Vec::new();
            }
        };
        if due.is_empty() {
            return Vec::new();
        }

        let full = due.len() == HOLD_BATCH;
        let to_load = due.clone();
        let loaded = blocking(store, move |store| {
            let mut loaded = Vec::with_capacity(to_load.len());
            let mut bytes = 0;
            for (id, address) in to_load {
                // A message deleted meanwhile has nothing left to hold.
                let Some(summary) = store.message(&id)? else {
                    continue;
                };
                // The rest waits for the next batch, so that a burst of large messages is
                // not all in memory at once.
                if !loaded.is_empty() && bytes + summary.size > BATCH_BYTES {
                    break;
                }
                if let Some(body) = store.body(&id)? {
                    bytes += summary.size;
                    loaded.push((id, address, summary, body));
                }
            }
            Ok(loaded)
        })
        .await;
        let loaded = match loaded {
            Ok(loaded) => {
                if full || loaded.len() < due.len() {
                    // Come round again at once for the rest instead of at the next scan.
                    self.wake.notify_one();
                }
                loaded
            }
            Err(error) => {
                let detail = format!("failed to read the message: {error}");
                for (id, address) in due {
                    self.defer(store, &id, address, &detail).await;
                }
                return Vec::new();
            }
        };

        let mut copies = Vec::with_capacity(loaded.len());
        let mut pending = Vec::with_capacity(loaded.len());
        for (id, address, summary, body) in loaded {
            let envelope = HeldEnvelope {
                queue_id: id.to_string(),
                sender: summary.sender.clone(),
                recipient: address.clone(),
                subject: subject_of(&body),
            };
            copies.push((body, envelope.clone()));
            pending.push((id, address, summary, envelope));
        }
        let hold_store = self.hold_store.clone();
        let new_holds = tokio::task::spawn_blocking(move || {
            let copies: Vec<(&[u8], &HeldEnvelope)> = copies
                .iter()
                .map(|(body, envelope)| (body.as_slice(), envelope))
                .collect();
            hold_store.hold_all(&copies)
        })
        .await
        .map_err(|error| format!("hold task failed: {error}"))
        .and_then(|stored| stored.map_err(|error| error.to_string()));
        let new_holds = match new_holds {
            Ok(new_holds) => new_holds,
            Err(detail) => {
                for (id, address, _, _) in pending {
                    self.defer(store, &id, address, &detail).await;
                }
                return Vec::new();
            }
        };

        let mut completions = Vec::with_capacity(new_holds.len());
        let mut facts = Vec::with_capacity(new_holds.len());
        for ((id, address, summary, envelope), new_hold) in pending.into_iter().zip(new_holds) {
            let notifications = match self.build_mails(&summary, &envelope, &new_hold) {
                Ok(notifications) => notifications,
                Err(detail) => {
                    self.defer(store, &id, address, &detail).await;
                    continue;
                }
            };
            let notification_id = notifications[0].0.clone();
            let receipt = notifications.get(1).map(|(id, _)| id.clone());
            completions.push(PortalCompletion {
                id: id.clone(),
                address: address.clone(),
                record: AttemptRecord {
                    status: "2.0.0".into(),
                    relay: None,
                    tls: "none".into(),
                    detail: format!("held id {}, notification {notification_id}", new_hold.id),
                },
                notifications,
            });
            facts.push((id, address, new_hold.id, notification_id, receipt));
        }
        if facts.is_empty() {
            return Vec::new();
        }
        let completed =
            match blocking(store, move |store| store.complete_portal(&completions)).await {
                Ok(completed) => completed,
                Err(error) => {
                    let detail = format!("failed to queue the notification: {error}");
                    for (id, address, _, _, _) in facts {
                        self.defer(store, &id, address, &detail).await;
                    }
                    return Vec::new();
                }
            };

        let mut moved = Vec::new();
        let mut audited = Vec::new();
        for ((id, address, held_id, notification_id, receipt), completed) in
            facts.into_iter().zip(completed)
        {
            if !completed {
                // The recipient left the held state meanwhile (an operator deleted the
                // message), so its copy in the hold store must not outlive it.
                if let Err(error) = self.hold_store.revoke(&held_id) {
                    tracing::error!(queue_id = %id, %held_id, %error, "failed to revoke an orphaned hold");
                }
                continue;
            }
            tracing::info!(
                target: MAIL_LOG,
                "{id}: to={}, route=portal, status=held (held id {held_id}, notification {notification_id})",
                display_address(&address),
            );
            if let Some(receipt) = &receipt {
                tracing::info!(target: MAIL_LOG, "{id}: sender receipt: {receipt}");
            }
            audited.push((
                held_id,
                id.clone(),
                format!("notification {notification_id}"),
            ));
            moved.push(id);
        }
        self.audit_notifications(audited).await;
        moved
    }

    /// Expires held messages past their retention and audits each.
    pub(super) async fn expire_due(&self) {
        let hold_store = self.hold_store.clone();
        let expired =
            tokio::task::spawn_blocking(move || hold_store.expire_due_ids(now_millis())).await;
        let ids = match expired {
            Ok(Ok(ids)) => ids,
            Ok(Err(error)) => {
                tracing::error!(%error, "failed to expire held messages");
                return;
            }
            Err(error) => {
                tracing::error!(%error, "held message expiry task failed");
                return;
            }
        };
        for id in ids {
            tracing::info!(target: MAIL_LOG, "held {id}: expired, content deleted");
            if let Err(error) = self.audit.record(AuditEvent::Expired, Some(&id), None, "") {
                tracing::error!(held_id = %id, %error, "failed to audit expiry");
            }
        }
    }

    /// Puts off the next try of a recipient whose hold or notification failed. Fails
    /// closed: the recipient stays held and is tried again later.
    async fn defer(&self, store: &Arc<Mutex<Store>>, id: &QueueId, address: String, detail: &str) {
        tracing::error!(
            queue_id = %id,
            recipient = %display_address(&address),
            error = %escape(detail),
            "failed to hold message for the portal; retrying in {}s",
            RETRY_DELAY.as_secs()
        );
        let next = now_millis() + RETRY_DELAY.as_millis() as i64;
        let target = id.clone();
        let detail = detail.to_owned();
        if let Err(error) = blocking(store, move |store| {
            store.defer_portal(&target, &address, next, &detail)
        })
        .await
        {
            tracing::error!(queue_id = %id, %error, "failed to defer portal recipient");
        }
    }

    /// Audits the notifications sent for `(held id, queue id, detail)`, in one transaction.
    async fn audit_notifications(&self, notifications: Vec<(HeldId, QueueId, String)>) {
        if notifications.is_empty() {
            return;
        }
        let audit = self.audit.clone();
        let count = notifications.len();
        let written = tokio::task::spawn_blocking(move || {
            let records: Vec<AuditRecord<'_>> = notifications
                .iter()
                .map(|(held_id, queue_id, detail)| AuditRecord {
                    event: AuditEvent::NotificationSent,
                    actor: AuditEvent::NotificationSent.default_actor(),
                    held_id: Some(held_id.as_str()),
                    queue_id: Some(queue_id.as_str()),
                    outcome: "ok",
                    detail,
                })
                .collect();
            audit.append_all(&records)
        })
        .await;
        match written {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::error!(entries = count, %error, "failed to audit notifications")
            }
            Err(error) => {
                tracing::error!(entries = count, %error, "notification audit task failed")
            }
        }
    }

    /// The notification, and the sender receipt when configured and the sender is not
    /// `<>`, each with a new queue id.
    fn build_mails(
        &self,
        summary: &MessageSummary,
        envelope: &HeldEnvelope,
        new_hold: &NewHold,
    ) -> Result<Vec<(QueueId, AcceptedMessage)>, String> {
        let config = &self.config;
        let from = config.portal.from_address(&config.server.hostname);
        let notification =
            build_notification(config, envelope, &new_hold.token, new_hold.expires_at)?;
        let mut mails = vec![(
            QueueId::generate(),
            self.accepted(&from, &envelope.recipient, notification),
        )];
        if config.portal.sender_receipt && !summary.sender.is_empty() {
            let receipt = build_sender_receipt(config, envelope, new_hold.expires_at)?;
            mails.push((
                QueueId::generate(),
                self.accepted(&from, &summary.sender, receipt),
            ));
        }
        Ok(mails)
    }

    fn accepted(&self, sender: &str, recipient: &str, body: Vec<u8>) -> AcceptedMessage {
        AcceptedMessage {
            sender: sender.to_owned(),
            recipients: vec![recipient.to_owned()],
            body_8bit: body.iter().any(|byte| *byte > 127),
            body,
            smtputf8: false,
            client: ClientInfo {
                addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                helo: self.config.server.hostname.clone(),
                tls: None,
                auth_user: None,
            },
        }
    }
}

/// The decoded `Subject:` of a message, empty when it has none.
fn subject_of(body: &[u8]) -> String {
    MessageParser::default()
        .parse_headers(body)
        .and_then(|message| message.subject().map(str::to_owned))
        .unwrap_or_default()
}

async fn blocking<T: Send + 'static>(
    store: &Arc<Mutex<Store>>,
    operation: impl FnOnce(&mut Store) -> Result<T, QueueError> + Send + 'static,
) -> Result<T, QueueError> {
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || {
        let mut store = store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        operation(&mut store)
    })
    .await
    .unwrap_or_else(|join_error| Err(QueueError::CommitFailed(join_error.to_string())))
}
