//! Recipient certificates: read from one folder, checked once at load, indexed by email
//! address.
//!
//! A certificate is used for encryption only when all of these hold:
//! - it is inside its validity period;
//! - its key usage, if present, allows key encipherment;
//! - its extended key usage, if present, includes email protection;
//! - its key is RSA of at least 2048 bits;
//! - it chains to a configured trust anchor, when any are configured.
//!
//! Every other certificate, and every file that contains no certificate, is skipped with a
//! reason. Revocation (CRL, OCSP) is not checked.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use openssl::asn1::{Asn1Time, Asn1TimeRef};
use openssl::nid::Nid;
use openssl::pkey::Id;
use openssl::stack::Stack;
use openssl::x509::store::{X509Store, X509StoreBuilder};
use openssl::x509::{
    X509, X509ExtendedKeyUsage, X509KeyUsage, X509NameRef, X509PurposeId, X509Ref, X509StoreContext,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::SmimeError;
use crate::config::Config;
use crate::policy::{CertificateLookup, CertificateSource};

/// Smallest RSA modulus accepted, in bits.
const MIN_RSA_BITS: u32 = 2048;

/// The recipient certificates found in `smime.certificates_dir`.
#[derive(Debug)]
pub struct CertificateDirectory {
    dir: PathBuf,
    found: bool,
    certificates: Vec<RecipientCertificate>,
    skipped: Vec<SkippedCertificate>,
    /// Normalised address to the index in `certificates` of the one that expires last.
    by_address: BTreeMap<String, usize>,
}

/// A certificate that passed every check at load.
#[derive(Clone, Debug)]
pub struct RecipientCertificate {
    certificate: X509,
    addresses: Vec<String>,
    path: PathBuf,
    subject: String,
    issuer: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

/// A file, or one certificate in a file, that is not used, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedCertificate {
    /// The file.
    pub path: PathBuf,
    /// The certificate's subject, when the file held a certificate that could be read.
    pub subject: Option<String>,
    /// Why it is not used, such as `expired at 2021-01-01T00:00:00Z`.
    pub reason: String,
    /// The addresses the certificate names, when it could be read.
    pub addresses: Vec<String>,
}

impl CertificateDirectory {
    /// Reads every file in `smime.certificates_dir` (relative to `server.keys_dir`) and keeps
    /// the certificates that pass the checks. Skipped files and certificates are logged and
    /// kept in [`CertificateDirectory::skipped`]. Names starting with `.` and subfolders are
    /// ignored. A folder that does not exist gives an empty directory and a warning.
    ///
    /// # Errors
    ///
    /// [`SmimeError::ReadDirectory`] when the folder exists but cannot be listed,
    /// [`SmimeError::Read`] and [`SmimeError::TrustAnchor`] for a trust anchor file that
    /// cannot be read or contains no certificate.
    pub fn load(config: &Config) -> Result<CertificateDirectory, SmimeError> {
        let dir = config.key_path(&config.smime.certificates_dir);
        let anchors = config
            .smime
            .trust_anchors
            .iter()
            .map(|file| config.key_path(file))
            .collect::<Vec<_>>();
        let store = if anchors.is_empty() {
            None
        } else {
            Some(trust_store(&anchors)?)
        };
        let now = Asn1Time::days_from_now(0).expect("the current time converts to ASN.1");
        CertificateDirectory::read(dir, store.as_ref(), &now)
    }

    /// Returns the certificate to encrypt to for `address`: among the valid certificates
    /// that name it, the one that expires last. The domain is compared case-insensitively,
    /// the local part exactly.
    pub fn lookup(&self, address: &str) -> Option<&RecipientCertificate> {
        let key = normalize_address(address)?;
        self.by_address
            .get(&key)
            .map(|&index| &self.certificates[index])
    }

    /// Returns the files and certificates that were not loaded, with the reason.
    pub fn skipped(&self) -> &[SkippedCertificate] {
        &self.skipped
    }

    /// Returns every certificate that passed the checks, in file name order.
    pub fn certificates(&self) -> &[RecipientCertificate] {
        &self.certificates
    }

    /// Returns each known address, in order, with the certificate [`lookup`] picks for it.
    ///
    /// [`lookup`]: CertificateDirectory::lookup
    pub fn entries(&self) -> impl Iterator<Item = (&str, &RecipientCertificate)> {
        self.by_address
            .iter()
            .map(|(address, &index)| (address.as_str(), &self.certificates[index]))
    }

    /// Returns the folder that was read.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// True when the folder existed at load.
    pub fn dir_exists(&self) -> bool {
        self.found
    }

    /// Formats `sealgate certs list`: one line per address with the subject, issuer,
    /// expiry and file of the certificate it gets.
    pub fn list_report(&self) -> String {
        let mut report = String::new();
        for (address, certificate) in self.entries() {
            let _ = writeln!(
                report,
                "{address}  subject=\"{}\" issuer=\"{}\" not_after={} file={}",
                certificate.subject,
                certificate.issuer,
                format_time(certificate.not_after),
                certificate.path.display()
            );
        }
        let _ = writeln!(
            report,
            "{} address(es), {} valid certificate(s), {} skipped, in {}",
            self.by_address.len(),
            self.certificates.len(),
            self.skipped.len(),
            self.dir.display()
        );
        report
    }

    /// Formats `sealgate certs check`: one line per certificate, valid or invalid with the
    /// reason, ordered by file. Returns the text and whether everything was valid, so that
    /// the command can exit non-zero otherwise.
    pub fn check_report(&self) -> (String, bool) {
        let mut lines: Vec<(PathBuf, String)> = Vec::new();
        for certificate in &self.certificates {
            lines.push((
                certificate.path.clone(),
                format!(
                    "valid: subject=\"{}\" addresses={} not_after={}",
                    certificate.subject,
                    certificate.addresses.join(","),
                    format_time(certificate.not_after)
                ),
            ));
        }
        for skipped in &self.skipped {
            let subject = skipped
                .subject
                .as_ref()
                .map(|subject| format!(" (subject=\"{subject}\")"))
                .unwrap_or_default();
            lines.push((
                skipped.path.clone(),
                format!("invalid: {}{subject}", skipped.reason),
            ));
        }
        // A stable sort keeps the load order of certificates within one file.
        lines.sort_by(|left, right| left.0.cmp(&right.0));

        let mut report = String::new();
        if !self.found {
            let _ = writeln!(
                report,
                "{}: folder not found; no recipient has a certificate",
                self.dir.display()
            );
        }
        for (path, line) in &lines {
            let _ = writeln!(report, "{}: {line}", path.display());
        }
        (report, self.found && self.skipped.is_empty())
    }

    fn read(
        dir: PathBuf,
        store: Option<&X509Store>,
        now: &Asn1TimeRef,
    ) -> Result<CertificateDirectory, SmimeError> {
        let mut directory = CertificateDirectory {
            dir,
            found: true,
            certificates: Vec::new(),
            skipped: Vec::new(),
            by_address: BTreeMap::new(),
        };
        let files = match list_files(&directory.dir) {
            Ok(files) => files,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(
                    dir = %directory.dir.display(),
                    "recipient certificate folder not found; no recipient has a certificate"
                );
                directory.found = false;
                return Ok(directory);
            }
            Err(source) => {
                return Err(SmimeError::ReadDirectory {
                    path: directory.dir,
                    source,
                });
            }
        };

        // Every certificate is read first, so that intermediates in any file can complete
        // the chain of a certificate in another.
        let mut parsed: Vec<(PathBuf, X509)> = Vec::new();
        for path in files {
            match read_certificates(&path) {
                Ok(certificates) => {
                    parsed.extend(certificates.into_iter().map(|cert| (path.clone(), cert)));
                }
                Err(reason) => directory.skip(path, None, Vec::new(), reason),
            }
        }
        let mut intermediates = Stack::new().expect("allocate a certificate stack");
        for (_, certificate) in &parsed {
            intermediates
                .push(certificate.clone())
                .expect("push onto a certificate stack");
        }

        for (path, certificate) in parsed {
            let subject = format_name(certificate.subject_name());
            match check_certificate(&certificate, store, &intermediates, now) {
                Ok(addresses) => directory.certificates.push(RecipientCertificate {
                    not_before: to_offset_date_time(certificate.not_before()),
                    not_after: to_offset_date_time(certificate.not_after()),
                    issuer: format_name(certificate.issuer_name()),
                    certificate,
                    addresses,
                    path,
                    subject,
                }),
                Err(reason) => {
                    let addresses = certificate_addresses(&certificate);
                    directory.skip(path, Some(subject), addresses, reason)
                }
            }
        }
        directory.index();
        tracing::info!(
            dir = %directory.dir.display(),
            certificates = directory.certificates.len(),
            addresses = directory.by_address.len(),
            skipped = directory.skipped.len(),
            "loaded recipient certificates"
        );
        Ok(directory)
    }

    fn skip(
        &mut self,
        path: PathBuf,
        subject: Option<String>,
        addresses: Vec<String>,
        reason: String,
    ) {
        tracing::warn!(
            path = %path.display(),
            subject = subject.as_deref().unwrap_or("-"),
            reason = %reason,
            "skipped recipient certificate"
        );
        self.skipped.push(SkippedCertificate {
            path,
            subject,
            reason,
            addresses,
        });
    }

    /// Maps every address to the certificate that expires last. On equal expiry the one
    /// read first (by file name) wins.
    fn index(&mut self) {
        for (index, certificate) in self.certificates.iter().enumerate() {
            for address in &certificate.addresses {
                let current = self.by_address.entry(address.clone()).or_insert(index);
                if self.certificates[*current].not_after < certificate.not_after {
                    *current = index;
                }
            }
        }
    }
}

