//! Outbound delivery against real servers on loopback: the scripted SMTP server and DNS
//! server of `common`, and Postfix's smtp-sink.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::{
    BODY, DnsServer, Fault, ServerScript, SmtpServer, SmtpSink, StartTlsMode, TestPki, Zone,
    delivery_config, job,
};
use sealgate::config::{Config, ConfigDuration, StaticRoute};
use sealgate::delivery::{
    AttemptReport, DeliveryError, DeliveryStatus, Failure, SmtpCourier, Stage, TlsOutcome,
    Transport,
};
use sealgate::policy::TlsRequirement;

const SECURE_DOMAIN: &str = "secure.test";
const MX_HOST: &str = "mx.secure.test";
const WAIT: Duration = Duration::from_secs(5);

/// Builds a zone where each of `hosts` is an MX of `domain` with the given preference
/// and resolves to 127.0.0.1.
fn mx_zone(domain: &str, hosts: &[(u16, &str)]) -> Zone {
    hosts.iter().fold(Zone::new(), |zone, (preference, host)| {
        zone.mx(domain, *preference, host)
            .a(host, Ipv4Addr::LOCALHOST)
    })
}

/// Starts DNS with `zone` and builds a courier whose MX port is `server`'s.
async fn courier_for(pki: &TestPki, zone: Zone, server: &SmtpServer) -> (SmtpCourier, DnsServer) {
    let dns = DnsServer::start(zone).await;
    let config = delivery_config(pki, dns.addr(), server.port());
    (SmtpCourier::new(&config).expect("build courier"), dns)
}

/// A server with `script` as the only MX of `open.test`, and a courier pointed at it.
struct Harness {
    server: SmtpServer,
    courier: SmtpCourier,
    _dns: DnsServer,
    _pki: TestPki,
}

impl Harness {
    async fn open(script: ServerScript) -> Harness {
        common::init_logs();
        let pki = TestPki::new();
        let server = SmtpServer::start(script).await;
        let (courier, dns) =
            courier_for(&pki, mx_zone("open.test", &[(10, MX_HOST)]), &server).await;
        Harness {
            server,
            courier,
            _dns: dns,
            _pki: pki,
        }
    }

    /// Delivers `body` to `gp@open.test` over opportunistic TLS.
    async fn deliver(&self, body: &[u8]) -> AttemptReport {
        deliver_one(
            &self.courier,
            "open.test",
            TlsRequirement::Opportunistic,
            body,
        )
        .await
    }

    /// Delivers `body` to `to` over opportunistic TLS.
    async fn deliver_to(&self, to: &[String], body: &[u8]) -> AttemptReport {
        let job = job("open.test", to, body, TlsRequirement::Opportunistic);
        self.courier.deliver(&job).await
    }
}

fn recipients(addresses: &[&str]) -> Vec<String> {
    addresses
        .iter()
        .map(|address| address.to_string())
        .collect()
}

async fn deliver_one(
    courier: &SmtpCourier,
    domain: &str,
    tls: TlsRequirement,
    body: &[u8],
) -> AttemptReport {
    let to = recipients(&[&format!("gp@{domain}")]);
    courier.deliver(&job(domain, &to, body, tls)).await
}

fn sent(report: &AttemptReport, index: usize) -> &sealgate::delivery::Reply {
    match &report.results[index].status {
        DeliveryStatus::Sent(reply) => reply,
        other => panic!("recipient {index}: expected Sent, got {other:?}"),
    }
}

fn deferred(report: &AttemptReport, index: usize) -> &Failure {
    match &report.results[index].status {
        DeliveryStatus::Deferred(failure) => failure,
        other => panic!("recipient {index}: expected Deferred, got {other:?}"),
    }
}

fn bounced(report: &AttemptReport, index: usize) -> &Failure {
    match &report.results[index].status {
        DeliveryStatus::Bounced(failure) => failure,
        other => panic!("recipient {index}: expected Bounced, got {other:?}"),
    }
}

fn is_verified(outcome: &TlsOutcome) -> bool {
    matches!(outcome, TlsOutcome::Verified { version } if version.starts_with("TLSv1."))
}

