//! `[smime]`: the recipient certificate folder, the algorithms used for each recipient, the
//! clear-text subject and the optional signing identity.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, is_domain_name, is_domain_pattern};

/// `[smime]`: S/MIME encryption for recipients with a known certificate.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmimeConfig {
    /// Folder of recipient certificates (PEM or DER, any file name, several certificates per
    /// PEM file allowed), relative to `server.keys_dir`. Default: `recipients`.
    pub certificates_dir: PathBuf,
    /// CA certificates (PEM files, relative to `server.keys_dir`) that every recipient
    /// certificate must chain to. When empty, no chain is checked. Default: `[]`.
    pub trust_anchors: Vec<PathBuf>,
    /// Subject of the encrypted message, which travels in clear text: `"keep"` or
    /// `{ replace = "text" }`. Default: `"keep"`.
    pub subject: SubjectMode,
    /// Key transport used unless an override matches. Default: `rsa-pkcs1`.
    pub key_transport: KeyTransport,
    /// Content cipher used unless an override matches. Default: `aes-256-cbc`.
    pub content_cipher: ContentCipher,
    /// Per-recipient or per-domain algorithm choices.
    pub overrides: Vec<SmimeOverride>,
    /// The organisation's signing certificate (PEM, relative to `server.keys_dir`). Further
    /// certificates in the file are sent along as the chain. Messages are signed before
    /// encryption when this and `signing_key` are set. Default: none.
    pub signing_certificate: Option<PathBuf>,
    /// Unencrypted PEM private key of `signing_certificate`, relative to `server.keys_dir`.
    /// Default: none.
    pub signing_key: Option<PathBuf>,
}

/// Text of the outer message's `Subject:` field.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SubjectMode {
    /// The original subject.
    #[default]
    Keep,
    /// This text in place of the original subject, which then travels only inside the
    /// encrypted part.
    Replace(String),
}

/// Algorithm that encrypts the content-encryption key to the recipient's RSA key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum KeyTransport {
    /// RSAES-PKCS1-v1_5 (RFC 8017 §7.2), the one every common S/MIME client reads.
    #[default]
    #[serde(rename = "rsa-pkcs1")]
    RsaPkcs1v15,
    /// RSAES-OAEP with SHA-256 and MGF1-SHA-256 (RFC 8017 §7.1, RFC 4055 §4.1).
    #[serde(rename = "rsa-oaep")]
    RsaOaep,
}

/// Symmetric cipher of the message content.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum ContentCipher {
    /// AES-256-CBC in EnvelopedData (RFC 5652 §6, RFC 3565).
    #[default]
    #[serde(rename = "aes-256-cbc")]
    Aes256Cbc,
    /// AES-256-GCM in AuthEnvelopedData (RFC 5083, RFC 5084).
    #[serde(rename = "aes-256-gcm")]
    Aes256Gcm,
}

/// One `[[smime.overrides]]` entry. An entry for an address wins over one for its domain;
/// otherwise the first matching entry in file order applies.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SmimeOverride {
    /// A recipient address (`bob@partner.example`), a domain (`partner.example`) or
    /// `*.suffix` for every subdomain of the suffix.
    #[serde(rename = "match")]
    pub pattern: String,
    /// Key transport for matching recipients. Default: `smime.key_transport`.
    pub key_transport: Option<KeyTransport>,
    /// Content cipher for matching recipients. Default: `smime.content_cipher`.
    pub content_cipher: Option<ContentCipher>,
}

impl Default for SmimeConfig {
    fn default() -> Self {
        SmimeConfig {
            certificates_dir: "recipients".into(),
            trust_anchors: Vec::new(),
            subject: SubjectMode::Keep,
            key_transport: KeyTransport::RsaPkcs1v15,
            content_cipher: ContentCipher::Aes256Cbc,
            overrides: Vec::new(),
            signing_certificate: None,
            signing_key: None,
        }
    }
}

impl SmimeConfig {
    /// Checks the values that their types cannot: paths, the subject text, override patterns
    /// and the signing pair.
    pub(crate) fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, value: String, reason: &str| {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                key,
                value,
                reason: reason.to_owned(),
            })
        };

        if self.certificates_dir.as_os_str().is_empty() {
            return invalid(
                "smime.certificates_dir".into(),
                "\"\"".into(),
                "must name a folder",
            );
        }
        for (index, anchor) in self.trust_anchors.iter().enumerate() {
            if anchor.as_os_str().is_empty() {
                return invalid(
                    format!("smime.trust_anchors[{index}]"),
                    "\"\"".into(),
                    "must name a PEM file",
                );
            }
        }
        if let SubjectMode::Replace(text) = &self.subject
            && !is_header_text(text)
        {
            return invalid(
                "smime.subject.replace".into(),
                format!("{text:?}"),
                "must be 1 to 900 characters of printable ASCII",
            );
        }
        for (index, entry) in self.overrides.iter().enumerate() {
            if !is_address(&entry.pattern) && !is_domain_pattern(&entry.pattern) {
                return invalid(
                    format!("smime.overrides[{index}].match"),
                    format!("{:?}", entry.pattern),
                    "expected an address, a domain name or *.suffix",
                );
            }
            if entry.key_transport.is_none() && entry.content_cipher.is_none() {
                return invalid(
                    format!("smime.overrides[{index}]"),
                    format!("{:?}", entry.pattern),
                    "set key_transport, content_cipher or both",
                );
            }
        }
        match (&self.signing_certificate, &self.signing_key) {
            (Some(_), None) => invalid(
                "smime.signing_key".into(),
                "none".into(),
                "required when smime.signing_certificate is set",
            ),
            (None, Some(_)) => invalid(
                "smime.signing_certificate".into(),
                "none".into(),
                "required when smime.signing_key is set",
            ),
            _ => Ok(()),
        }
    }
}

