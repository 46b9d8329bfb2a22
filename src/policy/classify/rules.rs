//! The rules, compiled from the config and applied to the extracted text. Each match records
//! what kind of thing matched in words taken from the config (a tag, a marking, a header
//! value) or as a count, never the matched message text.

use regex::Regex;

use super::config::{ClassifyConfig, HeaderRule, tag_inner};
use super::mime::{Content, Extracted, Origin};
use super::nhs_number::NhsNumberDetector;
use super::normalize::{normalize, normalize_tag_text};
use super::structure::without_comments;
use super::subject::find_tags;
use super::{Action, ClassifyError, RuleMatch};

/// Every rule of a [`ClassifyConfig`], ready to run.
#[derive(Clone, Debug)]
pub(super) struct Rules {
    tags: Vec<String>,
    tag_inners: Vec<String>,
    tag_action: Action,
    markings: Vec<(String, Regex)>,
    marking_body_lines: usize,
    marking_action: Action,
    header_rules: Vec<HeaderRule>,
    nhs_number: Option<NhsNumberRule>,
    /// Finds NHS-number-like text in header field names whatever the keyword setting, so
    /// that such names are kept out of locations.
    name_numbers: NhsNumberDetector,
    patterns: Vec<PatternMatcher>,
}

#[derive(Clone, Debug)]
struct NhsNumberRule {
    detector: NhsNumberDetector,
    min_count: usize,
    action: Action,
}

#[derive(Clone, Debug)]
struct PatternMatcher {
    name: String,
    regex: Regex,
    min_count: usize,
    action: Action,
}

impl Rules {
    pub(super) fn new(config: &ClassifyConfig) -> Result<Rules, ClassifyError> {
        config.check()?;
        let tag_inners = config
            .subject_tags
            .tags
            .iter()
            .filter_map(|tag| tag_inner(tag))
            .map(str::to_owned)
            .collect();
        let markings = config
            .markings
            .markings
            .iter()
            .map(|marking| (marking.clone(), marking_regex(marking)))
            .collect();
        let nhs = &config.nhs_number;
        let nhs_number = nhs.enabled.then(|| NhsNumberRule {
            detector: NhsNumberDetector::new(nhs),
            min_count: nhs.min_count,
            action: nhs.action,
        });
        let name_numbers = NhsNumberDetector::new(&super::config::NhsNumberConfig {
            require_keyword: false,
            ..nhs.clone()
        });
        let patterns = config
            .patterns
            .iter()
            .map(|pattern| PatternMatcher {
                name: pattern.name.clone(),
                regex: Regex::new(&pattern.regex).expect("check() compiled every pattern"),
                min_count: pattern.min_count,
                action: pattern.action,
            })
            .collect();
        Ok(Rules {
            tags: config.subject_tags.tags.clone(),
            tag_inners,
            tag_action: config.subject_tags.action,
            markings,
            marking_body_lines: config.markings.body_lines,
            marking_action: config.markings.action,
            header_rules: config.header_rules.clone(),
            nhs_number,
            name_numbers,
            patterns,
        })
    }

    /// Runs every rule over the extracted text.
    pub(super) fn apply(&self, extracted: &Extracted) -> Vec<RuleMatch> {
        let mut matches = Vec::new();
        self.match_subject_tags(extracted, &mut matches);
        self.match_markings(extracted, &mut matches);
        self.match_headers(extracted, &mut matches);
        for content in &extracted.contents {
            self.match_content(content, &mut matches);
        }
        matches
    }

    /// Tags count only in the top-level subject: a tag in a forwarded message's subject was
    /// its original sender's request, and its content is checked by the other rules.
    fn match_subject_tags(&self, extracted: &Extracted, matches: &mut Vec<RuleMatch>) {
        let Some(subject) = extracted.subjects.iter().find(|s| s.scope.is_none()) else {
            return;
        };
        let inners: Vec<&str> = self.tag_inners.iter().map(String::as_str).collect();
        let text = normalize_tag_text(&subject.text);
        let mut reported = Vec::new();
        for (_, index) in find_tags(text.as_bytes(), &inners) {
            if reported.contains(&index) {
                continue;
            }
            reported.push(index);
            matches.push(RuleMatch {
                rule: "subject-tag".into(),
                action: self.tag_action,
                location: "subject".into(),
                detail: format!("tag {}", self.tags[index]),
            });
        }
    }

