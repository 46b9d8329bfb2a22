//! The DNS records a sending domain publishes so that receivers can authenticate the mail
//! sealgate sends for it. They are SPF (RFC 7208), the DKIM key records (RFC 6376), DMARC
//! (RFC 7489), MTA-STS (RFC 8461) with its policy file, and TLS-RPT (RFC 8460).
//!
//! `sealgate dns records DOMAIN` prints them from the config; [`check`] looks each one up
//! with the resolver delivery uses and compares. The MTA-STS policy file is printed but
//! never fetched, so `dns check` reports only its TXT record.

mod check;

use std::fmt::Write;
use std::net::IpAddr;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{Config, ConfigDuration, ConfigError, is_domain_name};
use crate::dkim::{self, DkimError, split_txt};

pub use check::{CheckOutcome, CheckResult, check};

/// `[dns_records]`: the gateway's public addresses and report destinations, which only the
/// operator can supply, for the records the sending domains publish.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsRecordsConfig {
    /// Public IPv4 and IPv6 addresses that outbound mail leaves from, written as SPF
    /// `ip4:` and `ip6:`. Default: none.
    pub outbound_addresses: Vec<IpAddr>,
    /// Host names whose A and AAAA records are those addresses, written as SPF `a:`.
    /// Default: none.
    pub outbound_hosts: Vec<String>,
    /// DMARC aggregate report addresses (`rua`), as `mailto:` URIs or plain addresses.
    /// Default: none, and a marked placeholder is printed.
    pub dmarc_rua: Vec<String>,
    /// DMARC failure report addresses (`ruf`). Failure reports can carry headers and
    /// content of the failed message, so none are asked for unless set. Default: none.
    pub dmarc_ruf: Vec<String>,
    /// TLS-RPT report destinations (`rua`), as `mailto:` or `https:` URIs or plain
    /// addresses. Default: none, and a marked placeholder is printed.
    pub tls_rpt_rua: Vec<String>,
    /// MX host names for the MTA-STS policy. Default: the domain's MX records in DNS.
    pub mta_sts_mx: Vec<String>,
    /// MTA-STS policy mode: `enforce`, `testing` or `none`. Default: `enforce`.
    pub mta_sts_mode: MtaStsMode,
    /// MTA-STS policy `max_age`. Default: `7d`.
    pub mta_sts_max_age: ConfigDuration,
}

/// The `mode` of an MTA-STS policy (RFC 8461 §3.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MtaStsMode {
    /// Senders must not deliver without a valid certificate for a listed MX.
    #[default]
    Enforce,
    /// Senders report failures but still deliver.
    Testing,
    /// The policy is withdrawn.
    None,
}

impl MtaStsMode {
    fn as_str(self) -> &'static str {
        match self {
            MtaStsMode::Enforce => "enforce",
            MtaStsMode::Testing => "testing",
            MtaStsMode::None => "none",
        }
    }
}

impl Default for DnsRecordsConfig {
    fn default() -> Self {
        DnsRecordsConfig {
            outbound_addresses: Vec::new(),
            outbound_hosts: Vec::new(),
            dmarc_rua: Vec::new(),
            dmarc_ruf: Vec::new(),
            tls_rpt_rua: Vec::new(),
            mta_sts_mx: Vec::new(),
            mta_sts_mode: MtaStsMode::Enforce,
            mta_sts_max_age: ConfigDuration::secs(7 * 86_400),
        }
    }
}

impl DnsRecordsConfig {
    pub(crate) fn validate(&self, path: &std::path::Path) -> Result<(), ConfigError> {
        let invalid = |key: String, value: &str, reason: &str| {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                key,
                value: format!("{value:?}"),
                reason: reason.to_owned(),
            })
        };
        for (key, names) in [
            ("dns_records.outbound_hosts", &self.outbound_hosts),
            ("dns_records.mta_sts_mx", &self.mta_sts_mx),
        ] {
            for (index, name) in names.iter().enumerate() {
                let bare = name.strip_prefix("*.").unwrap_or(name);
                if !is_domain_name(bare) {
                    return invalid(format!("{key}[{index}]"), name, "expected a host name");
                }
            }
        }
        for (key, uris, https_allowed) in [
            ("dns_records.dmarc_rua", &self.dmarc_rua, false),
            ("dns_records.dmarc_ruf", &self.dmarc_ruf, false),
            ("dns_records.tls_rpt_rua", &self.tls_rpt_rua, true),
        ] {
            for (index, uri) in uris.iter().enumerate() {
                if report_uri(uri, https_allowed).is_none() {
                    let expected = if https_allowed {
                        "expected an address, mailto:address or https:// URL"
                    } else {
                        "expected an address or mailto:address"
                    };
                    return invalid(format!("{key}[{index}]"), uri, expected);
                }
            }
        }
        if self.mta_sts_max_age.0.as_secs() == 0 {
            return invalid(
                "dns_records.mta_sts_max_age".into(),
                &self.mta_sts_max_age.to_string(),
                "must be at least 1s",
            );
        }
        Ok(())
    }
}

