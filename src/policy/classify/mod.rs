//! Classification: whether an accepted message is sensitive, and every reason why.
//!
//! A message is sensitive when a rule matches: a subject tag such as `[secure]`, a
//! protective marking such as `OFFICIAL-SENSITIVE`, a header rule such as `Sensitivity:
//! Private`, an NHS number with a valid check digit, or a configured regular expression.
//! Each rule sets an action, `protect` or `review`, and the strongest one wins.
//!
//! Classification fails closed: a message that cannot be parsed, nests deeper or has more
//! parts than the limits allow, hides content behind a missing boundary or an undecodable
//! part, or has a header section that mail readers would read differently (a line that is
//! not a field, a duplicate `Subject` or `Content-Type`) is sensitive, with rule
//! `unparseable` and the cause as the reason.
//!
//! The detectors read the subject, every header field, and the decoded content of every
//! leaf part as text, whatever its type, after removing invisible characters and mapping
//! Unicode spaces and dashes (see `normalize`). Reasons go into logs, so they name the
//! rule, where it matched by section number and what kind of thing matched, never the
//! matched text or a file name. Compressed content (PDF streams, office documents,
//! archives) is read only as its raw bytes, so text inside it is not found.

mod config;
mod html;
mod mime;
mod nhs_number;
mod normalize;
mod prescan;
mod rules;
mod structure;
mod subject;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use config::{
    ClassifyConfig, HeaderRule, MarkingConfig, NhsNumberConfig, PatternRule, SubjectTagConfig,
};
pub use subject::strip_subject_tags;

use mime::Limits;
use rules::Rules;

/// Handling that a matching rule requires, ordered so that `Review > Protect`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Deliver only in a protected way: forced TLS to a secure domain, S/MIME or the portal.
    #[default]
    Protect,
    /// Hold for an administrator to release or reject.
    Review,
}

/// The outcome for one message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Classification {
    /// The strongest action of all matches, `None` when the message is not sensitive.
    pub action: Option<Action>,
    /// Every rule that matched, in the order the rules ran.
    pub matches: Vec<RuleMatch>,
}

/// One rule that matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleMatch {
    /// Rule name: `subject-tag`, `marking`, `header:<name>`, `nhs-number`,
    /// `pattern:<name>`, `unparseable` or `policy-error`.
    pub rule: String,
    /// The action this rule requires.
    pub action: Action,
    /// Place of the match: `subject`, `body line 2 of part 1`, `part 1.2 text/html` (the
    /// type only when it is a well-known one), `part 1.3`,
    /// `attachment in part 2`, `file name of part 2`, `header Sensitivity`, with
    /// ` of part N` for a nested message or a part header. Never message text other than a
    /// header field name made of letters, digits and `-`.
    pub location: String,
    /// Description of the match in words, such as `tag [secure]` or `1 NHS number with a
    /// valid check digit`. Never the matched message text.
    pub detail: String,
}

/// A classification config that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    /// A value is not acceptable.
    #[error("{key} = {value}: {reason}")]
    Invalid {
        /// Dotted key, such as `policy.classify.patterns[0].regex`.
        key: String,
        /// The value as written, quoted.
        value: String,
        /// Reason for the rejection.
        reason: String,
    },
}

/// Classifies messages with the rules of one `[policy.classify]` config.
#[derive(Clone, Debug)]
pub struct Classifier {
    rules: Rules,
    limits: Limits,
    unparseable_action: Action,
}

impl Classifier {
    /// Compiles the rules.
    ///
    /// # Errors
    ///
    /// [`ClassifyError::Invalid`] for a value that [`ClassifyConfig::check`] rejects, such
    /// as an invalid regular expression.
    pub fn new(config: &ClassifyConfig) -> Result<Classifier, ClassifyError> {
        Ok(Classifier {
            rules: Rules::new(config)?,
            limits: Limits {
                max_depth: config.max_depth,
                max_parts: config.max_parts,
            },
            unparseable_action: config.unparseable_action,
        })
    }

    /// Classifies one message, given as the bytes received after DATA (CRLF or LF line
    /// endings). Never panics: a panic inside the MIME parser or the rules makes the message
    /// `unparseable`, and so sensitive.
    pub fn classify(&self, message: &[u8]) -> Classification {
        let result = mime::catch_panic(|| {
            let extracted = mime::extract(message, self.limits)?;
            Ok(self.rules.apply(&extracted))
        });
        match result {
            Ok(matches) => Classification::from_matches(matches),
            Err(reason) => Classification::from_matches(vec![RuleMatch {
                rule: "unparseable".into(),
                action: self.unparseable_action,
                location: "message".into(),
                detail: reason.to_string(),
            }]),
        }
    }
}

impl Classification {
    /// Returns the classification of a message that sealgate failed to classify because
    /// of an internal error: rule `policy-error`, which holds it for review.
    pub fn policy_error(detail: &str) -> Classification {
        Classification::from_matches(vec![RuleMatch {
            rule: "policy-error".into(),
            action: Action::Review,
            location: "message".into(),
            detail: detail.into(),
        }])
    }

    fn from_matches(matches: Vec<RuleMatch>) -> Classification {
        Classification {
            action: matches.iter().map(|m| m.action).max(),
            matches,
        }
    }

    /// True when some rule matched.
    pub fn is_sensitive(&self) -> bool {
        self.action.is_some()
    }
}

impl Action {
    /// Returns the name used in the config and in reasons.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Protect => "protect",
            Action::Review => "review",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line: `nhs-number in part 1 text/plain: 1 NHS number with a valid check digit
/// (protect)`.
impl fmt::Display for RuleMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} in {}: {} ({})",
            self.rule, self.location, self.detail, self.action
        )
    }
}

/// True when `needle` occurs in `haystack`.
fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[cfg(test)]
mod tests;
