//! The MIME side of S/MIME: splitting a message into header fields and body, building the
//! inner entity that gets encrypted (RFC 8551 §3.1), and the outer message that carries the
//! CMS object (RFC 8551 §3.3).
//!
//! The parser reads only the top-level header. It keeps every field's raw bytes, so kept
//! fields leave exactly as they came, apart from line endings, which become CRLF.

use base64::Engine;

use super::SubjectMode;

/// Header fields of the original that the outer message keeps, lowercase. `Subject` is
/// kept or replaced as configured. Every other field (Bcc, Sender, X-*, DKIM signatures,
/// the `Content-*` fields) is dropped from the outer message.
const KEPT_FIELDS: [&str; 10] = [
    "received",
    "from",
    "to",
    "cc",
    "date",
    "message-id",
    "reply-to",
    "in-reply-to",
    "references",
    "subject",
];

/// Content-Type given to an entity whose message had none (RFC 2045 §5.2).
const DEFAULT_CONTENT_TYPE: &[u8] = b"Content-Type: text/plain; charset=us-ascii\r\n";

/// Base64 line length of the outer body (RFC 2045 §6.8 allows at most 76).
const BASE64_LINE: usize = 76;

/// One header field: its name and its raw bytes, folded lines included, without the final
/// line ending.
#[derive(Debug)]
pub(crate) struct HeaderField<'a> {
    pub(crate) name: &'a str,
    pub(crate) raw: &'a [u8],
}

/// A message split at the first empty line.
#[derive(Debug)]
pub(crate) struct ParsedMessage<'a> {
    pub(crate) fields: Vec<HeaderField<'a>>,
    pub(crate) body: &'a [u8],
}

/// A parsed `Content-Type` value: the lowercase media type and its parameters, with
/// lowercase names.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ContentType {
    pub(crate) media_type: String,
    pub(crate) parameters: Vec<(String, String)>,
}

