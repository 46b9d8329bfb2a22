//! Through the real binary: no plaintext of a queued or held message is at rest in the data
//! folder, and the gateway does not start without the master key that encrypts it.

mod common;
mod gateway;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use common::{ServerScript, SmtpServer};
use gateway::{Gateway, base_config, send};

const SUBJECT_MARKER: &str = "Qzv8SubjectMarker";
const BODY_MARKER: &str = "Qzv8BodyMarker";
const ATTACHMENT_MARKER: &str = "Qzv8AttachmentMarker";

/// Builds a `[secure]` message, which makes it sensitive, with one marker each in the
/// subject, the body and a base64 attachment. Returns it with the attachment's base64 text.
fn marked_message() -> (String, String) {
    let attachment = format!("{ATTACHMENT_MARKER} haemoglobin 135 g/L\r\n").repeat(20);
    let encoded = base64::engine::general_purpose::STANDARD.encode(attachment);
    let lines: Vec<&str> = encoded
        .as_bytes()
        .chunks(76)
        .map(|line| std::str::from_utf8(line).unwrap())
        .collect();
    let wrapped = lines.join("\r\n");
    let message = format!(
        "From: ada.lovell@clinic.example.org\r\n\
         To: referrals@trust.nhs.net, sam.patient@mailbox.example\r\n\
         Subject: [secure] Referral {SUBJECT_MARKER}\r\n\
         Message-ID: <at-rest-1@clinic.example.org>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain\r\n\r\nPlease see {BODY_MARKER} attached.\r\n\
         --b1\r\nContent-Type: application/pdf\r\n\
         Content-Disposition: attachment; filename=\"results.pdf\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{wrapped}\r\n--b1--\r\n"
    );
    (message, encoded)
}

/// Names the files under `folder` whose raw bytes contain any of `needles`.
fn files_containing(folder: &Path, needles: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![folder.to_owned()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            for needle in needles {
                if bytes
                    .windows(needle.len())
                    .any(|window| window == needle.as_bytes())
                {
                    found.push(format!("{} contains {needle:?}", path.display()));
                }
            }
        }
    }
    found
}

/// Lists the data folder's file names, to show that the database, `-wal` and `-shm` exist.
fn file_names(folder: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_and_held_mail_leaves_no_plaintext() {
    common::init_logs();
    let dir = tempfile::tempdir().unwrap();
    // The secure domain's next hop offers no STARTTLS, so forced TLS defers and the
    // message stays queued for that recipient.
    let secure_hop = SmtpServer::start(ServerScript::default()).await;
    let ordinary = SmtpServer::start(ServerScript::default()).await;
    let config = base_config(
        dir.path(),
        &format!(
            "[[delivery.routes]]\ndomain = \"trust.nhs.net\"\nhost = \"127.0.0.1\"\nport = {}\n\n\
             [[delivery.routes]]\ndomain = \"mailbox.example\"\nhost = \"127.0.0.1\"\nport = {}\n",
            secure_hop.port(),
            ordinary.port()
        ),
    );
    let mut gateway = Gateway::start(dir.path(), &config);
    let (message, encoded) = marked_message();
    let queue_id = send(
        gateway.smtp,
        "ada.lovell@clinic.example.org",
        &["referrals@trust.nhs.net", "sam.patient@mailbox.example"],
        &message,
    )
    .await;

    gateway
        .wait_for_log("route=portal, status=held", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no hold logged; log:\n{}", gateway.log()));
    let attempt = gateway
        .wait_for_log(
            &format!("{queue_id}: to=<referrals@trust.nhs.net>, relay="),
            Duration::from_secs(20),
        )
        .unwrap_or_else(|| panic!("no forced-TLS attempt logged; log:\n{}", gateway.log()));
    assert!(attempt.contains("status=deferred"), "{attempt}");
    // The notification reached the portal recipient's server, so the hold is complete.
    let notified = ordinary.wait_for_messages(1, Duration::from_secs(20)).await;
    assert_eq!(notified.len(), 1, "log:\n{}", gateway.log());

    let show = gateway.queue_command(&["show", &queue_id]);
    assert!(
        show.contains("to: <referrals@trust.nhs.net> state=Pending route=forced-tls"),
        "{show}"
    );
    assert!(
        show.contains("to: <sam.patient@mailbox.example> state=Portal route=portal"),
        "{show}"
    );
    let held = gateway.command("held", &["list"]);
    assert!(held.contains("1 held message(s)"), "{held}");

    let data = dir.path().join("data");
    let names = file_names(&data);
    for expected in ["queue.sqlite", "queue.sqlite-wal", "queue.sqlite-shm"] {
        assert!(names.iter().any(|name| name == expected), "{names:?}");
    }
    let markers = [
        SUBJECT_MARKER,
        BODY_MARKER,
        ATTACHMENT_MARKER,
        &encoded[..64],
    ];
    let leaks = files_containing(&data, &markers);
    assert!(leaks.is_empty(), "plaintext at rest: {leaks:?}");

    // After a crash and a restart, with the message still queued, the same holds.
    gateway.kill9();
    let gateway = Gateway::start(dir.path(), &config);
    gateway
        .wait_for_log(
            &format!("{queue_id}: to=<referrals@trust.nhs.net>, relay="),
            Duration::from_secs(20),
        )
        .unwrap_or_else(|| panic!("no retry after the restart; log:\n{}", gateway.log()));
    let show = gateway.queue_command(&["show", &queue_id]);
    assert!(show.contains("state=Pending route=forced-tls"), "{show}");
    let leaks = files_containing(&data, &markers);
    assert!(
        leaks.is_empty(),
        "plaintext at rest after restart: {leaks:?}"
    );
    assert!(secure_hop.messages().is_empty());
}

#[test]
fn serve_without_master_key_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    gateway::write_self_signed(&keys);
    let config = dir.path().join("sealgate.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[portal]\nlisten = \"127.0.0.1:0\"\n",
            base_config(dir.path(), "")
        ),
    )
    .unwrap();

    let output = Command::new(env!("CARGO_BIN_EXE_sealgate"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    let expected = keys.join("store-master-1.key");
    assert!(
        stderr.contains(&format!("master key {} not found", expected.display())),
        "{stderr}"
    );
    assert!(stderr.contains("sealgate init"), "{stderr}");
    assert!(!stderr.contains("SMTP listener started"), "{stderr}");
}
