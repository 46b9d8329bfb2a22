//! Extraction of the text the rules read: subjects, header fields, the first body text of
//! each message, and every text part, HTML part, text attachment and file name, decoded.
//!
//! mail-parser 0.11 does the MIME work (transfer encodings, charsets, RFC 2047 and RFC 2231).
//! This module walks its part tree without recursion and enforces the depth and part limits.
//! It reports as [`Unparseable`] what would otherwise let content slip past the rules: a
//! multipart whose boundary is missing, a part that failed to decode, or a parser panic.

use std::borrow::Cow;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};

use mail_parser::decoders::base64::base64_decode;
use mail_parser::decoders::html::html_to_text;
use mail_parser::decoders::quoted_printable::quoted_printable_decode;
use mail_parser::{Encoding, Message, MessageParser, MessagePart, MimeHeaders, PartType};

use super::prescan;

/// Everything the rules read from one message.
#[derive(Debug, Default)]
pub(super) struct Extracted {
    /// The top-level subject first, then those of nested messages.
    pub subjects: Vec<Scoped>,
    /// Header fields of the top-level message and of nested messages.
    pub headers: Vec<HeaderField>,
    /// The first body text of each message, HTML converted to text.
    pub bodies: Vec<Scoped>,
    /// Subjects, text parts, text attachments and file names, for the content detectors.
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

/// Source of a [`Content`]: a subject, a part or a file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Origin {
    Subject {
        scope: Option<String>,
    },
    Part {
        section: String,
        content_type: String,
        file_name: Option<String>,
    },
    FileName {
        section: String,
    },
}

/// Cause of a message that could not be classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Unparseable {
    NoHeaders,
    TooDeep { limit: usize },
    TooManyParts { limit: usize },
    TooManyNestingFields { limit: usize },
    MissingBoundary { section: String },
    Undecodable { section: String },
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
        for header in root.headers() {
            let raw = message
                .raw_message
                .get(header.offset_start() as usize..header.offset_end() as usize)
                .map(|bytes| unfold(&String::from_utf8_lossy(bytes)))
                .unwrap_or_default();
            let mut values = vec![raw];
            if let Some(text) = header.value().as_text() {
                values.push(text.trim().to_owned());
            }
            self.extracted.headers.push(HeaderField {
                scope: scope.clone(),
                name: header.name().to_owned(),
                values,
            });
        }
        if let Some(body) = message.body_text(0) {
            self.extracted.bodies.push(Scoped {
                scope: scope.clone(),
                text: body.into_owned(),
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
            content_type: content_type_of(part),
            file_name: file_name.clone(),
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
                texts.extend(undeclared_reading(message, part));
                self.extracted.contents.push(Content { origin, texts });
            }
            PartType::Html(html) => {
                let mut texts = vec![html_to_text(html), html.to_string()];
                texts.extend(undeclared_reading(message, part));
                self.extracted.contents.push(Content { origin, texts });
            }
            PartType::Binary(bytes) | PartType::InlineBinary(bytes) => {
                if file_name.as_deref().is_some_and(is_text_file_name) {
                    let texts = vec![String::from_utf8_lossy(bytes).into_owned()];
                    self.extracted.contents.push(Content { origin, texts });
                }
            }
        }
        Ok(())
    }
}

/// Reads the part's bytes as UTF-8, ignoring the charset it declares, when that charset is
/// not UTF-8 or ASCII. A wrong label (UTF-16 on ASCII text, say) turns digits into other
/// characters in the declared reading, but a reader can still recover them.
fn undeclared_reading(message: &Message<'_>, part: &MessagePart<'_>) -> Option<String> {
    let charset = part.content_type()?.attribute("charset")?;
    let plain = ["utf-8", "utf8", "us-ascii", "ascii"];
    if plain.iter().any(|name| charset.eq_ignore_ascii_case(name)) {
        return None;
    }
    let raw = message
        .raw_message
        .get(part.raw_body_offset() as usize..part.raw_end_offset() as usize)?;
    let decoded: Cow<'_, [u8]> = match part.encoding {
        Encoding::Base64 => base64_decode(raw)?.into(),
        Encoding::QuotedPrintable => quoted_printable_decode(raw)?.into(),
        Encoding::None => raw.into(),
    };
    Some(String::from_utf8_lossy(&decoded).into_owned())
}

/// File names whose content is text that mail clients often send as
/// `application/octet-stream`.
fn is_text_file_name(name: &str) -> bool {
    let extensions = [
        "txt", "csv", "tsv", "log", "xml", "json", "htm", "html", "md", "ics", "vcf", "eml", "rtf",
    ];
    name.rsplit_once('.').is_some_and(|(_, extension)| {
        extensions
            .iter()
            .any(|known| extension.eq_ignore_ascii_case(known))
    })
}

/// `type/subtype` in lowercase, `text/plain` when absent (RFC 2045 §5.2), with anything
/// outside RFC 2045 token characters dropped so the value is safe to log.
fn content_type_of(part: &MessagePart<'_>) -> String {
    let Some(content_type) = part.content_type() else {
        return "text/plain".into();
    };
    let text = format!(
        "{}/{}",
        content_type.ctype(),
        content_type.subtype().unwrap_or("")
    );
    text.chars()
        .filter(|c| c.is_ascii_graphic() && !"()<>@,;:\\\"[]?=".contains(*c))
        .take(64)
        .collect::<String>()
        .to_ascii_lowercase()
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

    fn part(section: &str, content_type: &str, file_name: Option<&str>) -> Origin {
        Origin::Part {
            section: section.into(),
            content_type: content_type.into(),
            file_name: file_name.map(str::to_owned),
        }
    }

    #[test]
    fn single_part_message_is_part_1() {
        let found = origins("Subject: hi\r\n\r\nhello\r\n");
        assert_eq!(
            found,
            [
                Origin::Subject { scope: None },
                part("1", "text/plain", None)
            ]
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
                part("1.1", "text/plain", None),
                part("1.2", "text/html", None),
                Origin::Subject {
                    scope: Some("2".into())
                },
                part("2.1", "text/plain", None),
            ]
        );
    }

    #[test]
    fn html_is_read_as_text_and_as_markup() {
        let raw = "Content-Type: text/html\r\n\r\n<p>a<!-- hidden --></p>\r\n";
        let extracted = extract(raw.as_bytes(), LIMITS).unwrap();
        let texts = &extracted.contents[0].texts;
        assert_eq!(texts.len(), 2);
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
    fn text_file_names_are_recognised() {
        let cases = [
            ("notes.txt", true),
            ("EXPORT.CSV", true),
            ("referral.pdf", false),
            ("txt", false),
            ("archive.txt.zip", false),
        ];
        for (name, expected) in cases {
            assert_eq!(is_text_file_name(name), expected, "{name}");
        }
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
