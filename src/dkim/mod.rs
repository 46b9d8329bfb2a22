//! DKIM signing (RFC 6376, Ed25519 from RFC 8463) of every message sealgate sends: relayed
//! mail, S/MIME messages, notifications, DSNs, receipts, notices and portal replies.
//!
//! The queue manager signs last, over the exact bytes that go on the wire: after S/MIME
//! encryption and after every header change. The signing domain is the From header's
//! domain or the nearest parent domain that has a `[[dkim]]` key, and every key of that
//! domain signs, so one domain can carry an RSA and an Ed25519 signature at once. Mail whose
//! From domain has no key leaves unsigned.
//!
//! Signatures use relaxed/relaxed canonicalisation, carry `t=` and, when configured, `x=`,
//! never `l=` (a body length lets anyone append text that still verifies), and sign From
//! twice so that a second From field added later breaks the signature (RFC 6376 §8.15).
//!
//! Verification of incoming mail is not done here: sealgate only sends.

mod key;

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use mail_auth::common::crypto::DkimKey;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigDuration, ConfigError, is_domain_name};

pub use key::{GeneratedKey, generate_key, public_key_record, record_for_key_file, split_txt};

/// Header fields signed when present. From is listed twice (oversigned). mail-auth also
/// adds each listed field that the message lacks to `h=`, so none of them can be added
/// after signing without breaking the signature (RFC 6376 §5.4).
pub const SIGNED_HEADERS: [&str; 14] = [
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "In-Reply-To",
    "References",
    "Reply-To",
    "Auto-Submitted",
    "From",
];

/// One `[[dkim]]` entry: a signing key for one domain and selector.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DkimKeyConfig {
    /// Signing domain (`d=`), such as `example.org`. Mail from this domain and its
    /// subdomains is signed with it unless a subdomain has keys of its own.
    pub domain: String,
    /// Selector (`s=`); the public key is published at `SELECTOR._domainkey.DOMAIN`.
    pub selector: String,
    /// Private key (PEM), relative to `server.keys_dir`.
    /// Default: `dkim/DOMAIN.SELECTOR.pem`, where `sealgate dkim generate` writes it.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// `rsa-sha256` (RSA, 2048 to 4096 bits) or `ed25519-sha256`. Default: `rsa-sha256`.
    #[serde(default)]
    pub algorithm: DkimAlgorithm,
    /// Signature lifetime written as `x=`; no expiry when not set.
    #[serde(default)]
    pub expire_after: Option<ConfigDuration>,
}

/// The signing algorithm of a key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DkimAlgorithm {
    /// RSA with SHA-256 (RFC 6376).
    #[default]
    RsaSha256,
    /// Ed25519 with SHA-256 (RFC 8463).
    Ed25519Sha256,
}

impl DkimAlgorithm {
    /// Returns the config and `a=` name, such as `rsa-sha256`.
    pub fn as_str(self) -> &'static str {
        match self {
            DkimAlgorithm::RsaSha256 => "rsa-sha256",
            DkimAlgorithm::Ed25519Sha256 => "ed25519-sha256",
        }
    }

    /// Returns the key type written as `k=` in the DNS record.
    pub fn key_type(self) -> &'static str {
        match self {
            DkimAlgorithm::RsaSha256 => "rsa",
            DkimAlgorithm::Ed25519Sha256 => "ed25519",
        }
    }
}

impl DkimKeyConfig {
    /// Returns the key file, relative to `server.keys_dir`.
    pub fn key_file(&self) -> PathBuf {
        self.key
            .clone()
            .unwrap_or_else(|| default_key_file(&self.domain, &self.selector))
    }
}

/// Returns `dkim/DOMAIN.SELECTOR.pem`, the file `sealgate dkim generate` writes.
pub fn default_key_file(domain: &str, selector: &str) -> PathBuf {
    PathBuf::from(format!(
        "dkim/{}.{}.pem",
        domain.to_ascii_lowercase(),
        selector.to_ascii_lowercase()
    ))
}

