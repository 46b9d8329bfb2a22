//! Whole-message tests: the sample messages, a golden file of their reasons, and bad input.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::*;

fn classifier() -> Classifier {
    Classifier::new(&ClassifyConfig::default()).unwrap()
}

fn classify(message: &str) -> Classification {
    classifier().classify(message.as_bytes())
}

fn reasons(classification: &Classification) -> Vec<String> {
    classification
        .matches
        .iter()
        .map(|m| m.to_string())
        .collect()
}

fn rules_of(classification: &Classification) -> Vec<&str> {
    classification
        .matches
        .iter()
        .map(|m| m.rule.as_str())
        .collect()
}

fn lf_only(message: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(message)
        .replace("\r\n", "\n")
        .into_bytes()
}

fn samples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/samples")
}

fn samples() -> Vec<(String, Vec<u8>)> {
    let mut found: Vec<(String, Vec<u8>)> = std::fs::read_dir(samples_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "eml"))
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    found.sort();
    assert!(
        !found.is_empty(),
        "no .eml files in {}",
        samples_dir().display()
    );
    found
}

/// Expected rules for each sample, in the order they match.
const SAMPLE_RULES: [(&str, &[&str]); 7] = [
    ("01-referral-secure-tag.eml", &["subject-tag", "nhs-number"]),
    ("02-results-to-patient.eml", &["subject-tag", "nhs-number"]),
    ("03-unmarked-nhs-number.eml", &["nhs-number"]),
    ("04-official-sensitive.eml", &["marking", "marking"]),
    ("05-newsletter-not-sensitive.eml", &[]),
    ("06-mixed-recipients.eml", &["subject-tag", "nhs-number"]),
    ("07-wrong-check-digit.eml", &[]),
];

#[test]
fn samples_get_expected_rules() {
    let classifier = classifier();
    let samples = samples();
    assert_eq!(samples.len(), SAMPLE_RULES.len());
    for ((name, message), (expected_name, expected_rules)) in samples.iter().zip(SAMPLE_RULES) {
        assert_eq!(name, expected_name);
        let classification = classifier.classify(message);
        assert_eq!(rules_of(&classification), expected_rules, "{name}");
        let expected_action = (!expected_rules.is_empty()).then_some(Action::Protect);
        assert_eq!(classification.action, expected_action, "{name}");
    }
}

#[test]
fn samples_classify_alike_with_lf_only() {
    let classifier = classifier();
    for (name, message) in samples() {
        let crlf = classifier.classify(&message);
        let lf = classifier.classify(&lf_only(&message));
        assert_eq!(crlf, lf, "{name}");
    }
}

/// Compares every sample's reasons with `tests/fixtures/classify/samples.expected`. On a
/// difference it writes `samples.actual` next to it, so the two can be compared.
#[test]
fn sample_reasons_match_golden_file() {
    let classifier = classifier();
    let mut actual = String::new();
    for (name, message) in samples() {
        actual.push_str(&format!("{name}\n"));
        for reason in reasons(&classifier.classify(&message)) {
            actual.push_str(&format!("  {reason}\n"));
        }
    }
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/classify");
    let expected_path = folder.join("samples.expected");
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
    if actual != expected {
        let actual_path = folder.join("samples.actual");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(&actual_path, &actual).unwrap();
        panic!(
            "reasons differ from {}; see {}",
            expected_path.display(),
            actual_path.display()
        );
    }
}

#[test]
fn sample_reasons_name_no_nhs_number() {
    let classifier = classifier();
    for (name, message) in samples() {
        for reason in reasons(&classifier.classify(&message)) {
            let digits: String = reason.chars().filter(char::is_ascii_digit).collect();
            assert!(!digits.contains("999000"), "{name}: {reason}");
        }
    }
}

