//! Subject tags: finding bracketed tokens such as `[secure]`, and removing them from the
//! `Subject` field before delivery while leaving every other byte of the message as it was.

use std::ops::Range;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use mail_parser::MessageParser;

use super::config::{ClassifyConfig, tag_inner};
use super::contains_bytes;
use super::normalize::normalize_tag_text;

/// Rewrites the message without the configured subject tags, or returns `None` when
/// stripping is off, no `Subject` field contains a tag, or the top header block has more
/// than one `Subject` field (the classifier treats that as unparseable, and rewriting one
/// of them would hide the tag from the recipient). Only the `Subject` field changes. It
/// keeps its bytes when they are printable ASCII. Otherwise it is decoded and written again
/// as UTF-8 encoded words, so a decoded CR, LF or other control character never reaches the
/// header raw.
pub fn strip_subject_tags(message: &[u8], config: &ClassifyConfig) -> Option<Vec<u8>> {
    let tags = &config.subject_tags;
    if !tags.strip || tags.tags.is_empty() {
        return None;
    }
    let inners: Vec<&str> = tags.tags.iter().filter_map(|tag| tag_inner(tag)).collect();

    let fields = header_fields(message);
    let subjects: Vec<&Range<usize>> = fields
        .iter()
        .filter(|field| is_subject_field(&message[(*field).clone()]))
        .collect();
    if subjects.len() != 1 {
        return None;
    }

    let mut output = Vec::with_capacity(message.len());
    let mut copied = 0;
    for field in subjects.into_iter().cloned() {
        let Some(value) = stripped_value(message, field.clone(), &inners) else {
            continue;
        };
        let colon = message[field.clone()]
            .iter()
            .position(|byte| *byte == b':')
            .expect("is_subject_field checked the colon");
        output.extend_from_slice(&message[copied..field.start + colon + 1]);
        output.extend_from_slice(&value);
        output.extend_from_slice(line_ending_of(&message[field.clone()]));
        copied = field.end;
    }
    if copied == 0 {
        return None;
    }
    output.extend_from_slice(&message[copied..]);
    Some(output)
}

/// Ranges of the bracketed tokens in `text` whose trimmed inner text equals one of `inners`
/// case-insensitively. Each range covers the brackets.
pub(super) fn find_tags(text: &[u8], inners: &[&str]) -> Vec<(Range<usize>, usize)> {
    let mut found = Vec::new();
    let mut start = 0;
    while let Some(open) = text[start..].iter().position(|byte| *byte == b'[') {
        let open = start + open;
        let Some(length) = text[open + 1..]
            .iter()
            .position(|b| *b == b']' || *b == b'[')
        else {
            break;
        };
        let close = open + 1 + length;
        if text[close] == b'[' {
            start = close;
            continue;
        }
        let inner = text[open + 1..close].trim_ascii();
        if let Some(index) = inners.iter().position(|tag| same_tag(inner, tag)) {
            found.push((open..close + 1, index));
        }
        start = close + 1;
    }
    found
}

fn same_tag(inner: &[u8], tag: &str) -> bool {
    inner.eq_ignore_ascii_case(tag.as_bytes())
        || std::str::from_utf8(inner).is_ok_and(|inner| inner.to_lowercase() == tag.to_lowercase())
}

/// The new value of one `Subject` field (the bytes after the colon, without the final line
/// ending), or `None` when it contains no tag.
fn stripped_value(message: &[u8], field: Range<usize>, inners: &[&str]) -> Option<Vec<u8>> {
    let raw = &message[field.clone()];
    let colon = raw.iter().position(|byte| *byte == b':')?;
    let value = trim_line_ending(&raw[colon + 1..]);

    if !contains_bytes(value, b"=?") && is_printable_ascii_value(value) {
        let tags = find_tags(value, inners);
        if tags.is_empty() {
            return None;
        }
        return Some(remove_ranges(
            value,
            tags.into_iter().map(|(range, _)| range),
        ));
    }

    // Encoded words: decode, strip, and write the result again.
    // Encoded words or 8-bit text: decode, strip, and write the result again.
    let decoded = decode_subject(value)?;
    let decoded = normalize_tag_text(&decoded);
    let tags = find_tags(decoded.as_bytes(), inners);
    if tags.is_empty() {
        return None;
    }
    let stripped = remove_ranges(decoded.as_bytes(), tags.into_iter().map(|(range, _)| range));
    let stripped = String::from_utf8_lossy(&stripped);
    Some(encode_value(stripped.trim()))
}

