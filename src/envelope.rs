//! The values that pass between pipeline stages: an accepted message with its envelope, and
//! the queue id that names it in every log line and reply.

use std::fmt;
use std::net::SocketAddr;

/// Names one accepted message: 16 uppercase hex digits, random.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(String);

impl QueueId {
    /// Draws a new random id with no run of ten decimal digits. The id appears in the
    /// gateway's own `Received:` field and notices. Ten digits with a valid modulus-11 check
    /// digit are an NHS number to the classifier, so without the redraw roughly one message
    /// in 200 would be sensitive by chance (an estimate from the odds of such a run).
    pub fn generate() -> QueueId {
        loop {
            let id = format!("{:016X}", rand::random::<u64>());
            if !has_ten_digit_run(&id) {
                return QueueId(id);
            }
        }
    }

    /// Accepts an id read back from the queue or typed by an operator.
    pub fn parse(text: &str) -> Option<QueueId> {
        let valid = text.len() == 16 && text.bytes().all(|byte| byte.is_ascii_hexdigit());
        valid.then(|| QueueId(text.to_ascii_uppercase()))
    }

    /// Returns the id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn has_ten_digit_run(text: &str) -> bool {
    text.as_bytes()
        .split(|byte| !byte.is_ascii_digit())
        .any(|run| run.len() >= 10)
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Facts about the SMTP client that handed a message over.
#[derive(Clone, Debug)]
pub struct ClientInfo {
    /// Peer address.
    pub addr: SocketAddr,
    /// EHLO or HELO argument, as sent.
    pub helo: String,
    /// Negotiated TLS version and cipher, when the session used STARTTLS.
    pub tls: Option<String>,
    /// AUTH identity, when the client authenticated.
    pub auth_user: Option<String>,
}

/// A message the inbound stage accepted and wants committed to the spool.
#[derive(Clone, Debug)]
pub struct AcceptedMessage {
    /// Envelope sender; empty for the null sender `<>`.
    pub sender: String,
    /// Envelope recipients, in RCPT order, without duplicates.
    pub recipients: Vec<String>,
    /// The message as received, with sealgate's `Received:` header prepended and CRLF
    /// line endings, dot-stuffing removed.
    pub body: Vec<u8>,
    /// The body contains bytes above 127 (or the client declared `BODY=8BITMIME`).
    pub body_8bit: bool,
    /// The client declared `SMTPUTF8`.
    pub smtputf8: bool,
    /// The client that sent it.
    pub client: ClientInfo,
}

/// Formats an envelope address for logs and replies, `<>` for the null sender.
pub fn display_address(address: &str) -> String {
    format!("<{}>", crate::telemetry::escape_field(address))
}

/// Returns the domain of an address, lowercased, or an empty string for an address
/// without `@`.
pub fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, domain)| domain.trim_end_matches('.').to_ascii_lowercase())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digit_runs_are_found() {
        let cases = [
            ("3445399379B86491", true),
            ("A3445399379B8649", true),
            ("344539937B986491", false),
            ("ABCDEF012345678A", false),
            ("1234567890123456", true),
        ];
        for (id, expected) in cases {
            assert_eq!(has_ten_digit_run(id), expected, "{id}");
        }
    }

    #[test]
    fn generated_ids_have_no_digit_run() {
        for _ in 0..5000 {
            let id = QueueId::generate();
            assert!(!has_ten_digit_run(id.as_str()), "{id}");
            assert_eq!(QueueId::parse(id.as_str()), Some(id));
        }
    }
}
