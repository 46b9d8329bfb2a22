use std::path::Path;

use base64::Engine;

use super::*;

const SUBJECT: &str = "Biopsy result zebra-quartz-7731";
const BODY: &str = "Your biopsy shows marmalade-pelican-4410.";
const ATTACHMENT: &str = "attachment text obsidian-heron-5582";
const RECIPIENT: &str = "patient.walrus-9913@example.com";
const SENDER: &str = "dr.kestrel-2207@clinic.example.org";

fn config(dir: &Path) -> Config {
    let mut config = Config::development();
    config.server.data_dir = dir.join("data");
    config.server.keys_dir = dir.join("keys");
    config
}

fn open_store(dir: &Path) -> HoldStore {
    let config = config(dir);
    ensure_master_key(&config.server.keys_dir).unwrap();
    HoldStore::open(&config).unwrap()
}

fn envelope() -> HeldEnvelope {
    HeldEnvelope {
        queue_id: "0123456789ABCDEF".into(),
        sender: SENDER.into(),
        recipient: RECIPIENT.into(),
        subject: SUBJECT.into(),
    }
}

/// A multipart message with the distinctive subject, body and a text attachment, the
/// attachment base64-encoded as mail clients send it.
fn message() -> Vec<u8> {
    let attachment = base64::engine::general_purpose::STANDARD.encode(ATTACHMENT);
    format!(
        "From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: {SUBJECT}\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\n{BODY}\r\n\
         --b\r\nContent-Type: text/plain; name=\"notes.txt\"\r\n\
         Content-Disposition: attachment; filename=\"notes.txt\"\r\n\r\n{ATTACHMENT}\r\n\
         --b\r\nContent-Type: text/plain; name=\"notes2.txt\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{attachment}\r\n--b--\r\n"
    )
    .into_bytes()
}

/// Every byte the store wrote: the database, its WAL and any other file in the folder.
fn stored_bytes(dir: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir.join("data")).unwrap() {
        bytes.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

#[test]
fn stored_files_contain_no_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let hold = store.hold(&message(), &envelope()).unwrap();

    let bytes = stored_bytes(dir.path());
    assert!(!bytes.is_empty());
    for secret in [
        SUBJECT,
        BODY,
        ATTACHMENT,
        RECIPIENT,
        SENDER,
        hold.token.as_str(),
    ] {
        assert!(
            !contains(&bytes, secret),
            "{secret:?} found in the store files"
        );
    }
    // The same words in short fragments, in case a column kept a part of them.
    for fragment in [
        "zebra-quartz",
        "marmalade-pelican",
        "obsidian-heron",
        "walrus-9913",
    ] {
        assert!(
            !contains(&bytes, fragment),
            "{fragment:?} found in the store files"
        );
    }
}

#[test]
fn hold_and_open_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let hold = store.hold(&message(), &envelope()).unwrap();

    let opened = store.open_message(&hold.id).unwrap();
    assert_eq!(opened.message, message());
    assert_eq!(opened.envelope, envelope());
    assert_eq!(store.open_envelope(&hold.id).unwrap(), envelope());
}

#[test]
fn token_has_enough_entropy_and_opens_only_its_message() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let hold = store.hold(&message(), &envelope()).unwrap();

    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&hold.token)
        .unwrap();
    assert!(
        decoded.len() * 8 >= 128,
        "token has {} bits",
        decoded.len() * 8
    );
    assert!(
        hold.token
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
    );

    let summary = store.find_by_token(&hold.token).unwrap().unwrap();
    assert_eq!(summary.id, hold.id);
    assert_eq!(summary.state, HeldState::Active);
    assert_eq!(summary.expires_at, hold.expires_at);
    assert!(store.find_by_token("not-a-token").unwrap().is_none());

    let other = HeldEnvelope {
        recipient: "someone.else@example.com".into(),
        ..envelope()
    };
    let second = store.hold(&message(), &other).unwrap();
    assert_ne!(second.token, hold.token);
    assert_ne!(second.id, hold.id);
}

#[test]
fn tampered_ciphertext_fails_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let hold = store.hold(&message(), &envelope()).unwrap();

    let connection = store.lock();
    let mut ciphertext: Vec<u8> = connection
        .query_row(
            "SELECT ciphertext FROM held_messages WHERE id = ?1",
            [hold.id.as_str()],
            |row| row.get(0),
        )
        .unwrap();
    ciphertext[20] ^= 0x01;
    connection
        .execute(
            "UPDATE held_messages SET ciphertext = ?2 WHERE id = ?1",
            params![hold.id.as_str(), ciphertext],
        )
        .unwrap();
    drop(connection);
    let error = store.open_message(&hold.id).unwrap_err();
    assert!(matches!(error, StoreError::Decrypt(_)), "{error}");
}

