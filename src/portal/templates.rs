//! Page templates (askama, auto-escaped HTML) under `templates/portal/`.

use std::time::Duration;

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use super::message::MessageView;

/// The first page of a link: explains the next step and offers the passcode.
#[derive(Template)]
#[template(path = "portal/link.html")]
pub struct LinkPage<'a> {
    pub organisation: &'a str,
    pub token: &'a str,
    pub csrf: &'a str,
    pub recipient: String,
}

/// The passcode entry form, shown after a passcode was mailed.
#[derive(Template)]
#[template(path = "portal/passcode.html")]
pub struct PasscodePage<'a> {
    pub organisation: &'a str,
    pub token: &'a str,
    pub csrf: &'a str,
    pub recipient: String,
    pub digits: u8,
    pub lifetime_minutes: u64,
    /// A notice about the last entry, such as a wrong passcode.
    pub problem: Option<String>,
}

/// The message with its attachments and the reply form.
#[derive(Template)]
#[template(path = "portal/message.html")]
pub struct MessagePage<'a> {
    pub organisation: &'a str,
    pub token: &'a str,
    pub csrf: &'a str,
    pub message: MessageView,
    pub max_reply_megabytes: usize,
}

/// Confirmation after a reply was submitted.
#[derive(Template)]
#[template(path = "portal/replied.html")]
pub struct RepliedPage<'a> {
    pub organisation: &'a str,
    pub token: &'a str,
    pub csrf: &'a str,
}

/// Confirmation after signing out.
#[derive(Template)]
#[template(path = "portal/signed_out.html")]
pub struct SignedOutPage<'a> {
    pub organisation: &'a str,
}

#[derive(Template)]
#[template(path = "portal/error.html")]
struct ErrorPage<'a> {
    organisation: &'a str,
    title: &'a str,
    detail: &'a str,
    token: Option<String>,
    wait_minutes: Option<u64>,
}

/// Renders a page with a status code; a template failure becomes a bare 500.
pub fn render(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(error) => {
            tracing::error!(%error, "portal template failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error").into_response()
        }
    }
}

/// Renders the page for an error; see `PortalError`'s `IntoResponse`.
pub fn error_page(
    status: StatusCode,
    title: &str,
    detail: &str,
    token: Option<String>,
    wait: Option<Duration>,
) -> Response {
    let page = ErrorPage {
        organisation: "Secure messages",
        title,
        detail,
        token,
        wait_minutes: wait.map(|wait| wait.as_secs().div_ceil(60).max(1)),
    };
    render(status, &page)
}
