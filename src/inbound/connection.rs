//! Buffered reading and writing on one client stream. Replies are collected and written when
//! the session next waits for input, so a pipelined batch of commands (RFC 2920) gets its
//! replies in one write.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::reply::Reply;

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// A line read from the client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line {
    /// A line with its terminating LF (and CR, when the client sent one).
    Complete(Vec<u8>),
    /// A line longer than the limit; it was read to its LF and discarded.
    TooLong,
    /// The client closed the connection.
    Closed,
}

/// A client stream with its read buffer and the replies not yet written.
pub(crate) struct Connection<S> {
    stream: S,
    input: Vec<u8>,
    output: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub(crate) fn new(stream: S) -> Connection<S> {
        Connection {
            stream,
            input: Vec::new(),
            output: Vec::new(),
        }
    }

    /// Queues a reply; it is written at the next read or [`Connection::flush`].
    pub(crate) fn queue(&mut self, reply: &Reply) {
        self.output.extend_from_slice(&reply.to_bytes());
    }

    /// Writes the queued replies.
    pub(crate) async fn flush(&mut self) -> std::io::Result<()> {
        if !self.output.is_empty() {
            self.stream.write_all(&self.output).await?;
            self.output.clear();
        }
        self.stream.flush().await
    }

    /// Reads one line of at most `max_length` bytes, LF included. A longer line is read to
    /// its end and discarded, keeping at most one buffer of it in memory.
    pub(crate) async fn read_line(&mut self, max_length: usize) -> std::io::Result<Line> {
        let mut discarding = false;
        loop {
            if let Some(position) = self.input.iter().position(|byte| *byte == b'\n') {
                let line: Vec<u8> = self.input.drain(..=position).collect();
                if discarding || line.len() > max_length {
                    return Ok(Line::TooLong);
                }
                return Ok(Line::Complete(line));
            }
            if self.input.len() > max_length {
                discarding = true;
                self.input.clear();
            }
            if self.fill().await? == 0 {
                return Ok(Line::Closed);
            }
        }
    }

    /// Bytes received but not yet consumed.
    pub(crate) fn buffered(&self) -> &[u8] {
        &self.input
    }

    /// Drops the first `count` buffered bytes.
    pub(crate) fn consume(&mut self, count: usize) {
        self.input.drain(..count);
    }

    /// Writes queued replies, then reads more input; returns the bytes read, 0 at the end
    /// of the stream.
    pub(crate) async fn fill(&mut self) -> std::io::Result<usize> {
        self.flush().await?;
        let start = self.input.len();
        self.input.resize(start + READ_CHUNK, 0);
        let result = self.stream.read(&mut self.input[start..]).await;
        let count = *result.as_ref().unwrap_or(&0);
        self.input.truncate(start + count);
        result
    }

    /// Writes queued replies and shuts the stream down.
    pub(crate) async fn close(&mut self) {
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }

    /// Gives the stream back and returns how many buffered input bytes were dropped with it.
    pub(crate) fn into_stream(self) -> (S, usize) {
        (self.stream, self.input.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn long_line_is_discarded_and_next_line_read() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut connection = Connection::new(server);
        let mut input = vec![b'A'; 5000];
        input.extend_from_slice(b"\r\nNOOP\r\n");
        tokio::spawn(async move { client.write_all(&input).await });

        assert_eq!(connection.read_line(512).await.unwrap(), Line::TooLong);
        assert_eq!(
            connection.read_line(512).await.unwrap(),
            Line::Complete(b"NOOP\r\n".to_vec())
        );
    }

    #[tokio::test]
    async fn line_at_limit_is_complete() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut connection = Connection::new(server);
        let mut input = vec![b'A'; 510];
        input.extend_from_slice(b"\r\n");
        tokio::spawn(async move { client.write_all(&input).await });

        let line = connection.read_line(512).await.unwrap();
        assert!(matches!(line, Line::Complete(bytes) if bytes.len() == 512));
    }
}
