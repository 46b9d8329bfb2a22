//! NHS numbers: ten digits, the last a modulus-11 check digit over the first nine with
//! weights 10 down to 2, written as one run (`9434765919`) or in groups of any size
//! separated by one space, `-`, `.`, `/` or ` - ` each (`943 476 5919`, `9434 765 919`,
//! `943.476.5919`, `943 - 476 - 5919`).
//!
//! The text is expected to be normalised first (see `normalize`), which turns Unicode
//! spaces and dashes into these separators and full-width digits into ASCII ones. Groups
//! joined by separators form a sequence. A sequence counts only when it splits at group
//! boundaries into numbers of exactly ten digits, so `19434765919` and `1 943 476 5919` are
//! not NHS numbers, but `9434765919 9990000018` is two.
//! NOTE: groups split over lines, and numbers in digits other than ASCII and full-width
//! ones, are not detected.

use std::ops::Range;

use super::config::NhsNumberConfig;

/// Counts NHS numbers in text, as configured.
#[derive(Clone, Debug)]
pub(super) struct NhsNumberDetector {
    /// Lowercased keywords, when a keyword is required near each number.
    keywords: Option<Vec<String>>,
    /// Characters searched for a keyword on each side of a number.
    keyword_distance: usize,
}

impl NhsNumberDetector {
    pub(super) fn new(config: &NhsNumberConfig) -> NhsNumberDetector {
        let keywords = config
            .require_keyword
            .then(|| config.keywords.iter().map(|k| k.to_lowercase()).collect());
        NhsNumberDetector {
            keywords,
            keyword_distance: config.keyword_distance,
        }
    }

    /// Counts the numbers with a valid check digit, and near a keyword when one is required.
    pub(super) fn count(&self, text: &str) -> usize {
        candidates(text)
            .into_iter()
            .filter(|range| has_valid_check_digit(&digits_of(&text[range.clone()])))
            .filter(|range| self.keyword_near(text, range.clone()))
            .count()
    }

    fn keyword_near(&self, text: &str, number: Range<usize>) -> bool {
        let Some(keywords) = &self.keywords else {
            return true;
        };
        let window_start = text[..number.start]
            .char_indices()
            .rev()
            .take(self.keyword_distance)
            .last()
            .map_or(number.start, |(index, _)| index);
        let window_end = text[number.end..]
            .char_indices()
            .nth(self.keyword_distance)
            .map_or(text.len(), |(index, _)| number.end + index);
        let window = text[window_start..window_end].to_lowercase();
        keywords
            .iter()
            .any(|keyword| window.contains(keyword.as_str()))
    }
}

/// True when the ten digits end in the right modulus-11 check digit. A remainder that
/// gives check digit 10 never occurs in an issued number, so it is invalid.
pub(super) fn has_valid_check_digit(digits: &[u8]) -> bool {
    if digits.len() != 10 || !digits.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let sum: u32 = digits[..9]
        .iter()
        .zip((2..=10u32).rev())
        .map(|(digit, weight)| u32::from(digit - b'0') * weight)
        .sum();
    let check = match 11 - sum % 11 {
        11 => 0,
        check => check,
    };
    check != 10 && check == u32::from(digits[9] - b'0')
}

fn digits_of(text: &str) -> Vec<u8> {
    text.bytes().filter(u8::is_ascii_digit).collect()
}

/// Byte ranges of the ten-digit numbers in the text, before the check digit.
fn candidates(text: &str) -> Vec<Range<usize>> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut start = 0;
    while start < bytes.len() {
        if !bytes[start].is_ascii_digit() {
            start += 1;
            continue;
        }
        let groups = sequence_at(bytes, start);
        start = groups.last().map_or(start + 1, |group| group.end);
        found.extend(split_into_numbers(&groups));
    }
    found
}

/// Returns the digit groups of the sequence that starts at `from`, in order.
fn sequence_at(bytes: &[u8], from: usize) -> Vec<Range<usize>> {
    let mut groups = Vec::new();
    let mut group_start = from;
    loop {
        let group_end = digit_run_end(bytes, group_start);
        groups.push(group_start..group_end);
        match separator_len(bytes, group_end) {
            Some(length)
                if bytes
                    .get(group_end + length)
                    .is_some_and(u8::is_ascii_digit) =>
            {
                group_start = group_end + length;
            }
            _ => return groups,
        }
    }
}

