use std::net::SocketAddr;

use super::*;
use crate::envelope::{AcceptedMessage, ClientInfo};
use crate::policy::Route;
use crate::policy::classify::RuleMatch;
use crate::queue::store::RecipientState;

fn message(sender: &str, recipients: &[&str]) -> AcceptedMessage {
    AcceptedMessage {
        sender: sender.into(),
        recipients: recipients.iter().map(|r| r.to_string()).collect(),
        body: b"Subject: plans\r\n\r\nbody\r\n".to_vec(),
        body_8bit: false,
        smtputf8: false,
        client: ClientInfo {
            addr: SocketAddr::from(([127, 0, 0, 1], 4000)),
            helo: "staff".into(),
            tls: None,
            auth_user: None,
        },
    }
}

/// Inserts a message and routes every recipient to `route` with `reason`.
fn held(
    store: &mut Store,
    sender: &str,
    recipients: &[&str],
    route: Route,
    reason: &str,
) -> QueueId {
    let id = QueueId::generate();
    let accepted = message(sender, recipients);
    store
        .insert_messages(&[(id.clone(), &accepted, false)])
        .unwrap();
    let routes: Vec<_> = recipients
        .iter()
        .map(|address| (address.to_string(), route, reason.to_string()))
        .collect();
    store.set_routes(&id, &routes, None).unwrap();
    id
}

fn open_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let keys = crate::store::test_master_keys(&dir.path().join("keys"));
    let store = Store::open(&dir.path().join("queue.db"), keys).unwrap();
    // Thousands of fsyncs would dominate the test's run time.
    store
        .connection
        .pragma_update(None, "synchronous", "OFF")
        .unwrap();
    (dir, store)
}

#[test]
fn review_list_filters_and_pages_thousands() {
    let (_dir, mut store) = open_store();
    let row_count = 3000;
    for index in 0..row_count {
        let sender = if index % 10 == 0 {
            "ada@clinic.example.org".to_string()
        } else {
            format!("user{index}@clinic.example.org")
        };
        let reason = if index % 2 == 0 {
            "sensitive (pattern:codename in body line 1 of part 1 (review)); held for review"
        } else {
            "sensitive (unparseable in message: x (review)); held for review"
        };
        held(
            &mut store,
            &sender,
            &["gp@nhs.net", &format!("friend{index}@mailbox.example")],
            Route::Review,
            reason,
        );
    }
    // Not in review: routed to the portal.
    held(
        &mut store,
        "ada@clinic.example.org",
        &["bob@partner.example"],
        Route::Portal,
        "portal",
    );

    let all = ReviewFilter::default();
    assert_eq!(store.review_count(&all).unwrap(), row_count);
    let started = std::time::Instant::now();
    let page = store.review_list(&all, 50, 2900).unwrap();
    let elapsed = started.elapsed();
    eprintln!("review page at offset 2900 of {row_count}: {elapsed:?}");
    assert!(elapsed < std::time::Duration::from_secs(2), "{elapsed:?}");
    assert_eq!(page.len(), 50);
    assert_eq!(page[0].recipients.len(), 2);
    assert!(
        page.windows(2)
            .all(|pair| pair[0].received_at >= pair[1].received_at)
    );
    assert_eq!(store.review_list(&all, 50, 2990).unwrap().len(), 10);

    let ada = ReviewFilter {
        sender: Some("ADA@clinic".into()),
        ..ReviewFilter::default()
    };
    assert_eq!(store.review_count(&ada).unwrap(), 300);
    let one = ReviewFilter {
        recipient: Some("friend1234@".into()),
        ..ReviewFilter::default()
    };
    let found = store.review_list(&one, 50, 0).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].sender, "user1234@clinic.example.org");
    let rule = ReviewFilter {
        rule: Some("unparseable".into()),
        ..ReviewFilter::default()
    };
    assert_eq!(store.review_count(&rule).unwrap(), 1500);
    let wildcard = ReviewFilter {
        sender: Some("%".into()),
        ..ReviewFilter::default()
    };
    assert_eq!(store.review_count(&wildcard).unwrap(), 0);
    let future = ReviewFilter {
        since: Some(now_millis() + 60_000),
        ..ReviewFilter::default()
    };
    assert_eq!(store.review_count(&future).unwrap(), 0);
}

