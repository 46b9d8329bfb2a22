//! S/MIME against real receivers: what `Smime::encrypt_for` makes is decrypted with
//! `openssl cms`, gpgsm and NSS `cmsutil`, and the certificate folder rules are checked on
//! certificates generated for each test.
//!
//! The receivers come from the Debian packages `openssl`, `gpgsm` and `libnss3-tools`. A
//! missing one fails the test with the package name.

#[path = "smime/pki.rs"]
mod pki;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine;
use pki::{Authority, DAY, Extended, Identity, KeyKind, Spec, Usage};
use sealgate::config::Config;
use sealgate::smime::{
    CertificateDirectory, RecipientCertificate, SkippedCertificate, Smime, SmimeOutcome,
};

/// A message as a staff mail server sends it, with every kind of header field the outer
/// message must keep or drop.
const MESSAGE: &str = "Received: from ehr.org.test by sealgate; Thu, 3 Dec 2026 10:00:00 +0000\r\n\
Received: from client by ehr.org.test; Thu, 3 Dec 2026 09:59:59 +0000\r\n\
Return-Path: <clinic@org.test>\r\n\
From: Clinic <clinic@org.test>\r\n\
Sender: robot@org.test\r\n\
To: Bob <bob@partner.example>\r\n\
Cc: Carol <carol@other.example>\r\n\
Bcc: hidden@org.test\r\n\
Reply-To: replies@org.test\r\n\
Date: Thu, 3 Dec 2026 10:00:00 +0000\r\n\
Message-ID: <m1@org.test>\r\n\
In-Reply-To: <m0@partner.example>\r\n\
References: <m-1@org.test>\r\n <m0@partner.example>\r\n\
Subject: Referral for patient 943 476 5919\r\n\
MIME-Version: 1.0\r\n\
X-Mailer: EHR 5.1\r\n\
DKIM-Signature: v=1; a=rsa-sha256; d=org.test; s=s1; b=abc\r\n\
Content-Type: multipart/mixed;\r\n boundary=\"b1\"\r\n\
Content-Transfer-Encoding: 7bit\r\n\
\r\n\
--b1\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
Dear Bob, please see the attached referral.\r\n\
--b1\r\n\
Content-Type: application/octet-stream; name=\"referral.txt\"\r\n\
Content-Disposition: attachment; filename=\"referral.txt\"\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
UGF0aWVudCBOSFMgbnVtYmVyIDk0MyA0NzYgNTkxOQo=\r\n\
--b1--\r\n";

/// The entity that must come out of decryption for [`MESSAGE`]: its `Content-*` fields and
/// body, nothing else.
const ENTITY: &str = "Content-Type: multipart/mixed;\r\n boundary=\"b1\"\r\n\
Content-Transfer-Encoding: 7bit\r\n\
\r\n\
--b1\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
Dear Bob, please see the attached referral.\r\n\
--b1\r\n\
Content-Type: application/octet-stream; name=\"referral.txt\"\r\n\
Content-Disposition: attachment; filename=\"referral.txt\"\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
UGF0aWVudCBOSFMgbnVtYmVyIDk0MyA0NzYgNTkxOQo=\r\n\
--b1--\r\n";

const BOB: &str = "bob@partner.example";
const CAROL: &str = "carol@other.example";

// ---------------------------------------------------------------------------------------
// Setup

/// A keys folder with a CA, a recipient certificate folder and a private folder for the
/// recipients' keys, which the gateway never reads.
struct Setup {
    root: tempfile::TempDir,
    ca: Authority,
}

/// A recipient certificate written to the recipient folder, with its key on disk.
struct Recipient {
    identity: Identity,
    certificate_path: PathBuf,
    key_path: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let root = tempfile::tempdir().expect("create temporary folder");
        std::fs::create_dir_all(root.path().join("keys/recipients")).unwrap();
        std::fs::create_dir_all(root.path().join("private")).unwrap();
        let ca = Authority::new("sealgate test CA");
        std::fs::write(root.path().join("keys/ca.pem"), ca.certificate_pem()).unwrap();
        Setup { root, ca }
    }

    fn keys_dir(&self) -> PathBuf {
        self.root.path().join("keys")
    }

    fn recipients_dir(&self) -> PathBuf {
        self.keys_dir().join("recipients")
    }

    fn private_dir(&self) -> PathBuf {
        self.root.path().join("private")
    }

    /// Returns config text with `keys_dir` pointed at this setup, followed by `extra`.
    fn config_text(&self, extra: &str) -> String {
        format!(
            "[server]\nkeys_dir = {:?}\n{extra}",
            self.keys_dir().display().to_string()
        )
    }

    fn config(&self, extra: &str) -> Config {
        Config::parse(&self.config_text(extra), Path::new("test.toml")).expect("valid config")
    }

    /// Issues a certificate from this setup's CA and writes it to the recipient folder as
    /// `file`, and its key and certificate to the private folder.
    fn add(&self, file: &str, spec: &Spec) -> Recipient {
        let identity = self.ca.issue(spec);
        self.write(file, identity)
    }

    fn write(&self, file: &str, identity: Identity) -> Recipient {
        std::fs::write(self.recipients_dir().join(file), identity.certificate_pem()).unwrap();
        let certificate_path = self.private_dir().join(format!("{file}.crt"));
        let key_path = self.private_dir().join(format!("{file}.key"));
        std::fs::write(&certificate_path, identity.certificate_pem()).unwrap();
        std::fs::write(&key_path, identity.key_pem()).unwrap();
        Recipient {
            identity,
            certificate_path,
            key_path,
        }
    }

    fn directory(&self, extra: &str) -> CertificateDirectory {
        CertificateDirectory::load(&self.config(extra)).expect("load certificate folder")
    }

    /// Writes a signing certificate and key for `address` to the keys folder and returns
    /// the `[smime]` settings that use them.
    fn add_signer(&self, address: &str) -> &'static str {
        let signer = self.ca.issue(&Spec::recipient(address));
        std::fs::write(
            self.keys_dir().join("signing.pem"),
            signer.certificate_pem(),
        )
        .unwrap();
        std::fs::write(self.keys_dir().join("signing.key"), signer.key_pem()).unwrap();
        "[smime]\nsigning_certificate = \"signing.pem\"\nsigning_key = \"signing.key\"\n"
    }

    /// Loads the certificate folder and builds `Smime` with `[smime]` settings `extra`.
    fn smime(&self, extra: &str) -> (CertificateDirectory, Smime) {
        let config = self.config(extra);
        let directory = CertificateDirectory::load(&config).expect("load certificate folder");
        (directory, Smime::new(&config).expect("S/MIME from config"))
    }

    /// Encrypts `message` for `recipient` with `[smime]` settings `extra` and writes the
    /// result to a file.
    fn encrypt(&self, extra: &str, message: &str, recipient: &str) -> PathBuf {
        let (directory, smime) = self.smime(extra);
        let certificate = directory
            .lookup(recipient)
            .unwrap_or_else(|| panic!("no certificate for {recipient}: {:?}", directory.skipped()));
        let output = encrypted(&smime, message.as_bytes(), recipient, certificate);
        let path = self
            .root
            .path()
            .join(format!("{recipient}-{}.eml", unique()));
        std::fs::write(&path, output).unwrap();
        path
    }
}