#[test]
fn review_wins_over_protect() {
    let mut config = ClassifyConfig::default();
    config.nhs_number.action = Action::Review;
    let classification = Classifier::new(&config)
        .unwrap()
        .classify(b"Subject: [secure] x\r\n\r\nNHS 943 476 5919\r\n");
    assert_eq!(rules_of(&classification), ["subject-tag", "nhs-number"]);
    assert_eq!(classification.action, Some(Action::Review));
    assert!(Action::Review > Action::Protect);
}

#[test]
fn invalid_regex_is_rejected_by_new() {
    let mut config = ClassifyConfig::default();
    config.patterns.push(PatternRule {
        name: "broken".into(),
        regex: "[a-".into(),
        min_count: 1,
        action: Action::Protect,
    });
    let error = Classifier::new(&config).unwrap_err().to_string();
    assert!(
        error
            .starts_with("policy.classify.patterns[0].regex = \"[a-\": invalid regular expression"),
        "{error}"
    );
}

#[test]
fn pattern_matches_in_text_attachment() {
    let mut config = ClassifyConfig::default();
    config.patterns.push(PatternRule {
        name: "hospital-number".into(),
        regex: r"\bRX[0-9]{6}\b".into(),
        min_count: 2,
        action: Action::Review,
    });
    let message = "Content-Type: multipart/mixed; boundary=b\r\n\r\n\
                   --b\r\nContent-Type: text/plain\r\n\r\nRX123456 only one here\r\n\
                   --b\r\nContent-Type: application/octet-stream\r\n\
                   Content-Disposition: attachment; filename=\"list.csv\"\r\n\
                   Content-Transfer-Encoding: base64\r\n\r\n"
        .to_owned()
        + &STANDARD.encode("RX000001,RX000002,RX000003\n")
        + "\r\n--b--\r\n";
    let classification = Classifier::new(&config)
        .unwrap()
        .classify(message.as_bytes());
    assert_eq!(
        reasons(&classification),
        [
            "pattern:hospital-number in attachment in part 2: 3 matches, at least 2 required (review)"
        ]
    );
}

#[test]
fn pdf_attachment_is_read_as_text() {
    let message = "Content-Type: multipart/mixed; boundary=b\r\n\r\n\
                   --b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n\
                   --b\r\nContent-Type: application/pdf\r\n\
                   Content-Disposition: attachment; filename=\"scan.pdf\"\r\n\r\n\
                   9434765919\r\n--b--\r\n";
    assert_eq!(
        reasons(&classify(message)),
        ["nhs-number in attachment in part 2: 1 NHS number with a valid check digit (protect)"]
    );
}

// Bad input.

#[test]
fn mislabelled_utf16_charset_still_finds_number() {
    let message = "Content-Type: text/plain; charset=utf-16\r\n\r\nNHS 943 476 5919\r\n";
    let classification = classify(message);
    assert_eq!(rules_of(&classification), ["nhs-number"]);
}

#[test]
fn unknown_and_wrong_charsets_are_read() {
    let cases: [&[u8]; 3] = [
        b"Content-Type: text/plain; charset=x-made-up\r\n\r\n9434765919\r\n",
        b"Content-Type: text/plain; charset=us-ascii\r\n\r\ncaf\xe9 9434765919\r\n",
        b"Content-Type: text/plain; charset=utf-8\r\n\r\n\xff\xfe 9434765919 \xc3\r\n",
    ];
    let classifier = classifier();
    for message in cases {
        let classification = classifier.classify(message);
        assert_eq!(rules_of(&classification), ["nhs-number"], "{message:?}");
    }
}

#[test]
fn quoted_printable_and_base64_parts_are_decoded() {
    let message = "Content-Type: multipart/alternative; boundary=b\r\n\r\n\
                   --b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
                   NHS 943=20476=\r\n 5919\r\n\
                   --b\r\nContent-Type: text/html; charset=iso-8859-1\r\n\
                   Content-Transfer-Encoding: base64\r\n\r\n"
        .to_owned()
        + &STANDARD.encode("<p>NHS&nbsp;943&nbsp;476&nbsp;5919</p>")
        + "\r\n--b--\r\n";
    let classification = classify(&message);
    let locations: Vec<&str> = classification
        .matches
        .iter()
        .map(|m| m.location.as_str())
        .collect();
    assert_eq!(locations, ["part 1 text/plain", "part 2 text/html"]);
}

