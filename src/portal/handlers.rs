//! Request handlers: each one checks the link and the session or CSRF token, calls the
//! store or the spool, and renders a page. Errors are [`PortalError`]s.

use std::sync::Arc;

use axum::extract::multipart::Multipart;
use axum::extract::rejection::{FormRejection, PathRejection};
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::backend::{AuditEvent, HeldLink, LinkStatus};
use super::download::{clean_filename, content_disposition, safe_content_type};
use super::message::{attachment, parse_view};
use super::reply::{Reply, ReplyAttachment, build_passcode_mail, build_reply};
use super::session::{Session, constant_time_eq, random_token};
use super::templates::{LinkPage, MessagePage, PasscodePage, RepliedPage, SignedOutPage, render};
use super::{PortalContext, PortalError, passcode};
use crate::queue::store::now_millis;

/// Maximum length of a link token. Longer ones are unknown links, without a store lookup.
const MAX_TOKEN_LENGTH: usize = 128;

type Context = State<Arc<PortalContext>>;

/// Form with only a CSRF token.
#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// Passcode entry form.
#[derive(Deserialize)]
pub struct PasscodeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    passcode: String,
}

/// `GET /m/{token}`: describes the message and offers the passcode. It changes no state
/// on the server, so a link scanner's prefetch does nothing.
pub async fn link_page(
    State(context): Context,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Result<Response, PortalError> {
    let link = active_link(&context, &token).await?;
    let (csrf, new_cookie) = match cookie(&headers, csrf_cookie_name(&context)) {
        Some(value) if value.len() == 43 => (value.to_string(), None),
        _ => {
            let value = random_token();
            let cookie = set_cookie(&context, csrf_cookie_name(&context), &value, None);
            (value, Some(cookie))
        }
    };
    let page = LinkPage {
        organisation: &context.settings.organisation,
        token: &token,
        csrf: &csrf,
        recipient: link.recipient.clone(),
    };
    let mut response = render(StatusCode::OK, &page);
    if let Some(cookie) = new_cookie {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    Ok(response)
}

/// `POST /m/{token}/passcode`: mails a new passcode, within the send limits.
pub async fn send_passcode(
    State(context): Context,
    Path(token): Path<String>,
    headers: HeaderMap,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Response, PortalError> {
    let link = active_link(&context, &token).await?;
    let Form(form) = form.map_err(|_| PortalError::BadRequest)?;
    check_pre_session_csrf(&context, &headers, &form.csrf)?;

    let settings = &context.settings;
    let code = passcode::generate(settings.passcode_digits);
    let hash = passcode::hash(&context.passcode_key, &link.id, &link.recipient, &code);
    let lifetime = settings.passcode_lifetime;
    let limits = settings.send_limits;
    let id = link.id.clone();
    context
        .with_store(move |store| store.set_passcode_within(&id, &hash, now_millis(), &limits))
        .await?
        .map_err(|retry_after| PortalError::TooManyRequests { retry_after })?;
    let mail = build_passcode_mail(
        &settings.passcode_sender,
        &settings.organisation,
        &link.recipient,
        &code,
        lifetime_minutes(lifetime),
    )
    .map_err(|error| PortalError::Internal(format!("failed to build passcode mail: {error}")))?;
    let queue_id = context.spool.submit(mail).await?;
    context.audit(&link, AuditEvent::PasscodeSent).await;
    tracing::info!(held_id = %link.id, %queue_id, "passcode mail submitted");

    Ok(passcode_page(&context, &token, &link, &form.csrf, None))
}

/// `POST /m/{token}/verify`: checks the passcode and starts a session.
pub async fn verify_passcode(
    State(context): Context,
    Path(token): Path<String>,
    headers: HeaderMap,
    form: Result<Form<PasscodeForm>, FormRejection>,
) -> Result<Response, PortalError> {
    let link = active_link(&context, &token).await?;
    let Form(form) = form.map_err(|_| PortalError::BadRequest)?;
    check_pre_session_csrf(&context, &headers, &form.csrf)?;
    let settings = &context.settings;
    let no_passcode = "There is no valid passcode for this message. Ask for a new one.";

    let id = link.id.clone();
    let state = context
        .with_store(move |store| store.passcode_state(&id))
        .await?;
    let Some(record) = state else {
        return Ok(passcode_page(
            &context,
            &token,
            &link,
            &form.csrf,
            Some(no_passcode),
        ));
    };
    if record.failures >= settings.max_passcode_attempts {
        return Err(locked_out(&context, &link).await);
    }
    let lifetime = i64::try_from(settings.passcode_lifetime.as_millis()).unwrap_or(i64::MAX);
    if now_millis() >= record.created_at.saturating_add(lifetime) {
        clear_passcode(&context, &link).await?;
        let expired = "This passcode has expired. Ask for a new one.";
        return Ok(passcode_page(
            &context,
            &token,
            &link,
            &form.csrf,
            Some(expired),
        ));
    }

    let correct = passcode::normalize(&form.passcode, settings.passcode_digits)
        .map(|code| passcode::hash(&context.passcode_key, &link.id, &link.recipient, &code))
        .is_some_and(|hash| constant_time_eq(&hash, &record.hash));
    if correct {
        clear_passcode(&context, &link).await?;
        let (session_id, _) = context.sessions.create(&link.id);
        let lifetime = context.sessions.lifetime();
        let cookie = set_cookie(
            &context,
            session_cookie_name(&context),
            &session_id,
            Some(lifetime.as_secs()),
        );
        tracing::info!(held_id = %link.id, "recipient signed in");
        let location = format!("/m/{token}/message");
        let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response();
        response.headers_mut().append(header::SET_COOKIE, cookie);
        return Ok(response);
    }

    let id = link.id.clone();
    let failures = context
        .with_store(move |store| store.record_passcode_failure(&id))
        .await?;
    context.audit(&link, AuditEvent::PasscodeFailed).await;
    tracing::info!(held_id = %link.id, failures, "wrong passcode");
    if failures >= settings.max_passcode_attempts {
        return Err(locked_out(&context, &link).await);
    }
    let left = settings.max_passcode_attempts - failures;
    let problem = format!(
        "That passcode is not right. You can try {left} more time{}.",
        if left == 1 { "" } else { "s" }
    );
    let mut response = passcode_page(&context, &token, &link, &form.csrf, Some(&problem));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    Ok(response)
}

/// `GET /m/{token}/message`: the message page.
pub async fn message_page(
    State(context): Context,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Result<Response, PortalError> {
    let (link, session) = signed_in(&context, &token, &headers).await?;
    let raw = held_bytes(&context, &link).await?;
    let message = parse_view(&raw)
        .ok_or_else(|| PortalError::Internal(format!("held message {} is unparsable", link.id)))?;
    context.audit(&link, AuditEvent::Opened).await;
    let page = MessagePage {
        organisation: &context.settings.organisation,
        token: &token,
        csrf: &session.csrf,
        message,
        max_reply_megabytes: context.settings.max_reply_size / (1024 * 1024),
    };
    Ok(render(StatusCode::OK, &page))
}

/// `GET /m/{token}/attachments/{index}`: one attachment, always as a download.
pub async fn download_attachment(
    State(context): Context,
    path: Result<Path<(String, usize)>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, PortalError> {
    let Path((token, index)) = path.map_err(|_| PortalError::BadRequest)?;
    let (link, _) = signed_in(&context, &token, &headers).await?;
    let raw = held_bytes(&context, &link).await?;
    let file = attachment(&raw, index).ok_or(PortalError::UnknownLink)?;
    context.audit(&link, AuditEvent::AttachmentDownloaded).await;
    Ok(download(
        safe_content_type(&file.content_type),
        &content_disposition(file.name.as_deref()),
        file.bytes,
    ))
}

/// `GET /m/{token}/original.eml`: the whole held message as a file.
pub async fn download_original(
    State(context): Context,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Result<Response, PortalError> {
    let (link, _) = signed_in(&context, &token, &headers).await?;
    let raw = held_bytes(&context, &link).await?;
    context.audit(&link, AuditEvent::AttachmentDownloaded).await;
    Ok(download(
        "application/octet-stream",
        &content_disposition(Some("message.eml")),
        raw,
    ))
}

/// `POST /m/{token}/reply`: submits the recipient's reply to the original sender.
pub async fn send_reply(
    State(context): Context,
    Path(token): Path<String>,
    headers: HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, PortalError> {
    let (link, session) = signed_in(&context, &token, &headers).await?;
    check_origin(&context, &headers)?;
    let mut multipart = multipart.map_err(|_| PortalError::Forbidden)?;
    let form = read_reply_form(&mut multipart).await?;
    check_session_csrf(&session, &form.csrf)?;
    if form.text.trim().is_empty() && form.attachments.is_empty() {
        return Err(PortalError::BadRequest);
    }

    let id = link.id.clone();
    let content = context
        .with_store(move |store| store.open_message(&id))
        .await?
        .ok_or(PortalError::Expired)?;
    if content.sender.is_empty() {
        return Err(PortalError::BadRequest);
    }
    let original = parse_view(&content.raw).unwrap_or_default();
    let reply = build_reply(&Reply {
        from: &link.recipient,
        sender: &context.settings.passcode_sender,
        to: &content.sender,
        original_subject: &original.subject,
        original_message_id: original.message_id.as_deref(),
        text: &form.text,
        attachments: form.attachments,
    })
    .map_err(|error| PortalError::Internal(format!("failed to build reply: {error}")))?;
    let queue_id = context.spool.submit(reply).await?;
    context.audit(&link, AuditEvent::ReplySent).await;
    tracing::info!(held_id = %link.id, %queue_id, "portal reply submitted");

    let page = RepliedPage {
        organisation: &context.settings.organisation,
        token: &token,
        csrf: &session.csrf,
    };
    Ok(render(StatusCode::OK, &page))
}

/// `POST /m/{token}/sign-out`: ends the session.
pub async fn sign_out(
    State(context): Context,
    Path(token): Path<String>,
    headers: HeaderMap,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Response, PortalError> {
    let (_, session) = signed_in(&context, &token, &headers).await?;
    check_origin(&context, &headers)?;
    let Form(form) = form.map_err(|_| PortalError::BadRequest)?;
    check_session_csrf(&session, &form.csrf)?;
    if let Some(id) = cookie(&headers, session_cookie_name(&context)) {
        context.sessions.remove(id);
    }
    let page = SignedOutPage {
        organisation: &context.settings.organisation,
    };
    let mut response = render(StatusCode::OK, &page);
    let expired = set_cookie(&context, session_cookie_name(&context), "", Some(0));
    response.headers_mut().append(header::SET_COOKIE, expired);
    Ok(response)
}

/// `GET /portal.css`: the only style sheet, which the Content-Security-Policy allows.
pub async fn style_sheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../../templates/portal/portal.css"),
    )
        .into_response()
}

/// Serves the unknown-link page for every other path.
pub async fn not_found() -> PortalError {
    PortalError::UnknownLink
}

struct ReplyForm {
    csrf: String,
    text: String,
    attachments: Vec<ReplyAttachment>,
}

async fn read_reply_form(multipart: &mut Multipart) -> Result<ReplyForm, PortalError> {
    let failed = |error: axum::extract::multipart::MultipartError| {
        if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
            PortalError::TooLarge
        } else {
            PortalError::BadRequest
        }
    };
    let mut form = ReplyForm {
        csrf: String::new(),
        text: String::new(),
        attachments: Vec::new(),
    };
    while let Some(field) = multipart.next_field().await.map_err(failed)? {
        match field.name().unwrap_or_default() {
            "csrf" => form.csrf = field.text().await.map_err(failed)?,
            "text" => form.text = field.text().await.map_err(failed)?,
            "attachment" => {
                let name = field.file_name().unwrap_or_default().to_string();
                let content_type = field
                    .content_type()
                    .filter(|declared| is_mime_type(declared))
                    .unwrap_or("application/octet-stream")
                    .to_string();
                let bytes = field.bytes().await.map_err(failed)?;
                // Browsers send an empty, unnamed part when no file was chosen.
                if name.is_empty() && bytes.is_empty() {
                    continue;
                }
                form.attachments.push(ReplyAttachment {
                    name: clean_filename(&name),
                    content_type,
                    bytes: bytes.to_vec(),
                });
            }
            _ => {}
        }
    }
    Ok(form)
}

/// Accepts a bare `type/subtype` of RFC 2045 token characters, without parameters.
fn is_mime_type(text: &str) -> bool {
    let token = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&byte))
    };
    text.split_once('/')
        .is_some_and(|(kind, subtype)| token(kind) && token(subtype))
}

async fn active_link(context: &PortalContext, token: &str) -> Result<HeldLink, PortalError> {
    let well_formed = !token.is_empty()
        && token.len() <= MAX_TOKEN_LENGTH
        && token
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
    if !well_formed {
        return Err(PortalError::UnknownLink);
    }
    let token = token.to_string();
    let status = context
        .with_store(move |store| store.find_by_token(&token))
        .await?;
    match status {
        LinkStatus::Active(link) => Ok(link),
        LinkStatus::Expired => Err(PortalError::Expired),
        LinkStatus::Revoked => Err(PortalError::Revoked),
        LinkStatus::Unknown => Err(PortalError::UnknownLink),
    }
}

async fn signed_in(
    context: &PortalContext,
    token: &str,
    headers: &HeaderMap,
) -> Result<(HeldLink, Session), PortalError> {
    let link = active_link(context, token).await?;
    let session = cookie(headers, session_cookie_name(context))
        .and_then(|id| context.sessions.get(id))
        .filter(|session| session.held_id == link.id)
        .ok_or_else(|| PortalError::SessionRequired {
            token: token.to_string(),
        })?;
    Ok((link, session))
}

async fn held_bytes(context: &PortalContext, link: &HeldLink) -> Result<Vec<u8>, PortalError> {
    let id = link.id.clone();
    let content = context
        .with_store(move |store| store.open_message(&id))
        .await?
        .ok_or(PortalError::Expired)?;
    Ok(content.raw)
}

async fn clear_passcode(context: &PortalContext, link: &HeldLink) -> Result<(), PortalError> {
    let id = link.id.clone();
    context
        .with_store(move |store| store.clear_passcode(&id))
        .await
}

fn passcode_page(
    context: &PortalContext,
    token: &str,
    link: &HeldLink,
    csrf: &str,
    problem: Option<&str>,
) -> Response {
    let page = PasscodePage {
        organisation: &context.settings.organisation,
        token,
        csrf,
        recipient: link.recipient.clone(),
        digits: context.settings.passcode_digits,
        lifetime_minutes: lifetime_minutes(context.settings.passcode_lifetime),
        problem: problem.map(str::to_string),
    };
    render(StatusCode::OK, &page)
}

/// Clears the passcode, stores the lockout and returns the `429` error with the cool-down
/// as its wait. A failure to store the lockout is returned instead, so the
/// request fails either way.
async fn locked_out(context: &PortalContext, link: &HeldLink) -> PortalError {
    let id = link.id.clone();
    let stored = context
        .with_store(move |store| store.lock_out(&id, now_millis()))
        .await;
    if let Err(error) = stored {
        return error;
    }
    tracing::warn!(held_id = %link.id, "too many wrong passcodes; passcode cleared");
    PortalError::TooManyRequests {
        retry_after: context.settings.send_limits.lockout_cooldown,
    }
}

pub(crate) fn download(content_type: &'static str, disposition: &str, bytes: Vec<u8>) -> Response {
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    match HeaderValue::from_str(disposition) {
        Ok(value) => headers.insert(header::CONTENT_DISPOSITION, value),
        // content_disposition emits only visible ASCII, so this arm is a fallback.
        Err(_) => headers.insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("attachment"),
        ),
    };
    response
}

/// Rejects a cross-site request: every `Origin` header must be the portal's own, and a
/// browser's `Sec-Fetch-Site`, when sent, must be `same-origin`.
///
/// Because every page has `Referrer-Policy: no-referrer`, Chromium sends `Origin: null` on
/// the portal's own form posts. `null` therefore passes only together with
/// `Sec-Fetch-Site: same-origin`, a header that pages cannot set.
fn check_origin(context: &PortalContext, headers: &HeaderMap) -> Result<(), PortalError> {
    if same_origin(context.settings.origin(), headers) {
        Ok(())
    } else {
        Err(PortalError::Forbidden)
    }
}

/// Returns whether a request may come from a page of `expected_origin`; the rules are
/// those of [`check_origin`]. The admin pages use it too.
pub(crate) fn same_origin(expected_origin: &str, headers: &HeaderMap) -> bool {
    let same_origin_fetch = match headers.get("sec-fetch-site") {
        Some(site) if site.as_bytes() != b"same-origin" => return false,
        Some(_) => true,
        None => false,
    };
    let expected = expected_origin.as_bytes();
    headers.get_all(header::ORIGIN).iter().all(|origin| {
        origin.as_bytes() == expected || (origin.as_bytes() == b"null" && same_origin_fetch)
    })
}

/// Checks a form sent before sign-in against the double-submit CSRF cookie.
fn check_pre_session_csrf(
    context: &PortalContext,
    headers: &HeaderMap,
    submitted: &str,
) -> Result<(), PortalError> {
    check_origin(context, headers)?;
    let expected = cookie(headers, csrf_cookie_name(context)).unwrap_or_default();
    if expected.is_empty() || !constant_time_eq(expected.as_bytes(), submitted.as_bytes()) {
        return Err(PortalError::Forbidden);
    }
    Ok(())
}

fn check_session_csrf(session: &Session, submitted: &str) -> Result<(), PortalError> {
    if constant_time_eq(session.csrf.as_bytes(), submitted.as_bytes()) {
        Ok(())
    } else {
        Err(PortalError::Forbidden)
    }
}

fn session_cookie_name(context: &PortalContext) -> &'static str {
    if context.settings.https() {
        "__Host-sealgate-session"
    } else {
        "sealgate-session"
    }
}