fn encrypted(
    smime: &Smime,
    message: &[u8],
    recipient: &str,
    certificate: &RecipientCertificate,
) -> Vec<u8> {
    match smime.encrypt_for(message, recipient, certificate) {
        Ok(SmimeOutcome::Encrypted(bytes)) => bytes,
        Ok(SmimeOutcome::AlreadyEncrypted(_)) => panic!("message reported as already encrypted"),
        Err(error) => panic!("encrypt_for failed: {error}"),
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

// ---------------------------------------------------------------------------------------
// Receivers

/// Panics with the Debian package to install when `program` is not on the PATH.
fn require(program: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{program} not found: install the Debian package {package} (apt-get install {package})"
    );
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|error| panic!("failed to run {command:?}: {error}"))
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Decrypts an S/MIME message file with `openssl cms`, returning the plaintext or the error
/// output.
fn openssl_decrypt(message: &Path, recipient: &Recipient) -> Result<Vec<u8>, String> {
    require("openssl", "openssl");
    let out = message.with_extension(format!("openssl-{}.out", unique()));
    let output = run(Command::new("openssl")
        .args(["cms", "-decrypt", "-in"])
        .arg(message)
        .arg("-inkey")
        .arg(&recipient.key_path)
        .arg("-recip")
        .arg(&recipient.certificate_path)
        .arg("-out")
        .arg(&out));
    if output.status.success() {
        Ok(std::fs::read(&out).unwrap())
    } else {
        Err(stderr(&output))
    }
}

/// Prints the CMS structure of an S/MIME message file with `openssl cms -cmsout -print`.
fn openssl_print(message: &Path) -> String {
    require("openssl", "openssl");
    let output = run(Command::new("openssl")
        .args(["cms", "-cmsout", "-print", "-in"])
        .arg(message));
    assert!(output.status.success(), "{}", stderr(&output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Returns the DER CMS object in the base64 body of an S/MIME message file.
fn cms_der(message: &Path) -> Vec<u8> {
    let text = std::fs::read_to_string(message).unwrap();
    let (_, body) = text.split_once("\r\n\r\n").expect("header and body");
    let joined: String = body.split("\r\n").collect();
    base64::engine::general_purpose::STANDARD
        .decode(joined)
        .expect("base64 body")
}

/// Splits a message into its header field names and values (unfolded) and its body.
fn header_fields(message: &[u8]) -> (Vec<(String, String)>, Vec<u8>) {
    let text = String::from_utf8(message.to_vec()).expect("ASCII message");
    let (header, body) = text.split_once("\r\n\r\n").expect("header and body");
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in header.split("\r\n") {
        if line.starts_with(' ') || line.starts_with('\t') {
            fields.last_mut().expect("field before continuation").1 += line;
        } else {
            let (name, value) = line.split_once(':').expect("field with colon");
            fields.push((name.to_owned(), value.trim_start().to_owned()));
        }
    }
    (fields, body.as_bytes().to_vec())
}

/// A GnuPG home folder for gpgsm; its agent is stopped when the value is dropped.
struct GnupgHome(tempfile::TempDir);

impl GnupgHome {
    fn new() -> GnupgHome {
        // The agent's socket path must stay short, so the folder goes under /tmp.
        let dir = tempfile::Builder::new()
            .prefix("gpgsm")
            .tempdir_in("/tmp")
            .unwrap();
        GnupgHome(dir)
    }

    fn gpgsm(&self) -> Command {
        let mut command = Command::new("gpgsm");
        command.env("GNUPGHOME", self.0.path()).args([
            "--batch",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
        ]);
        command
    }
}

impl Drop for GnupgHome {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.0.path())
            .args(["--kill", "all"])
            .output();
    }
}

// ---------------------------------------------------------------------------------------
// Receivers decrypt what encrypt_for made

#[test]
fn openssl_decrypts_default_variant() {
    let setup = Setup::new();
    let bob = setup.add("bob.pem", &Spec::recipient(BOB));
    let message = setup.encrypt("", MESSAGE, BOB);

    let plaintext = openssl_decrypt(&message, &bob).expect("openssl cms -decrypt");
    assert_eq!(String::from_utf8_lossy(&plaintext), ENTITY);
    assert_eq!(plaintext, ENTITY.as_bytes());

    let structure = openssl_print(&message);
    assert!(
        structure.contains("contentType: pkcs7-envelopedData"),
        "{structure}"
    );
    assert!(
        structure.contains("algorithm: rsaEncryption"),
        "{structure}"
    );
    assert!(structure.contains("algorithm: aes-256-cbc"), "{structure}");
}

#[test]
fn gpgsm_decrypts_default_variant() {
    require("gpgsm", "gpgsm");
    let setup = Setup::new();
    let bob = setup.add("bob.pem", &Spec::recipient(BOB));
    let message = setup.encrypt("", MESSAGE, BOB);
    let home = GnupgHome::new();

    let p12 = setup.private_dir().join("bob.p12");
    std::fs::write(&p12, bob.identity.pkcs12_legacy()).unwrap();
    let import = run(home.gpgsm().arg("--import").arg(&p12));
    assert!(
        import.status.success(),
        "gpgsm --import: {}",
        stderr(&import)
    );

    let der = setup.root.path().join("message.p7m");
    std::fs::write(&der, cms_der(&message)).unwrap();
    let decrypt = run(home
        .gpgsm()
        .args([
            "--disable-crl-checks",
            "--disable-trusted-cert-crl-check",
            "--decrypt",
        ])
        .arg(&der));
    assert!(
        decrypt.status.success(),
        "gpgsm --decrypt: {}",
        stderr(&decrypt)
    );
    assert_eq!(String::from_utf8_lossy(&decrypt.stdout), ENTITY);
    assert_eq!(decrypt.stdout, ENTITY.as_bytes());
}

#[test]
fn nss_cmsutil_decrypts_default_variant() {
    require("cmsutil", "libnss3-tools");
    require("certutil", "libnss3-tools");
    require("pk12util", "libnss3-tools");
    let setup = Setup::new();
    let bob = setup.add("bob.pem", &Spec::recipient(BOB));
    let message = setup.encrypt("", MESSAGE, BOB);

    let database = setup.root.path().join("nssdb");
    std::fs::create_dir_all(&database).unwrap();
    let database_arg = format!("sql:{}", database.display());
    let create =
        run(Command::new("certutil").args(["-N", "--empty-password", "-d", &database_arg]));
    assert!(create.status.success(), "certutil -N: {}", stderr(&create));
    let p12 = setup.private_dir().join("bob.p12");
    std::fs::write(&p12, bob.identity.pkcs12_legacy()).unwrap();
    let import =
        run(Command::new("pk12util")
            .arg("-i")
            .arg(&p12)
            .args(["-W", "", "-d", &database_arg]));
    assert!(import.status.success(), "pk12util -i: {}", stderr(&import));

    let der = setup.root.path().join("message.p7m");
    let out = setup.root.path().join("message.nss.out");
    std::fs::write(&der, cms_der(&message)).unwrap();
    let decode = run(Command::new("cmsutil")
        .arg("-D")
        .arg("-i")
        .arg(&der)
        .arg("-o")
        .arg(&out)
        .args(["-p", "", "-d", &database_arg]));
    assert!(decode.status.success(), "cmsutil -D: {}", stderr(&decode));
    let plaintext = std::fs::read(&out).unwrap();
    assert_eq!(String::from_utf8_lossy(&plaintext), ENTITY);
    assert_eq!(plaintext, ENTITY.as_bytes());
}

#[test]
fn openssl_decrypts_oaep_variant() {
    let setup = Setup::new();
    let bob = setup.add("bob.pem", &Spec::recipient(BOB));
    let message = setup.encrypt("[smime]\nkey_transport = \"rsa-oaep\"\n", MESSAGE, BOB);

    let plaintext = openssl_decrypt(&message, &bob).expect("openssl cms -decrypt");
    assert_eq!(plaintext, ENTITY.as_bytes());

    let structure = openssl_print(&message);
    assert!(structure.contains("algorithm: rsaesOaep"), "{structure}");
    assert!(
        structure.contains("OBJECT            :sha256"),
        "{structure}"
    );
    assert!(structure.contains("OBJECT            :mgf1"), "{structure}");
    assert!(structure.contains("algorithm: aes-256-cbc"), "{structure}");
}

#[test]
fn openssl_decrypts_gcm_variant() {
    let setup = Setup::new();
    let bob = setup.add("bob.pem", &Spec::recipient(BOB));
    let message = setup.encrypt("[smime]\ncontent_cipher = \"aes-256-gcm\"\n", MESSAGE, BOB);

    let plaintext = openssl_decrypt(&message, &bob).expect("openssl cms -decrypt");
    assert_eq!(plaintext, ENTITY.as_bytes());

    let structure = openssl_print(&message);
    assert!(
        structure.contains("id-smime-ct-authEnvelopedData"),
        "{structure}"
    );
    assert!(structure.contains("algorithm: aes-256-gcm"), "{structure}");
    let (fields, _) = header_fields(&std::fs::read(&message).unwrap());
    let content_type = &fields
        .iter()
        .find(|(name, _)| name == "Content-Type")
        .unwrap()
        .1;
    assert!(
        content_type.contains("smime-type=authEnveloped-data"),
        "{content_type}"
    );
}

#[test]
fn openssl_decrypts_oaep_with_gcm() {
    let setup = Setup::new();
    let bob = setup.add("bob.pem", &Spec::recipient(BOB));
    let config = "[smime]\nkey_transport = \"rsa-oaep\"\ncontent_cipher = \"aes-256-gcm\"\n";
    let message = setup.encrypt(config, MESSAGE, BOB);

    let plaintext = openssl_decrypt(&message, &bob).expect("openssl cms -decrypt");
    assert_eq!(plaintext, ENTITY.as_bytes());
    let structure = openssl_print(&message);
    assert!(structure.contains("algorithm: rsaesOaep"), "{structure}");
    assert!(structure.contains("algorithm: aes-256-gcm"), "{structure}");
}

#[test]
fn domain_override_selects_oaep() {
    let setup = Setup::new();
    setup.add("bob.pem", &Spec::recipient(BOB));
    setup.add("carol.pem", &Spec::recipient(CAROL));
    let config = "[[smime.overrides]]\nmatch = \"partner.example\"\nkey_transport = \"rsa-oaep\"\n";

    let for_bob = openssl_print(&setup.encrypt(config, MESSAGE, BOB));
    let for_carol = openssl_print(&setup.encrypt(config, MESSAGE, CAROL));
    assert!(for_bob.contains("algorithm: rsaesOaep"), "{for_bob}");
    assert!(!for_carol.contains("rsaesOaep"), "{for_carol}");
    assert!(
        for_carol.contains("algorithm: rsaEncryption"),
        "{for_carol}"
    );
}

#[test]
fn signed_message_verifies_after_decryption() {
    let setup = Setup::new();
    let bob = setup.add("bob.pem", &Spec::recipient(BOB));
    let config = setup.add_signer("clinic@org.test");
    let message = setup.encrypt(config, MESSAGE, BOB);

    let plaintext = openssl_decrypt(&message, &bob).expect("openssl cms -decrypt");
    let signed = setup.root.path().join("signed.eml");
    std::fs::write(&signed, &plaintext).unwrap();
    let (fields, _) = header_fields(&plaintext);
    assert_eq!(fields.len(), 1, "{fields:?}");
    assert!(
        fields[0].1.starts_with(
            "multipart/signed; protocol=\"application/pkcs7-signature\"; micalg=sha-256;"
        ),
        "{fields:?}"
    );

    let content = setup.root.path().join("verified.out");
    let verify = run(Command::new("openssl")
        .args(["cms", "-verify", "-in"])
        .arg(&signed)
        .arg("-CAfile")
        .arg(setup.keys_dir().join("ca.pem"))
        .arg("-out")
        .arg(&content));
    assert!(
        verify.status.success(),
        "openssl cms -verify: {}",
        stderr(&verify)
    );
    assert_eq!(std::fs::read(&content).unwrap(), ENTITY.as_bytes());

    let structure = openssl_print(&signed);
    assert!(
        structure.contains("contentType: pkcs7-signedData"),
        "{structure}"
    );
    assert!(structure.contains("algorithm: sha256"), "{structure}");
    assert!(
        structure.contains("algorithm: rsaEncryption"),
        "{structure}"
    );
}

#[test]
fn signed_message_fails_verification_when_altered() {
    let setup = Setup::new();
    let bob = setup.add("bob.pem", &Spec::recipient(BOB));
    let config = setup.add_signer("clinic@org.test");
    let message = setup.encrypt(config, MESSAGE, BOB);

    let plaintext = openssl_decrypt(&message, &bob).expect("openssl cms -decrypt");
    let altered = String::from_utf8(plaintext)
        .unwrap()
        .replace("Dear Bob", "Dear Eve");
    let signed = setup.root.path().join("altered.eml");
    std::fs::write(&signed, altered).unwrap();
    let verify = run(Command::new("openssl")
        .args(["cms", "-verify", "-in"])
        .arg(&signed)
        .arg("-CAfile")
        .arg(setup.keys_dir().join("ca.pem")));
    assert!(!verify.status.success(), "an altered message verified");
}

#[test]
fn each_recipient_decrypts_only_their_message() {
    let setup = Setup::new();
    let bob = setup.add("bob.pem", &Spec::recipient(BOB));
    let carol = setup.add("carol.pem", &Spec::recipient(CAROL));
    let for_bob = setup.encrypt("", MESSAGE, BOB);
    let for_carol = setup.encrypt("", MESSAGE, CAROL);

    assert_eq!(openssl_decrypt(&for_bob, &bob).unwrap(), ENTITY.as_bytes());
    assert_eq!(
        openssl_decrypt(&for_carol, &carol).unwrap(),
        ENTITY.as_bytes()
    );
    assert!(openssl_decrypt(&for_bob, &carol).is_err());
    assert!(openssl_decrypt(&for_carol, &bob).is_err());
}

// ---------------------------------------------------------------------------------------
// The outer message and the entity

#[test]
fn outer_header_is_the_kept_set() {
    let setup = Setup::new();
    setup.add("bob.pem", &Spec::recipient(BOB));
    let message = std::fs::read(setup.encrypt("", MESSAGE, BOB)).unwrap();

    let (fields, body) = header_fields(&message);
    let names: Vec<&str> = fields.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "Received",
            "Received",
            "From",
            "To",
            "Cc",
            "Reply-To",
            "Date",
            "Message-ID",
            "In-Reply-To",
            "References",
            "Subject",
            "MIME-Version",
            "Content-Type",
            "Content-Disposition",
            "Content-Transfer-Encoding",
        ]
    );
    let value = |name: &str| {
        fields
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value.as_str())
            .unwrap()
    };
    assert_eq!(value("Subject"), "Referral for patient 943 476 5919");
    assert_eq!(value("References"), "<m-1@org.test> <m0@partner.example>");
    assert_eq!(value("MIME-Version"), "1.0");
    assert_eq!(
        value("Content-Type"),
        "application/pkcs7-mime; smime-type=enveloped-data; name=\"smime.p7m\""
    );
    assert_eq!(
        value("Content-Disposition"),
        "attachment; filename=\"smime.p7m\""
    );
    assert_eq!(value("Content-Transfer-Encoding"), "base64");

    let text = String::from_utf8(body).unwrap();
    let lines: Vec<&str> = text.split_terminator("\r\n").collect();
    assert!(lines.len() > 2, "{text}");
    assert!(lines[..lines.len() - 1].iter().all(|line| line.len() == 76));
    assert!(lines[lines.len() - 1].len() <= 76);
    assert!(!text.contains("Dear Bob"));
}

