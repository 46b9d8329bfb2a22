//! Extraction of the text the rules read: subjects, header fields, the text of every text
//! and HTML part, the decoded content of every other leaf part read as text, and file names.
//!
//! mail-parser 0.11 does the MIME work (transfer encodings, charsets, RFC 2047 and RFC 2231).
//! This module walks its part tree without recursion and enforces the depth and part limits.
//! It reports as [`Unparseable`] what would otherwise let content slip past the rules: a
//! multipart whose boundary is missing, a part that failed to decode, a header section that
//! mail readers would read differently, content that is elsewhere (`message/partial`,
//! `message/external-body`) or in an encoding the parser does not decode (uuencode), or a
//! parser panic.

use std::borrow::Cow;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};

use mail_parser::decoders::base64::base64_decode;
use mail_parser::decoders::html::html_to_text;
use mail_parser::decoders::quoted_printable::quoted_printable_decode;
use mail_parser::{Encoding, Message, MessageParser, MessagePart, MimeHeaders, PartType};

use super::html::remove_hidden;
use super::prescan;
use super::structure::{HeaderProblem, check_header_section};

/// Everything the rules read from one message.
#[derive(Debug, Default)]
pub(super) struct Extracted {
    /// The top-level subject first, then those of nested messages.
    pub subjects: Vec<Scoped>,
    /// Header fields of the top-level message and of nested messages.
    pub headers: Vec<HeaderField>,
    /// The text of each text and HTML part as it shows on screen, with the part's section
    /// number as its scope.
    pub bodies: Vec<Scoped>,
    /// Subjects, header fields, every leaf part and file names, for the content detectors.
    pub contents: Vec<Content>,
}

/// Text from the top-level message (`scope` `None`) or from the nested message in the
/// `message/rfc822` part with that section number.
#[derive(Debug)]
pub(super) struct Scoped {
    pub scope: Option<String>,
    pub text: String,
}

/// One header field, with its value raw (unfolded and trimmed) and decoded.
#[derive(Debug)]
pub(super) struct HeaderField {
    pub scope: Option<String>,
    pub name: String,
    pub values: Vec<String>,
}

/// Text for the content detectors. A detector counts its matches in each of `texts`, which
/// are readings of the same content (such as HTML markup and its text), and keeps the
/// highest count.
#[derive(Debug)]
pub(super) struct Content {
    pub origin: Origin,
    pub texts: Vec<String>,
}

/// Source of a [`Content`]: a subject, a header field, a part or a file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Origin {
    Subject {
        scope: Option<String>,
    },
    /// A field of a message header (`scope` as in [`Scoped`]) or of a part header (`scope`
    /// the part's section number).
    Header {
        scope: Option<String>,
        name: String,
    },
    /// A leaf part. `content_type` is set only for the well-known types in
    /// [`KNOWN_CONTENT_TYPES`], so a location never quotes a type the sender made up.
    Part {
        section: String,
        content_type: Option<&'static str>,
        has_file_name: bool,
    },
    FileName {
        section: String,
    },
}

/// Cause of a message that could not be classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Unparseable {
    NoHeaders,
    TooDeep {
        limit: usize,
    },
    TooManyParts {
        limit: usize,
    },
    TooManyNestingFields {
        limit: usize,
    },
    MissingBoundary {
        section: String,
    },
    Undecodable {
        section: String,
    },
    /// A header section that mail readers may read differently. `section` is `None` for
    /// the top-level header.
    AmbiguousHeader {
        section: Option<String>,
        problem: HeaderProblem,
    },
    /// A decoded subject with a CR or LF, which no legitimate subject contains.
    SubjectLineBreak,
    /// A text part with an inline uuencoded block, which some clients show as an
    /// attachment.
    Uuencoded {
        section: String,
    },
    ParserPanicked,
    NoThread,
}

/// Limits on the MIME structure.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub max_depth: usize,
    pub max_parts: usize,
}