#[test]
fn ciphertext_moved_to_another_record_fails_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let first = store.hold(&message(), &envelope()).unwrap();
    let other = HeldEnvelope {
        recipient: "second@example.com".into(),
        ..envelope()
    };
    let second = store.hold(b"other message", &other).unwrap();

    store
        .lock()
        .execute(
            "UPDATE held_messages SET
                 wrapped_key = (SELECT wrapped_key FROM held_messages WHERE id = ?1),
                 nonce = (SELECT nonce FROM held_messages WHERE id = ?1),
                 ciphertext = (SELECT ciphertext FROM held_messages WHERE id = ?1)
             WHERE id = ?2",
            [first.id.as_str(), second.id.as_str()],
        )
        .unwrap();
    let error = store.open_message(&second.id).unwrap_err();
    assert!(matches!(error, StoreError::Decrypt(_)), "{error}");
}

#[test]
fn wrong_master_key_fails_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let hold = store.hold(&message(), &envelope()).unwrap();
    drop(store);

    // Replace key 1 with different bytes, as a restore from the wrong backup would.
    let path = key_path(&dir.path().join("keys"), 1);
    std::fs::remove_file(&path).unwrap();
    std::fs::rename(
        create_master_key(&dir.path().join("keys")).unwrap().1,
        &path,
    )
    .unwrap();

    let store = HoldStore::open(&config(dir.path())).unwrap();
    let error = store.open_message(&hold.id).unwrap_err();
    assert!(matches!(error, StoreError::Decrypt(_)), "{error}");
}

#[test]
fn rotated_master_key_keeps_old_messages_readable() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let store = open_store(dir.path());
    let old = store.hold(&message(), &envelope()).unwrap();
    assert_eq!(store.key_id(&old.id).unwrap(), Some(1));
    drop(store);

    let (new_id, _) = create_master_key(&keys).unwrap();
    assert_eq!(new_id, 2);
    let store = HoldStore::open(&config(dir.path())).unwrap();
    let other = HeldEnvelope {
        recipient: "second@example.com".into(),
        ..envelope()
    };
    let new = store.hold(b"new message", &other).unwrap();

    assert_eq!(store.key_id(&new.id).unwrap(), Some(2));
    assert_eq!(store.open_message(&old.id).unwrap().message, message());
    assert_eq!(store.open_message(&new.id).unwrap().message, b"new message");
    drop(store);

    // Once key 1 is gone, its message cannot be opened, and says which key it needs.
    std::fs::remove_file(key_path(&keys, 1)).unwrap();
    let store = HoldStore::open(&config(dir.path())).unwrap();
    let error = store.open_message(&old.id).unwrap_err();
    assert!(
        matches!(error, StoreError::KeyUnavailable { key_id: 1, .. }),
        "{error}"
    );
    assert_eq!(store.open_message(&new.id).unwrap().message, b"new message");
}

#[test]
fn configured_master_key_id_wins_over_highest() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    create_master_key(&keys).unwrap();
    create_master_key(&keys).unwrap();
    let mut config = config(dir.path());
    config.store.master_key_id = Some(1);
    let store = HoldStore::open(&config).unwrap();

    let hold = store.hold(&message(), &envelope()).unwrap();
    assert_eq!(store.key_id(&hold.id).unwrap(), Some(1));

    config.store.master_key_id = Some(7);
    let error = HoldStore::open(&config).err().unwrap();
    assert!(
        matches!(error, StoreError::MasterKeyMissing { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("store-master-7.key"), "{error}");
}

#[test]
fn master_key_files_are_private_and_checked() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let (_, path) = create_master_key(&keys).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(ensure_master_key(&keys).unwrap(), None);

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let error = HoldStore::open(&config(dir.path())).err().unwrap();
    assert!(
        matches!(error, StoreError::MasterKeyInvalid { .. }),
        "{error}"
    );

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&path, "too short").unwrap();
    let error = HoldStore::open(&config(dir.path())).err().unwrap();
    assert!(
        matches!(error, StoreError::MasterKeyInvalid { .. }),
        "{error}"
    );
}

#[test]
fn base64_master_key_is_accepted() {
    use std::os::unix::fs::OpenOptionsExt;

    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let key: [u8; 32] = rand::random();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(key_path(&keys, 3))
        .unwrap();
    std::io::Write::write_all(
        &mut file,
        base64::engine::general_purpose::STANDARD
            .encode(key)
            .as_bytes(),
    )
    .unwrap();

    let store = HoldStore::open(&config(dir.path())).unwrap();
    let hold = store.hold(&message(), &envelope()).unwrap();
    assert_eq!(store.key_id(&hold.id).unwrap(), Some(3));
    assert_eq!(store.open_message(&hold.id).unwrap().message, message());
}

