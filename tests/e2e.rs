//! End-to-end tests of the real binary: mail in over SMTP from mail-send, swaks and a real
//! Postfix, out to Postfix's `smtp-sink` and to scripted TLS and plain-text receivers.

mod common;
mod gateway;
mod postfix;
#[allow(dead_code)]
#[path = "smime/pki.rs"]
mod smime_pki;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::{Fault, ServerScript, SmtpServer, SmtpSink, StartTlsMode, TestPki, free_tcp_port};
use gateway::{Gateway, base_config, config_with_lifetime, route_to};

/// Builds a static route whose certificate must be valid for `tls_name`.
fn verified_route_to(domain: &str, port: u16, tls_name: &str) -> String {
    format!("{}tls_name = \"{tls_name}\"\n", route_to(domain, port))
}

/// Copies the test CA into the gateway's keys folder and returns delivery settings that
/// trust only it.
fn trust_test_ca(pki: &TestPki, dir: &std::path::Path) -> String {
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    std::fs::copy(
        pki.dir().join(TestPki::CA_FILE),
        dir.join("keys").join(TestPki::CA_FILE),
    )
    .unwrap();
    format!(
        "[delivery]\nwebpki_roots = false\ntrust_anchors = [\"{}\"]\nconnect_timeout = \"5s\"\n\
         command_timeout = \"5s\"\ndata_timeout = \"5s\"\n",
        TestPki::CA_FILE
    )
}

/// Sends one message with mail-send and returns the queue id from the `250` reply.
async fn send(gateway: SocketAddr, from: &str, to: &[&str], body: String) -> String {
    gateway::send(gateway, from, to, &body).await
}

