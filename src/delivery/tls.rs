//! TLS client configs for STARTTLS: one that verifies the chain against the web PKI roots
//! and `delivery.trust_anchors` and the name against the next hop, and one for
//! opportunistic TLS that accepts any certificate. Both use the ring provider and allow
//! TLS 1.2 and 1.3 only.

use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, ProtocolVersion, RootCertStore,
};
use tokio_rustls::TlsConnector;

use super::DeliveryError;
use super::dane::{DANE_MISMATCH, DaneVerifier, TlsaRecord};
use crate::config::Config;

/// The connectors a delivery may use, and what is needed to build per-host ones.
#[derive(Clone)]
pub(crate) struct TlsConnectors {
    /// Verifies the chain and the name; for [`crate::policy::TlsRequirement::Verified`].
    pub verified: TlsConnector,
    /// Accepts any certificate; for opportunistic TLS.
    pub unverified: TlsConnector,
    /// Verifies like `verified` and offers ALPN `http/1.1`; for MTA-STS policy fetches.
    pub https: TlsConnector,
    provider: Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
}

/// The result of certificate verification recorded by a probing connector.
pub(crate) type ProbeResult = Arc<Mutex<Option<String>>>;

impl TlsConnectors {
    /// Builds the connectors, reading every PEM file in `delivery.trust_anchors`.
    ///
    /// # Errors
    ///
    /// [`DeliveryError::TrustAnchorRead`] and [`DeliveryError::TrustAnchorInvalid`] name
    /// the file that failed; [`DeliveryError::Tls`] when rustls rejects the config.
    pub fn new(config: &Config) -> Result<TlsConnectors, DeliveryError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());

        let roots = Arc::new(trust_anchors(config)?);
        if roots.is_empty() {
            tracing::warn!(
                "delivery.webpki_roots is false and delivery.trust_anchors is empty: \
                 verified TLS will fail for every next hop"
            );
        }
        let verified = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(VERSIONS)?
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        let mut https = verified.clone();
        https.alpn_protocols = vec![b"http/1.1".to_vec()];

        let accept_any = AcceptAnyCertificate {
            algorithms: provider.signature_verification_algorithms,
        };
        let unverified = custom_config(&provider, Arc::new(accept_any))?;

        Ok(TlsConnectors {
            verified: TlsConnector::from(Arc::new(verified)),
            unverified: TlsConnector::from(Arc::new(unverified)),
            https: TlsConnector::from(Arc::new(https)),
            provider,
            roots,
        })
    }

    /// Builds a connector that accepts only a chain matching the DANE TLSA `records`.
    pub fn dane(&self, records: Vec<TlsaRecord>) -> Result<TlsConnector, DeliveryError> {
        let verifier = DaneVerifier::new(records, self.provider.clone());
        let config = custom_config(&self.provider, Arc::new(verifier))?;
        Ok(TlsConnector::from(Arc::new(config)))
    }

    /// Builds a connector that accepts any certificate, as opportunistic TLS does, but
    /// records whether verified TLS would have failed, for MTA-STS `testing` mode.
    pub fn probing(&self, tls_name: &str) -> Result<(TlsConnector, ProbeResult), DeliveryError> {
        let inner =
            WebPkiServerVerifier::builder_with_provider(self.roots.clone(), self.provider.clone())
                .build()
                .map_err(|error| DeliveryError::Tls(rustls::Error::General(error.to_string())))?;
        let result = ProbeResult::default();
        let verifier = ProbingVerifier {
            inner,
            tls_name: tls_name.to_owned(),
            result: result.clone(),
        };
        let config = custom_config(&self.provider, Arc::new(verifier))?;
        Ok((TlsConnector::from(Arc::new(config)), result))
    }
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn custom_config(
    provider: &Arc<CryptoProvider>,
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<ClientConfig, DeliveryError> {
    Ok(ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(VERSIONS)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

fn trust_anchors(config: &Config) -> Result<RootCertStore, DeliveryError> {
    let mut roots = RootCertStore::empty();
    if config.delivery.webpki_roots {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    for file in &config.delivery.trust_anchors {
        let path = config.key_path(file);
        let pem = std::fs::read(&path).map_err(|source| DeliveryError::TrustAnchorRead {
            path: path.clone(),
            source,
        })?;
        let invalid = |reason: String| DeliveryError::TrustAnchorInvalid {
            path: path.clone(),
            reason,
        };
        let mut found = 0;
        for certificate in CertificateDer::pem_slice_iter(&pem) {
            let certificate = certificate.map_err(|error| invalid(error.to_string()))?;
            roots
                .add(certificate)
                .map_err(|error| invalid(error.to_string()))?;
            found += 1;
        }
        if found == 0 {
            return Err(invalid("no PEM certificate found".into()));
        }
    }
    Ok(roots)
}

/// Names a TLS version as logs and `Received:` headers write it, such as `TLSv1.3`.
pub(crate) fn protocol_name(version: Option<ProtocolVersion>) -> String {
    match version {
        Some(ProtocolVersion::TLSv1_3) => "TLSv1.3".into(),
        Some(ProtocolVersion::TLSv1_2) => "TLSv1.2".into(),
        Some(other) => format!("{other:?}"),
        None => "unknown".into(),
    }
}

/// Describes a failed handshake in the words an operator searches for, such as
/// `TLS handshake failed: certificate expired`, never as Rust debug output.
pub(crate) fn describe_handshake_error(error: &mail_send::Error, tls_name: &str) -> String {
    let mail_send::Error::Tls(error) = error else {
        return match error {
            mail_send::Error::Timeout => "TLS handshake timed out".into(),
            mail_send::Error::InvalidTLSName => format!("invalid TLS name {tls_name}"),
            other => format!("TLS handshake failed: {other}"),
        };
    };
    let rustls::Error::InvalidCertificate(certificate) = error.as_ref() else {
        return format!("TLS handshake failed: {error}");
    };
    format!(
        "TLS handshake failed: {}",
        describe_certificate_error(certificate, tls_name)
    )
}

fn describe_certificate_error(error: &CertificateError, tls_name: &str) -> String {
    let text = match error {
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "certificate expired"
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "certificate not yet valid"
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            return format!("certificate not valid for name {tls_name}");
        }
        CertificateError::UnknownIssuer => "unknown issuer",
        CertificateError::Revoked => "certificate revoked",
        CertificateError::BadSignature => "bad certificate signature",
        CertificateError::BadEncoding => "certificate encoding invalid",
        CertificateError::UnhandledCriticalExtension => "unhandled critical extension",
        CertificateError::UnknownRevocationStatus => "unknown revocation status",
        CertificateError::ExpiredRevocationList
        | CertificateError::ExpiredRevocationListContext { .. } => "revocation list expired",
        CertificateError::UnsupportedSignatureAlgorithmContext { .. }
        | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
            "unsupported certificate signature algorithm"
        }
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "certificate not valid for TLS server authentication"
        }
        CertificateError::InvalidOcspResponse => "invalid OCSP response",
        CertificateError::ApplicationVerificationFailure => "certificate verification failed",
        // rustls-webpki 0.103 displays the errors that rustls does not map as variant names.
        CertificateError::Other(other) => {
            return match other.0.to_string().as_str() {
                "CaUsedAsEndEntity" => "CA certificate used as the server certificate".into(),
                "EndEntityUsedAsCa" => "server certificate used as a CA".into(),
                DANE_MISMATCH => "certificate does not match the DANE TLSA records".into(),
                name => format!("invalid certificate: {}", words_of(name)),
            };
        }
        other => return format!("invalid certificate: {}", words_of(&format!("{other:?}"))),
    };
    text.to_owned()
}

/// Turns a variant name such as `PathLenConstraintViolated` into lowercase words
/// (`path len constraint violated`), dropping any fields in brackets.
fn words_of(name: &str) -> String {
    let name = name.split(['(', ' ', '{']).next().unwrap_or(name);
    let mut words = String::with_capacity(name.len() + 8);
    for (index, ch) in name.chars().enumerate() {
        if ch.is_ascii_uppercase() && index > 0 {
            words.push(' ');
        }
        words.push(ch.to_ascii_lowercase());
    }
    words
}

/// Implements the handshake signature methods of `ServerCertVerifier` with the
/// `algorithms` field of the verifier: whatever the certificate check decides, the server
/// must prove that it has the certificate's private key.
macro_rules! handshake_signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            certificate: &rustls::pki_types::CertificateDer<'_>,
            signature: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                certificate,
                signature,
                &self.algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            certificate: &rustls::pki_types::CertificateDer<'_>,
            signature: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                certificate,
                signature,
                &self.algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    };
}
pub(crate) use handshake_signature_checks;

