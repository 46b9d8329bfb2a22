//! MTA-STS (RFC 8461): the policy format, MX matching, fetching the policy over HTTPS and
//! the policy cache.
//!
//! A domain publishes `_mta-sts.DOMAIN TXT "v=STSv1; id=..."` and a policy file at
//! `https://mta-sts.DOMAIN/.well-known/mta-sts.txt`. A policy is fetched when the TXT id is
//! not the cached one, and kept in the TLS database until its `max_age` runs out, so it
//! survives a restart. While a policy is cached, it is used when the TXT record or the
//! policy server cannot be reached (RFC 8461). Without a cached policy, a failed
//! fetch means delivery as if the domain had no policy (RFC 8461).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::mta_sts::MtaSts;
use rusqlite::{Connection, OptionalExtension};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::{debug, info, warn};

use super::DeliveryError;
use crate::telemetry::escape_field;

/// Largest `max_age` RFC 8461 allows: 31557600 seconds (about a year).
pub(crate) const MAX_AGE_LIMIT: u64 = 31_557_600;
/// Largest policy file accepted. RFC 8461 lets senders limit the size, and 64 KiB is far
/// above any real policy.
const MAX_POLICY_BYTES: usize = 64 * 1024;

/// The `mode` of a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StsMode {
    /// MX hosts must match and TLS with a verified certificate is required.
    Enforce,
    /// Failures are reported and logged, and delivery goes on as without a policy.
    Testing,
    /// The domain has withdrawn its policy.
    None,
}

/// A parsed policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StsPolicy {
    /// The policy mode.
    pub mode: StsMode,
    /// MX patterns, lowercased: host names, or `*.` followed by a domain.
    pub mx: Vec<String>,
    /// Seconds the policy may be cached.
    pub max_age: u64,
}

impl StsPolicy {
    /// Writes the policy back as its lines, for the `policy-string` of TLS-RPT.
    pub fn lines(&self) -> Vec<String> {
        let mode = match self.mode {
            StsMode::Enforce => "enforce",
            StsMode::Testing => "testing",
            StsMode::None => "none",
        };
        let mut lines = vec!["version: STSv1".to_owned(), format!("mode: {mode}")];
        lines.extend(self.mx.iter().map(|pattern| format!("mx: {pattern}")));
        lines.push(format!("max_age: {}", self.max_age));
        lines
    }

    /// Checks whether `host` matches one of the policy's MX patterns. A `*.` pattern
    /// matches exactly one more label on the left (RFC 8461).
    pub fn matches_mx(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(suffix) => host
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
                None => *pattern == host,
            })
    }
}

/// Parses a policy file strictly: `version: STSv1` first, one `mode` and one `max_age`,
/// at least one `mx` unless the mode is `none`. Unknown keys are ignored (RFC 8461).
///
/// # Errors
///
/// A sentence naming the line or field that is invalid.
pub(crate) fn parse_policy(text: &str) -> Result<StsPolicy, String> {
    let mut version_seen = false;
    let mut mode = None;
    let mut max_age = None;
    let mut mx = Vec::new();
    for (index, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(format!("line {} is not \"key: value\"", index + 1));
        };
        let value = value.trim_matches([' ', '\t']);
        if !version_seen && key != "version" {
            return Err("the first field is not version".into());
        }
        match key {
            "version" if version_seen => return Err("version appears twice".into()),
            "version" if value == "STSv1" => version_seen = true,
            "version" => return Err(format!("unsupported version {value:?}")),
            "mode" if mode.is_some() => return Err("mode appears twice".into()),
            "mode" => {
                mode = Some(match value {
                    "enforce" => StsMode::Enforce,
                    "testing" => StsMode::Testing,
                    "none" => StsMode::None,
                    other => return Err(format!("invalid mode {other:?}")),
                });
            }
            "max_age" if max_age.is_some() => return Err("max_age appears twice".into()),
            "max_age" => {
                let seconds = value
                    .parse::<u64>()
                    .ok()
                    .filter(|_| !value.is_empty() && value.len() <= 10)
                    .filter(|_| value.bytes().all(|byte| byte.is_ascii_digit()))
                    .ok_or_else(|| format!("invalid max_age {value:?}"))?;
                if seconds > MAX_AGE_LIMIT {
                    return Err(format!("max_age {seconds} is above {MAX_AGE_LIMIT}"));
                }
                max_age = Some(seconds);
            }
            "mx" => {
                if !is_mx_pattern(value) {
                    return Err(format!("invalid mx pattern {value:?}"));
                }
                mx.push(value.to_ascii_lowercase());
            }
            _ => {}
        }
    }
    if !version_seen {
        return Err("version is missing".into());
    }
    let mode = mode.ok_or("mode is missing")?;
    let max_age = max_age.ok_or("max_age is missing")?;
    if mx.is_empty() && mode != StsMode::None {
        return Err("no mx pattern".into());
    }
    Ok(StsPolicy { mode, mx, max_age })
}

