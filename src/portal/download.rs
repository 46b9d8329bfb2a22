//! Headers for attachment downloads: a `Content-Disposition` that cannot smuggle a path,
//! a quote or a header break, and a `Content-Type` that browsers will not run.

use std::fmt::Write;

/// Maximum length of a file name offered to the browser, in characters. Longer names are
/// cut.
const MAX_FILENAME_CHARS: usize = 120;

/// Name used when an attachment has no usable name.
const FALLBACK_FILENAME: &str = "attachment";

/// Content types shown or saved as they are. Anything else, including HTML, SVG and XML
/// (which can run script in the portal's origin), is sent as `application/octet-stream`.
const SAFE_CONTENT_TYPES: &[&str] = &[
    "application/pdf",
    "image/gif",
    "image/jpeg",
    "image/png",
    "image/webp",
    "text/csv",
    "text/plain",
];

/// Builds an `attachment` `Content-Disposition` value (RFC 6266) for a name from the
/// message: an ASCII `filename` fallback and, when the name is not plain ASCII, a
/// `filename*` with the UTF-8 bytes percent-encoded (RFC 8187).
pub fn content_disposition(name: Option<&str>) -> String {
    let name = clean_filename(name.unwrap_or_default());
    let ascii: String = name
        .chars()
        .map(|c| if c.is_ascii() { c } else { '_' })
        .collect();
    let mut value = format!("attachment; filename=\"{ascii}\"");
    if ascii != name {
        value.push_str("; filename*=UTF-8''");
        for byte in name.bytes() {
            if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
                value.push(byte as char);
            } else {
                let _ = write!(value, "%{byte:02X}");
            }
        }
    }
    value
}

/// Reduces a name to its last path component, without control characters, quotes,
/// backslashes or leading dots, at most [`MAX_FILENAME_CHARS`] long.
pub fn clean_filename(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = last
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '"' | '\'' | ';' | '%' | '*'))
        .take(MAX_FILENAME_CHARS)
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').trim();
    if cleaned.is_empty() {
        FALLBACK_FILENAME.to_string()
    } else {
        cleaned.to_string()
    }
}

/// Returns the type to send for an attachment declared as `declared` (for example
/// `text/html; charset=utf-8`): the bare type when it is on the safe list, else
/// `application/octet-stream`.
pub fn safe_content_type(declared: &str) -> &'static str {
    let bare = declared
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    SAFE_CONTENT_TYPES
        .iter()
        .find(|safe| **safe == bare)
        .copied()
        .unwrap_or("application/octet-stream")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disposition_strips_path_parts() {
        assert_eq!(
            content_disposition(Some("../../etc/passwd")),
            "attachment; filename=\"passwd\""
        );
        assert_eq!(
            content_disposition(Some("C:\\Users\\x\\report.pdf")),
            "attachment; filename=\"report.pdf\""
        );
        assert_eq!(
            content_disposition(Some("dir/")),
            "attachment; filename=\"attachment\""
        );
    }

    #[test]
    fn disposition_strips_quotes_and_line_breaks() {
        let value = content_disposition(Some("a\"b\r\nSet-Cookie: x=1.txt"));
        assert_eq!(value, "attachment; filename=\"abSet-Cookie: x=1.txt\"");
        assert!(!value.contains('\r'));
        assert!(!value.contains('\n'));
        assert_eq!(
            content_disposition(Some("x\"; filename=evil.exe")),
            "attachment; filename=\"x filename=evil.exe\""
        );
    }

    #[test]
    fn disposition_encodes_utf8_names() {
        // mail-parser has already decoded RFC 2047 encoded words such as
        // `=?UTF-8?B?w6lsw6h2ZS5wZGY=?=` to this name.
        assert_eq!(
            content_disposition(Some("élève 1.pdf")),
            "attachment; filename=\"_l_ve 1.pdf\"; filename*=UTF-8''%C3%A9l%C3%A8ve%201.pdf"
        );
    }

    #[test]
    fn disposition_keeps_undecoded_encoded_words_harmless() {
        let value = content_disposition(Some("=?UTF-8?Q?a=2Fb?="));
        assert_eq!(value, "attachment; filename=\"=?UTF-8?Q?a=2Fb?=\"");
        assert!(!value.contains('/'));
    }

    #[test]
    fn disposition_without_name_or_hidden_name() {
        assert_eq!(
            content_disposition(None),
            "attachment; filename=\"attachment\""
        );
        assert_eq!(
            content_disposition(Some("..bashrc")),
            "attachment; filename=\"bashrc\""
        );
        assert_eq!(
            content_disposition(Some("\u{7}\u{1b}")),
            "attachment; filename=\"attachment\""
        );
    }

    #[test]
    fn content_type_allows_only_safe_types() {
        assert_eq!(safe_content_type("application/PDF"), "application/pdf");
        assert_eq!(safe_content_type("text/plain; charset=utf-8"), "text/plain");
        assert_eq!(safe_content_type("text/html"), "application/octet-stream");
        assert_eq!(
            safe_content_type("image/svg+xml"),
            "application/octet-stream"
        );
        assert_eq!(safe_content_type(""), "application/octet-stream");
    }
}
