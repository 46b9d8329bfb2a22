//! Handler tests over the admin router with a real queue database, accounts and audit
//! trail in a temporary folder.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use tower::ServiceExt;

use super::*;
use crate::admin::Role;
use crate::audit::AuditEvent;
use crate::envelope::{AcceptedMessage, ClientInfo, QueueId};
use crate::policy::{NoCertificates, Route};
use crate::store::HoldStore;

const HOST: &str = "127.0.0.1:8444";
const ORIGIN: &str = "http://127.0.0.1:8444";
const PASSWORD: &str = "a long test password";

/// A message with markup in every place an attacker controls.
const HOSTILE: &str = "From: \"<img src=x onerror=alert(1)>\" <ada@clinic.example.org>\r\n\
To: <friend@mailbox.example>\r\n\
Subject: <script>alert('subject')</script> BLUEBIRD\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=b1\r\n\
\r\n\
--b1\r\n\
Content-Type: text/html\r\n\
\r\n\
<p onclick=\"steal()\">hi</p><script>steal()</script><a href=\"javascript:steal()\">x</a>\
<img src=\"https://t.example/pixel.gif\">\r\n\
--b1\r\n\
Content-Type: text/plain\r\n\
Content-Disposition: attachment; filename=\"<svg onload=alert(2)>.txt\"\r\n\
\r\n\
data\r\n\
--b1--\r\n";

struct Harness {
    app: axum::Router,
    context: Arc<AdminContext>,
    _dir: tempfile::TempDir,
}

fn harness(four_eyes: bool) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::development();
    config.server.data_dir = dir.path().join("data");
    config.server.keys_dir = dir.path().join("keys");
    crate::store::ensure_master_key(&config.server.keys_dir).unwrap();
    let hold_store = HoldStore::open(&config).unwrap();
    config.admin.tls = false;
    config.admin.four_eyes = four_eyes;
    config.admin.max_failed_logins = 3;
    let context = Arc::new(
        AdminContext::new(
            Arc::new(config),
            Arc::new(NoCertificates),
            Some(hold_store),
            None,
        )
        .unwrap(),
    );
    {
        let accounts = context.accounts.lock().unwrap();
        accounts.add("alice", Role::Admin, PASSWORD).unwrap();
        accounts.add("audrey", Role::Auditor, PASSWORD).unwrap();
    }
    Harness {
        app: router(Arc::clone(&context)),
        context,
        _dir: dir,
    }
}

fn hold(harness: &Harness, sender: &str, body: &str) -> QueueId {
    let id = QueueId::generate();
    let message = AcceptedMessage {
        sender: sender.into(),
        recipients: vec!["friend@mailbox.example".into()],
        body: body.as_bytes().to_vec(),
        body_8bit: false,
        smtputf8: false,
        client: ClientInfo {
            addr: SocketAddr::from(([127, 0, 0, 1], 4000)),
            helo: "staff".into(),
            tls: None,
            auth_user: None,
        },
    };
    let mut store = harness.context.store.lock().unwrap();
    store
        .insert_messages(&[(id.clone(), &message, false)])
        .unwrap();
    store
        .set_routes(
            &id,
            &[(
                "friend@mailbox.example".into(),
                Route::Review,
                "sensitive (pattern:codename in subject (review)); held for review".into(),
            )],
            None,
        )
        .unwrap();
    id
}

async fn send(harness: &Harness, request: Request<Body>) -> Response<Body> {
    harness.app.clone().oneshot(request).await.unwrap()
}