fn message_with_marker(marker: &str) -> String {
    format!(
        "From: Ada <ada@clinic.example.org>\r\nTo: <friend@sink.example>\r\n\
         Subject: test {marker}\r\nMessage-ID: <{marker}@clinic.example.org>\r\n\r\n\
         body line for {marker}\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_after_250_loses_no_mail() {
    let dir = tempfile::tempdir().unwrap();
    // During the first run the next hop keeps its port bound but never replies, so every
    // message is still queued when the gateway is killed, and no other test can take
    // the port meanwhile.
    let silent_next_hop = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent_next_hop.local_addr().unwrap().port();
    let config = base_config(dir.path(), &route_to("sink.example", silent_port));
    let mut gateway = Gateway::start(dir.path(), &config);

    let markers: Vec<String> = (0..40)
        .map(|n| format!("crash-{n:02}-{}", std::process::id()))
        .collect();
    let mut sends = Vec::new();
    for marker in &markers {
        let body = message_with_marker(marker);
        let address = gateway.smtp;
        sends.push(tokio::spawn(async move {
            send(
                address,
                "ada@clinic.example.org",
                &["friend@sink.example"],
                body,
            )
            .await
        }));
    }
    let mut ids = Vec::new();
    for send in sends {
        ids.push(send.await.unwrap());
    }
    gateway.kill9();
    drop(silent_next_hop);

    // The restart points the route at a working sink, as an operator fixing it would.
    let sink = SmtpSink::start_dumping(&dir.path().join("sink"));
    let config = base_config(dir.path(), &route_to("sink.example", sink.port()));
    let gateway = Gateway::start(dir.path(), &config);
    let counts = sink.wait_for_markers(&markers, Duration::from_secs(60));
    for (marker, count) in markers.iter().zip(&counts) {
        assert!(
            *count >= 1,
            "{marker} was accepted but never delivered; log:\n{}",
            gateway.log()
        );
    }
    for id in &ids {
        assert!(
            gateway
                .wait_for_log(
                    &format!("{id}: to=<friend@sink.example>, relay="),
                    Duration::from_secs(10)
                )
                .is_some_and(|line| line.contains("status=sent")),
            "no sent line for {id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_log_lines_keep_their_format() {
    let dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start_dumping(&dir.path().join("sink"));
    let sink_port = sink.port();
    let config = base_config(dir.path(), &route_to("sink.example", sink_port));
    let gateway = Gateway::start(dir.path(), &config);

    let id = send(
        gateway.smtp,
        "ada@clinic.example.org",
        &["friend@sink.example"],
        message_with_marker("format"),
    )
    .await;
    sink.wait_for_markers(&["format".to_string()], Duration::from_secs(20));

    let queued = gateway
        .wait_for_log(&format!("{id}: queued"), Duration::from_secs(10))
        .expect("queued line");
    assert!(queued.contains("from=<ada@clinic.example.org>"), "{queued}");
    assert!(queued.contains("nrcpt=1"), "{queued}");
    assert!(queued.contains("size="), "{queued}");

    let sent = gateway
        .wait_for_log(
            &format!("{id}: to=<friend@sink.example>, relay="),
            Duration::from_secs(10),
        )
        .expect("delivery line");
    let fields = sent.split_once(&format!("{id}: ")).unwrap().1;
    let expected_order = [
        "to=", "relay=", "delay=", "delays=", "tls=", "dkim=", "route=", "reason=", "dsn=",
        "status=",
    ];
    let mut position = 0;
    for field in expected_order {
        let found = fields[position..]
            .find(field)
            .unwrap_or_else(|| panic!("{field} missing or out of order in {sent}"));
        position += found + field.len();
    }
    assert!(
        fields.contains(&format!("relay=127.0.0.1[127.0.0.1]:{sink_port}")),
        "{sent}"
    );
    assert!(fields.contains("route=opportunistic"), "{sent}");
    assert!(
        fields.contains("tls=plain"),
        "smtp-sink offers no STARTTLS: {sent}"
    );
    assert!(fields.contains("dsn=2.0.0"), "{sent}");
    assert!(fields.contains("status=sent (250"), "{sent}");
    assert!(fields.contains("dkim=none"), "no [[dkim]] key: {sent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_relays_through_gateway_to_verified_tls() {
    if let Some(reason) = postfix::unavailable() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the Postfix test: {reason}"
        );
        eprintln!("skipped: {reason}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let receiver = SmtpServer::start(ServerScript::with_tls(pki.server("mx.trust.nhs.test"))).await;
    let extra = format!(
        "{}{}",
        trust_test_ca(&pki, dir.path()),
        verified_route_to("trust.nhs.net", receiver.port(), "mx.trust.nhs.test")
    );
    let gateway = Gateway::start(dir.path(), &base_config(dir.path(), &extra));

    // Postfix, as the staff mail server, relays everything to the gateway over STARTTLS.
    let postfix_smtp = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let staff = postfix::Postfix::start(
        &dir.path().join("postfix"),
        postfix_smtp,
        gateway.smtp,
        "encrypt",
    );
    let swaks = Command::new("swaks")
        .args(["--server", &postfix_smtp.to_string()])
        .args(["--from", "ada.lovell@clinic.example.org"])
        .args(["--to", "referrals@trust.nhs.net"])
        .args([
            "--data",
            "tests/fixtures/samples/01-referral-secure-tag.eml",
        ])
        .output()
        .expect("run swaks");
    assert!(
        swaks.status.success(),
        "{}{}",
        String::from_utf8_lossy(&swaks.stdout),
        String::from_utf8_lossy(&swaks.stderr)
    );

    let messages = receiver.wait_for_messages(1, Duration::from_secs(60)).await;
    assert_eq!(
        messages.len(),
        1,
        "gateway log:\n{}\npostfix log:\n{}",
        gateway.log(),
        staff.maillog()
    );
    assert_eq!(messages[0].recipients, ["referrals@trust.nhs.net"]);
    assert!(
        messages[0].tls.is_some(),
        "the secure domain got the message in clear"
    );
    let data = String::from_utf8_lossy(&messages[0].data);
    assert!(data.contains("Message-ID: <01-referral-secure-tag@clinic.example.org>"));
    assert!(
        data.contains("by staff-mta.clinic.example.org"),
        "Postfix's Received header"
    );
    assert!(
        data.contains("by gateway.test.example"),
        "the gateway's Received header"
    );

    let relayed = staff
        .wait_for_maillog(&["status=sent", "queued as"], Duration::from_secs(10))
        .expect("Postfix logged the relay to the gateway");
    assert!(
        relayed.contains(&format!(
            "relay=127.0.0.1[127.0.0.1]:{}",
            gateway.smtp.port()
        )),
        "{relayed}"
    );
    let id = relayed
        .rsplit("queued as ")
        .next()
        .unwrap()
        .trim_end_matches(')')
        .to_string();
    let line = gateway
        .wait_for_log(
            &format!("{id}: to=<referrals@trust.nhs.net>, relay="),
            Duration::from_secs(10),
        )
        .expect("gateway delivery line for the id Postfix logged");
    assert!(line.contains("route=forced-tls"), "{line}");
    assert!(line.contains("/verified"), "{line}");
    assert!(line.contains("status=sent"), "{line}");
    let received_tls = staff
        .wait_for_maillog(
            &["Trusted TLS connection established", "127.0.0.1"],
            Duration::from_secs(1),
        )
        .or_else(|| {
            staff.wait_for_maillog(&["TLS connection established"], Duration::from_secs(1))
        });
    assert!(
        received_tls.is_some(),
        "Postfix used STARTTLS to the gateway:\n{}",
        staff.maillog()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_tls_waits_then_bounces() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    // The secure domain's next hop offers no STARTTLS.
    let insecure = SmtpServer::start(ServerScript::default()).await;
    // The sender's own mail server, where the DSN goes.
    let sender_home = SmtpServer::start(ServerScript::default()).await;
    let extra = format!(
        "{}{}{}",
        trust_test_ca(&pki, dir.path()),
        verified_route_to("nhs.net", insecure.port(), "mx.nhs.test"),
        route_to("clinic.example.org", sender_home.port())
    );
    let gateway = Gateway::start(dir.path(), &config_with_lifetime(dir.path(), "3s", &extra));

    let id = send(
        gateway.smtp,
        "ada@clinic.example.org",
        &["gp@nhs.net"],
        message_with_marker("no-starttls"),
    )
    .await;

    let dsn = sender_home
        .wait_for_messages(1, Duration::from_secs(30))
        .await;
    assert_eq!(dsn.len(), 1, "one DSN expected; log:\n{}", gateway.log());
    assert_eq!(dsn[0].mail_from.split_whitespace().next(), Some("<>"));
    assert_eq!(dsn[0].recipients, ["ada@clinic.example.org"]);
    let report = String::from_utf8_lossy(&dsn[0].data);
    assert!(report.contains("multipart/report"), "{report}");
    assert!(
        report.contains("report-type=\"delivery-status\"")
            || report.contains("report-type=delivery-status"),
        "{report}"
    );
    assert!(
        report.contains("Final-Recipient: rfc822; gp@nhs.net"),
        "{report}"
    );
    assert!(report.contains("Status: 4.4.7"), "{report}");
    assert!(
        report.contains("STARTTLS"),
        "the DSN names the TLS failure: {report}"
    );
    assert!(report.contains(&id), "{report}");

    assert!(
        insecure.clear_text_commands("MAIL").is_empty(),
        "MAIL FROM was sent to a next hop without TLS"
    );
    assert!(
        insecure.messages().is_empty(),
        "a secure-domain message left in clear"
    );
    let deferred = gateway
        .wait_for_lines(
            &format!("{id}: to=<gp@nhs.net>, relay="),
            2,
            Duration::from_secs(5),
        )
        .expect("at least two attempts");
    assert!(deferred[0].contains("status=deferred"), "{}", deferred[0]);
    assert!(deferred[0].contains("route=forced-tls"), "{}", deferred[0]);
    assert!(
        gateway
            .wait_for_log("status=expired", Duration::from_secs(5))
            .is_some(),
        "no expired line"
    );
    // Exactly one DSN, even after more scans.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(sender_home.messages().len(), 1);
}

/// Delivers through a next hop that fails the first connection with `fault`, and checks
/// that the gateway defers, retries and delivers exactly once.
async fn assert_retried_and_delivered_once(fault: Fault) {
    let dir = tempfile::tempdir().unwrap();
    let receiver = SmtpServer::start(ServerScript {
        fault,
        fault_first_only: true,
        ..ServerScript::default()
    })
    .await;
    let extra = format!(
        "[delivery]\ndata_timeout = \"1s\"\n{}",
        route_to("partner.example", receiver.port())
    );
    let gateway = Gateway::start(dir.path(), &base_config(dir.path(), &extra));

    let id = send(
        gateway.smtp,
        "ada@clinic.example.org",
        &["bob@partner.example"],
        message_with_marker(&format!("{fault:?}")),
    )
    .await;
    let messages = receiver.wait_for_messages(1, Duration::from_secs(20)).await;
    assert_eq!(messages.len(), 1, "log:\n{}", gateway.log());
    let lines = gateway
        .wait_for_lines(
            &format!("{id}: to=<bob@partner.example>, relay="),
            2,
            Duration::from_secs(5),
        )
        .expect("a deferred and a sent line");
    assert!(lines[0].contains("status=deferred"), "{}", lines[0]);
    assert!(lines[1].contains("status=sent"), "{}", lines[1]);
    assert!(receiver.connections() >= 2);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.messages().len(), 1, "delivered more than once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_mid_data_is_retried() {
    assert_retried_and_delivered_once(Fault::DropMidData).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_hop_timeout_is_retried() {
    assert_retried_and_delivered_once(Fault::StallAfterData).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_recipients_are_split_per_route() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let secure = SmtpServer::start(ServerScript::with_tls(pki.server("mx.trust.nhs.test"))).await;
    let ordinary = SmtpServer::start(ServerScript {
        starttls: StartTlsMode::Certificate(pki.self_signed("mx.mailbox.example")),
        ..ServerScript::default()
    })
    .await;
    let extra = format!(
        "{}{}{}{}",
        trust_test_ca(&pki, dir.path()),
        verified_route_to("trust.nhs.net", secure.port(), "mx.trust.nhs.test"),
        route_to("mailbox.example", ordinary.port()),
        route_to("partner.example", ordinary.port()),
    );
    let gateway = Gateway::start(dir.path(), &base_config(dir.path(), &extra));

    // Not sensitive, so only the domains decide the routes.
    let sample =
        std::fs::read_to_string("tests/fixtures/samples/05-newsletter-not-sensitive.eml").unwrap();
    let id = send(
        gateway.smtp,
        "ada.lovell@clinic.example.org",
        &[
            "referrals@trust.nhs.net",
            "sam.patient@mailbox.example",
            "bob@partner.example",
        ],
        sample,
    )
    .await;

    let secure_messages = secure.wait_for_messages(1, Duration::from_secs(20)).await;
    let ordinary_messages = ordinary.wait_for_messages(2, Duration::from_secs(20)).await;
    assert_eq!(secure_messages.len(), 1, "log:\n{}", gateway.log());
    assert_eq!(secure_messages[0].recipients, ["referrals@trust.nhs.net"]);
    assert_eq!(
        secure_messages[0]
            .tls
            .as_deref()
            .map(|v| v.starts_with("TLSv1.")),
        Some(true)
    );
    // One delivery per route and domain: the two ordinary domains arrive separately.
    let mut ordinary_recipients: Vec<_> = ordinary_messages
        .iter()
        .flat_map(|m| m.recipients.clone())
        .collect();
    ordinary_recipients.sort();
    assert_eq!(
        ordinary_recipients,
        ["bob@partner.example", "sam.patient@mailbox.example"]
    );
    assert!(
        ordinary_messages
            .iter()
            .all(|message| message.recipients.len() == 1)
    );

    let routed = |address: &str, route: &str| {
        gateway
            .wait_for_log(
                &format!("{id}: to=<{address}>, route={route}"),
                Duration::from_secs(5),
            )
            .is_some()
    };
    assert!(routed("referrals@trust.nhs.net", "forced-tls"));
    assert!(routed("sam.patient@mailbox.example", "opportunistic"));
    assert!(routed("bob@partner.example", "opportunistic"));
    let ordinary_line = gateway
        .wait_for_log(
            &format!("{id}: to=<bob@partner.example>, relay="),
            Duration::from_secs(5),
        )
        .unwrap();
    assert!(ordinary_line.contains("/unverified"), "{ordinary_line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_commands_list_show_flush_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    // The next hop closes every connection before its greeting, so the message stays
    // deferred. The test keeps the port bound, so no other test's listener can take it.
    let closing_next_hop = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closing_port = closing_next_hop.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for connection in closing_next_hop.incoming() {
            drop(connection);
        }
    });
    let config = base_config(dir.path(), &route_to("partner.example", closing_port));
    let gateway = Gateway::start(dir.path(), &config);
    let id = send(
        gateway.smtp,
        "ada@clinic.example.org",
        &["bob@partner.example"],
        message_with_marker("cli"),
    )
    .await;
    gateway
        .wait_for_log(
            &format!("{id}: to=<bob@partner.example>, relay="),
            Duration::from_secs(10),
        )
        .expect("one deferred attempt");

    let list = gateway.queue_command(&["list"]);
    assert!(list.contains(&id), "{list}");
    assert!(list.contains("from=<ada@clinic.example.org>"), "{list}");
    assert!(list.contains("1 message(s)"), "{list}");

    let show = gateway.queue_command(&["show", &id]);
    assert!(
        show.contains("to: <bob@partner.example> state=Pending route=opportunistic"),
        "{show}"
    );
    assert!(
        show.contains("reason: domain partner.example is not in the secure domain list"),
        "{show}"
    );
    assert!(show.contains("last: "), "{show}");

    let flush = gateway.queue_command(&["flush"]);
    assert!(flush.contains("made due now"), "{flush}");

    let delete = gateway.queue_command(&["delete", &id]);
    assert!(delete.contains(&format!("deleted {id}")), "{delete}");
    let list = gateway.queue_command(&["list"]);
    assert!(list.contains("0 message(s)"), "{list}");
}

#[test]
fn init_writes_a_config_that_check_config_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let binary = env!("CARGO_BIN_EXE_sealgate");
    let init = Command::new(binary)
        .arg("init")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    assert!(dir.path().join("keys/tls.crt").exists());
    assert!(dir.path().join("keys/tls.key").exists());
    assert!(dir.path().join("keys/store-master-1.key").exists());

    let check = Command::new(binary)
        .arg("check-config")
        .arg(dir.path().join("sealgate.toml"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(String::from_utf8_lossy(&check.stdout).contains(": ok"));
}

#[test]
fn check_config_names_file_key_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[queue]\nmax_lifetime = \"5x\"\n").unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_sealgate"))
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!check.status.success());
    let error = String::from_utf8_lossy(&check.stderr);
    assert!(error.contains(&path.display().to_string()), "{error}");
    assert!(error.contains("queue.max_lifetime"), "{error}");
    assert!(error.contains("\"5x\""), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounce_of_null_sender_mail_sends_no_dsn() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = SmtpServer::start(ServerScript {
        rcpt_replies: vec![(
            "gone@partner.example".into(),
            "550 5.1.1 no such user".into(),
        )],
        ..ServerScript::default()
    })
    .await;
    let config = base_config(dir.path(), &route_to("partner.example", receiver.port()));
    let gateway = Gateway::start(dir.path(), &config);

    let id = send(
        gateway.smtp,
        "",
        &["gone@partner.example"],
        message_with_marker("null"),
    )
    .await;
    let bounced = gateway
        .wait_for_log(
            &format!("{id}: to=<gone@partner.example>, relay="),
            Duration::from_secs(10),
        )
        .expect("delivery line");
    assert!(bounced.contains("status=bounced"), "{bounced}");
    assert!(bounced.contains("dsn=5.1.1"), "{bounced}");
    assert!(bounced.contains("550 5.1.1 no such user"), "{bounced}");
    assert!(
        gateway
            .wait_for_log(
                &format!("{id}: sender is <>, no DSN sent"),
                Duration::from_secs(5)
            )
            .is_some()
    );
    assert!(
        !gateway.log().contains("non-delivery notification"),
        "a DSN was queued"
    );
    assert!(
        gateway
            .wait_for_log(&format!("{id}: removed"), Duration::from_secs(5))
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounces_on_two_domains_share_one_dsn() {
    let dir = tempfile::tempdir().unwrap();
    let rejecting = |address: &str| ServerScript {
        rcpt_replies: vec![(address.into(), "550 5.1.1 no such user".into())],
        ..ServerScript::default()
    };
    let first = SmtpServer::start(rejecting("gone@first.example")).await;
    let second = SmtpServer::start(rejecting("gone@second.example")).await;
    let sender_home = SmtpServer::start(ServerScript::default()).await;
    let extra = format!(
        "{}{}{}",
        route_to("first.example", first.port()),
        route_to("second.example", second.port()),
        route_to("clinic.example.org", sender_home.port())
    );
    let gateway = Gateway::start(dir.path(), &base_config(dir.path(), &extra));

    let id = send(
        gateway.smtp,
        "ada@clinic.example.org",
        &["gone@first.example", "gone@second.example"],
        message_with_marker("two-domains"),
    )
    .await;
    let dsn = sender_home
        .wait_for_messages(1, Duration::from_secs(20))
        .await;
    assert_eq!(dsn.len(), 1, "log:\n{}", gateway.log());
    let report = String::from_utf8_lossy(&dsn[0].data);
    assert!(
        report.contains("Final-Recipient: rfc822; gone@first.example"),
        "{report}"
    );
    assert!(
        report.contains("Final-Recipient: rfc822; gone@second.example"),
        "{report}"
    );
    assert!(report.contains("Status: 5.1.1"), "{report}");
    assert!(
        gateway
            .wait_for_log(&format!("{id}: removed"), Duration::from_secs(5))
            .is_some()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(sender_home.messages().len(), 1, "more than one DSN");
}

#[test]
fn check_config_loads_the_tls_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sealgate.toml");
    std::fs::write(&path, "[inbound]\ntls_certificate = \"missing.crt\"\n").unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_sealgate"))
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!check.status.success());
    let error = String::from_utf8_lossy(&check.stderr);
    assert!(error.contains("missing.crt"), "{error}");
}

#[test]
fn route_prints_recipients_in_given_order() {
    let output = Command::new(env!("CARGO_BIN_EXE_sealgate"))
        .args([
            "route",
            "friend@mailbox.example",
            "gp@nhs.net",
            "ward@trust.nhs.net",
        ])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].starts_with("<friend@mailbox.example>: opportunistic"),
        "{text}"
    );
    assert!(lines[1].starts_with("<gp@nhs.net>: forced-tls"), "{text}");
    assert!(
        lines[2].starts_with(
            "<ward@trust.nhs.net>: forced-tls (domain trust.nhs.net is secure (rule *.nhs.net))"
        ),
        "{text}"
    );
}

#[test]
fn closed_output_pipe_ends_quietly() {
    let addresses: Vec<String> = (0..5000)
        .map(|n| format!("user{n}@mailbox.example"))
        .collect();
    let script = format!(
        "{} route {} | head -c 10 >/dev/null",
        env!("CARGO_BIN_EXE_sealgate"),
        addresses.join(" ")
    );
    let output = Command::new("sh").args(["-c", &script]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensitive_mail_without_certificate_never_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let secure = SmtpServer::start(ServerScript::with_tls(pki.server("mx.trust.nhs.test"))).await;
    let ordinary = SmtpServer::start(ServerScript::default()).await;
    let extra = format!(
        "{}{}{}",
        trust_test_ca(&pki, dir.path()),
        verified_route_to("trust.nhs.net", secure.port(), "mx.trust.nhs.test"),
        route_to("*", ordinary.port()),
    );
    let gateway = Gateway::start(dir.path(), &base_config(dir.path(), &extra));

    let sample = std::fs::read_to_string("tests/fixtures/samples/06-mixed-recipients.eml").unwrap();
    let id = send(
        gateway.smtp,
        "ada.lovell@clinic.example.org",
        &["referrals@trust.nhs.net", "sam.patient@mailbox.example"],
        sample,
    )
    .await;

    let delivered = secure.wait_for_messages(1, Duration::from_secs(20)).await;
    assert_eq!(delivered.len(), 1, "log:\n{}", gateway.log());
    let data = String::from_utf8_lossy(&delivered[0].data);
    assert!(
        data.contains("Subject: Discharge summary"),
        "the [secure] tag is removed: {data}"
    );
    assert!(!data.contains("[secure]"), "{data}");

    let held = gateway
        .wait_for_log(
            &format!("{id}: to=<sam.patient@mailbox.example>, route=portal"),
            Duration::from_secs(5),
        )
        .expect("portal route line");
    assert!(
        held.contains("sensitive (subject-tag in subject: tag [secure] (protect)"),
        "{held}"
    );
    assert!(held.contains("nhs-number in part 1 text/plain"), "{held}");
    assert!(
        !held.contains("999 000 0042"),
        "the NHS number itself is never logged"
    );

    // Give the queue several scans, then check every byte the ordinary MX received.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_only_notifications(&ordinary, &["999 000 0042", "Discharge summary"]);
    assert!(
        !gateway.log().contains("999 000 0042"),
        "the NHS number reached the log"
    );

    // Both recipients are done, so the message left the queue and only the hold store
    // keeps the held copy.
    let list = gateway.queue_command(&["list"]);
    assert!(!list.contains(&id), "{list}");
    let held = gateway.command("held", &["list"]);
    assert!(held.contains("1 held message(s)"), "{held}");
}

/// Returns the MIME entity S/MIME encrypts: the `Content-*` fields of the header (with
/// their continuation lines) and the body.
fn mime_entity(message: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(message);
    let (header, body) = text.split_once("\r\n\r\n").unwrap();
    let mut entity = String::new();
    let mut keep = false;
    for line in header.split("\r\n") {
        if !line.starts_with([' ', '\t']) {
            keep = line.to_ascii_lowercase().starts_with("content-");
        }
        if keep {
            entity.push_str(line);
            entity.push_str("\r\n");
        }
    }
    entity.push_str("\r\n");
    entity.push_str(body);
    entity.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensitive_mail_goes_smime_to_known_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let authority = smime_pki::Authority::new("Partner Test CA");
    let bob = authority.issue(&smime_pki::Spec::recipient("bob@partner.example"));
    std::fs::create_dir_all(dir.path().join("keys/recipients")).unwrap();
    std::fs::write(
        dir.path().join("keys/recipients/bob.pem"),
        bob.certificate_pem(),
    )
    .unwrap();
    // The recipient's own key stays outside the gateway's folders.
    let bob_key = dir.path().join("bob.key");
    let bob_certificate = dir.path().join("bob.crt");
    std::fs::write(&bob_key, bob.key_pem()).unwrap();
    std::fs::write(&bob_certificate, bob.certificate_pem()).unwrap();

    let partner = SmtpServer::start(ServerScript::default()).await;
    let patient = SmtpServer::start(ServerScript::default()).await;
    let extra = format!(
        "{}{}",
        route_to("partner.example", partner.port()),
        route_to("mailbox.example", patient.port()),
    );
    let gateway = Gateway::start(dir.path(), &base_config(dir.path(), &extra));

    let sample = std::fs::read("tests/fixtures/samples/06-mixed-recipients.eml").unwrap();
    // mail-send ends the data with CRLF . CRLF after the body's own last CRLF, so the
    // body goes without it to arrive exactly as the sample.
    let body = String::from_utf8(sample.clone()).unwrap();
    let id = send(
        gateway.smtp,
        "ada.lovell@clinic.example.org",
        &["bob@partner.example", "sam.patient@mailbox.example"],
        body.strip_suffix("\r\n").unwrap().to_string(),
    )
    .await;

    let received = partner.wait_for_messages(1, Duration::from_secs(20)).await;
    assert_eq!(received.len(), 1, "log:\n{}", gateway.log());
    assert_eq!(received[0].recipients, ["bob@partner.example"]);
    let wire = String::from_utf8_lossy(&received[0].data).into_owned();
    assert!(
        wire.contains("application/pkcs7-mime; smime-type=enveloped-data"),
        "{wire}"
    );
    assert!(
        !wire.contains("NHS number"),
        "content left in clear: {wire}"
    );
    assert!(!wire.contains("999 000 0042"), "NHS number left in clear");
    assert!(wire.contains("Subject: Discharge summary"), "{wire}");

    // The recipient's own OpenSSL opens it, and gets the original entity byte for byte.
    let wire_path = dir.path().join("received.eml");
    std::fs::write(&wire_path, &received[0].data).unwrap();
    let plain_path = dir.path().join("decrypted.eml");
    let decrypt = Command::new("openssl")
        .args(["cms", "-decrypt", "-in"])
        .arg(&wire_path)
        .arg("-inkey")
        .arg(&bob_key)
        .arg("-recip")
        .arg(&bob_certificate)
        .arg("-out")
        .arg(&plain_path)
        .output()
        .expect("run openssl");
    assert!(
        decrypt.status.success(),
        "{}",
        String::from_utf8_lossy(&decrypt.stderr)
    );
    let decrypted = std::fs::read(&plain_path).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&decrypted),
        String::from_utf8_lossy(&mime_entity(&sample))
    );

    let line = gateway
        .wait_for_log(
            &format!("{id}: to=<bob@partner.example>, relay="),
            Duration::from_secs(5),
        )
        .expect("delivery line");
    assert!(line.contains("route=smime"), "{line}");
    assert!(
        line.contains("recipients/bob.pem"),
        "the reason names the certificate: {line}"
    );
    assert!(line.contains("status=sent"), "{line}");

    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_only_notifications(&patient, &["999 000 0042", "Discharge summary"]);
}

/// Asserts that `server` received nothing but portal notifications, and that none of them
/// contains any of `phrases` of the held message.
fn assert_only_notifications(server: &SmtpServer, phrases: &[&str]) {
    for message in server.messages() {
        let data = String::from_utf8_lossy(&message.data);
        assert!(
            data.contains("Subject: You have a secure message from"),
            "not a notification: {data}"
        );
        for phrase in phrases {
            assert!(!data.contains(phrase), "notification contains {phrase:?}");
        }
    }
}

#[test]
fn explain_names_rules_and_certificate_flaws() {
    let dir = tempfile::tempdir().unwrap();
    let authority = smime_pki::Authority::new("Explain Test CA");
    let mut expired = smime_pki::Spec::recipient("bob@partner.example");
    expired.not_before = -30 * smime_pki::DAY;
    expired.not_after = -smime_pki::DAY;
    let bob = authority.issue(&expired);
    std::fs::create_dir_all(dir.path().join("keys/recipients")).unwrap();
    std::fs::write(
        dir.path().join("keys/recipients/bob.pem"),
        bob.certificate_pem(),
    )
    .unwrap();
    let config = dir.path().join("sealgate.toml");
    std::fs::write(&config, "").unwrap();

    let output = Command::new(env!("CARGO_BIN_EXE_sealgate"))
        .arg("explain")
        .arg("--config")
        .arg(&config)
        .arg("tests/fixtures/samples/04-official-sensitive.eml")
        .args(["--rcpt", "bob@partner.example", "--rcpt", "gp@nhs.net"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.contains("classification: sensitive, action protect"),
        "{text}"
    );
    assert!(
        text.contains("rule: marking in subject: marking OFFICIAL-SENSITIVE"),
        "{text}"
    );
    assert!(text.contains("<bob@partner.example>: portal"), "{text}");
    assert!(text.contains("bob.pem is not used: expired"), "{text}");
    assert!(text.contains("<gp@nhs.net>: forced-tls"), "{text}");
    // DANE is off by default, so the TLS order starts at MTA-STS; the portal recipient
    // is not delivered by SMTP and gets no TLS line.
    let tls_lines: Vec<&str> = text
        .lines()
        .filter(|line| line.starts_with("  tls: "))
        .collect();
    assert_eq!(tls_lines.len(), 1, "{text}");
    assert!(tls_lines[0].starts_with("  tls: mta-sts when"), "{text}");
    assert!(
        tls_lines[0].contains("else ca: STARTTLS and a verified certificate"),
        "{text}"
    );

    let unmarked = Command::new(env!("CARGO_BIN_EXE_sealgate"))
        .arg("explain")
        .arg("--config")
        .arg(&config)
        .arg("tests/fixtures/samples/07-wrong-check-digit.eml")
        .args(["--rcpt", "friends@mailbox.example"])
        .output()
        .unwrap();
    let text = String::from_utf8(unmarked.stdout).unwrap();
    assert!(text.contains("classification: not sensitive"), "{text}");
    assert!(
        text.contains("<friends@mailbox.example>: opportunistic"),
        "{text}"
    );
    assert!(text.contains("else none: STARTTLS when offered"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_rule_holds_every_recipient() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = SmtpServer::start(ServerScript::default()).await;
    let extra = format!(
        "[[policy.classify.patterns]]\nname = \"project-codename\"\nregex = 'BLUEBIRD'\naction = \"review\"\n\n{}",
        route_to("*", receiver.port())
    );
    let gateway = Gateway::start(dir.path(), &base_config(dir.path(), &extra));

    let id = send(
        gateway.smtp,
        "ada@clinic.example.org",
        &["gp@nhs.net", "friend@mailbox.example"],
        "Subject: plans\r\n\r\nThe BLUEBIRD figures are attached.\r\n".to_string(),
    )
    .await;
    for address in ["gp@nhs.net", "friend@mailbox.example"] {
        let line = gateway
            .wait_for_log(
                &format!("{id}: to=<{address}>, route=review"),
                Duration::from_secs(10),
            )
            .unwrap_or_else(|| panic!("no review route for {address}; log:\n{}", gateway.log()));
        assert!(line.contains("pattern:project-codename"), "{line}");
        assert!(
            !line.contains("BLUEBIRD"),
            "matched text in the log: {line}"
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        receiver.connections(),
        0,
        "a message held for review was delivered"
    );
    let flush = gateway.queue_command(&["flush"]);
    assert!(
        flush.contains("0 recipient(s)"),
        "flush released held mail: {flush}"
    );
    let show = gateway.queue_command(&["show", &id]);
    assert_eq!(show.matches("state=Held route=review").count(), 2, "{show}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smime_outer_subject_hides_an_nhs_number() {
    let dir = tempfile::tempdir().unwrap();
    let authority = smime_pki::Authority::new("Subject Test CA");
    let bob = authority.issue(&smime_pki::Spec::recipient("bob@partner.example"));
    std::fs::create_dir_all(dir.path().join("keys/recipients")).unwrap();
    std::fs::write(
        dir.path().join("keys/recipients/bob.pem"),
        bob.certificate_pem(),
    )
    .unwrap();
    let partner = SmtpServer::start(ServerScript::default()).await;
    let config = base_config(dir.path(), &route_to("partner.example", partner.port()));
    let gateway = Gateway::start(dir.path(), &config);

    send(
        gateway.smtp,
        "ada@clinic.example.org",
        &["bob@partner.example"],
        "Subject: Results for 943 476 5919\r\nBcc: hidden@clinic.example.org\r\n\r\nSee attached.\r\n"
            .to_string(),
    )
    .await;
    let received = partner.wait_for_messages(1, Duration::from_secs(20)).await;
    assert_eq!(received.len(), 1, "log:\n{}", gateway.log());
    let wire = String::from_utf8_lossy(&received[0].data);
    assert!(wire.contains("application/pkcs7-mime"), "{wire}");
    assert!(
        !wire.contains("943 476 5919"),
        "the NHS number travelled in clear: {wire}"
    );
    assert!(wire.contains("Subject: Secure message"), "{wire}");
    assert!(!wire.contains("hidden@clinic.example.org"), "{wire}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_forced_tls_falls_back_to_portal() {
    let dir = tempfile::tempdir().unwrap();
    sealgate::store::create_master_key(&dir.path().join("keys")).unwrap();
    let pki = TestPki::new();
    // The secure domain's next hop offers no STARTTLS, so every attempt fails at TLS.
    let insecure = SmtpServer::start(ServerScript::default()).await;
    let sender_home = SmtpServer::start(ServerScript::default()).await;
    let extra = format!(
        "{}{}{}",
        trust_test_ca(&pki, dir.path()),
        verified_route_to("nhs.net", insecure.port(), "mx.nhs.test"),
        route_to("clinic.example.org", sender_home.port())
    );
    let config = base_config(dir.path(), &extra).replace(
        "[server]\n",
        "[policy]\nforced_tls_fallback_after = 2\n\n[server]\n",
    );
    let gateway = Gateway::start(dir.path(), &config);

    let id = send(
        gateway.smtp,
        "ada@clinic.example.org",
        &["gp@nhs.net"],
        message_with_marker("fallback"),
    )
    .await;
    let moved = gateway
        .wait_for_log(
            &format!("{id}: to=<gp@nhs.net>, route=portal"),
            Duration::from_secs(20),
        )
        .unwrap_or_else(|| panic!("no fallback; log:\n{}", gateway.log()));
    assert!(moved.contains("verified TLS failed 2 times"), "{moved}");
    let attempts = gateway
        .wait_for_lines(
            &format!("{id}: to=<gp@nhs.net>, relay="),
            2,
            Duration::from_secs(5),
        )
        .unwrap();
    assert!(attempts.iter().all(|line| line.contains("status=deferred")));

    let notices = sender_home
        .wait_for_messages(1, Duration::from_secs(20))
        .await;
    assert_eq!(notices.len(), 1, "log:\n{}", gateway.log());
    let notice = String::from_utf8_lossy(&notices[0].data);
    assert!(notice.contains("moved to the secure portal"), "{notice}");
    assert!(
        gateway
            .wait_for_log("route=portal, status=held", Duration::from_secs(10))
            .is_some()
    );
    assert!(
        insecure.clear_text_commands("MAIL").is_empty(),
        "MAIL FROM went out in clear"
    );

    // The notification to gp@nhs.net fails TLS too, but never falls back itself.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let fallbacks = gateway.log().matches("route=portal, reason=").count();
    assert_eq!(fallbacks, 1, "log:\n{}", gateway.log());
}
