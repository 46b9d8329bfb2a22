//! `sealgate dns check`: looks up each record of [`super::expected_records`] and compares
//! what is published with what sealgate needs. Published records are parsed with
//! mail-auth's parsers, the ones receivers built on it use.

use std::net::IpAddr;

use hickory_resolver::TokioResolver;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::dmarc::{Dmarc, Policy};
use mail_auth::mta_sts::{MtaSts, ReportUri, TlsRpt};
use mail_auth::spf::{Mechanism, Qualifier, Spf};

use super::{DomainRecords, ExpectedRecord, RecordKind, txt_records};

/// The state of one published record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckOutcome {
    /// Published and as needed. The text, when any, names what was not compared.
    Present(Option<String>),
    /// Not published.
    Missing,
    /// Published but not usable or not as needed. The text gives the reason.
    Wrong(String),
    /// The lookup failed (SERVFAIL, timeout), so nothing is known.
    LookupFailed(String),
}

/// The check of one record.
#[derive(Clone, Debug)]
pub struct CheckResult {
    /// The expected record.
    pub expected: ExpectedRecord,
    /// The state found.
    pub outcome: CheckOutcome,
}

impl CheckResult {
    /// True when the record is present and as needed.
    pub fn is_ok(&self) -> bool {
        matches!(self.outcome, CheckOutcome::Present(_))
    }

    /// Returns the report lines: state, and the fix when one is needed.
    pub fn render(&self) -> String {
        let label = self.expected.kind.label();
        let name = &self.expected.name;
        let state = match &self.outcome {
            CheckOutcome::Present(None) => "present".to_owned(),
            CheckOutcome::Present(Some(remark)) => format!("present ({remark})"),
            CheckOutcome::Missing => "missing".to_owned(),
            CheckOutcome::Wrong(reason) => format!("wrong: {reason}"),
            CheckOutcome::LookupFailed(reason) => format!("lookup failed: {reason}"),
        };
        let mut text = format!("{label} {name}: {state}\n");
        if !self.is_ok() {
            match self.expected.zone_line() {
                Some(line) => text.push_str(&format!("  fix: publish {line}\n")),
                None => {
                    for note in &self.expected.notes {
                        text.push_str(&format!("  fix: {note}\n"));
                    }
                }
            }
        }
        text
    }
}

/// Looks up every record of `expected` and reports each as present, missing or wrong.
pub async fn check(expected: &DomainRecords, resolver: &TokioResolver) -> Vec<CheckResult> {
    let mut results = Vec::new();
    for record in &expected.records {
        let outcome = match txt_records(resolver, &record.name).await {
            Err(reason) => CheckOutcome::LookupFailed(reason),
            Ok(found) => compare(record, &found),
        };
        results.push(CheckResult {
            expected: record.clone(),
            outcome,
        });
    }
    results
}

/// Compares the TXT records found at a name with the expected record.
fn compare(expected: &ExpectedRecord, found: &[String]) -> CheckOutcome {
    let version = match expected.kind {
        RecordKind::Spf => "v=spf1",
        RecordKind::Dkim => "",
        RecordKind::Dmarc => "v=DMARC1",
        RecordKind::MtaSts => "v=STSv1",
        RecordKind::TlsRpt => "v=TLSRPTv1",
    };
    let candidates: Vec<&String> = found
        .iter()
        .filter(|text| starts_with_ignore_case(text.trim_start(), version))
        .collect();
    let record = match candidates.as_slice() {
        [] => return CheckOutcome::Missing,
        [one] => one.as_str(),
        // RFC 7208 §4.5, RFC 7489 §6.6.3, RFC 8461 §3.1, RFC 8460 §3: more than one
        // record of the kind is an error, or the records are ignored.
        _ if expected.kind != RecordKind::Dkim => {
            return CheckOutcome::Wrong(format!(
                "{} {} records published; there must be exactly one",
                candidates.len(),
                expected.kind.label()
            ));
        }
        [first, ..] => first.as_str(),
    };
    match expected.kind {
        RecordKind::Spf => compare_spf(expected, record),
        RecordKind::Dkim => compare_dkim(expected, &candidates),
        RecordKind::Dmarc => compare_dmarc(expected, record),
        RecordKind::MtaSts => match MtaSts::parse(record.as_bytes()) {
            Ok(_) => CheckOutcome::Present(Some(
                "the policy file at https://mta-sts.DOMAIN is not fetched".into(),
            )),
            Err(error) => CheckOutcome::Wrong(format!("does not parse: {error}")),
        },
        RecordKind::TlsRpt => compare_tls_rpt(expected, record),
    }
}

