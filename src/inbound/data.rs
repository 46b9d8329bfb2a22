//! DATA: strict framing, dot-unstuffing and limits (RFC 5321 §4.1.1.4, §4.5.2).
//!
//! Only `<CRLF>.<CRLF>` ends the data. A bare CR or LF anywhere is a flaw that rejects the
//! whole message, but the reader still looks for the real end of data, so bytes such as
//! `\n.\n` followed by `MAIL FROM` never start a second transaction (SMTP smuggling).

use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;
use tokio::io::{AsyncRead, AsyncWrite};

use super::connection::Connection;
use super::reply::{self, Reply};
use super::session::{Greeting, Session, State, Step, Transaction};
use crate::envelope::{AcceptedMessage, ClientInfo, QueueId, display_address};
use crate::telemetry::{MAIL_LOG, escape_field};

/// Defects that make received data unacceptable. The reader still reads on to the end of data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flaws {
    /// A CR not followed by LF, or an LF not preceded by CR.
    pub bare_line_break: bool,
    /// A line longer than the text line limit, CRLF included.
    pub line_too_long: bool,
    /// More bytes than the message size limit.
    pub too_big: bool,
    /// A NUL byte, which RFC 5322 message text does not allow.
    pub nul_byte: bool,
}

impl Flaws {
    /// True when any flaw is set.
    pub fn any(&self) -> bool {
        self.bare_line_break || self.line_too_long || self.too_big || self.nul_byte
    }
}

/// Position of the decoder within the current line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Position {
    /// At the start of a line: right after DATA's CRLF or after a CRLF in the data.
    LineStart,
    /// The line so far is a single `.`.
    Dot,
    /// The line so far is `.` followed by CR: one LF more ends the data.
    DotCr,
    /// Inside a line.
    Text,
    /// Inside a line, right after a CR.
    Cr,
}

/// Turns the DATA byte stream into the message, one buffer at a time.
pub struct DataDecoder {
    body: Vec<u8>,
    max_size: usize,
    max_line: usize,
    line_length: usize,
    position: Position,
    flaws: Flaws,
}

impl DataDecoder {
    /// A decoder for a message of at most `max_size` bytes with lines of at most
    /// `max_line` bytes, CRLF included.
    pub fn new(max_size: usize, max_line: usize) -> DataDecoder {
        DataDecoder {
            body: Vec::new(),
            max_size,
            max_line,
            line_length: 0,
            position: Position::LineStart,
            flaws: Flaws::default(),
        }
    }

    /// Decodes `input`. Returns `Some(n)` when the end of data is found, `n` being the
    /// bytes consumed through the final LF; the rest belongs to the next command.
    /// Returns `None` when all of `input` was consumed and more is needed.
    pub fn feed(&mut self, input: &[u8]) -> Option<usize> {
        for (index, &byte) in input.iter().enumerate() {
            self.line_length += 1;
            if self.line_length > self.max_line {
                self.flaws.line_too_long = true;
            }
            match (self.position, byte) {
                (Position::DotCr, b'\n') => return Some(index + 1),
                (Position::LineStart, b'.') => self.position = Position::Dot,
                (Position::Dot, b'\r') => self.position = Position::DotCr,
                (Position::Cr, b'\n') => {
                    self.push(b"\r\n");
                    self.position = Position::LineStart;
                    self.line_length = 0;
                }
                // A line that starts with a dot had one added by the client.
                (Position::Dot, _) => self.text_byte(byte),
                (Position::DotCr | Position::Cr, _) => {
                    self.flaws.bare_line_break = true;
                    self.text_byte(byte);
                }
                (Position::LineStart | Position::Text, _) => self.text_byte(byte),
            }
        }
        None
    }

    /// The decoded message and its flaws.
    pub fn finish(self) -> (Vec<u8>, Flaws) {
        (self.body, self.flaws)
    }

