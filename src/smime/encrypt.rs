//! CMS operations: EnvelopedData or AuthEnvelopedData to one recipient, and the optional
//! detached signature that is wrapped, with the entity, in `multipart/signed` before
//! encryption.
//!
//! Signing uses a detached `multipart/signed` body (RFC 8551 §3.5.3) rather than opaque
//! `application/pkcs7-mime; smime-type=signed-data`. RFC 8551 §3.5 prefers it, a client that
//! cannot check the signature still shows the content, and OpenSSL verifies it in
//! `tests/smime.rs`. NSS `cmsutil` 3.87 (Thunderbird's library) and gpgsm 2.2 read detached
//! signatures too, as measured when the dependencies were chosen; Outlook is not tested here.

use std::path::Path;

use openssl::cms::{CMSOptions, CmsContentInfo};
use openssl::pkey::{PKey, Private};
use openssl::stack::Stack;
use openssl::symm::Cipher;
use openssl::x509::{X509, X509ExtendedKeyUsage, X509KeyUsage, X509Ref};
use rand::Rng;

use super::certs::{check_validity, format_time, to_offset_date_time};
use super::entity::base64_lines;
use super::{ContentCipher, KeyTransport, SmimeError, ffi};

/// The organisation's signing certificate, its chain and its private key.
pub(crate) struct Signer {
    certificate: X509,
    chain: Stack<X509>,
    key: PKey<Private>,
}

impl std::fmt::Debug for Signer {
    /// Shows the certificate only: the private key never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("certificate", &self.certificate.subject_name())
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Loads a PEM certificate (further certificates in the file form the chain) and an
    /// unencrypted PEM private key, and checks that they belong together and that the
    /// certificate may sign email now.
    ///
    /// # Errors
    ///
    /// [`SmimeError::Read`] when a file cannot be read, [`SmimeError::SigningCertificate`]
    /// or [`SmimeError::SigningKey`] when a file does not parse or the pair is unusable.
    pub(crate) fn load(certificate_path: &Path, key_path: &Path) -> Result<Signer, SmimeError> {
        let invalid_certificate = |reason: String| SmimeError::SigningCertificate {
            path: certificate_path.to_owned(),
            reason,
        };
        let invalid_key = |reason: String| SmimeError::SigningKey {
            path: key_path.to_owned(),
            reason,
        };

        let pem = read(certificate_path)?;
        let mut certificates = X509::stack_from_pem(&pem)
            .map_err(|error| invalid_certificate(format!("invalid PEM: {error}")))?
            .into_iter();
        let certificate = certificates
            .next()
            .ok_or_else(|| invalid_certificate("no PEM certificate found".into()))?;
        let mut chain = Stack::new().expect("allocate a certificate stack");
        for extra in certificates {
            chain.push(extra).expect("push onto a certificate stack");
        }

        // The key bytes are never part of an error message: only OpenSSL's reason is.
        let key = PKey::private_key_from_pem(&read(key_path)?).map_err(|error| {
            invalid_key(format!(
                "not an unencrypted PEM private key ({error}); passphrases are not supported"
            ))
        })?;
        let public = certificate
            .public_key()
            .map_err(|error| invalid_certificate(format!("unreadable public key: {error}")))?;
        if !public.public_eq(&key) {
            return Err(invalid_key(format!(
                "does not match the certificate in {}",
                certificate_path.display()
            )));
        }

        check_signing_use(&certificate).map_err(invalid_certificate)?;
        let now =
            openssl::asn1::Asn1Time::days_from_now(0).expect("the current time converts to ASN.1");
        check_validity(&certificate, &now).map_err(invalid_certificate)?;
        tracing::info!(
            certificate = %certificate_path.display(),
            not_after = %format_time(to_offset_date_time(certificate.not_after())),
            "S/MIME signing enabled"
        );
        Ok(Signer {
            certificate,
            chain,
            key,
        })
    }

