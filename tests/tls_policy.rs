//! DANE and MTA-STS on outbound delivery, against real servers on loopback: the scripted
//! SMTP server and DNS server of `common`, and an HTTPS policy server started here with
//! certificates from the test CA.

mod common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::{BODY, DnsServer, ServerIdentity, ServerScript, SmtpServer, TestPki, Zone, job};
use hickory_proto::rr::rdata::TLSA;
use hickory_proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sealgate::config::{Config, DnssecMode};
use sealgate::delivery::{
    AttemptReport, DeliveryStatus, SmtpCourier, TlsOutcome, Transport, Verification,
};
use sealgate::policy::TlsRequirement;
use sha2::{Digest, Sha256, Sha512};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

const STS_DOMAIN: &str = "sts.test";
const STS_MX: &str = "mx.sts.test";
const POLICY_HOST: &str = "mta-sts.sts.test";
const DANE_DOMAIN: &str = "dane.test";
const DANE_MX: &str = "mx.dane.test";

// ---------------------------------------------------------------------------------------
// Policy server

/// An HTTPS server on `127.0.0.1:0` that sends one fixed response to every request.
struct PolicyServer {
    port: u16,
    requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl PolicyServer {
    /// Serves `body` with `status` and `content_type`, presenting `identity`.
    async fn start(
        identity: &ServerIdentity,
        status: &str,
        content_type: &str,
        body: &str,
    ) -> PolicyServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = TlsAcceptor::from(identity.tls.clone());
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
             Location: https://elsewhere.test/\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let response = response.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut request = Vec::new();
                    let mut buffer = [0u8; 1024];
                    while !request.windows(4).any(|window| window == b"\r\n\r\n") {
                        match tls.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(read) => request.extend_from_slice(&buffer[..read]),
                        }
                    }
                    let head = String::from_utf8_lossy(&request);
                    if head.starts_with("GET /.well-known/mta-sts.txt HTTP/1.1\r\n")
                        && head.to_ascii_lowercase().contains("host: mta-sts.")
                    {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        PolicyServer {
            port,
            requests,
            task,
        }
    }

    /// Serves an MTA-STS policy as `text/plain` with 200.
    async fn policy(identity: &ServerIdentity, mode: &str, mx: &[&str]) -> PolicyServer {
        let mut body = format!("version: STSv1\r\nmode: {mode}\r\n");
        for pattern in mx {
            body.push_str(&format!("mx: {pattern}\r\n"));
        }
        body.push_str("max_age: 86400\r\n");
        PolicyServer::start(identity, "200 OK", "text/plain; charset=utf-8", &body).await
    }

    /// Returns how many well-formed policy requests arrived.
    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for PolicyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------
// Log capture

/// Collects log output of the current thread, for checks on warnings.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;

    fn make_writer(&'a self) -> LogBuffer {
        self.clone()
    }
}

impl LogBuffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

// ---------------------------------------------------------------------------------------
// Helpers

/// Builds the zone of an MTA-STS domain: MX, its address, the TXT record with `id` and the
/// policy host's address.
fn sts_zone(id: &str) -> Zone {
    Zone::new()
        .mx(STS_DOMAIN, 10, STS_MX)
        .a(STS_MX, Ipv4Addr::LOCALHOST)
        .txt(
            &format!("_mta-sts.{STS_DOMAIN}"),
            &format!("v=STSv1; id={id};"),
        )
        .a(POLICY_HOST, Ipv4Addr::LOCALHOST)
}

fn config_for(pki: &TestPki, dns: &DnsServer, smtp: &SmtpServer, policy_port: u16) -> Config {
    let mut config = common::delivery_config(pki, dns.addr(), smtp.port());
    config.delivery.mta_sts_port = policy_port;
    config
}

async fn deliver(courier: &SmtpCourier, domain: &str, tls: TlsRequirement) -> AttemptReport {
    let to = vec![format!("gp@{domain}")];
    let job = job(domain, &to, BODY, tls);
    courier.deliver(&job).await
}

fn is_sent(report: &AttemptReport) -> bool {
    matches!(report.results[0].status, DeliveryStatus::Sent(_))
}