#[test]
fn outer_message_has_crlf_only() {
    let setup = Setup::new();
    setup.add("bob.pem", &Spec::recipient(BOB));
    let message = std::fs::read(setup.encrypt("", &MESSAGE.replace("\r\n", "\n"), BOB)).unwrap();

    let bare_lf = message
        .iter()
        .enumerate()
        .filter(|(index, byte)| **byte == b'\n' && (*index == 0 || message[index - 1] != b'\r'))
        .count();
    assert_eq!(bare_lf, 0);
}

#[test]
fn subject_replacement_hides_subject() {
    let setup = Setup::new();
    let bob = setup.add("bob.pem", &Spec::recipient(BOB));
    let path = setup.encrypt(
        "[smime]\nsubject = { replace = \"Encrypted message\" }\n",
        MESSAGE,
        BOB,
    );
    let message = std::fs::read(&path).unwrap();

    let (fields, _) = header_fields(&message);
    let subjects: Vec<&str> = fields
        .iter()
        .filter(|(name, _)| name == "Subject")
        .map(|(_, value)| value.as_str())
        .collect();
    assert_eq!(subjects, ["Encrypted message"]);
    assert!(!String::from_utf8_lossy(&message).contains("943 476 5919"));
    assert_eq!(openssl_decrypt(&path, &bob).unwrap(), ENTITY.as_bytes());
}

