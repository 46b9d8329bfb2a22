use super::*;

fn open_log() -> (tempfile::TempDir, Config, AuditLog) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::development();
    config.server.data_dir = dir.path().join("data");
    let audit = AuditLog::open(&config).unwrap();
    (dir, config, audit)
}

fn admin_action(audit: &AuditLog, actor: &str, queue_id: &str) -> i64 {
    audit
        .append(&AuditRecord {
            event: AuditEvent::ReviewReleased,
            actor,
            held_id: None,
            queue_id: Some(queue_id),
            outcome: "ok",
            detail: "reason: checked with the sender",
        })
        .unwrap()
}

fn raw_connection(config: &Config) -> Connection {
    Connection::open(config.database_path()).unwrap()
}

#[test]
fn audit_appends_entries_in_order() {
    let (_dir, _config, audit) = open_log();
    let id = HeldId::parse("00000000000000AB").unwrap();

    audit
        .record(
            AuditEvent::NotificationSent,
            Some(&id),
            Some("0123456789ABCDEF"),
            "notification X",
        )
        .unwrap();
    audit
        .record(
            AuditEvent::PasscodeFailed,
            Some(&id),
            None,
            "client\r\n203.0.113.9",
        )
        .unwrap();

    let entries = audit.entries_for(&id).unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].event, "portal.notification.sent");
    assert_eq!(entries[0].actor, "system");
    assert_eq!(entries[0].queue_id.as_deref(), Some("0123456789ABCDEF"));
    assert_eq!(entries[0].prev_hash, GENESIS);
    assert_eq!(entries[1].event, "portal.passcode.failed");
    assert_eq!(entries[1].actor, "recipient");
    assert_eq!(entries[1].detail, "client  203.0.113.9");
    assert_eq!(entries[1].prev_hash, entries[0].hash);
    assert_eq!(entries[1].id, entries[0].id + 1);
}

#[test]
fn verify_accepts_intact_chain() {
    let (_dir, _config, audit) = open_log();
    assert_eq!(audit.verify().unwrap().unwrap().entries, 0);
    for index in 0..5 {
        admin_action(&audit, "alice", &format!("{index:016X}"));
    }
    let head = audit.verify().unwrap().unwrap();
    assert_eq!(head.entries, 5);
    assert_eq!(head.last_id, 5);
    assert_eq!(head.hash.len(), 64);
}

#[test]
fn verify_detects_edited_entry() {
    let (_dir, config, audit) = open_log();
    for index in 0..4 {
        admin_action(&audit, "alice", &format!("{index:016X}"));
    }
    raw_connection(&config)
        .execute("UPDATE audit SET actor = 'mallory' WHERE id = 3", [])
        .unwrap();
    let broken = audit.verify().unwrap().unwrap_err();
    assert_eq!(broken.id, 3);
    assert!(broken.reason.contains("changed"), "{}", broken.reason);
}

#[test]
fn verify_detects_rehashed_entry() {
    // An attacker who recomputes the edited entry's hash still breaks the next link.
    let (_dir, config, audit) = open_log();
    for index in 0..4 {
        admin_action(&audit, "alice", &format!("{index:016X}"));
    }
    let mut entries = audit.search(&AuditFilter::default(), false, 10, 0).unwrap();
    let edited = &mut entries[1];
    edited.outcome = "denied".into();
    edited.hash = chain::entry_hash(&edited.prev_hash, edited);
    raw_connection(&config)
        .execute(
            "UPDATE audit SET outcome = ?1, hash = ?2 WHERE id = ?3",
            params![edited.outcome, edited.hash, edited.id],
        )
        .unwrap();
    let broken = audit.verify().unwrap().unwrap_err();
    assert_eq!(broken.id, 3);
    assert!(broken.reason.contains("prev_hash"), "{}", broken.reason);
}

