//! Handler tests over the router with an in-memory hold store and the real spool.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use tokio::sync::Notify;
use tower::ServiceExt;

use super::*;
use crate::queue::store::Store;
use crate::store::{MasterKeys, test_master_keys};

const TOKEN: &str = "tok_A1";
const OTHER_TOKEN: &str = "tok_B2";
const RECIPIENT: &str = "pat@example.org";
const SENDER: &str = "ada@trust.nhs.uk";
const ORIGIN: &str = "http://portal.test";

const MESSAGE: &str = "From: Dr Ada <ada@trust.nhs.uk>\r\n\
To: Pat <pat@example.org>\r\n\
Subject: Your results\r\n\
Date: Thu, 3 Dec 2026 10:00:00 +0000\r\n\
Message-ID: <m1@trust.nhs.uk>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=b1\r\n\
\r\n\
--b1\r\n\
Content-Type: multipart/alternative; boundary=b2\r\n\
\r\n\
--b2\r\n\
Content-Type: text/plain\r\n\
\r\n\
Everything is normal.\r\n\
--b2\r\n\
Content-Type: text/html\r\n\
\r\n\
<p onclick=\"steal()\">Everything is <b>normal</b>.</p><script>steal()</script>\
<a href=\"javascript:steal()\">js</a><img src=\"https://t.example/pixel.gif\">\
<p style=\"position:fixed\">styled</p><style>p{color:red}</style>\r\n\
--b2--\r\n\
--b1\r\n\
Content-Type: text/html\r\n\
Content-Disposition: attachment; filename=\"=?UTF-8?Q?..=2F..=2Fr=C3=A9sultat=22=0D=0A.html?=\"\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
PGgxPmhpPC9oMT4=\r\n\
--b1--\r\n";

struct Harness {
    app: Router,
    store: Arc<MemoryHeldMessages>,
    database: PathBuf,
    keys: Arc<MasterKeys>,
    _dir: tempfile::TempDir,
}

fn settings(base_url: &str) -> PortalSettings {
    PortalSettings {
        base_url: base_url.to_string(),
        organisation: "Example Trust".into(),
        passcode_sender: "no-reply@trust.nhs.uk".into(),
        passcode_digits: 6,
        passcode_lifetime: Duration::from_secs(900),
        max_passcode_attempts: 3,
        session_lifetime: Duration::from_secs(900),
        send_limits: SendLimits {
            resend_interval: Duration::from_secs(60),
            max_per_window: 5,
            window: Duration::from_secs(3600),
            lockout_cooldown: Duration::from_secs(900),
        },
        max_reply_size: 1 << 20,
        tls: false,
    }
}

fn harness_with(base_url: &str) -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let database = dir.path().join("queue.db");
    let keys = test_master_keys(&dir.path().join("keys"));
    let spool = Spool::start(&database, Arc::clone(&keys), Arc::new(Notify::new())).expect("spool");
    let store = Arc::new(MemoryHeldMessages::default());
    for (token, id) in [(TOKEN, "held-1"), (OTHER_TOKEN, "held-2")] {
        store.insert(
            token,
            HeldLink {
                id: id.into(),
                recipient: RECIPIENT.into(),
            },
            HeldContent {
                sender: SENDER.into(),
                raw: MESSAGE.as_bytes().to_vec(),
            },
        );
    }
    store.set_status("tok_expired", LinkStatus::Expired);
    store.set_status("tok_revoked", LinkStatus::Revoked);
    let context = PortalContext::new(settings(base_url), store.clone(), spool, None);
    Harness {
        app: router(Arc::new(context)),
        store,
        database,
        keys,
        _dir: dir,
    }
}

fn harness() -> Harness {
    harness_with(ORIGIN)
}

/// A browser-like client: keeps cookies and sends the portal's `Origin` on POSTs.
struct Client<'a> {
    harness: &'a Harness,
    cookies: Vec<(String, String)>,
}

struct Page {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Page {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Returns the value of the first hidden `csrf` field.
    fn csrf(&self) -> String {
        let text = self.text();
        let start = text.find("name=\"csrf\" value=\"").expect("csrf field") + 19;
        text[start..start + 43].to_string()
    }

