//! SMTP TLS Reporting (RFC 8460): per-domain counts of TLS sessions and failures, kept in
//! the TLS database, and the daily aggregate report mailed to the `mailto:` addresses of
//! the domain's `_smtp._tls` TXT record.
//!
//! Results are counted per UTC day, recipient domain, policy type (`tlsa`, `sts` or
//! `no-policy-found`), MX host, receiving IP address and result type. A report covers one
//! day of one domain and is sent as `application/tlsrpt+gzip` through the queue, from the
//! null sender so that a failed report never causes another message. `https:` report
//! addresses are not supported and are skipped with a log line.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flate2::Compression;
use flate2::write::GzEncoder;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::mta_sts::{ReportUri, TlsRpt};
use mail_builder::MessageBuilder;
use mail_builder::headers::HeaderType;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::raw::Raw;
use mail_builder::mime::{BodyPart, MimePart};
use rusqlite::Connection;
use serde_json::{Value, json};
use tracing::{info, warn};

use super::DeliveryError;
use super::mta_sts::open_tls_database;
use super::mx::{HopResolver, TxtAnswer};
use crate::config::Config;
use crate::envelope::{AcceptedMessage, ClientInfo, QueueId};
use crate::queue::Spool;
use crate::telemetry::escape_field;

/// The `policy-type` of a result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PolicyType {
    /// DANE.
    Tlsa,
    /// MTA-STS, in `enforce` or `testing` mode.
    Sts,
    /// Neither.
    NoPolicyFound,
}

impl PolicyType {
    fn name(self) -> &'static str {
        match self {
            PolicyType::Tlsa => "tlsa",
            PolicyType::Sts => "sts",
            PolicyType::NoPolicyFound => "no-policy-found",
        }
    }
}

/// One TLS result to count.
pub(crate) struct TlsResult<'a> {
    /// Recipient domain (the policy domain).
    pub domain: &'a str,
    /// The policy that applied.
    pub policy_type: PolicyType,
    /// The policy as text lines (the MTA-STS policy or the TLSA records).
    pub policy_strings: &'a [String],
    /// MX host name, empty when the failure concerns the domain (a policy fetch).
    pub mx_host: &'a str,
    /// Receiving IP address, empty when no connection was made.
    pub receiving_ip: &'a str,
    /// `None` for a successful TLS session, else the RFC 8460 result type.
    pub result_type: Option<&'static str>,
    /// The failure in words, for `failure-reason-code`.
    pub detail: &'a str,
}

/// Maps a TLS failure description to an RFC 8460 result type.
pub(crate) fn result_type_of(detail: &str) -> &'static str {
    if detail.contains("STARTTLS not offered") || detail.contains("STARTTLS rejected") {
        "starttls-not-supported"
    } else if detail.contains("certificate expired") || detail.contains("not yet valid") {
        "certificate-expired"
    } else if detail.contains("not valid for name") {
        "certificate-host-mismatch"
    } else if detail.contains("unknown issuer") || detail.contains("CA certificate used") {
        "certificate-not-trusted"
    } else {
        "validation-failure"
    }
}

/// Counts of TLS results, in the TLS database (or in memory when no file is given).
#[derive(Clone)]
pub(crate) struct ReportStore {
    connection: Arc<Mutex<Connection>>,
}

