//! Group commit of accepted messages.

use crate::envelope::{AcceptedMessage, QueueId};

use super::QueueError;

/// Handle for committing accepted messages; cheap to clone.
#[derive(Clone)]
pub struct Spool {
    sender: tokio::sync::mpsc::Sender<(
        AcceptedMessage,
        tokio::sync::oneshot::Sender<Result<QueueId, QueueError>>,
    )>,
}

impl Spool {
    /// Commits a message and its envelope to disk (fsync) and returns its queue id. Only
    /// after this returns `Ok` may the client be told `250`.
    ///
    /// # Errors
    ///
    /// [`QueueError`] when the commit failed; the client must then get a `451`.
    pub async fn submit(&self, message: AcceptedMessage) -> Result<QueueId, QueueError> {
        let (reply, receiver) = tokio::sync::oneshot::channel();
        self.sender
            .send((message, reply))
            .await
            .map_err(|_| QueueError::SpoolClosed)?;
        receiver.await.map_err(|_| QueueError::SpoolClosed)?
    }
}
