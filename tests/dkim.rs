//! DKIM signing and the published DNS records, end to end. Every kind of message the real
//! binary sends is verified by dkimpy, an independent verifier, against keys served by a
//! DNS server on loopback. The portal's passcode mail and reply are driven through its HTTP
//! endpoints, with the passcode read from the mail. The records `sealgate dns records` prints are parsed with
//! mail-auth's own parsers, and `sealgate dns check` is run against good and bad zones.

mod common;
mod gateway;
#[allow(dead_code)]
#[path = "smime/pki.rs"]
mod smime_pki;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{DnsServer, ServerScript, SmtpServer, Zone};
use gateway::{Gateway, base_config, send};
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::dmarc::{Dmarc, Policy};
use mail_auth::mta_sts::{MtaSts, TlsRpt};
use mail_auth::spf::Spf;
use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator};
use sealgate::config::Config;
use sealgate::dkim::{DkimAlgorithm, MessageSigner, generate_key, split_txt};

const BODY_HASH: mail_auth::dkim::DkimError = mail_auth::dkim::DkimError::FailedBodyHashMatch;

const PYTHON: &str = "/usr/bin/python3";
const VERIFIER: &str = "tests/fixtures/dkim/dkimpy_verify.py";

/// True when Debian's dkimpy (python3-dkim, with python3-dnspython and python3-nacl for
/// Ed25519) can be imported. In CI its absence fails the test instead of skipping it.
fn dkimpy_available() -> bool {
    let found = Command::new(PYTHON)
        .args(["-c", "import dkim, dns.resolver, nacl.signing"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "dkimpy is missing: CI must install python3-dkim, python3-dnspython and \
             python3-nacl for {PYTHON} (see .ci/run)"
        );
        eprintln!("skipping: dkimpy not importable by {PYTHON}; apt-get install python3-dkim");
    }
    found
}

