//! Server-side sessions after a correct passcode (and, with another value type, after an
//! administrator's sign-in), and the random values behind cookies and CSRF tokens.
//!
//! Sessions live in memory only, so a restart signs every recipient out and they enter a
//! new passcode.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;

/// Sessions kept at most; the oldest is dropped to make room, so a flood of sign-ins cannot
/// exhaust memory.
const MAX_SESSIONS: usize = 10_000;

/// Draws 256 random bits from the operating system's CSPRNG (through `rand`'s thread RNG)
/// and returns them base64url-encoded without padding.
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Compares two secrets in time that depends only on their lengths.
pub fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    if left.len() != right.len() {
        return false;
    }
    left.iter()
        .zip(right)
        .fold(0u8, |difference, (a, b)| difference | (a ^ b))
        == 0
}

/// A signed-in recipient, bound to one held message.
#[derive(Clone, Debug)]
pub struct Session {
    /// Hold-store id of the message the passcode was for.
    pub held_id: String,
    /// Token that every form of the session must send back.
    pub csrf: String,
}

/// The session table: values of type `T` under random ids, each ending `lifetime` after
/// it was created. The admin pages keep their own `T` in it.
pub struct Sessions<T = Session> {
    lifetime: Duration,
    table: Mutex<HashMap<String, (T, Instant)>>,
}

impl Sessions<Session> {
    /// Signs a recipient in for `held_id` and returns the session id and the session.
    pub fn create(&self, held_id: &str) -> (String, Session) {
        let session = Session {
            held_id: held_id.to_string(),
            csrf: random_token(),
        };
        (self.insert(session.clone()), session)
    }
}

impl<T: Clone> Sessions<T> {
    /// Creates an empty table whose sessions end `lifetime` after sign-in.
    pub fn new(lifetime: Duration) -> Sessions<T> {
        Sessions {
            lifetime,
            table: Mutex::new(HashMap::new()),
        }
    }

    /// Stores `value` under a new random id and returns the id.
    pub fn insert(&self, value: T) -> String {
        let now = Instant::now();
        let id = random_token();
        let mut table = self.lock();
        table.retain(|_, (_, expires_at)| *expires_at > now);
        if table.len() >= MAX_SESSIONS
            && let Some(oldest) = table
                .iter()
                .min_by_key(|(_, (_, expires_at))| *expires_at)
                .map(|(id, _)| id.clone())
        {
            table.remove(&oldest);
        }
        table.insert(id.clone(), (value, now + self.lifetime));
        id
    }

    /// Returns the live session with this id.
    pub fn get(&self, id: &str) -> Option<T> {
        let mut table = self.lock();
        match table.get(id) {
            Some((value, expires_at)) if *expires_at > Instant::now() => Some(value.clone()),
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (T, Instant)>> {
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_tokens_are_long_and_distinct() {
        let first = random_token();
        assert_eq!(first.len(), 43);
        assert_ne!(first, random_token());
    }

    #[test]
    fn constant_time_eq_compares_bytes() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn sessions_expire() {
        let sessions = Sessions::new(Duration::ZERO);
        let (id, _) = sessions.create("h1");
        assert!(sessions.get(&id).is_none());

        let sessions = Sessions::new(Duration::from_secs(60));
        let (id, session) = sessions.create("h1");
        assert_eq!(sessions.get(&id).map(|s| s.held_id), Some("h1".into()));
        assert_eq!(session.held_id, "h1");
        sessions.remove(&id);
        assert!(sessions.get(&id).is_none());
    }
}