impl<'a> ParsedMessage<'a> {
    /// Splits `message` into header fields and body. Lines may end in CRLF or LF.
    ///
    /// # Errors
    ///
    /// A description of the first header line that is neither a field nor a folded
    /// continuation of one.
    pub(crate) fn parse(message: &'a [u8]) -> Result<ParsedMessage<'a>, String> {
        // Each field as (name, start, end) offsets into `message`, so that a folded line
        // can extend the field before it.
        let mut spans: Vec<(&'a str, usize, usize)> = Vec::new();
        let mut position = 0;
        let mut line_number = 0;
        let mut body_start = message.len();
        while position < message.len() {
            line_number += 1;
            let line_end = message[position..]
                .iter()
                .position(|byte| *byte == b'\n')
                .map_or(message.len(), |offset| position + offset);
            let next = (line_end + 1).min(message.len());
            let line = trim_cr(&message[position..line_end]);
            let content_end = position + line.len();

            if line.is_empty() {
                body_start = next;
                break;
            }
            if line[0] == b' ' || line[0] == b'\t' {
                let Some(span) = spans.last_mut() else {
                    return Err(format!(
                        "header line {line_number} is a continuation with no field before it"
                    ));
                };
                span.2 = content_end;
            } else {
                let name = field_name(line).ok_or_else(|| {
                    format!("header line {line_number} is not a field (expected Name: value)")
                })?;
                spans.push((name, position, content_end));
            }
            position = next;
        }

        let fields = spans
            .into_iter()
            .map(|(name, start, end)| HeaderField {
                name,
                raw: &message[start..end],
            })
            .collect();
        Ok(ParsedMessage {
            fields,
            body: &message[body_start..],
        })
    }

    /// Returns the first field called `name` (case-insensitive).
    fn field(&self, name: &str) -> Option<&HeaderField<'a>> {
        self.fields
            .iter()
            .find(|field| field.name.eq_ignore_ascii_case(name))
    }

    /// Returns the top-level Content-Type, if there is one that parses.
    pub(crate) fn content_type(&self) -> Option<ContentType> {
        ContentType::parse(&self.field("content-type")?.value())
    }

    /// True when the message really is S/MIME enveloped or auth-enveloped data, or PGP/MIME
    /// encrypted (RFC 3156 §4). The label alone is not trusted, since a sender could put it
    /// on a plain-text body: there must be exactly one Content-Type field, and the body must
    /// be the structure the label names. For S/MIME that is base64 of a DER ContentInfo
    /// whose content type is enveloped-data or authEnveloped-data (checked by parsing it);
    /// for PGP/MIME, a multipart whose parts are an `application/pgp-encrypted` control part
    /// and one armored PGP message with nothing else in it. An `application/pkcs7-mime`
    /// body without `smime-type` is not counted, because it may be signed data: encrypting
    /// it again is safe, and passing it on unencrypted might not be.
    pub(crate) fn is_encrypted(&self) -> bool {
        let content_types = self
            .fields
            .iter()
            .filter(|field| field.name.eq_ignore_ascii_case("content-type"))
            .count();
        if content_types != 1 {
            return false;
        }
        let Some(content_type) = self.content_type() else {
            return false;
        };
        match content_type.media_type.as_str() {
            "application/pkcs7-mime" | "application/x-pkcs7-mime" => {
                let labelled = content_type.parameter("smime-type").is_some_and(|kind| {
                    kind.eq_ignore_ascii_case("enveloped-data")
                        || kind.eq_ignore_ascii_case("authEnveloped-data")
                });
                labelled && self.is_base64_encoded() && is_enveloped_cms(self.body)
            }
            "multipart/encrypted" => {
                let labelled = content_type.parameter("protocol").is_some_and(|protocol| {
                    protocol.eq_ignore_ascii_case("application/pgp-encrypted")
                });
                labelled
                    && content_type
                        .parameter("boundary")
                        .is_some_and(|boundary| is_pgp_mime_body(self.body, boundary))
            }
            _ => false,
        }
    }

    fn is_base64_encoded(&self) -> bool {
        let encodings: Vec<String> = self
            .fields
            .iter()
            .filter(|field| field.name.eq_ignore_ascii_case("content-transfer-encoding"))
            .map(|field| field.value().trim().to_ascii_lowercase())
            .collect();
        encodings == ["base64"]
    }

    /// Builds the message passed on when it is already encrypted: the same kept header
    /// fields as an encrypted message, `MIME-Version`, the original `Content-*` fields and
    /// the body, so that other header fields (Bcc, custom ones) do not travel in clear.
    pub(crate) fn passed_through(&self, subject: &SubjectMode) -> Vec<u8> {
        let mut message = self.kept_header(subject);
        message.extend_from_slice(b"MIME-Version: 1.0\r\n");
        message.extend_from_slice(&self.inner_entity());
        message
    }

    /// Builds the entity to encrypt: every `Content-*` field of the original in order (with
    /// `Content-Type: text/plain; charset=us-ascii` first when there is none), an empty
    /// line and the body, all with CRLF line endings. `MIME-Version` stays outside.
    pub(crate) fn inner_entity(&self) -> Vec<u8> {
        let mut entity = Vec::with_capacity(self.body.len() + 512);
        if self.field("content-type").is_none() {
            entity.extend_from_slice(DEFAULT_CONTENT_TYPE);
        }
        for field in &self.fields {
            if is_content_field(field.name) {
                entity.extend_from_slice(&canonicalize_line_endings(field.raw));
                entity.extend_from_slice(b"\r\n");
            }
        }
        entity.extend_from_slice(b"\r\n");
        entity.extend_from_slice(&canonicalize_line_endings(self.body));
        entity
    }

    /// Builds the outer message around a DER CMS object: the kept header fields in their
    /// original order, the subject kept or replaced as `subject` sets, the MIME fields of an
    /// `application/pkcs7-mime` body with the given `smime-type`, and the base64 body.
    pub(crate) fn outer_message(
        &self,
        subject: &SubjectMode,
        smime_type: &str,
        cms_der: &[u8],
    ) -> Vec<u8> {
        let mut message = self.kept_header(subject);
        message.reserve(cms_der.len() * 4 / 3 + 2048);
        message.extend_from_slice(b"MIME-Version: 1.0\r\n");
        message.extend_from_slice(
            format!(
                "Content-Type: application/pkcs7-mime; smime-type={smime_type}; \
                 name=\"smime.p7m\"\r\n"
            )
            .as_bytes(),
        );
        message.extend_from_slice(b"Content-Disposition: attachment; filename=\"smime.p7m\"\r\n");
        message.extend_from_slice(b"Content-Transfer-Encoding: base64\r\n\r\n");
        message.extend_from_slice(&base64_lines(cms_der));
        message
    }

    /// Returns the header fields that travel in clear, in their original order, with the subject
    /// kept or replaced as `subject` sets.
    fn kept_header(&self, subject: &SubjectMode) -> Vec<u8> {
        let mut message = Vec::with_capacity(2048);
        let mut subject_written = false;
        for field in &self.fields {
            let name = field.name.to_ascii_lowercase();
            if !KEPT_FIELDS.contains(&name.as_str()) {
                continue;
            }
            if name == "subject"
                && let SubjectMode::Replace(text) = subject
            {
                // Only the first Subject field is replaced; any further ones are dropped so
                // the original text cannot leak in clear.
                if !subject_written {
                    push_subject(&mut message, text);
                    subject_written = true;
                }
                continue;
            }
            message.extend_from_slice(&canonicalize_line_endings(field.raw));
            message.extend_from_slice(b"\r\n");
        }
        if let SubjectMode::Replace(text) = subject
            && !subject_written
        {
            push_subject(&mut message, text);
        }
        message
    }
}

impl HeaderField<'_> {
    /// Returns the unfolded value after the colon, with invalid UTF-8 replaced.
    fn value(&self) -> String {
        let colon = self
            .raw
            .iter()
            .position(|byte| *byte == b':')
            .expect("a parsed field contains a colon");
        let unfolded: Vec<u8> = self.raw[colon + 1..]
            .iter()
            .copied()
            .filter(|byte| *byte != b'\r' && *byte != b'\n')
            .collect();
        String::from_utf8_lossy(&unfolded).trim().to_owned()
    }
}