fn is_mx_pattern(value: &str) -> bool {
    let name = value.strip_prefix("*.").unwrap_or(value);
    crate::config::is_domain_name(name) && name.contains('.')
}

/// Returns the id of the one valid `v=STSv1` TXT record among `texts`. RFC 8461:
/// with none or more than one, the domain has no policy.
pub(crate) fn record_id(texts: &[String]) -> Option<String> {
    let records: Vec<&String> = texts
        .iter()
        .filter(|text| text.trim_start().starts_with("v=STSv1"))
        .collect();
    match records.as_slice() {
        [only] => MtaSts::parse(only.as_bytes()).ok().map(|record| record.id),
        _ => None,
    }
}

/// A policy in the cache.
#[derive(Clone, Debug)]
pub(crate) struct CachedPolicy {
    /// The TXT id it was fetched under.
    pub id: String,
    /// The parsed policy.
    pub policy: StsPolicy,
    /// Unix seconds when it was fetched.
    pub fetched_at: i64,
}

/// Opens the TLS database at `path` (its folder created when missing), or an in-memory
/// one for `None`, in WAL mode, and runs `schema`.
pub(crate) fn open_tls_database(
    path: Option<&Path>,
    schema: &str,
) -> Result<Arc<Mutex<Connection>>, DeliveryError> {
    let database = |error: rusqlite::Error| DeliveryError::Database(error.to_string());
    let connection = match path {
        Some(path) => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|error| DeliveryError::Database(error.to_string()))?;
            }
            Connection::open(path).map_err(database)?
        }
        None => Connection::open_in_memory().map_err(database)?,
    };
    // Two processes share the file: `sealgate serve` and `sealgate tlsrpt send`.
    connection
        .execute_batch("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000;")
        .map_err(database)?;
    connection.execute_batch(schema).map_err(database)?;
    Ok(Arc::new(Mutex::new(connection)))
}

/// The policy cache, in the TLS database (or in memory when no file is given).
#[derive(Clone)]
pub(crate) struct PolicyCache {
    connection: Arc<Mutex<Connection>>,
}

