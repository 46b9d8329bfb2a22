//! One SMTP conversation with one address of a next hop, on top of mail-send's
//! `SmtpClient`: greeting, EHLO (HELO when EHLO gets a 5xx), STARTTLS, then MAIL, one RCPT
//! per recipient, DATA with our own dot-stuffing, and QUIT.
//!
//! mail-send's `read` takes at most one read of 1024 bytes and drops whatever follows the
//! first reply in it. So replies a server sends ahead of the TLS handshake, in the same
//! packet as its STARTTLS reply, are never acted on (STARTTLS response injection). That
//! behaviour is relied on here and covered by a test.
//!
//! The body is written through the client's `stream` rather than with mail-send's `data`,
//! because `data` adds a blank line before the final dot when the body already ends with
//! CRLF.

use std::net::SocketAddr;
use std::time::Duration;

use mail_send::SmtpClient;
use smtp_proto::{EXT_8BIT_MIME, EXT_SIZE, EXT_SMTP_UTF8, EhloResponse, Response};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tracing::debug;

use super::tls::{describe_handshake_error, protocol_name};
use super::{DeliveryJob, DeliveryStatus, Failure, RecipientResult, Reply, Stage};
use crate::telemetry::escape_field;

/// The address being talked to.
pub(crate) struct Peer<'a> {
    /// `name[ip]:port`, for `relay`, failures and logs.
    pub label: String,
    /// Socket address to connect to.
    pub address: SocketAddr,
    /// Name the certificate must match, also sent as SNI.
    pub tls_name: &'a str,
    /// Queue id, for logs.
    pub queue_id: &'a str,
}

/// Time limits from `[delivery]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// Each command reply, the greeting and the TLS handshake.
    pub command: Duration,
    /// Writing the message and reading the final reply.
    pub data: Duration,
}

/// The end of a transaction on one connection.
pub(crate) enum Transaction {
    /// Every recipient has a result and no other host is tried.
    Finished(Vec<RecipientResult>),
    /// The host failed before the recipients got a final reply, so the next one is tried.
    NextHost(Failure),
}

/// The result of STARTTLS.
pub(crate) enum StartTls {
    /// The handshake succeeded, with the negotiated version such as `TLSv1.3`.
    Upgraded(Box<SmtpClient<TlsStream<TcpStream>>>, String),
    /// The server rejected STARTTLS; the connection is still usable in clear text.
    Rejected(SmtpClient<TcpStream>, Failure),
    /// The handshake failed and the connection is gone.
    HandshakeFailed(Failure),
}

/// The state of one recipient during the transaction.
enum RcptState {
    Accepted,
    Done(DeliveryStatus),
}

/// Connects and reads the greeting, which must be 2xx.
pub(crate) async fn connect(
    peer: &Peer<'_>,
    timeouts: Timeouts,
) -> Result<SmtpClient<TcpStream>, Failure> {
    debug!(queue_id = peer.queue_id, host = %escape_field(&peer.label), "connecting");
    let mut client = SmtpClient::connect(peer.address, timeouts.connect)
        .await
        .map_err(|error| {
            let detail = match error {
                mail_send::Error::Timeout => {
                    format!("connect timed out after {:?}", timeouts.connect)
                }
                other => format!("connect failed: {other}"),
            };
            host_failure(peer, Stage::Connect, detail, None, "4.4.1")
        })?;
    client.timeout = timeouts.command;

    let greeting = match tokio::time::timeout(timeouts.command, client.read()).await {
        Ok(Ok(greeting)) => reply_of(greeting),
        Ok(Err(error)) => return Err(lost(peer, Stage::Connect, "the greeting", error)),
        Err(_) => {
            return Err(lost(
                peer,
                Stage::Connect,
                "the greeting",
                mail_send::Error::Timeout,
            ));
        }
    };
    debug!(
        queue_id = peer.queue_id,
        host = %escape_field(&peer.label),
        reply = ?greeting.to_string(),
        "greeting",
    );
    if !(200..300).contains(&greeting.code) {
        let status = temporary(&reply_status(&greeting));
        return Err(host_failure(
            peer,
            Stage::Connect,
            "greeting rejected".into(),
            Some(greeting),
            &status,
        ));
    }
    Ok(client)
}

