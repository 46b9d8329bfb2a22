//! The web portal where recipients of held messages collect them.
//!
//! A recipient opens the link from the notification (`/m/{token}`), requests a one-time
//! passcode, which is mailed to their address, enters it, and then reads the message,
//! downloads attachments and the original `.eml`, and can send a reply. Opening the link
//! only shows a page: sending the passcode and every other change is a `POST`, so link
//! scanners that prefetch URLs neither use up anything nor cause mail.
//!
//! Every page carries a strict Content-Security-Policy and the other security headers,
//! every form a CSRF token that is checked together with `Origin`, and the pages use no
//! JavaScript. Handlers parse, call the [`HeldMessages`] store and the spool, and render;
//! [`PortalError`] is turned into a status code and a plain page in one place and never
//! shows internal error text.
//!
//! The admin pages (review, audit) are in [`crate::admin::web`] and reuse the security
//! headers, origin check, cookies and TLS serving from here.

mod backend;
pub mod download;
pub(crate) mod handlers;
mod hold;
pub mod message;
pub mod passcode;
mod reply;
pub mod sanitize;
pub mod session;
pub(crate) mod templates;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub use backend::{
    AuditEvent, BackendError, HeldContent, HeldLink, HeldMessages, LinkStatus, MemoryHeldMessages,
    PasscodeRecord,
};
pub use hold::StoreBackend;
pub use passcode::SendLimits;

use crate::config::Config;
use crate::queue::Spool;
use session::Sessions;

/// Time a client may take for the TLS handshake before the connection is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after a failed `accept`, which is usually out of file descriptors.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Content-Security-Policy of every response. Pages load only the portal's own style
/// sheet; sanitised message HTML can show no remote content, run no script and post no form
/// anywhere else.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; \
     img-src data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Settings of the recipient portal.
#[derive(Clone, Debug)]
pub struct PortalSettings {
    /// URL the notification links start with, such as `https://mail.example.nhs.uk`,
    /// without a trailing slash. Its origin is what `Origin` headers must match.
    pub base_url: String,
    /// Organisation name shown on pages and in the passcode mail.
    pub organisation: String,
    /// Address that passcode mails come from, as header and envelope sender.
    pub passcode_sender: String,
    /// Digits in a passcode, 6 to 8.
    pub passcode_digits: u8,
    /// How long a passcode is valid.
    pub passcode_lifetime: Duration,
    /// Wrong passcodes allowed before the passcode is void and the cool-down starts.
    pub max_passcode_attempts: u32,
    /// How long a session lasts after the passcode was entered.
    pub session_lifetime: Duration,
    /// Limits for mailing passcodes.
    pub send_limits: SendLimits,
    /// Largest reply accepted, in bytes, attachments included.
    pub max_reply_size: usize,
    /// sealgate itself terminates TLS for the portal.
    pub tls: bool,
}

impl PortalSettings {
    /// Takes the settings from `[portal]`, with `portal.passcode_digits` kept within 6 to 8
    /// and replies limited to `inbound.max_message_size`.
    pub fn from_config(config: &Config) -> PortalSettings {
        let portal = &config.portal;
        let hostname = &config.server.hostname;
        let digits = portal.passcode_digits.clamp(
            u32::from(passcode::MIN_DIGITS),
            u32::from(passcode::MAX_DIGITS),
        );
        PortalSettings {
            base_url: portal.public_url(hostname),
            organisation: portal.organisation_name(hostname).to_string(),
            passcode_sender: portal.from_address(hostname),
            passcode_digits: u8::try_from(digits).unwrap_or(passcode::MIN_DIGITS),
            passcode_lifetime: portal.passcode_lifetime.0,
            max_passcode_attempts: portal.max_passcode_attempts,
            session_lifetime: portal.session_lifetime.0,
            send_limits: SendLimits {
                resend_interval: portal.passcode_resend_interval.0,
                max_per_window: portal.max_passcode_sends,
                window: portal.passcode_send_window.0,
                lockout_cooldown: portal.lockout_cooldown.0,
            },
            max_reply_size: usize::try_from(config.inbound.max_message_size.0)
                .unwrap_or(usize::MAX),
            tls: portal.tls,
        }
    }

    /// Returns whether browsers reach the portal over HTTPS, directly or through a proxy, which
    /// turns on `Secure` cookies and HSTS.
    pub fn https(&self) -> bool {
        self.tls || self.base_url.starts_with("https://")
    }