/// True for text that fits on one header line as it is: printable ASCII and spaces, with at
/// least one visible character, short enough to stay under RFC 5322's 998-octet line limit
/// after `Subject: `.
fn is_header_text(text: &str) -> bool {
    (1..=900).contains(&text.len())
        && text.bytes().all(|byte| (b' '..=b'~').contains(&byte))
        && !text.trim().is_empty()
}

/// True for `local@domain` with a non-empty local part and a valid domain name.
fn is_address(text: &str) -> bool {
    match text.rsplit_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !local
                    .bytes()
                    .any(|byte| byte.is_ascii_whitespace() || byte == b'@')
                && is_domain_name(domain)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/sealgate.toml"))
    }

    #[test]
    fn defaults_are_pkcs1_and_cbc() {
        let smime = parse("").unwrap().smime;
        assert_eq!(smime.certificates_dir, Path::new("recipients"));
        assert_eq!(smime.key_transport, KeyTransport::RsaPkcs1v15);
        assert_eq!(smime.content_cipher, ContentCipher::Aes256Cbc);
        assert_eq!(smime.subject, SubjectMode::Keep);
        assert!(smime.signing_certificate.is_none());
    }

    #[test]
    fn every_key_parses() {
        let config = parse(
            "[smime]\n\
             certificates_dir = \"certs\"\n\
             trust_anchors = [\"ca.pem\"]\n\
             subject = { replace = \"Encrypted message\" }\n\
             key_transport = \"rsa-oaep\"\n\
             content_cipher = \"aes-256-gcm\"\n\
             signing_certificate = \"org.pem\"\n\
             signing_key = \"org.key\"\n\
             [[smime.overrides]]\n\
             match = \"partner.example\"\n\
             content_cipher = \"aes-256-cbc\"\n",
        )
        .unwrap();
        let smime = config.smime;
        assert_eq!(
            smime.subject,
            SubjectMode::Replace("Encrypted message".into())
        );
        assert_eq!(smime.key_transport, KeyTransport::RsaOaep);
        assert_eq!(smime.content_cipher, ContentCipher::Aes256Gcm);
        assert_eq!(smime.overrides[0].pattern, "partner.example");
        assert_eq!(smime.overrides[0].key_transport, None);
        assert_eq!(
            smime.overrides[0].content_cipher,
            Some(ContentCipher::Aes256Cbc)
        );
    }

    #[test]
    fn unknown_cipher_names_key() {
        let error = parse("[smime]\ncontent_cipher = \"des\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("smime.content_cipher"), "{error}");
        assert!(error.contains("des"), "{error}");
    }

    #[test]
    fn unknown_smime_key_is_rejected() {
        let error = parse("[smime]\ncertificate_dir = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("certificate_dir"), "{error}");
    }

    #[test]
    fn subject_replacement_with_newline_is_rejected() {
        let error = parse("[smime]\nsubject = { replace = \"a\\r\\nBcc: x@y.test\" }\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("smime.subject.replace"), "{error}");
    }

    #[test]
    fn empty_subject_replacement_is_rejected() {
        let error = parse("[smime]\nsubject = { replace = \" \" }\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("smime.subject.replace"), "{error}");
    }

    #[test]
    fn bad_override_pattern_names_index() {
        let error = parse(
            "[[smime.overrides]]\nmatch = \"partner.example\"\nkey_transport = \"rsa-oaep\"\n\
             [[smime.overrides]]\nmatch = \"not a domain\"\nkey_transport = \"rsa-oaep\"\n",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            error,
            "/etc/sealgate.toml: smime.overrides[1].match = \"not a domain\": \
             expected an address, a domain name or *.suffix"
        );
    }

    #[test]
    fn override_for_address_is_accepted() {
        let config = parse(
            "[[smime.overrides]]\nmatch = \"bob@partner.example\"\nkey_transport = \"rsa-oaep\"\n",
        )
        .unwrap();
        assert_eq!(config.smime.overrides.len(), 1);
    }

    #[test]
    fn override_without_algorithm_is_rejected() {
        let error = parse("[[smime.overrides]]\nmatch = \"partner.example\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("smime.overrides[0]"), "{error}");
    }

    #[test]
    fn signing_certificate_without_key_is_rejected() {
        let error = parse("[smime]\nsigning_certificate = \"org.pem\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("smime.signing_key"), "{error}");
    }
}