    fn text_byte(&mut self, byte: u8) {
        match byte {
            b'\r' => self.position = Position::Cr,
            b'\n' => {
                // A bare LF does not start a new line, so a following dot is text.
                self.flaws.bare_line_break = true;
                self.position = Position::Text;
            }
            0 => {
                self.flaws.nul_byte = true;
                self.position = Position::Text;
            }
            _ => {
                self.push(&[byte]);
                self.position = Position::Text;
            }
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.flaws.any() {
            return;
        }
        if self.body.len() + bytes.len() > self.max_size {
            self.flaws.too_big = true;
            self.body = Vec::new();
            return;
        }
        self.body.extend_from_slice(bytes);
    }
}

impl Session {
    pub(super) async fn handle_data<S>(&mut self, connection: &mut Connection<S>) -> Step
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let state = std::mem::replace(&mut self.state, State::Connected);
        let (greeting, transaction) = match state {
            State::Transaction(greeting, transaction) if !transaction.recipients.is_empty() => {
                (greeting, transaction)
            }
            State::Transaction(greeting, transaction) => {
                self.state = State::Transaction(greeting, transaction);
                return self.send(connection, Reply::new(554, "5.5.1", "No valid recipients"));
            }
            other => {
                self.state = other;
                return self.send(
                    connection,
                    reply::bad_sequence("Need MAIL and RCPT before DATA"),
                );
            }
        };
        // The transaction ends with DATA, whatever its outcome.
        self.state = State::Greeted(greeting.clone());

        let text = "Start mail input; end with <CRLF>.<CRLF>";
        connection.queue(&Reply::bare(354, vec![text.into()]));
        let inbound = &self.context.config.inbound;
        let max_size = usize::try_from(inbound.max_message_size.0).unwrap_or(usize::MAX);
        let mut decoder = DataDecoder::new(max_size, inbound.max_text_line);
        let timeout = inbound.data_timeout.0;
        match tokio::time::timeout(timeout, receive(connection, &mut decoder)).await {
            Err(_) => {
                tracing::info!("data timeout, closing");
                connection.queue(&reply::timed_out());
                return Step::Close;
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "connection lost during DATA");
                return Step::Close;
            }
            Ok(Ok(false)) => {
                tracing::info!("connection closed during DATA");
                return Step::Close;
            }
            Ok(Ok(true)) => {}
        }