/// Runs dkimpy on `message` with keys from `dns`; returns (all signatures pass, output).
fn dkimpy_verify(message: &[u8], dns: SocketAddr, dir: &Path) -> (bool, String) {
    let file = tempfile::NamedTempFile::new_in(dir).unwrap();
    std::fs::write(file.path(), message).unwrap();
    let output = Command::new(PYTHON)
        .arg(VERIFIER)
        .arg(dns.ip().to_string())
        .arg(dns.port().to_string())
        .arg(file.path())
        .output()
        .expect("run dkimpy");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Returns every DKIM-Signature field of a message, unfolded, without the field name.
fn signature_fields(message: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(message);
    let header = text.split("\r\n\r\n").next().unwrap_or_default();
    let unfolded = header.replace("\r\n\t", " ").replace("\r\n ", " ");
    unfolded
        .lines()
        .filter_map(|line| {
            line.strip_prefix("DKIM-Signature:")
                .map(|value| value.trim().to_owned())
        })
        .collect()
}

/// Returns the value of a tag in a DKIM-Signature, whitespace removed.
fn tag(signature: &str, name: &str) -> Option<String> {
    signature.split(';').find_map(|pair| {
        let (tag, value) = pair.split_once('=')?;
        (tag.trim() == name).then(|| value.split_whitespace().collect())
    })
}

/// Generates a key in `keys/dkim/` and returns the TXT record text.
fn key_record(keys: &Path, domain: &str, selector: &str, algorithm: DkimAlgorithm) -> String {
    let path = keys.join(sealgate::dkim::default_key_file(domain, selector));
    generate_key(&path, algorithm).unwrap().record
}

fn dkim_entry(domain: &str, selector: &str, algorithm: &str) -> String {
    format!(
        "[[dkim]]\ndomain = \"{domain}\"\nselector = \"{selector}\"\nalgorithm = \"{algorithm}\"\n"
    )
}

fn message(from: &str, to: &str, subject: &str, body: &str) -> String {
    format!(
        "From: {from}\nTo: {to}\nSubject: {subject}\nDate: Thu, 03 Dec 2026 10:00:00 +0000\n\
         Message-ID: <{}@clinic.example.org>\nMIME-Version: 1.0\n\
         Content-Type: text/plain; charset=us-ascii\n\n{body}\n",
        subject.replace(' ', "-")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkimpy_verifies_every_kind_of_message() {
    if !dkimpy_available() {
        return;
    }
    common::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    sealgate::store::create_master_key(&keys).unwrap();
    let rsa = key_record(
        &keys,
        "clinic.example.org",
        "rsa2026",
        DkimAlgorithm::RsaSha256,
    );
    let ed = key_record(
        &keys,
        "clinic.example.org",
        "ed2026",
        DkimAlgorithm::Ed25519Sha256,
    );
    let rsa_strings = split_txt(&rsa);
    assert!(
        rsa_strings.len() > 1,
        "an RSA-2048 record exceeds 255 bytes"
    );
    let dns = DnsServer::start(
        Zone::new()
            .txt_strings("rsa2026._domainkey.clinic.example.org", &rsa_strings)
            .txt("ed2026._domainkey.clinic.example.org", &ed),
    )
    .await;

    let authority = smime_pki::Authority::new("Partner Test CA");
    let bob = authority.issue(&smime_pki::Spec::recipient("bob@partner.example"));
    std::fs::create_dir_all(keys.join("recipients")).unwrap();
    std::fs::write(keys.join("recipients/bob.pem"), bob.certificate_pem()).unwrap();

    let receiver = SmtpServer::start(ServerScript::default()).await;
    let rejecting = SmtpServer::start(ServerScript {
        rcpt_replies: vec![(
            "nobody@bounce.example".into(),
            "550 5.1.1 no such user".into(),
        )],
        ..ServerScript::default()
    })
    .await;
    // The catch-all route offers no STARTTLS, so forced-tls mail to nhs.net falls back to
    // the portal after one attempt and the sender gets a notice.
    let extra = format!(
        "[policy]\nforced_tls_fallback_after = 1\n\n\
         [portal]\nsender_receipt = true\ntls = false\n\
         base_url = \"https://portal.clinic.example.org\"\n\n\
         {}{}\
         [[delivery.routes]]\ndomain = \"bounce.example\"\nhost = \"127.0.0.1\"\nport = {}\n\n\
         [[delivery.routes]]\ndomain = \"*\"\nhost = \"127.0.0.1\"\nport = {}\n",
        dkim_entry("clinic.example.org", "rsa2026", "rsa-sha256"),
        dkim_entry("clinic.example.org", "ed2026", "ed25519-sha256"),
        rejecting.port(),
        receiver.port(),
    );
    // The gateway's own mail (DSNs, notifications, receipts) comes from this host name, so
    // it is signed with the key of its parent domain.
    let config = base_config(dir.path(), &extra).replace(
        "hostname = \"gateway.test.example\"",
        "hostname = \"gateway.clinic.example.org\"",
    );
    let gateway = Gateway::start(dir.path(), &config);

    let ada = "ada.lovell@clinic.example.org";
    let plain_id = send(
        gateway.smtp,
        ada,
        &["friend@sink.example"],
        &message(
            ada,
            "friend@sink.example",
            "plain relayed",
            "Lunch on Friday?",
        ),
    )
    .await;
    send(
        gateway.smtp,
        ada,
        &["bob@partner.example"],
        &message(
            ada,
            "bob@partner.example",
            "[secure] referral",
            "Clinical details.",
        ),
    )
    .await;
    send(
        gateway.smtp,
        ada,
        &["sam.patient@mailbox.example"],
        &message(
            ada,
            "sam.patient@mailbox.example",
            "[secure] results",
            "Your results.",
        ),
    )
    .await;
    send(
        gateway.smtp,
        ada,
        &["nobody@bounce.example"],
        &message(
            ada,
            "nobody@bounce.example",
            "to bounce",
            "Nobody reads this.",
        ),
    )
    .await;
    send(
        gateway.smtp,
        ada,
        &["gp@trust.nhs.net"],
        &message(ada, "gp@trust.nhs.net", "referral", "Referral letter."),
    )
    .await;
    let unsigned_id = send(
        gateway.smtp,
        "someone@elsewhere.example",
        &["friend@sink.example"],
        &message(
            "someone@elsewhere.example",
            "friend@sink.example",
            "no key",
            "Unsigned.",
        ),
    )
    .await;

    // Plain, S/MIME, notification, two sender receipts (for sam and for the fallback of
    // gp), DSN, fallback notice and the unsigned one. The notification to gp waits for
    // verified TLS.
    let received = receiver.wait_for_messages(8, Duration::from_secs(40)).await;
    assert_eq!(received.len(), 8, "log:\n{}", gateway.log());
    // Each kind is identified by its envelope recipient and a field its builder writes.
    let find = |what: &str, recipient: &str, marker: &str| {
        received
            .iter()
            .find(|message| {
                message.recipients == [recipient]
                    && String::from_utf8_lossy(&message.data).contains(marker)
            })
            .unwrap_or_else(|| panic!("no {what} received; log:\n{}", gateway.log()))
            .data
            .clone()
    };
    let notifier = "<no-reply@gateway.clinic.example.org>";
    let kinds: Vec<(&str, Vec<u8>)> = vec![
        (
            "relayed plain message",
            find("plain", "friend@sink.example", "Subject: plain relayed"),
        ),
        (
            "S/MIME message",
            find("S/MIME", "bob@partner.example", "smime-type=enveloped-data"),
        ),
        (
            "portal notification",
            find("notification", "sam.patient@mailbox.example", notifier),
        ),
        ("sender receipt", find("receipt", ada, notifier)),
        ("DSN", find("DSN", ada, "multipart/report")),
        (
            "forced-TLS fallback notice",
            find(
                "fallback notice",
                ada,
                "Subject: Message to gp@trust.nhs.net moved to the secure portal",
            ),
        ),
    ];

    for (kind, data) in &kinds {
        let (passed, output) = dkimpy_verify(data, dns.addr(), dir.path());
        assert!(passed, "dkimpy rejected the {kind}: {output}");
        assert_eq!(
            output.matches(" pass").count(),
            2,
            "the {kind} needs an RSA and an Ed25519 signature: {output}"
        );
        assert!(output.contains("a=rsa-sha256"), "{kind}: {output}");
        assert!(output.contains("a=ed25519-sha256"), "{kind}: {output}");

        let signatures = signature_fields(data);
        assert_eq!(signatures.len(), 2, "{kind}");
        for signature in &signatures {
            assert_eq!(tag(signature, "d").as_deref(), Some("clinic.example.org"));
            assert_eq!(tag(signature, "c").as_deref(), Some("relaxed/relaxed"));
            assert!(tag(signature, "l").is_none(), "{kind} has l=: {signature}");
            assert!(
                tag(signature, "t").is_some(),
                "{kind} has no t=: {signature}"
            );
            let signed = tag(signature, "h").unwrap().to_ascii_lowercase();
            assert_eq!(
                signed.split(':').filter(|name| *name == "from").count(),
                2,
                "{kind}: From is not oversigned: {signature}"
            );
        }
    }

    // A body changed after signing no longer verifies.
    let plain = &kinds[0].1;
    let tampered = String::from_utf8_lossy(plain).replace("Lunch on Friday?", "Lunch on Monday?");
    assert_ne!(tampered.as_bytes(), plain.as_slice());
    let (passed, output) = dkimpy_verify(tampered.as_bytes(), dns.addr(), dir.path());
    assert!(!passed, "dkimpy accepted a changed body: {output}");
    assert!(output.contains("fail"), "{output}");

    // Mail from a domain without a key leaves unsigned, and the log line shows dkim=none.
    let unsigned = find("unsigned", "friend@sink.example", "Subject: no key");
    assert!(signature_fields(&unsigned).is_empty());
    let line = gateway
        .wait_for_log(
            &format!("{unsigned_id}: to=<friend@sink.example>, relay="),
            Duration::from_secs(5),
        )
        .expect("delivery line of the unsigned message");
    assert!(line.contains(", dkim=none, "), "{line}");
    let line = gateway
        .wait_for_log(
            &format!("{plain_id}: to=<friend@sink.example>, relay="),
            Duration::from_secs(5),
        )
        .expect("delivery line of the signed message");
    assert!(
        line.contains(", dkim=clinic.example.org/rsa2026+clinic.example.org/ed2026, "),
        "{line}"
    );

    // The passcode mail and the reply, driven through the portal's HTTP endpoints as a
    // browser would drive them.
    let portal: SocketAddr = gateway
        .wait_for_log("portal listening address=", Duration::from_secs(5))
        .and_then(|line| {
            let address = line.split("address=").nth(1)?.split_whitespace().next()?;
            address.parse().ok()
        })
        .expect("portal address in the log");
    let notification = find("notification", "sam.patient@mailbox.example", notifier);
    let text = body_text(&notification);
    let link = "https://portal.clinic.example.org/m/";
    let token_start = text.find(link).expect("link in the notification") + link.len();
    let token: String = text[token_start..]
        .chars()
        .take_while(|ch| ch.is_ascii_alphanumeric() || *ch == '-' || *ch == '_')
        .collect();

    let page = http(portal, "GET", &format!("/m/{token}"), "", None).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let csrf_cookie = format!(
        "__Host-sealgate-csrf={}",
        page.cookie("__Host-sealgate-csrf").expect("CSRF cookie")
    );
    let csrf = page.hidden_csrf().expect("CSRF field");
    let form = ("application/x-www-form-urlencoded", format!("csrf={csrf}"));
    let requested = http(
        portal,
        "POST",
        &format!("/m/{token}/passcode"),
        &csrf_cookie,
        Some(form),
    )
    .await;
    assert_eq!(requested.status, 200, "{}", requested.body);
    let received = receiver.wait_for_messages(9, Duration::from_secs(20)).await;
    let passcode_mail = received
        .iter()
        .find(|message| String::from_utf8_lossy(&message.data).contains("Your passcode"))
        .expect("passcode mail")
        .data
        .clone();
    let passcode: String = body_text(&passcode_mail)
        .split("Your passcode is ")
        .nth(1)
        .expect("passcode in the mail")
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();

    let form = (
        "application/x-www-form-urlencoded",
        format!("csrf={csrf}&passcode={passcode}"),
    );
    let verified = http(
        portal,
        "POST",
        &format!("/m/{token}/verify"),
        &csrf_cookie,
        Some(form),
    )
    .await;
    assert_eq!(verified.status, 303, "{}", verified.body);
    let session = format!(
        "{csrf_cookie}; __Host-sealgate-session={}",
        verified
            .cookie("__Host-sealgate-session")
            .expect("session cookie")
    );
    let message_page = http(
        portal,
        "GET",
        &format!("/m/{token}/message"),
        &session,
        None,
    )
    .await;
    assert_eq!(message_page.status, 200, "{}", message_page.body);
    let session_csrf = message_page
        .hidden_csrf()
        .expect("CSRF field on the message page");
    let boundary = "sealgate-test-boundary";
    let multipart = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{session_csrf}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"text\"\r\n\r\nThank you, received.\r\n\
         --{boundary}--\r\n"
    );
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let replied = http(
        portal,
        "POST",
        &format!("/m/{token}/reply"),
        &session,
        Some((&content_type, multipart)),
    )
    .await;
    assert_eq!(replied.status, 200, "{}", replied.body);
    let received = receiver
        .wait_for_messages(10, Duration::from_secs(20))
        .await;
    let reply = received
        .iter()
        .find(|message| {
            message.recipients == [ada]
                && String::from_utf8_lossy(&message.data).contains("Thank you, received.")
        })
        .unwrap_or_else(|| panic!("no portal reply; log:\n{}", gateway.log()))
        .data
        .clone();

    let (passed, output) = dkimpy_verify(&passcode_mail, dns.addr(), dir.path());
    assert!(passed, "dkimpy rejected the passcode mail: {output}");
    assert_eq!(
        output.matches("d=clinic.example.org").count(),
        2,
        "{output}"
    );
    // The reply's From is the patient's address, whose domain has no key; the portal's
    // own address in Sender: picks the organisation's keys.
    let (passed, output) = dkimpy_verify(&reply, dns.addr(), dir.path());
    assert!(passed, "dkimpy rejected the portal reply: {output}");
    assert_eq!(
        output.matches("d=clinic.example.org").count(),
        2,
        "{output}"
    );
}

/// Returns the first text part of a message, decoded.
fn body_text(message: &[u8]) -> String {
    mail_parser::MessageParser::default()
        .parse(message)
        .and_then(|parsed| parsed.body_text(0).map(|text| text.into_owned()))
        .expect("a text part")
}

/// An HTTP response read whole.
struct HttpResponse {
    status: u16,
    head: String,
    body: String,
}

impl HttpResponse {
    /// Returns the value a `Set-Cookie` field gives cookie `name`.
    fn cookie(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (field, value) = line.split_once(':')?;
            if !field.eq_ignore_ascii_case("set-cookie") {
                return None;
            }
            let value = value.trim().strip_prefix(&format!("{name}="))?;
            Some(value.split(';').next()?.to_owned())
        })
    }

    /// Returns the value of the form's hidden `csrf` field.
    fn hidden_csrf(&self) -> Option<String> {
        let start = self.body.find("name=\"csrf\" value=\"")? + "name=\"csrf\" value=\"".len();
        let length = self.body[start..].find('"')?;
        Some(self.body[start..start + length].to_owned())
    }
}

