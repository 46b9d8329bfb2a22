//! Delivery status notifications (RFC 3464): one `multipart/report` per bounce event, to
//! the envelope sender, listing each failed recipient with the remote reply and the TLS
//! facts of the last attempt. Never sent for the null sender (RFC 5321 §6.1), so two
//! gateways cannot bounce a bounce back and forth.

use mail_builder::MessageBuilder;
use mail_builder::headers::content_type::ContentType;
use mail_builder::mime::MimePart;

use crate::envelope::{QueueId, display_address};

/// One recipient that failed.
#[derive(Clone, Debug)]
pub struct FailedRecipient {
    /// Envelope address.
    pub address: String,
    /// Enhanced status code, such as `5.1.1` or `4.4.7`.
    pub status: String,
    /// The remote reply or the local reason.
    pub diagnostic: String,
    /// `host[ip]:port` of the last attempt, when a connection was made.
    pub remote_mta: Option<String>,
    /// TLS of the last attempt, such as `TLSv1.3/verified` or `plain`.
    pub tls: String,
    /// The recipient expired in the queue rather than failing permanently.
    pub expired: bool,
}

/// The facts a DSN reports.
pub struct Report<'a> {
    /// Queue id of the original message.
    pub queue_id: &'a QueueId,
    /// The reporting host, `server.hostname`.
    pub reporting_mta: &'a str,
    /// From: of the DSN.
    pub postmaster: &'a str,
    /// To: of the DSN, the original envelope sender.
    pub sender: &'a str,
    /// Unix milliseconds when the original was accepted.
    pub arrival: i64,
    /// The recipients that failed.
    pub recipients: &'a [FailedRecipient],
    /// The original message, for its header section.
    pub original: &'a [u8],
}

/// Builds the DSN message bytes.
pub fn build(report: &Report<'_>) -> Vec<u8> {
    let human = human_text(report);
    let status = delivery_status(report);
    let headers = header_section(report.original);

    let parts = vec![
        MimePart::new(
            ContentType::new("text/plain").attribute("charset", "utf-8"),
            human,
        ),
        MimePart::new("message/delivery-status", status).transfer_encoding("7bit"),
        MimePart::new("text/rfc822-headers", headers).transfer_encoding("7bit"),
    ];
    let body = MimePart::new(
        ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
        parts,
    );
    MessageBuilder::new()
        .from(("Mail Delivery System", report.postmaster))
        .to(report.sender)
        .subject("Undelivered Mail Returned to Sender")
        .message_id(format!(
            "dsn.{}.{}@{}",
            report.queue_id,
            super::store::now_millis(),
            report.reporting_mta
        ))
        .header(
            "Auto-Submitted",
            mail_builder::headers::raw::Raw::new("auto-replied"),
        )
        .date(now_seconds())
        .body(body)
        .write_to_vec()
        .expect("writing to a Vec cannot fail")
}

fn human_text(report: &Report<'_>) -> String {
    let mut text = format!(
        "This is the mail system at host {}.\r\n\r\n\
         Your message (queue id {}) could not be delivered to one or more recipients.\r\n\
         The details of each failure follow.\r\n\r\n",
        report.reporting_mta, report.queue_id
    );
    for recipient in report.recipients {
        let why = if recipient.expired {
            "delivery time expired; last failure"
        } else {
            "permanent failure"
        };
        text.push_str(&format!(
            "{}: {why}: {}\r\n    remote host: {}\r\n    tls: {}\r\n\r\n",
            display_address(&recipient.address),
            single_line(&recipient.diagnostic),
            recipient.remote_mta.as_deref().unwrap_or("none"),
            recipient.tls,
        ));
    }
    text
}