impl ContentType {
    /// Parses `type/subtype; name=value; name="quoted value"`, skipping RFC 5322 comments.
    /// Returns `None` when there is no `type/subtype`.
    pub(crate) fn parse(value: &str) -> Option<ContentType> {
        let tokens = tokenize(value);
        let mut parts = tokens.split(|token| *token == Token::Special(';'));
        let media_type: String = parts
            .next()?
            .iter()
            .map(|token| match token {
                Token::Atom(text) => text.clone(),
                Token::Special(character) => character.to_string(),
                Token::Quoted(_) => String::from("\""),
            })
            .collect();
        let (kind, subtype) = media_type.split_once('/')?;
        if kind.is_empty() || subtype.is_empty() || media_type.contains('"') {
            return None;
        }

        let mut parameters = Vec::new();
        for part in parts {
            if let [Token::Atom(name), Token::Special('='), value] = part {
                let value = match value {
                    Token::Atom(text) | Token::Quoted(text) => text.clone(),
                    Token::Special(_) => continue,
                };
                parameters.push((name.to_ascii_lowercase(), value));
            }
        }
        Some(ContentType {
            media_type: media_type.to_ascii_lowercase(),
            parameters,
        })
    }

    /// Returns the value of the first parameter called `name` (lowercase).
    pub(crate) fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Token {
    Atom(String),
    Quoted(String),
    Special(char),
}

/// Splits a structured header value into atoms (which may contain `/`), quoted strings and
/// the specials `;` and `=`, dropping white space and comments.
fn tokenize(value: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut characters = value.chars().peekable();
    while let Some(character) = characters.next() {
        match character {
            ';' | '=' => tokens.push(Token::Special(character)),
            '"' => {
                let mut text = String::new();
                while let Some(inner) = characters.next() {
                    match inner {
                        '"' => break,
                        '\\' => text.extend(characters.next()),
                        _ => text.push(inner),
                    }
                }
                tokens.push(Token::Quoted(text));
            }
            '(' => {
                let mut depth = 1;
                while depth > 0 {
                    match characters.next() {
                        Some('(') => depth += 1,
                        Some(')') => depth -= 1,
                        Some('\\') => {
                            characters.next();
                        }
                        Some(_) => {}
                        None => break,
                    }
                }
            }
            _ if character.is_whitespace() => {}
            _ => {
                let mut text = String::from(character);
                while let Some(&next) = characters.peek() {
                    if next.is_whitespace() || matches!(next, ';' | '=' | '"' | '(') {
                        break;
                    }
                    text.push(next);
                    characters.next();
                }
                tokens.push(Token::Atom(text));
            }
        }
    }
    tokens
}

/// Returns the field name of a header line, or `None` when the line has no colon or the
/// name contains characters that RFC 5322 §3.6.8 does not allow. White space before the colon
/// is accepted as the obsolete syntax of RFC 5322 §4.5.
/// DER of the OIDs id-envelopedData (1.2.840.113549.1.7.3) and id-ct-authEnvelopedData
/// (1.2.840.113549.1.9.16.1.23), tag and length included.
const ENVELOPED_DATA_OID: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x03,
];
const AUTH_ENVELOPED_DATA_OID: &[u8] = &[
    0x06, 0x0b, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x10, 0x01, 0x17,
];