fn deferred_detail(report: &AttemptReport) -> String {
    match &report.results[0].status {
        DeliveryStatus::Deferred(failure) => failure.to_string(),
        other => panic!("expected a deferral, got {other:?}"),
    }
}

fn certificate_der(identity: &ServerIdentity) -> Vec<u8> {
    CertificateDer::pem_file_iter(&identity.certificate_path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

fn ca_der(pki: &TestPki) -> Vec<u8> {
    pki.ca_certificate().to_vec()
}

/// Computes TLSA association data the way a zone operator would, with OpenSSL for the
/// SubjectPublicKeyInfo.
fn association(certificate: &[u8], selector: Selector, matching: Matching) -> Vec<u8> {
    let selected = match selector {
        Selector::Spki => openssl::x509::X509::from_der(certificate)
            .unwrap()
            .public_key()
            .unwrap()
            .public_key_to_der()
            .unwrap(),
        _ => certificate.to_vec(),
    };
    match matching {
        Matching::Sha256 => Sha256::digest(&selected).to_vec(),
        Matching::Sha512 => Sha512::digest(&selected).to_vec(),
        _ => selected,
    }
}

fn tlsa_name(smtp: &SmtpServer) -> String {
    format!("_{}._tcp.{DANE_MX}", smtp.port())
}

/// Builds the zone of a DANE domain: MX and address, with the MX answer marked secure when
/// `secure_mx`, and `records` at the TLSA name, marked secure.
fn dane_zone(smtp: &SmtpServer, secure_mx: bool, records: Vec<TLSA>) -> Zone {
    let mut zone = Zone::new()
        .mx(DANE_DOMAIN, 10, DANE_MX)
        .a(DANE_MX, Ipv4Addr::LOCALHOST);
    if secure_mx {
        zone = zone.authenticated(DANE_DOMAIN);
    }
    let name = tlsa_name(smtp);
    for record in records {
        zone = zone.tlsa(&name, record);
    }
    zone.authenticated(&name)
}

async fn dane_courier(pki: &TestPki, zone: Zone, smtp: &SmtpServer) -> (SmtpCourier, DnsServer) {
    let dns = DnsServer::start(zone).await;
    let mut config = common::delivery_config(pki, dns.addr(), smtp.port());
    config.delivery.dnssec = DnssecMode::TrustResolver;
    (SmtpCourier::new(&config).unwrap(), dns)
}

/// Returns a DANE-EE record that matches no certificate.
fn unmatched_tlsa() -> TLSA {
    TLSA::new(
        CertUsage::DaneEe,
        Selector::Spki,
        Matching::Sha256,
        vec![0xab; 32],
    )
}

fn no_mail_from(smtp: &SmtpServer) -> bool {
    smtp.commands_named("MAIL").is_empty()
}

// ---------------------------------------------------------------------------------------
// MTA-STS

#[tokio::test]
async fn mta_sts_enforce_delivers_over_verified_tls() {
    common::init_logs();
    let pki = TestPki::new();
    let smtp = SmtpServer::start(ServerScript::with_tls(pki.server(STS_MX))).await;
    let policy = PolicyServer::policy(&pki.server(POLICY_HOST), "enforce", &[STS_MX]).await;
    let dns = DnsServer::start(sts_zone("1")).await;
    let courier = SmtpCourier::new(&config_for(&pki, &dns, &smtp, policy.port)).unwrap();

    let report = deliver(&courier, STS_DOMAIN, TlsRequirement::Opportunistic).await;

    assert!(is_sent(&report), "{:?}", report.results);
    assert!(
        matches!(report.tls, TlsOutcome::Verified { .. }),
        "{}",
        report.tls
    );
    assert_eq!(report.verification, Verification::MtaSts);
    assert_eq!(policy.requests(), 1);
    assert!(
        report.tls_field().ends_with("/verified/mta-sts"),
        "{}",
        report.tls_field()
    );
}

#[tokio::test]
async fn mta_sts_enforce_defers_on_untrusted_certificate() {
    common::init_logs();
    let pki = TestPki::new();
    let smtp = SmtpServer::start(ServerScript::with_tls(pki.self_signed(STS_MX))).await;
    let policy = PolicyServer::policy(&pki.server(POLICY_HOST), "enforce", &[STS_MX]).await;
    let dns = DnsServer::start(sts_zone("1")).await;
    let courier = SmtpCourier::new(&config_for(&pki, &dns, &smtp, policy.port)).unwrap();

    let report = deliver(&courier, STS_DOMAIN, TlsRequirement::Opportunistic).await;

    let detail = deferred_detail(&report);
    assert!(detail.contains("unknown issuer"), "{detail}");
    assert_eq!(report.tls, TlsOutcome::Failed);
    assert_eq!(report.verification, Verification::MtaSts);
    assert!(
        no_mail_from(&smtp),
        "MAIL FROM sent after a failed handshake"
    );
}

#[tokio::test]
async fn mta_sts_enforce_defers_on_mx_not_in_policy() {
    common::init_logs();
    let pki = TestPki::new();
    let smtp = SmtpServer::start(ServerScript::with_tls(pki.server(STS_MX))).await;
    let policy = PolicyServer::policy(&pki.server(POLICY_HOST), "enforce", &["*.other.test"]).await;
    let dns = DnsServer::start(sts_zone("1")).await;
    let courier = SmtpCourier::new(&config_for(&pki, &dns, &smtp, policy.port)).unwrap();

    let report = deliver(&courier, STS_DOMAIN, TlsRequirement::Opportunistic).await;

    let detail = deferred_detail(&report);
    assert!(
        detail.contains("not listed in the MTA-STS policy"),
        "{detail}"
    );
    assert_eq!(
        smtp.connections(),
        0,
        "a host outside the policy was contacted"
    );
}

#[tokio::test]
async fn mta_sts_testing_delivers_and_logs() {
    let logs = LogBuffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let pki = TestPki::new();
    let smtp = SmtpServer::start(ServerScript::with_tls(pki.self_signed(STS_MX))).await;
    let policy = PolicyServer::policy(&pki.server(POLICY_HOST), "testing", &[STS_MX]).await;
    let dns = DnsServer::start(sts_zone("1")).await;
    let courier = SmtpCourier::new(&config_for(&pki, &dns, &smtp, policy.port)).unwrap();

    let report = deliver(&courier, STS_DOMAIN, TlsRequirement::Opportunistic).await;

    assert!(is_sent(&report), "{:?}", report.results);
    assert!(
        matches!(report.tls, TlsOutcome::Unverified { .. }),
        "{}",
        report.tls
    );
    assert_eq!(report.verification, Verification::None);
    assert_eq!(policy.requests(), 1);
    let text = logs.text();
    assert!(text.contains("MTA-STS testing mode"), "{text}");
    assert!(text.contains("unknown issuer"), "{text}");
}

#[tokio::test]
async fn mta_sts_cached_policy_survives_restart_and_outage() {
    common::init_logs();
    let pki = TestPki::new();
    let data = tempfile::tempdir().unwrap();
    let smtp = SmtpServer::start(ServerScript::with_tls(pki.self_signed(STS_MX))).await;

    // First run: the policy server is up, the policy is fetched and stored.
    {
        let policy = PolicyServer::policy(&pki.server(POLICY_HOST), "enforce", &[STS_MX]).await;
        let dns = DnsServer::start(sts_zone("1")).await;
        let mut config = config_for(&pki, &dns, &smtp, policy.port);
        config.server.data_dir = data.path().to_owned();
        let courier = SmtpCourier::with_policy_database(&config).unwrap();
        let report = deliver(&courier, STS_DOMAIN, TlsRequirement::Opportunistic).await;
        deferred_detail(&report);
        assert_eq!(policy.requests(), 1);
    }
    assert!(Path::new(&data.path().join("tls.sqlite")).exists());

    // Second run: a new TXT id asks for a fetch, and the policy server is gone. The
    // cached policy is still enforced, so the self-signed certificate defers.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let dns = DnsServer::start(sts_zone("2")).await;
    let mut config = config_for(&pki, &dns, &smtp, closed_port);
    config.server.data_dir = data.path().to_owned();
    let courier = SmtpCourier::with_policy_database(&config).unwrap();
    let report = deliver(&courier, STS_DOMAIN, TlsRequirement::Opportunistic).await;

    let detail = deferred_detail(&report);
    assert!(detail.contains("unknown issuer"), "{detail}");
    assert_eq!(report.verification, Verification::MtaSts);
    assert!(no_mail_from(&smtp));
}

#[tokio::test]
async fn mta_sts_new_txt_id_fetches_again() {
    common::init_logs();
    let pki = TestPki::new();
    let data = tempfile::tempdir().unwrap();
    let smtp = SmtpServer::start(ServerScript::with_tls(pki.self_signed(STS_MX))).await;
    let enforce = PolicyServer::policy(&pki.server(POLICY_HOST), "enforce", &[STS_MX]).await;
    let dns = DnsServer::start(sts_zone("1")).await;
    let mut config = config_for(&pki, &dns, &smtp, enforce.port);
    config.server.data_dir = data.path().to_owned();
    let courier = SmtpCourier::with_policy_database(&config).unwrap();
    let first = deliver(&courier, STS_DOMAIN, TlsRequirement::Opportunistic).await;
    let second = deliver(&courier, STS_DOMAIN, TlsRequirement::Opportunistic).await;
    deferred_detail(&first);
    deferred_detail(&second);
    assert_eq!(enforce.requests(), 1, "the cached policy was fetched again");

    // The domain publishes a new id and switches to testing: the new policy is fetched
    // and delivery goes on.
    let testing = PolicyServer::policy(&pki.server(POLICY_HOST), "testing", &[STS_MX]).await;
    let dns = DnsServer::start(sts_zone("2")).await;
    let mut config = config_for(&pki, &dns, &smtp, testing.port);
    config.server.data_dir = data.path().to_owned();
    let courier = SmtpCourier::with_policy_database(&config).unwrap();
    let report = deliver(&courier, STS_DOMAIN, TlsRequirement::Opportunistic).await;

    assert_eq!(testing.requests(), 1);
    assert!(is_sent(&report), "{:?}", report.results);
}

#[tokio::test]
async fn mta_sts_old_policy_refreshes_in_background() {
    common::init_logs();
    let pki = TestPki::new();
    let data = tempfile::tempdir().unwrap();
    let smtp = SmtpServer::start(ServerScript::with_tls(pki.server(STS_MX))).await;
    let policy = PolicyServer::policy(&pki.server(POLICY_HOST), "enforce", &[STS_MX]).await;
    let dns = DnsServer::start(sts_zone("1")).await;
    let mut config = config_for(&pki, &dns, &smtp, policy.port);
    config.server.data_dir = data.path().to_owned();
    let courier = SmtpCourier::with_policy_database(&config).unwrap();
    assert!(is_sent(
        &deliver(&courier, STS_DOMAIN, TlsRequirement::Opportunistic).await
    ));
    assert_eq!(policy.requests(), 1);

    // Age the cached policy past half its max_age (86400 s), but not past its expiry.
    let database = rusqlite::Connection::open(data.path().join("tls.sqlite")).unwrap();
    let aged = database
        .execute(
            "UPDATE mta_sts_policies SET fetched_at = fetched_at - 50000 WHERE domain = ?1",
            [STS_DOMAIN],
        )
        .unwrap();
    assert_eq!(aged, 1);

    let report = deliver(&courier, STS_DOMAIN, TlsRequirement::Opportunistic).await;
    assert!(is_sent(&report), "{:?}", report.results);
    assert_eq!(report.verification, Verification::MtaSts);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while policy.requests() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(policy.requests(), 2, "the aged policy was not refreshed");
}

#[tokio::test]
async fn mta_sts_unreachable_without_cache_delivers_without_policy() {
    common::init_logs();
    let pki = TestPki::new();
    let smtp = SmtpServer::start(ServerScript::with_tls(pki.self_signed(STS_MX))).await;
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let dns = DnsServer::start(sts_zone("1")).await;
    let courier = SmtpCourier::new(&config_for(&pki, &dns, &smtp, closed_port)).unwrap();

    let report = deliver(&courier, STS_DOMAIN, TlsRequirement::Opportunistic).await;

    assert!(is_sent(&report), "{:?}", report.results);
    assert_eq!(report.verification, Verification::None);
}

#[tokio::test]
async fn mta_sts_rejects_bad_policy_responses() {
    common::init_logs();
    let pki = TestPki::new();
    let body = "version: STSv1\r\nmode: enforce\r\nmx: mx.sts.test\r\nmax_age: 86400\r\n";
    let cases = [
        ("redirect", "302 Found", "text/plain", body),
        ("content type", "200 OK", "text/html", body),
        (
            "syntax",
            "200 OK",
            "text/plain",
            "version: STSv1\r\nmode: strict\r\n",
        ),
    ];
    for (case, status, content_type, text) in cases {
        let smtp = SmtpServer::start(ServerScript::with_tls(pki.self_signed(STS_MX))).await;
        let identity = pki.server(POLICY_HOST);
        let policy = PolicyServer::start(&identity, status, content_type, text).await;
        let dns = DnsServer::start(sts_zone("1")).await;
        let courier = SmtpCourier::new(&config_for(&pki, &dns, &smtp, policy.port)).unwrap();

        let report = deliver(&courier, STS_DOMAIN, TlsRequirement::Opportunistic).await;

        assert_eq!(policy.requests(), 1, "{case}");
        assert!(is_sent(&report), "{case}: {:?}", report.results);
        assert_eq!(report.verification, Verification::None, "{case}");
    }
}

#[tokio::test]
async fn mta_sts_policy_server_certificate_is_verified() {
    common::init_logs();
    let pki = TestPki::new();
    let smtp = SmtpServer::start(ServerScript::with_tls(pki.self_signed(STS_MX))).await;
    let policy = PolicyServer::policy(&pki.self_signed(POLICY_HOST), "enforce", &[STS_MX]).await;
    let dns = DnsServer::start(sts_zone("1")).await;
    let courier = SmtpCourier::new(&config_for(&pki, &dns, &smtp, policy.port)).unwrap();

    let report = deliver(&courier, STS_DOMAIN, TlsRequirement::Opportunistic).await;

    // The policy from an untrusted server is not used: delivery goes on without it.
    assert_eq!(policy.requests(), 0);
    assert!(is_sent(&report), "{:?}", report.results);
    assert_eq!(report.verification, Verification::None);
}

#[tokio::test]
async fn mta_sts_forced_route_never_sends_in_clear() {
    common::init_logs();
    let pki = TestPki::new();
    let smtp = SmtpServer::start(ServerScript::default()).await;
    let policy = PolicyServer::policy(&pki.server(POLICY_HOST), "testing", &[STS_MX]).await;
    let dns = DnsServer::start(sts_zone("1")).await;
    let courier = SmtpCourier::new(&config_for(&pki, &dns, &smtp, policy.port)).unwrap();

    let report = deliver(&courier, STS_DOMAIN, TlsRequirement::Verified).await;

    let detail = deferred_detail(&report);
    assert!(detail.contains("STARTTLS not offered"), "{detail}");
    assert_eq!(report.verification, Verification::Ca);
    assert!(no_mail_from(&smtp));
}

// ---------------------------------------------------------------------------------------
// DANE

#[tokio::test]
async fn dane_matches_ee_and_ta_records() {
    common::init_logs();
    let pki = TestPki::new();
    let cases = [
        (CertUsage::DaneEe, Selector::Spki, Matching::Sha256),
        (CertUsage::DaneEe, Selector::Full, Matching::Sha512),
        (CertUsage::DaneEe, Selector::Spki, Matching::Raw),
        (CertUsage::DaneTa, Selector::Full, Matching::Sha256),
        (CertUsage::DaneTa, Selector::Spki, Matching::Sha512),
    ];
    for (usage, selector, matching) in cases {
        let trust_anchor = usage == CertUsage::DaneTa;
        // DANE-EE needs no CA: a self-signed certificate for another name, expired or
        // not, is accepted when it matches.
        let identity = if trust_anchor {
            pki.server_with_ca(DANE_MX)
        } else {
            pki.self_signed("unrelated.example")
        };
        let smtp = SmtpServer::start(ServerScript::with_tls(identity.clone())).await;
        let certificate = if trust_anchor {
            ca_der(&pki)
        } else {
            certificate_der(&identity)
        };
        let data = association(&certificate, selector, matching);
        let record = TLSA::new(usage, selector, matching, data);
        let zone = dane_zone(&smtp, true, vec![record]);
        let (courier, _dns) = dane_courier(&pki, zone, &smtp).await;

        let report = deliver(&courier, DANE_DOMAIN, TlsRequirement::Opportunistic).await;

        let case = format!("{usage:?} {selector:?} {matching:?}");
        assert!(is_sent(&report), "{case}: {:?}", report.results);
        assert_eq!(report.verification, Verification::Dane, "{case}");
        assert!(matches!(report.tls, TlsOutcome::Verified { .. }), "{case}");
    }
}

#[tokio::test]
async fn dane_ee_ignores_expiry() {
    common::init_logs();
    let pki = TestPki::new();
    let identity = pki.expired(DANE_MX);
    let smtp = SmtpServer::start(ServerScript::with_tls(identity.clone())).await;
    let data = association(
        &certificate_der(&identity),
        Selector::Spki,
        Matching::Sha256,
    );
    let record = TLSA::new(CertUsage::DaneEe, Selector::Spki, Matching::Sha256, data);
    let (courier, _dns) = dane_courier(&pki, dane_zone(&smtp, true, vec![record]), &smtp).await;

    let report = deliver(&courier, DANE_DOMAIN, TlsRequirement::Verified).await;

    assert!(is_sent(&report), "{:?}", report.results);
    assert_eq!(report.verification, Verification::Dane);
}

#[tokio::test]
async fn dane_mismatch_defers_without_mail_from() {
    common::init_logs();
    let pki = TestPki::new();
    // The certificate chains to a trusted CA, which does not matter under DANE.
    let smtp = SmtpServer::start(ServerScript::with_tls(pki.server(DANE_MX))).await;
    let wrong = unmatched_tlsa();
    let (courier, _dns) = dane_courier(&pki, dane_zone(&smtp, true, vec![wrong]), &smtp).await;

    let report = deliver(&courier, DANE_DOMAIN, TlsRequirement::Opportunistic).await;

    let detail = deferred_detail(&report);
    assert!(
        detail.contains("does not match the DANE TLSA records"),
        "{detail}"
    );
    assert_eq!(report.verification, Verification::Dane);
    assert_eq!(report.tls, TlsOutcome::Failed);
    assert!(no_mail_from(&smtp), "MAIL FROM sent after a DANE mismatch");
}

#[tokio::test]
async fn dane_ta_checks_the_mx_name() {
    common::init_logs();
    let pki = TestPki::new();
    let smtp = SmtpServer::start(ServerScript::with_tls(
        pki.server_with_ca("other.dane.test"),
    ))
    .await;
    let data = association(&ca_der(&pki), Selector::Full, Matching::Sha256);
    let record = TLSA::new(CertUsage::DaneTa, Selector::Full, Matching::Sha256, data);
    let (courier, _dns) = dane_courier(&pki, dane_zone(&smtp, true, vec![record]), &smtp).await;

    let report = deliver(&courier, DANE_DOMAIN, TlsRequirement::Opportunistic).await;

    let detail = deferred_detail(&report);
    assert!(detail.contains("not valid for name"), "{detail}");
    assert!(no_mail_from(&smtp));
}

#[tokio::test]
async fn dane_bogus_tlsa_defers() {
    common::init_logs();
    let pki = TestPki::new();
    let smtp = SmtpServer::start(ServerScript::with_tls(pki.server(DANE_MX))).await;
    let zone = dane_zone(&smtp, true, Vec::new()).servfail(&tlsa_name(&smtp));
    let (courier, _dns) = dane_courier(&pki, zone, &smtp).await;

    let report = deliver(&courier, DANE_DOMAIN, TlsRequirement::Opportunistic).await;

    let detail = deferred_detail(&report);
    assert!(detail.contains("TLSA lookup"), "{detail}");
    assert_eq!(
        smtp.connections(),
        0,
        "a host with a bogus TLSA lookup was contacted"
    );
}

#[tokio::test]
async fn dane_absent_falls_back_to_route_policy() {
    common::init_logs();
    let pki = TestPki::new();
    let smtp = SmtpServer::start(ServerScript::with_tls(pki.server(DANE_MX))).await;
    let zone = dane_zone(&smtp, true, Vec::new());
    let (courier, _dns) = dane_courier(&pki, zone, &smtp).await;

    let forced = deliver(&courier, DANE_DOMAIN, TlsRequirement::Verified).await;
    let open = deliver(&courier, DANE_DOMAIN, TlsRequirement::Opportunistic).await;

    assert!(is_sent(&forced), "{:?}", forced.results);
    assert_eq!(forced.verification, Verification::Ca);
    assert!(is_sent(&open), "{:?}", open.results);
    assert_eq!(open.verification, Verification::None);
}

#[tokio::test]
async fn dane_ignored_when_mx_is_insecure() {
    common::init_logs();
    let pki = TestPki::new();
    let smtp = SmtpServer::start(ServerScript::with_tls(pki.server(DANE_MX))).await;
    let wrong = unmatched_tlsa();
    let (courier, _dns) = dane_courier(&pki, dane_zone(&smtp, false, vec![wrong]), &smtp).await;

    let report = deliver(&courier, DANE_DOMAIN, TlsRequirement::Verified).await;

    assert!(is_sent(&report), "{:?}", report.results);
    assert_eq!(report.verification, Verification::Ca);
}

#[tokio::test]
async fn dane_unused_when_dnssec_off() {
    common::init_logs();
    let pki = TestPki::new();
    let smtp = SmtpServer::start(ServerScript::with_tls(pki.server(DANE_MX))).await;
    let wrong = unmatched_tlsa();
    let dns = DnsServer::start(dane_zone(&smtp, true, vec![wrong])).await;
    let config = common::delivery_config(&pki, dns.addr(), smtp.port());
    let courier = SmtpCourier::new(&config).unwrap();

    let report = deliver(&courier, DANE_DOMAIN, TlsRequirement::Verified).await;

    assert!(is_sent(&report), "{:?}", report.results);
    assert_eq!(report.verification, Verification::Ca);
}

#[tokio::test]
async fn dane_unusable_records_still_require_tls() {
    common::init_logs();
    let pki = TestPki::new();
    let pkix_only = || {
        TLSA::new(
            CertUsage::PkixEe,
            Selector::Spki,
            Matching::Sha256,
            vec![0xab; 32],
        )
    };

    let clear = SmtpServer::start(ServerScript::default()).await;
    let zone = dane_zone(&clear, true, vec![pkix_only()]);
    let (courier, _dns) = dane_courier(&pki, zone, &clear).await;
    let report = deliver(&courier, DANE_DOMAIN, TlsRequirement::Opportunistic).await;
    let detail = deferred_detail(&report);
    assert!(detail.contains("STARTTLS not offered"), "{detail}");
    assert_eq!(report.verification, Verification::Dane);
    assert!(
        no_mail_from(&clear),
        "mail sent in clear text despite secure TLSA records"
    );

    let encrypted = SmtpServer::start(ServerScript::with_tls(pki.self_signed(DANE_MX))).await;
    let zone = dane_zone(&encrypted, true, vec![pkix_only()]);
    let (courier, _dns) = dane_courier(&pki, zone, &encrypted).await;
    let report = deliver(&courier, DANE_DOMAIN, TlsRequirement::Opportunistic).await;
    assert!(is_sent(&report), "{:?}", report.results);
    assert!(
        matches!(report.tls, TlsOutcome::Unverified { .. }),
        "{}",
        report.tls
    );
    assert_eq!(report.tls_field().split('/').next_back(), Some("dane"));
}
