//! `[policy.classify]`: the rules that mark a message sensitive, the action each one
//! takes, and the limits past which a message is not parsed but treated as sensitive.

use serde::{Deserialize, Serialize};

use super::{Action, ClassifyError};

/// `[policy.classify]`: classification rules and parsing limits.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassifyConfig {
    /// `[policy.classify.subject_tags]`: tags staff write in the subject.
    pub subject_tags: SubjectTagConfig,
    /// `[policy.classify.markings]`: protective markings in the subject or the first body
    /// lines.
    pub markings: MarkingConfig,
    /// `[[policy.classify.header_rules]]`: header fields that mark a message sensitive.
    /// Default: one rule for `Sensitivity: Private` or `Sensitivity: Company-Confidential`.
    pub header_rules: Vec<HeaderRule>,
    /// `[policy.classify.nhs_number]`: the NHS number detector.
    pub nhs_number: NhsNumberConfig,
    /// `[[policy.classify.patterns]]`: regular expressions over the subject, every header
    /// field and every leaf part read as text, both as written and normalised. Default:
    /// none.
    pub patterns: Vec<PatternRule>,
    /// Action for a message that cannot be parsed or exceeds a limit below. Default:
    /// `protect`.
    pub unparseable_action: Action,
    /// Maximum MIME nesting: multipart and `message/rfc822` levels below the top. A deeper
    /// message is treated as sensitive. Default: 20.
    pub max_depth: usize,
    /// Maximum MIME parts in a message, nested messages included. A message with more is
    /// treated as sensitive. Default: 1000.
    pub max_parts: usize,
}

/// `[policy.classify.subject_tags]`: bracketed tokens such as `[secure]` in the subject.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubjectTagConfig {
    /// Tags, brackets included, matched case-insensitively as whole bracketed tokens:
    /// `[secure]` matches `[SECURE]`, `[ secure ]` (no-break spaces too) and `［secure］`
    /// (full-width brackets), but not `secure` or `[secure-ish]`.
    /// Default: `["[secure]"]`.
    pub tags: Vec<String>,
    /// Remove the tag from the subject before delivery. Default: true.
    pub strip: bool,
    /// Action when a tag is found. Default: `protect`.
    pub action: Action,
}

/// `[policy.classify.markings]`: government protective markings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MarkingConfig {
    /// Markings, matched case-insensitively as whole words (a letter, digit or hyphen on
    /// either side means no match). A hyphen or space matches any run of Unicode dashes and
    /// spaces. Default: `["OFFICIAL-SENSITIVE"]`.
    pub markings: Vec<String>,
    /// Non-blank lines at the start of each text and HTML part that are searched for a
    /// marking, besides the subject. Lines of invisible characters and hidden HTML
    /// elements do not count. Default: 5.
    pub body_lines: usize,
    /// Action when a marking is found. Default: `protect`.
    pub action: Action,
}

/// One `[[policy.classify.header_rules]]` entry.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HeaderRule {
    /// Header field name, matched case-insensitively.
    pub name: String,
    /// Values that match, compared case-insensitively with the unfolded field value
    /// without RFC 5322 comments and surrounding white space. An empty list matches any
    /// value. Default: empty.
    #[serde(default)]
    pub values: Vec<String>,
    /// Action when the rule matches. Default: `protect`.
    #[serde(default)]
    pub action: Action,
}

/// `[policy.classify.nhs_number]`: 10-digit NHS numbers with a valid modulus-11 check digit,
/// written as `9990000018` or in groups separated by one space, `-`, `.`, `/` or ` - `
/// each, such as `999 000 0018` or `9990 000 018`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NhsNumberConfig {
    /// Run the detector. Default: true.
    pub enabled: bool,
    /// Count a number only when one of `keywords` is within `keyword_distance` of it.
    /// Default: false.
    pub require_keyword: bool,
    /// Words that mark a nearby number as an NHS number, matched case-insensitively.
    /// Default: `["NHS"]`.
    pub keywords: Vec<String>,
    /// Maximum distance in characters between a keyword and the number, on either side.
    /// Default: 40.
    pub keyword_distance: usize,
    /// NHS numbers needed in one subject, part or attachment for a match. Default: 1.
    pub min_count: usize,
    /// Action when the detector matches. Default: `protect`.
    pub action: Action,
}

/// One `[[policy.classify.patterns]]` entry.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PatternRule {
    /// Rule name, shown as `pattern:<name>` in reasons: letters, digits, `-` and `_`.
    pub name: String,
    /// Regular expression in the syntax of the Rust `regex` crate, which runs in time
    /// linear in the text. Use `(?i)` for case-insensitive matching.
    pub regex: String,
    /// Matches needed in one subject, part or attachment for the rule to match.
    /// Default: 1.
    #[serde(default = "default_min_count")]
    pub min_count: usize,
    /// Action when the rule matches. Default: `protect`.
    #[serde(default)]
    pub action: Action,
}