impl ReportStore {
    /// Opens (and creates) the result table in `path`, or in memory for `None`.
    pub fn open(path: Option<&Path>) -> Result<ReportStore, DeliveryError> {
        let connection = open_tls_database(
            path,
            "CREATE TABLE IF NOT EXISTS tlsrpt_results (
                 day TEXT NOT NULL,
                 domain TEXT NOT NULL,
                 policy_type TEXT NOT NULL,
                 policy_strings TEXT NOT NULL,
                 mx_host TEXT NOT NULL,
                 receiving_ip TEXT NOT NULL,
                 result_type TEXT NOT NULL,
                 detail TEXT NOT NULL,
                 sessions INTEGER NOT NULL,
                 PRIMARY KEY (day, domain, policy_type, mx_host, receiving_ip, result_type)
             );",
        )?;
        Ok(ReportStore { connection })
    }

    /// Counts one session result for today (UTC).
    pub fn record(&self, result: &TlsResult<'_>) {
        let policy_strings = serde_json::to_string(result.policy_strings).unwrap_or_default();
        let Ok(connection) = self.connection.lock() else {
            return;
        };
        let outcome = connection.execute(
            "INSERT INTO tlsrpt_results (day, domain, policy_type, policy_strings, mx_host,
                 receiving_ip, result_type, detail, sessions)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 1)
             ON CONFLICT (day, domain, policy_type, mx_host, receiving_ip, result_type)
             DO UPDATE SET sessions = sessions + 1, policy_strings = ?4, detail = ?8",
            rusqlite::params![
                day_of(unix_now()),
                result.domain,
                result.policy_type.name(),
                policy_strings,
                result.mx_host,
                result.receiving_ip,
                result.result_type.unwrap_or(""),
                result.detail,
            ],
        );
        if let Err(error) = outcome {
            warn!(domain = %escape_field(result.domain), %error, "failed to record a TLS-RPT result");
        }
    }

    /// Returns the days and domains with results, of days before `before_day` (`YYYY-MM-DD`).
    fn pending(&self, before_day: &str) -> Result<Vec<(String, String)>, String> {
        let connection = self.connection.lock().map_err(|_| "lock poisoned")?;
        let mut statement = connection
            .prepare(
                "SELECT DISTINCT day, domain FROM tlsrpt_results WHERE day < ?1 ORDER BY day, domain",
            )
            .map_err(|error| error.to_string())?;
        let rows = statement
            .query_map([before_day], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(|error| error.to_string())?;
        rows.collect::<Result<_, _>>()
            .map_err(|error| error.to_string())
    }

    /// Builds the RFC 8460 report JSON of `domain` for `day`.
    fn report(&self, config: &Config, day: &str, domain: &str) -> Result<Value, String> {
        let connection = self.connection.lock().map_err(|_| "lock poisoned")?;
        let mut statement = connection
            .prepare(
                "SELECT policy_type, policy_strings, mx_host, receiving_ip, result_type, detail,
                     sessions
                 FROM tlsrpt_results WHERE day = ?1 AND domain = ?2
                 ORDER BY policy_type, mx_host, receiving_ip, result_type",
            )
            .map_err(|error| error.to_string())?;
        let rows = statement
            .query_map([day, domain], |row| {
                Ok(Row {
                    policy_type: row.get(0)?,
                    policy_strings: row.get(1)?,
                    mx_host: row.get(2)?,
                    receiving_ip: row.get(3)?,
                    result_type: row.get(4)?,
                    detail: row.get(5)?,
                    sessions: row.get(6)?,
                })
            })
            .map_err(|error| error.to_string())?
            .collect::<Result<Vec<Row>, _>>()
            .map_err(|error| error.to_string())?;
        Ok(report_json(config, day, domain, &rows))
    }

    fn delete(&self, day: &str, domain: &str) -> Result<(), String> {
        let connection = self.connection.lock().map_err(|_| "lock poisoned")?;
        connection
            .execute(
                "DELETE FROM tlsrpt_results WHERE day = ?1 AND domain = ?2",
                [day, domain],
            )
            .map(|_| ())
            .map_err(|error| error.to_string())
    }
}

struct Row {
    policy_type: String,
    policy_strings: String,
    mx_host: String,
    receiving_ip: String,
    result_type: String,
    detail: String,
    sessions: i64,
}

fn report_json(config: &Config, day: &str, domain: &str, rows: &[Row]) -> Value {
    let mut policies: Vec<Value> = Vec::new();
    let mut index = 0;
    while index < rows.len() {
        let policy_type = &rows[index].policy_type;
        let group: Vec<&Row> = rows[index..]
            .iter()
            .take_while(|row| &row.policy_type == policy_type)
            .collect();
        index += group.len();

        let strings: Vec<String> = group
            .iter()
            .rev()
            .find_map(|row| serde_json::from_str(&row.policy_strings).ok())
            .unwrap_or_default();
        let mut mx_hosts: Vec<&str> = group
            .iter()
            .map(|row| row.mx_host.as_str())
            .filter(|host| !host.is_empty())
            .collect();
        mx_hosts.dedup();
        let successes: i64 = group
            .iter()
            .filter(|row| row.result_type.is_empty())
            .map(|row| row.sessions)
            .sum();
        let failures: Vec<&&Row> = group
            .iter()
            .filter(|row| !row.result_type.is_empty())
            .collect();
        let failure_count: i64 = failures.iter().map(|row| row.sessions).sum();
        let details: Vec<Value> = failures
            .iter()
            .map(|row| {
                let mut detail = json!({
                    "result-type": row.result_type,
                    "failed-session-count": row.sessions,
                    "failure-reason-code": row.detail,
                });
                if !row.mx_host.is_empty() {
                    detail["receiving-mx-hostname"] = json!(row.mx_host);
                }
                if !row.receiving_ip.is_empty() {
                    detail["receiving-ip"] = json!(row.receiving_ip);
                }
                detail
            })
            .collect();
        let mut policy = json!({
            "policy-type": policy_type,
            "policy-domain": domain,
        });
        if !strings.is_empty() {
            policy["policy-string"] = json!(strings);
        }
        if !mx_hosts.is_empty() {
            policy["mx-host"] = json!(mx_hosts);
        }
        let mut entry = json!({
            "policy": policy,
            "summary": {
                "total-successful-session-count": successes,
                "total-failure-session-count": failure_count,
            },
        });
        if !details.is_empty() {
            entry["failure-details"] = json!(details);
        }
        policies.push(entry);
    }
    json!({
        "organization-name": config.server.hostname,
        "date-range": {
            "start-datetime": format!("{day}T00:00:00Z"),
            "end-datetime": format!("{day}T23:59:59Z"),
        },
        "contact-info": config.postmaster(),
        "report-id": format!("{day}.{domain}@{}", config.server.hostname),
        "policies": policies,
    })
}