#[test]
fn subject_replacement_adds_missing_subject() {
    let setup = Setup::new();
    setup.add("bob.pem", &Spec::recipient(BOB));
    let original = "From: clinic@org.test\r\nTo: bob@partner.example\r\n\r\nHello\r\n";
    let path = setup.encrypt(
        "[smime]\nsubject = { replace = \"Encrypted\" }\n",
        original,
        BOB,
    );

    let (fields, _) = header_fields(&std::fs::read(path).unwrap());
    assert!(
        fields.contains(&("Subject".into(), "Encrypted".into())),
        "{fields:?}"
    );
}

#[test]
fn lf_message_decrypts_to_crlf_entity() {
    let setup = Setup::new();
    let bob = setup.add("bob.pem", &Spec::recipient(BOB));
    let message = setup.encrypt("", &MESSAGE.replace("\r\n", "\n"), BOB);

    assert_eq!(openssl_decrypt(&message, &bob).unwrap(), ENTITY.as_bytes());
}

#[test]
fn message_without_content_type_gets_text_plain() {
    let setup = Setup::new();
    let bob = setup.add("bob.pem", &Spec::recipient(BOB));
    let original =
        "From: clinic@org.test\r\nTo: bob@partner.example\r\nSubject: Hi\r\n\r\nHello\r\n";
    let message = setup.encrypt("", original, BOB);

    assert_eq!(
        String::from_utf8(openssl_decrypt(&message, &bob).unwrap()).unwrap(),
        "Content-Type: text/plain; charset=us-ascii\r\n\r\nHello\r\n"
    );
}

