//! Removal of HTML elements that a mail client does not render, so the rules can read the
//! text as it shows on screen. Markup can hide a digit that would make a run of eleven, or
//! blank lines that push a marking past the lines that are searched.

/// Style declarations, with white space removed and in lowercase, that hide an element.
const HIDING_STYLES: [&str; 6] = [
    "display:none",
    "visibility:hidden",
    "font-size:0;",
    "font-size:0px",
    "max-height:0",
    "opacity:0;",
];

/// Elements without content, whose hidden style hides nothing after them.
const VOID_ELEMENTS: [&str; 6] = ["br", "img", "hr", "input", "meta", "wbr"];

/// Returns the markup without the elements whose `style` attribute or `hidden` attribute
/// hides them, and without their content. Runs in time linear in the markup.
pub(super) fn remove_hidden(html: &str) -> String {
    let lower = html.to_ascii_lowercase();
    let mut output = String::with_capacity(html.len());
    let mut copied = 0;
    let mut search = 0;
    while let Some(offset) = lower[search..].find('<') {
        let open = search + offset;
        let Some(length) = lower[open..].find('>') else {
            break;
        };
        let close = open + length + 1;
        let tag = &lower[open + 1..close - 1];
        let name: String = tag
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        if name.is_empty() || !is_hidden(tag) {
            search = close;
            continue;
        }
        output.push_str(&html[copied..open]);
        let end = if VOID_ELEMENTS.contains(&name.as_str()) || tag.ends_with('/') {
            close
        } else {
            element_end(&lower, close, &name)
        };
        copied = end;
        search = end;
    }
    output.push_str(&html[copied..]);
    output
}

fn is_hidden(tag: &str) -> bool {
    let compact: String = tag
        .chars()
        .filter(|c| !c.is_ascii_whitespace() && *c != '"' && *c != '\'')
        .collect();
    let compact = format!("{compact};");
    HIDING_STYLES.iter().any(|style| compact.contains(style))
        || tag
            .split_ascii_whitespace()
            .skip(1)
            .any(|attribute| attribute == "hidden" || attribute.starts_with("hidden="))
}

/// Returns the offset after the end tag that closes an element named `name` opened before
/// `from`, counting nested elements of the same name, or the end of the text.
fn element_end(lower: &str, from: usize, name: &str) -> usize {
    let open_tag = format!("<{name}");
    let close_tag = format!("</{name}");
    let mut depth = 1usize;
    let mut position = from;
    while let Some(offset) = lower[position..].find('<') {
        let at = position + offset;
        let rest = &lower[at..];
        let boundary = |prefix: &str| {
            rest.starts_with(prefix)
                && !rest[prefix.len()..].starts_with(|c: char| c.is_ascii_alphanumeric())
        };
        if boundary(&close_tag) {
            depth -= 1;
            if depth == 0 {
                return rest.find('>').map_or(lower.len(), |end| at + end + 1);
            }
        } else if boundary(&open_tag) {
            depth += 1;
        }
        position = at + 1;
    }
    lower.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_elements_are_removed() {
        let cases = [
            (
                "<p>&#57;434765919<span style=\"display:none\">1</span></p>",
                "<p>&#57;434765919</p>",
            ),
            ("<span style='font-size: 0'>1</span>943", "943"),
            ("<div style=\"DISPLAY: none\">a<div>b</div>c</div>d", "d"),
            ("<p hidden>x</p>y", "y"),
            ("<br style=\"display:none\">z", "z"),
            (
                "<p style=\"color:red\">shown</p>",
                "<p style=\"color:red\">shown</p>",
            ),
            (
                "<span style=\"font-size:10px\">ten</span>",
                "<span style=\"font-size:10px\">ten</span>",
            ),
            ("<div style=\"display:none\">unclosed", ""),
        ];
        for (html, expected) in cases {
            assert_eq!(remove_hidden(html), expected, "{html:?}");
        }
    }
}