    fn header(&self, name: header::HeaderName) -> String {
        self.headers
            .get(name)
            .map(|value| value.to_str().expect("ASCII header").to_string())
            .unwrap_or_default()
    }
}

impl<'a> Client<'a> {
    fn new(harness: &'a Harness) -> Client<'a> {
        Client {
            harness,
            cookies: Vec::new(),
        }
    }

    async fn send(&mut self, request: Request<Body>) -> Page {
        let response: Response<Body> = self
            .harness
            .app
            .clone()
            .oneshot(request)
            .await
            .expect("router is infallible");
        for value in response.headers().get_all(header::SET_COOKIE) {
            let text = value.to_str().expect("ASCII cookie");
            let pair = text.split(';').next().unwrap_or_default();
            let (name, value) = pair.split_once('=').expect("name=value");
            self.cookies.retain(|(known, _)| known != name);
            if !text.contains("Max-Age=0") {
                self.cookies.push((name.to_string(), value.to_string()));
            }
        }
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body")
            .to_vec();
        Page {
            status,
            headers,
            body,
        }
    }

    fn request(&self, method: &str, path: &str) -> axum::http::request::Builder {
        let origin = (method == "POST").then_some(ORIGIN);
        self.request_from(method, path, origin)
    }

    fn request_from(
        &self,
        method: &str,
        path: &str,
        origin: Option<&str>,
    ) -> axum::http::request::Builder {
        let cookie = self
            .cookies
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut builder = Request::builder().method(method).uri(path);
        if !cookie.is_empty() {
            builder = builder.header(header::COOKIE, cookie);
        }
        if let Some(origin) = origin {
            builder = builder.header(header::ORIGIN, origin);
        }
        builder
    }

    async fn get(&mut self, path: &str) -> Page {
        let request = self.request("GET", path).body(Body::empty()).unwrap();
        self.send(request).await
    }

    async fn post(&mut self, path: &str, form: &str) -> Page {
        let request = self
            .request("POST", path)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form.to_string()))
            .unwrap();
        self.send(request).await
    }

    async fn reply(&mut self, csrf: Option<&str>, text: &str) -> Page {
        let mut body = String::new();
        if let Some(csrf) = csrf {
            body.push_str(&format!(
                "--X\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{csrf}\r\n"
            ));
        }
        body.push_str(&format!(
            "--X\r\nContent-Disposition: form-data; name=\"text\"\r\n\r\n{text}\r\n\
             --X\r\nContent-Disposition: form-data; name=\"attachment\"; filename=\"../note.txt\"\r\n\
             Content-Type: text/plain\r\n\r\nsee attached\r\n--X--\r\n"
        ));
        let request = self
            .request("POST", &format!("/m/{TOKEN}/reply"))
            .header(header::CONTENT_TYPE, "multipart/form-data; boundary=X")
            .body(Body::from(body))
            .unwrap();
        self.send(request).await
    }

    /// Opens the link, requests a passcode and returns the passcode page.
    async fn request_passcode(&mut self) -> Page {
        let link = self.get(&format!("/m/{TOKEN}")).await;
        assert_eq!(link.status, StatusCode::OK);
        let form = format!("csrf={}", link.csrf());
        self.post(&format!("/m/{TOKEN}/passcode"), &form).await
    }

    async fn enter(&mut self, csrf: &str, passcode: &str) -> Page {
        let form = format!("csrf={csrf}&passcode={passcode}");
        self.post(&format!("/m/{TOKEN}/verify"), &form).await
    }

    /// Goes through the passcode steps and returns the message page.
    async fn sign_in(&mut self) -> Page {
        let page = self.request_passcode().await;
        let code = last_passcode(self.harness);
        let signed_in = self.enter(&page.csrf(), &code).await;
        assert_eq!(signed_in.status, StatusCode::SEE_OTHER);
        self.get(&format!("/m/{TOKEN}/message")).await
    }
}

/// Messages in the queue, as (sender, recipients, body).
fn queued(harness: &Harness) -> Vec<(String, Vec<String>, String)> {
    let store = Store::open(&harness.database, Arc::clone(&harness.keys)).expect("queue database");
    let mut messages = Vec::new();
    for summary in store.list().expect("list") {
        let body = store.body(&summary.id).expect("body").expect("stored");
        let recipients = store
            .recipients(&summary.id)
            .expect("recipients")
            .into_iter()
            .map(|row| row.address)
            .collect();
        messages.push((
            summary.sender,
            recipients,
            String::from_utf8_lossy(&body).into_owned(),
        ));
    }
    messages
}