#[test]
fn missing_boundary_parameter_is_unparseable() {
    let message = "Content-Type: multipart/mixed\r\n\r\n--b\r\n\r\n9434765919\r\n--b--\r\n";
    let classification = classify(message);
    assert_eq!(
        reasons(&classification),
        ["unparseable in message: boundary of multipart part 1 not found (protect)"]
    );
}

#[test]
fn near_miss_boundary_is_unparseable() {
    let encoded = STANDARD.encode("NHS 943 476 5919");
    let message = format!(
        "Content-Type: multipart/mixed; boundary=\"abc\"\r\n\r\n\
         --abd\r\nContent-Transfer-Encoding: base64\r\n\r\n{encoded}\r\n--abd--\r\n"
    );
    let classification = classify(&message);
    assert_eq!(rules_of(&classification), ["unparseable"]);
    assert_eq!(classification.action, Some(Action::Protect));
}

#[test]
fn missing_closing_boundary_is_still_read() {
    let message = "Content-Type: multipart/mixed; boundary=b\r\n\r\n\
                   --b\r\nContent-Type: text/plain\r\n\r\nhello\r\n\
                   --b\r\nContent-Type: text/plain\r\n\r\nNHS 943 476 5919\r\n";
    let classification = classify(message);
    assert!(classification.is_sensitive(), "{classification:?}");
}

#[test]
fn invalid_base64_part_is_sensitive() {
    let message = "Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n\
                   !!!! not base64 9434765919 ****\r\n";
    assert!(classify(message).is_sensitive());
}

#[test]
fn nested_message_hides_no_sensitive_part() {
    let inner_text = STANDARD.encode("Discharge summary, NHS 943 476 5919");
    let message = format!(
        "Subject: FW: notes\r\nContent-Type: multipart/mixed; boundary=outer\r\n\r\n\
         --outer\r\nContent-Type: text/plain\r\n\r\nsee below\r\n\
         --outer\r\nContent-Type: message/rfc822\r\n\r\n\
         Subject: notes\r\nSensitivity: Private\r\n\
         Content-Type: multipart/mixed; boundary=inner\r\n\r\n\
         --inner\r\nContent-Type: text/plain\r\n\r\nhello\r\n\
         --inner\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n\
         {inner_text}\r\n--inner--\r\n\
         --outer--\r\n"
    );
    let classification = classify(&message);
    assert_eq!(
        reasons(&classification),
        [
            "header:Sensitivity in header Sensitivity of part 2: value Private (protect)",
            "nhs-number in part 2.2 text/plain: 1 NHS number with a valid check digit (protect)",
        ]
    );
}

#[test]
fn base64_encoded_nested_message_is_read() {
    let inner = STANDARD.encode("Subject: inner\r\n\r\nNHS 943 476 5919\r\n");
    let message = format!(
        "Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n{inner}\r\n"
    );
    let classification = classify(&message);
    assert_eq!(
        reasons(&classification),
        ["nhs-number in part 1.1 text/plain: 1 NHS number with a valid check digit (protect)"]
    );
}

#[test]
fn encoded_word_subject_tag_is_found() {
    let cases = [
        "Subject: =?utf-8?q?=5Bsecure=5D_R=C3=A9sultats?=\r\n\r\nx\r\n",
        "Subject: =?ISO-8859-1?B?W1NFQ1VSRV0gcOlzdWx0YXRz?=\r\n\r\nx\r\n",
        "Subject: Results =?utf-8?q?=5Bsecure=5D?=\r\n\r\nx\r\n",
    ];
    for message in cases {
        assert_eq!(rules_of(&classify(message)), ["subject-tag"], "{message:?}");
    }
}

