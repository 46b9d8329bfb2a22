//! DANE for SMTP (RFC 7672): which TLSA records can be used, and a certificate verifier
//! that checks the server's chain against them.
//!
//! Only DANE-TA(2) and DANE-EE(3) are usable. PKIX-TA(0) and PKIX-EE(1) are unusable for
//! SMTP (RFC 7672) and ignored, as are unknown selectors and matching types.
//! DANE-EE matches the server certificate alone and ignores its names and validity dates
//! (RFC 7672). DANE-TA accepts a chain that leads to a certificate in the chain
//! the server sent that matches a TLSA record. The server certificate must then name the
//! MX host and be within its validity dates (RFC 7672).

use std::sync::Arc;

use hickory_resolver::proto::rr::rdata::TLSA;
use hickory_resolver::proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};
use hickory_resolver::proto::rr::{RData, Record};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, RootCertStore};
use sha2::{Digest, Sha256, Sha512};

use super::tls::handshake_signature_checks;

/// Name of the error a [`DaneVerifier`] returns when no TLSA record matches, which
/// `tls::describe_handshake_error` turns into words.
pub(crate) const DANE_MISMATCH: &str = "DaneMismatch";

/// A TLSA record that RFC 7672 allows for SMTP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TlsaRecord {
    /// DANE-TA (true) or DANE-EE (false).
    trust_anchor: bool,
    /// SubjectPublicKeyInfo (true) or the full certificate (false).
    spki: bool,
    matching: Matching,
    data: Vec<u8>,
}

/// Keeps the usable TLSA records of an answer, in answer order.
pub(crate) fn usable_records(records: &[Record]) -> Vec<TlsaRecord> {
    records
        .iter()
        .filter_map(|record| match &record.data {
            RData::TLSA(tlsa) => usable(tlsa),
            _ => None,
        })
        .collect()
}

fn usable(tlsa: &TLSA) -> Option<TlsaRecord> {
    let trust_anchor = match tlsa.cert_usage {
        CertUsage::DaneTa => true,
        CertUsage::DaneEe => false,
        _ => return None,
    };
    let spki = match tlsa.selector {
        Selector::Full => false,
        Selector::Spki => true,
        _ => return None,
    };
    if !matches!(
        tlsa.matching,
        Matching::Raw | Matching::Sha256 | Matching::Sha512
    ) {
        return None;
    }
    Some(TlsaRecord {
        trust_anchor,
        spki,
        matching: tlsa.matching,
        data: tlsa.cert_data.clone(),
    })
}

impl TlsaRecord {
    /// Checks whether `certificate` (DER) is the one this record describes.
    fn matches(&self, certificate: &[u8]) -> bool {
        let selected = if self.spki {
            match subject_public_key_info(certificate) {
                Some(spki) => spki,
                None => return false,
            }
        } else {
            certificate
        };
        match self.matching {
            Matching::Raw => selected == self.data.as_slice(),
            Matching::Sha256 => Sha256::digest(selected).as_slice() == self.data.as_slice(),
            Matching::Sha512 => Sha512::digest(selected).as_slice() == self.data.as_slice(),
            _ => false,
        }
    }
}

