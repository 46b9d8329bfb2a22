//! Limits per client IP address, shared by all sessions: concurrent sessions, and AUTH
//! failures within a window over any number of sessions. Also the rate limit on the log
//! lines for rejected clients, so that a client that reconnects in a loop cannot flood
//! the log.
//!
//! Clients are told apart by IP address only. An IPv4 client of a dual-stack listener
//! (`::ffff:a.b.c.d`) counts as its IPv4 address.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::config::InboundConfig;

/// Minimum time between two log lines about the same client and the same limit.
pub(crate) const REJECTION_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Map size above which entries that no longer limit anything are dropped.
const PRUNE_THRESHOLD: usize = 4096;

/// Session and AUTH failure counts per client IP address.
pub(crate) struct ClientLimits {
    max_sessions: usize,
    max_auth_failures: u32,
    auth_failure_window: Duration,
    clients: Mutex<HashMap<IpAddr, ClientRecord>>,
}

#[derive(Debug, Default)]
struct ClientRecord {
    sessions: usize,
    /// Times of the most recent AUTH failures, oldest first, at most `max_auth_failures`.
    auth_failures: VecDeque<Instant>,
}

/// One session's share of its client's session limit, given back on drop.
pub(crate) struct ClientSlot {
    limits: Arc<ClientLimits>,
    ip: IpAddr,
}