#[test]
fn smime_encrypted_input_is_reported() {
    let setup = Setup::new();
    setup.add("bob.pem", &Spec::recipient(BOB));
    // EnvelopedData, then AuthEnvelopedData.
    for extra in ["", "[smime]\ncontent_cipher = \"aes-256-gcm\"\n"] {
        let (directory, smime) = setup.smime(extra);
        let certificate = directory.lookup(BOB).unwrap();
        let once = encrypted(&smime, MESSAGE.as_bytes(), BOB, certificate);

        let again = smime.encrypt_for(&once, BOB, certificate).unwrap();
        let SmimeOutcome::AlreadyEncrypted(passed) = again else {
            panic!("encrypted twice: {extra}");
        };
        let body_of = |message: &[u8]| {
            let text = String::from_utf8_lossy(message).into_owned();
            text.split_once("\r\n\r\n").unwrap().1.to_string()
        };
        assert_eq!(body_of(&passed), body_of(&once), "{extra}");
    }
}

#[test]
fn pass_through_drops_headers_that_are_not_kept() {
    let setup = Setup::new();
    setup.add("bob.pem", &Spec::recipient(BOB));
    let (directory, smime) = setup.smime("");
    let certificate = directory.lookup(BOB).unwrap();
    let once = encrypted(&smime, MESSAGE.as_bytes(), BOB, certificate);
    let text = String::from_utf8(once).unwrap();
    let with_extras = text.replacen(
        "MIME-Version: 1.0\r\n",
        "Bcc: hidden@org.test\r\nX-Patient: 943 476 5919\r\nMIME-Version: 1.0\r\n",
        1,
    );

    let SmimeOutcome::AlreadyEncrypted(passed) = smime
        .encrypt_for(with_extras.as_bytes(), BOB, certificate)
        .unwrap()
    else {
        panic!("not recognised as encrypted");
    };
    let passed = String::from_utf8(passed).unwrap();
    assert!(!passed.contains("Bcc:"), "{passed}");
    assert!(!passed.contains("X-Patient"), "{passed}");
    assert!(passed.contains("smime-type=enveloped-data"), "{passed}");
}

#[test]
fn encryption_labels_on_plain_bodies_are_not_trusted() {
    let setup = Setup::new();
    let bob = setup.add("bob.pem", &Spec::recipient(BOB));
    let (directory, smime) = setup.smime("");
    let certificate = directory.lookup(BOB).unwrap();
    let head =
        "From: clinic@org.test\r\nTo: bob@partner.example\r\nSubject: Hi\r\nMIME-Version: 1.0\r\n";
    let cases = [
        // An S/MIME label over base64 of plain text.
        format!(
            "{head}Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n\
             Content-Transfer-Encoding: base64\r\n\r\nTkhTIG51bWJlciA5NDMgNDc2IDU5MTk=\r\n"
        ),
        // The label on the first of two Content-Type fields.
        format!(
            "{head}Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n\
             Content-Type: text/plain\r\n\r\nNHS number 943 476 5919\r\n"
        ),
        // A PGP/MIME label over a plain-text payload.
        format!(
            "{head}Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; \
             boundary=\"p\"\r\n\r\n--p\r\nContent-Type: application/pgp-encrypted\r\n\r\n\
             Version: 1\r\n--p\r\nContent-Type: application/octet-stream\r\n\r\n\
             NHS number 943 476 5919\r\n--p--\r\n"
        ),
    ];
    for case in cases {
        let outcome = smime
            .encrypt_for(case.as_bytes(), BOB, certificate)
            .unwrap();
        let SmimeOutcome::Encrypted(bytes) = outcome else {
            panic!("a plain body was passed through as encrypted:\n{case}");
        };
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("943 476 5919"), "{text}");
        let path = setup.root.path().join(format!("label-{}.eml", unique()));
        std::fs::write(&path, &bytes).unwrap();
        assert!(openssl_decrypt(&path, &bob).is_ok());
    }
}