        let (body, flaws) = decoder.finish();
        if let Some(reply) = self.flaw_reply(&flaws) {
            tracing::info!(?flaws, "message rejected");
            return self.send(connection, reply);
        }
        let reply = self.queue_message(&greeting, transaction, body).await;
        self.send(connection, reply)
    }

    /// The rejection for flawed data. Bare line breaks come first, because they are the
    /// sign of an attempt to smuggle commands.
    fn flaw_reply(&self, flaws: &Flaws) -> Option<Reply> {
        let inbound = &self.context.config.inbound;
        if flaws.bare_line_break {
            let text = "Bare CR or LF not allowed; lines must end with CRLF";
            return Some(Reply::new(550, "5.6.0", text));
        }
        if flaws.nul_byte {
            let text = "NUL bytes are not allowed in a message";
            return Some(Reply::new(554, "5.6.0", text));
        }
        if flaws.too_big {
            let limit = inbound.max_message_size.0;
            let text = format!("Message size exceeds fixed maximum message size of {limit}");
            return Some(Reply::new(552, "5.3.4", text));
        }
        if flaws.line_too_long {
            let limit = inbound.max_text_line;
            let text = format!("Line too long, the limit is {limit} bytes including CRLF");
            return Some(Reply::new(552, "5.3.4", text));
        }
        None
    }

    /// Prepends `Received:`, commits the message to the spool and returns the reply.
    async fn queue_message(
        &self,
        greeting: &Greeting,
        transaction: Transaction,
        body: Vec<u8>,
    ) -> Reply {
        let id = QueueId::generate();
        let body_8bit = transaction.declared_8bit || !body.is_ascii();
        // Inserting in place keeps one copy of the body in memory, not two.
        let mut message = body;
        let received = self.received_header(greeting, &transaction, &id);
        message.splice(0..0, received.into_bytes());
        let size = message.len();
        let nrcpt = transaction.recipients.len();
        let sender = transaction.sender;
        let client = ClientInfo {
            addr: self.peer,
            helo: greeting.helo.clone(),
            tls: self.tls.clone(),
            auth_user: self.auth_user.clone(),
        };
        let accepted = AcceptedMessage {
            sender: sender.clone(),
            recipients: transaction.recipients,
            body: message,
            body_8bit,
            smtputf8: transaction.smtputf8,
            client: client.clone(),
        };

        let id = match self.context.spool.submit_with_id(id, accepted).await {
            Ok(id) => id,
            Err(error) => {
                tracing::error!(%error, "failed to queue message");
                return Reply::new(451, "4.3.0", "Temporary failure, try again later");
            }
        };
        let line = acceptance_line(&id, &sender, size, nrcpt, &client);
        tracing::info!(target: MAIL_LOG, "{line}");
        Reply::new(250, "2.0.0", format!("Ok: queued as {id}"))
    }

    /// The trace header (RFC 5321 §4.4), with the protocol name from RFC 3848.
    fn received_header(
        &self,
        greeting: &Greeting,
        transaction: &Transaction,
        id: &QueueId,
    ) -> String {
        let protocol = match (greeting.extended, &self.tls, &self.auth_user) {
            (false, _, _) => "SMTP",
            (true, None, _) => "ESMTP",
            (true, Some(_), None) => "ESMTPS",
            (true, Some(_), Some(_)) => "ESMTPSA",
        };
        let tls = match &self.tls {
            Some(description) => format!(" (using {description})"),
            None => String::new(),
        };
        let recipient = match transaction.recipients.as_slice() {
            [only] => format!("\r\n\tfor {}", header_text(&format!("<{only}>"))),
            _ => String::new(),
        };
        let date = OffsetDateTime::now_utc()
            .format(&Rfc2822)
            .unwrap_or_default();
        format!(
            "Received: from {} ([{}])\r\n\tby {} (sealgate) with {protocol}{tls} id {id}{recipient};\r\n\t{date}\r\n",
            header_text(&greeting.helo),
            self.peer.ip(),
            self.context.config.server.hostname,
        )
    }
}

/// The mail log line written at acceptance, in Postfix's layout, with peer text escaped:
/// `ID: queued from=<sender>, size=N, nrcpt=N, client=helo[ip]:port, tls=..., auth=...`.
pub(super) fn acceptance_line(
    id: &QueueId,
    sender: &str,
    size: usize,
    nrcpt: usize,
    client: &ClientInfo,
) -> String {
    let auth = client.auth_user.as_deref().map(escape_field);
    format!(
        "{id}: queued from={}, size={size}, nrcpt={nrcpt}, client={}[{}]:{}, tls={}, auth={}",
        display_address(sender),
        escape_field(&client.helo),
        client.addr.ip(),
        client.addr.port(),
        client.tls.as_deref().unwrap_or("none"),
        auth.as_deref().unwrap_or("none"),
    )
}

/// Reads data into the decoder until the end of data; returns false when the client closed
/// the connection first.
async fn receive<S>(
    connection: &mut Connection<S>,
    decoder: &mut DataDecoder,
) -> std::io::Result<bool>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let buffered = connection.buffered();
        if let Some(consumed) = decoder.feed(buffered) {
            connection.consume(consumed);
            return Ok(true);
        }
        let length = buffered.len();
        connection.consume(length);
        if connection.fill().await? == 0 {
            return Ok(false);
        }
    }
}