#[test]
fn missing_master_key_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("keys")).unwrap();
    let error = HoldStore::open(&config(dir.path())).err().unwrap();
    assert!(
        matches!(error, StoreError::MasterKeyMissing { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("store-master-1.key"), "{error}");
}

#[test]
fn expiry_deletes_content_and_keeps_record() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let hold = store.hold(&message(), &envelope()).unwrap();

    assert_eq!(store.expire_due(hold.expires_at - 1).unwrap(), 0);
    assert_eq!(store.expire_due(hold.expires_at).unwrap(), 1);
    assert_eq!(store.expire_due(hold.expires_at).unwrap(), 0);

    let error = store.open_message(&hold.id).unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::NotActive {
                state: HeldState::Expired,
                ..
            }
        ),
        "{error}"
    );
    let summary = store.find_by_token(&hold.token).unwrap().unwrap();
    assert_eq!(summary.state, HeldState::Expired);
    type Blob = Option<Vec<u8>>;
    let (wrapped, ciphertext, envelope): (Blob, Blob, Blob) = store
        .lock()
        .query_row(
            "SELECT wrapped_key, ciphertext, envelope_ciphertext FROM held_messages
             WHERE id = ?1",
            [hold.id.as_str()],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .unwrap();
    assert!(wrapped.is_none());
    assert!(ciphertext.is_none());
    assert!(envelope.is_none());
    assert_eq!(store.list().unwrap().len(), 1);
}

#[test]
fn record_past_expiry_reads_expired_before_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let hold = store.hold(&message(), &envelope()).unwrap();
    store
        .lock()
        .execute(
            "UPDATE held_messages SET expires_at = 1 WHERE id = ?1",
            [hold.id.as_str()],
        )
        .unwrap();

    let summary = store.find_by_token(&hold.token).unwrap().unwrap();
    assert_eq!(summary.state, HeldState::Expired);
    let error = store.open_message(&hold.id).unwrap_err();
    assert!(matches!(error, StoreError::NotActive { .. }), "{error}");
}

#[test]
fn revoke_deletes_content() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let hold = store.hold(&message(), &envelope()).unwrap();

    assert!(store.revoke(&hold.id).unwrap());
    assert!(!store.revoke(&hold.id).unwrap());
    let error = store.open_message(&hold.id).unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::NotActive {
                state: HeldState::Revoked,
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(store.list().unwrap()[0].state, HeldState::Revoked);

    let unknown = HeldId::parse("00000000000000AA").unwrap();
    assert!(matches!(
        store.revoke(&unknown).unwrap_err(),
        StoreError::NotFound(_)
    ));
}

#[test]
fn holding_again_reuses_record_with_fresh_token() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let first = store.hold(&message(), &envelope()).unwrap();
    let again = store.hold(&message(), &envelope()).unwrap();

    assert_eq!(again.id, first.id);
    assert_ne!(again.token, first.token);
    assert!(store.find_by_token(&first.token).unwrap().is_none());
    assert_eq!(
        store.find_by_token(&again.token).unwrap().unwrap().id,
        first.id
    );
    assert_eq!(store.list().unwrap().len(), 1);
}

#[test]
fn passcode_state_follows_sends_and_failures() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let hold = store.hold(&message(), &envelope()).unwrap();

    let fresh = store.passcode_state(&hold.id).unwrap().unwrap();
    assert_eq!(fresh.passcode_hash, None);
    assert_eq!(fresh.sends, 0);

    store.set_passcode(&hold.id, b"hash-one", 1_000).unwrap();
    assert_eq!(store.record_passcode_failure(&hold.id).unwrap(), 1);
    assert_eq!(store.record_passcode_failure(&hold.id).unwrap(), 2);
    let state = store.passcode_state(&hold.id).unwrap().unwrap();
    assert_eq!(state.passcode_hash.as_deref(), Some(&b"hash-one"[..]));
    assert_eq!(state.created_at, Some(1_000));
    assert_eq!(state.attempts, 2);
    assert_eq!(state.sends, 1);
    assert_eq!(state.last_sent_at, Some(1_000));

    store.set_passcode(&hold.id, b"hash-two", 2_000).unwrap();
    let state = store.passcode_state(&hold.id).unwrap().unwrap();
    assert_eq!(state.attempts, 0);
    assert_eq!(state.sends, 2);

    store.clear_passcode(&hold.id).unwrap();
    let state = store.passcode_state(&hold.id).unwrap().unwrap();
    assert_eq!(state.passcode_hash, None);
    assert_eq!(state.sends, 2);

    let unknown = HeldId::parse("00000000000000AA").unwrap();
    assert!(store.passcode_state(&unknown).unwrap().is_none());
    assert!(matches!(
        store.record_passcode_failure(&unknown).unwrap_err(),
        StoreError::NotFound(_)
    ));
}

