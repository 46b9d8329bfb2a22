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
    /// Allow plain HTTP (`tls = false`) on a non-loopback `listen` address, where
    /// passcodes and messages would cross the network unencrypted unless something in
    /// front adds TLS. Plain HTTP on loopback needs no flag. Default: false.
    pub dangerous_allow_plain_http: bool,
    /// Digits in a one-time passcode. Default: 6.
    pub passcode_digits: u32,
    /// How long a passcode stays valid. Default: `15m`.
    pub passcode_lifetime: ConfigDuration,
    /// Wrong passcodes before the passcode is cleared, the cool-down starts and a new one
    /// must be sent. 1 to 10. Default: 5.
    pub max_passcode_attempts: u32,
    /// Minimum time between two passcode mails for one held message. Default: `1m`.
    pub passcode_resend_interval: ConfigDuration,
    /// Passcode mails allowed for one held message within `passcode_send_window`.
    /// Default: 5.
    pub max_passcode_sends: u32,
    /// Period over which `max_passcode_sends` counts, from the first mail of the period.
    /// Default: `1h`.
    pub passcode_send_window: ConfigDuration,
    /// Wait after `max_passcode_attempts` wrong passcodes before a new passcode may be
    /// mailed. Default: `15m`.
    pub lockout_cooldown: ConfigDuration,
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
            dangerous_allow_plain_http: false,
            passcode_digits: 6,
            passcode_lifetime: ConfigDuration::secs(15 * 60),
            max_passcode_attempts: 5,
            passcode_resend_interval: ConfigDuration::secs(60),
            max_passcode_sends: 5,
            passcode_send_window: ConfigDuration::secs(3600),
            lockout_cooldown: ConfigDuration::secs(15 * 60),
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
        if !(1..=10).contains(&self.max_passcode_attempts) {
            return Err(invalid(
                path,
                "portal.max_passcode_attempts",
                self.max_passcode_attempts.to_string(),
                "must be between 1 and 10",
            ));
        }
        if !(1..=100).contains(&self.max_passcode_sends) {
            return Err(invalid(
                path,
                "portal.max_passcode_sends",
                self.max_passcode_sends.to_string(),
                "must be between 1 and 100",
            ));
        }
        self.validate_durations(path)?;
        if let Err(reason) = crate::portal::check_listen_address(
            self.listen,
            self.tls,
            self.dangerous_allow_plain_http,
        ) {
            return Err(invalid(
                path,
                "portal.listen",
                format!("{:?}", self.listen.to_string()),
                reason,
            ));
        }
        Ok(())
    }

    fn validate_durations(&self, path: &Path) -> Result<(), ConfigError> {
        const DAY: u64 = 86_400;
        let bounded = [
            ("portal.passcode_lifetime", self.passcode_lifetime, DAY),
            ("portal.session_lifetime", self.session_lifetime, DAY),
            (
                "portal.passcode_send_window",
                self.passcode_send_window,
                DAY,
            ),
            ("portal.lockout_cooldown", self.lockout_cooldown, 7 * DAY),
        ];
        for (key, duration, max_secs) in bounded {
            let reason = if duration.0.is_zero() {
                "must not be 0".to_string()
            } else if duration.0.as_secs() > max_secs {
                format!("must be at most {}", ConfigDuration::secs(max_secs))
            } else {
                continue;
            };
            return Err(invalid(
                path,
                key,
                format!("{:?}", duration.to_string()),
                &reason,
            ));
        }
        if self.passcode_resend_interval.0 > self.passcode_send_window.0 {
            return Err(invalid(
                path,
                "portal.passcode_resend_interval",
                format!("{:?}", self.passcode_resend_interval.to_string()),
                "must not be longer than portal.passcode_send_window",
            ));
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    /// Parses `[portal]` lines and returns the error text, or `None` when valid.
    fn portal_error(lines: &str) -> Option<String> {
        let text = format!("[portal]\n{lines}\n");
        Config::parse(&text, Path::new("/etc/sealgate.toml"))
            .err()
            .map(|error| error.to_string())
    }

    #[test]
    fn portal_limits_are_validated() {
        let cases = [
            (
                "max_passcode_attempts = 0",
                "portal.max_passcode_attempts = 0",
            ),
            (
                "max_passcode_attempts = 11",
                "portal.max_passcode_attempts = 11",
            ),
            ("max_passcode_sends = 0", "portal.max_passcode_sends = 0"),
            (
                "passcode_lifetime = \"0s\"",
                "portal.passcode_lifetime = \"0s\"",
            ),
            (
                "session_lifetime = \"2d\"",
                "portal.session_lifetime = \"2d\"",
            ),
            (
                "lockout_cooldown = \"0s\"",
                "portal.lockout_cooldown = \"0s\"",
            ),
            (
                "passcode_send_window = \"0s\"",
                "portal.passcode_send_window = \"0s\"",
            ),
            (
                "passcode_resend_interval = \"2h\"",
                "portal.passcode_resend_interval = \"2h\"",
            ),
        ];
        for (line, expected) in cases {
            let error = portal_error(line).unwrap_or_else(|| panic!("{line} was accepted"));
            assert!(
                error.starts_with(&format!("/etc/sealgate.toml: {expected}: ")),
                "{line}: {error}"
            );
        }
        let valid = "max_passcode_attempts = 3\nmax_passcode_sends = 2\n\
                     passcode_resend_interval = \"30s\"\npasscode_send_window = \"10m\"\n\
                     lockout_cooldown = \"1h\"\nsession_lifetime = \"30m\"";
        assert_eq!(portal_error(valid), None);
    }

    #[test]
    fn plain_http_needs_loopback_or_flag() {
        let error = portal_error("listen = \"0.0.0.0:8080\"\ntls = false")
            .expect("plain HTTP on all addresses is rejected");
        assert!(
            error.starts_with("/etc/sealgate.toml: portal.listen = \"0.0.0.0:8080\": "),
            "{error}"
        );
        assert!(error.contains("dangerous_allow_plain_http"), "{error}");
        assert_eq!(
            portal_error(
                "listen = \"0.0.0.0:8080\"\ntls = false\ndangerous_allow_plain_http = true"
            ),
            None
        );
        assert_eq!(
            portal_error("listen = \"127.0.0.1:8080\"\ntls = false"),
            None
        );
        assert_eq!(portal_error("listen = \"[::1]:8080\"\ntls = false"), None);
        assert_eq!(portal_error("listen = \"0.0.0.0:8443\"\ntls = true"), None);
    }
}