/// A report ready to be queued.
pub struct TlsReportMessage {
    /// The reported domain.
    pub domain: String,
    /// The `mailto:` addresses from `_smtp._tls.DOMAIN`.
    pub recipients: Vec<String>,
    /// The whole RFC 5322 message, CRLF line endings.
    pub message: Vec<u8>,
}

/// Builds the reports of every day before today (or of today too, with `include_today`)
/// and removes their results from the database. Domains without a valid `_smtp._tls`
/// record or without a `mailto:` address get no report; their results are removed too.
///
/// # Errors
///
/// A sentence when the database or the DNS resolver cannot be used.
pub async fn take_reports(
    config: &Config,
    include_today: bool,
) -> Result<Vec<TlsReportMessage>, String> {
    let store =
        ReportStore::open(Some(&config.tls_database_path())).map_err(|error| error.to_string())?;
    let resolver = HopResolver::new(&config.delivery).map_err(|error| error.to_string())?;
    let now = unix_now();
    let before = if include_today {
        day_of(now + 86_400)
    } else {
        day_of(now)
    };

    let mut reports = Vec::new();
    for (day, domain) in store.pending(&before)? {
        let recipients = report_addresses(&resolver, &domain).await;
        if !recipients.is_empty() {
            let report = store.report(config, &day, &domain)?;
            let message = report_message(config, &day, &domain, &recipients, &report)?;
            reports.push(TlsReportMessage {
                domain: domain.clone(),
                recipients,
                message,
            });
        }
        store.delete(&day, &domain)?;
    }
    Ok(reports)
}

async fn report_addresses(resolver: &HopResolver, domain: &str) -> Vec<String> {
    let texts = match resolver.txt(&format!("_smtp._tls.{domain}")).await {
        TxtAnswer::Found(texts) => texts,
        TxtAnswer::NotFound => return Vec::new(),
        TxtAnswer::Failed(reason) => {
            warn!(domain = %escape_field(domain), reason, "TLS-RPT record lookup failed; report dropped");
            return Vec::new();
        }
    };
    let records: Vec<TlsRpt> = texts
        .iter()
        .filter(|text| text.trim_start().starts_with("v=TLSRPTv1"))
        .filter_map(|text| TlsRpt::parse(text.as_bytes()).ok())
        .collect();
    // RFC 8460: with more than one record, none is used.
    let [record] = records.as_slice() else {
        return Vec::new();
    };
    let mut addresses = Vec::new();
    for uri in &record.rua {
        match uri {
            ReportUri::Mail(address) if address.contains('@') => addresses.push(address.clone()),
            ReportUri::Mail(_) => {}
            ReportUri::Http(url) => info!(
                domain = %escape_field(domain),
                url = %escape_field(url),
                "skipping https TLS-RPT address: only mailto is supported",
            ),
        }
    }
    addresses
}

/// Builds the report mail of RFC 8460: subject and `TLS-Report-*` headers, a text
/// part and the gzipped JSON as `application/tlsrpt+gzip`.
fn report_message(
    config: &Config,
    day: &str,
    domain: &str,
    recipients: &[String],
    report: &Value,
) -> Result<Vec<u8>, String> {
    let submitter = &config.server.hostname;
    let json = serde_json::to_vec(report).map_err(|error| error.to_string())?;
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder
        .write_all(&json)
        .map_err(|error| error.to_string())?;
    let gzipped = encoder.finish().map_err(|error| error.to_string())?;

    let report_id = report["report-id"].as_str().unwrap_or_default().to_owned();
    let start = day_start(day);
    let file_name = format!(
        "{submitter}!{domain}!{start}!{}!{}.json.gz",
        start + 86_399,
        day.replace('-', "")
    );
    let text = format!(
        "This is an aggregate TLS report (RFC 8460) from {submitter} for {domain} on {day}.\r\n"
    );
    let message = MessageBuilder::new()
        .from(config.postmaster())
        .to(recipients
            .iter()
            .map(|address| address.as_str())
            .collect::<Vec<_>>())
        // RFC 8460 fixes the subject's words; written raw so that it is not
        // encoded as MIME words.
        .header(
            "Subject",
            HeaderType::Raw(Raw::new(format!(
                "Report Domain: {domain} Submitter: {submitter} Report-ID: <{report_id}>"
            ))),
        )
        .header("TLS-Report-Domain", HeaderType::Text(domain.into()))
        .header("TLS-Report-Submitter", HeaderType::Text(submitter.into()))
        .header("Auto-Submitted", HeaderType::Text("auto-generated".into()))
        .body(MimePart::new(
            ContentType::new("multipart/report").attribute("report-type", "tlsrpt"),
            BodyPart::Multipart(vec![
                MimePart::new(ContentType::new("text/plain"), BodyPart::Text(text.into())),
                MimePart::new(
                    ContentType::new("application/tlsrpt+gzip"),
                    BodyPart::Binary(gzipped.into()),
                )
                .attachment(file_name),
            ]),
        ))
        .write_to_vec()
        .map_err(|error| error.to_string())?;
    Ok(message)
}

