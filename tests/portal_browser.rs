//! The recipient portal in a real browser: headless Chromium driven through chromedriver's
//! W3C WebDriver API, against the portal on plain HTTP on loopback with the real hold
//! store, audit log and spool. Needs Debian's `chromium` and `chromium-driver`.

mod webdriver;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use sealgate::audit::AuditLog;
use sealgate::config::Config;
use sealgate::portal::{PortalContext, PortalSettings, SendLimits, StoreBackend, serve_portal};
use sealgate::queue::Spool;
use sealgate::queue::store::Store;
use sealgate::store::{self as hold, HeldEnvelope, HoldStore};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use webdriver::start_browser;

const SENDER: &str = "ada@trust.nhs.uk";
const RECIPIENT: &str = "pat@example.org";
fn test_message(attachment: &[u8]) -> Vec<u8> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(attachment);
    format!(
        "From: Dr Ada <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: Your blood test results\r\n\
         Date: Thu, 3 Dec 2026 10:00:00 +0000\r\nMessage-ID: <results-1@trust.nhs.uk>\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n\
         --b1\r\nContent-Type: text/plain\r\n\r\nYour results are within the normal range.\r\n\
         --b1\r\nContent-Type: application/pdf\r\n\
         Content-Disposition: attachment; filename=\"results.pdf\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{encoded}\r\n--b1--\r\n"
    )
    .into_bytes()
}

/// Messages in the queue, as (sender, recipients, body).
fn queued(database: &Path) -> Vec<(String, Vec<String>, String)> {
    let store = Store::open(database).expect("queue database");
    let mut messages = Vec::new();
    for summary in store.list().expect("list") {
        let body = store.body(&summary.id).unwrap().expect("stored body");
        let recipients = store
            .recipients(&summary.id)
            .unwrap()
            .into_iter()
            .map(|row| row.address)
            .collect();
        messages.push((
            summary.sender,
            recipients,
            String::from_utf8_lossy(&body).into(),
        ));
    }
    messages
}

async fn wait_for_file(path: &Path) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(bytes) = std::fs::read(path)
            && !bytes.is_empty()
        {
            return bytes;
        }
        assert!(
            Instant::now() < deadline,
            "{} was not downloaded",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_collects_message_and_replies() {
    let dir = tempfile::tempdir().unwrap();
    let downloads: PathBuf = dir.path().join("downloads");
    let profile = dir.path().join("profile");
    std::fs::create_dir_all(&downloads).unwrap();

    let mut config = Config::development();
    config.server.data_dir = dir.path().join("data");
    config.server.keys_dir = dir.path().join("keys");
    hold::ensure_master_key(&config.server.keys_dir).expect("master key");
    let hold_store = HoldStore::open(&config).expect("hold store");
    let audit = AuditLog::open(&config).expect("audit log");
    let spool = Spool::start(&config.database_path(), Arc::new(Notify::new())).expect("spool");

    let attachment: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let envelope = HeldEnvelope {
        queue_id: "0123456789ABCDEF".into(),
        sender: SENDER.into(),
        recipient: RECIPIENT.into(),
        subject: "Your blood test results".into(),
    };
    let held = hold_store
        .hold(&test_message(&attachment), &envelope)
        .expect("hold");

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    let settings = PortalSettings {
        base_url: base_url.clone(),
        organisation: "Example Trust".into(),
        passcode_sender: "no-reply@trust.nhs.uk".into(),
        passcode_digits: 6,
        passcode_lifetime: Duration::from_secs(900),
        max_passcode_attempts: 5,
        session_lifetime: Duration::from_secs(900),
        send_limits: SendLimits::default(),
        max_reply_size: 10 << 20,
        tls: false,
    };
    let backend = StoreBackend::new(hold_store, audit.clone());
    let context = PortalContext::new(settings, Arc::new(backend), spool, None);
    let server = tokio::spawn(serve_portal(listener, Arc::new(context)));

    let (_driver, browser) = start_browser(&profile, &downloads).await;
    let database = config.database_path();

    // Opening the link shows a page and sends nothing.
    browser.go(&format!("{base_url}/m/{}", held.token)).await;
    browser.wait_for_heading("You have a secure message").await;
    assert!(queued(&database).is_empty());

    browser.click("button[type=submit]").await;
    browser.wait_for_heading("Enter your passcode").await;
    let mails = queued(&database);
    assert_eq!(mails.len(), 1);
    let (_, recipients, body) = &mails[0];
    assert_eq!(recipients, &[RECIPIENT.to_string()]);
    assert!(
        !body.contains("normal range"),
        "passcode mail leaks content"
    );
    let passcode = regex::Regex::new(r"Your passcode is (\d{6})")
        .unwrap()
        .captures(body)
        .expect("passcode in the mail")[1]
        .to_string();

    browser.type_into("#passcode", &passcode).await;
    browser.click("form[action$='/verify'] button").await;
    browser.wait_for_heading("Your blood test results").await;
    assert!(browser.source().await.contains("within the normal range"));

    browser.click("a[href$='/attachments/0']").await;
    let downloaded = wait_for_file(&downloads.join("results.pdf")).await;
    assert_eq!(downloaded, attachment);

    let upload = dir.path().join("reply-note.txt");
    std::fs::write(&upload, b"note from the patient").unwrap();
    browser
        .type_into("#reply-text", "Thank you, see my note.")
        .await;
    browser
        .type_into("#reply-files", &upload.display().to_string())
        .await;
    browser.click("form[action$='/reply'] button").await;
    browser.wait_for_heading("Your reply has been sent").await;

    let mails = queued(&database);
    assert_eq!(mails.len(), 2);
    let (sender, recipients, reply) = mails
        .iter()
        .find(|(sender, _, _)| sender == RECIPIENT)
        .expect("reply in the queue");
    assert_eq!(sender, RECIPIENT);
    assert_eq!(recipients, &[SENDER.to_string()]);
    assert!(
        reply.contains("In-Reply-To: <results-1@trust.nhs.uk>"),
        "{reply}"
    );
    assert!(reply.contains("Thank you, see my note."), "{reply}");
    assert!(reply.contains("reply-note.txt"), "{reply}");

    let events: Vec<String> = audit
        .entries_for(&held.id)
        .unwrap()
        .into_iter()
        .map(|entry| entry.event)
        .collect();
    for expected in [
        "portal.passcode.sent",
        "portal.message.opened",
        "portal.attachment.downloaded",
        "portal.reply.sent",
    ] {
        assert!(
            events.iter().any(|event| event == expected),
            "{expected} in {events:?}"
        );
    }

    server.abort();
}