#[test]
fn release_makes_recipients_incoming() {
    let (_dir, mut store) = open_store();
    let id = held(
        &mut store,
        "ada@clinic.example.org",
        &["gp@nhs.net", "friend@mailbox.example"],
        Route::Review,
        "held for review",
    );
    assert_eq!(
        store.review_release(&id, ReleaseMode::Protected).unwrap(),
        2
    );
    assert!(!store.is_in_review(&id).unwrap());
    assert_eq!(
        store.incoming_messages(10).unwrap(),
        std::slice::from_ref(&id)
    );
    let summary = store.message(&id).unwrap().unwrap();
    assert_eq!(summary.review_release, Some(ReleaseMode::Protected));
    // A second release finds nothing left to release.
    assert_eq!(
        store
            .review_release(&id, ReleaseMode::NotSensitive)
            .unwrap(),
        0
    );
    let summary = store.message(&id).unwrap().unwrap();
    assert_eq!(summary.review_release, Some(ReleaseMode::Protected));
}

#[test]
fn reject_bounces_with_reason() {
    let (_dir, mut store) = open_store();
    let id = held(
        &mut store,
        "ada@clinic.example.org",
        &["friend@mailbox.example"],
        Route::Review,
        "held for review",
    );
    assert_eq!(store.review_reject(&id, "wrong recipient").unwrap(), 1);
    let rows = store.recipients(&id).unwrap();
    assert_eq!(rows[0].state, RecipientState::Bounced);
    assert!(rows[0].dsn_pending);
    assert_eq!(rows[0].last_status.as_deref(), Some(REJECTED_STATUS));
    assert!(
        rows[0]
            .last_detail
            .as_deref()
            .unwrap()
            .contains("wrong recipient")
    );
    assert_eq!(store.messages_with_pending_dsn().unwrap(), [id]);
}

#[test]
fn delete_only_removes_review_messages() {
    let (_dir, mut store) = open_store();
    let portal = held(
        &mut store,
        "a@b.example",
        &["c@d.example"],
        Route::Portal,
        "p",
    );
    let review = held(
        &mut store,
        "a@b.example",
        &["c@d.example"],
        Route::Review,
        "r",
    );
    assert!(!store.review_delete(&portal).unwrap());
    assert!(store.message(&portal).unwrap().is_some());
    assert!(store.review_delete(&review).unwrap());
    assert!(store.message(&review).unwrap().is_none());
}

#[test]
fn release_request_is_stored_and_cleared() {
    let (_dir, mut store) = open_store();
    let id = held(
        &mut store,
        "a@b.example",
        &["c@d.example"],
        Route::Review,
        "r",
    );
    let request = ReleaseRequest {
        mode: ReleaseMode::NotSensitive,
        requested_by: "alice".into(),
        reason: "internal newsletter".into(),
    };
    store.request_release(&id, &request).unwrap();
    assert_eq!(store.release_request(&id).unwrap(), Some(request));
    store
        .review_release(&id, ReleaseMode::NotSensitive)
        .unwrap();
    assert_eq!(store.release_request(&id).unwrap(), None);
}

#[test]
fn apply_release_keeps_protection() {
    let classification = Classification {
        action: Some(Action::Review),
        matches: vec![RuleMatch {
            rule: "pattern:codename".into(),
            action: Action::Review,
            location: "subject".into(),
            detail: "1 match".into(),
        }],
    };
    let protected = apply_release(classification.clone(), Some(ReleaseMode::Protected));
    assert_eq!(protected.action, Some(Action::Protect));
    assert_eq!(protected.matches.len(), 1);
    let ordinary = apply_release(classification.clone(), Some(ReleaseMode::NotSensitive));
    assert_eq!(ordinary.action, None);
    assert!(ordinary.matches.is_empty());
    assert_eq!(apply_release(classification.clone(), None), classification);
}
