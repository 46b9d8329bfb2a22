//! `[store]` (the encrypted hold store) and `[portal]` (notification branding and the portal
//! listener).

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigDuration, ConfigError, is_domain_name};

/// `[store]`: the encrypted hold store for `portal` mail.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// How long a held message can be collected. After that its content and key are
    /// deleted and only the record stays, in state `expired`. Default: `30d`.
    pub retention: ConfigDuration,
    /// Id of the master key (`keys/store-master-<id>.key`) that wraps the keys of new
    /// messages. Older keys stay in use for reading. Default: the highest id found.
    pub master_key_id: Option<u32>,
}

/// `[portal]`: what recipients see, in the notification and on the portal.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PortalConfig {
    /// Name of the sending organisation, shown in notifications and on the portal.
    /// Default: `server.hostname` when empty.
    pub organisation: String,
    /// HTTPS URL of a logo for the HTML notification; none when empty. Default: empty.
    pub logo_url: String,
    /// Contact for help, such as a phone number or an address, shown in notifications
    /// when set. Default: empty.
    pub support_contact: String,
    /// Accent colour of the HTML notification, as `#rrggbb`. Default: `#005eb8`.
    pub colour: String,
    /// Public URL of the portal, without a trailing slash; the link in a notification is
    /// `{base_url}/m/{token}`. Default: `https://{server.hostname}:8443` when empty.
    pub base_url: String,
    /// From: address and envelope sender of notifications and sender receipts.
    /// Default: `no-reply@{server.hostname}` when empty.
    pub from: String,
    /// Subject of the notification; `{organisation}` is replaced by the organisation's
    /// name. The held message's own subject is never used. Default: `You have a secure
    /// message from {organisation}`.
    pub notification_subject: String,
    /// Also mail the original sender a short receipt naming the recipient and the expiry.
    /// Default: false.
    pub sender_receipt: bool,

    // Listener settings
    /// Address the portal's HTTPS listener binds to. Default: `127.0.0.1:8443`.
    pub listen: SocketAddr,
    /// Serve HTTPS with the `inbound` TLS certificate; plain HTTP only behind a TLS proxy.
    /// Default: true.
    pub tls: bool,
    /// Digits in a one-time passcode. Default: 6.
    pub passcode_digits: u32,
    /// How long a passcode stays valid. Default: `15m`.
    pub passcode_lifetime: ConfigDuration,
    /// Wrong passcodes before the passcode is cleared and a new one must be sent.
    /// Default: 5.
    pub max_passcode_attempts: u32,
    /// How long a recipient stays signed in after entering a passcode. Default: `15m`.
    pub session_lifetime: ConfigDuration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            retention: ConfigDuration::secs(30 * 86_400),
            master_key_id: None,
        }
    }
}

impl Default for PortalConfig {
    fn default() -> Self {
        PortalConfig {
            organisation: String::new(),
            logo_url: String::new(),
            support_contact: String::new(),
            colour: "#005eb8".into(),
            base_url: String::new(),
            from: String::new(),
            notification_subject: "You have a secure message from {organisation}".into(),
            sender_receipt: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            tls: true,
            passcode_digits: 6,
            passcode_lifetime: ConfigDuration::secs(15 * 60),
            max_passcode_attempts: 5,
            session_lifetime: ConfigDuration::secs(15 * 60),
        }
    }
}

impl StoreConfig {
    pub(crate) fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        if self.retention.0.as_secs() < 3600 {
            return Err(invalid(
                path,
                "store.retention",
                format!("{:?}", self.retention.to_string()),
                "must be at least 1h",
            ));
        }
        if self.master_key_id == Some(0) {
            return Err(invalid(
                path,
                "store.master_key_id",
                "0".into(),
                "key ids start at 1",
            ));
        }
        Ok(())
    }
}