/// Checks the `[[dkim]]` entries: domain and selector syntax, no repeated pair.
pub(crate) fn validate(entries: &[DkimKeyConfig], path: &Path) -> Result<(), ConfigError> {
    let invalid = |key: String, value: &str, reason: &str| {
        Err(ConfigError::Invalid {
            path: path.to_owned(),
            key,
            value: format!("{value:?}"),
            reason: reason.to_owned(),
        })
    };
    for (index, entry) in entries.iter().enumerate() {
        if !is_domain_name(&entry.domain) || !entry.domain.contains('.') {
            return invalid(
                format!("dkim[{index}].domain"),
                &entry.domain,
                "expected a domain name such as example.org",
            );
        }
        // RFC 6376 §3.1: a selector is one or more dot-separated DNS labels.
        if !is_domain_name(&entry.selector) {
            return invalid(
                format!("dkim[{index}].selector"),
                &entry.selector,
                "expected letters, digits and hyphens, such as sel2026",
            );
        }
        if let Some(expiry) = &entry.expire_after
            && expiry.0.as_secs() == 0
        {
            return invalid(
                format!("dkim[{index}].expire_after"),
                &expiry.to_string(),
                "must be at least 1s; leave it out for no expiry",
            );
        }
        let repeated = entries[..index].iter().any(|earlier| {
            earlier.domain.eq_ignore_ascii_case(&entry.domain)
                && earlier.selector.eq_ignore_ascii_case(&entry.selector)
        });
        if repeated {
            return invalid(
                format!("dkim[{index}].selector"),
                &entry.selector,
                "this domain already has a key with this selector",
            );
        }
    }
    Ok(())
}

/// A DKIM setup that could not be loaded, or a key that could not be created.
#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    /// A key file could not be read.
    #[error("failed to read DKIM key {path}: {source}")]
    KeyRead {
        /// The file, resolved against `server.keys_dir`.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A key file contains no usable key of the configured algorithm.
    #[error("invalid DKIM key {path}: {reason}")]
    KeyInvalid {
        /// The file, resolved against `server.keys_dir`.
        path: PathBuf,
        /// The reason it was rejected.
        reason: String,
    },
    /// `dkim generate` found a file where it would write the key.
    #[error("{path} already exists; remove it or choose another selector")]
    KeyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// A new key could not be written.
    #[error("failed to write DKIM key {path}: {source}")]
    KeyWrite {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Key generation failed in the crypto library.
    #[error("failed to generate a DKIM key: {0}")]
    Generate(String),
    /// mail-auth could not sign a message.
    #[error("DKIM signing with {domain}/{selector} failed: {reason}")]
    Sign {
        /// Signing domain.
        domain: String,
        /// Selector.
        selector: String,
        /// mail-auth's error.
        reason: String,
    },
}

/// One loaded key, ready to sign.
struct SigningKey {
    selector: String,
    signer: DkimSigner<DkimKey, Done>,
}

/// The DKIM-Signature fields for one message, and which keys made them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DkimSignatures {
    /// The header fields, each ending in CRLF, to put before the message.
    pub fields: Vec<u8>,
    /// `DOMAIN/SELECTOR` of each signature, in field order; empty when unsigned.
    pub signers: Vec<String>,
}

impl DkimSignatures {
    /// Returns the `dkim=` value of the delivery log: `none`, or each `DOMAIN/SELECTOR`
    /// joined with `+`.
    pub fn log_value(&self) -> String {
        if self.signers.is_empty() {
            "none".into()
        } else {
            self.signers.join("+")
        }
    }

    /// Returns the message with the signature fields in front.
    pub fn apply(&self, message: &[u8]) -> Vec<u8> {
        let mut signed = Vec::with_capacity(self.fields.len() + message.len());
        signed.extend_from_slice(&self.fields);
        signed.extend_from_slice(message);
        signed
    }
}

/// Every configured signing key, by lowercase domain.
#[derive(Default)]
pub struct MessageSigner {
    domains: BTreeMap<String, Vec<SigningKey>>,
}