impl RecipientCertificate {
    /// Returns the X.509 certificate.
    pub fn x509(&self) -> &X509Ref {
        &self.certificate
    }

    /// Returns the addresses it is indexed under, with lowercase domains.
    pub fn addresses(&self) -> &[String] {
        &self.addresses
    }

    /// Returns the file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Returns the subject, as `CN=Bob, O=Partner`.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Returns the issuer, as `CN=Partner CA`.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Returns the start of the validity period.
    pub fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }

    /// Returns the end of the validity period.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// True when the certificate names `address` (domain compared case-insensitively).
    pub fn names(&self, address: &str) -> bool {
        normalize_address(address).is_some_and(|key| self.addresses.contains(&key))
    }
}

/// Checks a certificate and returns its addresses, or the reason it is not used.
fn check_certificate(
    certificate: &X509Ref,
    store: Option<&X509Store>,
    intermediates: &Stack<X509>,
    now: &Asn1TimeRef,
) -> Result<Vec<String>, String> {
    check_validity(certificate, now)?;

    if let Some(key_usage) = certificate.key_usage()
        && !key_usage.contains(X509KeyUsage::KEY_ENCIPHERMENT)
    {
        return Err(format!(
            "key usage does not allow key encipherment (it allows {})",
            describe_key_usage(key_usage)
        ));
    }
    if let Some(extended) = certificate.extended_key_usage()
        && !extended.intersects(X509ExtendedKeyUsage::SMIME | X509ExtendedKeyUsage::ANYEKU)
    {
        return Err("extended key usage does not include email protection".into());
    }

    let key = certificate
        .public_key()
        .map_err(|error| format!("unreadable public key: {error}"))?;
    match key.id() {
        Id::RSA if key.bits() < MIN_RSA_BITS => {
            return Err(format!(
                "RSA key of {} bits is too short (at least {MIN_RSA_BITS} bits required)",
                key.bits()
            ));
        }
        Id::RSA => {}
        Id::EC => return Err("EC keys are not supported for encryption yet (RSA only)".into()),
        Id::RSA_PSS => return Err("RSA-PSS keys cannot be used for key transport".into()),
        other => {
            return Err(format!(
                "{} keys are not supported for encryption (RSA only)",
                key_type_name(other)
            ));
        }
    }

    let addresses = certificate_addresses(certificate);
    if addresses.is_empty() {
        return Err("no email address in subjectAltName or subject".into());
    }

    if let Some(store) = store {
        verify_chain(certificate, store, intermediates)?;
    }
    Ok(addresses)
}