async fn text(response: Response<Body>) -> String {
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn cookie_value(response: &Response<Body>, name: &str) -> Option<String> {
    response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find_map(|value| value.strip_prefix(&format!("{name}=")))
        .map(|rest| rest.split(';').next().unwrap_or_default().to_string())
}

fn hidden_csrf(html: &str) -> String {
    let start = html.find("name=\"csrf\" value=\"").unwrap() + 19;
    html[start..].split('"').next().unwrap().to_string()
}

async fn try_login(harness: &Harness, name: &str, password: &str) -> Response<Body> {
    try_login_with_code(harness, name, password, "").await
}

async fn try_login_with_code(
    harness: &Harness,
    name: &str,
    password: &str,
    code: &str,
) -> Response<Body> {
    let page = send(
        harness,
        Request::get("/login")
            .header(header::HOST, HOST)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    let cookie = cookie_value(&page, "sealgate-admin-login").unwrap();
    let csrf = hidden_csrf(&text(page).await);
    let body = format!(
        "csrf={csrf}&name={name}&password={}&code={code}",
        password.replace(' ', "+")
    );
    send(
        harness,
        Request::post("/login")
            .header(header::HOST, HOST)
            .header(header::ORIGIN, ORIGIN)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::COOKIE, format!("sealgate-admin-login={cookie}"))
            .body(Body::from(body))
            .unwrap(),
    )
    .await
}

/// Signs in and returns the session cookie and the session's CSRF token.
async fn sign_in(harness: &Harness, name: &str) -> (String, String) {
    let response = try_login(harness, name, PASSWORD).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let set_cookie = response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|value| value.to_str().unwrap().to_string())
        .find(|value| value.starts_with("sealgate-admin="))
        .unwrap();
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    assert!(set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    let session = cookie_value(&response, "sealgate-admin").unwrap();
    let page = get(harness, &session, "/review").await;
    let csrf = hidden_csrf(&text(page).await);
    (session, csrf)
}

async fn get(harness: &Harness, session: &str, path: &str) -> Response<Body> {
    send(
        harness,
        Request::get(path)
            .header(header::HOST, HOST)
            .header(header::COOKIE, format!("sealgate-admin={session}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await
}

async fn post(
    harness: &Harness,
    session: &str,
    path: &str,
    origin: &str,
    body: &str,
) -> Response<Body> {
    send(
        harness,
        Request::post(path)
            .header(header::HOST, HOST)
            .header(header::ORIGIN, origin)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::COOKIE, format!("sealgate-admin={session}"))
            .body(Body::from(body.to_string()))
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn pages_need_sign_in() {
    let harness = harness(false);
    let response = send(
        &harness,
        Request::get("/review")
            .header(header::HOST, HOST)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[header::LOCATION], "/login");
}

#[tokio::test]
async fn auditor_gets_403_on_actions() {
    let harness = harness(false);
    let id = hold(
        &harness,
        "ada@clinic.example.org",
        "Subject: plans\r\n\r\nBLUEBIRD\r\n",
    );
    let (session, csrf) = sign_in(&harness, "audrey").await;
    assert_eq!(
        get(&harness, &session, &format!("/review/{id}"))
            .await
            .status(),
        StatusCode::OK
    );
    for action in ["release", "release-not-sensitive", "reject", "delete"] {
        let path = format!("/review/{id}/{action}");
        assert_eq!(
            get(&harness, &session, &path).await.status(),
            StatusCode::FORBIDDEN,
            "{action}"
        );
        let response = post(
            &harness,
            &session,
            &path,
            ORIGIN,
            &format!("csrf={csrf}&reason=x"),
        )
        .await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{action}");
    }
    assert!(
        harness
            .context
            .store
            .lock()
            .unwrap()
            .is_in_review(&id)
            .unwrap()
    );
}

#[tokio::test]
async fn posts_without_csrf_or_from_other_origin_fail() {
    let harness = harness(false);
    let id = hold(
        &harness,
        "ada@clinic.example.org",
        "Subject: plans\r\n\r\nBLUEBIRD\r\n",
    );
    let (session, csrf) = sign_in(&harness, "alice").await;
    let path = format!("/review/{id}/delete");
    let missing = post(&harness, &session, &path, ORIGIN, "reason=x").await;
    assert_eq!(missing.status(), StatusCode::FORBIDDEN);
    let wrong = post(&harness, &session, &path, ORIGIN, "csrf=forged&reason=x").await;
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
    let foreign = post(
        &harness,
        &session,
        &path,
        "https://evil.example",
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(foreign.status(), StatusCode::FORBIDDEN);
    let mut cross_site = Request::post(&path)
        .header(header::HOST, HOST)
        .header("sec-fetch-site", "cross-site")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::COOKIE, format!("sealgate-admin={session}"))
        .body(Body::from(format!("csrf={csrf}")))
        .unwrap();
    cross_site.headers_mut().remove(header::ORIGIN);
    assert_eq!(
        send(&harness, cross_site).await.status(),
        StatusCode::FORBIDDEN
    );
    assert!(
        harness
            .context
            .store
            .lock()
            .unwrap()
            .is_in_review(&id)
            .unwrap()
    );

    let done = post(
        &harness,
        &session,
        &path,
        ORIGIN,
        &format!("csrf={csrf}&reason=spam"),
    )
    .await;
    assert_eq!(done.status(), StatusCode::OK);
    assert!(
        !harness
            .context
            .store
            .lock()
            .unwrap()
            .is_in_review(&id)
            .unwrap()
    );
}

#[tokio::test]
async fn login_locks_out_after_failures() {
    let harness = harness(false);
    for _ in 0..2 {
        let response = try_login(&harness, "alice", "guess").await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        try_login(&harness, "alice", "guess").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    let locked = try_login(&harness, "alice", PASSWORD).await;
    assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(text(locked).await.contains("locked"));
    let entries = harness
        .context
        .audit
        .search(
            &crate::audit::AuditFilter {
                event: Some("admin.login".into()),
                ..Default::default()
            },
            false,
            10,
            0,
        )
        .unwrap();
    let outcomes: Vec<&str> = entries.iter().map(|entry| entry.outcome.as_str()).collect();
    assert_eq!(outcomes, ["failed", "failed", "locked", "locked"]);
}

#[tokio::test]
async fn hostile_content_is_escaped() {
    let harness = harness(false);
    let id = hold(&harness, "<script>x</script>@clinic.example.org", HOSTILE);
    let (session, _) = sign_in(&harness, "alice").await;
    let list = text(get(&harness, &session, "/review").await).await;
    assert!(!list.contains("<script>"), "{list}");
    assert!(list.contains("&#60;script&#62;alert("), "{list}");
    let detail = get(&harness, &session, &format!("/review/{id}")).await;
    let csp = detail.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let detail = text(detail).await;
    assert!(!detail.contains("<script>"), "{detail}");
    assert!(!detail.contains("onclick"), "{detail}");
    assert!(!detail.contains("<img"), "{detail}");
    assert!(!detail.contains("<svg"), "{detail}");
    assert!(!detail.contains("javascript:"), "{detail}");
    assert!(!detail.contains("t.example"), "{detail}");
    let audit = text(get(&harness, &session, "/audit").await).await;
    assert!(audit.contains("review.viewed"), "{audit}");
    assert!(!audit.contains("BLUEBIRD"), "{audit}");
}

#[tokio::test]
async fn four_eyes_release_in_pages() {
    let harness = harness(true);
    let id = hold(
        &harness,
        "ada@clinic.example.org",
        "Subject: plans\r\n\r\nBLUEBIRD\r\n",
    );
    harness
        .context
        .accounts
        .lock()
        .unwrap()
        .add("bob", Role::Admin, PASSWORD)
        .unwrap();
    let path = format!("/review/{id}/release");
    let (alice, alice_csrf) = sign_in(&harness, "alice").await;
    let first = post(
        &harness,
        &alice,
        &path,
        ORIGIN,
        &format!("csrf={alice_csrf}"),
    )
    .await;
    assert!(text(first).await.contains("requested"));
    let again = post(
        &harness,
        &alice,
        &path,
        ORIGIN,
        &format!("csrf={alice_csrf}"),
    )
    .await;
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);
    assert!(
        harness
            .context
            .store
            .lock()
            .unwrap()
            .is_in_review(&id)
            .unwrap()
    );
    let (bob, bob_csrf) = sign_in(&harness, "bob").await;
    let approved = post(&harness, &bob, &path, ORIGIN, &format!("csrf={bob_csrf}")).await;
    assert_eq!(approved.status(), StatusCode::OK);
    assert!(
        !harness
            .context
            .store
            .lock()
            .unwrap()
            .is_in_review(&id)
            .unwrap()
    );
}

fn portal_hold(harness: &Harness, recipient: &str) -> crate::store::HeldId {
    let envelope = crate::store::HeldEnvelope {
        queue_id: QueueId::generate().to_string(),
        sender: "ada@clinic.example.org".into(),
        recipient: recipient.into(),
        subject: "results".into(),
    };
    let store = harness.context.hold_store.as_ref().unwrap();
    store
        .hold(b"Subject: results\r\n\r\nbody\r\n", &envelope)
        .unwrap()
        .id
}

#[tokio::test]
async fn portal_messages_show_state_and_change() {
    let harness = harness(false);
    let opened = portal_hold(&harness, "sam@mailbox.example");
    let revoked = portal_hold(&harness, "pat@mailbox.example");
    harness
        .context
        .audit
        .record(AuditEvent::Opened, Some(&opened), None, "")
        .unwrap();
    let (auditor, auditor_csrf) = sign_in(&harness, "audrey").await;
    let list = text(get(&harness, &auditor, "/portal").await).await;
    assert!(
        list.contains(&format!("<td>{opened}</td><td>opened</td>")),
        "{list}"
    );
    assert!(
        list.contains(&format!("<td>{revoked}</td><td>notified</td>")),
        "{list}"
    );
    let denied = post(
        &harness,
        &auditor,
        &format!("/portal/{revoked}/revoke"),
        ORIGIN,
        &format!("csrf={auditor_csrf}"),
    )
    .await;
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);

    let (admin, csrf) = sign_in(&harness, "alice").await;
    let done = post(
        &harness,
        &admin,
        &format!("/portal/{revoked}/revoke"),
        ORIGIN,
        &format!("csrf={csrf}&reason=sent+to+the+wrong+person"),
    )
    .await;
    assert_eq!(done.status(), StatusCode::OK);
    let store = harness.context.hold_store.as_ref().unwrap();
    let before = store
        .list()
        .unwrap()
        .into_iter()
        .find(|s| s.id == opened)
        .unwrap();
    let invalid = post(
        &harness,
        &admin,
        &format!("/portal/{opened}/extend"),
        ORIGIN,
        &format!("csrf={csrf}&days=900"),
    )
    .await;
    assert_eq!(invalid.status(), StatusCode::BAD_REQUEST);
    let extended = post(
        &harness,
        &admin,
        &format!("/portal/{opened}/extend"),
        ORIGIN,
        &format!("csrf={csrf}&days=7"),
    )
    .await;
    assert_eq!(extended.status(), StatusCode::OK);
    let after = store
        .list()
        .unwrap()
        .into_iter()
        .find(|s| s.id == opened)
        .unwrap();
    assert_eq!(after.expires_at, before.expires_at + 7 * 86_400_000);
    let list = text(get(&harness, &admin, "/portal").await).await;
    assert!(
        list.contains(&format!("<td>{revoked}</td><td>revoked</td>")),
        "{list}"
    );
    let events: Vec<String> = harness
        .context
        .audit
        .entries_for(&opened)
        .unwrap()
        .into_iter()
        .map(|entry| entry.event)
        .collect();
    assert!(events.contains(&"store.extended".to_string()), "{events:?}");
}

#[tokio::test]
async fn removed_account_loses_session() {
    let harness = harness(false);
    let (session, _) = sign_in(&harness, "audrey").await;
    assert_eq!(
        get(&harness, &session, "/audit").await.status(),
        StatusCode::OK
    );
    assert!(
        harness
            .context
            .accounts
            .lock()
            .unwrap()
            .remove("audrey")
            .unwrap()
    );
    let response = get(&harness, &session, "/audit").await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[header::LOCATION], "/login");
}

#[tokio::test]
async fn totp_code_needed_at_sign_in() {
    let harness = harness(false);
    let secret = harness
        .context
        .accounts
        .lock()
        .unwrap()
        .new_totp("alice")
        .unwrap()
        .unwrap();
    let missing = try_login(&harness, "alice", PASSWORD).await;
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    let wrong = try_login_with_code(&harness, "alice", PASSWORD, "000000").await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let seconds = u64::try_from(crate::queue::store::now_millis() / 1000).unwrap();
    let code = crate::admin::totp::code_at(&secret, seconds).unwrap();
    let signed_in = try_login_with_code(&harness, "alice", PASSWORD, &code).await;
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    assert_eq!(signed_in.headers()[header::LOCATION], "/review");
}