/// Maximum header fields that may open a nested message. In an unoptimised build, 500 nested
/// levels inside an encoded part parsed on a 2 MiB test thread and 1000 overflowed it, so
/// 200 leaves a wide margin on the parser thread below.
const MAX_NESTING_FIELDS: usize = 200;

/// Stack of the thread that parses, so the caller's own stack (a 2 MiB tokio worker, say)
/// plays no part.
const PARSER_STACK_SIZE: usize = 16 << 20;

/// Parses the message and extracts its text on a thread of its own, treating a panic
/// anywhere in the parser or the walk as [`Unparseable::ParserPanicked`].
pub(super) fn extract(raw: &[u8], limits: Limits) -> Result<Extracted, Unparseable> {
    let nesting_limit = limits.max_parts.min(MAX_NESTING_FIELDS);
    if prescan::nesting_fields(raw, nesting_limit) > nesting_limit {
        return Err(Unparseable::TooManyNestingFields {
            limit: nesting_limit,
        });
    }
    check_header_section(raw).map_err(|problem| Unparseable::AmbiguousHeader {
        section: None,
        problem,
    })?;
    let work = || {
        catch_panic(|| {
            let message = MessageParser::default()
                .parse(raw)
                .ok_or(Unparseable::NoHeaders)?;
            let extracted = Walk::new(limits).run(&message);
            drop_flat(message);
            extracted
        })
    };
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name("classify".into())
            .stack_size(PARSER_STACK_SIZE)
            .spawn_scoped(scope, work);
        match spawned {
            Ok(handle) => handle.join().unwrap_or(Err(Unparseable::ParserPanicked)),
            Err(error) => {
                tracing::warn!(%error, "failed to start the classification thread");
                Err(Unparseable::NoThread)
            }
        }
    })
}

/// Runs `work`, turning a panic into [`Unparseable::ParserPanicked`]. mail-parser promises
/// not to panic, but fuzzers found panics in earlier 0.11 releases.
pub(super) fn catch_panic<T>(
    work: impl FnOnce() -> Result<T, Unparseable>,
) -> Result<T, Unparseable> {
    panic::catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|_| {
        tracing::warn!("mail parser panicked; the message is treated as sensitive");
        Err(Unparseable::ParserPanicked)
    })
}

/// Drops a parsed message one nested message at a time. The derived drop recurses once per
/// nested `message/rfc822` level, so a deeply nested message could exhaust the stack.
fn drop_flat(message: Message<'_>) {
    let mut pending = vec![message];
    while let Some(mut message) = pending.pop() {
        for part in &mut message.parts {
            if let PartType::Message(nested) = std::mem::take(&mut part.body) {
                pending.push(nested);
            }
        }
    }
}

enum Task<'a> {
    /// A message: the top level (`scope` `None`) or the body of a `message/rfc822` part.
    Message {
        message: &'a Message<'a>,
        scope: Option<String>,
        depth: usize,
    },
    /// A part of `message`, with its section number (`1.2`).
    Part {
        message: &'a Message<'a>,
        id: u32,
        section: String,
        depth: usize,
    },
}

struct Walk {
    limits: Limits,
    parts_seen: usize,
    extracted: Extracted,
}

impl Walk {
    fn new(limits: Limits) -> Walk {
        Walk {
            limits,
            parts_seen: 0,
            extracted: Extracted::default(),
        }
    }

    fn run(mut self, message: &Message<'_>) -> Result<Extracted, Unparseable> {
        let mut tasks = vec![Task::Message {
            message,
            scope: None,
            depth: 0,
        }];
        while let Some(task) = tasks.pop() {
            match task {
                Task::Message {
                    message,
                    scope,
                    depth,
                } => tasks.push(self.visit_message(message, scope, depth)?),
                Task::Part {
                    message,
                    id,
                    section,
                    depth,
                } => self.visit_part(message, id, section, depth, &mut tasks)?,
            }
        }
        Ok(self.extracted)
    }

