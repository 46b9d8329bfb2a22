use super::*;

fn open_accounts() -> (tempfile::TempDir, Config, Accounts) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::development();
    config.server.data_dir = dir.path().join("data");
    let accounts = Accounts::open(&config).unwrap();
    (dir, config, accounts)
}

const POLICY: LockoutPolicy = LockoutPolicy {
    max_failures: 3,
    lockout: Duration::from_secs(600),
};

#[test]
fn accounts_add_list_remove() {
    let (_dir, _config, accounts) = open_accounts();
    accounts.add("alice", Role::Admin, "correct horse").unwrap();
    accounts
        .add("audrey", Role::Auditor, "battery staple")
        .unwrap();
    let error = accounts.add("alice", Role::Auditor, "x").unwrap_err();
    assert!(error.contains("already exists"), "{error}");
    assert!(accounts.add("bad name", Role::Admin, "x").is_err());
    assert!(accounts.add("<script>", Role::Admin, "x").is_err());
    assert!(accounts.add("bob", Role::Admin, "").is_err());

    let listed = accounts.list().unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].name, "alice");
    assert_eq!(listed[0].role, Role::Admin);
    assert_eq!(listed[1].role, Role::Auditor);
    assert!(accounts.remove("audrey").unwrap());
    assert!(!accounts.remove("audrey").unwrap());
    assert_eq!(accounts.list().unwrap().len(), 1);
}

#[test]
fn passwords_are_argon2id_phc_strings() {
    let (_dir, config, accounts) = open_accounts();
    accounts.add("alice", Role::Admin, "correct horse").unwrap();
    let raw = Connection::open(config.database_path()).unwrap();
    let stored: String = raw
        .query_row("SELECT password_hash FROM admin_users", [], |row| {
            row.get(0)
        })
        .unwrap();
    assert!(stored.starts_with("$argon2id$"), "{stored}");
    assert!(!stored.contains("correct horse"));
}

#[test]
fn login_checks_password() {
    let (_dir, _config, accounts) = open_accounts();
    accounts.add("alice", Role::Admin, "correct horse").unwrap();
    let account = accounts
        .login("alice", "correct horse", None, POLICY)
        .unwrap();
    assert_eq!(account.role, Role::Admin);
    assert!(matches!(
        accounts.login("alice", "wrong", None, POLICY),
        Err(LoginError::Invalid)
    ));
    assert!(matches!(
        accounts.login("nobody", "correct horse", None, POLICY),
        Err(LoginError::Invalid)
    ));
    // A success resets the failure count.
    accounts
        .login("alice", "correct horse", None, POLICY)
        .unwrap();
    assert_eq!(accounts.get("alice").unwrap().unwrap().failed_logins, 0);
}

#[test]
fn lockout_survives_reopen() {
    let (_dir, config, accounts) = open_accounts();
    accounts.add("alice", Role::Admin, "correct horse").unwrap();
    for _ in 0..2 {
        assert!(matches!(
            accounts.login("alice", "guess", None, POLICY),
            Err(LoginError::Invalid)
        ));
    }
    assert!(matches!(
        accounts.login("alice", "guess", None, POLICY),
        Err(LoginError::Locked(_))
    ));
    drop(accounts);

    let reopened = Accounts::open(&config).unwrap();
    match reopened.login("alice", "correct horse", None, POLICY) {
        Err(LoginError::Locked(wait)) => assert!(wait > Duration::from_secs(500), "{wait:?}"),
        other => panic!("expected a lock-out, got {other:?}"),
    }
    assert!(reopened.unlock("alice").unwrap());
    reopened
        .login("alice", "correct horse", None, POLICY)
        .unwrap();
}

#[test]
fn totp_is_required_once_set() {
    let (_dir, _config, accounts) = open_accounts();
    accounts.add("alice", Role::Admin, "correct horse").unwrap();
    let secret = accounts.new_totp("alice").unwrap().unwrap();
    assert!(accounts.get("alice").unwrap().unwrap().totp);
    assert!(matches!(
        accounts.login("alice", "correct horse", None, POLICY),
        Err(LoginError::Invalid)
    ));
    let seconds = u64::try_from(now_millis() / 1000).unwrap();
    let code = totp::code_at(&secret, seconds).unwrap();
    accounts
        .login("alice", "correct horse", Some(&code), POLICY)
        .unwrap();
    // The same code cannot be used twice.
    assert!(matches!(
        accounts.login("alice", "correct horse", Some(&code), POLICY),
        Err(LoginError::Invalid)
    ));
    assert_eq!(accounts.new_totp("nobody").unwrap(), None);
}
