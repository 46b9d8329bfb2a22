//! The held message as the portal shows it: headers, text, sanitised HTML and the list of
//! attachments, parsed with mail-parser.

use std::panic::{AssertUnwindSafe, catch_unwind};

use mail_parser::{Address, Message, MessageParser, MimeHeaders};

use super::sanitize::sanitize_html;

/// The parts of a held message that the message page shows.
#[derive(Clone, Debug, Default)]
pub struct MessageView {
    /// `From:` addresses, as `Name <address>`.
    pub from: String,
    /// `To:` addresses.
    pub to: String,
    /// `Cc:` addresses; empty when there are none.
    pub cc: String,
    /// `Date:` in RFC 3339 form; empty when missing.
    pub date: String,
    /// `Subject:`; empty when missing.
    pub subject: String,
    /// The first plain-text part; `None` when the message has only HTML.
    pub text: Option<String>,
    /// The first HTML part, sanitised.
    pub html: Option<String>,
    /// The attachments, in message order.
    pub attachments: Vec<AttachmentView>,
    /// `Message-ID:` without angle brackets, for the reply's `In-Reply-To:`.
    pub message_id: Option<String>,
}

/// One attachment in the list.
#[derive(Clone, Debug)]
pub struct AttachmentView {
    /// Position among the attachments, as used in the download URL.
    pub index: usize,
    /// File name from the message, or `attachment` without one.
    pub name: String,
    /// Declared content type, such as `application/pdf`.
    pub content_type: String,
    /// Decoded size in bytes.
    pub size: usize,
}

/// A decoded attachment for download.
#[derive(Clone, Debug)]
pub struct Attachment {
    /// File name from the message, if any.
    pub name: Option<String>,
    /// Declared content type.
    pub content_type: String,
    /// Decoded bytes.
    pub bytes: Vec<u8>,
}

/// Parses a held message for display; `None` when it cannot be parsed. A panic inside the
/// parser counts as unparsable rather than ending the request's task.
pub fn parse_view(raw: &[u8]) -> Option<MessageView> {
    parse_with(raw, |message| {
        let text = message
            .text_bodies()
            .find(|part| !part.is_text_html())
            .and_then(|part| part.text_contents().map(str::to_string));
        let html = message
            .html_bodies()
            .find(|part| part.is_text_html())
            .and_then(|part| part.text_contents().map(sanitize_html));
        let attachments = message
            .attachments()
            .enumerate()
            .map(|(index, part)| AttachmentView {
                index,
                name: part.attachment_name().unwrap_or("attachment").to_string(),
                content_type: content_type_of(part),
                size: part.contents().len(),
            })
            .collect();
        MessageView {
            from: format_addresses(message.from()),
            to: format_addresses(message.to()),
            cc: format_addresses(message.cc()),
            date: message.date().map(|d| d.to_rfc3339()).unwrap_or_default(),
            subject: message.subject().unwrap_or_default().to_string(),
            text,
            html,
            attachments,
            message_id: message.message_id().map(str::to_string),
        }
    })
}

/// Returns attachment number `index`, counted as in [`MessageView::attachments`].
pub fn attachment(raw: &[u8], index: usize) -> Option<Attachment> {
    parse_with(raw, |message| {
        message.attachments().nth(index).map(|part| Attachment {
            name: part.attachment_name().map(str::to_string),
            content_type: content_type_of(part),
            bytes: part.contents().to_vec(),
        })
    })
    .flatten()
}

fn parse_with<T>(raw: &[u8], read: impl FnOnce(&Message<'_>) -> T) -> Option<T> {
    catch_unwind(AssertUnwindSafe(|| {
        MessageParser::default()
            .parse(raw)
            .map(|message| read(&message))
    }))
    .ok()
    .flatten()
}

fn content_type_of(part: &mail_parser::MessagePart<'_>) -> String {
    match part.content_type() {
        Some(content_type) => match content_type.subtype() {
            Some(subtype) => format!("{}/{}", content_type.ctype(), subtype),
            None => content_type.ctype().to_string(),
        },
        None => "application/octet-stream".to_string(),
    }
}

fn format_addresses(address: Option<&Address<'_>>) -> String {
    let Some(address) = address else {
        return String::new();
    };
    address
        .iter()
        .map(|addr| match (addr.name(), addr.address()) {
            (Some(name), Some(email)) => format!("{name} <{email}>"),
            (None, Some(email)) => email.to_string(),
            (Some(name), None) => name.to_string(),
            (None, None) => String::new(),
        })
        .filter(|text| !text.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGE: &[u8] = b"From: Dr Ada <ada@trust.nhs.uk>\r\n\
To: Pat <pat@example.org>\r\n\
Subject: Results\r\n\
Date: Thu, 3 Dec 2026 10:00:00 +0000\r\n\
Message-ID: <m1@trust.nhs.uk>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=b1\r\n\
\r\n\
--b1\r\n\
Content-Type: multipart/alternative; boundary=b2\r\n\
\r\n\
--b2\r\n\
Content-Type: text/plain\r\n\
\r\n\
Your results are normal.\r\n\
--b2\r\n\
Content-Type: text/html\r\n\
\r\n\
<p onclick=x()>Your results are <b>normal</b>.</p><script>x()</script>\r\n\
--b2--\r\n\
--b1\r\n\
Content-Type: application/pdf\r\n\
Content-Disposition: attachment; filename=\"=?UTF-8?B?csOpc3VsdGF0cy5wZGY=?=\"\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
JVBERi0xLjQK\r\n\
--b1--\r\n";

    #[test]
    fn view_has_headers_bodies_and_attachments() {
        let view = parse_view(MESSAGE).expect("parsable");
        assert_eq!(view.from, "Dr Ada <ada@trust.nhs.uk>");
        assert_eq!(view.to, "Pat <pat@example.org>");
        assert_eq!(view.subject, "Results");
        assert_eq!(view.message_id.as_deref(), Some("m1@trust.nhs.uk"));
        assert!(
            view.date.starts_with("2026-12-03T10:00:00"),
            "{}",
            view.date
        );
        assert_eq!(
            view.text.as_deref().map(str::trim),
            Some("Your results are normal.")
        );
        let html = view.html.expect("html part");
        assert!(html.contains("<b>normal</b>"), "{html}");
        assert!(!html.contains("script"), "{html}");
        assert!(!html.contains("onclick"), "{html}");
        assert_eq!(view.attachments.len(), 1);
        assert_eq!(view.attachments[0].name, "résultats.pdf");
        assert_eq!(view.attachments[0].content_type, "application/pdf");
        assert_eq!(view.attachments[0].size, 9);
    }

    #[test]
    fn attachment_is_decoded() {
        let file = attachment(MESSAGE, 0).expect("attachment 0");
        assert_eq!(file.bytes, b"%PDF-1.4\n");
        assert_eq!(file.name.as_deref(), Some("résultats.pdf"));
        assert!(attachment(MESSAGE, 1).is_none());
    }
}