impl PolicyCache {
    /// Opens (and creates) the cache in `path`, or in memory for `None`.
    pub fn open(path: Option<&Path>) -> Result<PolicyCache, DeliveryError> {
        let connection = open_tls_database(
            path,
            "CREATE TABLE IF NOT EXISTS mta_sts_policies (
                 domain TEXT PRIMARY KEY,
                 policy_id TEXT NOT NULL,
                 policy TEXT NOT NULL,
                 fetched_at INTEGER NOT NULL,
                 expires_at INTEGER NOT NULL
             );",
        )?;
        Ok(PolicyCache { connection })
    }

    /// Returns the unexpired policy of `domain`, if any. A stored policy that no longer
    /// parses counts as absent.
    pub fn get(&self, domain: &str, now: i64) -> Option<CachedPolicy> {
        let connection = self.connection.lock().ok()?;
        let row = connection
            .query_row(
                "SELECT policy_id, policy, fetched_at FROM mta_sts_policies
                 WHERE domain = ?1 AND expires_at > ?2",
                rusqlite::params![domain, now],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, i64>(2)?,
                    ))
                },
            )
            .optional();
        let (id, text, fetched_at) = match row {
            Ok(row) => row?,
            Err(error) => {
                warn!(domain = %escape_field(domain), %error, "failed to read the MTA-STS policy cache");
                return None;
            }
        };
        let policy = parse_policy(&text).ok()?;
        Some(CachedPolicy {
            id,
            policy,
            fetched_at,
        })
    }

    /// Stores a policy fetched at `now`, replacing the previous one.
    pub fn put(&self, domain: &str, id: &str, text: &str, policy: &StsPolicy, now: i64) {
        let expires_at = now.saturating_add(i64::try_from(policy.max_age).unwrap_or(i64::MAX));
        let Ok(connection) = self.connection.lock() else {
            return;
        };
        if let Err(error) = connection.execute(
            "INSERT OR REPLACE INTO mta_sts_policies (domain, policy_id, policy, fetched_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            rusqlite::params![domain, id, text, now, expires_at],
        ) {
            warn!(domain = %escape_field(domain), %error, "failed to store the MTA-STS policy");
        }
    }
}

/// Fetches policy files over HTTPS.
#[derive(Clone)]
pub(crate) struct PolicyFetcher {
    /// Verifies the policy server's certificate with the web PKI roots and trust anchors.
    pub connector: TlsConnector,
    /// Port of the policy server: 443, or another for tests on loopback.
    pub port: u16,
    /// Time allowed for the whole fetch.
    pub timeout: Duration,
}

impl PolicyFetcher {
    /// Fetches and parses the policy of `domain` from one of `addresses` (those of
    /// `mta-sts.DOMAIN`). Returns the policy and its text.
    ///
    /// # Errors
    ///
    /// A sentence for the log: connection, certificate, HTTP status, content type, size,
    /// timeout or parse failure.
    pub async fn fetch(
        &self,
        domain: &str,
        addresses: &[IpAddr],
    ) -> Result<(StsPolicy, String), String> {
        let host = format!("mta-sts.{domain}");
        let mut last_error = format!("{host} has no address");
        for ip in addresses {
            let address = SocketAddr::new(*ip, self.port);
            let attempt = tokio::time::timeout(self.timeout, self.fetch_from(&host, address));
            match attempt.await {
                Ok(Ok(text)) => {
                    let policy = parse_policy(&text)
                        .map_err(|reason| format!("invalid policy from {host}: {reason}"))?;
                    return Ok((policy, text));
                }
                Ok(Err(error)) => last_error = format!("{host}[{ip}]: {error}"),
                Err(_) => last_error = format!("{host}[{ip}]: timed out after {:?}", self.timeout),
            }
        }
        Err(last_error)
    }

