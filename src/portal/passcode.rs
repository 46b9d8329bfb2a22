//! One-time passcodes: drawing them, hashing them for the store, and limiting how often a
//! new one may be mailed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;
use sha2::{Digest, Sha256};

/// Minimum digits in a passcode. Shorter settings are raised to it.
pub const MIN_DIGITS: u8 = 6;
/// Maximum digits in a passcode. Longer settings are cut to it.
pub const MAX_DIGITS: u8 = 8;

/// Draws a passcode of `digits` decimal digits (leading zeros kept).
pub fn generate(digits: u8) -> String {
    let digits = u32::from(digits.clamp(MIN_DIGITS, MAX_DIGITS));
    let value = rand::rng().random_range(0..10u64.pow(digits));
    format!("{value:0width$}", width = digits as usize)
}

/// Hashes a passcode together with the held message id and the recipient, so a stored hash
/// matches only that message and address. `key` is a random secret of the running portal,
/// which keeps the hash of a 6-digit code from being reversed by trying all values offline.
pub fn hash(key: &[u8], held_id: &str, recipient: &str, passcode: &str) -> Vec<u8> {
    let mut hasher = Sha256::new();
    for part in [
        key,
        held_id.as_bytes(),
        recipient.as_bytes(),
        passcode.as_bytes(),
    ] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher.finalize().to_vec()
}

/// Removes spaces and dashes that people type into passcodes; `None` unless the rest is
/// `digits` decimal digits.
pub fn normalize(input: &str, digits: u8) -> Option<String> {
    let code: String = input
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect();
    let valid = code.len() == usize::from(digits) && code.bytes().all(|b| b.is_ascii_digit());
    valid.then_some(code)
}

/// Limits for mailing passcodes to one held message.
#[derive(Clone, Copy, Debug)]
pub struct SendLimits {
    /// Minimum time between two passcode mails.
    pub resend_interval: Duration,
    /// Passcode mails allowed within `window`.
    pub max_per_window: usize,
    /// Period over which `max_per_window` counts.
    pub window: Duration,
    /// Wait after too many wrong passcodes before a new passcode may be mailed.
    pub lockout_cooldown: Duration,
}

impl Default for SendLimits {
    /// Allows a new passcode after a minute, at most five an hour, and a 15-minute wait after a
    /// lockout.
    fn default() -> SendLimits {
        SendLimits {
            resend_interval: Duration::from_secs(60),
            max_per_window: 5,
            window: Duration::from_secs(3600),
            lockout_cooldown: Duration::from_secs(15 * 60),
        }
    }
}

/// Remembers when passcodes were mailed and when a message was locked, per held message.
/// The history is in memory, so a restart clears it.
pub struct SendLimiter {
    limits: SendLimits,
    history: Mutex<HashMap<String, History>>,
}

#[derive(Default)]
struct History {
    sent: Vec<Instant>,
    locked_at: Option<Instant>,
}

impl SendLimiter {
    /// Creates a limiter with no history.
    pub fn new(limits: SendLimits) -> SendLimiter {
        SendLimiter {
            limits,
            history: Mutex::new(HashMap::new()),
        }
    }

    /// Records a passcode mail for `held_id` when the limits allow one now, and otherwise
    /// returns how long to wait.
    pub fn try_send(&self, held_id: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut table = self.lock();
        let history = table.entry(held_id.to_string()).or_default();
        let window = self.limits.window;
        history
            .sent
            .retain(|sent| now.duration_since(*sent) < window);

        let mut wait = Duration::ZERO;
        if let Some(locked_at) = history.locked_at {
            wait = wait.max(self.limits.lockout_cooldown.saturating_sub(now - locked_at));
        }
        if let Some(last) = history.sent.last() {
            wait = wait.max(self.limits.resend_interval.saturating_sub(now - *last));
        }
        if history.sent.len() >= self.limits.max_per_window
            && let Some(first) = history.sent.first()
        {
            wait = wait.max(window.saturating_sub(now - *first));
        }
        if !wait.is_zero() {
            return Err(wait);
        }
        history.locked_at = None;
        history.sent.push(now);
        Ok(())
    }

    /// Starts the cool-down after too many wrong passcodes.
    pub fn lock_out(&self, held_id: &str) {
        self.lock()
            .entry(held_id.to_string())
            .or_default()
            .locked_at = Some(Instant::now());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, History>> {
        self.history
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> SendLimits {
        SendLimits {
            resend_interval: Duration::from_secs(60),
            max_per_window: 3,
            window: Duration::from_secs(3600),
            lockout_cooldown: Duration::from_secs(900),
        }
    }

    #[test]
    fn passcodes_have_requested_digits() {
        for digits in [6, 7, 8] {
            let code = generate(digits);
            assert_eq!(code.len(), usize::from(digits));
            assert!(code.bytes().all(|b| b.is_ascii_digit()), "{code}");
        }
    }

    #[test]
    fn hash_binds_message_and_recipient() {
        let base = hash(b"k", "h1", "a@example.org", "123456");
        assert_eq!(base, hash(b"k", "h1", "a@example.org", "123456"));
        assert_ne!(base, hash(b"k", "h2", "a@example.org", "123456"));
        assert_ne!(base, hash(b"k", "h1", "b@example.org", "123456"));
        assert_ne!(base, hash(b"other", "h1", "a@example.org", "123456"));
        assert_ne!(base, hash(b"k", "h1", "a@example.org", "123457"));
    }

    #[test]
    fn normalize_accepts_spaced_codes_only_of_right_length() {
        assert_eq!(normalize(" 123 456 ", 6), Some("123456".into()));
        assert_eq!(normalize("123-456", 6), Some("123456".into()));
        assert_eq!(normalize("12345", 6), None);
        assert_eq!(normalize("12345a", 6), None);
        assert_eq!(normalize("１２３４５６", 6), None);
    }

    #[test]
    fn limiter_enforces_resend_interval() {
        let limiter = SendLimiter::new(limits());
        assert!(limiter.try_send("h1").is_ok());
        let wait = limiter.try_send("h1").unwrap_err();
        assert!(wait > Duration::from_secs(58), "{wait:?}");
        assert!(limiter.try_send("h2").is_ok());
    }

    #[test]
    fn limiter_enforces_window_and_lockout() {
        let limiter = SendLimiter::new(SendLimits {
            resend_interval: Duration::ZERO,
            ..limits()
        });
        for _ in 0..3 {
            assert!(limiter.try_send("h1").is_ok());
        }
        assert!(limiter.try_send("h1").unwrap_err() > Duration::from_secs(3500));

        limiter.lock_out("h2");
        assert!(limiter.try_send("h2").unwrap_err() > Duration::from_secs(890));
    }
}