fn last_passcode(harness: &Harness) -> String {
    let pattern = regex::Regex::new(r"Your passcode is (\d{6})").unwrap();
    queued(harness)
        .iter()
        .rev()
        .find_map(|(_, _, body)| pattern.captures(body).map(|c| c[1].to_string()))
        .expect("a passcode mail in the queue")
}

#[tokio::test]
async fn get_link_sends_nothing_and_changes_nothing() {
    let harness = harness();
    let mut client = Client::new(&harness);
    for _ in 0..3 {
        let page = client.get(&format!("/m/{TOKEN}")).await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(page.text().contains("method=\"post\""), "{}", page.text());
    }
    for action in ["passcode", "verify", "reply", "sign-out"] {
        let page = client.get(&format!("/m/{TOKEN}/{action}")).await;
        assert_eq!(page.status, StatusCode::METHOD_NOT_ALLOWED, "{action}");
    }
    assert!(queued(&harness).is_empty());
    assert!(harness.store.passcode_state("held-1").unwrap().is_none());
    assert!(harness.store.audit_events().is_empty());
}

#[tokio::test]
async fn expired_passcode_is_rejected() {
    let harness = harness();
    let mut client = Client::new(&harness);
    let page = client.request_passcode().await;
    let code = last_passcode(&harness);
    let record = harness.store.passcode_state("held-1").unwrap().unwrap();
    let sixteen_minutes_ago = record.created_at - 16 * 60 * 1000;
    harness
        .store
        .set_passcode("held-1", &record.hash, sixteen_minutes_ago);

    let late = client.enter(&page.csrf(), &code).await;
    assert_eq!(late.status, StatusCode::OK);
    assert!(
        late.text().contains("This passcode has expired"),
        "{}",
        late.text()
    );
    assert!(late.header(header::SET_COOKIE).is_empty());
    assert!(harness.store.passcode_state("held-1").unwrap().is_none());
}

#[tokio::test]
async fn oversized_reply_is_rejected() {
    let harness = harness();
    let mut client = Client::new(&harness);
    let message = client.sign_in().await;
    let before = queued(&harness).len();
    let page = client
        .reply(Some(&message.csrf()), &"x".repeat(2 << 20))
        .await;
    assert_eq!(page.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(queued(&harness).len(), before);
}

#[tokio::test]
async fn passcode_flow_signs_in_and_shows_message() {
    let harness = harness();
    let mut client = Client::new(&harness);
    let page = client.request_passcode().await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text().contains("name=\"passcode\""));

    let mails = queued(&harness);
    assert_eq!(mails.len(), 1);
    let (sender, recipients, body) = &mails[0];
    assert_eq!(sender, "no-reply@trust.nhs.uk");
    assert_eq!(recipients, &[RECIPIENT.to_string()]);
    assert!(
        !body.contains("normal"),
        "passcode mail leaks content: {body}"
    );
    assert!(
        !body.contains("Your results"),
        "passcode mail leaks subject: {body}"
    );
    let stored = harness
        .store
        .passcode_state("held-1")
        .unwrap()
        .expect("set");
    assert!(!stored.hash.is_empty());
    assert_ne!(stored.hash, last_passcode(&harness).as_bytes());

    let code = last_passcode(&harness);
    let signed_in = client.enter(&page.csrf(), &code).await;
    assert_eq!(signed_in.status, StatusCode::SEE_OTHER);
    assert_eq!(
        signed_in.header(header::LOCATION),
        format!("/m/{TOKEN}/message")
    );
    let cookie = signed_in.header(header::SET_COOKIE);
    assert!(cookie.starts_with("sealgate-session="), "{cookie}");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(harness.store.passcode_state("held-1").unwrap().is_none());

    let message = client.get(&format!("/m/{TOKEN}/message")).await;
    assert_eq!(message.status, StatusCode::OK);
    let text = message.text();
    assert!(text.contains("<h1>Your results</h1>"), "{text}");
    assert!(
        text.contains("Dr Ada &#60;ada@trust.nhs.uk&#62;")
            || text.contains("Dr Ada &lt;ada@trust.nhs.uk&gt;"),
        "{text}"
    );
    assert!(text.contains("<b>normal</b>"), "{text}");
    let events: Vec<AuditEvent> = harness
        .store
        .audit_events()
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    assert_eq!(events, [AuditEvent::PasscodeSent, AuditEvent::Opened]);

    let reused = client.enter(&page.csrf(), &code).await;
    assert!(!reused.text().contains("sealgate-session"));
    assert!(
        reused.header(header::SET_COOKIE).is_empty(),
        "passcode worked twice"
    );
}

