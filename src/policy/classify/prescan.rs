//! A pass over the raw bytes, before parsing, that bounds how deeply messages can nest.
//!
//! mail-parser 0.11 parses nested `message/rfc822` parts without recursion, but converting
//! the parts of a base64 or quoted-printable encoded nested message to owned data, and
//! dropping the result, recurse once per nested level. Ten thousand levels inside one
//! encoded part overflow a 2 MiB thread stack. The limits on the parsed tree come too late
//! for that. So this pass counts the header fields that can open a nested message: a
//! `Content-Type` naming `message/...`, or a digest, whose parts default to messages. It
//! counts them in the raw text and in what base64 and quoted-printable decoding reveal, as
//! deep as mail-parser decodes (three encoded levels).
//!
//! The count can be too high (a text part that quotes such a header, a block counted both
//! raw and decoded) but not too low, so a message over the limit is treated as sensitive.

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;

use super::contains_bytes;

/// Encoded levels that mail-parser 0.11.9 decodes and parses again (`MAX_NESTED_ENCODED`).
const ENCODED_LEVELS: usize = 3;

/// Counts the header fields that may open a nested message. Counting stops early once past
/// `limit`, so the result is exact only up to it.
pub(super) fn nesting_fields(raw: &[u8], limit: usize) -> usize {
    count_level(raw, ENCODED_LEVELS, limit)
}

/// Counts the fields in `text` and in the base64 blocks in it, or in its quoted-printable
/// reading when that finds more. The reading keeps every field of the text as it was, so
/// taking the larger count rather than the sum avoids counting those fields twice.
fn count_level(text: &[u8], levels: usize, limit: usize) -> usize {
    let mut count = nesting_fields_in(text);
    if levels == 0 || count > limit {
        return count;
    }
    for block in base64_blocks(text) {
        count += count_level(&block, levels - 1, limit - count);
        if count > limit {
            return count;
        }
    }
    match quoted_printable_view(text) {
        Some(decoded) => count.max(count_level(&decoded, levels - 1, limit)),
        None => count,
    }
}

/// Counts `Content-Type` fields, unfolded, whose value mentions `message` or `digest`.
fn nesting_fields_in(text: &[u8]) -> usize {
    let mut count = 0;
    let mut lines = text.split(|byte| *byte == b'\n').peekable();
    while let Some(line) = lines.next() {
        let Some(colon) = line.iter().position(|byte| *byte == b':') else {
            continue;
        };
        if !line[..colon]
            .trim_ascii()
            .eq_ignore_ascii_case(b"content-type")
        {
            continue;
        }
        let mut value = line[colon + 1..].to_ascii_lowercase();
        while let Some(next) =
            lines.next_if(|next| next.starts_with(b" ") || next.starts_with(b"\t"))
        {
            value.extend(next.to_ascii_lowercase());
        }
        if contains_bytes(&value, b"message") || contains_bytes(&value, b"digest") {
            count += 1;
        }
    }
    count
}

/// Decodes each run of lines that look like base64. Runs that fail to decode are skipped:
/// mail-parser treats them as undecodable, and the walk then reports them.
fn base64_blocks(text: &[u8]) -> Vec<Vec<u8>> {
    let mut blocks = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    let mut flush = |current: &mut Vec<u8>| {
        if current.len() >= 16 {
            let trimmed: Vec<u8> = current.iter().copied().filter(|b| *b != b'=').collect();
            if let Ok(decoded) = STANDARD_NO_PAD.decode(&trimmed[..trimmed.len() / 4 * 4]) {
                blocks.push(decoded);
            }
        }
        current.clear();
    };
    for line in text.split(|byte| *byte == b'\n') {
        let line = line.trim_ascii();
        let is_base64 = !line.is_empty()
            && line
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
        if is_base64 {
            current.extend_from_slice(line);
        } else {
            flush(&mut current);
        }
    }
    flush(&mut current);
    blocks
}

/// Decodes quoted-printable escapes and soft line breaks, or returns `None` when the text
/// has none.
fn quoted_printable_view(text: &[u8]) -> Option<Vec<u8>> {
    let mut output = Vec::with_capacity(text.len());
    let mut changed = false;
    let mut index = 0;
    while index < text.len() {
        let byte = text[index];
        if byte != b'=' {
            output.push(byte);
            index += 1;
            continue;
        }
        let rest = &text[index + 1..];
        if rest.starts_with(b"\r\n") {
            index += 3;
        } else if rest.starts_with(b"\n") {
            index += 2;
        } else if let Some(value) = rest.get(..2).and_then(hex_byte) {
            output.push(value);
            index += 3;
        } else {
            output.push(byte);
            index += 1;
            continue;
        }
        changed = true;
    }
    changed.then_some(output)
}

fn hex_byte(pair: &[u8]) -> Option<u8> {
    let text = std::str::from_utf8(pair).ok()?;
    u8::from_str_radix(text, 16).ok()
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::STANDARD;

    use super::*;

    const NESTED: &str = "Content-Type: message/rfc822\r\n\r\n";

    #[test]
    fn raw_fields_are_counted() {
        let cases = [
            ("Subject: x\r\n\r\nbody", 0),
            (NESTED, 1),
            ("content-type:\r\n\tMESSAGE/rfc822\r\n\r\n", 1),
            ("Content-Type: multipart/digest; boundary=b\n\n", 1),
            ("Content-Type: text/plain\r\n\r\nmessage", 0),
        ];
        for (text, expected) in cases {
            assert_eq!(nesting_fields(text.as_bytes(), 100), expected, "{text:?}");
        }
    }

    #[test]
    fn encoded_fields_are_counted() {
        let inner = NESTED.repeat(5);
        let base64 = format!(
            "Content-Type: text/plain\r\n\r\n{}\r\n",
            STANDARD.encode(&inner)
        );
        assert_eq!(nesting_fields(base64.as_bytes(), 100), 5);

        let twice = STANDARD.encode(STANDARD.encode(&inner));
        assert_eq!(nesting_fields(twice.as_bytes(), 100), 5);

        let hidden = "=43ontent-Type: message/rfc822\r\n\r\n".repeat(3);
        assert_eq!(nesting_fields(hidden.as_bytes(), 100), 3);
    }

    #[test]
    fn counting_stops_past_the_limit() {
        let text = NESTED.repeat(50);
        let count = nesting_fields(text.as_bytes(), 10);
        assert!(count > 10, "{count}");
    }

    #[test]
    fn quoted_printable_view_decodes_escapes_and_soft_breaks() {
        assert_eq!(quoted_printable_view(b"plain"), None);
        assert_eq!(quoted_printable_view(b"a=3Db=\r\nc").unwrap(), b"a=bc");
        assert_eq!(quoted_printable_view(b"a=\nb=zz").unwrap(), b"ab=zz");
    }
}