fn compare_spf(expected: &ExpectedRecord, record: &str) -> CheckOutcome {
    let spf = match Spf::parse(record.as_bytes()) {
        Ok(spf) => spf,
        Err(error) => return CheckOutcome::Wrong(format!("does not parse: {error}")),
    };
    if spf.directives.iter().any(|directive| {
        directive.qualifier == Qualifier::Pass && directive.mechanism == Mechanism::All
    }) {
        return CheckOutcome::Wrong("+all lets every server send as this domain".into());
    }
    let Some(text) = &expected.text else {
        return CheckOutcome::Present(Some(
            "not compared: dns_records.outbound_addresses is not set".into(),
        ));
    };
    for term in text.split_whitespace() {
        if let Some(address) = term
            .strip_prefix("ip4:")
            .or_else(|| term.strip_prefix("ip6:"))
            .and_then(|address| address.parse::<IpAddr>().ok())
        {
            if !spf_allows(&spf, address) {
                return CheckOutcome::Wrong(format!("{address} is not allowed by an ip4/ip6 term"));
            }
        } else if let Some(host) = term.strip_prefix("a:") {
            let listed = record.split_whitespace().any(|published| {
                let published = published.trim_start_matches('+');
                published.eq_ignore_ascii_case(&format!("a:{host}"))
            });
            if !listed {
                return CheckOutcome::Wrong(format!("a:{host} is not listed"));
            }
        }
    }
    CheckOutcome::Present(None)
}

/// True when a pass `ip4:` or `ip6:` directive covers `address`.
fn spf_allows(spf: &Spf, address: IpAddr) -> bool {
    spf.directives.iter().any(|directive| {
        if directive.qualifier != Qualifier::Pass {
            return false;
        }
        match (&directive.mechanism, address) {
            (Mechanism::Ip4 { addr, mask }, IpAddr::V4(candidate)) => {
                u32::from(*addr) & mask == u32::from(candidate) & mask
            }
            (Mechanism::Ip6 { addr, mask }, IpAddr::V6(candidate)) => {
                u128::from(*addr) & mask == u128::from(candidate) & mask
            }
            _ => false,
        }
    })
}

fn compare_dkim(expected: &ExpectedRecord, found: &[&String]) -> CheckOutcome {
    let Some(public_key) = &expected.dkim_public_key else {
        return CheckOutcome::Present(Some("no key configured to compare with".into()));
    };
    let mut reason = String::from("no record with a p= tag");
    for record in found {
        if let Err(error) = DomainKey::parse(record.as_bytes()) {
            reason = format!("does not parse: {error}");
            continue;
        }
        match tag_value(record, "p") {
            Some(published) if published == *public_key => return CheckOutcome::Present(None),
            Some(published) if published.is_empty() => {
                reason = "the key is revoked (empty p=)".into();
            }
            Some(_) => reason = "p= is a different key than the configured one".into(),
            None => {}
        }
    }
    CheckOutcome::Wrong(reason)
}

fn compare_dmarc(expected: &ExpectedRecord, record: &str) -> CheckOutcome {
    let dmarc = match Dmarc::parse(record.as_bytes()) {
        Ok(dmarc) => dmarc,
        Err(error) => return CheckOutcome::Wrong(format!("does not parse: {error}")),
    };
    let policy = match dmarc.p {
        Policy::Reject => None,
        Policy::Quarantine => Some("quarantine"),
        Policy::None => Some("none"),
        Policy::Unspecified => Some("missing"),
    };
    if let Some(policy) = policy {
        return CheckOutcome::Wrong(format!(
            "p={policy}; p=reject makes receivers refuse forged mail"
        ));
    }
    let published: Vec<String> = dmarc.rua.iter().map(|uri| uri.uri.clone()).collect();
    for uri in configured_uris(expected) {
        let address = uri.strip_prefix("mailto:").unwrap_or(&uri);
        if !published
            .iter()
            .any(|found| found.eq_ignore_ascii_case(address))
        {
            return CheckOutcome::Wrong(format!("rua does not list {uri}"));
        }
    }
    CheckOutcome::Present(None)
}

fn compare_tls_rpt(expected: &ExpectedRecord, record: &str) -> CheckOutcome {
    let report = match TlsRpt::parse(record.as_bytes()) {
        Ok(report) => report,
        Err(error) => return CheckOutcome::Wrong(format!("does not parse: {error}")),
    };
    let published: Vec<String> = report
        .rua
        .iter()
        .map(|uri| match uri {
            ReportUri::Mail(address) => format!("mailto:{address}"),
            ReportUri::Http(url) => url.clone(),
        })
        .collect();
    for uri in configured_uris(expected) {
        if !published
            .iter()
            .any(|found| found.eq_ignore_ascii_case(&uri))
        {
            return CheckOutcome::Wrong(format!("rua does not list {uri}"));
        }
    }
    CheckOutcome::Present(None)
}

