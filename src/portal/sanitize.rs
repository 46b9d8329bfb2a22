//! Sanitising of a held message's HTML part before the portal shows it.
//!
//! ammonia keeps only an allow-list of tags and attributes, so scripts, event handlers,
//! `style` attributes and `<style>` elements, forms, frames and `javascript:` URLs are
//! removed. Images are removed as well, because a remote image is a tracking pixel and the
//! page's Content-Security-Policy would block it anyway. Links keep only `http`, `https` and
//! `mailto` URLs, lose relative URLs (which would point into the portal) and open with
//! `rel="noopener noreferrer"`.

use std::collections::HashSet;

/// Returns `html` reduced to the tags, attributes and URL schemes that are safe to show.
pub fn sanitize_html(html: &str) -> String {
    ammonia::Builder::default()
        .rm_tags(HashSet::from(["img"]))
        .url_schemes(HashSet::from(["http", "https", "mailto"]))
        .url_relative(ammonia::UrlRelative::Deny)
        .link_rel(Some("noopener noreferrer"))
        .strip_comments(true)
        .clean(html)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitizer_removes_scripts() {
        let clean = sanitize_html("<p>hi</p><script>alert(1)</script><noscript>x</noscript>");
        assert!(!clean.contains("script"), "{clean}");
        assert!(clean.contains("<p>hi</p>"), "{clean}");
    }

    #[test]
    fn sanitizer_removes_event_handlers() {
        let clean = sanitize_html(
            "<p onclick=\"steal()\" onmouseover=\"x()\">a</p><body onload=\"y()\">b</body>",
        );
        assert!(!clean.contains("onclick"), "{clean}");
        assert!(!clean.contains("onmouseover"), "{clean}");
        assert!(!clean.contains("onload"), "{clean}");
    }

    #[test]
    fn sanitizer_removes_javascript_links() {
        let clean = sanitize_html(
            "<a href=\"javascript:alert(1)\">a</a><a href=\" JaVaScRiPt:alert(2)\">b</a>\
             <a href=\"data:text/html,<script>x</script>\">c</a>\
             <a href=\"https://example.org/\">d</a><a href=\"/m/other/sign-out\">e</a>",
        );
        assert!(!clean.contains("/m/other"), "{clean}");
        assert!(
            !clean.to_ascii_lowercase().contains("javascript"),
            "{clean}"
        );
        assert!(!clean.contains("data:"), "{clean}");
        assert!(clean.contains("href=\"https://example.org/\""), "{clean}");
        assert!(clean.contains("rel=\"noopener noreferrer\""), "{clean}");
    }

    #[test]
    fn sanitizer_removes_css_tricks() {
        let clean = sanitize_html(
            "<style>body{background:url(https://t.example/x)}</style>\
             <p style=\"position:fixed;top:0;background:url(https://t.example/y)\">a</p>\
             <link rel=\"stylesheet\" href=\"https://t.example/z.css\">",
        );
        assert!(!clean.contains("style"), "{clean}");
        assert!(!clean.contains("t.example"), "{clean}");
        assert!(!clean.contains("<link"), "{clean}");
    }

    #[test]
    fn sanitizer_removes_remote_images() {
        let clean = sanitize_html(
            "<p>a<img src=\"https://t.example/pixel.gif\" width=1 height=1></p>\
             <picture><source srcset=\"https://t.example/p.png\"></picture>",
        );
        assert!(!clean.contains("<img"), "{clean}");
        assert!(!clean.contains("t.example"), "{clean}");
    }

    #[test]
    fn sanitizer_removes_forms_and_frames() {
        let clean = sanitize_html(
            "<form action=\"https://t.example/\"><input name=p></form>\
             <iframe src=\"https://t.example/\"></iframe><object data=x></object>\
             <base href=\"https://t.example/\"><meta http-equiv=refresh content=0>",
        );
        for tag in ["<form", "<input", "<iframe", "<object", "<base", "<meta"] {
            assert!(!clean.contains(tag), "{tag} kept in {clean}");
        }
    }
}
