//! Text normalisation before detection, so that characters a reader does not see, or sees
//! as an ordinary space or hyphen, cannot split a number, a marking or a tag.
//!
//! The mapping: zero-width and other invisible format characters are removed, every
//! Unicode space separator (general category Zs) and tab becomes a space and runs of
//! spaces become one, the Unicode dashes and minus signs become `-`, and full-width digits
//! become ASCII digits. Line breaks are kept, because markings are matched per line.

use std::borrow::Cow;

/// Returns `text` normalised, borrowed when nothing changes.
pub(super) fn normalize(text: &str) -> Cow<'_, str> {
    if text.chars().all(|c| c.is_ascii() && c != '\t' && c != '\0') && !text.contains("  ") {
        return Cow::Borrowed(text);
    }
    let mut output = String::with_capacity(text.len());
    for character in text.chars() {
        if is_invisible(character) {
            continue;
        }
        let mapped = map_char(character);
        if mapped == ' ' && output.ends_with(' ') {
            continue;
        }
        output.push(mapped);
    }
    Cow::Owned(output)
}

/// Returns `text` normalised as for [`normalize`], with full-width square brackets mapped
/// to ASCII ones, for subject tags such as `［secure］`.
pub(super) fn normalize_tag_text(text: &str) -> Cow<'_, str> {
    let normalized = normalize(text);
    if !normalized.contains(['\u{FF3B}', '\u{FF3D}']) {
        return normalized;
    }
    Cow::Owned(normalized.replace('\u{FF3B}', "[").replace('\u{FF3D}', "]"))
}

/// True for the format characters that render as nothing: zero-width space, joiners and
/// non-joiners, the word joiner and invisible operators, the byte order mark, the soft
/// hyphen, bidirectional marks and controls, and NUL.
fn is_invisible(character: char) -> bool {
    matches!(
        character,
        '\0' | '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
    )
}

fn map_char(character: char) -> char {
    match character {
        // Tab and the Zs space separators.
        '\t'
        | '\u{00A0}'
        | '\u{1680}'
        | '\u{2000}'..='\u{200A}'
        | '\u{202F}'
        | '\u{205F}'
        | '\u{3000}' => ' ',
        // Hyphens, dashes and minus signs.
        '\u{2010}'..='\u{2015}' | '\u{2212}' | '\u{FE58}' | '\u{FE63}' | '\u{FF0D}' => '-',
        '\u{FF10}'..='\u{FF19}' => char::from(b'0' + (u32::from(character) - 0xFF10) as u8),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_maps_invisible_spaces_and_dashes() {
        let cases = [
            ("9434765919", "9434765919"),
            ("943\u{200B}476\u{2060}59\u{00AD}19", "9434765919"),
            ("\u{FEFF}a\u{200C}b\u{200D}c", "abc"),
            ("943\u{2009}476\u{202F}5919", "943 476 5919"),
            ("943\u{00A0}\u{00A0}476\t\t5919", "943 476 5919"),
            ("943  476   5919", "943 476 5919"),
            ("943\u{2013}476\u{2011}5919", "943-476-5919"),
            ("\u{2212}\u{FE58}\u{FE63}\u{FF0D}", "----"),
            ("\u{FF19}\u{FF14}\u{FF10}", "940"),
            ("line one\nline two", "line one\nline two"),
        ];
        for (text, expected) in cases {
            assert_eq!(normalize(text), expected, "{text:?}");
        }
    }

    #[test]
    fn normalize_borrows_plain_ascii() {
        assert!(matches!(normalize("plain text"), Cow::Borrowed(_)));
    }

    #[test]
    fn tag_text_maps_fullwidth_brackets() {
        assert_eq!(normalize_tag_text("\u{FF3B}secure\u{FF3D} x"), "[secure] x");
        assert_eq!(normalize_tag_text("[\u{00A0}secure\u{00A0}]"), "[ secure ]");
    }
}