fn csrf_cookie_name(context: &PortalContext) -> &'static str {
    if context.settings.https() {
        "__Host-sealgate-csrf"
    } else {
        "sealgate-csrf"
    }
}

fn set_cookie(
    context: &PortalContext,
    name: &str,
    value: &str,
    max_age: Option<u64>,
) -> HeaderValue {
    cookie_header(name, value, max_age, context.settings.https())
}

/// Builds a `Set-Cookie` value that is `HttpOnly`, `SameSite=Strict` and, with `secure`,
/// `Secure`.
pub(crate) fn cookie_header(
    name: &str,
    value: &str,
    max_age: Option<u64>,
    secure: bool,
) -> HeaderValue {
    let mut cookie = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
    if let Some(seconds) = max_age {
        cookie.push_str(&format!("; Max-Age={seconds}"));
    }
    if secure {
        cookie.push_str("; Secure");
    }
    HeaderValue::from_str(&cookie)
        .unwrap_or_else(|_| HeaderValue::from_static("invalid=; Max-Age=0"))
}

pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

fn lifetime_minutes(lifetime: std::time::Duration) -> u64 {
    lifetime.as_secs().div_ceil(60)
}

#[cfg(test)]
mod tests {
    use super::is_mime_type;

    #[test]
    fn mime_type_check() {
        assert!(is_mime_type("application/pdf"));
        assert!(is_mime_type("image/svg+xml"));
        assert!(!is_mime_type("text/plain; charset=utf-8"));
        assert!(!is_mime_type("text/plain\r\nX-Injected: 1"));
        assert!(!is_mime_type("text"));
        assert!(!is_mime_type("/plain"));
    }
}