#[test]
fn pgp_mime_input_is_reported() {
    let setup = Setup::new();
    setup.add("bob.pem", &Spec::recipient(BOB));
    let (directory, smime) = setup.smime("");
    let pgp = "From: clinic@org.test\r\nTo: bob@partner.example\r\nMIME-Version: 1.0\r\n\
        Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\";\r\n \
        boundary=\"p\"\r\n\r\n--p\r\nContent-Type: application/pgp-encrypted\r\n\r\n\
        Version: 1\r\n--p\r\nContent-Type: application/octet-stream\r\n\r\n\
        -----BEGIN PGP MESSAGE-----\r\n\r\nhQEMA\r\n-----END PGP MESSAGE-----\r\n--p--\r\n";

    let outcome = smime
        .encrypt_for(pgp.as_bytes(), BOB, directory.lookup(BOB).unwrap())
        .unwrap();
    assert!(matches!(outcome, SmimeOutcome::AlreadyEncrypted(_)));
}

#[test]
fn certificate_of_another_recipient_is_rejected() {
    let setup = Setup::new();
    setup.add("bob.pem", &Spec::recipient(BOB));
    let (directory, smime) = setup.smime("");

    let error = smime
        .encrypt_for(MESSAGE.as_bytes(), CAROL, directory.lookup(BOB).unwrap())
        .unwrap_err()
        .to_string();
    assert!(error.contains(CAROL), "{error}");
    assert!(error.contains("does not name the recipient"), "{error}");
}

#[test]
fn certificate_expired_since_load_is_rejected() {
    let setup = Setup::new();
    let mut spec = Spec::recipient(BOB);
    spec.not_after = 2;
    setup.add("bob.pem", &spec);
    let (directory, smime) = setup.smime("");
    let certificate = directory.lookup(BOB).expect("valid at load");
    std::thread::sleep(std::time::Duration::from_secs(3));

    let error = smime
        .encrypt_for(MESSAGE.as_bytes(), BOB, certificate)
        .unwrap_err()
        .to_string();
    assert!(error.contains("bob.pem"), "{error}");
    assert!(error.contains("expired at"), "{error}");
}

#[test]
fn malformed_header_is_an_error() {
    let setup = Setup::new();
    setup.add("bob.pem", &Spec::recipient(BOB));
    let (directory, smime) = setup.smime("");

    let error = smime
        .encrypt_for(
            b"From: a@org.test\r\nno colon here\r\n\r\nx",
            BOB,
            directory.lookup(BOB).unwrap(),
        )
        .unwrap_err()
        .to_string();
    assert!(error.contains(BOB), "{error}");
    assert!(error.contains("header line 2"), "{error}");
}

#[test]
fn signing_key_of_another_certificate_is_rejected() {
    let setup = Setup::new();
    let signer = setup.ca.issue(&Spec::recipient("clinic@org.test"));
    let other = setup.ca.issue(&Spec::recipient("other@org.test"));
    std::fs::write(
        setup.keys_dir().join("signing.pem"),
        signer.certificate_pem(),
    )
    .unwrap();
    std::fs::write(setup.keys_dir().join("signing.key"), other.key_pem()).unwrap();
    let config = setup
        .config("[smime]\nsigning_certificate = \"signing.pem\"\nsigning_key = \"signing.key\"\n");

    let error = Smime::new(&config).unwrap_err().to_string();
    assert!(error.contains("signing.key"), "{error}");
    assert!(error.contains("does not match"), "{error}");
}

// ---------------------------------------------------------------------------------------
// The certificate folder

/// Loads the folder and returns the one skipped entry, failing when there is not exactly one.
fn only_skipped(directory: &CertificateDirectory) -> String {
    assert_eq!(directory.skipped().len(), 1, "{:?}", directory.skipped());
    directory.skipped()[0].reason.clone()
}

/// Writes Bob's certificate, changed by `change`, loads the folder, checks that Bob has no
/// certificate and returns the one skipped entry.
fn skipped_bob(change: impl FnOnce(&mut Spec)) -> SkippedCertificate {
    let setup = Setup::new();
    let mut spec = Spec::recipient(BOB);
    change(&mut spec);
    setup.add("bob.pem", &spec);
    let directory = setup.directory("");

    assert!(directory.lookup(BOB).is_none());
    assert_eq!(directory.skipped().len(), 1, "{:?}", directory.skipped());
    directory.skipped()[0].clone()
}

#[test]
fn certificate_is_found_by_san_addresses() {
    let setup = Setup::new();
    let mut spec = Spec::recipient(BOB);
    spec.san_emails.push("Robert@Partner.Example".into());
    setup.add("bob.pem", &spec);
    let directory = setup.directory("");

    assert!(directory.skipped().is_empty(), "{:?}", directory.skipped());
    assert!(directory.lookup(BOB).is_some());
    assert!(directory.lookup("bob@PARTNER.example").is_some());
    assert!(directory.lookup("Robert@partner.example").is_some());
    assert!(directory.lookup("robert@partner.example").is_none());
    assert!(directory.lookup("Bob@partner.example").is_none());
    assert!(directory.lookup(CAROL).is_none());
    let certificate = directory.lookup(BOB).unwrap();
    assert_eq!(certificate.subject(), "CN=bob");
    assert_eq!(certificate.issuer(), "CN=sealgate test CA");
    assert_eq!(certificate.path(), setup.recipients_dir().join("bob.pem"));
}

#[test]
fn subject_email_is_used_without_san() {
    let setup = Setup::new();
    let mut spec = Spec::recipient(BOB);
    spec.san_emails.clear();
    spec.subject_email = Some(BOB.into());
    setup.add("bob.pem", &spec);
    let directory = setup.directory("");

    assert!(directory.lookup(BOB).is_some());
}

#[test]
fn subject_email_is_ignored_with_san() {
    let setup = Setup::new();
    let mut spec = Spec::recipient(BOB);
    spec.subject_email = Some("old-bob@partner.example".into());
    setup.add("bob.pem", &spec);
    let directory = setup.directory("");

    assert!(directory.lookup(BOB).is_some());
    assert!(directory.lookup("old-bob@partner.example").is_none());
}