/// Sends one HTTP/1.1 request to the portal and reads the response until the server
/// closes the connection.
async fn http(
    address: SocketAddr,
    method: &str,
    path: &str,
    cookies: &str,
    body: Option<(&str, String)>,
) -> HttpResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: portal.clinic.example.org\r\nConnection: close\r\n"
    );
    if !cookies.is_empty() {
        request.push_str(&format!("Cookie: {cookies}\r\n"));
    }
    if let Some((content_type, content)) = &body {
        request.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            content.len()
        ));
    }
    request.push_str("\r\n");
    if let Some((_, content)) = &body {
        request.push_str(content);
    }
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("portal answered within 10s")
        .unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    HttpResponse {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// Writes a config with keys for example.org and the `[dns_records]` settings, and returns
/// its path.
fn records_config(dir: &Path, dns: &str) -> std::path::PathBuf {
    let keys = dir.join("keys");
    key_record(&keys, "example.org", "rsa2026", DkimAlgorithm::RsaSha256);
    key_record(&keys, "example.org", "ed2026", DkimAlgorithm::Ed25519Sha256);
    let path = dir.join("sealgate.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nkeys_dir = \"keys\"\n\n[delivery]\ndns_servers = [\"{dns}\"]\n\
             dns_timeout = \"2s\"\n\n\
             [dns_records]\noutbound_addresses = [\"192.0.2.25\", \"2001:db8::25\"]\n\
             dmarc_rua = [\"dmarc@example.org\"]\ntls_rpt_rua = [\"mailto:tls@example.org\"]\n\n{}{}",
            dkim_entry("example.org", "rsa2026", "rsa-sha256"),
            dkim_entry("example.org", "ed2026", "ed25519-sha256"),
        ),
    )
    .unwrap();
    path
}