#[tokio::test]
async fn message_page_is_sanitised() {
    let harness = harness();
    let mut client = Client::new(&harness);
    let text = client.sign_in().await.text();
    for banned in [
        "<script",
        "onclick",
        "javascript:",
        "<img",
        "t.example",
        "style=",
    ] {
        assert!(!text.contains(banned), "{banned} in {text}");
    }
    assert!(!text.contains("<style"), "{text}");
}

#[tokio::test]
async fn wrong_passcodes_lock_the_passcode() {
    let harness = harness();
    let mut client = Client::new(&harness);
    let page = client.request_passcode().await;
    let code = last_passcode(&harness);
    let wrong = if code == "000000" { "111111" } else { "000000" };

    let first = client.enter(&page.csrf(), wrong).await;
    assert_eq!(first.status, StatusCode::BAD_REQUEST);
    assert!(first.text().contains("2 more times"), "{}", first.text());
    let second = client.enter(&page.csrf(), wrong).await;
    assert_eq!(second.status, StatusCode::BAD_REQUEST);
    let third = client.enter(&page.csrf(), wrong).await;
    assert_eq!(third.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(!third.header(header::RETRY_AFTER).is_empty());

    let correct_too_late = client.enter(&page.csrf(), &code).await;
    assert!(correct_too_late.header(header::SET_COOKIE).is_empty());
    assert_ne!(correct_too_late.status, StatusCode::SEE_OTHER);
    let new_code = client
        .post(
            &format!("/m/{TOKEN}/passcode"),
            &format!("csrf={}", page.csrf()),
        )
        .await;
    assert_eq!(new_code.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(queued(&harness).len(), 1);
    let failures = harness
        .store
        .audit_events()
        .iter()
        .filter(|(_, event)| *event == AuditEvent::PasscodeFailed)
        .count();
    assert_eq!(failures, 3);
}

#[tokio::test]
async fn passcode_resend_is_rate_limited() {
    let harness = harness();
    let mut client = Client::new(&harness);
    let page = client.request_passcode().await;
    let again = client
        .post(
            &format!("/m/{TOKEN}/passcode"),
            &format!("csrf={}", page.csrf()),
        )
        .await;
    assert_eq!(again.status, StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = again.header(header::RETRY_AFTER).parse().expect("seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(queued(&harness).len(), 1);
}

#[tokio::test]
async fn missing_or_wrong_csrf_is_forbidden() {
    let harness = harness();
    let mut client = Client::new(&harness);
    let link = client.get(&format!("/m/{TOKEN}")).await;
    let path = format!("/m/{TOKEN}/passcode");

    assert_eq!(client.post(&path, "").await.status, StatusCode::FORBIDDEN);
    let wrong = format!("csrf={}", "x".repeat(43));
    assert_eq!(
        client.post(&path, &wrong).await.status,
        StatusCode::FORBIDDEN
    );

    let foreign = client
        .request_from("POST", &path, Some("https://attacker.example"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("csrf={}", link.csrf())))
        .unwrap();
    assert_eq!(client.send(foreign).await.status, StatusCode::FORBIDDEN);
    let doubled = client
        .request("POST", &path)
        .header(header::ORIGIN, "https://attacker.example")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("csrf={}", link.csrf())))
        .unwrap();
    assert_eq!(client.send(doubled).await.status, StatusCode::FORBIDDEN);
    let cross_site = client
        .request_from("POST", &path, None)
        .header("sec-fetch-site", "cross-site")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("csrf={}", link.csrf())))
        .unwrap();
    assert_eq!(client.send(cross_site).await.status, StatusCode::FORBIDDEN);
    let null_origin = client
        .request_from("POST", &path, Some("null"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("csrf={}", link.csrf())))
        .unwrap();
    assert_eq!(client.send(null_origin).await.status, StatusCode::FORBIDDEN);

    let mut no_cookie = Client::new(&harness);
    let form = format!("csrf={}", link.csrf());
    assert_eq!(
        no_cookie.post(&path, &form).await.status,
        StatusCode::FORBIDDEN
    );
    assert!(queued(&harness).is_empty());

    client.sign_in().await;
    let before = queued(&harness).len();
    assert_eq!(client.reply(None, "hi").await.status, StatusCode::FORBIDDEN);
    assert_eq!(
        client.reply(Some("wrong"), "hi").await.status,
        StatusCode::FORBIDDEN
    );
    let sign_out = client
        .post(&format!("/m/{TOKEN}/sign-out"), "csrf=wrong")
        .await;
    assert_eq!(sign_out.status, StatusCode::FORBIDDEN);
    assert_eq!(queued(&harness).len(), before);
}