#[test]
fn certificate_without_address_is_skipped() {
    let setup = Setup::new();
    let mut spec = Spec::recipient(BOB);
    spec.san_emails.clear();
    setup.add("bob.pem", &spec);
    let directory = setup.directory("");

    let reason = only_skipped(&directory);
    assert!(reason.contains("no email address"), "{reason}");
}

#[test]
fn expired_certificate_is_skipped() {
    let skipped = skipped_bob(|spec| {
        spec.not_before = -400 * DAY;
        spec.not_after = -30 * DAY;
    });
    let reason = &skipped.reason;
    assert!(reason.starts_with("expired at "), "{reason}");
    assert_eq!(skipped.subject.as_deref(), Some("CN=bob"));
    assert!(skipped.path.ends_with("recipients/bob.pem"), "{skipped:?}");
}

#[test]
fn not_yet_valid_certificate_is_skipped() {
    let skipped = skipped_bob(|spec| {
        spec.not_before = 10 * DAY;
        spec.not_after = 400 * DAY;
    });
    let reason = &skipped.reason;
    assert!(reason.starts_with("not valid before "), "{reason}");
}

#[test]
fn sign_only_key_usage_is_skipped() {
    let skipped = skipped_bob(|spec| {
        spec.usage = Usage::SignOnly;
    });
    let reason = &skipped.reason;
    assert!(
        reason.contains("key usage does not allow key encipherment"),
        "{reason}"
    );
    assert!(reason.contains("digitalSignature"), "{reason}");
}

#[test]
fn eku_without_email_protection_is_skipped() {
    let skipped = skipped_bob(|spec| {
        spec.extended = Extended::TlsOnly;
    });
    let reason = &skipped.reason;
    assert!(reason.contains("email protection"), "{reason}");
}

#[test]
fn certificate_without_usage_extensions_is_used() {
    let setup = Setup::new();
    let mut spec = Spec::recipient(BOB);
    spec.usage = Usage::Absent;
    spec.extended = Extended::Absent;
    let bob = setup.add("bob.pem", &spec);
    let directory = setup.directory("");

    assert!(directory.skipped().is_empty(), "{:?}", directory.skipped());
    let message = setup.encrypt("", MESSAGE, BOB);
    assert_eq!(openssl_decrypt(&message, &bob).unwrap(), ENTITY.as_bytes());
}

#[test]
fn rsa_1024_key_is_skipped() {
    let skipped = skipped_bob(|spec| {
        spec.key = KeyKind::Rsa(1024);
    });
    let reason = &skipped.reason;
    assert!(reason.contains("RSA key of 1024 bits"), "{reason}");
}

#[test]
fn ec_key_is_skipped() {
    let skipped = skipped_bob(|spec| {
        spec.key = KeyKind::EcP256;
    });
    let reason = &skipped.reason;
    assert!(reason.contains("EC keys are not supported"), "{reason}");
}

#[test]
fn corrupt_file_is_skipped() {
    let setup = Setup::new();
    setup.add("bob.pem", &Spec::recipient(BOB));
    let pem = String::from_utf8(setup.ca.issue(&Spec::recipient(CAROL)).certificate_pem()).unwrap();
    // Cut the base64 in half, keeping the PEM markers.
    let lines: Vec<&str> = pem.lines().collect();
    let corrupt = format!(
        "{}\n{}\n{}\n",
        lines[0],
        lines[1..lines.len() / 2].join("\n"),
        lines[lines.len() - 1]
    );
    std::fs::write(setup.recipients_dir().join("carol.pem"), corrupt).unwrap();
    let directory = setup.directory("");

    assert!(directory.lookup(BOB).is_some());
    assert!(directory.lookup(CAROL).is_none());
    let reason = only_skipped(&directory);
    assert!(reason.contains("invalid PEM"), "{reason}");
    assert_eq!(
        directory.skipped()[0].path,
        setup.recipients_dir().join("carol.pem")
    );
}

#[test]
fn unrelated_files_are_skipped() {
    let setup = Setup::new();
    setup.add("bob.pem", &Spec::recipient(BOB));
    let folder = setup.recipients_dir();
    std::fs::write(folder.join("README.txt"), "Partner certificates go here.\n").unwrap();
    std::fs::write(folder.join("notes.bin"), [0u8, 159, 146, 150]).unwrap();
    let key = setup.ca.issue(&Spec::recipient(CAROL)).key_pem();
    std::fs::write(folder.join("carol.key"), key).unwrap();
    std::fs::write(folder.join(".gitkeep"), "").unwrap();
    std::fs::create_dir(folder.join("old")).unwrap();
    let directory = setup.directory("");

    assert!(directory.lookup(BOB).is_some());
    let reasons: Vec<(String, String)> = directory
        .skipped()
        .iter()
        .map(|skipped| {
            let name = skipped.path.file_name().unwrap().to_string_lossy();
            (name.into_owned(), skipped.reason.clone())
        })
        .collect();
    assert_eq!(
        reasons,
        [
            ("README.txt".into(), "not a PEM or DER certificate".into()),
            ("carol.key".into(), "no PEM certificate in the file".into()),
            ("notes.bin".into(), "not a PEM or DER certificate".into()),
        ]
    );
}

#[test]
fn untrusted_ca_is_skipped_with_anchors() {
    let setup = Setup::new();
    setup.add("bob.pem", &Spec::recipient(BOB));
    let stranger = Authority::new("stranger CA");
    setup.write("carol.pem", stranger.issue(&Spec::recipient(CAROL)));
    let directory = setup.directory("[smime]\ntrust_anchors = [\"ca.pem\"]\n");

    assert!(directory.lookup(BOB).is_some());
    assert!(directory.lookup(CAROL).is_none());
    let reason = only_skipped(&directory);
    assert!(
        reason.contains("does not chain to a configured trust anchor"),
        "{reason}"
    );
}