/// Sends EHLO, or HELO when the server rejects EHLO with a 5xx reply, and returns the
/// capabilities (none after HELO).
pub(crate) async fn hello<T>(
    client: &mut SmtpClient<T>,
    peer: &Peer<'_>,
    helo_name: &str,
) -> Result<EhloResponse<String>, Failure>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let rejected = match client.ehlo(helo_name).await {
        Ok(capabilities) => {
            debug!(
                queue_id = peer.queue_id,
                host = %escape_field(&peer.label),
                capabilities = capabilities.capabilities,
                "EHLO accepted",
            );
            return Ok(capabilities);
        }
        Err(mail_send::Error::UnexpectedReply(response)) if (500..600).contains(&response.code) => {
            reply_of(response)
        }
        Err(mail_send::Error::UnexpectedReply(response)) => {
            let reply = reply_of(response);
            let status = temporary(&reply_status(&reply));
            return Err(host_failure(
                peer,
                Stage::Ehlo,
                "EHLO rejected".into(),
                Some(reply),
                &status,
            ));
        }
        Err(error) => return Err(lost(peer, Stage::Ehlo, "EHLO", error)),
    };

    debug!(
        queue_id = peer.queue_id,
        host = %escape_field(&peer.label),
        reply = ?rejected.to_string(),
        "EHLO rejected, trying HELO",
    );
    let reply = client
        .cmd(format!("HELO {helo_name}\r\n"))
        .await
        .map(reply_of)
        .map_err(|error| lost(peer, Stage::Ehlo, "HELO", error))?;
    if !(200..300).contains(&reply.code) {
        let status = temporary(&reply_status(&reply));
        return Err(host_failure(
            peer,
            Stage::Ehlo,
            "HELO rejected".into(),
            Some(reply),
            &status,
        ));
    }
    Ok(EhloResponse::default())
}

/// Sends STARTTLS and performs the handshake with `connector`.
pub(crate) async fn start_tls(
    mut client: SmtpClient<TcpStream>,
    peer: &Peer<'_>,
    connector: &TlsConnector,
) -> StartTls {
    let reply = match client.cmd(b"STARTTLS\r\n").await {
        Ok(response) => reply_of(response),
        Err(error) => {
            return StartTls::HandshakeFailed(tls_failure(
                peer,
                format!("STARTTLS failed: {error}"),
                None,
            ));
        }
    };
    if !(200..300).contains(&reply.code) {
        let failure = tls_failure(peer, "STARTTLS rejected".into(), Some(reply));
        return StartTls::Rejected(client, failure);
    }

    debug!(
        queue_id = peer.queue_id,
        host = %escape_field(&peer.label),
        tls_name = %escape_field(peer.tls_name),
        "TLS handshake",
    );
    match client.into_tls(connector, peer.tls_name).await {
        Ok(client) => {
            let version = protocol_name(client.tls_connection().protocol_version());
            debug!(
                queue_id = peer.queue_id,
                host = %escape_field(&peer.label),
                version,
                "TLS established",
            );
            StartTls::Upgraded(Box::new(client), version)
        }
        Err(error) => {
            let detail = describe_handshake_error(&error, peer.tls_name);
            debug!(
                queue_id = peer.queue_id,
                host = %escape_field(&peer.label),
                detail,
                "TLS handshake failed",
            );
            StartTls::HandshakeFailed(tls_failure(peer, detail, None))
        }
    }
}

