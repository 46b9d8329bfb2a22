//! S/MIME: recipient certificates and encryption (RFC 8551, CMS from RFC 5652).
//!
//! [`CertificateDirectory`] reads and checks the recipient certificates once.
//! [`Smime::encrypt_for`] turns one message into an S/MIME message for one recipient: the
//! original MIME body with its `Content-*` fields (CRLF line endings) is optionally signed,
//! then encrypted, and the outer message keeps only the routing and threading fields.
//!
//! Defaults follow what common clients read: RSA PKCS#1 v1.5 key transport and AES-256-CBC
//! in EnvelopedData. RSA-OAEP and AES-256-GCM (AuthEnvelopedData) are chosen per recipient
//! or domain in `[[smime.overrides]]`; OpenSSL reads them, but NSS, gpgsm 2.2 and the
//! `openssl smime` command do not. Only RSA recipient keys are supported. Messages that are
//! already encrypted are reported, never encrypted twice.

mod certs;
mod config;
mod encrypt;
mod entity;
mod ffi;

use std::path::PathBuf;

use openssl::asn1::Asn1Time;

pub use certs::{CertificateDirectory, RecipientCertificate, SkippedCertificate};
pub use config::{ContentCipher, KeyTransport, SmimeConfig, SmimeOverride, SubjectMode};

use crate::config::Config;
use encrypt::Signer;
use entity::ParsedMessage;

/// S/MIME message builder configured from `[smime]`: algorithms per recipient, the outer
/// subject, and the optional signature.
#[derive(Debug)]
pub struct Smime {
    subject: SubjectMode,
    key_transport: KeyTransport,
    content_cipher: ContentCipher,
    overrides: Vec<SmimeOverride>,
    signer: Option<Signer>,
}

/// Result of [`Smime::encrypt_for`].
#[derive(Debug, PartialEq, Eq)]
pub enum SmimeOutcome {
    /// The complete S/MIME message, CRLF line endings, ready for delivery.
    Encrypted(Vec<u8>),
    /// The message is already S/MIME enveloped or PGP/MIME encrypted. It is passed on with
    /// the same header fields an encrypted message keeps, and its body as it is.
    AlreadyEncrypted(Vec<u8>),
}

/// The algorithms used for one recipient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Algorithms {
    /// Key transport.
    pub key_transport: KeyTransport,
    /// Content cipher.
    pub content_cipher: ContentCipher,
}

/// A failure to load S/MIME files or to encrypt a message. "No certificate for this
/// recipient" is not an error: [`CertificateDirectory::lookup`] returns `None`.
#[derive(Debug, thiserror::Error)]
pub enum SmimeError {
    /// A file could not be read.
    #[error("failed to read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The recipient certificate folder exists but could not be listed.
    #[error("failed to read the certificate folder {path}: {source}")]
    ReadDirectory {
        /// The folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A trust anchor file contains no usable certificate.
    #[error("{path}: invalid trust anchor: {reason}")]
    TrustAnchor {
        /// The file.
        path: PathBuf,
        /// The problem.
        reason: String,
    },
    /// The signing certificate is missing, broken or not allowed to sign email.
    #[error("{path}: invalid signing certificate: {reason}")]
    SigningCertificate {
        /// The file.
        path: PathBuf,
        /// The problem.
        reason: String,
    },
    /// The signing key is broken, protected by a passphrase or does not match.
    #[error("{path}: invalid signing key: {reason}")]
    SigningKey {
        /// The file.
        path: PathBuf,
        /// The problem, never the key itself.
        reason: String,
    },
    /// The message header cannot be parsed.
    #[error("message for {recipient} cannot be encrypted: {reason}")]
    Malformed {
        /// The recipient address.
        recipient: String,
        /// The problem with the header.
        reason: String,
    },
    /// The certificate given for a recipient cannot be used for it now.
    #[error("certificate {path} for {recipient}: {reason}")]
    Certificate {
        /// The recipient address.
        recipient: String,
        /// The certificate file.
        path: PathBuf,
        /// Why it cannot be used, such as `expired at 2027-01-01T00:00:00Z`.
        reason: String,
    },
    /// OpenSSL failed to sign or encrypt.
    #[error("failed to {operation} the message for {recipient}: {source}")]
    Crypto {
        /// The recipient address.
        recipient: String,
        /// `sign` or `encrypt`.
        operation: &'static str,
        /// OpenSSL's errors.
        #[source]
        source: openssl::error::ErrorStack,
    },
}

impl Smime {
    /// Reads `[smime]` and, when signing is configured, loads the signing certificate and
    /// key (paths relative to `server.keys_dir`).
    ///
    /// # Errors
    ///
    /// [`SmimeError::Read`], [`SmimeError::SigningCertificate`] or
    /// [`SmimeError::SigningKey`] when signing is configured and its files are unusable.
    pub fn new(config: &Config) -> Result<Smime, SmimeError> {
        let smime = &config.smime;
        let signer = match (&smime.signing_certificate, &smime.signing_key) {
            (Some(certificate), Some(key)) => Some(Signer::load(
                &config.key_path(certificate),
                &config.key_path(key),
            )?),
            _ => None,
        };
        Ok(Smime {
            subject: smime.subject.clone(),
            key_transport: smime.key_transport,
            content_cipher: smime.content_cipher,
            overrides: smime.overrides.clone(),
            signer,
        })
    }