fn default_min_count() -> usize {
    1
}

impl Default for ClassifyConfig {
    fn default() -> Self {
        ClassifyConfig {
            subject_tags: SubjectTagConfig::default(),
            markings: MarkingConfig::default(),
            header_rules: vec![HeaderRule {
                name: "Sensitivity".into(),
                values: vec!["Private".into(), "Company-Confidential".into()],
                action: Action::Protect,
            }],
            nhs_number: NhsNumberConfig::default(),
            patterns: Vec::new(),
            unparseable_action: Action::Protect,
            max_depth: 20,
            max_parts: 1000,
        }
    }
}

impl Default for SubjectTagConfig {
    fn default() -> Self {
        SubjectTagConfig {
            tags: vec!["[secure]".into()],
            strip: true,
            action: Action::Protect,
        }
    }
}

impl Default for MarkingConfig {
    fn default() -> Self {
        MarkingConfig {
            markings: vec!["OFFICIAL-SENSITIVE".into()],
            body_lines: 5,
            action: Action::Protect,
        }
    }
}

impl Default for NhsNumberConfig {
    fn default() -> Self {
        NhsNumberConfig {
            enabled: true,
            require_keyword: false,
            keywords: vec!["NHS".into()],
            keyword_distance: 40,
            min_count: 1,
            action: Action::Protect,
        }
    }
}

impl ClassifyConfig {
    /// Checks the values that serde cannot: tag syntax, header names, regular expressions
    /// and limits. Keys in the error are full dotted keys, such as
    /// `policy.classify.patterns[0].regex`.
    ///
    /// # Errors
    ///
    /// [`ClassifyError::Invalid`] for the first value that is not acceptable.
    pub fn check(&self) -> Result<(), ClassifyError> {
        let invalid = |key: String, value: String, reason: String| {
            Err(ClassifyError::Invalid {
                key: format!("policy.classify.{key}"),
                value,
                reason,
            })
        };

        for (index, tag) in self.subject_tags.tags.iter().enumerate() {
            if tag_inner(tag).is_none() {
                return invalid(
                    format!("subject_tags.tags[{index}]"),
                    quote(tag),
                    "expected a bracketed tag such as [secure]".into(),
                );
            }
        }
        for (index, marking) in self.markings.markings.iter().enumerate() {
            if !is_short_printable(marking) {
                return invalid(
                    format!("markings.markings[{index}]"),
                    quote(marking),
                    "must be non-empty printable text of at most 64 characters".into(),
                );
            }
        }
        for (index, rule) in self.header_rules.iter().enumerate() {
            if !is_field_name(&rule.name) {
                return invalid(
                    format!("header_rules[{index}].name"),
                    quote(&rule.name),
                    "expected a header field name such as Sensitivity".into(),
                );
            }
            for (value_index, value) in rule.values.iter().enumerate() {
                if value.trim().is_empty() || value.chars().any(char::is_control) {
                    return invalid(
                        format!("header_rules[{index}].values[{value_index}]"),
                        quote(value),
                        "must be non-empty printable text".into(),
                    );
                }
            }
        }

        let nhs = &self.nhs_number;
        for (index, keyword) in nhs.keywords.iter().enumerate() {
            if !is_short_printable(keyword) {
                return invalid(
                    format!("nhs_number.keywords[{index}]"),
                    quote(keyword),
                    "must be non-empty printable text of at most 64 characters".into(),
                );
            }
        }
        if nhs.require_keyword && nhs.keywords.is_empty() {
            return invalid(
                "nhs_number.keywords".into(),
                "[]".into(),
                "at least one keyword is needed when require_keyword is true".into(),
            );
        }

        let mut names = Vec::new();
        for (index, pattern) in self.patterns.iter().enumerate() {
            if !is_rule_name(&pattern.name) {
                return invalid(
                    format!("patterns[{index}].name"),
                    quote(&pattern.name),
                    "expected letters, digits, - and _".into(),
                );
            }
            if names.contains(&pattern.name.as_str()) {
                return invalid(
                    format!("patterns[{index}].name"),
                    quote(&pattern.name),
                    "another pattern has the same name".into(),
                );
            }
            names.push(&pattern.name);
            if let Err(error) = regex::Regex::new(&pattern.regex) {
                return invalid(
                    format!("patterns[{index}].regex"),
                    quote(&pattern.regex),
                    format!(
                        "invalid regular expression: {}",
                        regex_error_summary(&error)
                    ),
                );
            }
            if pattern.min_count < 1 {
                return invalid(
                    format!("patterns[{index}].min_count"),
                    "0".into(),
                    "must be at least 1".into(),
                );
            }
        }

        for (key, value) in [
            ("nhs_number.min_count", nhs.min_count),
            ("max_depth", self.max_depth),
            ("max_parts", self.max_parts),
        ] {
            if value < 1 {
                return invalid(key.into(), value.to_string(), "must be at least 1".into());
            }
        }
        Ok(())
    }
}