/// Runs a forced-TLS delivery to a server with `script` and checks that it was deferred
/// at the TLS stage with `detail` and that no MAIL FROM reached the server.
async fn assert_forced_tls_deferred(script: impl FnOnce(&TestPki) -> ServerScript, detail: &str) {
    common::init_logs();
    let pki = TestPki::new();
    let server = SmtpServer::start(script(&pki)).await;
    let (courier, _dns) =
        courier_for(&pki, mx_zone(SECURE_DOMAIN, &[(10, MX_HOST)]), &server).await;

    let report = deliver_one(&courier, SECURE_DOMAIN, TlsRequirement::Verified, BODY).await;

    let failure = deferred(&report, 0);
    assert_eq!(failure.stage, Stage::Tls, "{failure}");
    assert!(
        failure.detail.contains(detail),
        "expected {detail:?} in {:?}",
        failure.detail
    );
    assert!(failure.status.starts_with("4.7."), "{}", failure.status);
    assert!(
        server.commands_named("MAIL").is_empty(),
        "MAIL was sent: {:?}",
        server.commands()
    );
    assert!(
        server.commands_named("RCPT").is_empty(),
        "RCPT was sent: {:?}",
        server.commands()
    );
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn forced_tls_delivers_with_verified_certificate() {
    common::init_logs();
    let pki = TestPki::new();
    let server = SmtpServer::start(ServerScript::with_tls(pki.server(MX_HOST))).await;
    let (courier, _dns) =
        courier_for(&pki, mx_zone(SECURE_DOMAIN, &[(10, MX_HOST)]), &server).await;

    let report = deliver_one(&courier, SECURE_DOMAIN, TlsRequirement::Verified, BODY).await;

    assert_eq!(sent(&report, 0).code, 250);
    assert!(is_verified(&report.tls), "{:?}", report.tls);
    assert_eq!(
        report.relay.as_deref(),
        Some(&*format!("{MX_HOST}[127.0.0.1]:{}", server.port()))
    );
    let messages = server.wait_for_messages(1, WAIT).await;
    assert!(messages[0].tls.is_some(), "server saw no TLS");
    assert_eq!(messages[0].data, BODY);
    assert_eq!(messages[0].recipients, ["gp@secure.test"]);
    assert!(server.clear_text_commands("MAIL").is_empty());
}

#[tokio::test]
async fn forced_tls_defers_when_starttls_missing() {
    assert_forced_tls_deferred(|_| ServerScript::default(), "STARTTLS not offered").await;
}

#[tokio::test]
async fn forced_tls_defers_on_self_signed_certificate() {
    let script = |pki: &TestPki| ServerScript::with_tls(pki.self_signed(MX_HOST));
    assert_forced_tls_deferred(script, "unknown issuer").await;
}

#[tokio::test]
async fn forced_tls_defers_on_expired_certificate() {
    let script = |pki: &TestPki| ServerScript::with_tls(pki.expired(MX_HOST));
    assert_forced_tls_deferred(script, "certificate expired").await;
}

#[tokio::test]
async fn forced_tls_defers_on_certificate_for_other_name() {
    let script = |pki: &TestPki| ServerScript::with_tls(pki.server("other.example"));
    assert_forced_tls_deferred(script, &format!("certificate not valid for name {MX_HOST}")).await;
}

#[tokio::test]
async fn forced_tls_defers_when_certificate_from_untrusted_ca() {
    // The server's certificate comes from a second CA that the config does not trust.
    let other_ca = TestPki::new();
    let script = |_: &TestPki| ServerScript::with_tls(other_ca.server(MX_HOST));
    assert_forced_tls_deferred(script, "unknown issuer").await;
}

#[tokio::test]
async fn forced_tls_falls_back_to_second_mx() {
    common::init_logs();
    let pki = TestPki::new();
    // Both MX hosts reach the same server, whose certificate names only the second one, so
    // the first fails name verification and the second succeeds.
    let server = SmtpServer::start(ServerScript::with_tls(pki.server("mx2.secure.test"))).await;
    let zone = mx_zone(
        SECURE_DOMAIN,
        &[(10, "mx1.secure.test"), (20, "mx2.secure.test")],
    );
    let (courier, _dns) = courier_for(&pki, zone, &server).await;

    let report = deliver_one(&courier, SECURE_DOMAIN, TlsRequirement::Verified, BODY).await;

    assert_eq!(sent(&report, 0).code, 250);
    assert!(is_verified(&report.tls), "{:?}", report.tls);
    let relay = report.relay.as_deref().unwrap_or_default();
    assert!(relay.starts_with("mx2.secure.test["), "{relay}");
    assert_eq!(server.connections(), 2);
    assert_eq!(server.wait_for_messages(1, WAIT).await.len(), 1);
    assert!(server.clear_text_commands("MAIL").is_empty());
}

#[tokio::test]
async fn forced_tls_ignores_reply_injected_before_handshake() {
    common::init_logs();
    let pki = TestPki::new();
    let mut script = ServerScript::with_tls(pki.server(MX_HOST));
    script.inject_before_handshake = Some(b"250 fake\r\n".to_vec());
    let server = SmtpServer::start(script).await;
    let (courier, _dns) =
        courier_for(&pki, mx_zone(SECURE_DOMAIN, &[(10, MX_HOST)]), &server).await;

    let report = deliver_one(&courier, SECURE_DOMAIN, TlsRequirement::Verified, BODY).await;

    // Whatever happened, nothing after STARTTLS went out in clear text.
    assert!(
        server.clear_text_commands("MAIL").is_empty(),
        "{:?}",
        server.commands()
    );
    assert!(
        server.clear_text_commands("EHLO").len() <= 1,
        "{:?}",
        server.commands()
    );
    match &report.results[0].status {
        DeliveryStatus::Sent(reply) => {
            assert_eq!(reply.code, 250);
            assert!(is_verified(&report.tls), "{:?}", report.tls);
            let messages = server.wait_for_messages(1, WAIT).await;
            assert!(messages[0].tls.is_some());
            // The EHLO after the handshake got its own reply, so it arrived over TLS.
            let secure_ehlo = server
                .commands_named("EHLO")
                .into_iter()
                .filter(|command| command.tls.is_some())
                .count();
            assert_eq!(secure_ehlo, 1);
        }
        DeliveryStatus::Deferred(failure) => assert_eq!(failure.stage, Stage::Tls, "{failure}"),
        DeliveryStatus::Bounced(failure) => panic!("bounced: {failure}"),
    }
}

#[tokio::test]
async fn opportunistic_uses_unverified_tls() {
    let pki = TestPki::new();
    let harness = Harness::open(ServerScript::with_tls(pki.self_signed(MX_HOST))).await;

    let report = harness.deliver(BODY).await;

    assert_eq!(sent(&report, 0).code, 250);
    assert!(
        matches!(&report.tls, TlsOutcome::Unverified { version } if version.starts_with("TLSv1.")),
        "{:?}",
        report.tls
    );
    let messages = harness.server.wait_for_messages(1, WAIT).await;
    assert!(messages[0].tls.is_some());
}

#[tokio::test]
async fn opportunistic_retries_in_clear_after_failed_handshake() {
    let script = ServerScript {
        starttls: StartTlsMode::BrokenHandshake,
        ..ServerScript::default()
    };
    let harness = Harness::open(script).await;

    let report = harness.deliver(BODY).await;

    assert_eq!(sent(&report, 0).code, 250);
    assert_eq!(report.tls, TlsOutcome::Plain);
    assert_eq!(harness.server.connections(), 2);
    let starttls = harness.server.commands_named("STARTTLS");
    assert_eq!(starttls.len(), 1, "{starttls:?}");
    assert_eq!(starttls[0].connection, 0);
    let messages = harness.server.wait_for_messages(1, WAIT).await;
    assert_eq!(messages[0].connection, 1);
    assert!(messages[0].tls.is_none());
}

#[tokio::test]
async fn opportunistic_sends_plain_without_starttls() {
    let harness = Harness::open(ServerScript::default()).await;

    let report = harness.deliver(BODY).await;

    assert_eq!(sent(&report, 0).code, 250);
    assert_eq!(report.tls, TlsOutcome::Plain);
    assert!(harness.server.commands_named("STARTTLS").is_empty());
    assert_eq!(
        harness.server.wait_for_messages(1, WAIT).await[0].data,
        BODY
    );
}

#[tokio::test]
async fn opportunistic_continues_in_clear_after_starttls_rejected() {
    let script = ServerScript {
        starttls: StartTlsMode::Rejected,
        ..ServerScript::default()
    };
    let harness = Harness::open(script).await;

    let report = harness.deliver(BODY).await;

    assert_eq!(sent(&report, 0).code, 250);
    assert_eq!(report.tls, TlsOutcome::Plain);
    assert_eq!(harness.server.connections(), 1);
    assert_eq!(harness.server.commands_named("STARTTLS").len(), 1);
}

#[tokio::test]
async fn forced_tls_defers_when_starttls_rejected() {
    let script = |_: &TestPki| ServerScript {
        starttls: StartTlsMode::Rejected,
        ..ServerScript::default()
    };
    assert_forced_tls_deferred(script, "STARTTLS rejected").await;
}

#[tokio::test]
async fn rejected_ehlo_falls_back_to_helo() {
    let script = ServerScript {
        reject_ehlo: true,
        ..ServerScript::default()
    };
    let harness = Harness::open(script).await;

    let report = harness.deliver(BODY).await;

    assert_eq!(sent(&report, 0).code, 250);
    let helo = harness.server.commands_named("HELO");
    assert_eq!(helo.len(), 1, "{:?}", harness.server.commands());
    assert_eq!(helo[0].line, "HELO sealgate.test");
    assert!(harness.server.commands_named("STARTTLS").is_empty());
}

#[tokio::test]
async fn rejected_rcpt_bounces_only_that_recipient() {
    let script = ServerScript {
        rcpt_replies: vec![(
            "b@open.test".into(),
            "550 5.1.1 <b@open.test>: user unknown".into(),
        )],
        ..ServerScript::default()
    };
    let harness = Harness::open(script).await;
    let to = recipients(&["a@open.test", "b@open.test", "c@open.test"]);

    let report = harness.deliver_to(&to, BODY).await;

    assert_eq!(report.results.len(), 3);
    assert_eq!(sent(&report, 0).code, 250);
    let failure = bounced(&report, 1);
    assert_eq!(failure.stage, Stage::RcptTo);
    assert_eq!(failure.status, "5.1.1");
    let reply = failure.reply.as_ref().expect("remote reply kept");
    assert_eq!(reply.code, 550);
    assert_eq!(reply.enhanced.as_deref(), Some("5.1.1"));
    assert_eq!(reply.text, "<b@open.test>: user unknown");
    assert_eq!(sent(&report, 2).code, 250);
    let messages = harness.server.wait_for_messages(1, WAIT).await;
    assert_eq!(messages[0].recipients, ["a@open.test", "c@open.test"]);
}

#[tokio::test]
async fn temporary_rcpt_failure_defers_only_that_recipient() {
    let script = ServerScript {
        rcpt_replies: vec![("b@open.test".into(), "450 4.2.1 mailbox busy".into())],
        ..ServerScript::default()
    };
    let harness = Harness::open(script).await;
    let to = recipients(&["a@open.test", "b@open.test", "c@open.test"]);

    let report = harness.deliver_to(&to, BODY).await;

    assert_eq!(sent(&report, 0).code, 250);
    let failure = deferred(&report, 1);
    assert_eq!(failure.stage, Stage::RcptTo);
    assert_eq!(failure.status, "4.2.1");
    assert_eq!(failure.reply.as_ref().map(|reply| reply.code), Some(450));
    assert_eq!(sent(&report, 2).code, 250);
}

#[tokio::test]
async fn all_rcpts_rejected_skips_data() {
    let script = ServerScript {
        rcpt_replies: vec![("a@open.test".into(), "550 5.1.1 no such user".into())],
        ..ServerScript::default()
    };
    let harness = Harness::open(script).await;

    let report = harness.deliver(BODY).await;
    let to = recipients(&["a@open.test"]);
    let report_a = harness.deliver_to(&to, BODY).await;

    assert_eq!(sent(&report, 0).code, 250, "gp@open.test is not rejected");
    assert_eq!(bounced(&report_a, 0).status, "5.1.1");
    assert_eq!(
        harness.server.commands_named("DATA").len(),
        1,
        "{:?}",
        harness.server.commands()
    );
}

#[tokio::test]
async fn mail_from_rejection_bounces_every_recipient() {
    let script = ServerScript {
        mail_reply: Some("553 5.7.1 sender not allowed".into()),
        ..ServerScript::default()
    };
    let harness = Harness::open(script).await;
    let to = recipients(&["a@open.test", "b@open.test"]);

    let report = harness.deliver_to(&to, BODY).await;

    for index in 0..2 {
        let failure = bounced(&report, index);
        assert_eq!(failure.stage, Stage::MailFrom);
        assert_eq!(failure.status, "5.7.1");
    }
    assert!(harness.server.commands_named("RCPT").is_empty());
}

#[tokio::test]
async fn final_reply_4xx_defers_accepted_recipients() {
    let script = ServerScript {
        data_reply: Some("451 4.3.0 try again later".into()),
        ..ServerScript::default()
    };
    let harness = Harness::open(script).await;

    let report = harness.deliver(BODY).await;

    let failure = deferred(&report, 0);
    assert_eq!(failure.stage, Stage::Data);
    assert_eq!(failure.status, "4.3.0");
    assert_eq!(
        failure.reply.as_ref().map(|reply| reply.text.as_str()),
        Some("try again later")
    );
}

#[tokio::test]
async fn final_reply_5xx_bounces_accepted_recipients() {
    let script = ServerScript {
        data_reply: Some("554 5.6.0 content rejected".into()),
        ..ServerScript::default()
    };
    let harness = Harness::open(script).await;

    let report = harness.deliver(BODY).await;

    let failure = bounced(&report, 0);
    assert_eq!(failure.stage, Stage::Data);
    assert_eq!(failure.status, "5.6.0");
}

#[tokio::test]
async fn dropped_connection_mid_data_defers() {
    let script = ServerScript {
        fault: Fault::DropMidData,
        ..ServerScript::default()
    };
    let harness = Harness::open(script).await;

    let report = harness.deliver(BODY).await;

    let failure = deferred(&report, 0);
    assert_eq!(failure.stage, Stage::Data, "{failure}");
    assert!(failure.status.starts_with("4."), "{}", failure.status);
    assert!(harness.server.messages().is_empty());
}

#[tokio::test]
async fn stalled_server_defers_after_data_timeout() {
    common::init_logs();
    let pki = TestPki::new();
    let script = ServerScript {
        fault: Fault::StallAfterData,
        ..ServerScript::default()
    };
    let server = SmtpServer::start(script).await;
    let dns = DnsServer::start(mx_zone("open.test", &[(10, MX_HOST)])).await;
    let mut config = delivery_config(&pki, dns.addr(), server.port());
    config.delivery.data_timeout = ConfigDuration(Duration::from_millis(500));
    let courier = SmtpCourier::new(&config).expect("build courier");

    let started = std::time::Instant::now();
    let report = deliver_one(&courier, "open.test", TlsRequirement::Opportunistic, BODY).await;
    let elapsed = started.elapsed();

    let failure = deferred(&report, 0);
    assert_eq!(failure.stage, Stage::Data, "{failure}");
    assert!(failure.detail.contains("timed out"), "{}", failure.detail);
    assert!(elapsed >= Duration::from_millis(500), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
}

#[tokio::test]
async fn eight_bit_body_bounces_without_8bitmime() {
    let script = ServerScript {
        eightbitmime: false,
        ..ServerScript::default()
    };
    let harness = Harness::open(script).await;
    let to = recipients(&["a@open.test"]);
    let body = "Subject: caf\u{e9}\r\n\r\nr\u{e9}sum\u{e9}\r\n".as_bytes();
    let mut eight_bit = job("open.test", &to, body, TlsRequirement::Opportunistic);
    eight_bit.body_8bit = true;

    let report = harness.courier.deliver(&eight_bit).await;

    let failure = bounced(&report, 0);
    assert_eq!(failure.stage, Stage::Conversion);
    assert_eq!(failure.status, "5.6.3");
    assert!(failure.detail.contains("8BITMIME"), "{}", failure.detail);
    assert!(harness.server.commands_named("MAIL").is_empty());
}

#[tokio::test]
async fn eight_bit_body_declares_8bitmime() {
    let harness = Harness::open(ServerScript::default()).await;
    let to = recipients(&["a@open.test"]);
    let body = "Subject: caf\u{e9}\r\n\r\nr\u{e9}sum\u{e9}\r\n".as_bytes();
    let mut eight_bit = job("open.test", &to, body, TlsRequirement::Opportunistic);
    eight_bit.body_8bit = true;

    let report = harness.courier.deliver(&eight_bit).await;

    assert_eq!(sent(&report, 0).code, 250);
    let messages = harness.server.wait_for_messages(1, WAIT).await;
    assert!(
        messages[0].mail_from.contains("BODY=8BITMIME"),
        "{}",
        messages[0].mail_from
    );
    assert_eq!(messages[0].data, body);
}

#[tokio::test]
async fn smtputf8_message_bounces_without_smtputf8() {
    let script = ServerScript {
        smtputf8: false,
        ..ServerScript::default()
    };
    let harness = Harness::open(script).await;
    let to = recipients(&["j\u{f6}rg@open.test"]);
    let mut utf8 = job("open.test", &to, BODY, TlsRequirement::Opportunistic);
    utf8.smtputf8 = true;

    let report = harness.courier.deliver(&utf8).await;

    let failure = bounced(&report, 0);
    assert_eq!(failure.stage, Stage::Conversion);
    assert_eq!(failure.status, "5.6.7");
}

#[tokio::test]
async fn oversized_message_bounces_on_size_limit() {
    let script = ServerScript {
        size: Some(16),
        ..ServerScript::default()
    };
    let harness = Harness::open(script).await;

    let report = harness.deliver(BODY).await;

    assert_eq!(bounced(&report, 0).status, "5.3.4");
    assert!(harness.server.commands_named("MAIL").is_empty());
}

#[tokio::test]
async fn mail_from_carries_size_when_offered() {
    let script = ServerScript {
        size: Some(1_000_000),
        ..ServerScript::default()
    };
    let harness = Harness::open(script).await;

    let report = harness.deliver(BODY).await;

    assert_eq!(sent(&report, 0).code, 250);
    let messages = harness.server.wait_for_messages(1, WAIT).await;
    assert_eq!(
        messages[0].mail_from,
        format!("<{}> SIZE={}", common::SENDER, BODY.len())
    );
}

#[tokio::test]
async fn dot_stuffed_lines_arrive_unchanged() {
    let harness = Harness::open(ServerScript::default()).await;
    let body = b"Subject: dots\r\n\r\n.\r\n..two\r\n.leading\r\nmiddle . dot\r\n.\r\nend\r\n";

    let report = harness.deliver(body).await;

    assert_eq!(sent(&report, 0).code, 250);
    let messages = harness.server.wait_for_messages(1, WAIT).await;
    assert_eq!(
        String::from_utf8_lossy(&messages[0].data),
        String::from_utf8_lossy(body)
    );
}

#[tokio::test]
async fn body_ending_in_crlf_gets_no_blank_line() {
    let harness = Harness::open(ServerScript::default()).await;

    let report = harness.deliver(BODY).await;

    assert_eq!(sent(&report, 0).code, 250);
    let messages = harness.server.wait_for_messages(1, WAIT).await;
    assert_eq!(messages[0].data, BODY);
    assert!(!messages[0].data.ends_with(b"\r\n\r\n"));
}

#[tokio::test]
async fn static_route_verifies_tls_name() {
    common::init_logs();
    let pki = TestPki::new();
    let server = SmtpServer::start(ServerScript::with_tls(pki.server("smtp.partner.test"))).await;
    // The DNS zone is empty: a static route must not need MX records.
    let dns = DnsServer::start(Zone::new()).await;
    let mut config = delivery_config(&pki, dns.addr(), 1);
    config.delivery.routes = vec![StaticRoute {
        domain: "*.partner.test".into(),
        host: "127.0.0.1".into(),
        port: server.port(),
        tls_name: Some("smtp.partner.test".into()),
    }];
    let courier = SmtpCourier::new(&config).expect("build courier");

    let report = deliver_one(
        &courier,
        "ward.partner.test",
        TlsRequirement::Verified,
        BODY,
    )
    .await;

    assert_eq!(sent(&report, 0).code, 250);
    assert!(is_verified(&report.tls), "{:?}", report.tls);
    assert_eq!(
        report.relay.as_deref(),
        Some(&*format!("127.0.0.1[127.0.0.1]:{}", server.port()))
    );
    assert!(dns.queries().is_empty(), "{:?}", dns.queries());
}

#[tokio::test]
async fn static_route_with_wrong_tls_name_defers() {
    common::init_logs();
    let pki = TestPki::new();
    let server = SmtpServer::start(ServerScript::with_tls(pki.server("smtp.partner.test"))).await;
    let dns = DnsServer::start(Zone::new()).await;
    let mut config = delivery_config(&pki, dns.addr(), 1);
    config.delivery.routes = vec![StaticRoute {
        domain: "partner.test".into(),
        host: "127.0.0.1".into(),
        port: server.port(),
        tls_name: None,
    }];
    let courier = SmtpCourier::new(&config).expect("build courier");

    let report = deliver_one(&courier, "partner.test", TlsRequirement::Verified, BODY).await;

    let failure = deferred(&report, 0);
    assert_eq!(failure.stage, Stage::Tls);
    assert!(
        failure.detail.contains("not valid for name 127.0.0.1"),
        "{}",
        failure.detail
    );
    assert!(server.commands_named("MAIL").is_empty());
}

#[tokio::test]
async fn mx_preference_order_is_followed() {
    common::init_logs();
    let pki = TestPki::new();
    let server = SmtpServer::start(ServerScript::default()).await;
    let zone = mx_zone(
        "open.test",
        &[
            (30, "low.open.test"),
            (5, "best.open.test"),
            (20, "mid.open.test"),
        ],
    );
    let (courier, _dns) = courier_for(&pki, zone, &server).await;

    let report = deliver_one(&courier, "open.test", TlsRequirement::Opportunistic, BODY).await;

    assert_eq!(sent(&report, 0).code, 250);
    let relay = report.relay.as_deref().unwrap_or_default();
    assert!(relay.starts_with("best.open.test["), "{relay}");
}

#[tokio::test]
async fn unresolvable_mx_host_is_skipped() {
    common::init_logs();
    let pki = TestPki::new();
    let server = SmtpServer::start(ServerScript::default()).await;
    let zone = Zone::new()
        .mx("open.test", 5, "gone.open.test")
        .mx("open.test", 6, "127.0.0.1")
        .mx("open.test", 10, MX_HOST)
        .a(MX_HOST, Ipv4Addr::LOCALHOST);
    let (courier, _dns) = courier_for(&pki, zone, &server).await;

    let report = deliver_one(&courier, "open.test", TlsRequirement::Opportunistic, BODY).await;

    assert_eq!(sent(&report, 0).code, 250);
    let relay = report.relay.as_deref().unwrap_or_default();
    assert!(relay.starts_with(MX_HOST), "{relay}");
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn implicit_mx_uses_domain_address() {
    common::init_logs();
    let pki = TestPki::new();
    let server = SmtpServer::start(ServerScript::default()).await;
    let zone = Zone::new().a("bare.test", Ipv4Addr::LOCALHOST);
    let (courier, dns) = courier_for(&pki, zone, &server).await;

    let report = deliver_one(&courier, "bare.test", TlsRequirement::Opportunistic, BODY).await;

    assert_eq!(sent(&report, 0).code, 250);
    let relay = report.relay.as_deref().unwrap_or_default();
    assert!(relay.starts_with("bare.test["), "{relay}");
    let queries = dns.queries();
    assert!(
        queries.contains(&("bare.test".into(), hickory_proto::rr::RecordType::MX)),
        "{queries:?}"
    );
}

#[tokio::test]
async fn null_mx_bounces() {
    common::init_logs();
    let pki = TestPki::new();
    let server = SmtpServer::start(ServerScript::default()).await;
    let zone = Zone::new()
        .null_mx("nomail.test")
        .a("nomail.test", Ipv4Addr::LOCALHOST);
    let (courier, _dns) = courier_for(&pki, zone, &server).await;

    let report = deliver_one(&courier, "nomail.test", TlsRequirement::Opportunistic, BODY).await;

    let failure = bounced(&report, 0);
    assert_eq!(failure.stage, Stage::Dns);
    assert_eq!(failure.status, "5.1.10");
    assert_eq!(report.tls, TlsOutcome::NotConnected);
    assert!(report.relay.is_none());
    assert_eq!(server.connections(), 0);
}

#[tokio::test]
async fn nxdomain_bounces() {
    common::init_logs();
    let pki = TestPki::new();
    let server = SmtpServer::start(ServerScript::default()).await;
    let (courier, _dns) = courier_for(&pki, Zone::new().nxdomain("missing.test"), &server).await;

    let report = deliver_one(
        &courier,
        "missing.test",
        TlsRequirement::Opportunistic,
        BODY,
    )
    .await;

    let failure = bounced(&report, 0);
    assert_eq!(failure.stage, Stage::Dns);
    assert_eq!(failure.status, "5.1.2");
    assert_eq!(server.connections(), 0);
}

#[tokio::test]
async fn domain_without_mx_or_address_bounces() {
    common::init_logs();
    let pki = TestPki::new();
    let server = SmtpServer::start(ServerScript::default()).await;
    // The domain exists, but its MX, A and AAAA queries get empty NOERROR responses.
    let zone = Zone::new().txt("empty.test", "v=spf1 -all");
    let (courier, _dns) = courier_for(&pki, zone, &server).await;

    let report = deliver_one(&courier, "empty.test", TlsRequirement::Opportunistic, BODY).await;

    let failure = bounced(&report, 0);
    assert_eq!(failure.stage, Stage::Dns);
    assert_eq!(failure.status, "5.1.2");
    assert!(
        failure.detail.contains("no MX, A or AAAA"),
        "{}",
        failure.detail
    );
    assert_eq!(server.connections(), 0);
}

#[tokio::test]
async fn servfail_defers() {
    common::init_logs();
    let pki = TestPki::new();
    let server = SmtpServer::start(ServerScript::default()).await;
    let (courier, _dns) = courier_for(&pki, Zone::new().servfail("broken.test"), &server).await;

    let report = deliver_one(&courier, "broken.test", TlsRequirement::Opportunistic, BODY).await;

    let failure = deferred(&report, 0);
    assert_eq!(failure.stage, Stage::Dns);
    assert_eq!(failure.status, "4.4.3");
    assert_eq!(server.connections(), 0);
}

#[tokio::test]
async fn dns_timeout_defers() {
    common::init_logs();
    let pki = TestPki::new();
    let server = SmtpServer::start(ServerScript::default()).await;
    let dns = DnsServer::start(Zone::new().unresponsive("slow.test")).await;
    let mut config = delivery_config(&pki, dns.addr(), server.port());
    config.delivery.dns_timeout = ConfigDuration(Duration::from_millis(200));
    let courier = SmtpCourier::new(&config).expect("build courier");

    let started = std::time::Instant::now();
    let report = deliver_one(&courier, "slow.test", TlsRequirement::Opportunistic, BODY).await;
    let elapsed = started.elapsed();

    let failure = deferred(&report, 0);
    assert_eq!(failure.stage, Stage::Dns);
    assert_eq!(failure.status, "4.4.3");
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    assert!(!dns.queries().is_empty());
    assert_eq!(server.connections(), 0);
}

#[tokio::test]
async fn connection_refused_defers() {
    common::init_logs();
    let pki = TestPki::new();
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind probe port");
        probe.local_addr().expect("probe address").port()
    };
    let dns = DnsServer::start(mx_zone("open.test", &[(10, MX_HOST)])).await;
    let courier =
        SmtpCourier::new(&delivery_config(&pki, dns.addr(), port)).expect("build courier");

    let report = deliver_one(&courier, "open.test", TlsRequirement::Opportunistic, BODY).await;

    let failure = deferred(&report, 0);
    assert_eq!(failure.stage, Stage::Connect);
    assert_eq!(failure.status, "4.4.1");
    assert_eq!(report.tls, TlsOutcome::NotConnected);
}

#[tokio::test]
async fn smtp_sink_accepts_message() {
    common::init_logs();
    let pki = TestPki::new();
    let sink = SmtpSink::start();
    let dns = DnsServer::start(mx_zone("sink.test", &[(10, "mx.sink.test")])).await;
    let courier =
        SmtpCourier::new(&delivery_config(&pki, dns.addr(), sink.port())).expect("build courier");

    let report = deliver_one(&courier, "sink.test", TlsRequirement::Opportunistic, BODY).await;

    let reply = sent(&report, 0);
    assert_eq!(reply.code, 250, "{reply}");
    assert_eq!(report.tls, TlsOutcome::Plain);
}

/// Builds a courier whose only trust anchor is `file` in a fresh key folder, after writing
/// `contents` to it when given, and returns the error.
fn trust_anchor_error(file: &str, contents: Option<&str>) -> DeliveryError {
    let pki = TestPki::new();
    if let Some(contents) = contents {
        std::fs::write(pki.dir().join(file), contents).expect("write trust anchor");
    }
    let mut config = Config::default();
    config.server.keys_dir = pki.dir().to_owned();
    // Never queried: building the courier sends no DNS query.
    config.delivery.dns_servers = vec!["127.0.0.1:53".into()];
    config.delivery.trust_anchors = vec![file.into()];

    match SmtpCourier::new(&config) {
        Ok(_) => panic!("a courier was built with trust anchor {file}"),
        Err(error) => error,
    }
}

#[test]
fn missing_trust_anchor_names_file() {
    let error = trust_anchor_error("missing-ca.pem", None);

    assert!(
        matches!(error, DeliveryError::TrustAnchorRead { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("missing-ca.pem"), "{error}");
}

#[test]
fn trust_anchor_without_certificate_is_rejected() {
    let error = trust_anchor_error("empty.pem", Some("not a certificate\n"));

    assert!(
        matches!(error, DeliveryError::TrustAnchorInvalid { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("empty.pem"), "{error}");
}

#[tokio::test]
async fn quoted_local_parts_are_sent_quoted() {
    let harness = Harness::open(ServerScript::default()).await;
    let to = recipients(&["sp ace@open.test", "q\"uote\\x@open.test", "gp@open.test"]);
    let mut job = job("open.test", &to, BODY, TlsRequirement::Opportunistic);
    job.sender = "front desk@org.test";

    let report = harness.courier.deliver(&job).await;

    for index in 0..3 {
        assert_eq!(sent(&report, index).code, 250, "recipient {index}");
    }
    let mail: Vec<String> = harness
        .server
        .commands_named("MAIL")
        .into_iter()
        .map(|command| command.line)
        .collect();
    assert_eq!(mail, ["MAIL FROM:<\"front desk\"@org.test>"]);
    let rcpt: Vec<String> = harness
        .server
        .commands_named("RCPT")
        .into_iter()
        .map(|command| command.line)
        .collect();
    assert_eq!(
        rcpt,
        [
            "RCPT TO:<\"sp ace\"@open.test>",
            "RCPT TO:<\"q\\\"uote\\\\x\"@open.test>",
            "RCPT TO:<gp@open.test>",
        ]
    );
}

#[tokio::test]
async fn unsendable_recipient_bounces_without_host() {
    let harness = Harness::open(ServerScript::default()).await;
    let to = recipients(&["bad\u{7}bell@open.test", "gp@open.test"]);

    let report = harness.deliver_to(&to, BODY).await;

    let failure = bounced(&report, 0);
    assert_eq!(failure.host, None);
    assert_eq!(failure.stage, Stage::RcptTo);
    assert_eq!(failure.status, "5.1.3");
    assert!(failure.detail.contains("rejected"), "{}", failure.detail);
    assert!(failure.detail.contains("locally"), "{}", failure.detail);
    assert_eq!(sent(&report, 1).code, 250);
    assert_eq!(harness.server.commands_named("RCPT").len(), 1);
}

#[tokio::test]
async fn unsendable_envelope_makes_no_connection() {
    let harness = Harness::open(ServerScript::default()).await;
    let to = recipients(&["gp@open.test"]);
    let mut job = job("open.test", &to, BODY, TlsRequirement::Opportunistic);
    job.sender = "bad\r\nsender@org.test";

    let report = harness.courier.deliver(&job).await;

    let failure = bounced(&report, 0);
    assert_eq!(failure.host, None);
    assert_eq!(failure.stage, Stage::MailFrom);
    assert_eq!(failure.status, "5.1.7");
    assert!(failure.detail.contains("locally"), "{}", failure.detail);
    assert_eq!(report.relay, None);
    assert_eq!(report.tls, TlsOutcome::NotConnected);
    assert_eq!(harness.server.connections(), 0);
}

#[tokio::test]
async fn failed_handshake_reports_tls_failed() {
    common::init_logs();
    type Identity = fn(&TestPki) -> common::ServerIdentity;
    let cases: [(Identity, &str); 3] = [
        (|pki| pki.self_signed(MX_HOST), "unknown issuer"),
        (|pki| pki.expired(MX_HOST), "certificate expired"),
        (
            |pki| pki.ca_flagged(MX_HOST),
            "CA certificate used as the server certificate",
        ),
    ];
    for (identity, words) in cases {
        let pki = TestPki::new();
        let server = SmtpServer::start(ServerScript::with_tls(identity(&pki))).await;
        let (courier, _dns) =
            courier_for(&pki, mx_zone(SECURE_DOMAIN, &[(10, MX_HOST)]), &server).await;

        let report = deliver_one(&courier, SECURE_DOMAIN, TlsRequirement::Verified, BODY).await;

        assert_eq!(report.tls, TlsOutcome::Failed, "{words}");
        assert_eq!(report.tls.to_string(), "failed");
        let failure = deferred(&report, 0);
        assert_eq!(
            failure.detail,
            format!("TLS handshake failed: {words}"),
            "{failure}"
        );
        assert!(!failure.detail.contains("Other("), "{}", failure.detail);
    }
}

#[test]
fn tls_outcomes_order_from_weakest() {
    let verified = TlsOutcome::Verified {
        version: "TLSv1.3".into(),
    };
    let unverified = TlsOutcome::Unverified {
        version: "TLSv1.3".into(),
    };
    assert!(TlsOutcome::NotConnected < TlsOutcome::Failed);
    assert!(TlsOutcome::Failed < TlsOutcome::Plain);
    assert!(TlsOutcome::Plain < unverified);
    assert!(unverified < verified);
}
