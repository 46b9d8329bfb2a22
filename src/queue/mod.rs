//! The durable queue: the spool that commits accepted mail before `250`, the per-recipient
//! delivery state, the retry schedule and DSNs.

pub mod dsn;
mod manager;
mod portal;
pub mod review;
mod spool;
pub mod store;

pub use manager::QueueManager;
pub use spool::Spool;

/// A queue operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The database refused or failed an operation.
    #[error("queue database error: {0}")]
    Database(#[from] rusqlite::Error),
    /// A spool commit failed; nothing of the batch was stored.
    #[error("spool commit failed: {0}")]
    CommitFailed(String),
    /// The queue could not be set up from the config.
    #[error("queue setup failed: {0}")]
    Setup(String),
    /// The spool writer has stopped, so nothing more can be committed.
    #[error("spool writer has stopped")]
    SpoolClosed,
    /// The master keys that encrypt queued bodies could not be loaded.
    #[error("{0}")]
    MasterKey(#[from] crate::store::StoreError),
    /// A queued body failed to decrypt.
    #[error("body of queued message {id} failed to decrypt: {reason}")]
    BodyUnreadable {
        /// The queue id.
        id: String,
        /// Why: a missing master key or damaged bytes.
        reason: String,
    },
    /// A file or folder of the queue could not be used.
    #[error("failed to use {path}: {source}")]
    Io {
        /// The path.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}