impl MessageSigner {
    /// Loads every `[[dkim]]` key.
    ///
    /// # Errors
    ///
    /// [`DkimError::KeyRead`] or [`DkimError::KeyInvalid`] for the first key file that
    /// cannot be used, naming the file.
    pub fn load(config: &Config) -> Result<MessageSigner, DkimError> {
        let mut domains: BTreeMap<String, Vec<SigningKey>> = BTreeMap::new();
        for entry in &config.dkim {
            let path = config.key_path(&entry.key_file());
            let loaded = key::load(&path, entry.algorithm)?;
            let domain = entry.domain.to_ascii_lowercase();
            let builder = DkimSigner::from_key(loaded.signing)
                .domain(domain.clone())
                .selector(entry.selector.clone())
                .headers(SIGNED_HEADERS)
                .header_canonicalization(Canonicalization::Relaxed)
                .body_canonicalization(Canonicalization::Relaxed);
            let signer = match &entry.expire_after {
                Some(expiry) => builder.expiration(expiry.0.as_secs()),
                None => builder,
            };
            tracing::info!(
                domain = %domain,
                selector = %entry.selector,
                algorithm = entry.algorithm.as_str(),
                path = %path.display(),
                "DKIM signing key loaded"
            );
            domains.entry(domain).or_default().push(SigningKey {
                selector: entry.selector.clone(),
                signer,
            });
        }
        Ok(MessageSigner { domains })
    }

    /// True when no key is configured.
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    /// Returns the domain whose keys sign mail from `author_domain`: the domain itself or
    /// its nearest parent with a key. Single-label names are never tried.
    pub fn signing_domain(&self, author_domain: &str) -> Option<&str> {
        let mut candidate = author_domain.trim_end_matches('.');
        while candidate.contains('.') {
            if let Some((domain, _)) = self.domains.get_key_value(candidate) {
                return Some(domain);
            }
            candidate = candidate.split_once('.').map_or("", |(_, parent)| parent);
        }
        None
    }

    /// Signs `message` with every key of its signing domain: the From domain's, or else
    /// the `Sender:` domain's (mail sent on the author's behalf, such as portal replies).
    /// A message for which neither has a key gets no signature.
    ///
    /// # Errors
    ///
    /// [`DkimError::Sign`] when mail-auth fails to sign.
    pub fn sign(&self, message: &[u8]) -> Result<DkimSignatures, DkimError> {
        if self.is_empty() {
            return Ok(DkimSignatures::default());
        }
        let domain = [author_domain(message), sender_domain(message)]
            .into_iter()
            .flatten()
            .find_map(|candidate| self.signing_domain(&candidate).map(str::to_owned));
        let Some(domain) = domain else {
            return Ok(DkimSignatures::default());
        };
        let domain = domain.as_str();
        let mut signatures = DkimSignatures::default();
        for key in self.domains.get(domain).into_iter().flatten() {
            let signature = key.signer.sign(message).map_err(|error| DkimError::Sign {
                domain: domain.to_owned(),
                selector: key.selector.clone(),
                reason: error.to_string(),
            })?;
            signatures
                .fields
                .extend_from_slice(signature.to_header().as_bytes());
            signatures
                .signers
                .push(format!("{domain}/{}", key.selector));
        }
        Ok(signatures)
    }
}

/// Returns the lowercase domain of the first From address, or `None` when the message has
/// no From address with a domain.
pub fn author_domain(message: &[u8]) -> Option<String> {
    header_domain(message, |parsed| parsed.from())
}

/// Returns the lowercase domain of the `Sender:` address, if there is one.
pub fn sender_domain(message: &[u8]) -> Option<String> {
    header_domain(message, |parsed| parsed.sender())
}

fn header_domain(
    message: &[u8],
    field: impl for<'a> Fn(&'a mail_parser::Message<'a>) -> Option<&'a mail_parser::Address<'a>>,
) -> Option<String> {
    // mail-parser promises not to panic, but fuzzers found panics in earlier 0.11
    // releases; a panic here means no domain, so the message leaves unsigned.
    let address = catch_unwind(AssertUnwindSafe(|| {
        let parsed = mail_parser::MessageParser::new().parse_headers(message)?;
        let address = field(&parsed)?.first()?.address()?.to_owned();
        Some(address)
    }))
    .ok()??;
    let (_, domain) = address.rsplit_once('@')?;
    let domain = domain.trim().to_ascii_lowercase();
    (!domain.is_empty()).then_some(domain)
}

#[cfg(test)]
mod tests;
