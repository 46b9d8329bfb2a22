//! One SMTP session: the state machine and the command loop. The session contains no stream,
//! so the same state carries over when STARTTLS swaps the plain stream for a TLS one.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use smtp_proto::{Error as ParseError, Request};
use tokio::io::{AsyncRead, AsyncWrite};

use super::InboundContext;
use super::connection::{Connection, Line};
use super::path::PathCommand;
use super::reply::{self, Reply};

/// Progress of a session through the protocol. The transitions are in [`Session::dispatch`] and the handlers it
/// calls; RFC 5321 §4.1.4 sets the order.
#[derive(Debug)]
pub(crate) enum State {
    /// Waiting for EHLO or HELO: at connect and again after STARTTLS (RFC 3207 §4.2).
    Connected,
    /// Greeted, with no mail transaction open.
    Greeted(Greeting),
    /// MAIL accepted; collecting recipients until DATA.
    Transaction(Greeting, Transaction),
}

/// The client's EHLO or HELO.
#[derive(Clone, Debug)]
pub(crate) struct Greeting {
    /// The EHLO or HELO argument, as sent.
    pub(crate) helo: String,
    /// The client used EHLO, so service extensions may be used.
    pub(crate) extended: bool,
}

/// An open mail transaction.
#[derive(Debug)]
pub(crate) struct Transaction {
    /// Envelope sender, empty for `<>`.
    pub(crate) sender: String,
    /// Accepted recipients, without duplicates.
    pub(crate) recipients: Vec<String>,
    /// MAIL carried `BODY=8BITMIME`.
    pub(crate) declared_8bit: bool,
    /// MAIL carried `SMTPUTF8`.
    pub(crate) smtputf8: bool,
}

/// Next action of the command loop.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Continue,
    Close,
    /// STARTTLS was accepted: the caller does the handshake and runs the session again.
    StartTls,
}

/// The protocol state of one client connection.
pub(crate) struct Session {
    pub(super) context: Arc<InboundContext>,
    pub(super) peer: SocketAddr,
    pub(super) state: State,
    /// Negotiated TLS version and cipher suite, once STARTTLS completed.
    pub(super) tls: Option<String>,
    /// The AUTH identity, once AUTH succeeded.
    pub(super) auth_user: Option<String>,
    pub(super) bad_commands: u32,
    pub(super) auth_failures: u32,
}

impl Session {
    pub(crate) fn new(context: Arc<InboundContext>, peer: SocketAddr) -> Session {
        Session {
            context,
            peer,
            state: State::Connected,
            tls: None,
            auth_user: None,
            bad_commands: 0,
            auth_failures: 0,
        }
    }

    /// The `220` greeting. RFC 5321 §4.2 requires the domain right after the code, so it
    /// has no enhanced status code.
    pub(crate) fn greeting(&self) -> Reply {
        let text = format!("{} ESMTP sealgate", self.context.config.server.hostname);
        Reply::bare(220, vec![text.into()])
    }

    /// Records a completed TLS handshake. The client must greet again, and nothing learnt
    /// before the handshake is kept (RFC 3207 §4.2).
    pub(crate) fn start_tls(&mut self, description: String) {
        self.tls = Some(description);
        self.state = State::Connected;
    }