    /// Returns the origin (`scheme://host[:port]`) of `base_url`.
    pub fn origin(&self) -> &str {
        origin_of(&self.base_url)
    }
}

/// Returns the origin (`scheme://host[:port]`) of a URL without its path.
pub(crate) fn origin_of(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |at| at + 3);
    let end = url[after_scheme..]
        .find('/')
        .map_or(url.len(), |at| after_scheme + at);
    &url[..end]
}

/// Checks that the portal may listen on `address`: plain HTTP only on a loopback address
/// (behind a reverse proxy that does TLS) unless `dangerous_allow_plain_http` is set.
///
/// # Errors
///
/// The reason, when the combination is not allowed.
pub fn check_listen_address(
    address: SocketAddr,
    tls: bool,
    dangerous_allow_plain_http: bool,
) -> Result<(), &'static str> {
    if tls || address.ip().is_loopback() || dangerous_allow_plain_http {
        return Ok(());
    }
    Err(
        "plain HTTP is only allowed on a loopback address; set portal.tls = true, listen \
         on 127.0.0.1 behind a TLS reverse proxy, or set \
         portal.dangerous_allow_plain_http = true",
    )
}

/// Shared state of the portal: settings, hold store, spool, sessions and limits.
pub struct PortalContext {
    settings: PortalSettings,
    store: Arc<dyn HeldMessages>,
    spool: Spool,
    tls: Option<TlsAcceptor>,
    sessions: Sessions,
    /// Random key of this process for passcode hashes, so they cannot be reversed offline.
    passcode_key: [u8; 32],
}

impl PortalContext {
    /// Creates the portal state. With `tls`, [`serve_portal`] speaks HTTPS.
    pub fn new(
        settings: PortalSettings,
        store: Arc<dyn HeldMessages>,
        spool: Spool,
        tls: Option<TlsAcceptor>,
    ) -> PortalContext {
        let settings = PortalSettings {
            tls: tls.is_some(),
            ..settings
        };
        PortalContext {
            sessions: Sessions::new(settings.session_lifetime),
            settings,
            store,
            spool,
            tls,
            passcode_key: rand::random(),
        }
    }

    /// Runs `call` on the store in tokio's blocking thread pool, because SQLite and
    /// AES-GCM work on an async thread would stall the other requests on it.
    async fn with_store<T, F>(&self, call: F) -> Result<T, PortalError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn HeldMessages) -> Result<T, BackendError> + Send + 'static,
    {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || call(store.as_ref()))
            .await
            .map_err(|error| PortalError::Internal(format!("hold store task failed: {error}")))?
            .map_err(PortalError::from)
    }

    /// Records an access in the audit log, off the async threads.
    async fn audit(&self, link: &HeldLink, event: AuditEvent) {
        let link = link.clone();
        let recorded = self
            .with_store(move |store| {
                store.audit(&link, event);
                Ok(())
            })
            .await;
        if let Err(error) = recorded {
            tracing::error!(%error, ?event, "audit entry not written");
        }
    }
}

/// Builds the portal's routes, with the security headers on every response.
pub fn router(context: Arc<PortalContext>) -> Router {
    let https = context.settings.https();
    let reply_limit = context.settings.max_reply_size;
    Router::new()
        .route("/m/{token}", get(handlers::link_page))
        .route("/m/{token}/passcode", post(handlers::send_passcode))
        .route("/m/{token}/verify", post(handlers::verify_passcode))
        .route("/m/{token}/message", get(handlers::message_page))
        .route(
            "/m/{token}/attachments/{index}",
            get(handlers::download_attachment),
        )
        .route("/m/{token}/original.eml", get(handlers::download_original))
        .route(
            "/m/{token}/reply",
            post(handlers::send_reply).layer(DefaultBodyLimit::max(reply_limit)),
        )
        .route("/m/{token}/sign-out", post(handlers::sign_out))
        .route("/portal.css", get(handlers::style_sheet))
        .fallback(handlers::not_found)
        .layer(DefaultBodyLimit::max(64 * 1024))
        .layer(axum::middleware::map_response(move |response: Response| {
            add_security_headers(response, https)
        }))
        .with_state(context)
}

