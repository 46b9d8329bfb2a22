//! The raw text of a MAIL or RCPT command, read next to smtp-proto's parse.
//!
//! smtp-proto 0.2.5 returns the same empty address for `<postmaster>` as for `<>`, replaces
//! invalid UTF-8 with U+FFFD, and saturates a `SIZE=` value above `usize::MAX` and then
//! restarts from the next digit. It also rejects address literals and a space in the
//! domain with the same error as any other syntax error. The checks here read the bytes
//! the client sent, so none of that can change an envelope or hide the reason for a
//! rejection.

use crate::config::is_domain_name;

/// The two commands that carry a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PathCommand {
    Mail,
    Rcpt,
}

impl PathCommand {
    /// Returns the command a line starts with, when it is MAIL or RCPT.
    pub(super) fn of(line: &[u8]) -> Option<PathCommand> {
        let verb = line.get(..5)?;
        if verb.eq_ignore_ascii_case(b"MAIL ") {
            Some(PathCommand::Mail)
        } else if verb.eq_ignore_ascii_case(b"RCPT ") {
            Some(PathCommand::Rcpt)
        } else {
            None
        }
    }
}

/// The path and the parameters of a MAIL or RCPT command line, as sent.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct CommandText<'a> {
    /// The bytes between `<` and `>`, with quotes and backslash escapes kept.
    pub(super) path: &'a [u8],
    /// The bytes after `>`, without the CRLF.
    pub(super) parameters: &'a [u8],
}

/// The `SIZE=` parameter of MAIL, as sent.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum DeclaredSize {
    /// No `SIZE=` parameter.
    Absent,
    /// A size in bytes that smtp-proto reads exactly.
    Bytes(u64),
    /// Digits for a number of `usize::MAX` or more, which smtp-proto cannot read exactly.
    TooLarge,
    /// A value that is not a decimal number.
    Invalid,
}

/// The kind of the domain part of a path.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum DomainKind {
    /// A domain name of letters, digits and hyphens, U-labels included.
    Name,
    /// An IPv4 or `IPv6:` address literal (RFC 5321 §4.1.3).
    AddressLiteral,
    /// Anything else, including an empty domain.
    Invalid,
}

impl<'a> CommandText<'a> {
    /// Splits `MAIL FROM:<path> parameters` or `RCPT TO:<path> parameters`. Returns `None`
    /// when the line has no `<…>` path after the colon, which smtp-proto then rejects.
    pub(super) fn split(line: &'a [u8]) -> Option<CommandText<'a>> {
        let line = line.strip_suffix(b"\r\n").unwrap_or(line);
        let colon = line.iter().position(|byte| *byte == b':')?;
        let rest = &line[colon + 1..];
        let start = rest.iter().position(|byte| *byte != b' ')?;
        let rest = rest[start..].strip_prefix(b"<")?;

        let mut in_quote = false;
        let mut escaped = false;
        for (index, &byte) in rest.iter().enumerate() {
            match byte {
                _ if escaped => escaped = false,
                b'\\' if in_quote => escaped = true,
                b'"' => in_quote = !in_quote,
                b'>' if !in_quote => {
                    return Some(CommandText {
                        path: &rest[..index],
                        parameters: &rest[index + 1..],
                    });
                }
                _ => {}
            }
        }
        None
    }

    /// True for `<postmaster>` in any case, the one path without a domain that RFC 5321
    /// §4.5.1 requires a server to accept.
    pub(super) fn is_postmaster(&self) -> bool {
        self.path.eq_ignore_ascii_case(b"postmaster")
    }

    /// Returns the domain after the last `@` outside quotes, or `None` for a path without
    /// one (`<>`, `<postmaster>`).
    pub(super) fn domain(&self) -> Option<&'a [u8]> {
        let mut in_quote = false;
        let mut escaped = false;
        let mut at = None;
        for (index, &byte) in self.path.iter().enumerate() {
            match byte {
                _ if escaped => escaped = false,
                b'\\' if in_quote => escaped = true,
                b'"' => in_quote = !in_quote,
                b'@' if !in_quote => at = Some(index),
                _ => {}
            }
        }
        at.map(|index| &self.path[index + 1..])
    }

    /// Reads the `SIZE=` parameter from its digits.
    pub(super) fn size(&self) -> DeclaredSize {
        let value = self
            .parameters
            .split(|byte| *byte == b' ')
            .find_map(|parameter| {
                let (name, value) = parameter.split_at(parameter.len().min(5));
                name.eq_ignore_ascii_case(b"SIZE=").then_some(value)
            });
        let Some(value) = value else {
            return DeclaredSize::Absent;
        };
        if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
            return DeclaredSize::Invalid;
        }
        let mut size: u64 = 0;
        for digit in value {
            let next = size
                .checked_mul(10)
                .and_then(|size| size.checked_add(u64::from(digit - b'0')));
            match next {
                Some(next) => size = next,
                None => return DeclaredSize::TooLarge,
            }
        }
        // smtp-proto rejects `usize::MAX` itself and cannot hold anything larger.
        if usize::try_from(size).map_or(true, |size| size == usize::MAX) {
            return DeclaredSize::TooLarge;
        }
        DeclaredSize::Bytes(size)
    }
}