    /// Records the subject, header fields and body of a message and returns its root part.
    fn visit_message<'a>(
        &mut self,
        message: &'a Message<'a>,
        scope: Option<String>,
        depth: usize,
    ) -> Result<Task<'a>, Unparseable> {
        let root = message.parts.first().ok_or(Unparseable::NoHeaders)?;
        if let Some(subject) = message.subject() {
            if subject.contains(['\r', '\n']) {
                return Err(Unparseable::SubjectLineBreak);
            }
            self.extracted.subjects.push(Scoped {
                scope: scope.clone(),
                text: subject.to_owned(),
            });
            self.extracted.contents.push(Content {
                origin: Origin::Subject {
                    scope: scope.clone(),
                },
                texts: vec![subject.to_owned()],
            });
        }
        for field in header_fields(message, root) {
            if !field.name.eq_ignore_ascii_case("subject") {
                self.extracted.contents.push(Content {
                    origin: Origin::Header {
                        scope: scope.clone(),
                        name: field.name.clone(),
                    },
                    texts: field.values.clone(),
                });
            }
            self.extracted.headers.push(HeaderField {
                scope: scope.clone(),
                ..field
            });
        }

        // The root part of a multipart message has no number of its own, as in IMAP.
        let prefix = scope.unwrap_or_default();
        let section = if root.is_multipart() {
            prefix
        } else {
            child_section(&prefix, 0)
        };
        Ok(Task::Part {
            message,
            id: 0,
            section,
            depth,
        })
    }

    fn visit_part<'a>(
        &mut self,
        message: &'a Message<'a>,
        id: u32,
        section: String,
        depth: usize,
        tasks: &mut Vec<Task<'a>>,
    ) -> Result<(), Unparseable> {
        if depth > self.limits.max_depth {
            return Err(Unparseable::TooDeep {
                limit: self.limits.max_depth,
            });
        }
        self.parts_seen += 1;
        if self.parts_seen > self.limits.max_parts {
            return Err(Unparseable::TooManyParts {
                limit: self.limits.max_parts,
            });
        }
        let part = message.part(id).ok_or_else(|| Unparseable::Undecodable {
            section: section.clone(),
        })?;
        let header = message
            .raw_message
            .get(part.raw_header_offset() as usize..part.raw_body_offset() as usize)
            .unwrap_or_default();
        check_header_section(header).map_err(|problem| Unparseable::AmbiguousHeader {
            section: Some(section.clone()),
            problem,
        })?;
        // Part 0 is a message's root part, whose fields visit_message recorded.
        if id != 0 {
            for field in header_fields(message, part) {
                self.extracted.contents.push(Content {
                    origin: Origin::Header {
                        scope: Some(section.clone()),
                        name: field.name,
                    },
                    texts: field.values,
                });
            }
        }

        let declared_multipart = part
            .content_type()
            .is_some_and(|ct| ct.ctype().eq_ignore_ascii_case("multipart"));
        if declared_multipart && !part.is_multipart() {
            return Err(Unparseable::MissingBoundary { section });
        }
        if part.is_encoding_problem {
            return Err(Unparseable::Undecodable { section });
        }

        let file_name = part.attachment_name().map(str::to_owned);
        if let Some(name) = &file_name {
            self.extracted.contents.push(Content {
                origin: Origin::FileName {
                    section: section.clone(),
                },
                texts: vec![name.clone()],
            });
        }
        let origin = Origin::Part {
            section: section.clone(),
            content_type: known_content_type(part),
            has_file_name: file_name.is_some(),
        };

        match &part.body {
            PartType::Multipart(children) => {
                for (index, child) in children.iter().enumerate().rev() {
                    tasks.push(Task::Part {
                        message,
                        id: *child,
                        section: child_section(&section, index),
                        depth: depth + 1,
                    });
                }
            }
            PartType::Message(nested) => tasks.push(Task::Message {
                message: nested,
                scope: Some(section),
                depth: depth + 1,
            }),
            PartType::Text(text) => {
                let mut texts = vec![text.to_string()];
                texts.extend(byte_readings(&transfer_decoded(message, part), text));
                if texts.iter().any(|text| has_uuencoded_block(text)) {
                    return Err(Unparseable::Uuencoded { section });
                }
                self.extracted.bodies.push(Scoped {
                    scope: Some(section),
                    text: text.to_string(),
                });
                self.extracted.contents.push(Content { origin, texts });
            }
            PartType::Html(html) => {
                let shown = html_to_text(&remove_hidden(html));
                let mut texts = vec![html_to_text(html), html.to_string(), shown.clone()];
                texts.extend(byte_readings(&transfer_decoded(message, part), html));
                self.extracted.bodies.push(Scoped {
                    scope: Some(section),
                    text: shown,
                });
                self.extracted.contents.push(Content { origin, texts });
            }
            PartType::Binary(bytes) | PartType::InlineBinary(bytes) => {
                let texts = byte_readings(bytes, "");
                self.extracted.contents.push(Content { origin, texts });
            }
        }
        Ok(())
    }
}