pub(crate) async fn add_security_headers(mut response: Response, https: bool) -> Response {
    let headers = response.headers_mut();
    let fixed = [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CACHE_CONTROL, "no-store"),
        (
            header::HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
        (
            header::HeaderName::from_static("cross-origin-resource-policy"),
            "same-origin",
        ),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if https {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    response
}

/// Serves the portal on `listener` until the task is dropped: HTTPS when the context has
/// a TLS acceptor, plain HTTP otherwise.
pub async fn serve_portal(listener: TcpListener, context: Arc<PortalContext>) {
    let app = router(Arc::clone(&context));
    match context.tls.clone() {
        None => {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "portal listener stopped");
            }
        }
        Some(acceptor) => serve_tls(listener, acceptor, app).await,
    }
}

pub(crate) async fn serve_tls(listener: TcpListener, acceptor: TlsAcceptor, app: Router) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "portal accept failed");
                tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, %error, "portal TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "portal TLS handshake timed out");
                        return;
                    }
                };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(TLS_HANDSHAKE_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "portal connection ended with an error");
            }
        });
    }
}

/// A request the portal could not serve. [`IntoResponse`] turns it into a status code and
/// a plain page; internal details go to the log only.
#[derive(Debug, thiserror::Error)]
pub enum PortalError {
    /// No held message has this link.
    #[error("unknown link")]
    UnknownLink,
    /// The held message's collection period is over.
    #[error("expired link")]
    Expired,
    /// The held message was withdrawn.
    #[error("revoked link")]
    Revoked,
    /// The CSRF token or the `Origin` header did not match.
    #[error("CSRF check failed")]
    Forbidden,
    /// The request needs a session for this link, and has none.
    #[error("no session for this link")]
    SessionRequired {
        /// The link token, for the page's link back to the start.
        token: String,
    },
    /// Too many passcode mails or wrong passcodes; the client may try again after the wait.
    #[error("rate limited")]
    TooManyRequests {
        /// Time until another try may succeed.
        retry_after: Duration,
    },
    /// A malformed form or path.
    #[error("bad request")]
    BadRequest,
    /// A reply larger than `max_reply_size`.
    #[error("reply too large")]
    TooLarge,
    /// A store, queue or template failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<BackendError> for PortalError {
    fn from(error: BackendError) -> PortalError {
        PortalError::Internal(error.to_string())
    }
}

impl From<crate::queue::QueueError> for PortalError {
    fn from(error: crate::queue::QueueError) -> PortalError {
        PortalError::Internal(error.to_string())
    }
}

impl IntoResponse for PortalError {
    fn into_response(self) -> Response {
        let (status, title, detail, token) = match &self {
            PortalError::UnknownLink => (
                StatusCode::NOT_FOUND,
                "This link is not valid",
                "Check that you copied the whole link from the email. If it still does not \
                 work, ask the sender to send the message again.",
                None,
            ),
            PortalError::Expired => (
                StatusCode::GONE,
                "This message has expired",
                "Messages can only be collected for a limited time. Ask the sender to send \
                 it again.",
                None,
            ),
            PortalError::Revoked => (
                StatusCode::GONE,
                "This message has been withdrawn",
                "The sender or their organisation withdrew this message. Contact the sender \
                 if you still need it.",
                None,
            ),
            PortalError::Forbidden => (
                StatusCode::FORBIDDEN,
                "This form has expired",
                "Go back, reload the page and try again.",
                None,
            ),
            PortalError::SessionRequired { token } => (
                StatusCode::UNAUTHORIZED,
                "Your session has ended",
                "For your security, sessions end after a short time. Ask for a new passcode \
                 to read the message again.",
                Some(token.clone()),
            ),
            PortalError::TooManyRequests { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "Please wait before trying again",
                "There have been too many attempts for this message.",
                None,
            ),
            PortalError::BadRequest => (
                StatusCode::BAD_REQUEST,
                "Something was wrong with the request",
                "Go back and try again.",
                None,
            ),
            PortalError::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "Your reply is too large",
                "Go back and attach fewer or smaller files.",
                None,
            ),
            PortalError::Internal(error) => {
                tracing::error!(%error, "portal request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong",
                    "The message could not be shown just now. Try again in a few minutes.",
                    None,
                )
            }
        };
        let wait = match &self {
            PortalError::TooManyRequests { retry_after } => Some(*retry_after),
            _ => None,
        };
        let mut response = templates::error_page(status, title, detail, token, wait);
        if let Some(wait) = wait {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(wait.as_secs().max(1)),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests;