    /// Signs `entity` and returns a `multipart/signed` entity that contains it unchanged as
    /// its first part and the DER signature, base64, as its second.
    pub(crate) fn sign(&self, entity: &[u8]) -> Result<Vec<u8>, openssl::error::ErrorStack> {
        // CMS_sign picks the key's default digest, which is SHA-256 for RSA in OpenSSL 3.
        let signature = CmsContentInfo::sign(
            Some(&self.certificate),
            Some(&self.key),
            Some(&self.chain),
            Some(entity),
            CMSOptions::DETACHED | CMSOptions::BINARY,
        )?
        .to_der()?;

        let boundary = unused_boundary(entity);
        let mut signed = Vec::with_capacity(entity.len() + signature.len() * 2 + 512);
        signed.extend_from_slice(
            format!(
                "Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; \
                 micalg=sha-256;\r\n boundary=\"{boundary}\"\r\n\r\n"
            )
            .as_bytes(),
        );
        signed.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        signed.extend_from_slice(entity);
        // The CRLF before a boundary belongs to the boundary (RFC 2046 §5.1.1), so the
        // signed part is exactly `entity`.
        signed.extend_from_slice(format!("\r\n--{boundary}\r\n").as_bytes());
        signed.extend_from_slice(
            b"Content-Type: application/pkcs7-signature; name=\"smime.p7s\"\r\n\
              Content-Transfer-Encoding: base64\r\n\
              Content-Disposition: attachment; filename=\"smime.p7s\"\r\n\r\n",
        );
        signed.extend_from_slice(&base64_lines(&signature));
        signed.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        Ok(signed)
    }
}

/// Encrypts `data` to `recipient` and returns the DER ContentInfo: EnvelopedData for
/// AES-256-CBC, AuthEnvelopedData for AES-256-GCM.
pub(crate) fn envelope(
    recipient: &X509Ref,
    data: &[u8],
    key_transport: KeyTransport,
    content_cipher: ContentCipher,
) -> Result<Vec<u8>, openssl::error::ErrorStack> {
    let cipher = match content_cipher {
        ContentCipher::Aes256Cbc => Cipher::aes_256_cbc(),
        ContentCipher::Aes256Gcm => Cipher::aes_256_gcm(),
    };
    match key_transport {
        KeyTransport::RsaPkcs1v15 => {
            let mut recipients = Stack::new()?;
            recipients.push(recipient.to_owned())?;
            // OpenSSL 3 makes AuthEnvelopedData by itself when the cipher is AEAD.
            CmsContentInfo::encrypt(&recipients, data, cipher, CMSOptions::BINARY)?.to_der()
        }
        KeyTransport::RsaOaep => ffi::encrypt_rsa_oaep(recipient, data, cipher),
    }
}

/// Checks that key usage and extended key usage, where present, allow signing email.
fn check_signing_use(certificate: &X509Ref) -> Result<(), String> {
    if let Some(key_usage) = certificate.key_usage()
        && !key_usage.intersects(X509KeyUsage::DIGITAL_SIGNATURE | X509KeyUsage::NON_REPUDIATION)
    {
        return Err("key usage does not allow digitalSignature".into());
    }
    if let Some(extended) = certificate.extended_key_usage()
        && !extended.intersects(X509ExtendedKeyUsage::SMIME | X509ExtendedKeyUsage::ANYEKU)
    {
        return Err("extended key usage does not include email protection".into());
    }
    Ok(())
}

/// Returns a random MIME boundary that does not occur in `entity`.
fn unused_boundary(entity: &[u8]) -> String {
    loop {
        let random: u128 = rand::rng().random();
        let boundary = format!("sealgate-signed-{random:032x}");
        if !entity
            .windows(boundary.len())
            .any(|window| window == boundary.as_bytes())
        {
            return boundary;
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, SmimeError> {
    std::fs::read(path).map_err(|source| SmimeError::Read {
        path: path.to_owned(),
        source,
    })
}