#[test]
fn notification_has_link_and_no_content() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.portal.organisation = "Riverside NHS Trust".into();
    config.portal.base_url = "https://portal.example.org".into();
    let bytes =
        notification::build_notification(&config, &envelope(), "TOKEN123abc", 86_400_000).unwrap();
    let text = String::from_utf8(bytes).unwrap();

    let parsed = mail_parser::MessageParser::default()
        .parse(text.as_bytes())
        .unwrap();
    assert_eq!(
        parsed.subject(),
        Some("You have a secure message from Riverside NHS Trust")
    );
    let plain = parsed.body_text(0).unwrap();
    let html = parsed.body_html(0).unwrap();
    for part in [&plain, &html] {
        assert!(
            part.contains("https://portal.example.org/m/TOKEN123abc"),
            "{part}"
        );
        assert!(part.contains("Riverside NHS Trust"), "{part}");
        assert!(part.contains(SENDER), "{part}");
        assert!(part.contains("1970-01-02 00:00 UTC"), "{part}");
        assert!(!part.contains(SUBJECT), "{part}");
    }
    assert!(!text.contains(SUBJECT));
    assert!(!text.contains(BODY));
}

#[test]
fn send_history_and_lockout_persist() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let hold = {
        let store = open_store(dir.path());
        let hold = store.hold(b"Subject: x\r\n\r\nx\r\n", &envelope()).unwrap();
        let allowed = store
            .set_passcode_within(&hold.id, b"hash-one", 5_000, |history| {
                assert_eq!(*history, SendHistory::default());
                Ok(SendHistory {
                    last_sent_at: Some(5_000),
                    window_started_at: Some(5_000),
                    window_sends: 1,
                    locked_at: None,
                })
            })
            .unwrap();
        assert_eq!(allowed, Ok(()));
        store.lock_out(&hold.id, 6_000).unwrap();
        hold
    };

    // A new process reads the same history, and a refused send stores nothing.
    let store = HoldStore::open(&config).unwrap();
    let state = store.passcode_state(&hold.id).unwrap().unwrap();
    assert_eq!(state.passcode_hash, None);
    assert_eq!(state.sends, 1);
    assert_eq!(
        state.history,
        SendHistory {
            last_sent_at: Some(5_000),
            window_started_at: Some(5_000),
            window_sends: 1,
            locked_at: Some(6_000),
        }
    );
    let refused = store
        .set_passcode_within(&hold.id, b"hash-two", 7_000, |_| {
            Err(std::time::Duration::from_secs(60))
        })
        .unwrap();
    assert_eq!(refused, Err(std::time::Duration::from_secs(60)));
    let state = store.passcode_state(&hold.id).unwrap().unwrap();
    assert_eq!(state.passcode_hash, None);
    assert_eq!(state.sends, 1);
}

#[test]
fn hold_all_tokens_open_own_copies() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let earlier = store.hold(&message(), &envelope()).unwrap();
    let second = HeldEnvelope {
        recipient: "second@mailbox.example".into(),
        ..envelope()
    };
    let third = HeldEnvelope {
        queue_id: "00000000000000AB".into(),
        ..envelope()
    };
    let other_message = b"Subject: other\r\n\r\nother\r\n".to_vec();
    let holds = store
        .hold_all(&[
            (&other_message, &second),
            (&message(), &envelope()),
            (&other_message, &third),
        ])
        .unwrap();

    assert_eq!(holds.len(), 3);
    // The copy held before is reused, with a fresh token; the others are new.
    assert_eq!(holds[1].id, earlier.id);
    assert!(store.find_by_token(&earlier.token).unwrap().is_none());
    assert_ne!(holds[0].id, holds[2].id);
    for (hold, (body, envelope)) in holds.iter().zip([
        (&other_message, &second),
        (&message(), &envelope()),
        (&other_message, &third),
    ]) {
        let found = store.find_by_token(&hold.token).unwrap().unwrap();
        assert_eq!(found.id, hold.id);
        let opened = store.open_message(&hold.id).unwrap();
        assert_eq!(&opened.message, body);
        assert_eq!(&opened.envelope, envelope);
    }
    assert_eq!(store.list().unwrap().len(), 3);
}
