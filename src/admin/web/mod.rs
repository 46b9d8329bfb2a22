//! The admin pages: sign-in, the review queue with its actions, the messages waiting in
//! the portal, and the audit trail.
//!
//! They listen on `admin.listen`, apart from the recipient portal, and reuse the portal's
//! security headers, origin check, cookies, sanitiser, downloads and TLS serving. Every
//! change is a `POST` reached from a confirmation page, with the session's CSRF token and
//! a same-origin check. An auditor can read every page and gets 403 on every action.

mod handlers;
mod session;
mod templates;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::{Accounts, LockoutPolicy};
use crate::audit::AuditLog;
use crate::config::Config;
use crate::policy::CertificateSource;
use crate::queue::store::Store;
use crate::store::HoldStore;
use session::AdminSessions;

/// Shared state of the admin pages.
pub struct AdminContext {
    config: Arc<Config>,
    accounts: Mutex<Accounts>,
    store: Mutex<Store>,
    audit: AuditLog,
    certificates: Arc<dyn CertificateSource>,
    hold_store: Option<HoldStore>,
    sessions: AdminSessions,
    lockout: LockoutPolicy,
    https: bool,
    tls: Option<TlsAcceptor>,
}

impl AdminContext {
    /// Opens the accounts, the queue and the audit trail of `config`. Without
    /// `hold_store`, the portal messages page reports that the store is unavailable. With
    /// `tls`, the pages speak HTTPS.
    ///
    /// # Errors
    ///
    /// A message when a database cannot be opened.
    pub fn new(
        config: Arc<Config>,
        certificates: Arc<dyn CertificateSource>,
        hold_store: Option<HoldStore>,
        tls: Option<TlsAcceptor>,
    ) -> Result<AdminContext, String> {
        let accounts = Accounts::open(&config).map_err(|error| error.to_string())?;
        let keys =
            crate::store::MasterKeys::load(&config.server.keys_dir, config.store.master_key_id)
                .map_err(|error| error.to_string())?;
        let store = Store::open(&config.database_path(), Arc::new(keys))
            .map_err(|error| error.to_string())?;
        let audit = AuditLog::open(&config).map_err(|error| error.to_string())?;
        Ok(AdminContext {
            https: tls.is_some() || config.admin.base_url.starts_with("https://"),
            sessions: AdminSessions::new(config.admin.session_lifetime.0),
            lockout: LockoutPolicy::from_config(&config),
            accounts: Mutex::new(accounts),
            store: Mutex::new(store),
            audit,
            certificates,
            hold_store,
            config,
            tls,
        })
    }

    /// Returns whether a form post with these `headers` may be accepted. It must come from
    /// the origin of `admin.base_url` when that is set, otherwise from `http(s)://` and the
    /// `Host` the browser used, which must then be a loopback address.
    fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        let expected = if self.config.admin.base_url.is_empty() {
            let Some(host) = headers
                .get(axum::http::header::HOST)
                .and_then(|host| host.to_str().ok())
            else {
                return false;
            };
            if !is_loopback_host(host) {
                return false;
            }
            let scheme = if self.https { "https" } else { "http" };
            format!("{scheme}://{host}")
        } else {
            crate::portal::origin_of(&self.config.admin.base_url).to_string()
        };
        crate::portal::handlers::same_origin(&expected, headers)
    }
}

/// Builds the admin routes, with the portal's security headers on every response.
pub fn router(context: Arc<AdminContext>) -> Router {
    let https = context.https;
    Router::new()
        .route("/", get(handlers::home))
        .route("/login", get(handlers::login_page).post(handlers::login))
        .route("/logout", post(handlers::logout))
        .route("/review", get(handlers::review_list))
        .route("/review/{id}", get(handlers::review_detail))
        .route(
            "/review/{id}/attachments/{index}",
            get(handlers::review_attachment),
        )
        .route(
            "/review/{id}/{action}",
            get(handlers::confirm_page).post(handlers::act),
        )
        .route("/audit", get(handlers::audit_page))
        .route("/portal", get(handlers::portal_list))
        .route(
            "/portal/{id}/{action}",
            get(handlers::portal_confirm).post(handlers::portal_act),
        )
        .route("/portal.css", get(crate::portal::handlers::style_sheet))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .layer(axum::middleware::map_response(move |response: Response| {
            crate::portal::add_security_headers(response, https)
        }))
        .with_state(context)
}

/// Serves the admin pages on `listener` until the task is dropped.
pub async fn serve_admin(listener: TcpListener, context: Arc<AdminContext>) {
    let app = router(Arc::clone(&context));
    match context.tls.clone() {
        None => {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "admin listener stopped");
            }
        }
        Some(acceptor) => crate::portal::serve_tls(listener, acceptor, app).await,
    }
}

/// Checks that the admin pages may listen on `address`: plain HTTP only on loopback.
///
/// # Errors
///
/// A message naming the key and value.
pub fn check_listen_address(address: SocketAddr, tls: bool) -> Result<(), String> {
    if tls || address.ip().is_loopback() {
        return Ok(());
    }
    Err(format!(
        "admin.listen = \"{address}\": plain HTTP is only allowed on a loopback address; set \
         admin.tls = true or listen on 127.0.0.1 behind a TLS reverse proxy"
    ))
}

fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests;