    fn match_markings(&self, extracted: &Extracted, matches: &mut Vec<RuleMatch>) {
        let mut push = |marking: &str, location: String| {
            matches.push(RuleMatch {
                rule: "marking".into(),
                action: self.marking_action,
                location,
                detail: format!("marking {marking}"),
            });
        };
        for subject in &extracted.subjects {
            let text = normalize(&subject.text);
            for (marking, regex) in &self.markings {
                if regex.is_match(&text) {
                    push(marking, format!("subject{}", of_part(&subject.scope)));
                }
            }
        }
        for body in &extracted.bodies {
            let text = normalize(&body.text);
            let first_lines: Vec<(usize, &str)> = text
                .lines()
                .enumerate()
                .filter(|(_, line)| !line.trim().is_empty())
                .take(self.marking_body_lines)
                .collect();
            for (marking, regex) in &self.markings {
                if let Some((index, _)) = first_lines.iter().find(|(_, line)| regex.is_match(line))
                {
                    let location = format!("body line {}{}", index + 1, of_part(&body.scope));
                    push(marking, location);
                }
            }
        }
    }

    fn match_headers(&self, extracted: &Extracted, matches: &mut Vec<RuleMatch>) {
        for field in &extracted.headers {
            for rule in &self.header_rules {
                if !field.name.eq_ignore_ascii_case(&rule.name) {
                    continue;
                }
                let detail = if rule.values.is_empty() {
                    "field present".to_owned()
                } else {
                    let matched = rule.values.iter().find(|wanted| {
                        field.values.iter().any(|value| {
                            let value = without_comments(value.as_bytes());
                            value.eq_ignore_ascii_case(wanted.trim().as_bytes())
                        })
                    });
                    match matched {
                        Some(value) => format!("value {value}"),
                        None => continue,
                    }
                };
                matches.push(RuleMatch {
                    rule: format!("header:{}", rule.name),
                    action: rule.action,
                    location: format!("header {}{}", rule.name, of_part(&field.scope)),
                    detail,
                });
            }
        }
    }

    /// Runs the content detectors over every reading of the content, each normalised as in
    /// [`normalize`] so that invisible characters and Unicode spaces and dashes cannot hide
    /// a number. Patterns also see the readings as they were.
    fn match_content(&self, content: &Content, matches: &mut Vec<RuleMatch>) {
        let normalized: Vec<_> = content.texts.iter().map(|text| normalize(text)).collect();
        let max_count = |count: &dyn Fn(&str) -> usize| {
            normalized.iter().map(|text| count(text)).max().unwrap_or(0)
        };
        if let Some(rule) = &self.nhs_number {
            let count = max_count(&|text| rule.detector.count(text));
            if count >= rule.min_count {
                matches.push(RuleMatch {
                    rule: "nhs-number".into(),
                    action: rule.action,
                    location: self.location(&content.origin),
                    detail: format!(
                        "{count} {} with a valid check digit",
                        plural(count, "NHS number", "NHS numbers")
                    ),
                });
            }
        }
        for pattern in &self.patterns {
            let count = |text: &str| pattern.regex.find_iter(text).count();
            let as_written = content.texts.iter().map(|text| count(text)).max();
            let count = max_count(&count).max(as_written.unwrap_or(0));
            if count >= pattern.min_count {
                let mut detail = format!("{count} {}", plural(count, "match", "matches"));
                if pattern.min_count > 1 {
                    detail.push_str(&format!(", at least {} required", pattern.min_count));
                }
                matches.push(RuleMatch {
                    rule: format!("pattern:{}", pattern.name),
                    action: pattern.action,
                    location: self.location(&content.origin),
                    detail,
                });
            }
        }
    }

    /// Describes where a content match was found, in words fit for a log line. Only section
    /// numbers and header field names are used, never file names or other message text,
    /// and a field name only when it is a plain token that no detector matches.
    fn location(&self, origin: &Origin) -> String {
        match origin {
            Origin::Subject { scope } => format!("subject{}", of_part(scope)),
            Origin::Header { scope, name } => {
                if self.is_loggable_field_name(name) {
                    format!("header {name}{}", of_part(scope))
                } else {
                    format!("header field{}", of_part(scope))
                }
            }
            Origin::Part {
                section,
                has_file_name: true,
                ..
            } => format!("attachment in part {section}"),
            Origin::Part {
                section,
                content_type: Some(content_type),
                has_file_name: false,
            } => format!("part {section} {content_type}"),
            Origin::Part {
                section,
                content_type: None,
                has_file_name: false,
            } => format!("part {section}"),
            Origin::FileName { section } => format!("file name of part {section}"),
        }
    }