/// A verifier for opportunistic TLS (RFC 7435): any certificate is accepted, but the
/// handshake signature must still be made with the certificate's key.
#[derive(Debug)]
struct AcceptAnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    handshake_signature_checks!();
}

/// Accepts every certificate, like [`AcceptAnyCertificate`], and records the result that
/// the verifying check would have returned for it.
#[derive(Debug)]
struct ProbingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    tls_name: String,
    result: ProbeResult,
}

impl ServerCertVerifier for ProbingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let checked = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        if let Err(error) = checked {
            let detail = match &error {
                rustls::Error::InvalidCertificate(certificate) => {
                    describe_certificate_error(certificate, &self.tls_name)
                }
                other => other.to_string(),
            };
            if let Ok(mut result) = self.result.lock() {
                *result = Some(detail);
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner
            .verify_tls12_signature(message, certificate, signature)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner
            .verify_tls13_signature(message, certificate, signature)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_errors_are_described_in_words() {
        let cases = [
            (CertificateError::UnknownIssuer, "unknown issuer"),
            (CertificateError::Expired, "certificate expired"),
            (
                CertificateError::NotValidForName,
                "certificate not valid for name mx.example.org",
            ),
            (
                CertificateError::Other(rustls::OtherError(std::sync::Arc::new(
                    std::io::Error::other("PathLenConstraintViolated"),
                ))),
                "invalid certificate: path len constraint violated",
            ),
        ];
        for (error, expected) in cases {
            let error = mail_send::Error::Tls(Box::new(rustls::Error::InvalidCertificate(error)));
            let detail = describe_handshake_error(&error, "mx.example.org");
            assert_eq!(detail, format!("TLS handshake failed: {expected}"));
        }
    }
}