#[tokio::test]
async fn null_origin_passes_only_with_same_origin_fetch() {
    // Chromium sends `Origin: null` on form posts from pages with no-referrer.
    let harness = harness();
    let mut client = Client::new(&harness);
    let link = client.get(&format!("/m/{TOKEN}")).await;
    let request = client
        .request_from("POST", &format!("/m/{TOKEN}/passcode"), Some("null"))
        .header("sec-fetch-site", "same-origin")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("csrf={}", link.csrf())))
        .unwrap();
    assert_eq!(client.send(request).await.status, StatusCode::OK);
    assert_eq!(queued(&harness).len(), 1);
}

#[tokio::test]
async fn security_headers_on_every_response() {
    let harness = harness();
    let mut client = Client::new(&harness);
    let pages = [
        client.get(&format!("/m/{TOKEN}")).await,
        client.get("/m/unknown").await,
        client.get("/portal.css").await,
        client.post(&format!("/m/{TOKEN}/passcode"), "").await,
    ];
    for page in pages {
        assert_eq!(
            page.header(header::CONTENT_SECURITY_POLICY),
            CONTENT_SECURITY_POLICY
        );
        assert_eq!(page.header(header::X_FRAME_OPTIONS), "DENY");
        assert_eq!(page.header(header::REFERRER_POLICY), "no-referrer");
        assert_eq!(page.header(header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        assert_eq!(page.header(header::CACHE_CONTROL), "no-store");
        assert!(page.header(header::STRICT_TRANSPORT_SECURITY).is_empty());
    }

    let https = harness_with("https://portal.test");
    let page = Client::new(&https).get(&format!("/m/{TOKEN}")).await;
    assert_eq!(
        page.header(header::STRICT_TRANSPORT_SECURITY),
        "max-age=31536000"
    );
    let cookie = page.header(header::SET_COOKIE);
    assert!(cookie.starts_with("__Host-sealgate-csrf="), "{cookie}");
    assert!(cookie.contains("; Secure"), "{cookie}");
}

#[tokio::test]
async fn unknown_expired_and_revoked_links() {
    let harness = harness();
    let mut client = Client::new(&harness);
    let cases = [
        (
            "/m/nothing",
            StatusCode::NOT_FOUND,
            "This link is not valid",
        ),
        (
            "/m/bad%2F..%2Ftoken",
            StatusCode::NOT_FOUND,
            "This link is not valid",
        ),
        (
            "/elsewhere",
            StatusCode::NOT_FOUND,
            "This link is not valid",
        ),
        (
            "/m/tok_expired",
            StatusCode::GONE,
            "This message has expired",
        ),
        (
            "/m/tok_revoked",
            StatusCode::GONE,
            "This message has been withdrawn",
        ),
        (
            "/m/tok_revoked/message",
            StatusCode::GONE,
            "This message has been withdrawn",
        ),
    ];
    for (path, status, heading) in cases {
        let page = client.get(path).await;
        assert_eq!(page.status, status, "{path}");
        assert!(
            page.text().contains(&format!("<h1>{heading}</h1>")),
            "{path}: {}",
            page.text()
        );
    }
    let posted = client.post("/m/tok_expired/passcode", "").await;
    assert_eq!(posted.status, StatusCode::GONE);
}

#[tokio::test]
async fn message_pages_need_matching_session() {
    let harness = harness();
    let mut client = Client::new(&harness);
    let anonymous = client.get(&format!("/m/{TOKEN}/message")).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let attachment = client.get(&format!("/m/{TOKEN}/attachments/0")).await;
    assert_eq!(attachment.status, StatusCode::UNAUTHORIZED);

    client.sign_in().await;
    let other = client.get(&format!("/m/{OTHER_TOKEN}/message")).await;
    assert_eq!(other.status, StatusCode::UNAUTHORIZED);

    harness.store.set_status(TOKEN, LinkStatus::Revoked);
    let revoked = client.get(&format!("/m/{TOKEN}/message")).await;
    assert_eq!(revoked.status, StatusCode::GONE);
}

#[tokio::test]
async fn attachment_download_is_safe() {
    let harness = harness();
    let mut client = Client::new(&harness);
    let message = client.sign_in().await;
    assert!(
        message.text().contains("/attachments/0"),
        "{}",
        message.text()
    );

    let file = client.get(&format!("/m/{TOKEN}/attachments/0")).await;
    assert_eq!(file.status, StatusCode::OK);
    assert_eq!(file.body, b"<h1>hi</h1>");
    assert_eq!(
        file.header(header::CONTENT_TYPE),
        "application/octet-stream"
    );
    assert_eq!(file.header(header::X_CONTENT_TYPE_OPTIONS), "nosniff");
    assert_eq!(
        file.header(header::CONTENT_DISPOSITION),
        "attachment; filename=\"r_sultat.html\"; filename*=UTF-8''r%C3%A9sultat.html"
    );
    let missing = client.get(&format!("/m/{TOKEN}/attachments/7")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    let original = client.get(&format!("/m/{TOKEN}/original.eml")).await;
    assert_eq!(original.body, MESSAGE.as_bytes());
    assert_eq!(
        original.header(header::CONTENT_DISPOSITION),
        "attachment; filename=\"message.eml\""
    );
    let downloads = harness
        .store
        .audit_events()
        .iter()
        .filter(|(_, event)| *event == AuditEvent::AttachmentDownloaded)
        .count();
    assert_eq!(downloads, 2);
}

#[tokio::test]
async fn reply_goes_to_original_sender() {
    let harness = harness();
    let mut client = Client::new(&harness);
    let message = client.sign_in().await;
    let page = client.reply(Some(&message.csrf()), "Thank you").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text());

    let mails = queued(&harness);
    let (sender, recipients, body) = mails.last().expect("reply queued");
    assert_eq!(sender, RECIPIENT);
    assert_eq!(recipients, &[SENDER.to_string()]);
    assert!(body.contains("In-Reply-To: <m1@trust.nhs.uk>"), "{body}");
    assert!(body.contains("References: <m1@trust.nhs.uk>"), "{body}");
    assert!(body.contains("Thank you"), "{body}");
    assert!(
        body.contains("note.txt") && !body.contains("../note.txt"),
        "{body}"
    );
    assert!(
        harness
            .store
            .audit_events()
            .iter()
            .any(|(_, e)| *e == AuditEvent::ReplySent)
    );

    let sign_out = client
        .post(
            &format!("/m/{TOKEN}/sign-out"),
            &format!("csrf={}", message.csrf()),
        )
        .await;
    assert_eq!(sign_out.status, StatusCode::OK);
    let after = client.get(&format!("/m/{TOKEN}/message")).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
}

#[test]
fn plain_http_only_on_loopback() {
    let public: std::net::SocketAddr = "0.0.0.0:8443".parse().unwrap();
    let loopback: std::net::SocketAddr = "127.0.0.1:8443".parse().unwrap();
    assert!(check_listen_address(loopback, false, false).is_ok());
    assert!(check_listen_address(public, true, false).is_ok());
    assert!(check_listen_address(public, false, true).is_ok());
    let error = check_listen_address(public, false, false).unwrap_err();
    assert!(error.contains("dangerous_allow_plain_http"), "{error}");
}

#[test]
fn origin_of_base_url() {
    assert_eq!(
        settings("https://a.example:8443/portal").origin(),
        "https://a.example:8443"
    );
    assert_eq!(
        settings("http://127.0.0.1:8080").origin(),
        "http://127.0.0.1:8080"
    );
}
