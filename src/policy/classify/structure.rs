//! Checks on the raw bytes of a header section, for the constructs that mail readers
//! resolve differently. mail-parser silently skips a line that is not a field and keeps the
//! last of two `Content-Type` fields, while Python's `email` and many clients end the
//! header section at such a line or keep the first field. The classifier would then read a
//! different message from the one the recipient sees, so these cases are unparseable.

/// Fields that must occur at most once in one header section, in lowercase.
const SINGLE_FIELDS: [&str; 4] = [
    "subject",
    "content-type",
    "content-transfer-encoding",
    "mime-version",
];

/// Transfer encodings that mail-parser decodes or that need no decoding (RFC 2045 §6.1).
const KNOWN_ENCODINGS: [&str; 5] = ["7bit", "8bit", "binary", "quoted-printable", "base64"];

/// A header section that mail readers may read in different ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HeaderProblem {
    /// A line that is neither `name: value` nor a continuation line.
    NotAField,
    /// White space between a field name and its colon.
    SpaceBeforeColon,
    /// A second field of this name.
    Duplicate(&'static str),
    /// A `Content-Transfer-Encoding` other than the five of RFC 2045, such as `x-uuencode`.
    UnknownEncoding,
    /// `message/partial` or `message/external-body`, whose content is elsewhere.
    ContentElsewhere,
}

/// Checks one header section, which ends at the first empty line or at the end of
/// `section`. Line endings may be CRLF or LF.
pub(super) fn check_header_section(section: &[u8]) -> Result<(), HeaderProblem> {
    let mut seen = [false; SINGLE_FIELDS.len()];
    let mut fields: Vec<(&[u8], Vec<u8>)> = Vec::new();
    for line in section.split(|byte| *byte == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if matches!(line[0], b' ' | b'\t') {
            let (_, value) = fields.last_mut().ok_or(HeaderProblem::NotAField)?;
            value.push(b' ');
            value.extend_from_slice(line.trim_ascii());
            continue;
        }
        let colon = line
            .iter()
            .position(|byte| *byte == b':')
            .ok_or(HeaderProblem::NotAField)?;
        let name = &line[..colon];
        if name.is_empty() {
            return Err(HeaderProblem::NotAField);
        }
        if name.ends_with(b" ") || name.ends_with(b"\t") {
            return Err(HeaderProblem::SpaceBeforeColon);
        }
        if !name.iter().all(|byte| matches!(byte, b'!'..=b'~')) {
            return Err(HeaderProblem::NotAField);
        }
        if let Some(index) = SINGLE_FIELDS
            .iter()
            .position(|single| name.eq_ignore_ascii_case(single.as_bytes()))
        {
            if seen[index] {
                return Err(HeaderProblem::Duplicate(SINGLE_FIELDS[index]));
            }
            seen[index] = true;
        }
        fields.push((name, line[colon + 1..].trim_ascii().to_vec()));
    }

    for (name, value) in &fields {
        let value = without_comments(value).to_ascii_lowercase();
        if name.eq_ignore_ascii_case(b"content-transfer-encoding")
            && !KNOWN_ENCODINGS
                .iter()
                .any(|known| value == known.as_bytes())
        {
            return Err(HeaderProblem::UnknownEncoding);
        }
        if name.eq_ignore_ascii_case(b"content-type") {
            let media_type: Vec<u8> = value
                .split(|byte| *byte == b';')
                .next()
                .unwrap_or_default()
                .iter()
                .copied()
                .filter(|byte| !byte.is_ascii_whitespace())
                .collect();
            if media_type == b"message/partial" || media_type == b"message/external-body" {
                return Err(HeaderProblem::ContentElsewhere);
            }
        }
    }
    Ok(())
}

/// Removes RFC 5322 comments, `(...)` with nesting and backslash escapes, and trims the
/// result. Quoted strings are kept as they are.
pub(super) fn without_comments(value: &[u8]) -> Vec<u8> {
    let mut output = Vec::with_capacity(value.len());
    let mut depth = 0usize;
    let mut quoted = false;
    let mut escaped = false;
    for &byte in value {
        if escaped {
            escaped = false;
            if depth == 0 {
                output.push(byte);
            }
            continue;
        }
        match byte {
            b'\\' => {
                escaped = true;
                if depth == 0 {
                    output.push(byte);
                }
            }
            b'"' if depth == 0 => {
                quoted = !quoted;
                output.push(byte);
            }
            b'(' if !quoted => depth += 1,
            b')' if !quoted && depth > 0 => depth -= 1,
            _ if depth == 0 => output.push(byte),
            _ => {}
        }
    }
    output.trim_ascii().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_header_sections_pass() {
        let cases = [
            "Subject: hi\r\nContent-Type: text/plain;\r\n charset=utf-8\r\n\r\nbody: x\r\n",
            "From: a@example.org\nTo: b@example.org\n\nSubject: in the body\n",
            "Content-Transfer-Encoding: Base64 (comment)\r\n\r\n",
            "Received: one\r\nReceived: two\r\n\r\n",
            "",
        ];
        for section in cases {
            assert_eq!(
                check_header_section(section.as_bytes()),
                Ok(()),
                "{section:?}"
            );
        }
    }

    #[test]
    fn ambiguous_header_sections_are_found() {
        let cases = [
            (
                "Subject: hi\r\nNHS number 9434765919\r\n\r\n",
                HeaderProblem::NotAField,
            ),
            (" folded first\r\n\r\n", HeaderProblem::NotAField),
            (": no name\r\n\r\n", HeaderProblem::NotAField),
            (
                "Content-Type : application/octet-stream\r\n\r\n",
                HeaderProblem::SpaceBeforeColon,
            ),
            (
                "Content-Type: text/plain\r\ncontent-type: application/octet-stream\r\n\r\n",
                HeaderProblem::Duplicate("content-type"),
            ),
            (
                "Subject: a\nSubject: b\n\n",
                HeaderProblem::Duplicate("subject"),
            ),
            (
                "MIME-Version: 1.0\nMIME-Version: 1.0\n\n",
                HeaderProblem::Duplicate("mime-version"),
            ),
            (
                "Content-Transfer-Encoding: 7bit\nContent-Transfer-Encoding: base64\n\n",
                HeaderProblem::Duplicate("content-transfer-encoding"),
            ),
            (
                "Content-Transfer-Encoding: x-uuencode\n\n",
                HeaderProblem::UnknownEncoding,
            ),
            (
                "Content-Transfer-Encoding: base-64\n\n",
                HeaderProblem::UnknownEncoding,
            ),
            (
                "Content-Type: Message/Partial; id=x\n\n",
                HeaderProblem::ContentElsewhere,
            ),
            (
                "Content-Type: message/external-body;\n access-type=URL\n\n",
                HeaderProblem::ContentElsewhere,
            ),
        ];
        for (section, expected) in cases {
            assert_eq!(
                check_header_section(section.as_bytes()),
                Err(expected),
                "{section:?}"
            );
        }
    }

    #[test]
    fn comments_are_removed() {
        let cases = [
            ("Private (set by Outlook)", "Private"),
            ("  Private  ", "Private"),
            ("a (b (c) d) e", "a  e"),
            ("\"(kept)\" x", "\"(kept)\" x"),
            ("a \\(b\\) c", "a \\(b\\) c"),
        ];
        for (value, expected) in cases {
            assert_eq!(
                without_comments(value.as_bytes()),
                expected.as_bytes(),
                "{value:?}"
            );
        }
    }
}