    /// True when messages are signed before encryption.
    pub fn signs(&self) -> bool {
        self.signer.is_some()
    }

    /// Returns the algorithms for `recipient`: an override for the address, else the first
    /// override whose domain pattern matches, else the configured defaults. Each override
    /// replaces only the settings it names.
    pub fn algorithms_for(&self, recipient: &str) -> Algorithms {
        let address = certs::normalize_address(recipient);
        let domain = address
            .as_deref()
            .and_then(|address| address.rsplit_once('@'))
            .map(|(_, domain)| domain);
        let by_address = self.overrides.iter().find(|entry| {
            entry.pattern.contains('@') && certs::normalize_address(&entry.pattern) == address
        });
        let by_domain = || {
            self.overrides.iter().find(|entry| {
                !entry.pattern.contains('@')
                    && domain.is_some_and(|domain| domain_matches(&entry.pattern, domain))
            })
        };
        let chosen = by_address.or_else(by_domain);
        Algorithms {
            key_transport: chosen
                .and_then(|entry| entry.key_transport)
                .unwrap_or(self.key_transport),
            content_cipher: chosen
                .and_then(|entry| entry.content_cipher)
                .unwrap_or(self.content_cipher),
        }
    }

    /// Encrypts `message` (a complete RFC 5322 message) to `certificate` for `recipient`.
    ///
    /// # Errors
    ///
    /// [`SmimeError::Certificate`] when the certificate does not name the recipient or is
    /// outside its validity period now, [`SmimeError::Malformed`] when the header cannot be
    /// parsed, and [`SmimeError::Crypto`] when OpenSSL fails.
    pub fn encrypt_for(
        &self,
        message: &[u8],
        recipient: &str,
        certificate: &RecipientCertificate,
    ) -> Result<SmimeOutcome, SmimeError> {
        self.encrypt_with_subject(message, recipient, certificate, None)
    }

    /// As [`Smime::encrypt_for`], with the outer subject replaced by `subject_override`
    /// when it is given, as when the subject itself holds sensitive content.
    ///
    /// # Errors
    ///
    /// As for [`Smime::encrypt_for`].
    pub fn encrypt_with_subject(
        &self,
        message: &[u8],
        recipient: &str,
        certificate: &RecipientCertificate,
        subject_override: Option<&str>,
    ) -> Result<SmimeOutcome, SmimeError> {
        let parsed = ParsedMessage::parse(message).map_err(|reason| SmimeError::Malformed {
            recipient: recipient.to_owned(),
            reason,
        })?;
        let subject = match subject_override {
            Some(text) => SubjectMode::Replace(text.to_owned()),
            None => self.subject.clone(),
        };
        if parsed.is_encrypted() {
            tracing::info!(recipient = ?recipient, "message is already encrypted");
            return Ok(SmimeOutcome::AlreadyEncrypted(
                parsed.passed_through(&subject),
            ));
        }

        let unusable = |reason: String| SmimeError::Certificate {
            recipient: recipient.to_owned(),
            path: certificate.path().to_owned(),
            reason,
        };
        if !certificate.names(recipient) {
            return Err(unusable(format!(
                "does not name the recipient (it names {})",
                certificate.addresses().join(", ")
            )));
        }
        let now = Asn1Time::days_from_now(0).expect("the current time converts to ASN.1");
        certs::check_validity(certificate.x509(), &now).map_err(unusable)?;

        let crypto_error = |operation| {
            move |source| SmimeError::Crypto {
                recipient: recipient.to_owned(),
                operation,
                source,
            }
        };
        let mut content = parsed.inner_entity();
        if let Some(signer) = &self.signer {
            content = signer.sign(&content).map_err(crypto_error("sign"))?;
        }
        let algorithms = self.algorithms_for(recipient);
        let der = encrypt::envelope(
            certificate.x509(),
            &content,
            algorithms.key_transport,
            algorithms.content_cipher,
        )
        .map_err(crypto_error("encrypt"))?;

        // RFC 8551 §3.2.2 names AuthEnvelopedData `authEnveloped-data`.
        let smime_type = match algorithms.content_cipher {
            ContentCipher::Aes256Cbc => "enveloped-data",
            ContentCipher::Aes256Gcm => "authEnveloped-data",
        };
        tracing::debug!(
            recipient = ?recipient,
            certificate = %certificate.path().display(),
            key_transport = ?algorithms.key_transport,
            content_cipher = ?algorithms.content_cipher,
            signed = self.signer.is_some(),
            size = content.len(),
            "encrypted message"
        );
        Ok(SmimeOutcome::Encrypted(
            parsed.outer_message(&subject, smime_type, &der),
        ))
    }