/// True when `body` is base64 of a CMS ContentInfo that OpenSSL parses and whose content
/// type is enveloped-data or authEnveloped-data.
fn is_enveloped_cms(body: &[u8]) -> bool {
    use base64::Engine;

    let compact: Vec<u8> = body
        .iter()
        .copied()
        .filter(|byte| !byte.is_ascii_whitespace())
        .collect();
    let Ok(der) = base64::engine::general_purpose::STANDARD.decode(&compact) else {
        return false;
    };
    if openssl::cms::CmsContentInfo::from_der(&der).is_err() {
        return false;
    }
    // ContentInfo ::= SEQUENCE { contentType OBJECT IDENTIFIER, ... }: skip the SEQUENCE
    // tag and length, then the OID must be one of the two.
    let Some(rest) = der.strip_prefix(&[0x30]) else {
        return false;
    };
    let length_bytes = match rest.first() {
        Some(first) if first & 0x80 == 0 => 1,
        Some(first) => 1 + usize::from(first & 0x7f),
        None => return false,
    };
    let Some(content) = rest.get(length_bytes..) else {
        return false;
    };
    content.starts_with(ENVELOPED_DATA_OID) || content.starts_with(AUTH_ENVELOPED_DATA_OID)
}

/// True when a `multipart/encrypted` body contains exactly an `application/pgp-encrypted`
/// part and one part that is an ASCII-armored PGP message and nothing else (RFC 3156 §4).
fn is_pgp_mime_body(body: &[u8], boundary: &str) -> bool {
    let text = String::from_utf8_lossy(body).replace("\r\n", "\n");
    let delimiter = format!("--{boundary}");
    let mut sections = text.split(&delimiter);
    let _preamble = sections.next();
    let parts: Vec<&str> = sections.collect();
    // Two parts, then the closing delimiter's "--" section.
    let [control, payload, closing] = parts.as_slice() else {
        return false;
    };
    if !closing.starts_with("--") {
        return false;
    }
    let part_header_and_body = |part: &str| -> Option<(String, String)> {
        let (header, content) = part.trim_start_matches('\n').split_once("\n\n")?;
        Some((header.to_ascii_lowercase(), content.trim().to_string()))
    };
    let Some((control_header, _)) = part_header_and_body(control) else {
        return false;
    };
    let Some((payload_header, armored)) = part_header_and_body(payload) else {
        return false;
    };
    control_header.contains("content-type: application/pgp-encrypted")
        && payload_header.contains("content-type: application/octet-stream")
        && armored.starts_with("-----BEGIN PGP MESSAGE-----")
        && armored.ends_with("-----END PGP MESSAGE-----")
        && armored.matches("-----BEGIN PGP MESSAGE-----").count() == 1
}

