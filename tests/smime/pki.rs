//! Test PKI for S/MIME, made with OpenSSL at run time: a CA, and recipient or signing
//! certificates with chosen keys, validity periods, key usage and extended key usage.
//! Nothing here is committed: every key lives in a temporary folder for one test.

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkcs12::Pkcs12;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509, X509Builder, X509NameBuilder};

/// Seconds in a day, for validity offsets.
pub const DAY: i64 = 86_400;

/// Key type and size of a generated certificate.
#[derive(Clone, Copy, Debug)]
pub enum KeyKind {
    Rsa(u32),
    EcP256,
}

/// The key usage extension of a generated certificate.
#[derive(Clone, Copy, Debug)]
pub enum Usage {
    /// digitalSignature and keyEncipherment.
    SignAndEncrypt,
    /// digitalSignature only.
    SignOnly,
    /// No key usage extension.
    Absent,
}

/// The extended key usage extension of a generated certificate.
#[derive(Clone, Copy, Debug)]
pub enum Extended {
    /// emailProtection.
    EmailProtection,
    /// serverAuth and clientAuth, without emailProtection.
    TlsOnly,
    /// No extended key usage extension.
    Absent,
}

/// What to put in a certificate.
#[derive(Clone, Debug)]
pub struct Spec {
    pub common_name: String,
    /// rfc822Name entries of the subjectAltName.
    pub san_emails: Vec<String>,
    /// emailAddress attribute of the subject.
    pub subject_email: Option<String>,
    pub key: KeyKind,
    /// Start of validity, in seconds from now (negative for the past).
    pub not_before: i64,
    /// End of validity, in seconds from now.
    pub not_after: i64,
    pub usage: Usage,
    pub extended: Extended,
}

impl Spec {
    /// A valid encryption certificate for `address`: RSA 2048, valid from yesterday for a
    /// year, with key encipherment and email protection.
    pub fn recipient(address: &str) -> Spec {
        Spec {
            common_name: address.split('@').next().unwrap_or(address).to_owned(),
            san_emails: vec![address.to_owned()],
            subject_email: None,
            key: KeyKind::Rsa(2048),
            not_before: -DAY,
            not_after: 365 * DAY,
            usage: Usage::SignAndEncrypt,
            extended: Extended::EmailProtection,
        }
    }
}

/// A certificate and its private key.
pub struct Identity {
    pub certificate: X509,
    pub key: PKey<Private>,
}

impl Identity {
    pub fn certificate_pem(&self) -> Vec<u8> {
        self.certificate.to_pem().expect("encode certificate")
    }

    pub fn key_pem(&self) -> Vec<u8> {
        self.key
            .private_key_to_pem_pkcs8()
            .expect("encode private key")
    }

    /// PKCS#12 with an empty password, protected with 3DES and a SHA-1 MAC: gpgsm 2.2
    /// cannot read the AES/PBKDF2 files that OpenSSL 3 makes by default.
    pub fn pkcs12_legacy(&self) -> Vec<u8> {
        let mut builder = Pkcs12::builder();
        builder
            .name("recipient")
            .pkey(&self.key)
            .cert(&self.certificate)
            .key_algorithm(Nid::PBE_WITHSHA1AND3_KEY_TRIPLEDES_CBC)
            .cert_algorithm(Nid::PBE_WITHSHA1AND3_KEY_TRIPLEDES_CBC)
            .mac_md(MessageDigest::sha1());
        builder
            .build2("")
            .expect("build PKCS#12")
            .to_der()
            .expect("encode PKCS#12")
    }
}

/// A self-signed RSA 2048 CA.
pub struct Authority {
    pub identity: Identity,
}

impl Authority {
    pub fn new(name: &str) -> Authority {
        let key = generate_key(KeyKind::Rsa(2048));
        let mut builder = base_builder(name, None, &key, -DAY, 3650 * DAY);
        builder
            .set_issuer_name(subject_of(name, None).as_ref())
            .unwrap();
        builder
            .append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
        builder
            .append_extension(
                KeyUsage::new()
                    .critical()
                    .key_cert_sign()
                    .crl_sign()
                    .build()
                    .unwrap(),
            )
            .unwrap();
        let subject_key_id = SubjectKeyIdentifier::new()
            .build(&builder.x509v3_context(None, None))
            .unwrap();
        builder.append_extension(subject_key_id).unwrap();
        builder.sign(&key, MessageDigest::sha256()).unwrap();
        Authority {
            identity: Identity {
                certificate: builder.build(),
                key,
            },
        }
    }

