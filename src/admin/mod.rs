//! Administrator accounts: roles, Argon2id passwords, an optional TOTP second factor, and
//! sign-in with a lock-out that is stored in the database, so a restart does not reset it.
//!
//! Role `admin` may act on held mail; role `auditor` may only read. Accounts live in the
//! queue database next to the audit trail.

pub mod actions;
pub mod totp;
pub mod web;

use std::sync::LazyLock;
use std::time::Duration;

use argon2::{PasswordHash, PasswordHasher, PasswordVerifier};
use rusqlite::{Connection, OptionalExtension, params};

use crate::config::Config;
use crate::queue::store::now_millis;
use crate::store::StoreError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS admin_users (
    name          TEXT PRIMARY KEY,
    role          TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    totp_secret   TEXT,
    totp_last_step BIGINT NOT NULL DEFAULT 0,
    failed_logins INTEGER NOT NULL DEFAULT 0,
    locked_until  BIGINT NOT NULL DEFAULT 0,
    created_at    BIGINT NOT NULL
);
";

/// Maximum length of an account name, in bytes.
const MAX_NAME_LENGTH: usize = 64;

/// Permission level of an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Reads and acts on held mail.
    Admin,
    /// Reads only.
    Auditor,
}

impl Role {
    /// Returns the name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Auditor => "auditor",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Role, String> {
        match text {
            "admin" => Ok(Role::Admin),
            "auditor" => Ok(Role::Auditor),
            other => Err(format!("invalid role {other:?}: expected admin or auditor")),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An account as listed, without its secrets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// Account name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// A TOTP secret is set, so sign-in needs a code.
    pub totp: bool,
    /// Failed sign-ins since the last successful one.
    pub failed_logins: u32,
    /// Unix milliseconds until which sign-in is refused; 0 when not locked.
    pub locked_until: i64,
}

/// Cause of a failed sign-in. The web page shows the same text for every case but `Locked`, so
/// it does not tell which account names exist.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// Unknown name, wrong password or wrong TOTP code.
    #[error("invalid name, password or code")]
    Invalid,
    /// Too many failures; sign-in is refused until the lock-out ends.
    #[error("account locked for {0:?} after too many failed sign-ins")]
    Locked(Duration),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Limits for failed sign-ins, from `[admin]`.
#[derive(Clone, Copy, Debug)]
pub struct LockoutPolicy {
    /// Failures in a row that lock the account.
    pub max_failures: u32,
    /// How long the lock lasts.
    pub lockout: Duration,
}

impl LockoutPolicy {
    /// Takes the limits from the config.
    pub fn from_config(config: &Config) -> LockoutPolicy {
        LockoutPolicy {
            max_failures: config.admin.max_failed_logins.max(1),
            lockout: config.admin.lockout.0,
        }
    }
}

/// The account table; one connection, used from blocking code.
pub struct Accounts {
    connection: Connection,
}

impl Accounts {
    /// Opens the account table in the queue database.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] or [`StoreError::Database`].
    pub fn open(config: &Config) -> Result<Accounts, StoreError> {
        let connection = crate::store::open_database(config)?;
        connection.execute_batch(SCHEMA)?;
        Ok(Accounts { connection })
    }

    /// Adds an account; fails when the name is taken or invalid, or the password empty.
    ///
    /// # Errors
    ///
    /// A message naming the problem.
    pub fn add(&self, name: &str, role: Role, password: &str) -> Result<(), String> {
        check_name(name)?;
        let hash = hash_password(password)?;
        let inserted = self
            .connection
            .execute(
                "INSERT INTO admin_users (name, role, password_hash, created_at)
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (name) DO NOTHING",
                params![name, role.as_str(), hash, now_millis()],
            )
            .map_err(|error| error.to_string())?;
        if inserted == 0 {
            return Err(format!("account {name:?} already exists"));
        }
        Ok(())
    }

    /// Lists every account, by name.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub fn list(&self) -> Result<Vec<Account>, StoreError> {
        let mut statement = self.connection.prepare(
            "SELECT name, role, totp_secret IS NOT NULL, failed_logins, locked_until
             FROM admin_users ORDER BY name",
        )?;
        let rows = statement.query_map([], account_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Reads the account with this name.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub fn get(&self, name: &str) -> Result<Option<Account>, StoreError> {
        Ok(self
            .connection
            .query_row(
                "SELECT name, role, totp_secret IS NOT NULL, failed_logins, locked_until
                 FROM admin_users WHERE name = ?1",
                [name],
                account_from_row,
            )
            .optional()?)
    }

    /// Removes an account; returns whether it existed.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub fn remove(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self
            .connection
            .execute("DELETE FROM admin_users WHERE name = ?1", [name])?
            > 0)
    }

    /// Sets a new password and clears a lock-out; returns whether the account exists.
    ///
    /// # Errors
    ///
    /// A message naming the problem.
    pub fn set_password(&self, name: &str, password: &str) -> Result<bool, String> {
        let hash = hash_password(password)?;
        let updated = self
            .connection
            .execute(
                "UPDATE admin_users SET password_hash = ?2, failed_logins = 0, locked_until = 0
                 WHERE name = ?1",
                params![name, hash],
            )
            .map_err(|error| error.to_string())?;
        Ok(updated > 0)
    }

