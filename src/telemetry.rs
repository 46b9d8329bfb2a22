//! Log setup and the helpers that keep peer-supplied text from forging log lines.
//!
//! Delivery and acceptance lines go to the `mail` target in Postfix's layout; every other
//! event goes to the module's own target. Message bodies, AUTH data and keys are never
//! passed to a log macro.

use std::fmt::Write;

use tracing_subscriber::EnvFilter;

/// Target of the one-line-per-event mail log.
pub const MAIL_LOG: &str = "mail";

/// Installs the log subscriber: `RUST_LOG` when set, otherwise `info`.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// Escapes control characters, backslashes and non-ASCII bytes so that peer text stays on
/// one log line and cannot imitate a field.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '\\' => escaped.push_str("\\\\"),
            '\r' => escaped.push_str("\\r"),
            '\n' => escaped.push_str("\\n"),
            '\t' => escaped.push_str("\\t"),
            ch if ch.is_control() => {
                let _ = write!(escaped, "\\x{:02x}", ch as u32);
            }
            ch => escaped.push(ch),
        }
    }
    escaped
}

/// Escapes a peer-supplied value that sits inside a log field (an address, a HELO name, a
/// user name): besides what [`escape`] handles, every character that delimits fields in
/// the mail log (space, `,`, `=`, `<`, `>`, `(`, `)`, `"`) becomes `\xNN`, so the value
/// cannot end its field and start a forged one.
pub fn escape_field(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            ' ' | ',' | '=' | '<' | '>' | '(' | ')' | '"' | ';' => {
                let _ = write!(escaped, "\\x{:02x}", ch as u32);
            }
            ch => escaped.push_str(&escape(ch.encode_utf8(&mut [0; 4]))),
        }
    }
    escaped
}

/// Escapes raw bytes from the network, which may not be UTF-8.
pub fn escape_bytes(bytes: &[u8]) -> String {
    escape(&String::from_utf8_lossy(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_keeps_line_on_one_line() {
        let forged = "ok\r\nABCDEF0123456789: to=<x>, status=sent";
        let escaped = escape(forged);
        assert!(!escaped.contains('\n'));
        assert!(!escaped.contains('\r'));
        assert_eq!(escaped, "ok\\r\\nABCDEF0123456789: to=<x>, status=sent");
    }

    #[test]
    fn escape_field_cannot_start_a_new_field() {
        let forged = "x>, relay=mx.nhs.net[1.2.3.4]:25, tls=TLSv1.3/verified, status=sent (250 ok)";
        let escaped = escape_field(forged);
        for delimiter in [' ', ',', '=', '>', '(', ')'] {
            assert!(!escaped.contains(delimiter), "{delimiter:?} in {escaped}");
        }
        assert!(escaped.starts_with("x\\x3e\\x2c\\x20relay\\x3dmx.nhs.net[1.2.3.4]:25"));
        assert_eq!(
            escape_field("b\u{e9}a@partner.example"),
            "b\u{e9}a@partner.example"
        );
        assert_eq!(escape_field("a\r\nb"), "a\\r\\nb");
    }

    #[test]
    fn escape_marks_control_bytes() {
        assert_eq!(escape("a\u{1b}[31mb"), "a\\x1b[31mb");
        assert_eq!(escape("back\\slash"), "back\\\\slash");
    }
}