impl PortalConfig {
    pub(crate) fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let text_fields = [
            ("portal.organisation", &self.organisation),
            ("portal.support_contact", &self.support_contact),
            ("portal.notification_subject", &self.notification_subject),
        ];
        for (key, value) in text_fields {
            if value.chars().any(char::is_control) {
                return Err(invalid(
                    path,
                    key,
                    format!("{value:?}"),
                    "must not contain control characters",
                ));
            }
        }
        if !self.logo_url.is_empty() && !is_https_url(&self.logo_url) {
            return Err(invalid(
                path,
                "portal.logo_url",
                format!("{:?}", self.logo_url),
                "expected an https:// URL",
            ));
        }
        if !self.base_url.is_empty()
            && (!is_web_url(&self.base_url) || self.base_url.ends_with('/'))
        {
            return Err(invalid(
                path,
                "portal.base_url",
                format!("{:?}", self.base_url),
                "expected an https:// or http:// URL without a trailing slash",
            ));
        }
        if !is_hex_colour(&self.colour) {
            return Err(invalid(
                path,
                "portal.colour",
                format!("{:?}", self.colour),
                "expected a colour such as #005eb8",
            ));
        }
        let from_domain = self.from.rsplit_once('@').map(|(_, domain)| domain);
        if !self.from.is_empty() && !from_domain.is_some_and(is_domain_name) {
            return Err(invalid(
                path,
                "portal.from",
                format!("{:?}", self.from),
                "expected an address such as no-reply@example.org",
            ));
        }
        if !(6..=8).contains(&self.passcode_digits) {
            return Err(invalid(
                path,
                "portal.passcode_digits",
                self.passcode_digits.to_string(),
                "must be between 6 and 8",
            ));
        }
        if self.max_passcode_attempts == 0 {
            return Err(invalid(
                path,
                "portal.max_passcode_attempts",
                "0".into(),
                "must be at least 1",
            ));
        }
        for (key, duration) in [
            ("portal.passcode_lifetime", self.passcode_lifetime),
            ("portal.session_lifetime", self.session_lifetime),
        ] {
            if duration.0.is_zero() {
                return Err(invalid(
                    path,
                    key,
                    format!("{:?}", duration.to_string()),
                    "must not be 0",
                ));
            }
        }
        Ok(())
    }

    /// The organisation's name, or `hostname` when none is configured.
    pub fn organisation_name<'a>(&'a self, hostname: &'a str) -> &'a str {
        if self.organisation.is_empty() {
            hostname
        } else {
            &self.organisation
        }
    }

    /// The portal's public URL, without a trailing slash.
    pub fn public_url(&self, hostname: &str) -> String {
        if self.base_url.is_empty() {
            format!("https://{hostname}:{}", self.listen.port())
        } else {
            self.base_url.clone()
        }
    }

    /// The address notifications are sent from.
    pub fn from_address(&self, hostname: &str) -> String {
        if self.from.is_empty() {
            format!("no-reply@{hostname}")
        } else {
            self.from.clone()
        }
    }

    /// The notification's subject, with `{organisation}` filled in.
    pub fn subject(&self, hostname: &str) -> String {
        self.notification_subject
            .replace("{organisation}", self.organisation_name(hostname))
    }
}

fn invalid(path: &Path, key: &str, value: String, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_owned(),
        key: key.to_owned(),
        value,
        reason: reason.to_owned(),
    }
}

fn is_https_url(text: &str) -> bool {
    text.strip_prefix("https://")
        .is_some_and(|rest| !rest.is_empty() && is_url_text(rest))
}

pub(crate) fn is_web_url(text: &str) -> bool {
    let rest = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"));
    rest.is_some_and(|rest| !rest.is_empty() && is_url_text(rest))
}

/// True for URL text that needs no escaping inside an HTML attribute or a mail line.
fn is_url_text(text: &str) -> bool {
    text.bytes()
        .all(|byte| byte.is_ascii_graphic() && !matches!(byte, b'"' | b'\'' | b'<' | b'>' | b'\\'))
}

fn is_hex_colour(text: &str) -> bool {
    text.len() == 7
        && text.starts_with('#')
        && text[1..].bytes().all(|byte| byte.is_ascii_hexdigit())
}
