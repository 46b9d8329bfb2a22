//! The review queue, administrator accounts and the audit trail through the real binary:
//! messages held by a `review` rule are released, released as not sensitive, rejected and
//! deleted with `sealgate review`, and leave by the route each action calls for.

mod common;
mod gateway;

use std::time::Duration;

use common::{ServerScript, SmtpServer};
use gateway::{Gateway, base_config, send};

const SENDER: &str = "ada@clinic.example.org";

/// Starts a gateway whose `BLUEBIRD` rule sends mail to review, with every domain routed
/// to `receiver` and a hold store key for the portal route.
fn review_gateway(dir: &std::path::Path, receiver: &SmtpServer, extra: &str) -> Gateway {
    sealgate::store::create_master_key(&dir.join("keys")).unwrap();
    let config = base_config(
        dir,
        &format!(
            "{extra}\n[[policy.classify.patterns]]\nname = \"codename\"\nregex = 'BLUEBIRD'\n\
             action = \"review\"\n\n[portal]\nbase_url = \"https://portal.clinic.example\"\n\n\
             [[delivery.routes]]\ndomain = \"*\"\nhost = \"127.0.0.1\"\nport = {}\n",
            receiver.port()
        ),
    );
    Gateway::start(dir, &config)
}

fn held_message(marker: &str) -> String {
    format!(
        "From: Ada <{SENDER}>\r\nTo: <friend@mailbox.example>\r\nSubject: plans {marker}\r\n\
         Message-ID: <{marker}@clinic.example.org>\r\n\r\nThe BLUEBIRD figures, {marker}.\r\n"
    )
}