    fn is_loggable_field_name(&self, name: &str) -> bool {
        name.len() <= 64
            && name
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
            && self.name_numbers.count(name) == 0
            && self
                .patterns
                .iter()
                .all(|pattern| !pattern.regex.is_match(name))
    }
}

/// Builds a regex that finds a marking as a whole word. A hyphen or space in the marking matches any run
/// of hyphens and white space, so `OFFICIAL-SENSITIVE` also finds `OFFICIAL SENSITIVE`.
fn marking_regex(marking: &str) -> Regex {
    let words: Vec<String> = marking
        .split(|c: char| c == '-' || c.is_whitespace())
        .filter(|word| !word.is_empty())
        .map(regex::escape)
        .collect();
    let pattern = format!(
        r"(?i)(?:^|[^\p{{L}}\p{{N}}-])(?:{})(?:$|[^\p{{L}}\p{{N}}-])",
        words.join(r"[\s-]+")
    );
    Regex::new(&pattern).expect("escaped words always form a valid regex")
}

fn of_part(scope: &Option<String>) -> String {
    scope
        .as_ref()
        .map(|section| format!(" of part {section}"))
        .unwrap_or_default()
}

fn plural<'a>(count: usize, singular: &'a str, plural: &'a str) -> &'a str {
    if count == 1 { singular } else { plural }
}

#[cfg(test)]
mod tests {
    use super::super::config::PatternRule;
    use super::super::mime::{HeaderField, Scoped};
    use super::*;

    fn rules(config: &ClassifyConfig) -> Rules {
        Rules::new(config).unwrap()
    }

    fn subject(text: &str) -> Extracted {
        Extracted {
            subjects: vec![Scoped {
                scope: None,
                text: text.into(),
            }],
            ..Extracted::default()
        }
    }

    fn body(text: &str) -> Extracted {
        Extracted {
            bodies: vec![Scoped {
                scope: None,
                text: text.into(),
            }],
            ..Extracted::default()
        }
    }

    fn text_part(text: &str) -> Content {
        Content {
            origin: Origin::Part {
                section: "1".into(),
                content_type: Some("text/plain"),
                has_file_name: false,
            },
            texts: vec![text.into()],
        }
    }

    fn details(matches: &[RuleMatch]) -> Vec<String> {
        matches.iter().map(|m| m.to_string()).collect()
    }

    #[test]
    fn subject_tags_match_case_insensitively() {
        let mut config = ClassifyConfig::default();
        config.subject_tags.tags.push("[encrypt]".into());
        let rules = rules(&config);
        let cases = [
            (
                "[secure] Referral",
                vec!["subject-tag in subject: tag [secure] (protect)"],
            ),
            (
                "RE: [SeCuRe] Referral",
                vec!["subject-tag in subject: tag [secure] (protect)"],
            ),
            (
                "[ENCRYPT] results",
                vec!["subject-tag in subject: tag [encrypt] (protect)"],
            ),
            (
                "[secure] [secure] twice",
                vec!["subject-tag in subject: tag [secure] (protect)"],
            ),
            ("secure referral", vec![]),
            ("[secure-ish] referral", vec![]),
            ("[insecure]", vec![]),
        ];
        for (text, expected) in cases {
            let matches = rules.apply(&subject(text));
            assert_eq!(details(&matches), expected, "{text:?}");
        }
    }

    #[test]
    fn tags_in_nested_subjects_do_not_count() {
        let extracted = Extracted {
            subjects: vec![Scoped {
                scope: Some("2".into()),
                text: "[secure] old".into(),
            }],
            ..Extracted::default()
        };
        assert!(
            rules(&ClassifyConfig::default())
                .apply(&extracted)
                .is_empty()
        );
    }

    #[test]
    fn markings_match_whole_words_in_the_subject() {
        let rules = rules(&ClassifyConfig::default());
        let cases = [
            ("OFFICIAL-SENSITIVE: staffing", true),
            ("official-sensitive staffing", true),
            ("Staffing [OFFICIAL SENSITIVE]", true),
            ("OFFICIAL - SENSITIVE", true),
            ("OFFICIAL", false),
            ("OFFICIAL-SENSITIVE-ISH", false),
            ("UNOFFICIAL-SENSITIVE", false),
            ("NOT-OFFICIAL-SENSITIVE", false),
        ];
        for (text, expected) in cases {
            let matched = !rules.apply(&subject(text)).is_empty();
            assert_eq!(matched, expected, "{text:?}");
        }
    }