/// True when the value is printable ASCII, tabs and folds (a line ending followed by a space
/// or tab), so removing bytes from it cannot produce anything but printable ASCII.
fn is_printable_ascii_value(value: &[u8]) -> bool {
    value.iter().enumerate().all(|(index, byte)| match byte {
        b' '..=b'~' | b'\t' => true,
        b'\r' => value.get(index + 1) == Some(&b'\n'),
        b'\n' => matches!(value.get(index + 1), Some(b' ' | b'\t')),
        _ => false,
    })
}

/// Removes each range with one space next to it, keeping the leading space after the colon.
fn remove_ranges(value: &[u8], ranges: impl Iterator<Item = Range<usize>>) -> Vec<u8> {
    let mut keep = vec![true; value.len()];
    for range in ranges {
        let mut range = range;
        if value
            .get(range.end)
            .is_some_and(|b| *b == b' ' || *b == b'\t')
        {
            range.end += 1;
        } else if range.start > 0 && matches!(value[range.start - 1], b' ' | b'\t') {
            range.start -= 1;
        }
        keep[range].fill(false);
    }
    let mut output: Vec<u8> = value
        .iter()
        .zip(keep)
        .filter_map(|(byte, keep)| keep.then_some(*byte))
        .collect();
    let trimmed = output.trim_ascii_end().len();
    output.truncate(trimmed);
    if !output.starts_with(b" ") && !output.starts_with(b"\t") {
        output.insert(0, b' ');
    }
    output
}

fn decode_subject(value: &[u8]) -> Option<String> {
    let mut header = b"Subject:".to_vec();
    header.extend_from_slice(value);
    header.extend_from_slice(b"\r\n\r\n");
    let parsed = MessageParser::default().parse_headers(&header)?;
    parsed.subject().map(str::to_owned)
}

/// ` text` for short printable ASCII text, otherwise RFC 2047 B-encoded UTF-8 words, one per
/// line, folded with CRLF and a space. Control characters are only ever written encoded.
fn encode_value(text: &str) -> Vec<u8> {
    let printable = text.bytes().all(|byte| matches!(byte, b' '..=b'~'));
    if printable && text.len() < 900 && !text.contains("=?") {
        return format!(" {text}").into_bytes();
    }
    // At most 39 bytes per word give 52 base64 characters, so even the first line, with
    // `Subject:` in front, stays within the 78 characters RFC 5322 §2.1.1 recommends.
    let mut output = Vec::new();
    let mut chunk = String::new();
    let mut chunks = Vec::new();
    for character in text.chars() {
        if chunk.len() + character.len_utf8() > 39 {
            chunks.push(std::mem::take(&mut chunk));
        }
        chunk.push(character);
    }
    chunks.push(chunk);
    for (index, chunk) in chunks.iter().enumerate() {
        if index > 0 {
            output.extend_from_slice(b"\r\n");
        }
        output.extend_from_slice(format!(" =?utf-8?B?{}?=", STANDARD.encode(chunk)).as_bytes());
    }
    output
}

/// Ranges of the fields in the top header block, each with its continuation lines and its
/// final line ending.
fn header_fields(message: &[u8]) -> Vec<Range<usize>> {
    let mut fields: Vec<Range<usize>> = Vec::new();
    let mut line_start = 0;
    while line_start < message.len() {
        let line_end = message[line_start..]
            .iter()
            .position(|byte| *byte == b'\n')
            .map_or(message.len(), |index| line_start + index + 1);
        let line = trim_line_ending(&message[line_start..line_end]);
        if line.is_empty() {
            break;
        }
        match (line[0], fields.last_mut()) {
            (b' ' | b'\t', Some(field)) => field.end = line_end,
            _ => fields.push(line_start..line_end),
        }
        line_start = line_end;
    }
    fields
}

