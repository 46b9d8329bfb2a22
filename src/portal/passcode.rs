//! One-time passcodes: drawing them, hashing them for the store, and limiting how often a
//! new one may be mailed.

use std::time::Duration;

use rand::Rng;
use sha2::{Digest, Sha256};

pub use crate::store::SendHistory;

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
    pub max_per_window: u32,
    /// Period over which `max_per_window` counts, from the first mail of the period.
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

/// Checks one more passcode mail at `now` (Unix milliseconds) against `limits` and the
/// stored `history`. Returns the history to store after the mail, or how long to wait.
/// A clock that went backwards counts as no time passed, so it never shortens a wait.
pub fn record_send(
    limits: &SendLimits,
    history: &SendHistory,
    now: i64,
) -> Result<SendHistory, Duration> {
    let remaining = |period: Duration, since: i64| {
        let elapsed = u64::try_from(now.saturating_sub(since)).unwrap_or(0);
        period.saturating_sub(Duration::from_millis(elapsed))
    };
    let mut wait = Duration::ZERO;
    if let Some(locked_at) = history.locked_at {
        wait = wait.max(remaining(limits.lockout_cooldown, locked_at));
    }
    if let Some(last) = history.last_sent_at {
        wait = wait.max(remaining(limits.resend_interval, last));
    }
    let (window_started_at, window_sends) = match history.window_started_at {
        Some(start) if !remaining(limits.window, start).is_zero() => {
            if history.window_sends >= limits.max_per_window {
                wait = wait.max(remaining(limits.window, start));
            }
            (start, history.window_sends.saturating_add(1))
        }
        _ => (now, 1),
    };
    if !wait.is_zero() {
        return Err(wait);
    }
    Ok(SendHistory {
        last_sent_at: Some(now),
        window_started_at: Some(window_started_at),
        window_sends,
        locked_at: None,
    })
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

    /// Records a send at `seconds` into `history` when the limits allow it; returns the wait
    /// otherwise.
    fn send_at(
        limits: &SendLimits,
        history: &mut SendHistory,
        seconds: i64,
    ) -> Result<(), Duration> {
        let next = record_send(limits, history, seconds * 1000)?;
        *history = next;
        Ok(())
    }

    #[test]
    fn limits_enforce_resend_interval() {
        let mut history = SendHistory::default();
        assert!(send_at(&limits(), &mut history, 0).is_ok());
        let wait = send_at(&limits(), &mut history, 1).unwrap_err();
        assert_eq!(wait, Duration::from_secs(59));
        assert!(send_at(&limits(), &mut history, 60).is_ok());
        assert_eq!(history.window_sends, 2);
    }

    #[test]
    fn limits_enforce_window_and_lockout() {
        let limits = SendLimits {
            resend_interval: Duration::ZERO,
            ..limits()
        };
        let mut history = SendHistory::default();
        for second in 0..3 {
            assert!(send_at(&limits, &mut history, second).is_ok());
        }
        assert_eq!(
            send_at(&limits, &mut history, 10).unwrap_err(),
            Duration::from_secs(3590)
        );
        // A new period starts once the old one is over.
        assert!(send_at(&limits, &mut history, 3600).is_ok());
        assert_eq!(history.window_started_at, Some(3_600_000));
        assert_eq!(history.window_sends, 1);

        let mut locked = SendHistory {
            locked_at: Some(0),
            ..SendHistory::default()
        };
        assert_eq!(
            send_at(&limits, &mut locked, 10).unwrap_err(),
            Duration::from_secs(890)
        );
        assert!(send_at(&limits, &mut locked, 900).is_ok());
        assert_eq!(locked.locked_at, None);
    }

    #[test]
    fn clock_going_back_never_shortens_a_wait() {
        let history = SendHistory {
            last_sent_at: Some(100_000),
            locked_at: Some(100_000),
            ..SendHistory::default()
        };
        let wait = record_send(&limits(), &history, 0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(900));
    }
}
