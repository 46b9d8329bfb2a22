//! Mails the portal writes: the passcode mail to the recipient and the recipient's reply to
//! the original sender. Both are handed to the spool, so the gateway's own routing applies.

use std::net::{Ipv4Addr, SocketAddr};

use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address;

use crate::envelope::{AcceptedMessage, ClientInfo};

/// A file the recipient attached to a reply.
#[derive(Clone, Debug)]
pub struct ReplyAttachment {
    /// File name, already cleaned of path parts.
    pub name: String,
    /// Content type as the browser declared it.
    pub content_type: String,
    /// The file's bytes.
    pub bytes: Vec<u8>,
}

/// Everything needed to build a reply.
#[derive(Clone, Debug)]
pub struct Reply<'a> {
    /// The verified recipient of the held message, who writes the reply.
    pub from: &'a str,
    /// The portal's own address, written as `Sender:` because the portal transmits the
    /// reply on the author's behalf. Its domain's DKIM key signs the reply when the
    /// author's domain has none.
    pub sender: &'a str,
    /// Envelope sender of the held message, who gets the reply.
    pub to: &'a str,
    /// Subject of the held message.
    pub original_subject: &'a str,
    /// `Message-ID` of the held message without angle brackets.
    pub original_message_id: Option<&'a str>,
    /// The text the recipient typed.
    pub text: &'a str,
    /// Attached files.
    pub attachments: Vec<ReplyAttachment>,
}

/// Builds the reply as an accepted message from the recipient to the original sender, with
/// `In-Reply-To` and `References` naming the original message.
///
/// # Errors
///
/// An I/O error from mail-builder's writer. Writing to a `Vec` does not fail in practice.
pub fn build_reply(reply: &Reply<'_>) -> std::io::Result<AcceptedMessage> {
    let subject = if reply
        .original_subject
        .to_ascii_lowercase()
        .starts_with("re:")
    {
        reply.original_subject.to_string()
    } else {
        format!("Re: {}", reply.original_subject)
    };
    let mut builder = MessageBuilder::new()
        .from(Address::new_address(None::<&str>, reply.from))
        .sender(Address::new_address(None::<&str>, reply.sender))
        .to(Address::new_address(None::<&str>, reply.to))
        .subject(subject)
        .header(
            "X-Sealgate-Portal",
            mail_builder::headers::raw::Raw::new("reply"),
        )
        .text_body(reply.text.replace("\r\n", "\n"));
    if let Some(id) = reply.original_message_id {
        builder = builder.in_reply_to(id).references(id);
    }
    for file in &reply.attachments {
        builder = builder.attachment(
            file.content_type.clone(),
            file.name.clone(),
            file.bytes.clone(),
        );
    }
    let body = builder.write_to_vec()?;
    Ok(accepted(reply.from, reply.to, body))
}

/// Builds the passcode mail: text only, with the passcode and nothing of the held message.
///
/// # Errors
///
/// As for [`build_reply`].
pub fn build_passcode_mail(
    from: &str,
    organisation: &str,
    recipient: &str,
    passcode: &str,
    lifetime_minutes: u64,
) -> std::io::Result<AcceptedMessage> {
    let text = format!(
        "Your passcode is {passcode}\n\n\
         Enter it on the secure message page to read a message that {organisation} sent \
         you. It is valid for {lifetime_minutes} minutes and works only once.\n\n\
         If you did not ask for a passcode, you can ignore this email. Never give the \
         passcode to anyone who calls or writes to you.\n"
    );
    let body = MessageBuilder::new()
        .from(Address::new_address(Some(organisation), from))
        .to(Address::new_address(None::<&str>, recipient))
        .subject(format!(
            "Your passcode for a secure message from {organisation}"
        ))
        .header(
            "Auto-Submitted",
            mail_builder::headers::raw::Raw::new("auto-generated"),
        )
        .text_body(text)
        .write_to_vec()?;
    Ok(accepted(from, recipient, body))
}

fn accepted(sender: &str, recipient: &str, body: Vec<u8>) -> AcceptedMessage {
    AcceptedMessage {
        sender: sender.to_string(),
        recipients: vec![recipient.to_string()],
        body_8bit: body.iter().any(|byte| *byte > 127),
        smtputf8: !sender.is_ascii() || !recipient.is_ascii(),
        body,
        // The portal is a local client of the queue, so it appears as loopback.
        client: ClientInfo {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            helo: "portal".to_string(),
            tls: None,
            auth_user: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_threads_to_original() {
        let message = build_reply(&Reply {
            from: "pat@example.org",
            sender: "no-reply@portal.trust.nhs.uk",
            to: "ada@trust.nhs.uk",
            original_subject: "Results",
            original_message_id: Some("m1@trust.nhs.uk"),
            text: "Thank you.\r\nPat",
            attachments: vec![ReplyAttachment {
                name: "note.txt".into(),
                content_type: "text/plain".into(),
                bytes: b"hello".to_vec(),
            }],
        })
        .expect("built");
        assert_eq!(message.sender, "pat@example.org");
        assert_eq!(message.recipients, ["ada@trust.nhs.uk"]);
        let text = String::from_utf8_lossy(&message.body);
        assert!(text.contains("In-Reply-To: <m1@trust.nhs.uk>"), "{text}");
        assert!(text.contains("References: <m1@trust.nhs.uk>"), "{text}");
        assert!(text.contains("Subject: Re: Results"), "{text}");
        assert!(text.contains("From: <pat@example.org>"), "{text}");
        assert!(
            text.contains("Sender: <no-reply@portal.trust.nhs.uk>"),
            "{text}"
        );
        assert!(text.contains("note.txt"), "{text}");
    }

    #[test]
    fn passcode_mail_contains_code_only() {
        let message = build_passcode_mail(
            "postmaster@trust.nhs.uk",
            "Trust",
            "pat@example.org",
            "123456",
            15,
        )
        .expect("built");
        let text = String::from_utf8_lossy(&message.body);
        assert!(text.contains("123456"), "{text}");
        assert!(text.contains("Content-Type: text/plain"), "{text}");
        assert_eq!(message.recipients, ["pat@example.org"]);
    }
}