/// Sends the message: the conversion checks, MAIL FROM, one RCPT per recipient, DATA.
pub(crate) async fn transact<T>(
    client: &mut SmtpClient<T>,
    peer: &Peer<'_>,
    job: &DeliveryJob<'_>,
    capabilities: &EhloResponse<String>,
    timeouts: Timeouts,
) -> Transaction
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    if let Some(failure) = conversion_failure(peer, job, capabilities) {
        debug!(
            queue_id = peer.queue_id,
            host = %escape_field(&peer.label),
            detail = failure.detail,
            "message cannot be sent to this next hop",
        );
        return finish_all(job, DeliveryStatus::Bounced(failure));
    }
    let Some(sender) = reverse_path(job.sender) else {
        let failure = unsendable(Stage::MailFrom);
        return finish_all(job, DeliveryStatus::Bounced(failure));
    };

    let command = mail_from_command(&sender, job, capabilities);
    let reply = match client.cmd(command).await {
        Ok(response) => reply_of(response),
        Err(error) => {
            return Transaction::NextHost(lost(peer, Stage::MailFrom, "MAIL FROM", error));
        }
    };
    debug!(
        queue_id = peer.queue_id,
        host = %escape_field(&peer.label),
        reply = ?reply.to_string(),
        "MAIL FROM",
    );
    if (500..600).contains(&reply.code) {
        let status = reply_status(&reply);
        let failure = host_failure(
            peer,
            Stage::MailFrom,
            "sender rejected".into(),
            Some(reply),
            &status,
        );
        return finish_all(job, DeliveryStatus::Bounced(failure));
    }
    if !(200..300).contains(&reply.code) {
        let status = temporary(&reply_status(&reply));
        return Transaction::NextHost(host_failure(
            peer,
            Stage::MailFrom,
            "sender rejected".into(),
            Some(reply),
            &status,
        ));
    }

    let mut states = Vec::with_capacity(job.recipients.len());
    for recipient in job.recipients {
        let state = match send_rcpt(client, peer, recipient).await {
            Ok(state) => state,
            Err(failure) => return Transaction::NextHost(failure),
        };
        states.push(state);
    }
    if !states
        .iter()
        .any(|state| matches!(state, RcptState::Accepted))
    {
        debug!(
            queue_id = peer.queue_id,
            host = %escape_field(&peer.label),
            "no recipient accepted, skipping DATA",
        );
        return finish(job, states, None);
    }

    let outcome = send_data(client, peer, job.body, timeouts).await;
    finish(job, states, Some(outcome))
}

/// Sends QUIT and ignores the outcome: the transaction is already decided.
pub(crate) async fn quit<T>(client: &mut SmtpClient<T>, peer: &Peer<'_>)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let outcome = client.cmd(b"QUIT\r\n").await;
    debug!(queue_id = peer.queue_id, host = %escape_field(&peer.label), ok = outcome.is_ok(), "QUIT");
}

/// Applies the transparency procedure of RFC 5321 §4.5.2 and appends the end of data.
///
/// A `.` is doubled at the start of every line. Besides CRLF, a bare LF or a bare CR also
/// counts as a line end here, so that a receiver that accepts them cannot be made to see an
/// early end of data (SMTP smuggling). The body ends with exactly one CRLF before the
/// final `.`, added when the body does not already end with CRLF.
pub(crate) fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut stuffed = Vec::with_capacity(body.len() + body.len() / 64 + 5);
    let mut at_line_start = true;
    for (index, &byte) in body.iter().enumerate() {
        if at_line_start && byte == b'.' {
            stuffed.push(b'.');
        }
        stuffed.push(byte);
        at_line_start = match byte {
            b'\n' => true,
            b'\r' => body.get(index + 1) != Some(&b'\n'),
            _ => false,
        };
    }
    if !body.is_empty() && !body.ends_with(b"\r\n") {
        stuffed.extend_from_slice(b"\r\n");
    }
    stuffed.extend_from_slice(b".\r\n");
    stuffed
}

async fn send_rcpt<T>(
    client: &mut SmtpClient<T>,
    peer: &Peer<'_>,
    recipient: &str,
) -> Result<RcptState, Failure>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let Some(path) = smtp_path(recipient) else {
        let failure = unsendable(Stage::RcptTo);
        return Ok(RcptState::Done(DeliveryStatus::Bounced(failure)));
    };
    let reply = client
        .cmd(format!("RCPT TO:<{path}>\r\n"))
        .await
        .map(reply_of)
        .map_err(|error| lost(peer, Stage::RcptTo, "RCPT TO", error))?;
    debug!(
        queue_id = peer.queue_id,
        host = %escape_field(&peer.label),
        recipient = %escape_field(recipient),
        reply = ?reply.to_string(),
        "RCPT TO",
    );

    if (200..300).contains(&reply.code) {
        return Ok(RcptState::Accepted);
    }
    let status = reply_status(&reply);
    let failure = host_failure(
        peer,
        Stage::RcptTo,
        "recipient rejected".into(),
        Some(reply),
        &status,
    );
    Ok(RcptState::Done(status_for(failure)))
}