/// Returns `uri` as a report URI: plain addresses get `mailto:`; `None` when it is neither
/// an address nor, where allowed, an `https://` URL. Commas, semicolons and spaces would
/// split the record's tag list, so they are never allowed.
fn report_uri(uri: &str, https_allowed: bool) -> Option<String> {
    if uri.is_empty() || uri.contains([',', ';', ' ', '!', '"']) || !uri.is_ascii() {
        return None;
    }
    if https_allowed && let Some(rest) = uri.strip_prefix("https://") {
        return (!rest.is_empty()).then(|| uri.to_owned());
    }
    let address = uri.strip_prefix("mailto:").unwrap_or(uri);
    let (local, domain) = address.rsplit_once('@')?;
    (!local.is_empty() && is_domain_name(domain)).then(|| format!("mailto:{address}"))
}

/// The kind of a record, for labels in the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// SPF TXT record at the domain.
    Spf,
    /// DKIM public key TXT record at `SELECTOR._domainkey.DOMAIN`.
    Dkim,
    /// DMARC TXT record at `_dmarc.DOMAIN`.
    Dmarc,
    /// MTA-STS TXT record at `_mta-sts.DOMAIN`.
    MtaSts,
    /// TLS-RPT TXT record at `_smtp._tls.DOMAIN`.
    TlsRpt,
}

impl RecordKind {
    /// Returns the label used in output, such as `DKIM`.
    pub fn label(self) -> &'static str {
        match self {
            RecordKind::Spf => "SPF",
            RecordKind::Dkim => "DKIM",
            RecordKind::Dmarc => "DMARC",
            RecordKind::MtaSts => "MTA-STS",
            RecordKind::TlsRpt => "TLS-RPT",
        }
    }
}

/// One TXT record the domain should publish.
#[derive(Clone, Debug)]
pub struct ExpectedRecord {
    /// The record's purpose.
    pub kind: RecordKind,
    /// Owner name without the trailing dot, such as `_dmarc.example.org`.
    pub name: String,
    /// Record text. `None` when the config lacks what the record needs (SPF without
    /// outbound addresses).
    pub text: Option<String>,
    /// Remarks printed above the record: placeholders, missing config.
    pub notes: Vec<String>,
    /// For DKIM, the expected `p=` value, compared by `dns check`.
    pub dkim_public_key: Option<String>,
}

impl ExpectedRecord {
    /// Returns the record as a zone file line, with the text split into strings of at
    /// most 255 bytes; `None` when there is no text.
    pub fn zone_line(&self) -> Option<String> {
        let text = self.text.as_deref()?;
        let strings: Vec<String> = split_txt(text)
            .into_iter()
            .map(|part| format!("\"{part}\""))
            .collect();
        Some(format!("{}. IN TXT {}", self.name, strings.join(" ")))
    }
}

/// Everything one domain publishes.
#[derive(Clone, Debug)]
pub struct DomainRecords {
    /// The domain, lowercase.
    pub domain: String,
    /// TXT records in the order SPF, DKIM, DMARC, MTA-STS, TLS-RPT.
    pub records: Vec<ExpectedRecord>,
    /// The MTA-STS policy file, with CRLF line endings (RFC 8461 §3.2).
    pub mta_sts_policy: String,
    /// Remarks about the policy file.
    pub mta_sts_notes: Vec<String>,
}

/// A record set that could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    /// The argument is not a domain name.
    #[error("invalid domain {0:?}: expected a domain name such as example.org")]
    Domain(String),
    /// A DKIM key file of the domain could not be read.
    #[error(transparent)]
    Dkim(#[from] DkimError),
}