fn is_subject_field(field: &[u8]) -> bool {
    field
        .iter()
        .position(|byte| *byte == b':')
        .is_some_and(|colon| {
            field[..colon]
                .trim_ascii_end()
                .eq_ignore_ascii_case(b"subject")
        })
}

fn trim_line_ending(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn line_ending_of(field: &[u8]) -> &'static [u8] {
    if field.ends_with(b"\r\n") {
        b"\r\n"
    } else if field.ends_with(b"\n") {
        b"\n"
    } else {
        b""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strip(message: &str) -> Option<String> {
        strip_subject_tags(message.as_bytes(), &ClassifyConfig::default())
            .map(|bytes| String::from_utf8(bytes).unwrap())
    }

    #[test]
    fn tag_tokens_match_whole_brackets_only() {
        let cases = [
            ("[secure] Referral", vec![(0, 8)]),
            ("RE: [SECURE] Referral", vec![(4, 12)]),
            ("[ Secure ] x", vec![(0, 10)]),
            ("Referral [secure]", vec![(9, 17)]),
            ("secure referral", vec![]),
            ("[secure-ish] referral", vec![]),
            ("[[secure]", vec![(1, 9)]),
            ("[not secure]", vec![]),
            ("[secure", vec![]),
            ("[secure][secure]", vec![(0, 8), (8, 16)]),
        ];
        for (subject, expected) in cases {
            let found: Vec<(usize, usize)> = find_tags(subject.as_bytes(), &["secure"])
                .into_iter()
                .map(|(range, _)| (range.start, range.end))
                .collect();
            assert_eq!(found, expected, "{subject:?}");
        }
    }

    #[test]
    fn second_tag_is_found_by_index() {
        let found = find_tags(b"[Encrypt] results", &["secure", "encrypt"]);
        assert_eq!(found, [(0..9, 1)]);
    }

    #[test]
    fn tag_is_removed_and_other_bytes_kept() {
        let message = "From: a@example.org\r\nSubject: [secure] Referral for review\r\n\
                       X-Other: [secure]\r\n\r\nBody [secure]\r\n";
        assert_eq!(
            strip(message).unwrap(),
            "From: a@example.org\r\nSubject: Referral for review\r\n\
             X-Other: [secure]\r\n\r\nBody [secure]\r\n"
        );
    }

    #[test]
    fn trailing_tag_is_removed_with_its_space() {
        let message = "Subject: Referral [SECURE]\nTo: b@example.org\n\nhi\n";
        assert_eq!(
            strip(message).unwrap(),
            "Subject: Referral\nTo: b@example.org\n\nhi\n"
        );
    }

    #[test]
    fn folded_subject_keeps_its_fold() {
        let message = "Subject: [secure] Referral\r\n for review\r\n\r\nx";
        assert_eq!(
            strip(message).unwrap(),
            "Subject: Referral\r\n for review\r\n\r\nx"
        );
    }

    #[test]
    fn untagged_message_is_not_rewritten() {
        assert_eq!(strip("Subject: secure referral\r\n\r\n[secure]\r\n"), None);
        assert_eq!(strip("Subject: [secure-ish]\r\n\r\n"), None);
        assert_eq!(strip("From: a@example.org\r\n\r\n"), None);
    }

    #[test]
    fn stripping_can_be_turned_off() {
        let mut config = ClassifyConfig::default();
        config.subject_tags.strip = false;
        assert_eq!(
            strip_subject_tags(b"Subject: [secure] x\r\n\r\n", &config),
            None
        );
    }

    #[test]
    fn encoded_subject_is_written_again() {
        let message =
            "Subject: =?utf-8?q?=5Bsecure=5D_R=C3=A9sultats?=\r\nTo: b@example.org\r\n\r\nx";
        let stripped = strip(message).unwrap();
        assert!(
            stripped.ends_with("\r\nTo: b@example.org\r\n\r\nx"),
            "{stripped}"
        );
        let parsed = MessageParser::default().parse(stripped.as_bytes()).unwrap();
        assert_eq!(parsed.subject(), Some("Résultats"));
    }

    #[test]
    fn long_encoded_subject_is_folded() {
        let text = "é".repeat(60);
        let message = format!(
            "Subject: =?utf-8?B?{}?= [secure]\n\nx",
            STANDARD.encode(&text)
        );
        let stripped = strip(&message).unwrap();
        let header = stripped.split("\n\n").next().unwrap();
        assert!(header.lines().count() > 1, "{header}");
        assert!(header.lines().all(|line| line.len() <= 78), "{header}");
        let parsed = MessageParser::default().parse(stripped.as_bytes()).unwrap();
        assert_eq!(parsed.subject(), Some(text.as_str()));
    }

    fn bypass_case(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/classify/bypass")
            .join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        text.replace('\n', "\r\n").into_bytes()
    }

    fn header_block(message: &[u8]) -> &[u8] {
        let end = message
            .windows(4)
            .position(|window| window == b"\r\n\r\n")
            .expect("a blank line ends the header");
        &message[..end + 2]
    }

    #[test]
    fn decoded_line_breaks_are_not_written_raw() {
        let cases = [
            "i01-strip-crlf-inject.eml",
            "i02-strip-inject-fake-pkcs7.eml",
            "i03-strip-inject-blank.eml",
            "i04-strip-lf-inject.eml",
            "i05-strip-smuggle.eml",
        ];
        for name in cases {
            let message = bypass_case(name);
            let stripped = strip_subject_tags(&message, &ClassifyConfig::default())
                .unwrap_or_else(|| panic!("{name}: tag not stripped"));
            let original_fields = header_fields(&message).len();
            assert_eq!(header_fields(&stripped).len(), original_fields, "{name}");

            let header = header_block(&stripped);
            let subject = header_fields(&stripped)
                .into_iter()
                .find(|field| is_subject_field(&stripped[field.clone()]))
                .unwrap();
            let value = &stripped[subject];
            assert!(
                value[..value.len() - 2]
                    .iter()
                    .all(|byte| matches!(byte, b' '..=b'~' | b'\r' | b'\n')),
                "{name}: {value:?}"
            );
            for (index, byte) in header.iter().enumerate() {
                if *byte == b'\n' {
                    assert_eq!(header[index - 1], b'\r', "{name}: bare LF at {index}");
                }
            }
            let parsed = MessageParser::default().parse(&stripped).unwrap();
            assert!(
                parsed.header("X-Injected").is_none() && parsed.header("X-LF").is_none(),
                "{name}"
            );
            let content_types = parsed.parts[0]
                .headers()
                .iter()
                .filter(|header| header.name().eq_ignore_ascii_case("content-type"))
                .count();
            assert_eq!(content_types, 1, "{name}");
        }
    }

    #[test]
    fn control_characters_are_encoded() {
        let message = "Subject: =?utf-8?q?=5Bsecure=5D_a=00b=07c?=\r\n\r\nx";
        let stripped = strip(message).unwrap();
        assert!(stripped.starts_with("Subject: =?utf-8?B?"), "{stripped:?}");
        assert!(!stripped.contains('\0') && !stripped.contains('\u{7}'));
    }

    #[test]
    fn two_subject_fields_are_not_rewritten() {
        let message = bypass_case("t07-two-subjects-tag-first.eml");
        assert_eq!(
            strip_subject_tags(&message, &ClassifyConfig::default()),
            None
        );
    }

    #[test]
    fn lookalike_tags_are_stripped() {
        let cases = [
            "Subject: [\u{a0}secure\u{a0}] Referral\r\n\r\nx",
            "Subject: \u{ff3b}secure\u{ff3d} Referral\r\n\r\nx",
        ];
        for message in cases {
            let stripped = strip(message).unwrap_or_else(|| panic!("{message:?}"));
            assert_eq!(stripped, "Subject: Referral\r\n\r\nx", "{message:?}");
        }
    }
}