/// Checks that `now` lies inside the certificate's validity period.
pub(crate) fn check_validity(certificate: &X509Ref, now: &Asn1TimeRef) -> Result<(), String> {
    if certificate.not_before() > now {
        return Err(format!(
            "not valid before {}",
            format_time(to_offset_date_time(certificate.not_before()))
        ));
    }
    if certificate.not_after() < now {
        return Err(format!(
            "expired at {}",
            format_time(to_offset_date_time(certificate.not_after()))
        ));
    }
    Ok(())
}

fn verify_chain(
    certificate: &X509Ref,
    store: &X509Store,
    intermediates: &Stack<X509>,
) -> Result<(), String> {
    let mut context = X509StoreContext::new().expect("allocate an X509 store context");
    let result = context
        .init(store, certificate, intermediates, |context| {
            let verified = context.verify_cert()?;
            Ok((verified, context.error()))
        })
        .map_err(|error| format!("chain verification failed: {error}"))?;
    match result {
        (true, _) => Ok(()),
        (false, error) => Err(format!(
            "does not chain to a configured trust anchor: {}",
            error.error_string()
        )),
    }
}

/// Builds a store of the trust anchors that checks chains for S/MIME encryption.
fn trust_store(paths: &[PathBuf]) -> Result<X509Store, SmimeError> {
    let mut builder = X509StoreBuilder::new().expect("allocate an X509 store");
    for path in paths {
        let pem = std::fs::read(path).map_err(|source| SmimeError::Read {
            path: path.clone(),
            source,
        })?;
        let anchors = X509::stack_from_pem(&pem).map_err(|error| SmimeError::TrustAnchor {
            path: path.clone(),
            reason: format!("invalid PEM: {error}"),
        })?;
        if anchors.is_empty() {
            return Err(SmimeError::TrustAnchor {
                path: path.clone(),
                reason: "no PEM certificate found".into(),
            });
        }
        for anchor in anchors {
            builder
                .add_cert(anchor)
                .map_err(|error| SmimeError::TrustAnchor {
                    path: path.clone(),
                    reason: error.to_string(),
                })?;
        }
    }
    builder
        .set_purpose(X509PurposeId::SMIME_ENCRYPT)
        .expect("S/MIME encryption is a built-in purpose");
    Ok(builder.build())
}