/// Builds the records `domain` publishes. `resolver` is used for the MX names of the
/// MTA-STS policy when `dns_records.mta_sts_mx` is empty.
///
/// # Errors
///
/// [`RecordsError::Domain`] for a bad domain, [`RecordsError::Dkim`] when a key file of
/// the domain cannot be read.
pub async fn expected_records(
    config: &Config,
    domain: &str,
    resolver: &TokioResolver,
) -> Result<DomainRecords, RecordsError> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    if !is_domain_name(&domain) || !domain.contains('.') {
        return Err(RecordsError::Domain(domain));
    }
    let settings = &config.dns_records;
    let mut records = vec![spf_record(settings, &domain)];

    for entry in config
        .dkim
        .iter()
        .filter(|entry| entry.domain.eq_ignore_ascii_case(&domain))
    {
        let path = config.key_path(&entry.key_file());
        let text = dkim::record_for_key_file(&path, entry.algorithm)?;
        let public_key = text.rsplit_once("p=").map(|(_, key)| key.to_owned());
        records.push(ExpectedRecord {
            kind: RecordKind::Dkim,
            name: format!(
                "{}._domainkey.{domain}",
                entry.selector.to_ascii_lowercase()
            ),
            text: Some(text),
            notes: vec![format!(
                "key {} ({}, {})",
                entry.selector,
                entry.algorithm.as_str(),
                path.display()
            )],
            dkim_public_key: public_key,
        });
    }
    if !config
        .dkim
        .iter()
        .any(|entry| entry.domain.eq_ignore_ascii_case(&domain))
    {
        records.push(ExpectedRecord {
            kind: RecordKind::Dkim,
            name: format!("SELECTOR._domainkey.{domain}"),
            text: None,
            notes: vec![format!(
                "no [[dkim]] key for {domain}: create one with `sealgate dkim generate {domain} SELECTOR`"
            )],
            dkim_public_key: None,
        });
    }

    records.push(dmarc_record(settings, &domain));

    let (mta_sts_policy, mta_sts_notes) = mta_sts_policy(settings, &domain, resolver).await;
    let digest = Sha256::digest(mta_sts_policy.as_bytes());
    let id: String = digest[..8].iter().fold(String::new(), |mut id, byte| {
        let _ = write!(id, "{byte:02x}");
        id
    });
    records.push(ExpectedRecord {
        kind: RecordKind::MtaSts,
        name: format!("_mta-sts.{domain}"),
        text: Some(format!("v=STSv1; id={id}")),
        notes: vec![
            "the id is a hash of the policy file below, so it changes when the policy does".into(),
        ],
        dkim_public_key: None,
    });
    records.push(report_record(
        RecordKind::TlsRpt,
        format!("_smtp._tls.{domain}"),
        "v=TLSRPTv1",
        &settings.tls_rpt_rua,
        true,
        &format!("tls-reports@{domain}"),
        "dns_records.tls_rpt_rua",
    ));

    Ok(DomainRecords {
        domain,
        records,
        mta_sts_policy,
        mta_sts_notes,
    })
}

fn spf_record(settings: &DnsRecordsConfig, domain: &str) -> ExpectedRecord {
    let name = domain.to_owned();
    if settings.outbound_addresses.is_empty() && settings.outbound_hosts.is_empty() {
        return ExpectedRecord {
            kind: RecordKind::Spf,
            name,
            text: None,
            notes: vec![
                "not written: dns_records.outbound_addresses and dns_records.outbound_hosts \
                 are not set, so the addresses sealgate sends from are unknown"
                    .into(),
            ],
            dkim_public_key: None,
        };
    }
    let mut text = String::from("v=spf1");
    for address in &settings.outbound_addresses {
        match address {
            IpAddr::V4(v4) => {
                let _ = write!(text, " ip4:{v4}");
            }
            IpAddr::V6(v6) => {
                let _ = write!(text, " ip6:{v6}");
            }
        }
    }
    for host in &settings.outbound_hosts {
        let _ = write!(text, " a:{}", host.to_ascii_lowercase());
    }
    // All of the domain's mail leaves through sealgate, so anything else fails.
    text.push_str(" -all");
    ExpectedRecord {
        kind: RecordKind::Spf,
        name,
        text: Some(text),
        notes: vec!["add the other servers that send as this domain, if any, before -all".into()],
        dkim_public_key: None,
    }
}

fn dmarc_record(settings: &DnsRecordsConfig, domain: &str) -> ExpectedRecord {
    let mut record = report_record(
        RecordKind::Dmarc,
        format!("_dmarc.{domain}"),
        "v=DMARC1; p=reject",
        &settings.dmarc_rua,
        false,
        &format!("dmarc-reports@{domain}"),
        "dns_records.dmarc_rua",
    );
    let ruf: Vec<String> = settings
        .dmarc_ruf
        .iter()
        .filter_map(|uri| report_uri(uri, false))
        .collect();
    if let Some(text) = &mut record.text
        && !ruf.is_empty()
    {
        let _ = write!(text, "; ruf={}", ruf.join(","));
    }
    record
        .notes
        .push("p=reject: receivers refuse mail from this domain that fails DKIM and SPF".into());
    record
}