/// Sends DATA, the message and reads the final reply; returns the status of every
/// accepted recipient.
async fn send_data<T>(
    client: &mut SmtpClient<T>,
    peer: &Peer<'_>,
    body: &[u8],
    timeouts: Timeouts,
) -> DeliveryStatus
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let reply = match client.cmd(b"DATA\r\n").await {
        Ok(response) => reply_of(response),
        Err(error) => return DeliveryStatus::Deferred(lost(peer, Stage::Data, "DATA", error)),
    };
    if reply.code != 354 {
        let status = reply_status(&reply);
        return status_for(host_failure(
            peer,
            Stage::Data,
            "DATA rejected".into(),
            Some(reply),
            &status,
        ));
    }

    debug!(
        queue_id = peer.queue_id,
        host = %escape_field(&peer.label),
        bytes = body.len(),
        "sending message",
    );
    let stuffed = dot_stuff(body);
    let transfer = async {
        client.stream.write_all(&stuffed).await?;
        client.stream.flush().await?;
        client.read().await
    };
    let reply = match tokio::time::timeout(timeouts.data, transfer).await {
        Ok(Ok(response)) => reply_of(response),
        Ok(Err(error)) => {
            return DeliveryStatus::Deferred(lost(peer, Stage::Data, "the end of data", error));
        }
        Err(_) => {
            let detail = format!(
                "timed out after {:?} sending the message or waiting for the final reply",
                timeouts.data
            );
            return DeliveryStatus::Deferred(host_failure(
                peer,
                Stage::Data,
                detail,
                None,
                "4.4.2",
            ));
        }
    };
    debug!(
        queue_id = peer.queue_id,
        host = %escape_field(&peer.label),
        reply = ?reply.to_string(),
        "end of data",
    );

    if (200..300).contains(&reply.code) {
        return DeliveryStatus::Sent(reply);
    }
    let status = reply_status(&reply);
    status_for(host_failure(
        peer,
        Stage::Data,
        "message rejected".into(),
        Some(reply),
        &status,
    ))
}

fn conversion_failure(
    peer: &Peer<'_>,
    job: &DeliveryJob<'_>,
    capabilities: &EhloResponse<String>,
) -> Option<Failure> {
    let (detail, status) = if job.body_8bit && !capabilities.has_capability(EXT_8BIT_MIME) {
        (
            "next hop does not offer 8BITMIME and sealgate does not convert 8-bit messages"
                .to_owned(),
            "5.6.3",
        )
    } else if job.smtputf8 && !capabilities.has_capability(EXT_SMTP_UTF8) {
        (
            "next hop does not offer SMTPUTF8, which the message needs (RFC 6531 §3.4)".to_owned(),
            "5.6.7",
        )
    } else if capabilities.has_capability(EXT_SIZE)
        && capabilities.size > 0
        && job.body.len() > capabilities.size
    {
        (
            format!(
                "message of {} bytes exceeds the next hop's SIZE limit of {} bytes",
                job.body.len(),
                capabilities.size
            ),
            "5.3.4",
        )
    } else {
        return None;
    };
    Some(host_failure(peer, Stage::Conversion, detail, None, status))
}

fn mail_from_command(
    sender: &str,
    job: &DeliveryJob<'_>,
    capabilities: &EhloResponse<String>,
) -> String {
    let mut command = format!("MAIL FROM:<{sender}>");
    if job.body_8bit {
        command.push_str(" BODY=8BITMIME");
    }
    if job.smtputf8 {
        command.push_str(" SMTPUTF8");
    }
    if capabilities.has_capability(EXT_SIZE) {
        command.push_str(&format!(" SIZE={}", job.body.len()));
    }
    command.push_str("\r\n");
    command
}

/// Writes an envelope address as the text between `<` and `>` of an SMTP path
/// (RFC 5321 §4.1.2). The inbound side stores a quoted local part without its quotes, so
/// a local part that is not a dot-atom is quoted again here, with `\` and `"` escaped.
/// Returns `None` for an address that no path can carry. That is one without `@`, with an
/// empty local part or domain, or with a character outside letters, digits and `-._[]:`
/// in the domain. A control character in the local part also gives `None`, because a
/// quoted string cannot carry it either.
pub(crate) fn smtp_path(address: &str) -> Option<String> {
    let (local, domain) = address.rsplit_once('@')?;
    if local.is_empty() || local.chars().any(char::is_control) {
        return None;
    }
    let domain_valid = !domain.is_empty()
        && domain
            .chars()
            .all(|ch| ch.is_alphanumeric() || matches!(ch, '-' | '.' | '_' | '[' | ']' | ':'));
    if !domain_valid {
        return None;
    }
    if is_dot_atom(local) {
        return Some(address.to_owned());
    }
    let mut path = String::with_capacity(address.len() + 4);
    path.push('"');
    for ch in local.chars() {
        if matches!(ch, '\\' | '"') {
            path.push('\\');
        }
        path.push(ch);
    }
    path.push_str("\"@");
    path.push_str(domain);
    Some(path)
}