/// Returns the `rua` URIs of an expected record, or none when they are a placeholder.
fn configured_uris(expected: &ExpectedRecord) -> Vec<String> {
    if expected
        .notes
        .iter()
        .any(|note| note.starts_with("PLACEHOLDER"))
    {
        return Vec::new();
    }
    expected
        .text
        .as_deref()
        .and_then(|text| tag_value(text, "rua"))
        .map(|value| value.split(',').map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Returns the value of tag `name` in a `tag=value; ...` list, with whitespace removed.
fn tag_value(record: &str, name: &str) -> Option<String> {
    record.split(';').find_map(|pair| {
        let (tag, value) = pair.split_once('=')?;
        tag.trim()
            .eq_ignore_ascii_case(name)
            .then(|| value.chars().filter(|ch| !ch.is_whitespace()).collect())
    })
}

fn starts_with_ignore_case(text: &str, prefix: &str) -> bool {
    text.get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(kind: RecordKind, text: &str) -> ExpectedRecord {
        ExpectedRecord {
            kind,
            name: "example.org".into(),
            text: Some(text.into()),
            notes: Vec::new(),
            dkim_public_key: None,
        }
    }

    #[test]
    fn spf_outcomes() {
        let expected_record = expected(
            RecordKind::Spf,
            "v=spf1 ip4:192.0.2.25 ip6:2001:db8::25 -all",
        );
        let cases = [
            (vec![], CheckOutcome::Missing),
            (
                vec!["v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all".to_owned()],
                CheckOutcome::Present(None),
            ),
            (
                vec!["v=spf1 ip4:198.51.100.1 ip6:2001:db8::25 -all".to_owned()],
                CheckOutcome::Wrong("192.0.2.25 is not allowed by an ip4/ip6 term".into()),
            ),
            (
                vec!["v=spf1 +all".to_owned()],
                CheckOutcome::Wrong("+all lets every server send as this domain".into()),
            ),
            (
                vec!["v=spf1 -all".to_owned(), "v=spf1 ~all".to_owned()],
                CheckOutcome::Wrong("2 SPF records published; there must be exactly one".into()),
            ),
            (
                vec!["google-site-verification=abc".to_owned()],
                CheckOutcome::Missing,
            ),
        ];
        for (found, outcome) in cases {
            assert_eq!(compare(&expected_record, &found), outcome, "{found:?}");
        }
    }

    #[test]
    fn dmarc_needs_reject_and_configured_rua() {
        let expected_record = expected(
            RecordKind::Dmarc,
            "v=DMARC1; p=reject; rua=mailto:dmarc@example.org",
        );
        let present = compare(
            &expected_record,
            &["v=DMARC1; p=reject; rua=mailto:dmarc@example.org".into()],
        );
        assert_eq!(present, CheckOutcome::Present(None));
        let weak = compare(
            &expected_record,
            &["v=DMARC1; p=none; rua=mailto:dmarc@example.org".into()],
        );
        assert!(
            matches!(weak, CheckOutcome::Wrong(ref reason) if reason.contains("p=reject")),
            "{weak:?}"
        );
        let other_rua = compare(
            &expected_record,
            &["v=DMARC1; p=reject; rua=mailto:x@example.net".into()],
        );
        assert!(
            matches!(other_rua, CheckOutcome::Wrong(ref reason) if reason.contains("rua does not list")),
            "{other_rua:?}"
        );
    }

    #[test]
    fn tls_rpt_and_mta_sts_parse() {
        let expected_record =
            expected(RecordKind::TlsRpt, "v=TLSRPTv1; rua=mailto:tls@example.org");
        assert_eq!(
            compare(
                &expected_record,
                &["v=TLSRPTv1; rua=mailto:tls@example.org".into()]
            ),
            CheckOutcome::Present(None)
        );
        let sts = expected(RecordKind::MtaSts, "v=STSv1; id=abc");
        assert!(matches!(
            compare(&sts, &["v=STSv1; id=20260101".into()]),
            CheckOutcome::Present(Some(_))
        ));
        assert!(matches!(
            compare(&sts, &["v=STSv1;".into()]),
            CheckOutcome::Wrong(_)
        ));
    }

    #[test]
    fn dkim_compares_public_key() {
        let mut expected_record = expected(RecordKind::Dkim, "v=DKIM1; k=ed25519; p=AAAA");
        let key = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
        expected_record.dkim_public_key = Some(key.into());
        let same = format!("v=DKIM1; k=ed25519; p={key}");
        assert_eq!(
            compare(&expected_record, &[same]),
            CheckOutcome::Present(None)
        );
        let other = "v=DKIM1; k=ed25519; p=2Kb3WDdCbQ0nzSGBXl3ZEMD1KP/vbl4Q6AT+SDDGxPQ=".to_owned();
        assert!(matches!(
            compare(&expected_record, &[other]),
            CheckOutcome::Wrong(_)
        ));
        let revoked = "v=DKIM1; k=ed25519; p=".to_owned();
        assert!(matches!(
            compare(&expected_record, &[revoked]),
            CheckOutcome::Wrong(_)
        ));
    }
}
