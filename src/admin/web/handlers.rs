//! Request handlers of the admin pages. Each parses its input, checks the session (and for
//! a `POST` the origin and CSRF token), calls the queue, accounts or audit trail on a
//! blocking thread, and renders a page. [`AdminError`] becomes a status and a plain page.

use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::AdminContext;
use super::session::AdminSession;
use super::templates::*;
use crate::admin::actions::{ActionError, ReleaseOutcome, ReviewDesk, require_admin};
use crate::admin::{LoginError, parse_time, rfc3339};
use crate::audit::{AuditEvent, AuditFilter, AuditRecord};
use crate::envelope::{QueueId, display_address};
use crate::policy::Router;
use crate::policy::classify::Classifier;
use crate::portal::download::{content_disposition, safe_content_type};
use crate::portal::handlers::{cookie, cookie_header, download};
use crate::portal::message::{attachment, parse_view};
use crate::portal::session::{constant_time_eq, random_token};
use crate::portal::templates::render;
use crate::queue::review::{ReleaseMode, ReviewFilter};
use crate::queue::store::Store;

/// Rows per page of the review list and the audit trail.
const PAGE_SIZE: u32 = 50;

/// Maximum length of an account name written to the audit trail, in characters.
const MAX_LOGGED_NAME: usize = 64;

/// A request the admin pages could not serve.
#[derive(Debug)]
pub enum AdminError {
    /// No live session: go to the sign-in page.
    SignIn,
    /// The account may not do this, or the form failed the CSRF or origin check.
    Forbidden(String),
    /// No held message with this id.
    NotFound,
    /// A malformed request.
    BadRequest(String),
    /// A database or template failure; the detail goes to the log only.
    Internal(String),
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let (status, title, detail) = match self {
            AdminError::SignIn => return Redirect::to("/login").into_response(),
            AdminError::Forbidden(detail) => (StatusCode::FORBIDDEN, "Not allowed", detail),
            AdminError::NotFound => (
                StatusCode::NOT_FOUND,
                "Not found",
                "No message with this id is held for review.".to_string(),
            ),
            AdminError::BadRequest(detail) => (StatusCode::BAD_REQUEST, "Invalid request", detail),
            AdminError::Internal(error) => {
                tracing::error!(%error, "admin request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong",
                    "The request failed; the gateway log has the details.".to_string(),
                )
            }
        };
        let page = ErrorPage {
            user: None,
            csrf: String::new(),
            title,
            detail,
        };
        render(status, &page)
    }
}

impl From<ActionError> for AdminError {
    fn from(error: ActionError) -> AdminError {
        match error {
            ActionError::Forbidden(_) => AdminError::Forbidden(error.to_string()),
            ActionError::NotFound(_) => AdminError::NotFound,
            ActionError::Invalid(detail) => AdminError::BadRequest(detail),
            ActionError::Store(detail) => AdminError::Internal(detail),
        }
    }
}

/// Form with a CSRF token, an optional reason and, for an expiry extension, days.
#[derive(serde::Deserialize)]
pub struct ActionForm {
    csrf: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    days: String,
}

/// The sign-in form.
#[derive(serde::Deserialize)]
pub struct LoginForm {
    csrf: String,
    name: String,
    password: String,
    #[serde(default)]
    code: String,
}

/// `GET /`: the review queue, or the sign-in page without a session.
pub async fn home(State(context): State<Arc<AdminContext>>, headers: HeaderMap) -> Redirect {
    match signed_in(&context, &headers) {
        Ok(_) => Redirect::to("/review"),
        Err(_) => Redirect::to("/login"),
    }
}

/// `GET /login`: the sign-in form, with a fresh double-submit CSRF cookie.
pub async fn login_page(State(context): State<Arc<AdminContext>>) -> Response {
    login_form(&context, StatusCode::OK, None)
}