/// Splits a sequence at group boundaries into ranges of exactly ten digits each, or returns
/// nothing when it does not split that way.
fn split_into_numbers(groups: &[Range<usize>]) -> Vec<Range<usize>> {
    let mut numbers = Vec::new();
    let mut digits = 0;
    let mut number_start = None;
    for group in groups {
        number_start.get_or_insert(group.start);
        digits += group.len();
        if digits > 10 {
            return Vec::new();
        }
        if digits == 10 {
            numbers.push(number_start.take().unwrap_or(group.start)..group.end);
            digits = 0;
        }
    }
    if digits != 0 {
        return Vec::new();
    }
    numbers
}

fn digit_run_end(bytes: &[u8], from: usize) -> usize {
    bytes[from..]
        .iter()
        .position(|byte| !byte.is_ascii_digit())
        .map_or(bytes.len(), |length| from + length)
}

/// Length of the separator at `at`: ` - ` or one space, `-`, `.` or `/`.
fn separator_len(bytes: &[u8], at: usize) -> Option<usize> {
    match bytes.get(at..)? {
        [b' ', b'-', b' ', ..] => Some(3),
        [b' ' | b'-' | b'.' | b'/', ..] => Some(1),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector(require_keyword: bool) -> NhsNumberDetector {
        NhsNumberDetector::new(&NhsNumberConfig {
            require_keyword,
            keyword_distance: 20,
            ..NhsNumberConfig::default()
        })
    }

    #[test]
    fn check_digit_cases() {
        let cases = [
            ("9434765919", true),
            ("9990000018", true),
            ("9990000026", true),
            ("9990000050", true), // remainder 0 gives check digit 0
            ("9990000019", false),
            ("9434765918", false),
            ("9990000000", false), // the check digit would be 10
            ("9990000001", false),
            ("999000001", false),
            ("99900000180", false),
            ("99900a0018", false),
        ];
        for (digits, expected) in cases {
            assert_eq!(
                has_valid_check_digit(digits.as_bytes()),
                expected,
                "{digits}"
            );
        }
    }

    #[test]
    fn written_forms_are_counted() {
        let detector = detector(false);
        let cases = [
            ("9434765919", 1),
            ("NHS number: 943 476 5919.", 1),
            ("ref 943-476-5919, thanks", 1),
            ("mixed 943 476-5919", 1),
            ("dots 943.476.5919", 1),
            ("slashes 943/476/5919", 1),
            ("spaced 943 - 476 - 5919", 1),
            ("four first 9434 765 919", 1),
            ("pairs 94 34 76 59 19", 1),
            ("(9434765919)", 1),
            ("letters around X9434765919Y", 1),
            ("two: 9434765919 and 999 000 0018", 2),
            ("list 9434765919 9990000018", 2),
            ("list 943 476 5919 999 000 0018", 2),
            ("943\n476\n5919", 0),
            ("943--476--5919", 0),
            ("", 0),
        ];
        for (text, expected) in cases {
            assert_eq!(detector.count(text), expected, "{text:?}");
        }
    }

    #[test]
    fn invalid_check_digits_are_not_counted() {
        let detector = detector(false);
        for text in ["9434765918", "943 476 5918", "999-000-0019", "999 000 0000"] {
            assert_eq!(detector.count(text), 0, "{text:?}");
        }
    }

    #[test]
    fn longer_digit_runs_are_not_counted() {
        let detector = detector(false);
        let cases = [
            "19434765919",
            "94347659190",
            "card 4111199434765919",
            "1 943 476 5919",
            "943 476 5919 2",
            "12-943-476-5919",
            "943 476 59190",
            "0943 476 5919",
        ];
        for text in cases {
            assert_eq!(detector.count(text), 0, "{text:?}");
        }
    }

    #[test]
    fn keyword_is_required_when_configured() {
        let detector = detector(true);
        let cases = [
            ("NHS number 9434765919", 1),
            ("nhs no. 943 476 5919", 1),
            ("9434765919 (NHS)", 1),
            ("order 9434765919", 0),
            ("NHS, then a long stretch of words, then 9434765919", 0),
            ("é NHS é 9434765919", 1),
        ];
        for (text, expected) in cases {
            assert_eq!(detector.count(text), expected, "{text:?}");
        }
    }

    #[test]
    fn keyword_is_ignored_by_default() {
        assert_eq!(detector(false).count("order 9434765919"), 1);
    }
}
