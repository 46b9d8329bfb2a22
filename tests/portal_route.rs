//! End to end through the real binary: a sensitive message to a recipient without a secure
//! domain or a certificate is held in the encrypted store, and only a notification with
//! the portal link reaches the recipient's server.

mod common;
mod gateway;

use std::time::Duration;

use common::{ServerScript, SmtpServer};
use gateway::{Gateway, base_config, send};

const SAMPLE: &str = include_str!("fixtures/samples/02-results-to-patient.eml");

/// Phrases of the sample that must never leave the gateway: subject, body, the NHS
/// number and the attachment, both decoded and as base64.
const CONTENT: [&str; 6] = [
    "blood test results",
    "Dear Sam",
    "999-000-0026",
    "Your results are attached",
    "Haemoglobin",
    "SGFlbW9nbG9iaW4",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensitive_mail_is_held_and_only_notified() {
    common::init_logs();
    let dir = tempfile::tempdir().unwrap();
    sealgate::store::create_master_key(&dir.path().join("keys")).unwrap();
    let receiver = SmtpServer::start(ServerScript::default()).await;
    let config = base_config(
        dir.path(),
        &format!(
            "[portal]\norganisation = \"Riverside Health Centre\"\n\
             base_url = \"https://portal.riverside.example\"\n\n\
             [[delivery.routes]]\ndomain = \"mailbox.example\"\nhost = \"127.0.0.1\"\nport = {}\n",
            receiver.port()
        ),
    );
    let gateway = Gateway::start(dir.path(), &config);

    let queue_id = send(
        gateway.smtp,
        "ada.lovell@clinic.example.org",
        &["sam.patient@mailbox.example"],
        SAMPLE,
    )
    .await;

    let held_line = gateway
        .wait_for_log("route=portal, status=held", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no hold logged; log:\n{}", gateway.log()));
    assert!(held_line.contains(&queue_id), "{held_line}");
    let notification_id = held_line
        .split("notification ")
        .nth(1)
        .and_then(|rest| rest.strip_suffix(')'))
        .expect("hold line names the notification")
        .to_string();

    let messages = receiver.wait_for_messages(1, Duration::from_secs(20)).await;
    assert_eq!(messages.len(), 1, "log:\n{}", gateway.log());
    let delivered = &messages[0];
    assert_eq!(delivered.recipients, ["sam.patient@mailbox.example"]);
    assert!(
        delivered
            .mail_from
            .starts_with("<no-reply@gateway.test.example>"),
        "{}",
        delivered.mail_from
    );

    let raw = String::from_utf8_lossy(&delivered.data).to_string();
    for phrase in CONTENT {
        assert!(
            !raw.contains(phrase),
            "notification contains {phrase:?}:\n{raw}"
        );
    }
    let parsed = mail_parser::MessageParser::default()
        .parse(&delivered.data)
        .unwrap();
    assert_eq!(
        parsed.subject(),
        Some("You have a secure message from Riverside Health Centre")
    );
    let text = parsed.body_text(0).expect("a text part").to_string();
    let html = parsed.body_html(0).expect("an HTML part").to_string();
    assert!(parsed.text_body.len() == 1 && parsed.html_body.len() == 1);
    let link_start = text
        .find("https://portal.riverside.example/m/")
        .expect("text part has the portal link");
    let token: String = text[link_start + "https://portal.riverside.example/m/".len()..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    assert!(
        token.len() >= 22,
        "token {token:?} is shorter than 128 bits"
    );
    assert!(html.contains(&format!("https://portal.riverside.example/m/{token}")));
    for part in [&text, &html] {
        assert!(part.contains("Riverside Health Centre"), "{part}");
        assert!(part.contains("ada.lovell@clinic.example.org"), "{part}");
        assert!(
            !part.contains("sam.patient"),
            "link or text names the recipient: {part}"
        );
        for phrase in CONTENT {
            assert!(!part.contains(phrase), "notification contains {phrase:?}");
        }
    }

    // The notification itself went out opportunistically, not to the portal again.
    let notification_route = gateway
        .wait_for_log(
            &format!("{notification_id}: to=<sam.patient@mailbox.example>, route="),
            Duration::from_secs(5),
        )
        .expect("notification routed");
    assert!(
        notification_route.contains("route=opportunistic"),
        "{notification_route}"
    );
    assert_eq!(
        gateway.log().matches("route=portal, status=held").count(),
        1
    );

    let listed = gateway.command("held", &["list"]);
    assert!(listed.contains("1 held message(s)"), "{listed}");
    assert!(listed.contains("active"), "{listed}");
    let held_id = listed.split_whitespace().next().unwrap().to_string();
    let shown = gateway.command("held", &["show", &held_id]);
    assert!(
        shown.contains("to: <sam.patient@mailbox.example>"),
        "{shown}"
    );
    assert!(
        shown.contains("subject: Your blood test results"),
        "{shown}"
    );
    assert!(!shown.contains("Dear Sam"), "{shown}");

    // The original left the queue: only the hold store has it, encrypted.
    let queue = gateway.queue_command(&["list"]);
    assert!(!queue.contains(&queue_id), "{queue}");

    let revoked = gateway.command("held", &["revoke", &held_id]);
    assert!(revoked.contains("revoked"), "{revoked}");
    let listed = gateway.command("held", &["list"]);
    assert!(listed.contains("revoked"), "{listed}");
}
