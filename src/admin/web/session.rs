//! Signed-in administrators, in memory: a restart signs everyone out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::admin::Account;
use crate::portal::session::random_token;

/// Sessions kept at most; the oldest is dropped to make room.
const MAX_SESSIONS: usize = 1000;

/// A signed-in account and the token its forms must send back.
#[derive(Clone, Debug)]
pub struct AdminSession {
    /// The account, as it was at sign-in.
    pub account: Account,
    /// CSRF token of every form in the session.
    pub csrf: String,
    expires_at: Instant,
}

/// The session table.
pub struct AdminSessions {
    lifetime: Duration,
    table: Mutex<HashMap<String, AdminSession>>,
}

impl AdminSessions {
    /// Creates an empty table whose sessions end `lifetime` after sign-in.
    pub fn new(lifetime: Duration) -> AdminSessions {
        AdminSessions {
            lifetime,
            table: Mutex::new(HashMap::new()),
        }
    }

    /// Signs `account` in and returns the session id.
    pub fn create(&self, account: Account) -> String {
        let now = Instant::now();
        let id = random_token();
        let mut table = self.lock();
        table.retain(|_, session| session.expires_at > now);
        if table.len() >= MAX_SESSIONS
            && let Some(oldest) = table
                .iter()
                .min_by_key(|(_, session)| session.expires_at)
                .map(|(id, _)| id.clone())
        {
            table.remove(&oldest);
        }
        table.insert(
            id.clone(),
            AdminSession {
                account,
                csrf: random_token(),
                expires_at: now + self.lifetime,
            },
        );
        id
    }

    /// Returns the live session with this id.
    pub fn get(&self, id: &str) -> Option<AdminSession> {
        let mut table = self.lock();
        match table.get(id) {
            Some(session) if session.expires_at > Instant::now() => Some(session.clone()),
            Some(_) => {
                table.remove(id);
                None
            }
            None => None,
        }
    }

    /// Ends a session.
    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Session lifetime, for the cookie's `Max-Age`.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, AdminSession>> {
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