impl ClientLimits {
    pub(crate) fn new(config: &InboundConfig) -> ClientLimits {
        ClientLimits {
            max_sessions: config.max_sessions_per_client,
            max_auth_failures: config.max_auth_failures,
            auth_failure_window: config.auth_failure_window.0,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a session slot for `ip`, or returns `None` when the client already has
    /// `max_sessions_per_client` sessions.
    pub(crate) fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let ip = ip.to_canonical();
        let mut clients = self.lock();
        let record = clients.entry(ip).or_default();
        if record.sessions >= self.max_sessions {
            return None;
        }
        record.sessions += 1;
        Some(ClientSlot {
            limits: self.clone(),
            ip,
        })
    }

    /// True when `ip` has had `max_auth_failures` AUTH failures within the window that
    /// ends at `now`.
    pub(crate) fn auth_blocked(&self, ip: IpAddr, now: Instant) -> bool {
        let mut clients = self.lock();
        let Some(record) = clients.get_mut(&ip.to_canonical()) else {
            return false;
        };
        self.expire(record, now);
        record.auth_failures.len() >= self.max_auth_failures as usize
    }

    /// Records an AUTH failure from `ip` at `now`.
    pub(crate) fn record_auth_failure(&self, ip: IpAddr, now: Instant) {
        let mut clients = self.lock();
        if clients.len() > PRUNE_THRESHOLD {
            clients.retain(|_, record| {
                self.expire(record, now);
                record.sessions > 0 || !record.auth_failures.is_empty()
            });
        }
        let record = clients.entry(ip.to_canonical()).or_default();
        self.expire(record, now);
        record.auth_failures.push_back(now);
        while record.auth_failures.len() > self.max_auth_failures as usize {
            record.auth_failures.pop_front();
        }
    }

    /// Forgets the AUTH failures of `ip`, after it authenticated.
    pub(crate) fn clear_auth_failures(&self, ip: IpAddr) {
        let mut clients = self.lock();
        if let Entry::Occupied(mut entry) = clients.entry(ip.to_canonical()) {
            entry.get_mut().auth_failures.clear();
            if entry.get().sessions == 0 {
                entry.remove();
            }
        }
    }

    fn expire(&self, record: &mut ClientRecord, now: Instant) {
        while let Some(&oldest) = record.auth_failures.front() {
            if now.saturating_duration_since(oldest) < self.auth_failure_window {
                break;
            }
            record.auth_failures.pop_front();
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, ClientRecord>> {
        // The map is left consistent at every step, so a panic elsewhere does not make it
        // unusable.
        self.clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut clients = self.limits.lock();
        if let Entry::Occupied(mut entry) = clients.entry(self.ip) {
            let record = entry.get_mut();
            record.sessions = record.sessions.saturating_sub(1);
            if record.sessions == 0 && record.auth_failures.is_empty() {
                entry.remove();
            }
        }
    }
}

/// Allows one log line per client per [`REJECTION_LOG_INTERVAL`] for one kind of
/// rejection, and counts the lines left out in between.
pub(crate) struct RejectionLog {
    clients: Mutex<HashMap<IpAddr, LogRecord>>,
}

#[derive(Debug)]
struct LogRecord {
    logged_at: Instant,
    suppressed: u64,
}

impl RejectionLog {
    pub(crate) fn new() -> RejectionLog {
        RejectionLog {
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Returns `Some(suppressed)` when a line about `ip` may be written at `now`, with the
    /// number of lines left out since the last one, and `None` when this one is left out.
    pub(crate) fn admit(&self, ip: IpAddr, now: Instant) -> Option<u64> {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if clients.len() > PRUNE_THRESHOLD {
            clients.retain(|_, record| {
                now.saturating_duration_since(record.logged_at) < REJECTION_LOG_INTERVAL
            });
        }
        match clients.entry(ip.to_canonical()) {
            Entry::Vacant(entry) => {
                entry.insert(LogRecord {
                    logged_at: now,
                    suppressed: 0,
                });
                Some(0)
            }
            Entry::Occupied(mut entry) => {
                let record = entry.get_mut();
                if now.saturating_duration_since(record.logged_at) < REJECTION_LOG_INTERVAL {
                    record.suppressed += 1;
                    return None;
                }
                let suppressed = record.suppressed;
                *record = LogRecord {
                    logged_at: now,
                    suppressed: 0,
                };
                Some(suppressed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_sessions: usize, max_auth_failures: u32) -> Arc<ClientLimits> {
        let mut config = InboundConfig::default();
        config.max_sessions_per_client = max_sessions;
        config.max_auth_failures = max_auth_failures;
        config.auth_failure_window = crate::config::ConfigDuration::secs(600);
        Arc::new(ClientLimits::new(&config))
    }

    #[test]
    fn session_slots_are_per_client_and_given_back() {
        let limits = limits(2, 3);
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();

        let first = limits.try_acquire(client).unwrap();
        let _second = limits.try_acquire(client).unwrap();
        assert!(limits.try_acquire(client).is_none());
        assert!(limits.try_acquire(other).is_some());

        drop(first);
        assert!(limits.try_acquire(client).is_some());
    }

    #[test]
    fn mapped_ipv4_counts_as_ipv4() {
        let limits = limits(1, 3);
        let _slot = limits.try_acquire("192.0.2.1".parse().unwrap()).unwrap();
        assert!(
            limits
                .try_acquire("::ffff:192.0.2.1".parse().unwrap())
                .is_none()
        );
    }

    #[test]
    fn auth_failures_block_within_window_only() {
        let limits = limits(20, 3);
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        let start = Instant::now();

        for minute in 0..3 {
            assert!(!limits.auth_blocked(client, start));
            limits.record_auth_failure(client, start + Duration::from_secs(60 * minute));
        }
        assert!(limits.auth_blocked(client, start + Duration::from_secs(180)));
        assert!(!limits.auth_blocked("192.0.2.2".parse().unwrap(), start));
        // The first failure leaves the window after ten minutes.
        assert!(!limits.auth_blocked(client, start + Duration::from_secs(600)));
    }

    #[test]
    fn successful_auth_clears_failures() {
        let limits = limits(20, 2);
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        let now = Instant::now();
        limits.record_auth_failure(client, now);
        limits.record_auth_failure(client, now);
        assert!(limits.auth_blocked(client, now));

        limits.clear_auth_failures(client);
        assert!(!limits.auth_blocked(client, now));
    }

    #[test]
    fn rejection_log_admits_one_line_per_minute_with_count() {
        let log = RejectionLog::new();
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        let start = Instant::now();

        assert_eq!(log.admit(client, start), Some(0));
        for second in 1..=5 {
            assert_eq!(log.admit(client, start + Duration::from_secs(second)), None);
        }
        assert_eq!(log.admit("192.0.2.2".parse().unwrap(), start), Some(0));
        assert_eq!(log.admit(client, start + Duration::from_secs(60)), Some(5));
        assert_eq!(log.admit(client, start + Duration::from_secs(61)), None);
    }
}
