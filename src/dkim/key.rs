//! DKIM key files: loading for signing, creating with `sealgate dkim generate`, and the
//! public key record each key needs in DNS.
//!
//! RSA keys are read and created with OpenSSL, because ring cannot create RSA keys; they
//! are PEM, PKCS#8 or PKCS#1. Ed25519 keys are created with ring and stored as PKCS#8 PEM;
//! files from `openssl genpkey -algorithm ed25519` load as well.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256};
use openssl::pkey::{Id, PKey};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::{DkimAlgorithm, DkimError};

/// RSA sizes accepted for signing. RFC 8301 §3.2 requires at least 1024 bits and
/// recommends 2048, and ring signs with at most 4096.
const RSA_BITS: std::ops::RangeInclusive<u32> = 2048..=4096;

/// Size of the RSA keys `sealgate dkim generate` creates.
const GENERATED_RSA_BITS: u32 = 2048;

/// A key read from its file.
pub(super) struct LoadedKey {
    /// The key mail-auth signs with.
    pub signing: DkimKey,
    /// The `p=` bytes of its DNS record.
    pub public_key: Vec<u8>,
}

/// Reads a key file and checks that it contains a key of `algorithm`.
pub(super) fn load(path: &Path, algorithm: DkimAlgorithm) -> Result<LoadedKey, DkimError> {
    let pem = std::fs::read(path).map_err(|source| DkimError::KeyRead {
        path: path.to_owned(),
        source,
    })?;
    let invalid = |reason: String| DkimError::KeyInvalid {
        path: path.to_owned(),
        reason,
    };
    match algorithm {
        DkimAlgorithm::RsaSha256 => {
            let key = PKey::private_key_from_pem(&pem).map_err(|error| {
                if is_ed25519(&pem) {
                    invalid("expected an RSA key for rsa-sha256, got an Ed25519 key".into())
                } else {
                    invalid(format!("not a PEM private key: {error}"))
                }
            })?;
            if key.id() != Id::RSA {
                return Err(invalid(format!(
                    "expected an RSA key for rsa-sha256, got {}",
                    key_kind(key.id())
                )));
            }
            if !RSA_BITS.contains(&key.bits()) {
                return Err(invalid(format!(
                    "RSA key has {} bits, expected {} to {}",
                    key.bits(),
                    RSA_BITS.start(),
                    RSA_BITS.end()
                )));
            }
            let pkcs8 = key
                .private_key_to_pkcs8()
                .map_err(|error| invalid(error.to_string()))?;
            let public_key = key
                .public_key_to_der()
                .map_err(|error| invalid(error.to_string()))?;
            let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8));
            let signing =
                RsaKey::<Sha256>::from_key_der(der).map_err(|error| invalid(error.to_string()))?;
            Ok(LoadedKey {
                signing: DkimKey::Rsa(signing),
                public_key,
            })
        }
        DkimAlgorithm::Ed25519Sha256 => {
            let der = match PrivateKeyDer::from_pem_slice(&pem) {
                Ok(PrivateKeyDer::Pkcs8(der)) => der,
                Ok(_) => {
                    return Err(invalid(
                        "expected a PKCS#8 Ed25519 key (BEGIN PRIVATE KEY)".into(),
                    ));
                }
                Err(error) => return Err(invalid(format!("not a PEM private key: {error}"))),
            };
            let signing = Ed25519Key::from_pkcs8_maybe_unchecked_der(der.secret_pkcs8_der())
                .map_err(|_| invalid("not an Ed25519 key for ed25519-sha256".into()))?;
            let public_key = signing.public_key();
            Ok(LoadedKey {
                signing: DkimKey::Ed25519(signing),
                public_key,
            })
        }
    }
}

/// True when `pem` contains a PKCS#8 Ed25519 key, including the version 2 form that
/// OpenSSL 3.0 does not read.
fn is_ed25519(pem: &[u8]) -> bool {
    match PrivateKeyDer::from_pem_slice(pem) {
        Ok(PrivateKeyDer::Pkcs8(der)) => {
            Ed25519Key::from_pkcs8_maybe_unchecked_der(der.secret_pkcs8_der()).is_ok()
        }
        _ => false,
    }
}

fn key_kind(id: Id) -> String {
    match id {
        Id::ED25519 => "an Ed25519 key".into(),
        Id::EC => "an EC key".into(),
        Id::DSA => "a DSA key".into(),
        other => format!("key type {}", other.as_raw()),
    }
}