    /// Reads commands and queues replies until the client quits, the session is closed, or
    /// STARTTLS is accepted.
    pub(crate) async fn run<S>(&mut self, connection: &mut Connection<S>) -> Step
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let inbound = &self.context.config.inbound;
        let (timeout, max_line) = (inbound.command_timeout.0, inbound.max_command_line);
        loop {
            let line = match tokio::time::timeout(timeout, connection.read_line(max_line)).await {
                Err(_) => {
                    tracing::info!("command timeout, closing");
                    connection.queue(&reply::timed_out());
                    return Step::Close;
                }
                Ok(Err(error)) => {
                    tracing::debug!(%error, "read failed");
                    return Step::Close;
                }
                Ok(Ok(Line::Closed)) => {
                    tracing::debug!("client closed the connection");
                    return Step::Close;
                }
                Ok(Ok(Line::TooLong)) => {
                    let text = format!("Line too long, the limit is {max_line} bytes");
                    if self.send(connection, Reply::new(500, "5.5.2", text)) == Step::Close {
                        return Step::Close;
                    }
                    continue;
                }
                Ok(Ok(Line::Complete(bytes))) => bytes,
            };
            let step = self.dispatch(&line, connection).await;
            if step != Step::Continue {
                return step;
            }
        }
    }

    /// Parses one command line and runs its handler.
    async fn dispatch<S>(&mut self, line: &[u8], connection: &mut Connection<S>) -> Step
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        if !is_crlf_line(line) {
            let reply = Reply::new(
                500,
                "5.5.2",
                "Lines must end with CRLF, without bare CR or LF",
            );
            return self.send(connection, reply);
        }

        if let Some(command) = PathCommand::of(line)
            && let Some(reply) = self.check_path_text(command, line)
        {
            return self.send(connection, reply);
        }
        let request = match Request::parse(&mut line.iter()) {
            Ok(request) => request,
            Err(error) => {
                tracing::debug!(command = %command_name(line), ?error, "rejected command");
                return self.send(connection, parse_error_reply(error));
            }
        };

        match request {
            Request::Ehlo { host } => self.handle_hello(connection, &host, true),
            Request::Helo { host } => self.handle_hello(connection, &host, false),
            Request::StartTls => self.handle_starttls(connection),
            Request::Auth {
                mechanism,
                initial_response,
            } => {
                self.handle_auth(connection, mechanism, &initial_response)
                    .await
            }
            Request::Mail { from } => {
                let reply = self.handle_mail_from(from, line);
                self.send(connection, reply)
            }
            Request::Rcpt { to } => {
                let reply = self.handle_rcpt_to(to, line);
                self.send(connection, reply)
            }
            Request::Data => self.handle_data(connection).await,
            Request::Rset => {
                self.reset_transaction();
                self.send(connection, Reply::new(250, "2.0.0", "Ok"))
            }
            Request::Noop { .. } => self.send(connection, Reply::new(250, "2.0.0", "Ok")),
            Request::Vrfy { .. } => {
                let text = "Cannot verify addresses; send the message and delivery will be tried";
                self.send(connection, Reply::new(252, "2.1.5", text))
            }
            Request::Help { .. } => {
                let text =
                    "Commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA RSET NOOP VRFY HELP QUIT";
                self.send(connection, Reply::new(214, "2.0.0", text))
            }
            Request::Quit => {
                connection.queue(&Reply::new(221, "2.0.0", "Bye"));
                Step::Close
            }
            Request::Lhlo { .. }
            | Request::Bdat { .. }
            | Request::Expn { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => self.send(
                connection,
                Reply::new(502, "5.5.1", "Command not implemented"),
            ),
        }
    }

    /// Queues a reply. A permanent error (5xx) counts as a bad command, and the one that
    /// reaches `max_bad_commands` also closes the session with `421 4.7.0`.
    pub(super) fn send<S>(&mut self, connection: &mut Connection<S>, reply: Reply) -> Step
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        connection.queue(&reply);
        if reply.code() < 500 {
            return Step::Continue;
        }
        self.bad_commands += 1;
        if self.bad_commands >= self.context.config.inbound.max_bad_commands {
            tracing::info!(errors = self.bad_commands, "too many errors, closing");
            connection.queue(&reply::too_many_errors());
            return Step::Close;
        }
        Step::Continue
    }

    fn handle_hello<S>(
        &mut self,
        connection: &mut Connection<S>,
        host: &str,
        extended: bool,
    ) -> Step
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // A new greeting also ends any open transaction (RFC 5321 §4.1.4).
        self.state = State::Greeted(Greeting {
            helo: host.to_owned(),
            extended,
        });
        let hostname = self.context.config.server.hostname.clone();
        if !extended {
            return self.send(connection, Reply::bare(250, vec![hostname.into()]));
        }

        let mut lines: Vec<Cow<'static, str>> = vec![
            hostname.into(),
            "PIPELINING".into(),
            format!("SIZE {}", self.context.config.inbound.max_message_size.0).into(),
            "8BITMIME".into(),
            "ENHANCEDSTATUSCODES".into(),
        ];
        if self.tls.is_none() && self.context.tls.is_some() {
            lines.push("STARTTLS".into());
        }
        if self.auth_available() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        lines.push("SMTPUTF8".into());
        self.send(connection, Reply::bare(250, lines))
    }

    fn handle_starttls<S>(&mut self, connection: &mut Connection<S>) -> Step
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if self.tls.is_some() {
            return self.send(connection, reply::bad_sequence("TLS already active"));
        }
        if self.context.tls.is_none() {
            let reply = Reply::new(502, "5.5.1", "STARTTLS not available");
            return self.send(connection, reply);
        }
        if matches!(self.state, State::Transaction(..)) {
            let reply = reply::bad_sequence("STARTTLS not allowed during a mail transaction");
            return self.send(connection, reply);
        }
        connection.queue(&Reply::new(220, "2.0.0", "Ready to start TLS"));
        Step::StartTls
    }

    /// AUTH is offered only over TLS and only when users are configured.
    pub(super) fn auth_available(&self) -> bool {
        self.tls.is_some() && !self.context.config.inbound.users.is_empty()
    }

    /// Ends any open transaction, keeping the greeting.
    pub(super) fn reset_transaction(&mut self) {
        let state = std::mem::replace(&mut self.state, State::Connected);
        self.state = match state {
            State::Transaction(greeting, _) => State::Greeted(greeting),
            other => other,
        };
    }
}