/// Builds the reports like [`take_reports`] and commits each to the queue from the null
/// sender. Returns the reported domain and queue id of each.
///
/// # Errors
///
/// As [`take_reports`], and a sentence when the queue rejects a report; the reports
/// before it stay queued.
pub async fn queue_reports(
    config: &Config,
    spool: &Spool,
    include_today: bool,
) -> Result<Vec<(String, QueueId)>, String> {
    let mut queued = Vec::new();
    for report in take_reports(config, include_today).await? {
        let message = AcceptedMessage {
            sender: String::new(),
            recipients: report.recipients,
            body_8bit: report.message.iter().any(|byte| *byte > 127),
            body: report.message,
            smtputf8: false,
            client: ClientInfo {
                addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                helo: config.server.hostname.clone(),
                tls: None,
                auth_user: None,
            },
        };
        let id = spool.submit_dsn(message).await.map_err(|error| {
            format!(
                "failed to queue the TLS report for {}: {error}",
                report.domain
            )
        })?;
        info!(
            queue_id = %id,
            domain = %escape_field(&report.domain),
            "queued TLS-RPT report",
        );
        queued.push((report.domain, id));
    }
    Ok(queued)
}

/// Queues the reports of the finished UTC days every `delivery.tlsrpt_interval`, for
/// `sealgate serve`.
pub async fn run_reporter(config: Arc<Config>, spool: Spool) {
    let interval = config
        .delivery
        .tlsrpt_interval
        .0
        .max(Duration::from_secs(60));
    loop {
        tokio::time::sleep(interval).await;
        if let Err(error) = queue_reports(&config, &spool, false).await {
            warn!(%error, "failed to send TLS-RPT reports; retrying at the next interval");
        }
    }
}

fn unix_now() -> i64 {
    let elapsed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
}

/// Formats the UTC day of a Unix time as `YYYY-MM-DD`.
fn day_of(unix_seconds: i64) -> String {
    let date = time::OffsetDateTime::from_unix_timestamp(unix_seconds)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .date();
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// Returns the Unix time of 00:00:00 UTC on `day` (`YYYY-MM-DD`), 0 when it is invalid.
fn day_start(day: &str) -> i64 {
    let mut parts = day.splitn(3, '-').map(str::parse::<i32>);
    let (Some(Ok(year)), Some(Ok(month)), Some(Ok(day))) =
        (parts.next(), parts.next(), parts.next())
    else {
        return 0;
    };
    let month = u8::try_from(month)
        .ok()
        .and_then(|month| time::Month::try_from(month).ok());
    let (Some(month), Ok(day)) = (month, u8::try_from(day)) else {
        return 0;
    };
    time::Date::from_calendar_date(year, month, day)
        .map(|date| date.midnight().assume_utc().unix_timestamp())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_details_map_to_result_types() {
        let cases = [
            ("STARTTLS not offered", "starttls-not-supported"),
            (
                "TLS handshake failed: certificate expired",
                "certificate-expired",
            ),
            (
                "TLS handshake failed: certificate not valid for name mx.example",
                "certificate-host-mismatch",
            ),
            (
                "TLS handshake failed: unknown issuer",
                "certificate-not-trusted",
            ),
            (
                "TLS handshake failed: certificate does not match the DANE TLSA records",
                "validation-failure",
            ),
        ];
        for (detail, expected) in cases {
            assert_eq!(result_type_of(detail), expected, "{detail}");
        }
    }

    #[test]
    fn days_are_utc_dates() {
        assert_eq!(day_of(0), "1970-01-01");
        assert_eq!(day_of(1_764_806_400), "2025-12-04");
        assert_eq!(day_start("2025-12-04"), 1_764_806_400);
    }
}