/// `POST /login`: checks the name, password and TOTP code; a failure counts towards the
/// account's lock-out.
pub async fn login(
    State(context): State<Arc<AdminContext>>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Result<Response, AdminError> {
    let Form(form) = form.map_err(|_| AdminError::BadRequest("invalid sign-in form".into()))?;
    let expected = cookie(&headers, login_cookie_name(&context)).unwrap_or_default();
    let token_valid =
        !expected.is_empty() && constant_time_eq(expected.as_bytes(), form.csrf.as_bytes());
    if !context.origin_allowed(&headers) || !token_valid {
        return Err(forbidden_form());
    }
    let name = form.name.trim().to_string();
    let checked = Arc::clone(&context);
    let attempt = blocking(move || {
        let accounts = checked
            .accounts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let code = (!form.code.trim().is_empty()).then_some(form.code.as_str());
        Ok(accounts.login(form.name.trim(), &form.password, code, checked.lockout))
    })
    .await?;
    let logged_name: String = name.chars().take(MAX_LOGGED_NAME).collect();
    match attempt {
        Ok(account) => {
            audit_login(&context, &logged_name, "ok").await;
            tracing::info!(user = %logged_name, "administrator signed in");
            let session_id = context.sessions.insert(AdminSession {
                account,
                csrf: random_token(),
            });
            let max_age = context.sessions.lifetime().as_secs();
            let mut response = Redirect::to("/review").into_response();
            let cookies = response.headers_mut();
            cookies.append(
                header::SET_COOKIE,
                cookie_header(
                    session_cookie_name(&context),
                    &session_id,
                    Some(max_age),
                    context.https,
                ),
            );
            cookies.append(
                header::SET_COOKIE,
                cookie_header(login_cookie_name(&context), "", Some(0), context.https),
            );
            Ok(response)
        }
        Err(LoginError::Invalid) => {
            audit_login(&context, &logged_name, "failed").await;
            Ok(login_form(
                &context,
                StatusCode::UNAUTHORIZED,
                Some("The name, password or code is not correct.".into()),
            ))
        }
        Err(LoginError::Locked(wait)) => {
            audit_login(&context, &logged_name, "locked").await;
            tracing::warn!(user = %logged_name, "sign-in rejected: account locked");
            let minutes = wait.as_secs().div_ceil(60).max(1);
            Ok(login_form(
                &context,
                StatusCode::TOO_MANY_REQUESTS,
                Some(format!(
                    "Too many failed sign-ins. The account is locked for {minutes} more minute(s)."
                )),
            ))
        }
        Err(LoginError::Store(error)) => Err(AdminError::Internal(error.to_string())),
    }
}

/// `POST /logout`: ends the session.
pub async fn logout(
    State(context): State<Arc<AdminContext>>,
    headers: HeaderMap,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Result<Response, AdminError> {
    let (session_id, session) = session_of(&context, &headers)?;
    check_form(&context, &headers, &session, form)?;
    context.sessions.remove(&session_id);
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        cookie_header(session_cookie_name(&context), "", Some(0), context.https),
    );
    Ok(response)
}

/// `GET /review`: held messages, newest first, filtered and paged.
pub async fn review_list(
    State(context): State<Arc<AdminContext>>,
    headers: HeaderMap,
    Query(query): Query<ReviewQuery>,
) -> Result<Response, AdminError> {
    let session = signed_in(&context, &headers)?;
    let (filter, problem) = match review_filter(&query) {
        Ok(filter) => (filter, None),
        Err(problem) => (ReviewFilter::default(), Some(problem)),
    };
    let page = query.page.max(1);
    let offset = (page - 1) * u64::from(PAGE_SIZE);

    let reader = Arc::clone(&context);
    let (total, rows) = blocking(move || {
        let store = reader.store.lock().unwrap_or_else(|p| p.into_inner());
        let total = store.review_count(&filter).map_err(internal)?;
        let items = store
            .review_list(&filter, PAGE_SIZE, offset)
            .map_err(internal)?;
        let mut rows = Vec::with_capacity(items.len());
        for item in items {
            // The subject is read from the body only for the rows shown.
            let subject = store
                .body(&item.id)
                .map_err(internal)?
                .and_then(|body| parse_view(&body))
                .map(|view| view.subject)
                .unwrap_or_default();
            let recipients: Vec<String> =
                item.recipients.iter().map(|r| display_address(r)).collect();
            rows.push(ReviewRow {
                id: item.id.to_string(),
                received: rfc3339(item.received_at),
                sender: display_address(&item.sender),
                recipients: recipients.join(", "),
                subject,
                size: item.size,
                reason: item.reason,
            });
        }
        Ok((total, rows))
    })
    .await?;

    let pages = total.div_ceil(u64::from(PAGE_SIZE)).max(1);
    let fields = [
        ("sender", &query.sender),
        ("recipient", &query.recipient),
        ("since", &query.since),
        ("until", &query.until),
        ("rule", &query.rule),
    ];
    let link = |page: u64| page_link("/review", &fields, page);
    let view = ReviewListPage {
        user: Some(session.account.name.clone()),
        csrf: session.csrf.clone(),
        previous: (page > 1).then(|| link(page - 1)),
        next: (page < pages).then(|| link(page + 1)),
        filter: query,
        problem,
        rows,
        total,
        page,
        pages,
    };
    Ok(render(StatusCode::OK, &view))
}

/// `GET /review/{id}`: headers, text, sanitised HTML, attachments and the routing
/// explanation of one held message. Recorded in the audit trail.
pub async fn review_detail(
    State(context): State<Arc<AdminContext>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, AdminError> {
    let session = signed_in(&context, &headers)?;
    let id = QueueId::parse(&id).ok_or(AdminError::NotFound)?;
    let reader = Arc::clone(&context);
    let account = session.account.clone();
    let page =
        blocking(move || {
            let mut store = reader.store.lock().unwrap_or_else(|p| p.into_inner());
            let (sender, received, body) = held_message(&store, &id)?;
            let rows = store.recipients(&id).map_err(internal)?;
            let recipients = rows
                .iter()
                .map(|row| {
                    format!(
                        "{}: {} ({})",
                        display_address(&row.address),
                        row.route.as_deref().unwrap_or("-"),
                        row.reason.as_deref().unwrap_or("")
                    )
                })
                .collect();
            let addresses: Vec<String> = rows.into_iter().map(|row| row.address).collect();
            let explanation = explain_release(&reader, &body, &addresses)?;
            let pending = store.release_request(&id).map_err(internal)?.map(|request| {
            format!(
                "{} asked for a release ({}) that a different administrator must approve: {}",
                request.requested_by,
                request.mode.as_str(),
                request.reason
            )
        });
            ReviewDesk {
                store: &mut store,
                audit: &reader.audit,
                four_eyes: reader.config.admin.four_eyes,
            }
            .viewed(&account, &id)?;
            Ok(ReviewDetailPage {
                user: Some(account.name.clone()),
                csrf: String::new(),
                id: id.to_string(),
                sender: display_address(&sender),
                received: rfc3339(received),
                message: parse_view(&body).unwrap_or_default(),
                recipients,
                explanation,
                pending,
            })
        })
        .await?;

    let page = ReviewDetailPage {
        csrf: session.csrf,
        ..page
    };
    Ok(render(StatusCode::OK, &page))
}

/// `GET /review/{id}/attachments/{index}`: one attachment, as a download whose name and
/// type cannot run in the page's origin.
pub async fn review_attachment(
    State(context): State<Arc<AdminContext>>,
    headers: HeaderMap,
    Path((id, index)): Path<(String, usize)>,
) -> Result<Response, AdminError> {
    let session = signed_in(&context, &headers)?;
    let id = QueueId::parse(&id).ok_or(AdminError::NotFound)?;
    let reader = Arc::clone(&context);
    let file = blocking(move || {
        let store = reader.store.lock().unwrap_or_else(|p| p.into_inner());
        let (_, _, body) = held_message(&store, &id)?;
        let file = attachment(&body, index).ok_or(AdminError::NotFound)?;
        let outcome = format!("attachment {index}");
        reader
            .audit
            .append(&AuditRecord {
                event: AuditEvent::ReviewViewed,
                actor: &session.account.name,
                held_id: None,
                queue_id: Some(id.as_str()),
                outcome: &outcome,
                detail: "",
            })
            .map_err(internal)?;
        Ok(file)
    })
    .await?;
    Ok(download(
        safe_content_type(&file.content_type),
        &content_disposition(file.name.as_deref()),
        file.bytes,
    ))
}

/// `GET /review/{id}/{action}`: the confirmation step of an action. Auditors get 403.
pub async fn confirm_page(
    State(context): State<Arc<AdminContext>>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
) -> Result<Response, AdminError> {
    let session = signed_in(&context, &headers)?;
    require_admin(&session.account)?;
    let action = ReviewAction::parse(&action).ok_or(AdminError::NotFound)?;
    let id = QueueId::parse(&id).ok_or(AdminError::NotFound)?;
    let reader = Arc::clone(&context);
    let lookup = id.clone();
    let (sender, _, _) = blocking(move || {
        let store = reader.store.lock().unwrap_or_else(|p| p.into_inner());
        held_message(&store, &lookup)
    })
    .await?;
    let (title, explanation) = action.describe();
    let page = ConfirmPage {
        user: Some(session.account.name.clone()),
        csrf: session.csrf.clone(),
        subject_line: format!("Message {id} from {}.", display_address(&sender)),
        form_action: format!("/review/{id}/{}", action.path()),
        back: format!("/review/{id}"),
        title,
        explanation,
        reason_required: action.needs_reason(),
        ask_days: false,
    };
    Ok(render(StatusCode::OK, &page))
}

/// `POST /review/{id}/{action}`: carries out a confirmed action.
pub async fn act(
    State(context): State<Arc<AdminContext>>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Result<Response, AdminError> {
    let (_, session) = session_of(&context, &headers)?;
    let form = check_form(&context, &headers, &session, form)?;
    require_admin(&session.account)?;
    let action = ReviewAction::parse(&action).ok_or(AdminError::NotFound)?;
    let id = QueueId::parse(&id).ok_or(AdminError::NotFound)?;

    let writer = Arc::clone(&context);
    let account = session.account.clone();
    let detail = blocking(move || {
        let mut store = writer.store.lock().unwrap_or_else(|p| p.into_inner());
        let mut desk = ReviewDesk {
            store: &mut store,
            audit: &writer.audit,
            four_eyes: writer.config.admin.four_eyes,
        };
        let reason = form.reason.as_str();
        let detail = match action {
            ReviewAction::Release(mode) => match desk.release(&account, &id, mode, reason)? {
                ReleaseOutcome::Released { recipients, .. } => {
                    format!("Message {id} is released; {recipients} recipient(s) are routed again.")
                }
                ReleaseOutcome::Requested => format!(
                    "The release of message {id} is requested. A different administrator must \
                     approve it."
                ),
            },
            ReviewAction::Reject => {
                let count = desk.reject(&account, &id, reason)?;
                format!("Message {id} is rejected for {count} recipient(s); the sender gets a DSN.")
            }
            ReviewAction::Delete => {
                desk.delete(&account, &id, reason)?;
                format!("Message {id} is deleted.")
            }
        };
        Ok(detail)
    })
    .await?;

    tracing::info!(user = %session.account.name, action = action.path(), "admin action done");
    let page = DonePage {
        user: Some(session.account.name.clone()),
        csrf: session.csrf.clone(),
        title: "Done".into(),
        detail,
    };
    Ok(render(StatusCode::OK, &page))
}

/// `GET /audit`: audit entries, newest first, filtered and paged.
pub async fn audit_page(
    State(context): State<Arc<AdminContext>>,
    headers: HeaderMap,
    Query(query): Query<AuditQuery>,
) -> Result<Response, AdminError> {
    let session = signed_in(&context, &headers)?;
    let (filter, problem) = match audit_filter(&query) {
        Ok(filter) => (filter, None),
        Err(problem) => (AuditFilter::default(), Some(problem)),
    };
    let page = query.page.max(1);
    let offset = (page - 1) * u64::from(PAGE_SIZE);

    let reader = Arc::clone(&context);
    // One row more than a page shows whether there is a next page.
    let mut entries = blocking(move || {
        reader
            .audit
            .search(&filter, true, PAGE_SIZE + 1, offset)
            .map_err(internal)
    })
    .await?;

    let has_next = entries.len() > PAGE_SIZE as usize;
    entries.truncate(PAGE_SIZE as usize);
    let fields = [
        ("event", &query.event),
        ("actor", &query.actor),
        ("queue_id", &query.queue_id),
        ("since", &query.since),
        ("until", &query.until),
    ];
    let link = |page: u64| page_link("/audit", &fields, page);
    let view = AuditPage {
        user: Some(session.account.name.clone()),
        csrf: session.csrf.clone(),
        previous: (page > 1).then(|| link(page - 1)),
        next: has_next.then(|| link(page + 1)),
        entries: entries
            .into_iter()
            .map(|entry| AuditRow {
                id: entry.id,
                time: rfc3339(entry.at),
                event: entry.event,
                actor: entry.actor,
                queue_id: entry.queue_id.unwrap_or_default(),
                held_id: entry.held_id.unwrap_or_default(),
                outcome: entry.outcome,
                detail: entry.detail,
            })
            .collect(),
        filter: query,
        problem,
    };
    Ok(render(StatusCode::OK, &view))
}

/// Maximum days one extension adds to a portal message's expiry.
const MAX_EXTENSION_DAYS: i64 = 90;

/// Query of the portal messages page.
#[derive(Default, serde::Deserialize)]
#[serde(default)]
pub struct PageQuery {
    page: u64,
}

/// `GET /portal`: messages in the hold store with their state, newest first, paged. The
/// state is `notified`, `opened` or `replied` from the audit trail while the message is
/// active, else `expired` or `revoked`.
pub async fn portal_list(
    State(context): State<Arc<AdminContext>>,
    headers: HeaderMap,
    Query(query): Query<PageQuery>,
) -> Result<Response, AdminError> {
    let session = signed_in(&context, &headers)?;
    let page = usize::try_from(query.page.max(1)).unwrap_or(1);
    let reader = Arc::clone(&context);
    let (rows, total) = blocking(move || {
        let store = reader.hold_store.as_ref().ok_or_else(hold_store_missing)?;
        let mut held = store.list().map_err(internal)?;
        held.reverse();
        let total = held.len();
        let start = (page - 1) * PAGE_SIZE as usize;
        let mut rows = Vec::new();
        for summary in held.into_iter().skip(start).take(PAGE_SIZE as usize) {
            let active = summary.state == crate::store::HeldState::Active;
            let state = if active {
                let events = reader.audit.entries_for(&summary.id).map_err(internal)?;
                let happened = |event: AuditEvent| events.iter().any(|e| e.event == event.as_str());
                if happened(AuditEvent::ReplySent) {
                    "replied"
                } else if happened(AuditEvent::Opened) {
                    "opened"
                } else {
                    "notified"
                }
            } else {
                summary.state.as_str()
            };
            rows.push(PortalRow {
                id: summary.id.to_string(),
                state,
                created: rfc3339(summary.created_at),
                expires: rfc3339(summary.expires_at),
                active,
            });
        }
        Ok((rows, total))
    })
    .await?;
    let pages = total.div_ceil(PAGE_SIZE as usize).max(1);
    let view = PortalPage {
        user: Some(session.account.name.clone()),
        csrf: session.csrf.clone(),
        previous: (page > 1).then(|| format!("/portal?page={}", page - 1)),
        next: (page < pages).then(|| format!("/portal?page={}", page + 1)),
        rows,
        total,
    };
    Ok(render(StatusCode::OK, &view))
}

/// `GET /portal/{id}/{action}`: the confirmation step of `revoke` or `extend`. Auditors
/// get 403.
pub async fn portal_confirm(
    State(context): State<Arc<AdminContext>>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
) -> Result<Response, AdminError> {
    let session = signed_in(&context, &headers)?;
    require_admin(&session.account)?;
    let id = crate::store::HeldId::parse(&id).ok_or(AdminError::NotFound)?;
    let (title, explanation, ask_days) = match action.as_str() {
        "revoke" => (
            "Revoke",
            "The message's content and key are deleted, so the recipient's link stops working.",
            false,
        ),
        "extend" => (
            "Extend expiry",
            "The recipient can collect the message for longer.",
            true,
        ),
        _ => return Err(AdminError::NotFound),
    };
    let page = ConfirmPage {
        user: Some(session.account.name.clone()),
        csrf: session.csrf.clone(),
        subject_line: format!("Portal message {id}."),
        form_action: format!("/portal/{id}/{action}"),
        back: "/portal".into(),
        title,
        explanation,
        reason_required: false,
        ask_days,
    };
    Ok(render(StatusCode::OK, &page))
}

/// `POST /portal/{id}/{action}`: revokes a portal message or extends its expiry.
pub async fn portal_act(
    State(context): State<Arc<AdminContext>>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Result<Response, AdminError> {
    let (_, session) = session_of(&context, &headers)?;
    let form = check_form(&context, &headers, &session, form)?;
    require_admin(&session.account)?;
    let id = crate::store::HeldId::parse(&id).ok_or(AdminError::NotFound)?;
    let writer = Arc::clone(&context);
    let actor = session.account.name.clone();
    let detail = blocking(move || {
        let store = writer.hold_store.as_ref().ok_or_else(hold_store_missing)?;
        let not_found = |error: crate::store::StoreError| match error {
            crate::store::StoreError::NotFound(_) => AdminError::NotFound,
            other => internal(other),
        };
        let (event, outcome, detail) = match action.as_str() {
            "revoke" => {
                if !store.revoke(&id).map_err(not_found)? {
                    return Err(AdminError::BadRequest(format!(
                        "portal message {id} is not active"
                    )));
                }
                (
                    AuditEvent::Revoked,
                    "ok".to_string(),
                    format!("Portal message {id} is revoked."),
                )
            }
            "extend" => {
                let days: i64 = form
                    .days
                    .trim()
                    .parse()
                    .ok()
                    .filter(|days| (1..=MAX_EXTENSION_DAYS).contains(days))
                    .ok_or_else(|| {
                        AdminError::BadRequest(format!(
                            "invalid days {:?}: expected 1 to {MAX_EXTENSION_DAYS}",
                            form.days
                        ))
                    })?;
                let current = store
                    .list()
                    .map_err(internal)?
                    .into_iter()
                    .find(|summary| summary.id == id)
                    .ok_or(AdminError::NotFound)?;
                let base = current.expires_at.max(crate::queue::store::now_millis());
                let expires_at = base + days * 86_400_000;
                if !store.extend(&id, expires_at).map_err(not_found)? {
                    return Err(AdminError::BadRequest(format!(
                        "portal message {id} is not active"
                    )));
                }
                (
                    AuditEvent::ExpiryExtended,
                    format!("until {}", rfc3339(expires_at)),
                    format!(
                        "Portal message {id} now expires at {}.",
                        rfc3339(expires_at)
                    ),
                )
            }
            _ => return Err(AdminError::NotFound),
        };
        let reason = format!("reason: {}", form.reason.trim());
        writer
            .audit
            .append(&AuditRecord {
                event,
                actor: &actor,
                held_id: Some(id.as_str()),
                queue_id: None,
                outcome: &outcome,
                detail: &reason,
            })
            .map_err(internal)?;
        Ok(detail)
    })
    .await?;
    let page = DonePage {
        user: Some(session.account.name.clone()),
        csrf: session.csrf.clone(),
        title: "Done".into(),
        detail,
    };
    Ok(render(StatusCode::OK, &page))
}

fn hold_store_missing() -> AdminError {
    AdminError::Internal("the hold store is unavailable (see the start-up log)".into())
}

/// An action on a held message, as named in its URL.
#[derive(Clone, Copy, Debug)]
enum ReviewAction {
    Release(ReleaseMode),
    Reject,
    Delete,
}

impl ReviewAction {
    fn parse(path: &str) -> Option<ReviewAction> {
        match path {
            "release" => Some(ReviewAction::Release(ReleaseMode::Protected)),
            "release-not-sensitive" => Some(ReviewAction::Release(ReleaseMode::NotSensitive)),
            "reject" => Some(ReviewAction::Reject),
            "delete" => Some(ReviewAction::Delete),
            _ => None,
        }
    }

    fn path(self) -> &'static str {
        match self {
            ReviewAction::Release(ReleaseMode::Protected) => "release",
            ReviewAction::Release(ReleaseMode::NotSensitive) => "release-not-sensitive",
            ReviewAction::Reject => "reject",
            ReviewAction::Delete => "delete",
        }
    }

    fn needs_reason(self) -> bool {
        matches!(
            self,
            ReviewAction::Release(ReleaseMode::NotSensitive) | ReviewAction::Reject
        )
    }

    fn describe(self) -> (&'static str, &'static str) {
        match self {
            ReviewAction::Release(ReleaseMode::Protected) => (
                "Release",
                "The message is routed again with the review rule read as protect, so it leaves \
                 only by verified TLS, S/MIME or the portal.",
            ),
            ReviewAction::Release(ReleaseMode::NotSensitive) => (
                "Release as not sensitive",
                "The message is routed as ordinary mail, without classification. Only do this \
                 when it contains no sensitive data.",
            ),
            ReviewAction::Reject => (
                "Reject",
                "The message is not delivered. The sender gets a delivery status notification \
                 with your reason.",
            ),
            ReviewAction::Delete => (
                "Delete",
                "The message is removed without delivery and without telling the sender.",
            ),
        }
    }
}

/// Runs queue or account work on a blocking thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, AdminError> + Send + 'static,
) -> Result<T, AdminError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|error| Err(AdminError::Internal(error.to_string())))
}