/// Returns the trimmed text between the brackets of a configured tag, or `None` when the
/// tag is not one bracketed token.
pub(super) fn tag_inner(tag: &str) -> Option<&str> {
    let inner = tag.strip_prefix('[')?.strip_suffix(']')?.trim();
    let acceptable = !inner.is_empty()
        && inner.chars().count() <= 64
        && !inner.contains(['[', ']'])
        && !inner.chars().any(char::is_control);
    acceptable.then_some(inner)
}

/// Reduces a regex error to its last line. The crate's message spans several lines, with the
/// pattern and a caret, and would break a one-line config error.
fn regex_error_summary(error: &regex::Error) -> String {
    let text = error.to_string();
    text.lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .unwrap_or("unknown error")
        .trim()
        .trim_start_matches("error: ")
        .to_owned()
}

fn quote(text: &str) -> String {
    format!("{text:?}")
}

fn is_short_printable(text: &str) -> bool {
    !text.trim().is_empty() && text.chars().count() <= 64 && !text.chars().any(char::is_control)
}

/// RFC 5322 §3.6.8: printable US-ASCII except the colon.
fn is_field_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|byte| (33..=126).contains(&byte) && byte != b':')
}

fn is_rule_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(config: &ClassifyConfig) -> String {
        config.check().unwrap_err().to_string()
    }

    #[test]
    fn defaults_pass_the_check() {
        assert!(ClassifyConfig::default().check().is_ok());
    }

    #[test]
    fn tag_syntax_is_checked() {
        let cases = [
            ("[secure]", Some("secure")),
            ("[ encrypt ]", Some("encrypt")),
            ("secure", None),
            ("[secure", None),
            ("[]", None),
            ("[ ]", None),
            ("[a[b]", None),
            ("[a\tb]", None),
        ];
        for (tag, expected) in cases {
            assert_eq!(tag_inner(tag), expected, "{tag:?}");
        }
    }

    #[test]
    fn bad_tag_names_key_and_value() {
        let mut config = ClassifyConfig::default();
        config.subject_tags.tags.push("encrypt".into());
        assert_eq!(
            error_of(&config),
            "policy.classify.subject_tags.tags[1] = \"encrypt\": \
             expected a bracketed tag such as [secure]"
        );
    }

    #[test]
    fn bad_regex_names_key_value_and_cause() {
        let mut config = ClassifyConfig::default();
        config.patterns.push(PatternRule {
            name: "broken".into(),
            regex: "(".into(),
            min_count: 1,
            action: Action::Review,
        });
        let error = error_of(&config);
        assert!(
            error.starts_with(
                "policy.classify.patterns[0].regex = \"(\": invalid regular expression: "
            ),
            "{error}"
        );
        assert!(!error.contains('\n'), "{error}");
    }

    #[test]
    fn duplicate_pattern_name_is_rejected() {
        let mut config = ClassifyConfig::default();
        for _ in 0..2 {
            config.patterns.push(PatternRule {
                name: "postcode".into(),
                regex: "[A-Z]{2}[0-9]".into(),
                min_count: 1,
                action: Action::Protect,
            });
        }
        let error = error_of(&config);
        assert!(
            error.starts_with("policy.classify.patterns[1].name"),
            "{error}"
        );
    }

    #[test]
    fn zero_limits_are_rejected() {
        let config = ClassifyConfig {
            max_parts: 0,
            ..ClassifyConfig::default()
        };
        assert_eq!(
            error_of(&config),
            "policy.classify.max_parts = 0: must be at least 1"
        );

        let mut config = ClassifyConfig::default();
        config.patterns.push(PatternRule {
            name: "any".into(),
            regex: "x".into(),
            min_count: 0,
            action: Action::Protect,
        });
        assert_eq!(
            error_of(&config),
            "policy.classify.patterns[0].min_count = 0: must be at least 1"
        );
    }

    #[test]
    fn bad_header_rule_name_is_rejected() {
        let mut config = ClassifyConfig::default();
        config.header_rules[0].name = "X Class:".into();
        let error = error_of(&config);
        assert!(
            error.starts_with("policy.classify.header_rules[0].name"),
            "{error}"
        );
    }

    #[test]
    fn required_keyword_needs_a_keyword() {
        let mut config = ClassifyConfig::default();
        config.nhs_number.require_keyword = true;
        config.nhs_number.keywords.clear();
        let error = error_of(&config);
        assert!(
            error.starts_with("policy.classify.nhs_number.keywords = []"),
            "{error}"
        );
    }
}