/// Writes a sender as [`smtp_path`] does, except that the empty null sender is valid.
pub(crate) fn reverse_path(sender: &str) -> Option<String> {
    if sender.is_empty() {
        return Some(String::new());
    }
    smtp_path(sender)
}

/// True for `atext *("." atext)`, where RFC 6531 adds every non-ASCII character to the
/// atext of RFC 5322 §3.2.3.
fn is_dot_atom(local: &str) -> bool {
    let is_atext = |ch: char| {
        ch.is_ascii_alphanumeric() || !ch.is_ascii() || "!#$%&'*+-/=?^_`{|}~".contains(ch)
    };
    local
        .split('.')
        .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

/// Builds the failure for an address that sealgate cannot write as an SMTP path. It has
/// no host, because no next hop saw the address.
pub(crate) fn unsendable(stage: Stage) -> Failure {
    let (role, status) = match stage {
        Stage::MailFrom => ("sender", "5.1.7"),
        _ => ("recipient", "5.1.3"),
    };
    Failure {
        host: None,
        stage,
        detail: format!(
            "sealgate rejected the {role} address locally because it cannot be written as an \
             SMTP path, so it was not sent to any next hop"
        ),
        reply: None,
        status: status.to_owned(),
    }
}

fn finish_all(job: &DeliveryJob<'_>, status: DeliveryStatus) -> Transaction {
    let states = job
        .recipients
        .iter()
        .map(|_| RcptState::Done(status.clone()))
        .collect();
    finish(job, states, None)
}

/// Pairs each recipient with its result; accepted recipients get `data_status`.
fn finish(
    job: &DeliveryJob<'_>,
    states: Vec<RcptState>,
    data_status: Option<DeliveryStatus>,
) -> Transaction {
    let results = job
        .recipients
        .iter()
        .zip(states)
        .map(|(recipient, state)| {
            let status = match state {
                RcptState::Done(status) => status,
                // `transact` only skips DATA when no recipient was accepted.
                RcptState::Accepted => data_status
                    .clone()
                    .expect("DATA was sent for accepted recipients"),
            };
            RecipientResult {
                recipient: recipient.clone(),
                status,
            }
        })
        .collect();
    Transaction::Finished(results)
}

/// Converts a mail-send reply, joining the lines of a multi-line reply with spaces.
fn reply_of(response: Response<String>) -> Reply {
    let [class, subject, detail] = response.esc;
    let enhanced = (class != 0).then(|| format!("{class}.{subject}.{detail}"));
    let text = response
        .message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    Reply {
        code: response.code,
        enhanced,
        text,
    }
}

/// Picks the enhanced status code of a reply, or a generic one for its class when the
/// server sent none or one whose class contradicts the basic code.
fn reply_status(reply: &Reply) -> String {
    let class = if (500..600).contains(&reply.code) {
        '5'
    } else {
        '4'
    };
    match &reply.enhanced {
        Some(enhanced) if enhanced.starts_with(class) => enhanced.clone(),
        _ => format!("{class}.0.0"),
    }
}

/// Turns a status into its temporary form, for host failures that end in a retry.
fn temporary(status: &str) -> String {
    match status.strip_prefix('5') {
        Some(rest) => format!("4{rest}"),
        None => status.to_owned(),
    }
}

fn status_for(failure: Failure) -> DeliveryStatus {
    if failure.status.starts_with('5') {
        DeliveryStatus::Bounced(failure)
    } else {
        DeliveryStatus::Deferred(failure)
    }
}

fn host_failure(
    peer: &Peer<'_>,
    stage: Stage,
    detail: String,
    reply: Option<Reply>,
    status: &str,
) -> Failure {
    Failure {
        host: Some(peer.label.clone()),
        stage,
        detail,
        reply,
        status: status.to_owned(),
    }
}

pub(crate) fn tls_failure(peer: &Peer<'_>, detail: String, reply: Option<Reply>) -> Failure {
    host_failure(peer, Stage::Tls, detail, reply, "4.7.5")
}

/// Builds the failure for a timeout, a lost connection or an unparseable reply while
/// waiting for the reply to `step`.
fn lost(peer: &Peer<'_>, stage: Stage, step: &str, error: mail_send::Error) -> Failure {
    let (detail, reply) = match error {
        mail_send::Error::Timeout => (format!("timed out waiting for the reply to {step}"), None),
        mail_send::Error::UnparseableReply => (
            format!("connection closed or invalid reply to {step}"),
            None,
        ),
        mail_send::Error::UnexpectedReply(response) => (
            format!("unexpected reply to {step}"),
            Some(reply_of(response)),
        ),
        other => (format!("connection failed during {step}: {other}"), None),
    };
    host_failure(peer, stage, detail, reply, "4.4.2")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing_cases() {
        let cases: [(&[u8], &[u8]); 8] = [
            (b"", b".\r\n"),
            (b"a\r\n", b"a\r\n.\r\n"),
            (b"a", b"a\r\n.\r\n"),
            (b".a\r\n", b"..a\r\n.\r\n"),
            (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"a\r\n..b\r\n", b"a\r\n...b\r\n.\r\n"),
            (
                b"a\n.\r\nMAIL FROM:<x>\r\n",
                b"a\n..\r\nMAIL FROM:<x>\r\n.\r\n",
            ),
            (b"a\r.\r\nb", b"a\r..\r\nb\r\n.\r\n"),
        ];
        for (body, expected) in cases {
            assert_eq!(
                String::from_utf8_lossy(&dot_stuff(body)),
                String::from_utf8_lossy(expected),
                "body {:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn dot_inside_line_is_kept() {
        assert_eq!(dot_stuff(b"a.b\r\n"), b"a.b\r\n.\r\n");
    }

    #[test]
    fn reply_keeps_enhanced_code_and_joins_lines() {
        let reply = reply_of(Response {
            code: 550,
            esc: [5, 1, 1],
            message: "no such user\nsee the manual".into(),
        });
        assert_eq!(reply.code, 550);
        assert_eq!(reply.enhanced.as_deref(), Some("5.1.1"));
        assert_eq!(reply.text, "no such user see the manual");
    }

    #[test]
    fn reply_status_falls_back_to_class() {
        let reply = |code, enhanced: Option<&str>| Reply {
            code,
            enhanced: enhanced.map(str::to_owned),
            text: String::new(),
        };
        assert_eq!(reply_status(&reply(550, Some("5.1.1"))), "5.1.1");
        assert_eq!(reply_status(&reply(550, None)), "5.0.0");
        assert_eq!(reply_status(&reply(451, Some("5.1.1"))), "4.0.0");
        assert_eq!(reply_status(&reply(421, None)), "4.0.0");
    }

    #[test]
    fn temporary_lowers_class() {
        assert_eq!(temporary("5.7.1"), "4.7.1");
        assert_eq!(temporary("4.4.2"), "4.4.2");
    }

    #[test]
    fn smtp_path_quotes_non_dot_atoms() {
        let cases = [
            ("a.b+tag@example.org", Some("a.b+tag@example.org")),
            ("j\u{fc}rgen@example.org", Some("j\u{fc}rgen@example.org")),
            ("sp ace@example.org", Some("\"sp ace\"@example.org")),
            ("q\"uote@example.org", Some("\"q\\\"uote\"@example.org")),
            (
                "back\\slash@example.org",
                Some("\"back\\\\slash\"@example.org"),
            ),
            ("a@b@example.org", Some("\"a@b\"@example.org")),
            ("a..b@example.org", Some("\"a..b\"@example.org")),
            ("a>@example.org", Some("\"a>\"@example.org")),
            ("a@example.org>\r\nRCPT TO:<b@example.org", None),
            ("a\u{7f}b@example.org", None),
            ("a@exa mple.org", None),
            ("a@", None),
            ("@example.org", None),
            ("postmaster", None),
            ("", None),
        ];
        for (address, expected) in cases {
            assert_eq!(smtp_path(address).as_deref(), expected, "{address:?}");
        }
        assert_eq!(reverse_path("").as_deref(), Some(""));
    }
}