/// Peer text made safe for a header: printable ASCII, anything else as `?`.
fn header_text(text: &str) -> String {
    text.chars()
        .map(|ch| if ch.is_ascii_graphic() { ch } else { '?' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    type Case = (&'static [u8], Option<usize>, &'static [u8], bool);

    fn decode(input: &[u8]) -> (Option<usize>, Vec<u8>, Flaws) {
        let mut decoder = DataDecoder::new(1000, 100);
        let end = decoder.feed(input);
        let (body, flaws) = decoder.finish();
        (end, body, flaws)
    }

    #[test]
    fn acceptance_line_escapes_peer_text() {
        let client = ClientInfo {
            addr: "127.0.0.1:40000".parse().unwrap(),
            helo: "evil\u{1b}[31m".into(),
            tls: Some("TLSv1.3/TLS13_AES_128_GCM_SHA256".into()),
            auth_user: Some("mta\nforged".into()),
        };
        let id = QueueId::parse("0123456789ABCDEF").unwrap();

        let line = acceptance_line(&id, "", 120, 2, &client);
        assert_eq!(
            line,
            "0123456789ABCDEF: queued from=<>, size=120, nrcpt=2, \
             client=evil\\x1b[31m[127.0.0.1]:40000, tls=TLSv1.3/TLS13_AES_128_GCM_SHA256, \
             auth=mta\\nforged"
        );
    }

    #[test]
    fn framing_table() {
        // Input, end of data, decoded body (checked when there is no flaw), bare line break.
        let cases: &[Case] = &[
            (b".\r\n", Some(3), b"", false),
            (
                b"Subject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n",
                Some(21),
                b"Subject: x\r\n\r\nhi\r\n",
                false,
            ),
            (
                b"..leading dot\r\n.\r\n",
                Some(18),
                b".leading dot\r\n",
                false,
            ),
            (b"a\n.\nMAIL FROM:<x@y>\r\n", None, b"a", true),
            (b"a\r\n.\rMAIL FROM:<x@y>\r\n", None, b"a\r\n", true),
            (b"a\r.\r\nb\r\n", None, b"a", true),
            (b"a\n.\r\nMAIL FROM:<x@y>\r\n", None, b"a", true),
            (b"a\r\n.\n", None, b"a\r\n", true),
        ];
        for (input, end, body, bare) in cases {
            let (found_end, found_body, flaws) = decode(input);
            let shown = String::from_utf8_lossy(input);
            assert_eq!(found_end, *end, "end of data for {shown:?}");
            assert_eq!(
                flaws.bare_line_break, *bare,
                "bare line break for {shown:?}"
            );
            if !bare {
                assert_eq!(found_body, *body, "body for {shown:?}");
            }
        }
    }

    #[test]
    fn smuggled_data_ends_only_at_real_terminator() {
        let input = b"a\r\n\n.\nMAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\nDATA\r\n\r\n.\r\nNOOP\r\n";
        let (end, _, flaws) = decode(input);
        assert!(flaws.bare_line_break);
        assert_eq!(&input[end.unwrap()..], b"NOOP\r\n");
    }

    #[test]
    fn terminator_split_across_buffers_is_found() {
        let mut decoder = DataDecoder::new(1000, 100);
        assert_eq!(decoder.feed(b"hello\r\n."), None);
        assert_eq!(decoder.feed(b"\r"), None);
        assert_eq!(decoder.feed(b"\nNOOP"), Some(1));
        let (body, flaws) = decoder.finish();
        assert_eq!(body, b"hello\r\n");
        assert!(!flaws.any());
    }

    #[test]
    fn long_line_is_flagged() {
        let mut input = vec![b'x'; 99];
        input.extend_from_slice(b"\r\n.\r\n");
        let (end, _, flaws) = decode(&input);
        assert!(end.is_some());
        assert!(flaws.line_too_long);
    }

    #[test]
    fn line_at_limit_is_accepted() {
        let mut input = vec![b'x'; 98];
        input.extend_from_slice(b"\r\n.\r\n");
        let (_, body, flaws) = decode(&input);
        assert!(!flaws.any(), "{flaws:?}");
        assert_eq!(body.len(), 100);
    }

    #[test]
    fn oversized_message_is_flagged_and_read_to_end() {
        let mut decoder = DataDecoder::new(10, 100);
        assert_eq!(decoder.feed(b"0123456789\r\n"), None);
        assert_eq!(decoder.feed(b"more\r\n.\r\n"), Some(9));
        let (body, flaws) = decoder.finish();
        assert!(flaws.too_big);
        assert!(body.is_empty());
    }
}