    #[test]
    fn markings_count_only_in_the_first_body_lines() {
        let mut config = ClassifyConfig::default();
        config.markings.body_lines = 3;
        let rules = rules(&config);
        let cases = [
            ("OFFICIAL-SENSITIVE\nplan", Some("body line 1")),
            ("\n\nDear all,\n\nOFFICIAL-SENSITIVE\n", Some("body line 5")),
            ("one\ntwo\nthree OFFICIAL-SENSITIVE\n", Some("body line 3")),
            ("one\ntwo\nthree\nOFFICIAL-SENSITIVE\n", None),
            ("", None),
        ];
        for (text, expected) in cases {
            let matches = rules.apply(&body(text));
            let location = matches.first().map(|m| m.location.as_str());
            assert_eq!(location, expected, "{text:?}");
        }
    }

    #[test]
    fn extra_markings_are_configurable() {
        let mut config = ClassifyConfig::default();
        config.markings.markings.push("SECRET".into());
        config.markings.action = Action::Review;
        let matches = rules(&config).apply(&subject("SECRET plans"));
        assert_eq!(
            details(&matches),
            ["marking in subject: marking SECRET (review)"]
        );
    }

    #[test]
    fn header_rules_match_name_and_value() {
        let mut config = ClassifyConfig::default();
        config.header_rules.push(HeaderRule {
            name: "X-Classification".into(),
            values: Vec::new(),
            action: Action::Review,
        });
        let rules = rules(&config);
        let cases = [
            (
                "Sensitivity",
                "Private",
                vec!["header:Sensitivity in header Sensitivity: value Private (protect)"],
            ),
            (
                "sensitivity",
                "company-confidential",
                vec![
                    "header:Sensitivity in header Sensitivity: value Company-Confidential (protect)",
                ],
            ),
            ("Sensitivity", "Personal", vec![]),
            ("Sensitivity", "Private-ish", vec![]),
            ("X-Sensitivity", "Private", vec![]),
            (
                "X-Classification",
                "anything",
                vec!["header:X-Classification in header X-Classification: field present (review)"],
            ),
        ];
        for (name, value, expected) in cases {
            let extracted = Extracted {
                headers: vec![HeaderField {
                    scope: None,
                    name: name.into(),
                    values: vec![value.into()],
                }],
                ..Extracted::default()
            };
            assert_eq!(
                details(&rules.apply(&extracted)),
                expected,
                "{name}: {value}"
            );
        }
    }

    #[test]
    fn patterns_need_their_minimum_count() {
        let mut config = ClassifyConfig::default();
        config.patterns.push(PatternRule {
            name: "postcode".into(),
            regex: r"\b[A-Z]{1,2}[0-9][A-Z0-9]? [0-9][A-Z]{2}\b".into(),
            min_count: 2,
            action: Action::Review,
        });
        let rules = rules(&config);
        let cases = [
            ("LS1 4AP", None),
            (
                "LS1 4AP and M1 1AE",
                Some(
                    "pattern:postcode in part 1 text/plain: 2 matches, at least 2 required (review)",
                ),
            ),
            ("none here", None),
        ];
        for (text, expected) in cases {
            let extracted = Extracted {
                contents: vec![text_part(text)],
                ..Extracted::default()
            };
            let found = details(&rules.apply(&extracted));
            assert_eq!(found.first().map(String::as_str), expected, "{text:?}");
        }
    }

    #[test]
    fn nhs_number_detail_counts_without_the_number() {
        let rules = rules(&ClassifyConfig::default());
        let extracted = Extracted {
            contents: vec![text_part("NHS 943 476 5919 and 9990000018")],
            ..Extracted::default()
        };
        let matches = rules.apply(&extracted);
        assert_eq!(
            details(&matches),
            ["nhs-number in part 1 text/plain: 2 NHS numbers with a valid check digit (protect)"]
        );
        assert!(!matches[0].detail.contains("5919"));
    }