/// A command line ends in CRLF and has no other CR or LF.
fn is_crlf_line(line: &[u8]) -> bool {
    match line.strip_suffix(b"\r\n") {
        Some(content) => !content.iter().any(|byte| matches!(byte, b'\r' | b'\n')),
        None => false,
    }
}

/// The command verb, escaped and cut short, for logs. The rest of the line may hold AUTH
/// data, so it is never logged.
fn command_name(line: &[u8]) -> String {
    let verb: Vec<u8> = line
        .iter()
        .take_while(|byte| !byte.is_ascii_whitespace())
        .take(16)
        .copied()
        .collect();
    crate::telemetry::escape_field(&String::from_utf8_lossy(&verb))
}

fn parse_error_reply(error: ParseError) -> Reply {
    match error {
        ParseError::UnknownCommand => Reply::new(500, "5.5.1", "Command not recognized"),
        ParseError::InvalidSenderAddress => Reply::new(501, "5.1.7", "Invalid sender address"),
        ParseError::InvalidRecipientAddress => {
            Reply::new(501, "5.1.3", "Invalid recipient address")
        }
        ParseError::SyntaxError { syntax } => {
            Reply::new(501, "5.5.4", format!("Syntax error, expected {syntax}"))
        }
        ParseError::InvalidParameter { param } => {
            Reply::new(501, "5.5.4", format!("Invalid value for parameter {param}"))
        }
        ParseError::UnsupportedParameter { param } => Reply::new(
            555,
            "5.5.4",
            format!("Parameter {} not supported", printable(&param)),
        ),
        ParseError::NeedsMoreData { .. }
        | ParseError::ResponseTooLong
        | ParseError::InvalidResponse { .. } => Reply::new(500, "5.5.2", "Syntax error"),
    }
}

/// Peer text made safe to echo in a reply: printable ASCII only, at most 64 characters.
pub(super) fn printable(text: &str) -> String {
    text.chars()
        .take(64)
        .map(|ch| if ch.is_ascii_graphic() { ch } else { '?' })
        .collect()
}