fn delivery_status(report: &Report<'_>) -> String {
    let mut status = format!(
        "Reporting-MTA: dns; {}\r\nX-Sealgate-Queue-ID: {}\r\nArrival-Date: {}\r\n",
        report.reporting_mta,
        report.queue_id,
        rfc5322_date(report.arrival / 1000)
    );
    for recipient in report.recipients {
        status.push_str(&format!(
            "\r\nFinal-Recipient: rfc822; {}\r\nAction: failed\r\nStatus: {}\r\n",
            ascii_only(&recipient.address),
            if recipient.expired && recipient.status.starts_with('4') {
                "4.4.7".to_string()
            } else {
                recipient.status.clone()
            }
        ));
        if let Some(remote) = &recipient.remote_mta {
            let host = remote.split('[').next().unwrap_or(remote);
            status.push_str(&format!("Remote-MTA: dns; {}\r\n", ascii_only(host)));
        }
        status.push_str(&format!(
            "Diagnostic-Code: smtp; {}\r\nX-Sealgate-TLS: {}\r\nLast-Attempt-Date: {}\r\n",
            ascii_only(&single_line(&recipient.diagnostic)),
            recipient.tls,
            rfc5322_date(now_seconds()),
        ));
    }
    status
}

/// Returns the original's header section, up to the first empty line.
fn header_section(original: &[u8]) -> String {
    let end = original
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .map(|position| position + 2)
        .unwrap_or(original.len());
    ascii_only(&String::from_utf8_lossy(&original[..end]))
}

fn single_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

/// Replaces non-ASCII characters, since `message/delivery-status` fields are ASCII.
fn ascii_only(text: &str) -> String {
    text.chars()
        .map(|ch| if ch.is_ascii() { ch } else { '?' })
        .collect()
}

fn now_seconds() -> i64 {
    super::store::now_millis() / 1000
}

fn rfc5322_date(seconds: i64) -> String {
    mail_builder::headers::date::Date::new(seconds).to_rfc822()
}

#[cfg(test)]
mod tests {
    use mail_parser::MimeHeaders;

    use super::*;

    fn build_text(recipient: FailedRecipient, original: &[u8]) -> String {
        let id = QueueId::parse("0123456789ABCDEF").unwrap();
        let dsn = build(&Report {
            queue_id: &id,
            reporting_mta: "gw.example.net",
            postmaster: "MAILER-DAEMON@gw.example.net",
            sender: "a@example.net",
            arrival: 1_700_000_000_000,
            recipients: &[recipient],
            original,
        });
        String::from_utf8(dsn).unwrap()
    }

    #[test]
    fn dsn_is_a_delivery_status_report() {
        let recipient = FailedRecipient {
            address: "gone@example.org".into(),
            status: "5.1.1".into(),
            diagnostic: "550 5.1.1 <gone@example.org>: user unknown".into(),
            remote_mta: Some("mx.example.org[192.0.2.7]:25".into()),
            tls: "TLSv1.3/verified".into(),
            expired: false,
        };
        let original = b"Subject: hello\r\nFrom: a@example.net\r\n\r\nsecret body text\r\n";
        let text = build_text(recipient, original);
        let parsed = mail_parser::MessageParser::default()
            .parse(text.as_bytes())
            .unwrap();
        assert_eq!(parsed.content_type().unwrap().ctype(), "multipart");
        assert_eq!(parsed.content_type().unwrap().subtype(), Some("report"));
        assert_eq!(
            parsed.content_type().unwrap().attribute("report-type"),
            Some("delivery-status")
        );
        assert!(text.contains("Final-Recipient: rfc822; gone@example.org"));
        assert!(text.contains("Status: 5.1.1"));
        assert!(text.contains("Remote-MTA: dns; mx.example.org"));
        assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1"));
        assert!(text.contains("X-Sealgate-TLS: TLSv1.3/verified"));
        assert!(text.contains("Subject: hello"));
        assert!(
            !text.contains("secret body text"),
            "the DSN carries headers only"
        );
        assert!(text.contains("Auto-Submitted: auto-replied"));
        assert!(
            text.contains("Message-ID: <dsn.0123456789ABCDEF."),
            "{text}"
        );
        assert!(text.contains("@gw.example.net>"), "{text}");
    }

    #[test]
    fn expired_recipient_reports_4_4_7() {
        let recipient = FailedRecipient {
            address: "slow@example.org".into(),
            status: "4.7.5".into(),
            diagnostic: "STARTTLS not offered".into(),
            remote_mta: None,
            tls: "plain".into(),
            expired: true,
        };
        let text = build_text(recipient, b"Subject: x\r\n\r\nbody\r\n");
        assert!(text.contains("Status: 4.4.7"));
        assert!(text.contains("delivery time expired"));
    }
}