    /// The subject text that replaces one that must not travel in clear: the configured
    /// replacement, or `Secure message`.
    pub fn replacement_subject(&self) -> String {
        match &self.subject {
            SubjectMode::Replace(text) => text.clone(),
            SubjectMode::Keep => "Secure message".into(),
        }
    }
}

/// True when `domain` (lowercase) equals `pattern` or is a subdomain of a `*.suffix` pattern.
fn domain_matches(pattern: &str, domain: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => domain
            .strip_suffix(suffix)
            .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        None => pattern == domain,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn smime(toml: &str) -> Smime {
        let config = Config::parse(toml, Path::new("test.toml")).unwrap();
        Smime::new(&config).unwrap()
    }

    #[test]
    fn defaults_apply_without_overrides() {
        let algorithms = smime("").algorithms_for("bob@partner.example");
        assert_eq!(algorithms.key_transport, KeyTransport::RsaPkcs1v15);
        assert_eq!(algorithms.content_cipher, ContentCipher::Aes256Cbc);
    }

    #[test]
    fn address_override_wins_over_domain() {
        let smime = smime(
            "[[smime.overrides]]\nmatch = \"partner.example\"\ncontent_cipher = \"aes-256-gcm\"\n\
             [[smime.overrides]]\nmatch = \"bob@partner.example\"\nkey_transport = \"rsa-oaep\"\n",
        );
        let bob = smime.algorithms_for("bob@Partner.Example");
        assert_eq!(bob.key_transport, KeyTransport::RsaOaep);
        assert_eq!(bob.content_cipher, ContentCipher::Aes256Cbc);
        let alice = smime.algorithms_for("alice@partner.example");
        assert_eq!(alice.key_transport, KeyTransport::RsaPkcs1v15);
        assert_eq!(alice.content_cipher, ContentCipher::Aes256Gcm);
    }

    #[test]
    fn wildcard_override_matches_subdomains_only() {
        let smime = smime(
            "[[smime.overrides]]\nmatch = \"*.partner.example\"\nkey_transport = \"rsa-oaep\"\n",
        );
        assert_eq!(
            smime.algorithms_for("a@mail.partner.example").key_transport,
            KeyTransport::RsaOaep
        );
        assert_eq!(
            smime.algorithms_for("a@partner.example").key_transport,
            KeyTransport::RsaPkcs1v15
        );
        assert_eq!(
            smime.algorithms_for("a@otherpartner.example").key_transport,
            KeyTransport::RsaPkcs1v15
        );
    }

    #[test]
    fn missing_signing_key_file_names_the_file() {
        let config = Config::parse(
            "[smime]\nsigning_certificate = \"absent.pem\"\nsigning_key = \"absent.key\"\n",
            Path::new("test.toml"),
        )
        .unwrap();
        let error = Smime::new(&config).unwrap_err();
        assert!(matches!(error, SmimeError::Read { .. }), "{error}");
        assert!(error.to_string().contains("absent.pem"), "{error}");
    }
}
