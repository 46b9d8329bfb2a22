//! The mail a `portal` recipient gets in place of the message: who sent it, from which
//! organisation, the portal link and the expiry. It contains nothing of the held message
//! (not even its subject), and the link carries only the random token. Also the optional
//! receipt to the original sender.

use askama::Template;
use mail_builder::MessageBuilder;
use mail_builder::headers::raw::Raw;

use super::HeldEnvelope;
use crate::config::Config;

/// Header that marks a notification or receipt sealgate wrote. Routing skips
/// classification for messages queued with the notification flag, and the header lets
/// receivers and tests tell these mails apart.
pub const NOTIFICATION_HEADER: &str = "X-Sealgate-Notification";

#[derive(Template)]
#[template(path = "mail/notification.txt", escape = "none")]
struct NotificationText<'a> {
    organisation: &'a str,
    sender: &'a str,
    link: &'a str,
    expires: &'a str,
    support_contact: &'a str,
}

#[derive(Template)]
#[template(path = "mail/notification.html")]
struct NotificationHtml<'a> {
    subject: &'a str,
    organisation: &'a str,
    sender: &'a str,
    link: &'a str,
    expires: &'a str,
    support_contact: &'a str,
    logo_url: &'a str,
    colour: &'a str,
}

#[derive(Template)]
#[template(path = "mail/sender_receipt.txt", escape = "none")]
struct ReceiptText<'a> {
    organisation: &'a str,
    recipient: &'a str,
    expires: &'a str,
    queue_id: &'a str,
}

/// The portal link for a token.
pub fn portal_link(config: &Config, token: &str) -> String {
    format!(
        "{}/m/{token}",
        config.portal.public_url(&config.server.hostname)
    )
}

/// Builds the notification to `envelope.recipient` for a held message that `token` opens
/// until `expires_at` (Unix milliseconds).
///
/// # Errors
///
/// A message when a template fails to render or the builder fails to write.
pub fn build_notification(
    config: &Config,
    envelope: &HeldEnvelope,
    token: &str,
    expires_at: i64,
) -> Result<Vec<u8>, String> {
    let hostname = &config.server.hostname;
    let portal = &config.portal;
    let organisation = portal.organisation_name(hostname);
    let subject = portal.subject(hostname);
    let link = portal_link(config, token);
    let expires = format_time(expires_at);
    let sender = if envelope.sender.is_empty() {
        "(no sender address)"
    } else {
        &envelope.sender
    };

    let text = NotificationText {
        organisation,
        sender,
        link: &link,
        expires: &expires,
        support_contact: &portal.support_contact,
    }
    .render()
    .map_err(|error| format!("notification text template failed: {error}"))?;
    let html = NotificationHtml {
        subject: &subject,
        organisation,
        sender,
        link: &link,
        expires: &expires,
        support_contact: &portal.support_contact,
        logo_url: &portal.logo_url,
        colour: &portal.colour,
    }
    .render()
    .map_err(|error| format!("notification HTML template failed: {error}"))?;

    let from = portal.from_address(hostname);
    MessageBuilder::new()
        .from((organisation, from.as_str()))
        .to(envelope.recipient.as_str())
        .subject(subject.as_str())
        .message_id(message_id(hostname))
        .header(NOTIFICATION_HEADER, Raw::new("notification"))
        .header("Auto-Submitted", Raw::new("auto-generated"))
        .text_body(text)
        .html_body(html)
        .write_to_vec()
        .map_err(|error| format!("failed to write the notification: {error}"))
}

/// Builds the receipt to `envelope.sender` saying that the message was held for
/// `envelope.recipient` until `expires_at` (Unix milliseconds).
///
/// # Errors
///
/// A message when the template fails to render or the builder fails to write.
pub fn build_sender_receipt(
    config: &Config,
    envelope: &HeldEnvelope,
    expires_at: i64,
) -> Result<Vec<u8>, String> {
    let hostname = &config.server.hostname;
    let organisation = config.portal.organisation_name(hostname);
    let expires = format_time(expires_at);
    let text = ReceiptText {
        organisation,
        recipient: &envelope.recipient,
        expires: &expires,
        queue_id: &envelope.queue_id,
    }
    .render()
    .map_err(|error| format!("sender receipt template failed: {error}"))?;
    let from = config.portal.from_address(hostname);
    MessageBuilder::new()
        .from((organisation, from.as_str()))
        .to(envelope.sender.as_str())
        .subject(format!(
            "Held for secure collection: {}",
            envelope.recipient
        ))
        .message_id(message_id(hostname))
        .header(NOTIFICATION_HEADER, Raw::new("sender-receipt"))
        .header("Auto-Submitted", Raw::new("auto-generated"))
        .text_body(text)
        .write_to_vec()
        .map_err(|error| format!("failed to write the sender receipt: {error}"))
}

fn message_id(hostname: &str) -> String {
    format!("{:032x}@{hostname}", rand::random::<u128>())
}

/// Formats Unix milliseconds as `2026-12-03 14:05 UTC`.
fn format_time(millis: i64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    time::OffsetDateTime::from_unix_timestamp(millis / 1000)
        .ok()
        .and_then(|moment| moment.format(&format).ok())
        .unwrap_or_else(|| "an unknown date".into())
}