#[test]
fn rfc2231_file_name_is_decoded_and_scanned() {
    let message = "Content-Type: multipart/mixed; boundary=b\r\n\r\n\
                   --b\r\nContent-Type: application/octet-stream\r\n\
                   Content-Disposition: attachment;\r\n\
                   \x20filename*0*=utf-8''R%C3%A9sum%C3%A9%20;\r\n\
                   \x20filename*1=\"notes.txt\"\r\n\r\n\
                   NHS 943 476 5919\r\n\
                   --b\r\nContent-Type: application/pdf\r\n\
                   Content-Disposition: attachment; filename*=utf-8''NHS%209434765919.pdf\r\n\r\n\
                   %PDF\r\n--b--\r\n";
    let classification = classify(message);
    assert_eq!(
        reasons(&classification),
        [
            "nhs-number in attachment in part 1: 1 NHS number with a valid check digit (protect)",
            "nhs-number in file name of part 2: 1 NHS number with a valid check digit (protect)",
        ]
    );
}

#[test]
fn message_without_mime_headers_is_plain_text() {
    let message = "From: a@example.org\r\nSubject: appointment\r\n\r\nNHS no. 9434765919\r\n";
    assert_eq!(
        reasons(&classify(message)),
        ["nhs-number in part 1 text/plain: 1 NHS number with a valid check digit (protect)"]
    );
}

#[test]
fn empty_message_is_unparseable() {
    let classification = classify("");
    assert_eq!(rules_of(&classification), ["unparseable"]);
}

#[test]
fn wrong_check_digit_is_not_sensitive() {
    let message = "Subject: parking\r\n\r\nOrder 943 476 5918 and 9990000019.\r\n";
    assert_eq!(classify(message), Classification::default());
}

#[test]
fn number_in_longer_digit_run_is_not_sensitive() {
    let message = "Subject: card\r\n\r\nCard 4111199434765919, phone 01 943 476 5919.\r\n";
    assert_eq!(classify(message), Classification::default());
}

#[test]
fn lf_only_bad_input_classifies_like_crlf() {
    let message = "Subject: [secure] x\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
                   --b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
                   NHS 943 =\r\n476 5919\r\n--b--\r\n";
    let crlf = classify(message);
    let lf = classifier().classify(&lf_only(message.as_bytes()));
    assert_eq!(rules_of(&crlf), ["subject-tag", "nhs-number"]);
    assert_eq!(crlf, lf);
}

/// Limits are checked on the parsed tree: these bounds are for an unoptimised test build
/// on a shared machine, far above what the inputs take when the limits work.
const FAST: Duration = Duration::from_secs(20);

#[test]
fn deep_multipart_nesting_is_unparseable_and_fast() {
    let depth = 10_000;
    let mut message = String::new();
    for level in 0..depth {
        message.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=\"b{level}\"\r\n\r\n--b{level}\r\n"
        ));
    }
    message.push_str("Content-Type: text/plain\r\n\r\nhello\r\n");
    for level in (0..depth).rev() {
        message.push_str(&format!("--b{level}--\r\n"));
    }
    let started = Instant::now();
    let classification = classify(&message);
    assert!(started.elapsed() < FAST, "took {:?}", started.elapsed());
    assert_eq!(
        reasons(&classification),
        ["unparseable in message: MIME nesting deeper than 20 levels (protect)"]
    );
}

#[test]
fn deep_message_nesting_is_unparseable_and_fast() {
    let mut message = "Content-Type: message/rfc822\r\n\r\n".repeat(10_000);
    message.push_str("Subject: bottom\r\n\r\nhello\r\n");
    let started = Instant::now();
    let classification = classify(&message);
    assert!(started.elapsed() < FAST, "took {:?}", started.elapsed());
    assert_eq!(rules_of(&classification), ["unparseable"]);
}

fn encoded_nested_messages(levels: usize) -> String {
    let mut inner = "Content-Type: message/rfc822\r\n\r\n".repeat(levels);
    inner.push_str("Subject: bottom\r\n\r\nNHS 943 476 5919\r\n");
    format!(
        "Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n",
        STANDARD.encode(inner)
    )
}