    #[test]
    fn highest_count_over_readings_is_kept() {
        let rules = rules(&ClassifyConfig::default());
        let mut content = text_part("no number");
        content.texts.push("9434765919".into());
        let extracted = Extracted {
            contents: vec![content],
            ..Extracted::default()
        };
        assert_eq!(rules.apply(&extracted).len(), 1);
    }

    #[test]
    fn locations_name_no_message_text() {
        let rules = rules(&ClassifyConfig::default());
        let cases = [
            (
                Origin::Part {
                    section: "2".into(),
                    content_type: Some("text/csv"),
                    has_file_name: true,
                },
                "attachment in part 2",
            ),
            (
                Origin::Part {
                    section: "1.2".into(),
                    content_type: Some("text/html"),
                    has_file_name: false,
                },
                "part 1.2 text/html",
            ),
            (
                Origin::Part {
                    section: "3".into(),
                    content_type: None,
                    has_file_name: false,
                },
                "part 3",
            ),
            (
                Origin::Header {
                    scope: None,
                    name: "X-Patient".into(),
                },
                "header X-Patient",
            ),
            (
                Origin::Header {
                    scope: Some("2".into()),
                    name: "X-9434765919".into(),
                },
                "header field of part 2",
            ),
            (
                Origin::Header {
                    scope: None,
                    name: "X-\"quoted\"".into(),
                },
                "header field",
            ),
        ];
        for (origin, expected) in cases {
            assert_eq!(rules.location(&origin), expected, "{origin:?}");
        }
    }

    #[test]
    fn normalised_text_is_matched() {
        let rules = rules(&ClassifyConfig::default());
        let cases = [
            "943\u{200B}476\u{200B}5919",
            "943\u{2009}476\u{202F}5919",
            "943\u{2013}476\u{2013}5919",
            "\u{FF19}\u{FF14}\u{FF13}\u{FF14}\u{FF17}\u{FF16}\u{FF15}\u{FF19}\u{FF11}\u{FF19}",
            "943\t476\t5919",
        ];
        for text in cases {
            let extracted = Extracted {
                contents: vec![text_part(text)],
                ..Extracted::default()
            };
            assert_eq!(rules.apply(&extracted).len(), 1, "{text:?}");
        }
    }

    #[test]
    fn marking_with_unicode_dashes_is_found() {
        let rules = rules(&ClassifyConfig::default());
        for text in [
            "OFFICIAL\u{2013}SENSITIVE",
            "OFFICIAL \u{2013} SENSITIVE",
            "OFFICIAL\u{2011}SENSITIVE",
            "OFFICIAL\u{00A0}SENSITIVE",
        ] {
            assert_eq!(rules.apply(&subject(text)).len(), 1, "{text:?}");
            assert_eq!(rules.apply(&body(text)).len(), 1, "{text:?}");
        }
    }

    #[test]
    fn zero_width_lines_count_as_blank() {
        let rules = rules(&ClassifyConfig::default());
        let text = "\u{200B}\n\u{200B}\n\u{200B}\n\u{200B}\n\u{200B}\nOFFICIAL-SENSITIVE\n";
        let matches = rules.apply(&body(text));
        assert_eq!(
            matches.first().map(|m| m.location.as_str()),
            Some("body line 6")
        );
    }

    #[test]
    fn header_rule_ignores_comments() {
        let rules = rules(&ClassifyConfig::default());
        let extracted = Extracted {
            headers: vec![HeaderField {
                scope: None,
                name: "Sensitivity".into(),
                values: vec!["Private (set by Outlook)".into()],
            }],
            ..Extracted::default()
        };
        assert_eq!(
            details(&rules.apply(&extracted)),
            ["header:Sensitivity in header Sensitivity: value Private (protect)"]
        );
    }

    #[test]
    fn lookalike_tags_are_found() {
        let rules = rules(&ClassifyConfig::default());
        for text in [
            "[\u{00A0}secure\u{00A0}] x",
            "\u{FF3B}secure\u{FF3D} x",
            "[ secure ] x",
        ] {
            assert_eq!(
                details(&rules.apply(&subject(text))),
                ["subject-tag in subject: tag [secure] (protect)"],
                "{text:?}"
            );
        }
    }

    #[test]
    fn disabled_nhs_detector_finds_nothing() {
        let mut config = ClassifyConfig::default();
        config.nhs_number.enabled = false;
        let extracted = Extracted {
            contents: vec![text_part("9434765919")],
            ..Extracted::default()
        };
        assert!(rules(&config).apply(&extracted).is_empty());
    }
}