/// Lists the regular files in `dir` (following symbolic links), sorted by name, without
/// names starting with `.`.
fn list_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        match std::fs::metadata(&path) {
            Ok(metadata) if metadata.is_file() => files.push(path),
            Ok(_) => tracing::debug!(path = %path.display(), "ignored: not a regular file"),
            Err(error) => tracing::warn!(
                path = %path.display(),
                error = %error,
                "ignored: cannot read file metadata"
            ),
        }
    }
    files.sort();
    Ok(files)
}

/// Reads the certificates of one file: every `CERTIFICATE` section of a PEM file, or one DER
/// certificate.
fn read_certificates(path: &Path) -> Result<Vec<X509>, String> {
    let bytes = std::fs::read(path).map_err(|error| format!("failed to read: {error}"))?;
    if bytes.windows(11).any(|window| window == b"-----BEGIN ") {
        let certificates =
            X509::stack_from_pem(&bytes).map_err(|error| format!("invalid PEM: {error}"))?;
        if certificates.is_empty() {
            return Err("no PEM certificate in the file".into());
        }
        return Ok(certificates);
    }
    X509::from_der(&bytes)
        .map(|certificate| vec![certificate])
        .map_err(|_| "not a PEM or DER certificate".into())
}

impl CertificateSource for CertificateDirectory {
    fn certificate_for(&self, address: &str) -> CertificateLookup {
        if let Some(certificate) = self.lookup(address) {
            return CertificateLookup::Found(format!(
                "\"{}\" from {}, valid until {}",
                certificate.subject(),
                certificate.path().display(),
                format_time(certificate.not_after())
            ));
        }
        let normalized = normalize_address(address).unwrap_or_else(|| address.to_owned());
        let flaws: Vec<String> = self
            .skipped
            .iter()
            .filter(|skipped| skipped.addresses.contains(&normalized))
            .map(|skipped| format!("{} is not used: {}", skipped.path.display(), skipped.reason))
            .collect();
        if flaws.is_empty() {
            CertificateLookup::Missing(format!(
                "no certificate for {address} in {}",
                self.dir.display()
            ))
        } else {
            CertificateLookup::Missing(flaws.join("; "))
        }
    }
}