#[test]
fn deep_nesting_inside_encoded_message_is_unparseable() {
    let classification = classify(&encoded_nested_messages(10_000));
    assert_eq!(
        reasons(&classification),
        [
            "unparseable in message: more than 200 header fields that open a nested message (protect)"
        ]
    );
}

#[test]
fn nesting_just_under_the_field_limit_is_parsed() {
    let config = ClassifyConfig {
        max_depth: 1000,
        ..ClassifyConfig::default()
    };
    let message = encoded_nested_messages(198);
    let classification = Classifier::new(&config)
        .unwrap()
        .classify(message.as_bytes());
    assert_eq!(rules_of(&classification), ["nhs-number"]);
}

#[test]
fn many_parts_are_unparseable_and_fast() {
    let mut message = String::from("Content-Type: multipart/mixed; boundary=b\r\n\r\n");
    for _ in 0..100_000 {
        message.push_str("--b\r\n\r\nx\r\n");
    }
    message.push_str("--b--\r\n");
    let started = Instant::now();
    let classification = classify(&message);
    assert!(started.elapsed() < FAST, "took {:?}", started.elapsed());
    assert_eq!(
        reasons(&classification),
        ["unparseable in message: more than 1000 MIME parts (protect)"]
    );
}

#[test]
fn limits_are_configurable() {
    let config = ClassifyConfig {
        max_parts: 2,
        unparseable_action: Action::Review,
        ..ClassifyConfig::default()
    };
    let message = "Content-Type: multipart/mixed; boundary=b\r\n\r\n\
                   --b\r\n\r\none\r\n--b\r\n\r\ntwo\r\n--b--\r\n";
    let classification = Classifier::new(&config)
        .unwrap()
        .classify(message.as_bytes());
    assert_eq!(
        reasons(&classification),
        ["unparseable in message: more than 2 MIME parts (review)"]
    );
}

#[test]
fn binary_garbage_does_not_panic() {
    let classifier = classifier();
    let mut seed: u32 = 12_345;
    for length in [1, 7, 100, 4096] {
        let bytes: Vec<u8> = (0..length)
            .map(|_| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (seed >> 16) as u8
            })
            .collect();
        let classification = classifier.classify(&bytes);
        assert!(
            classification.matches.iter().all(|m| !m.detail.is_empty()),
            "{classification:?}"
        );
    }
}

#[test]
fn classifier_is_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Classifier>();
    let classifier = std::sync::Arc::new(classifier());
    let worker = {
        let classifier = classifier.clone();
        std::thread::spawn(move || classifier.classify(b"Subject: [secure] x\r\n\r\ny\r\n"))
    };
    assert_eq!(worker.join().unwrap().action, Some(Action::Protect));
}

// Messages built to get sensitive content past the classifier, in
// tests/fixtures/classify/bypass/. Each is read with CRLF line endings, as SMTP delivers it.

fn bypass_case(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/classify/bypass")
        .join(name);
    let text = std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let lf = lf_only(&text);
    let mut crlf = Vec::with_capacity(lf.len() + lf.len() / 20);
    for byte in lf {
        if byte == b'\n' {
            crlf.push(b'\r');
        }
        crlf.push(byte);
    }
    crlf
}

/// Checks that each case matches `rule`, with a reason that starts with `reason`.
fn assert_bypass_cases_caught(cases: &[(&str, &str, &str)]) {
    let classifier = classifier();
    for (name, rule, reason) in cases {
        let classification = classifier.classify(&bypass_case(name));
        let found = reasons(&classification);
        assert!(
            found.iter().any(|found| found.starts_with(reason)),
            "{name}: expected a reason starting {reason:?}, got {found:?}"
        );
        assert!(
            rules_of(&classification).contains(rule),
            "{name}: {found:?}"
        );
        assert_eq!(classification.action, Some(Action::Protect), "{name}");
    }
}