#[test]
fn untrusted_ca_is_accepted_without_anchors() {
    let setup = Setup::new();
    let stranger = Authority::new("stranger CA");
    setup.write("carol.pem", stranger.issue(&Spec::recipient(CAROL)));
    let directory = setup.directory("");

    assert!(directory.skipped().is_empty(), "{:?}", directory.skipped());
    assert!(directory.lookup(CAROL).is_some());
}

#[test]
fn missing_trust_anchor_is_an_error() {
    let setup = Setup::new();
    let config = setup.config("[smime]\ntrust_anchors = [\"absent.pem\"]\n");

    let error = CertificateDirectory::load(&config).unwrap_err().to_string();
    assert!(error.contains("absent.pem"), "{error}");
}

#[test]
fn latest_expiry_wins() {
    let setup = Setup::new();
    let mut short = Spec::recipient(BOB);
    short.not_after = 30 * DAY;
    let mut long = Spec::recipient(BOB);
    long.not_after = 700 * DAY;
    let mut middle = Spec::recipient(BOB);
    middle.not_after = 300 * DAY;
    setup.add("a-short.pem", &short);
    setup.add("b-long.pem", &long);
    setup.add("c-middle.pem", &middle);
    let directory = setup.directory("");

    let chosen = directory.lookup(BOB).unwrap();
    assert_eq!(chosen.path(), setup.recipients_dir().join("b-long.pem"));
    assert_eq!(directory.certificates().len(), 3);
}

#[test]
fn expired_newer_certificate_does_not_win() {
    let setup = Setup::new();
    let mut expired = Spec::recipient(BOB);
    expired.not_before = -900 * DAY;
    expired.not_after = -DAY;
    setup.add("a-valid.pem", &Spec::recipient(BOB));
    setup.add("b-expired.pem", &expired);
    let directory = setup.directory("");

    let chosen = directory.lookup(BOB).unwrap();
    assert_eq!(chosen.path(), setup.recipients_dir().join("a-valid.pem"));
}

#[test]
fn pem_bundle_and_der_files_are_read() {
    let setup = Setup::new();
    let bob = setup.ca.issue(&Spec::recipient(BOB));
    let carol = setup.ca.issue(&Spec::recipient(CAROL));
    let dave = setup.ca.issue(&Spec::recipient("dave@third.example"));
    let mut bundle = bob.certificate_pem();
    bundle.extend_from_slice(&carol.certificate_pem());
    std::fs::write(setup.recipients_dir().join("partners"), bundle).unwrap();
    std::fs::write(
        setup.recipients_dir().join("dave.cer"),
        dave.certificate.to_der().unwrap(),
    )
    .unwrap();
    let directory = setup.directory("");

    assert!(directory.skipped().is_empty(), "{:?}", directory.skipped());
    assert!(directory.lookup(BOB).is_some());
    assert!(directory.lookup(CAROL).is_some());
    assert!(directory.lookup("dave@third.example").is_some());
    let addresses: Vec<&str> = directory.entries().map(|(address, _)| address).collect();
    assert_eq!(
        addresses,
        ["bob@partner.example", CAROL, "dave@third.example"]
    );
}

#[test]
fn missing_folder_gives_empty_directory() {
    let setup = Setup::new();
    std::fs::remove_dir(setup.recipients_dir()).unwrap();
    let directory = setup.directory("");

    assert!(!directory.dir_exists());
    assert!(directory.lookup(BOB).is_none());
    let (report, all_valid) = directory.check_report();
    assert!(!all_valid);
    assert!(report.contains("folder not found"), "{report}");
}

#[test]
fn check_report_lists_every_file() {
    let setup = Setup::new();
    setup.add("bob.pem", &Spec::recipient(BOB));
    let mut weak = Spec::recipient(CAROL);
    weak.key = KeyKind::Rsa(1024);
    setup.add("carol.pem", &weak);
    let directory = setup.directory("");

    let (report, all_valid) = directory.check_report();
    assert!(!all_valid);
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines.len(), 2, "{report}");
    assert!(lines[0].contains("bob.pem: valid"), "{report}");
    assert!(lines[0].contains(BOB), "{report}");
    assert!(
        lines[1].contains("carol.pem: invalid: RSA key of 1024 bits"),
        "{report}"
    );
}

#[test]
fn cli_certs_check_fails_on_invalid_file() {
    let setup = Setup::new();
    setup.add("bob.pem", &Spec::recipient(BOB));
    let config = setup.root.path().join("sealgate.toml");
    std::fs::write(&config, setup.config_text("")).unwrap();
    let sealgate = env!("CARGO_BIN_EXE_sealgate");

    let valid = run(Command::new(sealgate)
        .args(["certs", "--config"])
        .arg(&config)
        .arg("check"));
    assert!(valid.status.success(), "{}", stderr(&valid));

    std::fs::write(
        setup.recipients_dir().join("junk.pem"),
        "-----BEGIN CERTIFICATE-----\n",
    )
    .unwrap();
    let invalid = run(Command::new(sealgate)
        .args(["certs", "--config"])
        .arg(&config)
        .arg("check"));
    assert!(!invalid.status.success());
    let output = String::from_utf8_lossy(&invalid.stdout);
    assert!(output.contains("junk.pem: invalid"), "{output}");
    assert!(output.contains("bob.pem: valid"), "{output}");
}

#[test]
fn cli_certs_list_prints_addresses() {
    let setup = Setup::new();
    setup.add("bob.pem", &Spec::recipient(BOB));
    let config = setup.root.path().join("sealgate.toml");
    std::fs::write(&config, setup.config_text("")).unwrap();

    let list = run(Command::new(env!("CARGO_BIN_EXE_sealgate"))
        .args(["certs", "--config"])
        .arg(&config)
        .arg("list"));
    assert!(list.status.success(), "{}", stderr(&list));
    let output = String::from_utf8_lossy(&list.stdout);
    let first = output.lines().next().unwrap_or_default();
    assert!(first.starts_with(BOB), "{output}");
    assert!(first.contains("subject=\"CN=bob\""), "{output}");
    assert!(first.contains("issuer=\"CN=sealgate test CA\""), "{output}");
    assert!(first.contains("bob.pem"), "{output}");
}