/// Content types that a location may name.
pub(super) const KNOWN_CONTENT_TYPES: [&str; 12] = [
    "text/plain",
    "text/html",
    "text/csv",
    "text/calendar",
    "text/rtf",
    "text/xml",
    "application/octet-stream",
    "application/json",
    "application/xml",
    "application/pdf",
    "application/rtf",
    "image/png",
];

/// Returns the part's `type/subtype` when it is one of [`KNOWN_CONTENT_TYPES`], and
/// `text/plain` when the part has no `Content-Type` (RFC 2045 §5.2).
fn known_content_type(part: &MessagePart<'_>) -> Option<&'static str> {
    let Some(content_type) = part.content_type() else {
        return Some("text/plain");
    };
    let text = format!(
        "{}/{}",
        content_type.ctype(),
        content_type.subtype().unwrap_or("")
    )
    .to_ascii_lowercase();
    KNOWN_CONTENT_TYPES.into_iter().find(|known| *known == text)
}

/// Returns the fields of a part's header, each value unfolded and trimmed, and also decoded
/// from RFC 2047 encoded words when it has any. Comments are kept.
fn header_fields(message: &Message<'_>, part: &MessagePart<'_>) -> Vec<HeaderField> {
    let mut fields = Vec::new();
    for header in part.headers() {
        let raw = message
            .raw_message
            .get(header.offset_start() as usize..header.offset_end() as usize)
            .map(|bytes| unfold(&String::from_utf8_lossy(bytes)))
            .unwrap_or_default();
        let mut values = Vec::new();
        if let Some(text) = header.value().as_text() {
            values.push(text.trim().to_owned());
        }
        if raw.contains("=?") {
            values.extend(decode_unstructured(&raw));
        }
        values.insert(0, raw);
        fields.push(HeaderField {
            scope: None,
            name: header.name().to_owned(),
            values,
        });
    }
    fields
}

/// Decodes the encoded words in a value as if it were unstructured text, so display names
/// and comments of address fields are decoded too.
fn decode_unstructured(value: &str) -> Option<String> {
    let mut header = b"Subject: ".to_vec();
    header.extend_from_slice(value.as_bytes());
    header.extend_from_slice(b"\r\n\r\n");
    let parsed = MessageParser::default().parse_headers(&header)?;
    parsed.subject().map(str::to_owned)
}

/// Returns the part's body with its transfer encoding undone, whatever its type.
fn transfer_decoded<'a>(message: &'a Message<'_>, part: &MessagePart<'_>) -> Cow<'a, [u8]> {
    let raw = message
        .raw_message
        .get(part.raw_body_offset() as usize..part.raw_end_offset() as usize)
        .unwrap_or_default();
    let decoded = match part.encoding {
        Encoding::Base64 => base64_decode(raw),
        Encoding::QuotedPrintable => quoted_printable_decode(raw),
        Encoding::None => None,
    };
    decoded.map_or(Cow::Borrowed(raw), Cow::Owned)
}

