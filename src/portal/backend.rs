//! The hold-store operations the portal needs, behind a trait so the handlers can be tested
//! without a database and the store can change without touching them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::passcode::{SendHistory, SendLimits, record_send};

/// A hold-store operation that failed; the text goes to the log, never to the browser.
#[derive(Debug, thiserror::Error)]
#[error("hold store operation failed: {0}")]
pub struct BackendError(pub String);

/// The state of the held message that a link token names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkStatus {
    /// A held message that may still be collected.
    Active(HeldLink),
    /// The message's collection period is over.
    Expired,
    /// An administrator or the sender withdrew the message.
    Revoked,
    /// No message has this token.
    Unknown,
}

/// A held message reached through a link, with the one recipient the link was sent to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldLink {
    /// Hold-store id of the message.
    pub id: String,
    /// The recipient address that must prove control with a passcode.
    pub recipient: String,
}

/// A held message after decryption.
#[derive(Clone, Debug)]
pub struct HeldContent {
    /// Envelope sender of the original message, where replies go.
    pub sender: String,
    /// The message as RFC 5322 bytes.
    pub raw: Vec<u8>,
}

/// The current passcode of a held message and recipient, as stored.
#[derive(Clone, Debug)]
pub struct PasscodeRecord {
    /// Keyed SHA-256 hash of the passcode, never the passcode itself.
    pub hash: Vec<u8>,
    /// When the passcode was set, in milliseconds since the Unix epoch.
    pub created_at: i64,
    /// Wrong entries since the passcode was set.
    pub failures: u32,
}

/// An access to a held message that is written to the audit log. The events carry ids and
/// addresses only, never passcodes, tokens or content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditEvent {
    /// A passcode mail was submitted to the queue.
    PasscodeSent,
    /// A wrong passcode was entered.
    PasscodeFailed,
    /// The recipient opened the message page.
    Opened,
    /// The recipient downloaded an attachment or the original message.
    AttachmentDownloaded,
    /// The recipient's reply was submitted to the queue.
    ReplySent,
}

/// Hold-store operations used by the portal. Calls are synchronous and may block on disk
/// and decryption, so the handlers make them on tokio's blocking thread pool.
pub trait HeldMessages: Send + Sync {
    /// Looks up the message that a link token names.
    ///
    /// # Errors
    ///
    /// [`BackendError`] when the store cannot be read.
    fn find_by_token(&self, token: &str) -> Result<LinkStatus, BackendError>;

    /// Decrypts a held message; `None` when it is gone.
    ///
    /// # Errors
    ///
    /// [`BackendError`] when the store cannot be read or decrypted.
    fn open_message(&self, id: &str) -> Result<Option<HeldContent>, BackendError>;

    /// Replaces the passcode hash, set at `now` (Unix milliseconds), and resets the failure
    /// count, when `limits` and the stored send history allow another passcode mail.
    /// Returns the wait otherwise. Check and update are one step.
    ///
    /// # Errors
    ///
    /// [`BackendError`] when the store cannot be written.
    fn set_passcode_within(
        &self,
        id: &str,
        hash: &[u8],
        now: i64,
        limits: &SendLimits,
    ) -> Result<Result<(), Duration>, BackendError>;

    /// Returns the outstanding passcode, if any.
    ///
    /// # Errors
    ///
    /// [`BackendError`] when the store cannot be read.
    fn passcode_state(&self, id: &str) -> Result<Option<PasscodeRecord>, BackendError>;

    /// Counts one wrong entry and returns the failures so far.
    ///
    /// # Errors
    ///
    /// [`BackendError`] when the store cannot be written.
    fn record_passcode_failure(&self, id: &str) -> Result<u32, BackendError>;

    /// Removes the passcode, after a success or once it expired.
    ///
    /// # Errors
    ///
    /// [`BackendError`] when the store cannot be written.
    fn clear_passcode(&self, id: &str) -> Result<(), BackendError>;

