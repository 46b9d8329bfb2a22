//! SMTP replies. Every reply carries an RFC 3463 enhanced status code, except the three that
//! RFC 2034 §3 and RFC 5321 §4.2 shape differently: the greeting and the EHLO/HELO replies
//! (which must start with the server's domain) and the `354` to DATA.

use std::borrow::Cow;

/// One reply, possibly of several lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Reply {
    code: u16,
    lines: Vec<Cow<'static, str>>,
}

impl Reply {
    /// A one-line reply with an enhanced status code, such as `550 5.7.1 Relaying denied`.
    pub(crate) fn new(code: u16, enhanced: &str, text: impl Into<Cow<'static, str>>) -> Reply {
        Reply {
            code,
            lines: vec![format!("{enhanced} {}", text.into()).into()],
        }
    }

    /// A reply without an enhanced status code, for the greeting, EHLO/HELO and `354`.
    pub(crate) fn bare(code: u16, lines: Vec<Cow<'static, str>>) -> Reply {
        Reply { code, lines }
    }

    /// The basic reply code.
    pub(crate) fn code(&self) -> u16 {
        self.code
    }

    /// The reply on the wire, each line ending in CRLF.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        let last = self.lines.len().saturating_sub(1);
        for (index, line) in self.lines.iter().enumerate() {
            let separator = if index == last { ' ' } else { '-' };
            bytes.extend_from_slice(format!("{}{separator}{line}\r\n", self.code).as_bytes());
        }
        bytes
    }
}

/// `421 4.7.0`, sent before closing a session that made too many errors.
pub(crate) fn too_many_errors() -> Reply {
    Reply::new(421, "4.7.0", "Too many errors, closing connection")
}

/// `421 4.4.2`, sent before closing a session whose client went quiet.
pub(crate) fn timed_out() -> Reply {
    Reply::new(421, "4.4.2", "Timeout exceeded, closing connection")
}

/// `503 5.5.1` for a command sent out of order.
pub(crate) fn bad_sequence(text: &'static str) -> Reply {
    Reply::new(503, "5.5.1", text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiline_reply_uses_dashes_until_last_line() {
        let reply = Reply::bare(250, vec!["mx.example.org".into(), "PIPELINING".into()]);
        assert_eq!(
            reply.to_bytes(),
            b"250-mx.example.org\r\n250 PIPELINING\r\n"
        );
    }

    #[test]
    fn enhanced_code_follows_basic_code() {
        let reply = Reply::new(550, "5.7.1", "Relaying denied");
        assert_eq!(reply.to_bytes(), b"550 5.7.1 Relaying denied\r\n");
    }
}