fn internal(error: impl std::fmt::Display) -> AdminError {
    AdminError::Internal(error.to_string())
}

fn forbidden_form() -> AdminError {
    AdminError::Forbidden(
        "The form has expired or came from another site. Reload the page and try again.".into(),
    )
}

/// Reads the sender, arrival time and body of a message held for review.
fn held_message(store: &Store, id: &QueueId) -> Result<(String, i64, Vec<u8>), AdminError> {
    if !store.is_in_review(id).map_err(internal)? {
        return Err(AdminError::NotFound);
    }
    let summary = store
        .message(id)
        .map_err(internal)?
        .ok_or(AdminError::NotFound)?;
    let body = store.body(id).map_err(internal)?.unwrap_or_default();
    Ok((summary.sender, summary.received_at, body))
}

/// Explains how each recipient is routed once the message is released, as `sealgate
/// explain` does.
fn explain_release(
    context: &AdminContext,
    body: &[u8],
    recipients: &[String],
) -> Result<Vec<String>, AdminError> {
    let classifier = Classifier::new(&context.config.policy.classify).map_err(internal)?;
    let classification = crate::queue::review::apply_release(
        classifier.classify(body),
        Some(ReleaseMode::Protected),
    );
    let mut lines: Vec<String> = classification
        .matches
        .iter()
        .map(|rule| format!("rule: {rule}"))
        .collect();
    let router = Router::new(&context.config.policy);
    for address in recipients {
        let (route, recipient) =
            router.route_classified(address, &classification, context.certificates.as_ref());
        lines.push(format!(
            "{}: {route}, because {}",
            display_address(address),
            recipient.reason
        ));
    }
    Ok(lines)
}