    /// Removes the passcode after too many wrong entries and stores the lockout time
    /// `now`, from which the cool-down counts.
    ///
    /// # Errors
    ///
    /// [`BackendError`] when the store cannot be written.
    fn lock_out(&self, id: &str, now: i64) -> Result<(), BackendError>;

    /// Records an access in the audit log. Failures are logged by the implementation.
    fn audit(&self, link: &HeldLink, event: AuditEvent);
}

/// An in-memory [`HeldMessages`] for tests and demonstrations; it keeps everything in the
/// clear and in memory only.
#[derive(Default)]
pub struct MemoryHeldMessages {
    state: Mutex<MemoryState>,
}

#[derive(Default)]
struct MemoryState {
    links: HashMap<String, LinkStatus>,
    messages: HashMap<String, HeldContent>,
    passcodes: HashMap<String, PasscodeRecord>,
    histories: HashMap<String, SendHistory>,
    audit: Vec<(String, AuditEvent)>,
}

impl MemoryHeldMessages {
    /// Adds a held message reachable through `token`.
    pub fn insert(&self, token: &str, link: HeldLink, content: HeldContent) {
        let mut state = self.lock();
        state.messages.insert(link.id.clone(), content);
        state
            .links
            .insert(token.to_string(), LinkStatus::Active(link));
    }

    /// Makes `token` lead to `status`, for example [`LinkStatus::Revoked`].
    pub fn set_status(&self, token: &str, status: LinkStatus) {
        self.lock().links.insert(token.to_string(), status);
    }

    /// Replaces the passcode without checking any limit, as a test that backdates one needs.
    pub fn set_passcode(&self, id: &str, hash: &[u8], now: i64) {
        let record = PasscodeRecord {
            hash: hash.to_vec(),
            created_at: now,
            failures: 0,
        };
        self.lock().passcodes.insert(id.to_string(), record);
    }

    /// Returns the audit events recorded so far, with the message id.
    pub fn audit_events(&self) -> Vec<(String, AuditEvent)> {
        self.lock().audit.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl HeldMessages for MemoryHeldMessages {
    fn find_by_token(&self, token: &str) -> Result<LinkStatus, BackendError> {
        let status = self.lock().links.get(token).cloned();
        Ok(status.unwrap_or(LinkStatus::Unknown))
    }

    fn open_message(&self, id: &str) -> Result<Option<HeldContent>, BackendError> {
        Ok(self.lock().messages.get(id).cloned())
    }

    fn set_passcode_within(
        &self,
        id: &str,
        hash: &[u8],
        now: i64,
        limits: &SendLimits,
    ) -> Result<Result<(), Duration>, BackendError> {
        let mut state = self.lock();
        let history = state.histories.get(id).copied().unwrap_or_default();
        let history = match record_send(limits, &history, now) {
            Ok(history) => history,
            Err(wait) => return Ok(Err(wait)),
        };
        state.histories.insert(id.to_string(), history);
        let record = PasscodeRecord {
            hash: hash.to_vec(),
            created_at: now,
            failures: 0,
        };
        state.passcodes.insert(id.to_string(), record);
        Ok(Ok(()))
    }

    fn passcode_state(&self, id: &str) -> Result<Option<PasscodeRecord>, BackendError> {
        Ok(self.lock().passcodes.get(id).cloned())
    }

    fn record_passcode_failure(&self, id: &str) -> Result<u32, BackendError> {
        let mut state = self.lock();
        let record = state
            .passcodes
            .get_mut(id)
            .ok_or_else(|| BackendError(format!("no passcode set for held message {id}")))?;
        record.failures += 1;
        Ok(record.failures)
    }

    fn clear_passcode(&self, id: &str) -> Result<(), BackendError> {
        self.lock().passcodes.remove(id);
        Ok(())
    }

    fn lock_out(&self, id: &str, now: i64) -> Result<(), BackendError> {
        let mut state = self.lock();
        state.passcodes.remove(id);
        state.histories.entry(id.to_string()).or_default().locked_at = Some(now);
        Ok(())
    }

    fn audit(&self, link: &HeldLink, event: AuditEvent) {
        self.lock().audit.push((link.id.clone(), event));
    }
}