/// Verifies a server's chain against a secure TLSA record set.
#[derive(Debug)]
pub(crate) struct DaneVerifier {
    records: Vec<TlsaRecord>,
    provider: Arc<CryptoProvider>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl DaneVerifier {
    /// Creates a verifier for `records`, which must all be usable.
    pub fn new(records: Vec<TlsaRecord>, provider: Arc<CryptoProvider>) -> DaneVerifier {
        let algorithms = provider.signature_verification_algorithms;
        DaneVerifier {
            records,
            provider,
            algorithms,
        }
    }

    /// Verifies the chain up to `anchor` and the name, as a DANE-TA record requires.
    fn verify_with_anchor(
        &self,
        anchor: &CertificateDer<'_>,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let mut roots = RootCertStore::empty();
        roots.add(anchor.clone().into_owned())?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|error| rustls::Error::General(error.to_string()))?;
        verifier
            .verify_server_cert(end_entity, intermediates, server_name, &[], now)
            .map(|_| ())
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let end_entity_matches = self
            .records
            .iter()
            .filter(|record| !record.trust_anchor)
            .any(|record| record.matches(end_entity));
        if end_entity_matches {
            return Ok(ServerCertVerified::assertion());
        }

        let mut chain_error = None;
        for anchor in intermediates {
            let is_anchor = self
                .records
                .iter()
                .filter(|record| record.trust_anchor)
                .any(|record| record.matches(anchor));
            if !is_anchor {
                continue;
            }
            match self.verify_with_anchor(anchor, end_entity, intermediates, server_name, now) {
                Ok(()) => return Ok(ServerCertVerified::assertion()),
                Err(error) => chain_error = Some(error),
            }
        }
        // A matching trust anchor whose chain failed reports why (expired, wrong name);
        // otherwise nothing matched at all.
        Err(chain_error.unwrap_or_else(|| {
            rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                Arc::new(std::io::Error::other(DANE_MISMATCH)),
            )))
        }))
    }

    handshake_signature_checks!();
}

/// Returns the DER bytes of the SubjectPublicKeyInfo inside an X.509 certificate, or
/// `None` when the DER is malformed. The certificate comes from the network, so every
/// length is checked.
pub(crate) fn subject_public_key_info(certificate: &[u8]) -> Option<&[u8]> {
    let (_, certificate_body, _) = der_element(certificate)?;
    let (_, tbs, _) = der_element(certificate_body)?;
    let mut rest = tbs;
    // An explicit version is the context tag [0]; it is absent in v1 certificates.
    if rest.first() == Some(&0xa0) {
        rest = der_element(rest)?.2;
    }
    // serialNumber, signature, issuer, validity, subject.
    for _ in 0..5 {
        rest = der_element(rest)?.2;
    }
    let (whole, _, _) = der_element(rest)?;
    Some(whole)
}

/// Splits one DER element off the front of `input`: (whole element, contents, rest).
fn der_element(input: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let first_length = *input.get(1)?;
    let (length, header) = if first_length < 0x80 {
        (usize::from(first_length), 2)
    } else {
        let count = usize::from(first_length & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let mut length = 0usize;
        for byte in input.get(2..2 + count)? {
            length = (length << 8) | usize::from(*byte);
        }
        (length, 2 + count)
    };
    let end = header.checked_add(length)?;
    let whole = input.get(..end)?;
    Some((whole, &whole[header..], &input[end..]))
}

#[cfg(test)]
mod tests {
    use rcgen::PublicKeyData;

    use super::*;

    #[test]
    fn spki_is_found_in_generated_certificate() {
        let certified = rcgen::generate_simple_self_signed(vec!["mx.example".into()]).unwrap();
        let spki = subject_public_key_info(certified.cert.der()).unwrap();
        assert_eq!(
            spki,
            certified.signing_key.subject_public_key_info().as_slice()
        );
    }

    #[test]
    fn malformed_der_has_no_spki() {
        for input in [
            &[][..],
            &[0x30],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            &[0x30, 0x05, 0x02],
        ] {
            assert_eq!(subject_public_key_info(input), None, "{input:?}");
        }
    }

    #[test]
    fn pkix_usages_are_unusable() {
        let data = vec![0u8; 32];
        let pkix_ta = TLSA::new(
            CertUsage::PkixTa,
            Selector::Spki,
            Matching::Sha256,
            data.clone(),
        );
        let pkix_ee = TLSA::new(
            CertUsage::PkixEe,
            Selector::Spki,
            Matching::Sha256,
            data.clone(),
        );
        let dane_ee = TLSA::new(CertUsage::DaneEe, Selector::Spki, Matching::Sha256, data);
        assert_eq!(usable(&pkix_ta), None);
        assert_eq!(usable(&pkix_ee), None);
        assert!(usable(&dane_ee).is_some());
    }
}
