//! Admin page templates (askama, auto-escaped HTML) under `templates/admin/`.

use askama::Template;

use crate::portal::message::MessageView;

#[derive(Template)]
#[template(path = "admin/login.html")]
pub struct LoginPage {
    pub user: Option<String>,
    pub csrf: String,
    pub problem: Option<String>,
}

/// Filter values as typed, for the form.
#[derive(Default, serde::Deserialize)]
#[serde(default)]
pub struct ReviewQuery {
    pub sender: String,
    pub recipient: String,
    pub since: String,
    pub until: String,
    pub rule: String,
    pub page: u64,
}

pub struct ReviewRow {
    pub id: String,
    pub received: String,
    pub sender: String,
    pub recipients: String,
    pub subject: String,
    pub size: u64,
    pub reason: String,
}

#[derive(Template)]
#[template(path = "admin/review_list.html")]
pub struct ReviewListPage {
    pub user: Option<String>,
    pub csrf: String,
    pub filter: ReviewQuery,
    pub problem: Option<String>,
    pub rows: Vec<ReviewRow>,
    pub total: u64,
    pub page: u64,
    pub pages: u64,
    pub previous: Option<String>,
    pub next: Option<String>,
}

#[derive(Template)]
#[template(path = "admin/review_detail.html")]
pub struct ReviewDetailPage {
    pub user: Option<String>,
    pub csrf: String,
    pub id: String,
    pub sender: String,
    pub received: String,
    pub message: MessageView,
    pub recipients: Vec<String>,
    pub explanation: Vec<String>,
    pub pending: Option<String>,
}

#[derive(Template)]
#[template(path = "admin/confirm.html")]
pub struct ConfirmPage {
    pub user: Option<String>,
    pub csrf: String,
    pub subject_line: String,
    pub form_action: String,
    pub back: String,
    pub title: &'static str,
    pub explanation: &'static str,
    pub reason_required: bool,
    pub ask_days: bool,
}

pub struct PortalRow {
    pub id: String,
    pub state: &'static str,
    pub created: String,
    pub expires: String,
    pub active: bool,
}

#[derive(Template)]
#[template(path = "admin/portal.html")]
pub struct PortalPage {
    pub user: Option<String>,
    pub csrf: String,
    pub rows: Vec<PortalRow>,
    pub total: usize,
    pub previous: Option<String>,
    pub next: Option<String>,
}

#[derive(Template)]
#[template(path = "admin/done.html")]
pub struct DonePage {
    pub user: Option<String>,
    pub csrf: String,
    pub title: String,
    pub detail: String,
}

/// Filter values as typed, for the form.
#[derive(Default, serde::Deserialize)]
#[serde(default)]
pub struct AuditQuery {
    pub event: String,
    pub actor: String,
    pub queue_id: String,
    pub since: String,
    pub until: String,
    pub page: u64,
}

pub struct AuditRow {
    pub id: i64,
    pub time: String,
    pub event: String,
    pub actor: String,
    pub queue_id: String,
    pub held_id: String,
    pub outcome: String,
    pub detail: String,
}

#[derive(Template)]
#[template(path = "admin/audit.html")]
pub struct AuditPage {
    pub user: Option<String>,
    pub csrf: String,
    pub filter: AuditQuery,
    pub problem: Option<String>,
    pub entries: Vec<AuditRow>,
    pub previous: Option<String>,
    pub next: Option<String>,
}

#[derive(Template)]
#[template(path = "admin/error.html")]
pub struct ErrorPage {
    pub user: Option<String>,
    pub csrf: String,
    pub title: &'static str,
    pub detail: String,
}
