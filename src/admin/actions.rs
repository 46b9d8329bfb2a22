//! Administrator actions on held mail, shared by the CLI and the admin pages. Every action
//! checks the role, applies the four-eyes rule, changes the queue and writes one audit
//! entry.

use super::{Account, Role};
use crate::audit::{AuditEvent, AuditLog, AuditRecord};
use crate::envelope::QueueId;
use crate::queue::review::{ReleaseMode, ReleaseRequest};
use crate::queue::store::Store;

/// Maximum length of a reason, in characters.
pub const MAX_REASON_LENGTH: usize = 500;

/// An action that was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// The account's role may not act.
    #[error("account {0:?} is an auditor and may only read")]
    Forbidden(String),
    /// No message with this id is held for review.
    #[error("message {0} is not held for review")]
    NotFound(QueueId),
    /// The request is incomplete or conflicts with a pending one.
    #[error("{0}")]
    Invalid(String),
    /// The queue or the audit trail failed.
    #[error("{0}")]
    Store(String),
}

/// The result of a release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// The recipients were released and are routed again.
    Released {
        /// How many recipients.
        recipients: usize,
        /// The administrator who asked first, under four-eyes.
        approved_request_of: Option<String>,
    },
    /// Four-eyes mode: the request waits for a second administrator.
    Requested,
}

/// The queue and audit trail an action works on, and the rules that apply.
pub struct ReviewDesk<'a> {
    /// The queue database.
    pub store: &'a mut Store,
    /// The audit trail.
    pub audit: &'a AuditLog,
    /// A release needs a second administrator.
    pub four_eyes: bool,
}

impl ReviewDesk<'_> {
    /// Releases a held message, or records the request under four-eyes. A release as not
    /// sensitive needs a reason.
    ///
    /// # Errors
    ///
    /// [`ActionError`].
    pub fn release(
        &mut self,
        actor: &Account,
        id: &QueueId,
        mode: ReleaseMode,
        reason: &str,
    ) -> Result<ReleaseOutcome, ActionError> {
        require_admin(actor)?;
        let reason = check_reason(reason, mode == ReleaseMode::NotSensitive)?;
        self.require_held(id)?;
        let pending = self.store.release_request(id).map_err(store_error)?;
        let approved_request_of = match (self.four_eyes, pending) {
            (false, _) => None,
            (true, None) => {
                let request = ReleaseRequest {
                    mode,
                    requested_by: actor.name.clone(),
                    reason: reason.clone(),
                };
                self.store
                    .request_release(id, &request)
                    .map_err(store_error)?;
                self.record(
                    AuditEvent::ReleaseRequested,
                    actor,
                    id,
                    mode.as_str(),
                    &reason,
                )?;
                return Ok(ReleaseOutcome::Requested);
            }
            (true, Some(request)) if request.requested_by == actor.name => {
                return Err(ActionError::Invalid(format!(
                    "{} asked for this release; a different administrator must approve it",
                    request.requested_by
                )));
            }
            (true, Some(request)) if request.mode != mode => {
                return Err(ActionError::Invalid(format!(
                    "the pending request is a release as {}; approve it with the same mode",
                    request.mode.as_str()
                )));
            }
            (true, Some(request)) => Some(request.requested_by),
        };
        let recipients = self.store.review_release(id, mode).map_err(store_error)?;
        let detail = match &approved_request_of {
            Some(first) => format!("approved the request of {first}; reason: {reason}"),
            None => format!("reason: {reason}"),
        };
        self.record(
            AuditEvent::ReviewReleased,
            actor,
            id,
            mode.as_str(),
            &detail,
        )?;
        Ok(ReleaseOutcome::Released {
            recipients,
            approved_request_of,
        })
    }

    /// Rejects a held message: its recipients bounce with `reason`, which the sender's DSN
    /// shows. Returns how many recipients.
    ///
    /// # Errors
    ///
    /// [`ActionError`].
    pub fn reject(
        &mut self,
        actor: &Account,
        id: &QueueId,
        reason: &str,
    ) -> Result<usize, ActionError> {
        require_admin(actor)?;
        let reason = check_reason(reason, true)?;
        self.require_held(id)?;
        let rejected = self.store.review_reject(id, &reason).map_err(store_error)?;
        let detail = format!("reason: {reason}");
        self.record(AuditEvent::ReviewRejected, actor, id, "rejected", &detail)?;
        Ok(rejected)
    }

    /// Deletes a held message without telling the sender.
    ///
    /// # Errors
    ///
    /// [`ActionError`].
    pub fn delete(
        &mut self,
        actor: &Account,
        id: &QueueId,
        reason: &str,
    ) -> Result<(), ActionError> {
        require_admin(actor)?;
        let reason = check_reason(reason, false)?;
        if !self.store.review_delete(id).map_err(store_error)? {
            return Err(ActionError::NotFound(id.clone()));
        }
        let detail = format!("reason: {reason}");
        self.record(AuditEvent::ReviewDeleted, actor, id, "deleted", &detail)
    }

    /// Records that `actor` opened a held message.
    ///
    /// # Errors
    ///
    /// [`ActionError::Store`].
    pub fn viewed(&self, actor: &Account, id: &QueueId) -> Result<(), ActionError> {
        self.record(AuditEvent::ReviewViewed, actor, id, "ok", "")
    }

    fn require_held(&self, id: &QueueId) -> Result<(), ActionError> {
        if self.store.is_in_review(id).map_err(store_error)? {
            Ok(())
        } else {
            Err(ActionError::NotFound(id.clone()))
        }
    }

    fn record(
        &self,
        event: AuditEvent,
        actor: &Account,
        id: &QueueId,
        outcome: &str,
        detail: &str,
    ) -> Result<(), ActionError> {
        self.audit
            .append(&AuditRecord {
                event,
                actor: &actor.name,
                held_id: None,
                queue_id: Some(id.as_str()),
                outcome,
                detail,
            })
            .map(|_| ())
            .map_err(|error| ActionError::Store(error.to_string()))
    }
}

/// Refuses auditors.
///
/// # Errors
///
/// [`ActionError::Forbidden`].
pub fn require_admin(actor: &Account) -> Result<(), ActionError> {
    match actor.role {
        Role::Admin => Ok(()),
        Role::Auditor => Err(ActionError::Forbidden(actor.name.clone())),
    }
}

/// Returns the reason on one line, trimmed; fails when it is missing but `required`, or
/// too long.
fn check_reason(reason: &str, required: bool) -> Result<String, ActionError> {
    let reason: String = reason
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if required && reason.is_empty() {
        return Err(ActionError::Invalid("a reason is required".into()));
    }
    if reason.chars().count() > MAX_REASON_LENGTH {
        return Err(ActionError::Invalid(format!(
            "the reason is longer than {MAX_REASON_LENGTH} characters"
        )));
    }
    Ok(reason)
}

fn store_error(error: crate::queue::QueueError) -> ActionError {
    ActionError::Store(error.to_string())
}