fn review_filter(query: &ReviewQuery) -> Result<ReviewFilter, String> {
    Ok(ReviewFilter {
        sender: non_empty(&query.sender),
        recipient: non_empty(&query.recipient),
        since: non_empty(&query.since)
            .as_deref()
            .map(parse_time)
            .transpose()?,
        until: non_empty(&query.until)
            .as_deref()
            .map(parse_time)
            .transpose()?,
        rule: non_empty(&query.rule),
    })
}

fn audit_filter(query: &AuditQuery) -> Result<AuditFilter, String> {
    Ok(AuditFilter {
        since: non_empty(&query.since)
            .as_deref()
            .map(parse_time)
            .transpose()?,
        until: non_empty(&query.until)
            .as_deref()
            .map(parse_time)
            .transpose()?,
        event: non_empty(&query.event),
        actor: non_empty(&query.actor),
        queue_id: non_empty(&query.queue_id),
    })
}

fn non_empty(text: &str) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// Builds `path?key=value&...&page=N` from the non-empty pairs, values percent-encoded.
fn page_link(path: &str, pairs: &[(&str, &String)], page: u64) -> String {
    let mut link = format!("{path}?");
    for (key, value) in pairs {
        if value.is_empty() {
            continue;
        }
        link.push_str(key);
        link.push('=');
        for byte in value.bytes() {
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                link.push(char::from(byte));
            } else {
                link.push_str(&format!("%{byte:02X}"));
            }
        }
        link.push('&');
    }
    link.push_str(&format!("page={page}"));
    link
}