#[test]
fn decoded_subject_line_break_is_unparseable() {
    assert_bypass_cases_caught(&[
        (
            "i01-strip-crlf-inject.eml",
            "unparseable",
            "unparseable in message: decoded subject contains CR or LF",
        ),
        (
            "i02-strip-inject-fake-pkcs7.eml",
            "unparseable",
            "unparseable in message: decoded subject contains CR or LF",
        ),
        (
            "i04-strip-lf-inject.eml",
            "unparseable",
            "unparseable in message: decoded subject contains CR or LF",
        ),
    ]);
}

#[test]
fn ambiguous_header_sections_are_unparseable() {
    assert_bypass_cases_caught(&[
        (
            "s21-header-then-nonheader.eml",
            "unparseable",
            "unparseable in message: top-level header: a line is not a header field",
        ),
        (
            "s22-space-before-colon.eml",
            "unparseable",
            "unparseable in message: top-level header: white space between a field name",
        ),
        (
            "s18-dup-ctype.eml",
            "unparseable",
            "unparseable in message: top-level header: more than one content-type field",
        ),
        (
            "e01-dup-ctype-fake-pkcs7.eml",
            "unparseable",
            "unparseable in message: top-level header: more than one content-type field",
        ),
        (
            "t07-two-subjects-tag-first.eml",
            "unparseable",
            "unparseable in message: top-level header: more than one subject field",
        ),
        (
            "hd08-two-subjects.eml",
            "unparseable",
            "unparseable in message: top-level header: more than one subject field",
        ),
    ]);
}

#[test]
fn duplicate_field_in_part_header_is_unparseable() {
    let message = "Content-Type: multipart/mixed; boundary=b\r\n\r\n\
                   --b\r\nContent-Type: text/plain\r\n\
                   Content-Type: application/octet-stream\r\n\r\nNHS 9434765919\r\n--b--\r\n";
    assert_eq!(
        reasons(&classify(message)),
        ["unparseable in message: header of part 1: more than one content-type field (protect)"]
    );
    let nested = "Content-Type: message/rfc822\r\n\r\n\
                  Subject: a\r\nSubject: b\r\n\r\nhello\r\n";
    assert_eq!(rules_of(&classify(nested)), ["unparseable"]);
}

#[test]
fn hidden_nhs_numbers_are_found() {
    let number = "nhs-number in part 1";
    let attachment = "nhs-number in attachment in part 2: 1 NHS number";
    assert_bypass_cases_caught(&[
        ("n13-zwsp.eml", "nhs-number", number),
        ("n14-zwsp-run.eml", "nhs-number", number),
        ("n25-word-joiner.eml", "nhs-number", number),
        ("n24-soft-hyphen.eml", "nhs-number", number),
        ("h06-entity-plus-hidden-digit.eml", "nhs-number", number),
        ("h07-zwsp-entity.eml", "nhs-number", number),
        ("h10-hidden-prefix-digit.eml", "nhs-number", number),
        ("h12-shy-entity.eml", "nhs-number", number),
        ("h13-qp-html-entities.eml", "nhs-number", number),
        ("n05-utf16le-as-utf8.eml", "nhs-number", number),
        ("n08-utf16le-as-usascii.eml", "nhs-number", number),
        ("n12-utf16le-no-charset.eml", "nhs-number", number),
        ("s06-att-csv-utf16.eml", "nhs-number", attachment),
    ]);
}

#[test]
fn other_written_forms_are_found() {
    let number = "nhs-number in part 1";
    assert_bypass_cases_caught(&[
        ("n16-thin-space.eml", "nhs-number", number),
        ("n17-narrow-nbsp.eml", "nhs-number", number),
        ("n18-tab.eml", "nhs-number", number),
        ("n19-double-space.eml", "nhs-number", number),
        ("n20-dots.eml", "nhs-number", number),
        ("n21-slashes.eml", "nhs-number", number),
        ("n23-en-dash.eml", "nhs-number", number),
        ("n26-fullwidth.eml", "nhs-number", number),
        ("n27-4-3-3.eml", "nhs-number", number),
        ("n29-hyphen-space.eml", "nhs-number", number),
    ]);
}