fn sealgate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sealgate"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs the binary, asserts that it succeeded and returns its standard output.
fn sealgate_output(args: &[&str]) -> String {
    let output = sealgate(args);
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "sealgate {args:?}: {printed}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    printed
}

/// Returns the text of the record named `name`.
fn record_text(records: &[(String, String)], name: &str) -> String {
    records
        .iter()
        .find(|(owner, _)| owner == name)
        .map(|(_, text)| text.clone())
        .unwrap_or_else(|| panic!("no record for {name} in {records:?}"))
}

/// Parses zone lines `NAME. IN TXT "a" "b"` into (name, joined text).
fn zone_records(output: &str) -> Vec<(String, String)> {
    output
        .lines()
        .filter(|line| !line.starts_with(';'))
        .filter_map(|line| {
            let (name, strings) = line.split_once(". IN TXT ")?;
            let text: String = strings
                .split('"')
                .enumerate()
                .filter(|(index, _)| index % 2 == 1)
                .map(|(_, part)| part)
                .collect();
            Some((name.to_owned(), text))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_records_parse_and_key_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let mx = DnsServer::start(Zone::new().mx("example.org", 10, "mx1.example.org")).await;
    let config_path = records_config(dir.path(), &mx.addr().to_string());
    let printed = sealgate_output(&[
        "dns",
        "--config",
        config_path.to_str().unwrap(),
        "records",
        "example.org",
    ]);
    let records = zone_records(&printed);
    let record = |name: &str| record_text(&records, name);

    let spf = Spf::parse(record("example.org").as_bytes()).expect("SPF parses");
    assert_eq!(spf.directives.len(), 3, "ip4, ip6 and -all: {spf:?}");
    let dmarc = Dmarc::parse(record("_dmarc.example.org").as_bytes()).expect("DMARC parses");
    assert_eq!(dmarc.p, Policy::Reject);
    assert_eq!(dmarc.rua.len(), 1);
    assert_eq!(dmarc.rua[0].uri, "dmarc@example.org");
    MtaSts::parse(record("_mta-sts.example.org").as_bytes()).expect("MTA-STS TXT parses");
    let tls_rpt =
        TlsRpt::parse(record("_smtp._tls.example.org").as_bytes()).expect("TLS-RPT parses");
    assert_eq!(tls_rpt.rua.len(), 1);
    for selector in ["rsa2026", "ed2026"] {
        let name = format!("{selector}._domainkey.example.org");
        DomainKey::parse(record(&name).as_bytes()).expect("DKIM key record parses");
    }
    for line in printed.lines().filter(|line| line.contains(" IN TXT ")) {
        for part in line.split('"').skip(1).step_by(2) {
            assert!(part.len() <= 255, "string over 255 bytes: {line}");
        }
    }
    let policy = printed
        .split("; ----- begin mta-sts.txt -----\n")
        .nth(1)
        .and_then(|rest| rest.split("; ----- end mta-sts.txt -----").next())
        .expect("policy file between markers");
    assert_eq!(
        policy, "version: STSv1\nmode: enforce\nmx: mx1.example.org\nmax_age: 604800\n",
        "MX names come from DNS when not configured"
    );

    // The printed DKIM records, served on loopback, verify signatures made with the
    // private keys, and a changed body fails.
    let zone = Zone::new()
        .txt_strings(
            "rsa2026._domainkey.example.org",
            &split_txt(&record("rsa2026._domainkey.example.org")),
        )
        .txt(
            "ed2026._domainkey.example.org",
            &record("ed2026._domainkey.example.org"),
        );
    let keys = DnsServer::start(zone).await;
    let mut config = Config::load(&config_path).unwrap();
    config.delivery.dns_servers = vec![keys.addr().to_string()];
    let signer = MessageSigner::load(&config).unwrap();
    let body =
        b"From: Ada <ada@example.org>\r\nTo: bob@example.net\r\nSubject: test\r\n\r\nHello.\r\n";
    let signatures = signer.sign(body).unwrap();
    assert_eq!(
        signatures.signers,
        ["example.org/rsa2026", "example.org/ed2026"]
    );
    let authenticator =
        MessageAuthenticator(sealgate::delivery::build_resolver(&config.delivery).unwrap());

    let signed = signatures.apply(body);
    let parsed = AuthenticatedMessage::parse(&signed).unwrap();
    let results = authenticator.verify_dkim(&parsed).await;
    assert_eq!(results.len(), 2);
    for result in &results {
        assert_eq!(result.result(), &DkimResult::Pass, "{result:?}");
    }

    let tampered = String::from_utf8(signed.clone())
        .unwrap()
        .replace("Hello.", "Hullo.");
    let parsed = AuthenticatedMessage::parse(tampered.as_bytes()).unwrap();
    let results = authenticator.verify_dkim(&parsed).await;
    assert_eq!(results.len(), 2);
    for result in &results {
        // mail-auth reports a body hash mismatch as neutral rather than fail.
        assert!(
            matches!(
                result.result(),
                DkimResult::Neutral(mail_auth::Error::Dkim(BODY_HASH))
                    | DkimResult::Fail(mail_auth::Error::Dkim(BODY_HASH))
            ),
            "a changed body verified: {result:?}"
        );
    }
}

/// Runs `sealgate dns check example.org` with the config at `config_path`, its DNS server
/// `configured_dns` replaced by one serving `zone`.
async fn check_against(
    config_path: &Path,
    configured_dns: SocketAddr,
    zone: Zone,
) -> std::process::Output {
    let dns = DnsServer::start(zone).await;
    let config = config_path.with_file_name(format!("check-{}.toml", dns.addr().port()));
    let text = std::fs::read_to_string(config_path)
        .unwrap()
        .replace(&configured_dns.to_string(), &dns.addr().to_string());
    std::fs::write(&config, text).unwrap();
    sealgate(&[
        "dns",
        "--config",
        config.to_str().unwrap(),
        "check",
        "example.org",
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_check_reports_missing_wrong_and_present() {
    let dir = tempfile::tempdir().unwrap();
    let placeholder = DnsServer::start(Zone::new()).await;
    let config_path = records_config(dir.path(), &placeholder.addr().to_string());
    let config = config_path.to_str().unwrap();
    let printed = sealgate_output(&["dns", "--config", config, "records", "example.org"]);
    let records = zone_records(&printed);
    let record = |name: &str| record_text(&records, name);

    // A zone with SPF and the RSA key right, DMARC too weak, a foreign Ed25519 key and
    // no MTA-STS or TLS-RPT record.
    let other_ed = "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
    let partial = Zone::new()
        .mx("example.org", 10, "mx1.example.org")
        .txt("example.org", &record("example.org"))
        .txt_strings(
            "rsa2026._domainkey.example.org",
            &split_txt(&record("rsa2026._domainkey.example.org")),
        )
        .txt("ed2026._domainkey.example.org", other_ed)
        .txt(
            "_dmarc.example.org",
            "v=DMARC1; p=none; rua=mailto:dmarc@example.org",
        );
    let output = check_against(&config_path, placeholder.addr(), partial).await;
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(!output.status.success(), "{report}");
    assert!(report.contains("SPF example.org: present"), "{report}");
    assert!(
        report.contains("DKIM rsa2026._domainkey.example.org: present"),
        "{report}"
    );
    assert!(
        report.contains("DKIM ed2026._domainkey.example.org: wrong: p= is a different key"),
        "{report}"
    );
    assert!(
        report.contains("DMARC _dmarc.example.org: wrong: p=none;"),
        "{report}"
    );
    assert!(
        report.contains("MTA-STS _mta-sts.example.org: missing"),
        "{report}"
    );
    assert!(
        report.contains("TLS-RPT _smtp._tls.example.org: missing"),
        "{report}"
    );
    assert!(
        report.contains("fix: publish _dmarc.example.org. IN TXT \"v=DMARC1; p=reject"),
        "{report}"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("4 of 6 records missing"), "{stderr}");

    // Every record as printed: the check passes.
    let mut complete = Zone::new().mx("example.org", 10, "mx1.example.org");
    for (name, text) in &records {
        complete = complete.txt_strings(name, &split_txt(text));
    }
    let output = check_against(&config_path, placeholder.addr(), complete).await;
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        report.contains("example.org: all 6 records present"),
        "{report}"
    );
}

#[test]
fn dkim_generate_writes_private_key_and_record() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sealgate.toml");
    std::fs::write(&config, "[server]\nkeys_dir = \"keys\"\n").unwrap();
    let config = config.to_str().unwrap();

    let printed = sealgate_output(&[
        "dkim",
        "--config",
        config,
        "generate",
        "example.org",
        "sel1",
    ]);
    let key = dir.path().join("keys/dkim/example.org.sel1.pem");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let folder = std::fs::metadata(dir.path().join("keys/dkim")).unwrap();
    assert_eq!(folder.permissions().mode() & 0o777, 0o700);
    let records = zone_records(&printed);
    assert_eq!(records.len(), 1, "{printed}");
    assert_eq!(records[0].0, "sel1._domainkey.example.org");
    assert!(
        records[0].1.starts_with("v=DKIM1; k=rsa; p=MIIB"),
        "{printed}"
    );
    DomainKey::parse(records[0].1.as_bytes()).expect("record parses");
    let line = printed
        .lines()
        .find(|line| line.contains(" IN TXT "))
        .unwrap();
    assert_eq!(line.matches('"').count(), 4, "two strings: {line}");
    assert!(printed.contains("[[dkim]]\ndomain = \"example.org\"\nselector = \"sel1\""));

    let output = sealgate(&[
        "dkim",
        "--config",
        config,
        "generate",
        "example.org",
        "ed1",
        "--algorithm",
        "ed25519",
    ]);
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{printed}");
    assert!(printed.contains("\"v=DKIM1; k=ed25519; p="), "{printed}");

    // An existing key is never replaced.
    let before = std::fs::read(&key).unwrap();
    let output = sealgate(&[
        "dkim",
        "--config",
        config,
        "generate",
        "example.org",
        "sel1",
    ]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("already exists"));
    assert_eq!(std::fs::read(&key).unwrap(), before);
}

#[test]
fn unusable_dkim_key_fails_startup_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    gateway::write_self_signed(dir.path());
    let keys = dir.path();
    // With the master key present, the DKIM key is the first thing serve cannot load.
    sealgate::store::ensure_master_key(keys).expect("master key");
    key_record(keys, "example.org", "ed1", DkimAlgorithm::Ed25519Sha256);
    let cases = [
        (
            "missing",
            "failed to read DKIM key",
            dkim_entry("example.org", "missing", "rsa-sha256"),
        ),
        (
            "ed1",
            "expected an RSA key for rsa-sha256, got an Ed25519 key",
            dkim_entry("example.org", "ed1", "rsa-sha256"),
        ),
    ];
    for (selector, reason, entry) in cases {
        let config = dir.path().join(format!("{selector}.toml"));
        std::fs::write(
            &config,
            format!("[server]\nkeys_dir = \"{}\"\n\n{entry}", keys.display()),
        )
        .unwrap();
        for command in ["check-config", "serve"] {
            let output = if command == "serve" {
                sealgate(&["serve", "--config", config.to_str().unwrap()])
            } else {
                sealgate(&["check-config", config.to_str().unwrap()])
            };
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(!output.status.success(), "{command} {selector}: {stderr}");
            assert!(stderr.contains(reason), "{command} {selector}: {stderr}");
            assert!(
                stderr.contains(&format!("dkim/example.org.{selector}.pem")),
                "{command} {selector}: the error names the file: {stderr}"
            );
        }
    }
}