#[test]
fn verify_detects_deleted_entry() {
    let (_dir, config, audit) = open_log();
    for index in 0..4 {
        admin_action(&audit, "alice", &format!("{index:016X}"));
    }
    raw_connection(&config)
        .execute("DELETE FROM audit WHERE id = 2", [])
        .unwrap();
    let broken = audit.verify().unwrap().unwrap_err();
    assert_eq!(broken.id, 3);
    assert!(broken.reason.contains("missing"), "{}", broken.reason);

    // Renumbering the rest to close the gap still leaves a broken link.
    let connection = raw_connection(&config);
    connection
        .execute("UPDATE audit SET id = id - 1 WHERE id > 2", [])
        .unwrap();
    let broken = audit.verify().unwrap().unwrap_err();
    assert_eq!(broken.id, 2);
}

#[test]
fn verify_detects_deleted_first_entry() {
    let (_dir, config, audit) = open_log();
    for index in 0..2 {
        admin_action(&audit, "alice", &format!("{index:016X}"));
    }
    raw_connection(&config)
        .execute("DELETE FROM audit WHERE id = 1", [])
        .unwrap();
    assert_eq!(audit.verify().unwrap().unwrap_err().id, 2);
}

#[test]
fn open_chains_entries_without_hash() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::development();
    config.server.data_dir = dir.path().join("data");
    let connection = crate::store::open_database(&config).unwrap();
    connection.execute_batch(SCHEMA).unwrap();
    for id in [4, 9] {
        connection
            .execute(
                "INSERT INTO audit (id, at, event, held_id, queue_id, detail)
                 VALUES (?1, 1, 'store.expired', NULL, NULL, '')",
                [id],
            )
            .unwrap();
    }
    drop(connection);

    let audit = AuditLog::open(&config).unwrap();
    let head = audit.verify().unwrap().unwrap();
    assert_eq!(head.entries, 2);
    assert_eq!(head.last_id, 2);
    admin_action(&audit, "alice", "0000000000000001");
    assert_eq!(audit.verify().unwrap().unwrap().entries, 3);
}

#[test]
fn search_filters_and_pages() {
    let (_dir, _config, audit) = open_log();
    for index in 0..30 {
        admin_action(
            &audit,
            if index % 3 == 0 { "bob" } else { "alice" },
            &format!("{index:016X}"),
        );
    }
    audit
        .record(AuditEvent::Expired, None, None, "sealgate held expire")
        .unwrap();

    let bob = AuditFilter {
        actor: Some("bob".into()),
        ..AuditFilter::default()
    };
    assert_eq!(audit.search(&bob, false, 100, 0).unwrap().len(), 10);
    let page = audit.search(&bob, true, 4, 4).unwrap();
    assert_eq!(page.len(), 4);
    assert!(page[0].id > page[1].id);

    let review = AuditFilter {
        event: Some("review".into()),
        ..AuditFilter::default()
    };
    assert_eq!(audit.search(&review, false, 100, 0).unwrap().len(), 30);
    let underscore = AuditFilter {
        event: Some("revie_".into()),
        ..AuditFilter::default()
    };
    assert!(audit.search(&underscore, false, 100, 0).unwrap().is_empty());

    let later = AuditFilter {
        since: Some(now_millis() + 60_000),
        ..AuditFilter::default()
    };
    assert!(audit.search(&later, false, 100, 0).unwrap().is_empty());
}

#[test]
fn append_all_chains_a_batch() {
    let (_dir, _config, audit) = open_log();
    admin_action(&audit, "alice", "0000000000000001");
    let record = AuditRecord {
        event: AuditEvent::Routed,
        actor: "policy",
        held_id: None,
        queue_id: Some("0000000000000002"),
        outcome: "portal",
        detail: "to=<a@b.example>",
    };
    assert_eq!(audit.append_all(&[record, record, record]).unwrap(), 4);
    assert_eq!(audit.append_all(&[]).unwrap(), 4);
    let head = audit.verify().unwrap().unwrap();
    assert_eq!(head.entries, 4);
}