#[test]
fn every_leaf_part_is_scanned() {
    let attachment = "nhs-number in attachment in part 2: 1 NHS number";
    assert_bypass_cases_caught(&[
        ("s04-att-dat.eml", "nhs-number", attachment),
        ("s11-name-mismatch.eml", "nhs-number", attachment),
        (
            "s12-app-json-noname.eml",
            "nhs-number",
            "nhs-number in part",
        ),
        (
            "s26-message-partial.eml",
            "unparseable",
            "unparseable in message: top-level header: message/partial",
        ),
        (
            "s16-uuencode-cte.eml",
            "unparseable",
            "unparseable in message: top-level header: unsupported Content-Transfer-Encoding",
        ),
        (
            "s15-uuencode-inline.eml",
            "unparseable",
            "unparseable in message: part 1 contains a uuencoded block",
        ),
    ]);
}

#[test]
fn every_header_field_is_scanned() {
    assert_bypass_cases_caught(&[
        (
            "hd03-from-display.eml",
            "nhs-number",
            "nhs-number in header From:",
        ),
        ("hd04-to-display.eml", "nhs-number", "nhs-number in header"),
        (
            "hd05-custom-header.eml",
            "nhs-number",
            "nhs-number in header X-Patient-NHS:",
        ),
        (
            "hd06-comments-header.eml",
            "nhs-number",
            "nhs-number in header Comments:",
        ),
        (
            "hd07-content-description.eml",
            "nhs-number",
            "nhs-number in header Content-Description:",
        ),
    ]);
}

#[test]
fn encoded_display_name_is_decoded_and_scanned() {
    let message = "From: =?utf-8?q?Patient_943_476_5919?= <a@example.org>\r\n\r\nhello\r\n";
    assert_eq!(
        reasons(&classify(message)),
        ["nhs-number in header From: 1 NHS number with a valid check digit (protect)"]
    );
}

#[test]
fn attachment_file_names_stay_out_of_reasons() {
    let classifier = classifier();
    for name in [
        "l01-filename-in-log.eml",
        "l02-nhs-dotted-filename-in-log.eml",
    ] {
        let classification = classifier.classify(&bypass_case(name));
        assert!(classification.is_sensitive(), "{name}");
        for reason in reasons(&classification) {
            assert!(!reason.contains('"'), "{name}: {reason}");
            assert!(!reason.contains("SECRETWORD"), "{name}: {reason}");
            assert!(!reason.contains(".csv"), "{name}: {reason}");
            let digits: String = reason.chars().filter(char::is_ascii_digit).collect();
            assert!(!digits.contains("943"), "{name}: {reason}");
        }
    }
}

#[test]
fn markings_in_common_forms_are_found() {
    assert_bypass_cases_caught(&[
        ("m05-en-dash.eml", "marking", "marking in"),
        ("m06-nb-hyphen.eml", "marking", "marking in"),
        ("m07-spaced-en-dash.eml", "marking", "marking in"),
        ("m10-zwsp-lines.eml", "marking", "marking in body line"),
        (
            "m11-html-hidden-lines.eml",
            "marking",
            "marking in body line 1 of part 1",
        ),
        (
            "m12-second-part.eml",
            "marking",
            "marking in body line 1 of part 2",
        ),
        (
            "m13-alt-html-marking.eml",
            "marking",
            "marking in body line 1 of part 2",
        ),
        (
            "m17-sensitivity-comment.eml",
            "header:Sensitivity",
            "header:Sensitivity in header Sensitivity: value Private",
        ),
    ]);
}

#[test]
fn lookalike_subject_tags_are_found() {
    assert_bypass_cases_caught(&[
        (
            "t11-nbsp-inside.eml",
            "subject-tag",
            "subject-tag in subject: tag [secure]",
        ),
        (
            "t12-fullwidth.eml",
            "subject-tag",
            "subject-tag in subject: tag [secure]",
        ),
    ]);
}