    pub fn certificate_pem(&self) -> Vec<u8> {
        self.identity.certificate_pem()
    }

    /// Issues a certificate described by `spec`, signed by this CA.
    pub fn issue(&self, spec: &Spec) -> Identity {
        let key = generate_key(spec.key);
        let mut builder = base_builder(
            &spec.common_name,
            spec.subject_email.as_deref(),
            &key,
            spec.not_before,
            spec.not_after,
        );
        builder
            .set_issuer_name(self.identity.certificate.subject_name())
            .unwrap();
        builder
            .append_extension(BasicConstraints::new().build().unwrap())
            .unwrap();
        match spec.usage {
            Usage::SignAndEncrypt => builder
                .append_extension(
                    KeyUsage::new()
                        .critical()
                        .digital_signature()
                        .key_encipherment()
                        .build()
                        .unwrap(),
                )
                .unwrap(),
            Usage::SignOnly => builder
                .append_extension(
                    KeyUsage::new()
                        .critical()
                        .digital_signature()
                        .build()
                        .unwrap(),
                )
                .unwrap(),
            Usage::Absent => {}
        }
        match spec.extended {
            Extended::EmailProtection => builder
                .append_extension(ExtendedKeyUsage::new().email_protection().build().unwrap())
                .unwrap(),
            Extended::TlsOnly => builder
                .append_extension(
                    ExtendedKeyUsage::new()
                        .server_auth()
                        .client_auth()
                        .build()
                        .unwrap(),
                )
                .unwrap(),
            Extended::Absent => {}
        }
        if !spec.san_emails.is_empty() {
            let mut names = SubjectAlternativeName::new();
            for email in &spec.san_emails {
                names.email(email);
            }
            let extension = names
                .build(&builder.x509v3_context(Some(&self.identity.certificate), None))
                .unwrap();
            builder.append_extension(extension).unwrap();
        }
        let subject_key_id = SubjectKeyIdentifier::new()
            .build(&builder.x509v3_context(Some(&self.identity.certificate), None))
            .unwrap();
        builder.append_extension(subject_key_id).unwrap();
        let authority_key_id = AuthorityKeyIdentifier::new()
            .keyid(false)
            .build(&builder.x509v3_context(Some(&self.identity.certificate), None))
            .unwrap();
        builder.append_extension(authority_key_id).unwrap();
        builder
            .sign(&self.identity.key, MessageDigest::sha256())
            .unwrap();
        Identity {
            certificate: builder.build(),
            key,
        }
    }
}

fn generate_key(kind: KeyKind) -> PKey<Private> {
    match kind {
        KeyKind::Rsa(bits) => {
            PKey::from_rsa(Rsa::generate(bits).expect("generate RSA key")).unwrap()
        }
        KeyKind::EcP256 => {
            let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
            PKey::from_ec_key(EcKey::generate(&group).expect("generate EC key")).unwrap()
        }
    }
}

fn subject_of(common_name: &str, email: Option<&str>) -> openssl::x509::X509Name {
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_nid(Nid::COMMONNAME, common_name)
        .unwrap();
    if let Some(email) = email {
        name.append_entry_by_nid(Nid::PKCS9_EMAILADDRESS, email)
            .unwrap();
    }
    name.build()
}

fn base_builder(
    common_name: &str,
    email: Option<&str>,
    key: &PKey<Private>,
    not_before: i64,
    not_after: i64,
) -> X509Builder {
    let mut builder = X509Builder::new().unwrap();
    builder.set_version(2).unwrap();
    let mut serial = BigNum::new().unwrap();
    serial
        .rand(64, openssl::bn::MsbOption::MAYBE_ZERO, false)
        .unwrap();
    let serial = Asn1Integer::from_bn(&serial).unwrap();
    builder.set_serial_number(&serial).unwrap();
    builder
        .set_subject_name(subject_of(common_name, email).as_ref())
        .unwrap();
    builder.set_pubkey(key).unwrap();
    let now = time_now();
    builder
        .set_not_before(&Asn1Time::from_unix(now + not_before).unwrap())
        .unwrap();
    builder
        .set_not_after(&Asn1Time::from_unix(now + not_after).unwrap())
        .unwrap();
    builder
}

fn time_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}