/// Returns the TXT record text for a public key: `v=DKIM1; k=...; p=...` (RFC 6376
/// §3.6.1). RSA keys are SubjectPublicKeyInfo, Ed25519 keys the raw 32 bytes (RFC 8463 §4).
pub fn public_key_record(algorithm: DkimAlgorithm, public_key: &[u8]) -> String {
    format!(
        "v=DKIM1; k={}; p={}",
        algorithm.key_type(),
        STANDARD.encode(public_key)
    )
}

/// Reads the key file of a `[[dkim]]` entry and returns its public key record text.
///
/// # Errors
///
/// As for [`super::MessageSigner::load`].
pub fn record_for_key_file(path: &Path, algorithm: DkimAlgorithm) -> Result<String, DkimError> {
    let loaded = load(path, algorithm)?;
    Ok(public_key_record(algorithm, &loaded.public_key))
}

/// Splits TXT record text into character-strings of at most 255 bytes (RFC 1035 §3.3),
/// as a record longer than that must be published. The text is ASCII, so every split
/// falls on a character boundary.
pub fn split_txt(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut rest = text;
    while rest.len() > 255 {
        let (head, tail) = rest.split_at(255);
        parts.push(head);
        rest = tail;
    }
    parts.push(rest);
    parts
}

/// A key written by [`generate_key`].
pub struct GeneratedKey {
    /// The new file.
    pub path: PathBuf,
    /// The TXT record text to publish at `SELECTOR._domainkey.DOMAIN`.
    pub record: String,
}

/// Creates a key of `algorithm` at `path` with mode 0600, creating its folder with mode
/// 0700. An existing file is never replaced.
///
/// # Errors
///
/// [`DkimError::KeyExists`] when `path` exists, [`DkimError::Generate`] when the crypto
/// library fails, [`DkimError::KeyWrite`] when the folder or file cannot be written.
pub fn generate_key(path: &Path, algorithm: DkimAlgorithm) -> Result<GeneratedKey, DkimError> {
    if path.exists() {
        return Err(DkimError::KeyExists {
            path: path.to_owned(),
        });
    }
    let (pem, public_key) = match algorithm {
        DkimAlgorithm::RsaSha256 => {
            let failed = |error: openssl::error::ErrorStack| DkimError::Generate(error.to_string());
            let rsa = openssl::rsa::Rsa::generate(GENERATED_RSA_BITS).map_err(failed)?;
            let key = PKey::from_rsa(rsa).map_err(failed)?;
            let pem = key.private_key_to_pem_pkcs8().map_err(failed)?;
            (pem, key.public_key_to_der().map_err(failed)?)
        }
        DkimAlgorithm::Ed25519Sha256 => {
            let pkcs8 = Ed25519Key::generate_pkcs8()
                .map_err(|error| DkimError::Generate(error.to_string()))?;
            let key = Ed25519Key::from_pkcs8_der(&pkcs8)
                .map_err(|error| DkimError::Generate(error.to_string()))?;
            let stored = ed25519_pkcs8_v1(&pkcs8).ok_or_else(|| {
                DkimError::Generate("ring returned an unexpected PKCS#8 layout".into())
            })?;
            (pem_encode("PRIVATE KEY", &stored), key.public_key())
        }
    };

    let write_error = |source| DkimError::KeyWrite {
        path: path.to_owned(),
        source,
    };
    if let Some(folder) = path.parent() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(folder)
            .map_err(write_error)?;
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(write_error)?;
    file.write_all(&pem).map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    Ok(GeneratedKey {
        path: path.to_owned(),
        record: public_key_record(algorithm, &public_key),
    })
}

/// The fixed DER before the 32-byte seed in ring's PKCS#8 version 2 Ed25519 document, and
/// the same for the version 1 form of RFC 8410 §7.
const ED25519_V2_PREFIX: [u8; 16] = [
    0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
const ED25519_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// Rewrites ring's PKCS#8 version 2 Ed25519 key as version 1 (seed only), the form that
/// OpenSSL 3.0 tools read as well; ring reads both. `None` when the layout is not ring's.
fn ed25519_pkcs8_v1(v2: &[u8]) -> Option<Vec<u8>> {
    let seed = v2.strip_prefix(&ED25519_V2_PREFIX)?.get(..32)?;
    let mut v1 = ED25519_V1_PREFIX.to_vec();
    v1.extend_from_slice(seed);
    Some(v1)
}

/// Writes DER as PEM (RFC 7468), base64 in lines of 64 characters.
fn pem_encode(label: &str, der: &[u8]) -> Vec<u8> {
    let encoded = STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem.into_bytes()
}