/// Returns the rfc822Name entries of the subjectAltName, or, only when there are none, the
/// subject's emailAddress attributes, normalised and without duplicates.
fn certificate_addresses(certificate: &X509Ref) -> Vec<String> {
    let mut addresses: Vec<String> = certificate
        .subject_alt_names()
        .map(|names| {
            names
                .iter()
                .filter_map(|name| name.email())
                .filter_map(normalize_address)
                .collect()
        })
        .unwrap_or_default();
    if addresses.is_empty() {
        addresses = certificate
            .subject_name()
            .entries_by_nid(Nid::PKCS9_EMAILADDRESS)
            .filter_map(|entry| entry.data().to_string().ok())
            .filter_map(|text| normalize_address(&text))
            .collect();
    }
    addresses.dedup();
    addresses
}

/// Returns `local@domain` with the domain in lowercase, without surrounding white space or
/// angle brackets, or `None` for text that is not an address.
pub(crate) fn normalize_address(address: &str) -> Option<String> {
    let address = address.trim();
    let address = address
        .strip_prefix('<')
        .and_then(|inner| inner.strip_suffix('>'))
        .unwrap_or(address);
    let (local, domain) = address.rsplit_once('@')?;
    if local.is_empty() || domain.is_empty() {
        return None;
    }
    Some(format!("{local}@{}", domain.to_ascii_lowercase()))
}

/// Formats a name as `CN=Bob, O=Partner`, in certificate order.
fn format_name(name: &X509NameRef) -> String {
    let parts: Vec<String> = name
        .entries()
        .map(|entry| {
            let key = entry.object().nid().short_name().unwrap_or("?");
            let value = entry.data().to_string().unwrap_or_else(|_| "?".into());
            format!("{key}={value}")
        })
        .collect();
    parts.join(", ")
}

fn describe_key_usage(key_usage: X509KeyUsage) -> String {
    let names = [
        (X509KeyUsage::DIGITAL_SIGNATURE, "digitalSignature"),
        (X509KeyUsage::NON_REPUDIATION, "nonRepudiation"),
        (X509KeyUsage::KEY_ENCIPHERMENT, "keyEncipherment"),
        (X509KeyUsage::DATA_ENCIPHERMENT, "dataEncipherment"),
        (X509KeyUsage::KEY_AGREEMENT, "keyAgreement"),
        (X509KeyUsage::KEY_CERT_SIGN, "keyCertSign"),
        (X509KeyUsage::CRL_SIGN, "cRLSign"),
        (X509KeyUsage::ENCIPHER_ONLY, "encipherOnly"),
        (X509KeyUsage::DECIPHER_ONLY, "decipherOnly"),
    ];
    let allowed: Vec<&str> = names
        .iter()
        .filter(|(flag, _)| key_usage.contains(*flag))
        .map(|(_, name)| *name)
        .collect();
    if allowed.is_empty() {
        "nothing".into()
    } else {
        allowed.join(", ")
    }
}

fn key_type_name(id: Id) -> &'static str {
    match id {
        Id::DSA => "DSA",
        Id::ED25519 => "Ed25519",
        Id::ED448 => "Ed448",
        Id::X25519 => "X25519",
        Id::X448 => "X448",
        _ => "this type of",
    }
}

/// Converts an ASN.1 time to a UTC date and time.
pub(crate) fn to_offset_date_time(time: &Asn1TimeRef) -> OffsetDateTime {
    let epoch = Asn1Time::from_unix(0).expect("the Unix epoch converts to ASN.1");
    let seconds = epoch
        .diff(time)
        .map(|diff| i64::from(diff.days) * 86_400 + i64::from(diff.secs))
        .unwrap_or(0);
    OffsetDateTime::from_unix_timestamp(seconds).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Formats a time as RFC 3339, such as `2027-12-03T12:00:00Z`.
pub(crate) fn format_time(time: OffsetDateTime) -> String {
    time.format(&Rfc3339)
        .unwrap_or_else(|_| time.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_normalise_the_domain_only() {
        assert_eq!(
            normalize_address(" <Bob@Partner.EXAMPLE> ").as_deref(),
            Some("Bob@partner.example")
        );
        assert_eq!(normalize_address("no-at-sign"), None);
        assert_eq!(normalize_address("@partner.example"), None);
    }

    #[test]
    fn asn1_times_convert_to_utc() {
        let time = Asn1Time::from_str("20270102030405Z").unwrap();
        assert_eq!(
            format_time(to_offset_date_time(&time)),
            "2027-01-02T03:04:05Z"
        );
    }
}