fn signed_in(context: &AdminContext, headers: &HeaderMap) -> Result<AdminSession, AdminError> {
    session_of(context, headers).map(|(_, session)| session)
}

fn session_of(
    context: &AdminContext,
    headers: &HeaderMap,
) -> Result<(String, AdminSession), AdminError> {
    let id = cookie(headers, session_cookie_name(context)).ok_or(AdminError::SignIn)?;
    let mut session = context.sessions.get(id).ok_or(AdminError::SignIn)?;
    // The account is read again on every request, so a removed account loses its sessions
    // at once. NOTE: this is a short SQLite read on the async thread, under the accounts
    // lock.
    let current = context
        .accounts
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(&session.account.name)
        .map_err(internal)?;
    let Some(account) = current else {
        context.sessions.remove(id);
        return Err(AdminError::SignIn);
    };
    session.account = account;
    Ok((id.to_string(), session))
}

/// Checks a posted form: the same-origin rule and the session's CSRF token.
fn check_form(
    context: &AdminContext,
    headers: &HeaderMap,
    session: &AdminSession,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Result<ActionForm, AdminError> {
    let Ok(Form(form)) = form else {
        return Err(forbidden_form());
    };
    if !context.origin_allowed(headers)
        || !constant_time_eq(session.csrf.as_bytes(), form.csrf.as_bytes())
    {
        return Err(forbidden_form());
    }
    Ok(form)
}

fn login_form(context: &AdminContext, status: StatusCode, problem: Option<String>) -> Response {
    let csrf = random_token();
    let page = LoginPage {
        user: None,
        csrf: csrf.clone(),
        problem,
    };
    let mut response = render(status, &page);
    response.headers_mut().append(
        header::SET_COOKIE,
        cookie_header(login_cookie_name(context), &csrf, None, context.https),
    );
    response
}

async fn audit_login(context: &Arc<AdminContext>, name: &str, outcome: &'static str) {
    let writer = Arc::clone(context);
    let name = name.to_string();
    let written = blocking(move || {
        writer
            .audit
            .append(&AuditRecord {
                event: AuditEvent::AdminLogin,
                actor: &name,
                held_id: None,
                queue_id: None,
                outcome,
                detail: "",
            })
            .map_err(internal)
    })
    .await;
    if let Err(error) = written {
        tracing::error!(?error, "failed to audit a sign-in");
    }
}

fn session_cookie_name(context: &AdminContext) -> &'static str {
    if context.https {
        "__Host-sealgate-admin"
    } else {
        "sealgate-admin"
    }
}

fn login_cookie_name(context: &AdminContext) -> &'static str {
    if context.https {
        "__Host-sealgate-admin-login"
    } else {
        "sealgate-admin-login"
    }
}