/// Reads decoded bytes as text whatever their label: as lossy UTF-8 unless that equals
/// `declared`, the reading already made from the declared charset, and as UTF-16 when they
/// look like UTF-16. A wrong label turns digits into other characters in the declared
/// reading, but a reader can still recover them.
fn byte_readings(bytes: &[u8], declared: &str) -> Vec<String> {
    let mut texts = Vec::new();
    let utf8 = String::from_utf8_lossy(bytes);
    if utf8 != declared {
        texts.push(utf8.into_owned());
    }
    texts.extend(utf16_reading(bytes));
    texts
}

/// Decodes the bytes as UTF-16 when they start with a byte order mark or when NUL fills
/// at least a quarter of the even or of the odd bytes, as it does in ASCII text written
/// as UTF-16. Only the first 4096 bytes are sampled.
fn utf16_reading(bytes: &[u8]) -> Option<String> {
    let little_endian = if bytes.starts_with(&[0xFF, 0xFE]) {
        true
    } else if bytes.starts_with(&[0xFE, 0xFF]) {
        false
    } else {
        let sample = &bytes[..bytes.len().min(4096)];
        let pairs = sample.len() / 2;
        let even = sample.iter().step_by(2).filter(|byte| **byte == 0).count();
        let odd = sample
            .iter()
            .skip(1)
            .step_by(2)
            .filter(|byte| **byte == 0)
            .count();
        if pairs == 0 || even.max(odd) * 4 < pairs {
            return None;
        }
        odd > even
    };
    let units = bytes.chunks_exact(2).map(|pair| {
        if little_endian {
            u16::from_le_bytes([pair[0], pair[1]])
        } else {
            u16::from_be_bytes([pair[0], pair[1]])
        }
    });
    Some(
        char::decode_utf16(units)
            .map(|unit| unit.unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect(),
    )
}

/// True when the text has a line `begin MODE NAME`, with an octal mode, and a later line
/// `end`: an inline uuencoded file.
fn has_uuencoded_block(text: &str) -> bool {
    let mut lines = text.lines();
    let begins = lines.by_ref().any(|line| {
        let mut words = line.split_ascii_whitespace();
        let octal_mode = |mode: &str| {
            (3..=4).contains(&mode.len()) && mode.bytes().all(|byte| (b'0'..=b'7').contains(&byte))
        };
        words.next() == Some("begin")
            && words.next().is_some_and(octal_mode)
            && words.next().is_some()
    });
    begins && lines.any(|line| line.trim_end() == "end")
}

fn child_section(prefix: &str, index: usize) -> String {
    if prefix.is_empty() {
        (index + 1).to_string()
    } else {
        format!("{prefix}.{}", index + 1)
    }
}

fn unfold(value: &str) -> String {
    value
        .split(['\r', '\n'])
        .map(str::trim)
        .filter(|piece| !piece.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

impl fmt::Display for Unparseable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unparseable::NoHeaders => f.write_str("no header fields found"),
            Unparseable::TooDeep { limit } => {
                write!(f, "MIME nesting deeper than {limit} levels")
            }
            Unparseable::TooManyParts { limit } => write!(f, "more than {limit} MIME parts"),
            Unparseable::MissingBoundary { section } => {
                write!(f, "boundary of multipart part {section} not found")
            }
            Unparseable::Undecodable { section } => {
                write!(f, "part {section} could not be decoded")
            }
            Unparseable::AmbiguousHeader { section, problem } => {
                match section {
                    Some(section) => write!(f, "header of part {section}: ")?,
                    None => f.write_str("top-level header: ")?,
                }
                match problem {
                    HeaderProblem::NotAField => f.write_str("a line is not a header field"),
                    HeaderProblem::SpaceBeforeColon => {
                        f.write_str("white space between a field name and its colon")
                    }
                    HeaderProblem::Duplicate(name) => write!(f, "more than one {name} field"),
                    HeaderProblem::UnknownEncoding => {
                        f.write_str("unsupported Content-Transfer-Encoding")
                    }
                    HeaderProblem::ContentElsewhere => {
                        f.write_str("message/partial or message/external-body content")
                    }
                }
            }
            Unparseable::SubjectLineBreak => f.write_str("decoded subject contains CR or LF"),
            Unparseable::Uuencoded { section } => {
                write!(f, "part {section} contains a uuencoded block")
            }
            Unparseable::TooManyNestingFields { limit } => write!(
                f,
                "more than {limit} header fields that open a nested message"
            ),
            Unparseable::ParserPanicked => f.write_str("the MIME parser failed"),
            Unparseable::NoThread => f.write_str("no thread could be started to parse it"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_depth: 20,
        max_parts: 1000,
    };

    fn origins(raw: &str) -> Vec<Origin> {
        extract(raw.as_bytes(), LIMITS)
            .unwrap()
            .contents
            .into_iter()
            .map(|content| content.origin)
            .collect()
    }

    fn part(section: &str, content_type: &'static str) -> Origin {
        Origin::Part {
            section: section.into(),
            content_type: Some(content_type),
            has_file_name: false,
        }
    }

    fn header(scope: Option<&str>, name: &str) -> Origin {
        Origin::Header {
            scope: scope.map(str::to_owned),
            name: name.into(),
        }
    }

    #[test]
    fn single_part_message_is_part_1() {
        let found = origins("Subject: hi\r\n\r\nhello\r\n");
        assert_eq!(
            found,
            [Origin::Subject { scope: None }, part("1", "text/plain")]
        );
    }

    #[test]
    fn multipart_sections_follow_imap_numbering() {
        let raw = "Content-Type: multipart/mixed; boundary=a\r\n\r\n\
                   --a\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n\
                   --b\r\nContent-Type: text/plain\r\n\r\none\r\n\
                   --b\r\nContent-Type: text/html\r\n\r\n<p>two</p>\r\n--b--\r\n\
                   --a\r\nContent-Type: message/rfc822\r\n\r\n\
                   Subject: inner\r\n\r\nthree\r\n\
                   --a--\r\n";
        let found = origins(raw);
        assert_eq!(
            found,
            [
                header(None, "Content-Type"),
                header(Some("1"), "Content-Type"),
                header(Some("1.1"), "Content-Type"),
                part("1.1", "text/plain"),
                header(Some("1.2"), "Content-Type"),
                part("1.2", "text/html"),
                header(Some("2"), "Content-Type"),
                Origin::Subject {
                    scope: Some("2".into())
                },
                part("2.1", "text/plain"),
            ]
        );
    }

    #[test]
    fn html_is_read_as_text_and_as_markup() {
        let raw = "Content-Type: text/html\r\n\r\n<p>a<!-- hidden --></p>\r\n";
        let extracted = extract(raw.as_bytes(), LIMITS).unwrap();
        let texts = &extracted.contents[1].texts;
        assert_eq!(texts.len(), 3);
        assert!(!texts[0].contains("hidden"), "{texts:?}");
        assert!(texts[1].contains("hidden"), "{texts:?}");
    }

    #[test]
    fn header_values_are_unfolded() {
        let raw = "Sensitivity:\r\n  Company-Confidential\r\n\r\nx";
        let extracted = extract(raw.as_bytes(), LIMITS).unwrap();
        let field = &extracted.headers[0];
        assert!(field.name.eq_ignore_ascii_case("sensitivity"));
        assert_eq!(field.values[0], "Company-Confidential");
    }

    #[test]
    fn panic_becomes_unparseable() {
        let result: Result<(), Unparseable> = catch_panic(|| panic!("parser bug"));
        assert_eq!(result.unwrap_err(), Unparseable::ParserPanicked);
    }

    #[test]
    fn unparseable_reasons_read_as_sentences() {
        let cases = [
            (
                Unparseable::TooDeep { limit: 20 },
                "MIME nesting deeper than 20 levels",
            ),
            (
                Unparseable::TooManyParts { limit: 1000 },
                "more than 1000 MIME parts",
            ),
            (
                Unparseable::Undecodable {
                    section: "2.1".into(),
                },
                "part 2.1 could not be decoded",
            ),
        ];
        for (reason, expected) in cases {
            assert_eq!(reason.to_string(), expected);
        }
    }
}