    async fn fetch_from(&self, host: &str, address: SocketAddr) -> Result<String, String> {
        let tcp = TcpStream::connect(address)
            .await
            .map_err(|error| format!("connect failed: {error}"))?;
        let name = ServerName::try_from(host.to_owned())
            .map_err(|error| format!("invalid host name: {error}"))?;
        let tls = self
            .connector
            .connect(name, tcp)
            .await
            .map_err(|error| format!("TLS handshake failed: {error}"))?;

        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|error| format!("HTTP handshake failed: {error}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let request = hyper::Request::get("/.well-known/mta-sts.txt")
            .header(hyper::header::HOST, host)
            .header(hyper::header::USER_AGENT, "sealgate")
            .body(Empty::<Bytes>::new())
            .map_err(|error| format!("invalid request: {error}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| format!("HTTP request failed: {error}"))?;

        // RFC 8461: redirects are not followed, and only 200 is a policy.
        if response.status() != hyper::StatusCode::OK {
            return Err(format!("HTTP status {}", response.status()));
        }
        let content_type = response
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("");
        let media_type = content_type.split(';').next().unwrap_or("").trim();
        if !media_type.eq_ignore_ascii_case("text/plain") {
            return Err(format!("content type {content_type:?} is not text/plain"));
        }

        let body = Limited::new(response.into_body(), MAX_POLICY_BYTES)
            .collect()
            .await
            .map_err(|error| {
                format!("failed to read the policy (limit {MAX_POLICY_BYTES} bytes): {error}")
            })?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| "policy is not UTF-8".into())
    }
}

/// Logs a fetch result once, in the words an operator searches for.
pub(crate) fn log_fetch(domain: &str, outcome: &Result<(StsPolicy, String), String>) {
    match outcome {
        Ok((policy, _)) => info!(
            domain = %escape_field(domain),
            mode = ?policy.mode,
            max_age = policy.max_age,
            "fetched MTA-STS policy",
        ),
        Err(error) => warn!(
            domain = %escape_field(domain),
            error = %escape_field(error),
            "failed to fetch MTA-STS policy",
        ),
    }
    debug!(domain = %escape_field(domain), ok = outcome.is_ok(), "MTA-STS fetch finished");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_with_crlf_and_wildcard_parses() {
        let text = "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.org\r\nmx: *.mail.example.org\r\nmax_age: 86400\r\n";
        let policy = parse_policy(text).unwrap();
        assert_eq!(policy.mode, StsMode::Enforce);
        assert_eq!(policy.max_age, 86_400);
        assert!(policy.matches_mx("mx1.example.org"));
        assert!(policy.matches_mx("MX2.mail.example.org."));
        assert!(!policy.matches_mx("a.b.mail.example.org"));
        assert!(!policy.matches_mx("mail.example.org"));
        assert!(!policy.matches_mx("mx9.example.org"));
    }

    #[test]
    fn invalid_policies_are_rejected() {
        let cases = [
            (
                "mode: enforce\nversion: STSv1\nmx: a.example\nmax_age: 1\n",
                "first field",
            ),
            (
                "version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n",
                "version",
            ),
            (
                "version: STSv1\nmode: strict\nmx: a.example\nmax_age: 1\n",
                "mode",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 31557601\n",
                "max_age",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -5\n",
                "max_age",
            ),
            ("version: STSv1\nmode: enforce\nmax_age: 60\n", "no mx"),
            (
                "version: STSv1\nmode: enforce\nmx: *.*.example\nmax_age: 60\n",
                "mx",
            ),
            (
                "version: STSv1\nmode: enforce\nmode: testing\nmx: a.example\nmax_age: 60\n",
                "twice",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.example\n",
                "max_age is missing",
            ),
            ("version: STSv1\ngarbage\n", "line 2"),
        ];
        for (text, expected) in cases {
            let error = parse_policy(text).unwrap_err();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn unknown_keys_and_none_mode_are_accepted() {
        let policy =
            parse_policy("version: STSv1\nmode: none\nmax_age: 0\nextension: x\n").unwrap();
        assert_eq!(policy.mode, StsMode::None);
        assert!(policy.mx.is_empty());
    }

    #[test]
    fn txt_record_id_needs_exactly_one_record() {
        let one = vec!["v=STSv1; id=20260101T000000;".to_owned()];
        assert_eq!(record_id(&one).as_deref(), Some("20260101T000000"));
        let two = vec!["v=STSv1; id=a;".to_owned(), "v=STSv1; id=b;".to_owned()];
        assert_eq!(record_id(&two), None);
        let other = vec!["v=spf1 -all".to_owned()];
        assert_eq!(record_id(&other), None);
    }
}