fn add_account(gateway: &Gateway, name: &str, role: &str) {
    let output = gateway.command_output(
        "admin",
        &["add", name, "--role", role, "--password-stdin"],
        "a long test password\n",
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn wait_for_held(gateway: &Gateway, id: &str) {
    gateway
        .wait_for_log(&format!("{id}: to=<"), Duration::from_secs(20))
        .unwrap_or_else(|| panic!("{id} not routed; log:\n{}", gateway.log()));
    let list = gateway.command("review", &["list"]);
    assert!(list.contains(id), "{id} not in the review list: {list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_actions_route_as_decided() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = SmtpServer::start(ServerScript::default()).await;
    let gateway = review_gateway(dir.path(), &receiver, "");
    add_account(&gateway, "alice", "admin");
    add_account(&gateway, "audrey", "auditor");

    let protected = send(
        gateway.smtp,
        SENDER,
        &["friend@mailbox.example"],
        &held_message("m1"),
    )
    .await;
    let ordinary = send(
        gateway.smtp,
        SENDER,
        &["pal@mailbox.example"],
        &held_message("m2"),
    )
    .await;
    let rejected = send(
        gateway.smtp,
        SENDER,
        &["other@mailbox.example"],
        &held_message("m3"),
    )
    .await;
    let deleted = send(
        gateway.smtp,
        SENDER,
        &["gone@mailbox.example"],
        &held_message("m4"),
    )
    .await;
    for id in [&protected, &ordinary, &rejected, &deleted] {
        wait_for_held(&gateway, id).await;
    }
    assert_eq!(receiver.connections(), 0, "held mail was delivered");

    // Filters and paging.
    let filtered = gateway.command("review", &["list", "--recipient", "pal@"]);
    assert!(filtered.contains(&ordinary), "{filtered}");
    assert!(!filtered.contains(&protected), "{filtered}");
    let page = gateway.command("review", &["list", "--limit", "1", "--offset", "1"]);
    assert!(
        page.contains("1 of 4 held message(s) from offset 1"),
        "{page}"
    );
    let by_rule = gateway.command("review", &["list", "--rule", "pattern:codename"]);
    assert!(by_rule.contains("4 of 4 held"), "{by_rule}");

    let show = gateway.command("review", &["show", &protected, "--actor", "audrey"]);
    assert!(show.contains("header Subject: plans m1"), "{show}");
    assert!(show.contains("  | The BLUEBIRD figures, m1."), "{show}");
    assert!(show.contains("<friend@mailbox.example>: portal"), "{show}");

    // An auditor cannot act, and nothing changes.
    let denied =
        gateway.command_output("review", &["release", &protected, "--actor", "audrey"], "");
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("auditor"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    let unknown = gateway.command_output("review", &["delete", &deleted, "--actor", "mallory"], "");
    assert!(!unknown.status.success());
    assert!(gateway.command("review", &["list"]).contains("of 4 held"));

    // Released as sensitive: the rule counts as protect, so it goes to the portal and only
    // a notification without the content leaves.
    let released = gateway.command(
        "review",
        &[
            "release", &protected, "--actor", "alice", "--reason", "checked",
        ],
    );
    assert!(released.contains("released"), "{released}");
    gateway
        .wait_for_log(
            &format!("{protected}: to=<friend@mailbox.example>, route=portal"),
            Duration::from_secs(20),
        )
        .unwrap_or_else(|| panic!("not routed to the portal; log:\n{}", gateway.log()));
    let notification = receiver
        .wait_for_messages(1, Duration::from_secs(20))
        .await
        .remove(0);
    let notification_text = String::from_utf8_lossy(&notification.data).to_string();
    assert!(
        notification_text.contains("portal.clinic.example"),
        "{notification_text}"
    );
    assert!(
        !notification_text.contains("BLUEBIRD"),
        "{notification_text}"
    );

    // Not sensitive needs a reason, then arrives as it was sent.
    let no_reason = gateway.command_output(
        "review",
        &["release", &ordinary, "--actor", "alice", "--not-sensitive"],
        "",
    );
    assert!(!no_reason.status.success());
    gateway.command(
        "review",
        &[
            "release",
            &ordinary,
            "--actor",
            "alice",
            "--not-sensitive",
            "--reason",
            "codename is public now",
        ],
    );
    let messages = receiver.wait_for_messages(2, Duration::from_secs(20)).await;
    let plain = messages
        .iter()
        .find(|message| message.recipients.iter().any(|r| r.contains("pal@")))
        .expect("the released message arrived");
    assert!(
        String::from_utf8_lossy(&plain.data).contains("The BLUEBIRD figures, m2."),
        "not delivered as sent"
    );

    // Rejected: the sender gets a DSN with the reason.
    gateway.command(
        "review",
        &[
            "reject",
            &rejected,
            "--actor",
            "alice",
            "--reason",
            "patient data to a personal address",
        ],
    );
    let messages = receiver.wait_for_messages(3, Duration::from_secs(20)).await;
    let dsn = messages
        .iter()
        .find(|message| message.recipients.iter().any(|r| r.contains(SENDER)))
        .expect("the DSN reached the sender's server");
    let dsn_text = String::from_utf8_lossy(&dsn.data).to_string();
    assert!(
        dsn_text.contains("patient data to a personal address"),
        "{dsn_text}"
    );
    assert!(dsn_text.contains("Status: 5.7.1"), "{dsn_text}");

    gateway.command("review", &["delete", &deleted, "--actor", "alice"]);
    let list = gateway.command("review", &["list"]);
    assert!(list.contains("0 of 0 held"), "{list}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.messages().len(), 3, "the deleted message left");

    // Every step is in the audit trail, without content.
    let export = gateway.command("audit", &["export", "--since", "2000-01-01"]);
    for event in [
        "\"queue.routed\"",
        "\"delivery.result\"",
        "\"review.viewed\"",
        "\"review.released\"",
        "\"review.rejected\"",
        "\"review.deleted\"",
        "\"admin.account\"",
    ] {
        assert!(export.contains(event), "{event} missing from:\n{export}");
    }
    assert!(!export.contains("BLUEBIRD"), "{export}");
    assert!(!export.contains("plans m"), "{export}");
    for line in export.lines() {
        let entry: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(entry["time"].as_str().unwrap().ends_with('Z'), "{line}");
    }
    let none = gateway.command("audit", &["export", "--until", "2000-01-01"]);
    assert!(none.is_empty(), "{none}");
    let verify = gateway.command("audit", &["verify"]);
    assert!(verify.contains("audit chain ok"), "{verify}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_eyes_needs_second_admin() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = SmtpServer::start(ServerScript::default()).await;
    let gateway = review_gateway(dir.path(), &receiver, "[admin]\nfour_eyes = true\n");
    add_account(&gateway, "alice", "admin");
    add_account(&gateway, "bob", "admin");
    let id = send(
        gateway.smtp,
        SENDER,
        &["pal@mailbox.example"],
        &held_message("m5"),
    )
    .await;
    wait_for_held(&gateway, &id).await;

    let release = [
        "release",
        id.as_str(),
        "--not-sensitive",
        "--reason",
        "fine",
    ];
    let first = gateway.command("review", &[&release[..], &["--actor", "alice"]].concat());
    assert!(first.contains("requested"), "{first}");
    let again = gateway.command_output(
        "review",
        &[&release[..], &["--actor", "alice"]].concat(),
        "",
    );
    assert!(!again.status.success(), "the same administrator approved");
    let other_mode = gateway.command_output(
        "review",
        &["release", &id, "--actor", "bob", "--reason", "fine"],
        "",
    );
    assert!(!other_mode.status.success(), "approved with another mode");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.connections(), 0, "released before approval");

    let second = gateway.command("review", &[&release[..], &["--actor", "bob"]].concat());
    assert!(second.contains("released"), "{second}");
    receiver.wait_for_messages(1, Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_names_tampered_entry() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = SmtpServer::start(ServerScript::default()).await;
    let gateway = review_gateway(dir.path(), &receiver, "");
    for name in ["alice", "bob", "carol", "dave"] {
        add_account(&gateway, name, "auditor");
    }
    assert!(gateway.command("audit", &["verify"]).contains("4 entries"));
    let database = rusqlite::Connection::open(dir.path().join("data/queue.sqlite")).unwrap();

    database
        .execute(
            "UPDATE audit SET detail = 'account eve: added' WHERE id = 2",
            [],
        )
        .unwrap();
    let edited = gateway.command_output("audit", &["verify"], "");
    assert!(!edited.status.success(), "an edited entry verified");
    let message = String::from_utf8_lossy(&edited.stderr).to_string();
    assert!(message.contains("audit entry 2 is invalid"), "{message}");

    database
        .execute(
            "UPDATE audit SET detail = 'account bob: added with role auditor' WHERE id = 2",
            [],
        )
        .unwrap();
    assert!(
        gateway
            .command("audit", &["verify"])
            .contains("audit chain ok")
    );
    database
        .execute("DELETE FROM audit WHERE id = 3", [])
        .unwrap();
    let deleted = gateway.command_output("audit", &["verify"], "");
    assert!(!deleted.status.success(), "a deleted entry went unnoticed");
    let message = String::from_utf8_lossy(&deleted.stderr).to_string();
    assert!(message.contains("audit entry 4 is invalid"), "{message}");
}
