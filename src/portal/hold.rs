//! [`HeldMessages`] backed by the real hold store and audit log.

use std::time::Duration;

use super::backend::{
    AuditEvent, BackendError, HeldContent, HeldLink, HeldMessages, LinkStatus, PasscodeRecord,
};
use super::passcode::{SendLimits, record_send};
use crate::audit::{self, AuditLog};
use crate::store::{HeldId, HeldState, HoldStore, StoreError};

/// The hold store and audit log, as the portal uses them.
pub struct StoreBackend {
    store: HoldStore,
    audit: AuditLog,
}

impl StoreBackend {
    /// Wraps an open hold store and audit log.
    pub fn new(store: HoldStore, audit: AuditLog) -> StoreBackend {
        StoreBackend { store, audit }
    }
}

fn held_id(id: &str) -> Result<HeldId, BackendError> {
    HeldId::parse(id).ok_or_else(|| BackendError(format!("invalid held id {id:?}")))
}

fn failed(error: StoreError) -> BackendError {
    BackendError(error.to_string())
}

impl HeldMessages for StoreBackend {
    fn find_by_token(&self, token: &str) -> Result<LinkStatus, BackendError> {
        let Some(summary) = self.store.find_by_token(token).map_err(failed)? else {
            return Ok(LinkStatus::Unknown);
        };
        match summary.state {
            HeldState::Expired => Ok(LinkStatus::Expired),
            HeldState::Revoked => Ok(LinkStatus::Revoked),
            HeldState::Active => match self.store.open_envelope(&summary.id) {
                Ok(envelope) => Ok(LinkStatus::Active(HeldLink {
                    id: summary.id.as_str().to_string(),
                    recipient: envelope.recipient,
                })),
                // The record expired or was revoked between the two reads.
                Err(StoreError::NotActive { .. }) => Ok(LinkStatus::Expired),
                Err(error) => Err(failed(error)),
            },
        }
    }

    fn open_message(&self, id: &str) -> Result<Option<HeldContent>, BackendError> {
        match self.store.open_message(&held_id(id)?) {
            Ok(opened) => Ok(Some(HeldContent {
                sender: opened.envelope.sender,
                raw: opened.message,
            })),
            Err(StoreError::NotActive { .. } | StoreError::NotFound(_)) => Ok(None),
            Err(error) => Err(failed(error)),
        }
    }

    fn set_passcode_within(
        &self,
        id: &str,
        hash: &[u8],
        now: i64,
        limits: &SendLimits,
    ) -> Result<Result<(), Duration>, BackendError> {
        self.store
            .set_passcode_within(&held_id(id)?, hash, now, |history| {
                record_send(limits, history, now)
            })
            .map_err(failed)
    }

    fn passcode_state(&self, id: &str) -> Result<Option<PasscodeRecord>, BackendError> {
        let state = self.store.passcode_state(&held_id(id)?).map_err(failed)?;
        Ok(state.and_then(|state| {
            Some(PasscodeRecord {
                hash: state.passcode_hash?,
                created_at: state.created_at?,
                failures: state.attempts,
            })
        }))
    }

    fn record_passcode_failure(&self, id: &str) -> Result<u32, BackendError> {
        self.store
            .record_passcode_failure(&held_id(id)?)
            .map_err(failed)
    }

    fn clear_passcode(&self, id: &str) -> Result<(), BackendError> {
        self.store.clear_passcode(&held_id(id)?).map_err(failed)
    }

    fn lock_out(&self, id: &str, now: i64) -> Result<(), BackendError> {
        self.store.lock_out(&held_id(id)?, now).map_err(failed)
    }

    fn audit(&self, link: &HeldLink, event: AuditEvent) {
        let event = match event {
            AuditEvent::PasscodeSent => audit::AuditEvent::PasscodeSent,
            AuditEvent::PasscodeFailed => audit::AuditEvent::PasscodeFailed,
            AuditEvent::Opened => audit::AuditEvent::Opened,
            AuditEvent::AttachmentDownloaded => audit::AuditEvent::AttachmentDownloaded,
            AuditEvent::ReplySent => audit::AuditEvent::ReplySent,
        };
        let Some(id) = HeldId::parse(&link.id) else {
            tracing::error!(held_id = %link.id, %event, "audit skipped: invalid held id");
            return;
        };
        // The store keeps addresses encrypted, so the entry carries only the held id.
        if let Err(error) = self.audit.record(event, Some(&id), None, "") {
            tracing::error!(held_id = %link.id, %event, %error, "failed to write audit entry");
        }
    }
}