/// Classifies the domain of a path.
pub(super) fn domain_kind(domain: &[u8]) -> DomainKind {
    let Ok(domain) = std::str::from_utf8(domain) else {
        return DomainKind::Invalid;
    };
    if let Some(literal) = domain
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
    {
        let valid = match literal.get(..5) {
            Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => {
                literal[5..].parse::<std::net::Ipv6Addr>().is_ok()
            }
            _ => literal.parse::<std::net::Ipv4Addr>().is_ok(),
        };
        return if valid {
            DomainKind::AddressLiteral
        } else {
            DomainKind::Invalid
        };
    }
    if is_mail_domain(domain) {
        DomainKind::Name
    } else {
        DomainKind::Invalid
    }
}

/// True for a domain name in dot-separated labels of letters, digits and hyphens. A
/// U-label (RFC 6531, used under SMTPUTF8) may use letters and digits of any script.
///
/// NOTE: each non-ASCII letter counts as one character against the 63 and 253 limits,
/// while the A-label that DNS gets is longer, so a name near the limits can pass here and
/// still fail its lookup.
fn is_mail_domain(domain: &str) -> bool {
    let folded: String = domain
        .chars()
        .map(|ch| {
            if !ch.is_ascii() && ch.is_alphanumeric() {
                'a'
            } else {
                ch
            }
        })
        .collect();
    is_domain_name(&folded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(line: &str) -> CommandText<'_> {
        CommandText::split(line.as_bytes()).unwrap()
    }

    #[test]
    fn split_keeps_quotes_and_finds_parameters() {
        let command = text("RCPT TO:<\"a>b\"@example.org> NOTIFY=NEVER\r\n");
        assert_eq!(command.path, b"\"a>b\"@example.org");
        assert_eq!(command.parameters, b" NOTIFY=NEVER");
        assert_eq!(text("MAIL FROM: <>\r\n").path, b"");
        assert_eq!(CommandText::split(b"MAIL FROM:a@example.org\r\n"), None);
    }

    #[test]
    fn domain_is_after_last_unquoted_at() {
        assert_eq!(
            text("RCPT TO:<\"a@b\"@example.org>\r\n").domain(),
            Some(&b"example.org"[..])
        );
        assert_eq!(text("RCPT TO:<x@>\r\n").domain(), Some(&b""[..]));
        assert_eq!(text("RCPT TO:<postmaster>\r\n").domain(), None);
    }

    #[test]
    fn size_values() {
        let cases = [
            ("", DeclaredSize::Absent),
            (" SIZE=1000", DeclaredSize::Bytes(1000)),
            (" BODY=8BITMIME size=12", DeclaredSize::Bytes(12)),
            (" SIZE=99999999999999999999999", DeclaredSize::TooLarge),
            (" SIZE=18446744073709551615", DeclaredSize::TooLarge),
            (" SIZE=", DeclaredSize::Invalid),
            (" SIZE=1x", DeclaredSize::Invalid),
            (" SIZE=-5", DeclaredSize::Invalid),
        ];
        for (parameters, expected) in cases {
            let line = format!("MAIL FROM:<a@example.org>{parameters}\r\n");
            assert_eq!(text(&line).size(), expected, "{parameters:?}");
        }
    }

    #[test]
    fn domain_kinds() {
        let cases = [
            ("example.org", DomainKind::Name),
            ("EXAMPLE.org.", DomainKind::Name),
            ("bücher.example", DomainKind::Name),
            ("[192.0.2.1]", DomainKind::AddressLiteral),
            ("[IPv6:2001:db8::1]", DomainKind::AddressLiteral),
            ("[ipv6:2001:db8::1]", DomainKind::AddressLiteral),
            ("[192.0.2.300]", DomainKind::Invalid),
            ("[2001:db8::1]", DomainKind::Invalid),
            ("", DomainKind::Invalid),
            ("-bad-.example", DomainKind::Invalid),
            (".example", DomainKind::Invalid),
            ("a..example", DomainKind::Invalid),
            ("exa mple", DomainKind::Invalid),
            ("nhs\u{3002}net", DomainKind::Invalid),
        ];
        for (domain, expected) in cases {
            assert_eq!(domain_kind(domain.as_bytes()), expected, "{domain:?}");
        }
        assert_eq!(domain_kind(b"\xff.example"), DomainKind::Invalid);
    }
}