/// Builds a record of the form `PREFIX; rua=URI,...`, with a marked placeholder URI when
/// none is configured.
fn report_record(
    kind: RecordKind,
    name: String,
    prefix: &str,
    configured: &[String],
    https_allowed: bool,
    placeholder: &str,
    key: &str,
) -> ExpectedRecord {
    let mut uris: Vec<String> = configured
        .iter()
        .filter_map(|uri| report_uri(uri, https_allowed))
        .collect();
    let mut notes = Vec::new();
    if uris.is_empty() {
        uris.push(format!("mailto:{placeholder}"));
        notes.push(format!(
            "PLACEHOLDER: rua=mailto:{placeholder} is an example; set {key} to the real report address"
        ));
    }
    ExpectedRecord {
        kind,
        name,
        text: Some(format!("{prefix}; rua={}", uris.join(","))),
        notes,
        dkim_public_key: None,
    }
}

/// Writes the MTA-STS policy file, with the MX names from the config or from DNS.
async fn mta_sts_policy(
    settings: &DnsRecordsConfig,
    domain: &str,
    resolver: &TokioResolver,
) -> (String, Vec<String>) {
    let mut notes = Vec::new();
    let mut hosts: Vec<String> = settings
        .mta_sts_mx
        .iter()
        .map(|host| host.to_ascii_lowercase())
        .collect();
    if hosts.is_empty() {
        match resolver.mx_lookup(format!("{domain}.")).await {
            Ok(lookup) => {
                let mut exchanges: Vec<(u16, String)> = lookup
                    .answers()
                    .iter()
                    .filter_map(|record| match &record.data {
                        RData::MX(mx) => Some((
                            mx.preference,
                            mx.exchange
                                .to_ascii()
                                .trim_end_matches('.')
                                .to_ascii_lowercase(),
                        )),
                        _ => None,
                    })
                    .filter(|(_, host)| !host.is_empty())
                    .collect();
                exchanges.sort();
                hosts = exchanges.into_iter().map(|(_, host)| host).collect();
                hosts.dedup();
                notes.push(format!("mx lines from the MX records of {domain} in DNS"));
            }
            Err(error) => notes.push(format!("MX lookup for {domain} failed: {error}")),
        }
    }
    if hosts.is_empty() {
        hosts.push(format!("mx.{domain}"));
        notes.push(format!(
            "PLACEHOLDER: mx: mx.{domain} is an example; set dns_records.mta_sts_mx to the MX host names"
        ));
    }
    let mut policy = format!(
        "version: STSv1\r\nmode: {}\r\n",
        settings.mta_sts_mode.as_str()
    );
    for host in &hosts {
        let _ = write!(policy, "mx: {host}\r\n");
    }
    let _ = write!(
        policy,
        "max_age: {}\r\n",
        settings.mta_sts_max_age.0.as_secs()
    );
    (policy, notes)
}

/// Returns the text `sealgate dns records` prints: zone file lines with `;` comments, and
/// the policy file between marker lines.
pub fn render(records: &DomainRecords) -> String {
    let mut out = format!("; DNS records for {}\n", records.domain);
    for record in &records.records {
        let _ = writeln!(out, "\n; {}", record.kind.label());
        for note in &record.notes {
            let _ = writeln!(out, "; {note}");
        }
        if let Some(line) = record.zone_line() {
            let _ = writeln!(out, "{line}");
        }
    }
    let _ = writeln!(
        out,
        "\n; MTA-STS policy: serve this file as text/plain at https://mta-sts.{}/.well-known/mta-sts.txt",
        records.domain
    );
    for note in &records.mta_sts_notes {
        let _ = writeln!(out, "; {note}");
    }
    let _ = writeln!(out, "; ----- begin mta-sts.txt -----");
    out.push_str(&records.mta_sts_policy.replace("\r\n", "\n"));
    let _ = writeln!(out, "; ----- end mta-sts.txt -----");
    out
}

/// Returns the TXT records at `name`, each with its strings joined (RFC 7208 §3.3). An
/// empty list means the name has no TXT records or does not exist.
async fn txt_records(resolver: &TokioResolver, name: &str) -> Result<Vec<String>, String> {
    match resolver.txt_lookup(format!("{name}.")).await {
        Ok(lookup) => Ok(lookup
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                RData::TXT(txt) => Some(
                    txt.txt_data
                        .iter()
                        .map(|part| String::from_utf8_lossy(part).into_owned())
                        .collect::<String>(),
                ),
                _ => None,
            })
            .collect()),
        Err(error) if error.is_no_records_found() => Ok(Vec::new()),
        Err(error) => Err(error.to_string()),
    }
}

#[cfg(test)]
mod tests;