fn field_name(line: &[u8]) -> Option<&str> {
    let colon = line.iter().position(|byte| *byte == b':')?;
    let name = line[..colon].trim_ascii_end();
    let valid = !name.is_empty() && name.iter().all(|byte| (b'!'..=b'~').contains(byte));
    if valid {
        std::str::from_utf8(name).ok()
    } else {
        None
    }
}

fn is_content_field(name: &str) -> bool {
    name.len() > 8 && name[..8].eq_ignore_ascii_case("content-")
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn push_subject(message: &mut Vec<u8>, text: &str) {
    message.extend_from_slice(b"Subject: ");
    message.extend_from_slice(text.as_bytes());
    message.extend_from_slice(b"\r\n");
}

/// Turns every LF that does not follow a CR into CRLF. A CR without LF is left as it is,
/// because it is not a line ending.
pub(crate) fn canonicalize_line_endings(text: &[u8]) -> Vec<u8> {
    let mut output = Vec::with_capacity(text.len() + text.len() / 32);
    let mut previous = 0u8;
    for &byte in text {
        if byte == b'\n' && previous != b'\r' {
            output.push(b'\r');
        }
        output.push(byte);
        previous = byte;
    }
    output
}

/// Encodes `data` as base64 in lines of 76 characters, each ending in CRLF.
pub(crate) fn base64_lines(data: &[u8]) -> Vec<u8> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    let mut output = Vec::with_capacity(encoded.len() + encoded.len() / BASE64_LINE * 2 + 2);
    for line in encoded.as_bytes().chunks(BASE64_LINE) {
        output.extend_from_slice(line);
        output.extend_from_slice(b"\r\n");
    }
    output
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(message: &str) -> ParsedMessage<'_> {
        ParsedMessage::parse(message.as_bytes()).unwrap()
    }

    #[test]
    fn folded_field_keeps_continuation() {
        let message = parse("Subject: one\r\n two\r\nTo: b@x.test\r\n\r\nbody\r\n");
        assert_eq!(message.fields.len(), 2);
        assert_eq!(message.fields[0].raw, b"Subject: one\r\n two");
        assert_eq!(message.fields[1].name, "To");
        assert_eq!(message.body, b"body\r\n");
    }

    #[test]
    fn lf_only_message_parses() {
        let message = parse("Subject: one\n two\nTo: b@x.test\n\nbody\n");
        assert_eq!(message.fields[0].raw, b"Subject: one\n two");
        assert_eq!(message.body, b"body\n");
    }

    #[test]
    fn header_without_body_has_empty_body() {
        let message = parse("Subject: only a header\r\n");
        assert_eq!(message.fields.len(), 1);
        assert!(message.body.is_empty());
    }

    #[test]
    fn line_without_colon_is_rejected() {
        let error = ParsedMessage::parse(b"Subject: x\r\nnot a field\r\n\r\n").unwrap_err();
        assert!(error.contains("line 2"), "{error}");
    }

    #[test]
    fn leading_continuation_is_rejected() {
        let error = ParsedMessage::parse(b" folded\r\n\r\n").unwrap_err();
        assert!(error.contains("line 1"), "{error}");
    }

    #[test]
    fn content_type_parameters_parse() {
        let parsed = ContentType::parse(
            "Multipart/Mixed (a comment); Boundary=\"a \\\"b\\\" c\"; charset=utf-8",
        )
        .unwrap();
        assert_eq!(parsed.media_type, "multipart/mixed");
        assert_eq!(parsed.parameter("boundary"), Some("a \"b\" c"));
        assert_eq!(parsed.parameter("charset"), Some("utf-8"));
    }

    #[test]
    fn content_type_without_subtype_is_none() {
        assert_eq!(ContentType::parse("text"), None);
        assert_eq!(ContentType::parse("; charset=x"), None);
    }

    #[test]
    fn encryption_labels_alone_do_not_count() {
        let cases = [
            ("application/pkcs7-mime; smime-type=enveloped-data", true),
            (
                "application/x-pkcs7-mime; smime-type=\"enveloped-data\"",
                true,
            ),
            (
                "application/pkcs7-mime; smime-type=authEnveloped-data",
                true,
            ),
            ("application/pkcs7-mime; smime-type=signed-data", false),
            ("application/pkcs7-mime; name=smime.p7m", false),
            (
                "multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=b",
                true,
            ),
            ("multipart/encrypted; boundary=b", false),
            (
                "multipart/signed; protocol=\"application/pkcs7-signature\"",
                false,
            ),
            ("text/plain", false),
        ];
        for (content_type, labelled) in cases {
            // A label over a body that is not encrypted never counts, whatever its value.
            // tests/smime.rs checks real encrypted bodies.
            let text = format!("Content-Type: {content_type}\r\n\r\nx\r\n");
            assert!(
                !parse(&text).is_encrypted(),
                "{content_type} (labelled {labelled})"
            );
        }
    }

    #[test]
    fn entity_takes_content_fields_in_order() {
        let message = parse(
            "From: a@x.test\r\nContent-Type: text/plain;\r\n charset=utf-8\r\n\
             X-Other: 1\r\nContent-Transfer-Encoding: 8bit\r\nMIME-Version: 1.0\r\n\r\nhi\r\n",
        );
        assert_eq!(
            message.inner_entity(),
            b"Content-Type: text/plain;\r\n charset=utf-8\r\n\
              Content-Transfer-Encoding: 8bit\r\n\r\nhi\r\n"
        );
    }

    #[test]
    fn entity_without_content_type_gets_text_plain() {
        let message = parse("From: a@x.test\nContent-Transfer-Encoding: 7bit\n\nhi\nthere\n");
        assert_eq!(
            message.inner_entity(),
            b"Content-Type: text/plain; charset=us-ascii\r\n\
              Content-Transfer-Encoding: 7bit\r\n\r\nhi\r\nthere\r\n"
        );
    }

    #[test]
    fn line_endings_become_crlf() {
        assert_eq!(
            canonicalize_line_endings(b"a\nb\r\nc\rd\n"),
            b"a\r\nb\r\nc\rd\r\n"
        );
    }

    #[test]
    fn base64_lines_are_76_columns() {
        let lines = base64_lines(&[0u8; 200]);
        let text = String::from_utf8(lines).unwrap();
        let lengths: Vec<usize> = text.split_terminator("\r\n").map(str::len).collect();
        assert_eq!(lengths, [76, 76, 76, 40]);
    }

    #[test]
    fn replaced_subject_is_written_once() {
        let message = parse("Subject: first\r\nSubject: second\r\nTo: b@x.test\r\n\r\nx");
        let outer = message.outer_message(
            &SubjectMode::Replace("Encrypted".into()),
            "enveloped-data",
            b"der",
        );
        let text = String::from_utf8(outer).unwrap();
        assert!(
            text.starts_with("Subject: Encrypted\r\nTo: b@x.test\r\n"),
            "{text}"
        );
        assert!(!text.contains("first"), "{text}");
        assert!(!text.contains("second"), "{text}");
    }
}
