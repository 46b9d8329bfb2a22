use std::path::Path;

use super::*;

#[test]
fn report_uris_get_mailto_and_reject_separators() {
    let cases = [
        ("dmarc@example.org", false, Some("mailto:dmarc@example.org")),
        (
            "mailto:dmarc@example.org",
            false,
            Some("mailto:dmarc@example.org"),
        ),
        (
            "https://report.example.org/tlsrpt",
            true,
            Some("https://report.example.org/tlsrpt"),
        ),
        ("https://report.example.org/tlsrpt", false, None),
        ("a@example.org,b@example.org", false, None),
        ("a@example.org; p=none", false, None),
        ("no-at-sign", false, None),
        ("", true, None),
    ];
    for (uri, https, expected) in cases {
        assert_eq!(report_uri(uri, https).as_deref(), expected, "{uri}");
    }
}

#[test]
fn txt_split_keeps_strings_within_255_bytes() {
    let text = "x".repeat(600);
    let parts = split_txt(&text);
    assert_eq!(
        parts.iter().map(|part| part.len()).collect::<Vec<_>>(),
        [255, 255, 90]
    );
    assert_eq!(parts.concat(), text);
    assert_eq!(split_txt("short"), ["short"]);
    assert_eq!(split_txt(&"y".repeat(255)).len(), 1);
}

#[test]
fn spf_lists_addresses_or_notes_gap() {
    let mut settings = DnsRecordsConfig::default();
    let unset = spf_record(&settings, "example.org");
    assert!(unset.text.is_none());
    assert!(
        unset.notes[0].contains("outbound_addresses"),
        "{:?}",
        unset.notes
    );

    settings.outbound_addresses = vec![
        "192.0.2.25".parse().unwrap(),
        "2001:db8::25".parse().unwrap(),
    ];
    settings.outbound_hosts = vec!["Mail.Example.org".into()];
    let record = spf_record(&settings, "example.org");
    assert_eq!(
        record.text.as_deref(),
        Some("v=spf1 ip4:192.0.2.25 ip6:2001:db8::25 a:mail.example.org -all")
    );
    assert_eq!(
        record.zone_line().unwrap(),
        "example.org. IN TXT \"v=spf1 ip4:192.0.2.25 ip6:2001:db8::25 a:mail.example.org -all\""
    );
}

#[test]
fn dmarc_uses_placeholder_until_configured() {
    let mut settings = DnsRecordsConfig::default();
    let placeholder = dmarc_record(&settings, "example.org");
    assert_eq!(
        placeholder.text.as_deref(),
        Some("v=DMARC1; p=reject; rua=mailto:dmarc-reports@example.org")
    );
    assert!(
        placeholder.notes[0].starts_with("PLACEHOLDER"),
        "{:?}",
        placeholder.notes
    );

    settings.dmarc_rua = vec!["agg@example.org".into()];
    settings.dmarc_ruf = vec!["mailto:forensic@example.org".into()];
    let configured = dmarc_record(&settings, "example.org");
    assert_eq!(
        configured.text.as_deref(),
        Some("v=DMARC1; p=reject; rua=mailto:agg@example.org; ruf=mailto:forensic@example.org")
    );
    assert!(
        !configured
            .notes
            .iter()
            .any(|note| note.starts_with("PLACEHOLDER"))
    );
}

#[test]
fn config_section_is_validated() {
    let parse = |text: &str| Config::parse(text, Path::new("/etc/sealgate.toml"));
    let config = parse(
        "[dns_records]\noutbound_addresses = [\"192.0.2.25\"]\nmta_sts_mode = \"testing\"\n\
         mta_sts_max_age = \"1d\"\n",
    )
    .unwrap();
    assert_eq!(config.dns_records.mta_sts_mode, MtaStsMode::Testing);
    let cases = [
        (
            "[dns_records]\noutbound_addresses = [\"mail.example.org\"]\n",
            "key dns_records.outbound_addresses[0]",
        ),
        (
            "[dns_records]\ndmarc_rua = [\"https://x.example/\"]\n",
            "dns_records.dmarc_rua[0] = \"https://x.example/\": expected an address",
        ),
        (
            "[dns_records]\nmta_sts_mx = [\"-bad\"]\n",
            "dns_records.mta_sts_mx[0]",
        ),
        (
            "[dns_records]\nmta_sts_mode = \"strict\"\n",
            "key dns_records.mta_sts_mode",
        ),
    ];
    for (text, expected) in cases {
        let error = parse(text).err().unwrap().to_string();
        assert!(error.contains(expected), "{error}");
    }
}