    /// Sets a new TOTP secret and returns it; `None` when the account does not exist.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub fn new_totp(&self, name: &str) -> Result<Option<String>, StoreError> {
        let secret = totp::new_secret();
        let updated = self.connection.execute(
            "UPDATE admin_users SET totp_secret = ?2, totp_last_step = 0 WHERE name = ?1",
            params![name, secret],
        )?;
        Ok((updated > 0).then_some(secret))
    }

    /// Ends a lock-out; returns whether the account exists.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub fn unlock(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.connection.execute(
            "UPDATE admin_users SET failed_logins = 0, locked_until = 0 WHERE name = ?1",
            [name],
        )? > 0)
    }

    /// Checks a sign-in. A wrong password or code counts as a failure, and the failure
    /// that reaches `policy.max_failures` locks the account for `policy.lockout`. While
    /// locked, even the right password is refused. An unknown name costs the same hashing
    /// time as a known one.
    ///
    /// # Errors
    ///
    /// [`LoginError`].
    pub fn login(
        &self,
        name: &str,
        password: &str,
        code: Option<&str>,
        policy: LockoutPolicy,
    ) -> Result<Account, LoginError> {
        let now = now_millis();
        let row: Option<(String, Option<String>, i64, i64)> = self
            .connection
            .query_row(
                "SELECT password_hash, totp_secret, totp_last_step, locked_until
                 FROM admin_users WHERE name = ?1",
                [name],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
            )
            .optional()
            .map_err(StoreError::from)?;
        let Some((hash, secret, last_step, locked_until)) = row else {
            let _ = verify_password(&DUMMY_HASH, password);
            return Err(LoginError::Invalid);
        };
        if locked_until > now {
            return Err(LoginError::Locked(remaining(locked_until, now)));
        }
        let mut valid = verify_password(&hash, password);
        let mut step = None;
        if valid && let Some(secret) = &secret {
            let seconds = u64::try_from(now / 1000).unwrap_or(0);
            step = code.and_then(|code| totp::verify(secret, code, seconds));
            // A code is used once: a step at or before the last accepted one is refused.
            valid = step.is_some_and(|step| i64::try_from(step).unwrap_or(0) > last_step);
        }
        if !valid {
            return Err(self.record_failure(name, now, policy));
        }
        self.connection
            .execute(
                "UPDATE admin_users SET failed_logins = 0, locked_until = 0,
                     totp_last_step = CASE WHEN ?2 > totp_last_step THEN ?2 ELSE totp_last_step END
                 WHERE name = ?1",
                params![
                    name,
                    step.map_or(0, |step| i64::try_from(step).unwrap_or(0))
                ],
            )
            .map_err(StoreError::from)?;
        self.get(name)?.ok_or(LoginError::Invalid)
    }

    /// Counts a failure and locks the account when it reaches the limit.
    fn record_failure(&self, name: &str, now: i64, policy: LockoutPolicy) -> LoginError {
        let lock_until = now + i64::try_from(policy.lockout.as_millis()).unwrap_or(i64::MAX);
        let result = self.connection.query_row(
            "UPDATE admin_users SET failed_logins = failed_logins + 1,
                 locked_until = CASE WHEN failed_logins + 1 >= ?2 THEN ?3 ELSE locked_until END
             WHERE name = ?1 RETURNING locked_until",
            params![name, policy.max_failures, lock_until],
            |row| row.get::<_, i64>(0),
        );
        match result {
            Ok(locked_until) if locked_until > now => {
                LoginError::Locked(remaining(locked_until, now))
            }
            Ok(_) => LoginError::Invalid,
            Err(error) => LoginError::Store(error.into()),
        }
    }
}

/// An Argon2id hash of a random password, verified against for unknown names so that
/// they take as long as known ones.
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
    let password: [u8; 16] = rand::random();
    hash_password(&format!("{password:?}")).unwrap_or_default()
});

fn remaining(until: i64, now: i64) -> Duration {
    Duration::from_millis(u64::try_from(until - now).unwrap_or(0))
}

fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LENGTH
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"._-@".contains(&byte));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid account name {name:?}: use 1 to {MAX_NAME_LENGTH} letters, digits, '.', \
             '_', '-' or '@'"
        ))
    }
}

/// Parses `2026-12-03` (midnight UTC) or an RFC 3339 time into Unix milliseconds.
pub fn parse_time(text: &str) -> Result<i64, String> {
    use time::format_description::well_known::Rfc3339;

    if let Ok(moment) = time::OffsetDateTime::parse(text, &Rfc3339) {
        return Ok((moment.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    let date_format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(text, &date_format)
        .map(|date| date.midnight().assume_utc().unix_timestamp() * 1000)
        .map_err(|_| format!("invalid time {text:?}: expected 2026-12-03 or 2026-12-03T14:05:09Z"))
}

/// Formats Unix milliseconds as RFC 3339 in UTC, such as `2026-12-03T14:05:09.123Z`.
pub fn rfc3339(millis: i64) -> String {
    use time::format_description::well_known::Rfc3339;

    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .ok()
        .and_then(|moment| moment.format(&Rfc3339).ok())
        .unwrap_or_else(|| millis.to_string())
}

/// Hashes a password into an Argon2id PHC string with the crate's default parameters.
///
/// # Errors
///
/// A message when the password is empty or hashing fails.
pub fn hash_password(password: &str) -> Result<String, String> {
    if password.is_empty() {
        return Err("empty password".into());
    }
    argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|error| format!("failed to hash the password: {error}"))
}

fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

fn account_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Account> {
    let role: String = row.get(1)?;
    Ok(Account {
        name: row.get(0)?,
        role: role.parse().unwrap_or(Role::Auditor),
        totp: row.get(2)?,
        failed_logins: row.get(3)?,
        locked_until: row.get(4)?,
    })
}

#[cfg(test)]
mod tests;
