//! The recipient portal in a real browser: headless Chromium driven through chromedriver's
//! W3C WebDriver API, against the portal on plain HTTP on loopback with the real hold
//! store, audit log and spool. Needs Debian's `chromium` and `chromium-driver`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use sealgate::audit::AuditLog;
use sealgate::config::Config;
use sealgate::portal::{PortalContext, PortalSettings, SendLimits, StoreBackend, serve_portal};
use sealgate::queue::Spool;
use sealgate::queue::store::Store;
use sealgate::store::{self as hold, HeldEnvelope, HoldStore, MasterKeys};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

const SENDER: &str = "ada@trust.nhs.uk";
const RECIPIENT: &str = "pat@example.org";
const WEB_ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process. On drop, even after a failed assertion, it ends the browser
/// session (killing chromedriver alone would leave Chromium running) and then chromedriver.
struct Driver {
    child: Child,
    port: u16,
    session: Option<String>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(session) = &self.session
            && let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port))
        {
            use std::io::{Read, Write};
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let request = format!(
                "DELETE /session/{session} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n",
                self.port
            );
            let _ = stream.write_all(request.as_bytes());
            let _ = stream.read(&mut [0u8; 1024]);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One WebDriver session over plain HTTP/1.1 to chromedriver on loopback.
struct Browser {
    port: u16,
    session: String,
}

async fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> Value {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to chromedriver");
    let payload = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{payload}",
        payload.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();

    // chromedriver may keep the connection open, so read by Content-Length.
    let mut response = Vec::new();
    let (head, body_start) = loop {
        read_some(&mut stream, &mut response).await;
        if let Some(at) = response.windows(4).position(|window| window == b"\r\n\r\n") {
            break (
                String::from_utf8_lossy(&response[..at]).to_ascii_lowercase(),
                at + 4,
            );
        }
    };
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map(|value| value.trim().parse().expect("Content-Length"))
        .unwrap_or_else(|| panic!("no Content-Length in {head}"));
    while response.len() < body_start + length {
        read_some(&mut stream, &mut response).await;
    }
    let body = &response[body_start..body_start + length];
    serde_json::from_slice(body)
        .unwrap_or_else(|error| panic!("{error}: {}", String::from_utf8_lossy(body)))
}

/// Appends the next bytes chromedriver sent, failing when it closed the connection.
async fn read_some(stream: &mut TcpStream, response: &mut Vec<u8>) {
    let mut buffer = [0u8; 8192];
    let read = stream
        .read(&mut buffer)
        .await
        .expect("read from chromedriver");
    assert!(read > 0, "chromedriver closed the connection early");
    response.extend_from_slice(&buffer[..read]);
}

impl Browser {
    async fn command(&self, method: &str, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let body = (method == "POST").then_some(&body);
        let response = http(self.port, method, &path, body).await;
        if let Some(error) = response["value"]["error"].as_str() {
            panic!(
                "WebDriver {method} {path}: {error}: {}",
                response["value"]["message"]
            );
        }
        response["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.command("POST", "/url", json!({ "url": url })).await;
    }

    async fn find(&self, css: &str) -> String {
        let found = self
            .command(
                "POST",
                "/element",
                json!({ "using": "css selector", "value": css }),
            )
            .await;
        found[WEB_ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element for {css}: {found}"))
            .to_string()
    }

    async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.command("POST", &format!("/element/{element}/click"), json!({}))
            .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.command(
            "POST",
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    /// Waits until the page's `h1` reads `expected`, since a click may return before the
    /// next page has loaded.
    async fn wait_for_heading(&self, expected: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let found = self
                .command_result(
                    "POST",
                    "/element",
                    json!({ "using": "css selector", "value": "h1" }),
                )
                .await;
            if let Some(element) = found[WEB_ELEMENT].as_str() {
                let text = self
                    .command_result("GET", &format!("/element/{element}/text"), json!({}))
                    .await;
                if text.as_str() == Some(expected) {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "heading {expected:?} not shown; page: {}",
                    self.source().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Like `command`, but returns an error value instead of failing.
    async fn command_result(&self, method: &str, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let body = (method == "POST").then_some(&body);
        http(self.port, method, &path, body).await["value"].clone()
    }

    async fn source(&self) -> String {
        let value = self.command("GET", "/source", json!({})).await;
        value.as_str().unwrap_or_default().to_string()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_browser(profile: &Path, downloads: &Path) -> (Driver, Browser) {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver not found: install Debian's chromium and chromium-driver");
    let mut driver = Driver {
        child,
        port,
        session: None,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = TcpStream::connect(("127.0.0.1", port)).await.is_ok()
            && http(port, "GET", "/status", None).await["value"]["ready"] == json!(true);
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let capabilities = json!({ "capabilities": { "alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                format!("--user-data-dir={}", profile.display()),
            ],
            "prefs": {
                "download.default_directory": downloads.display().to_string(),
                "download.prompt_for_download": false,
                "plugins.always_open_pdf_externally": true,
            },
        },
    }}});
    let created = http(driver.port, "POST", "/session", Some(&capabilities)).await;
    let session = created["value"]["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("no WebDriver session: {created}"))
        .to_string();
    driver.session = Some(session.clone());
    (driver, Browser { port, session })
}

fn test_message(attachment: &[u8]) -> Vec<u8> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(attachment);
    format!(
        "From: Dr Ada <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: Your blood test results\r\n\
         Date: Thu, 3 Dec 2026 10:00:00 +0000\r\nMessage-ID: <results-1@trust.nhs.uk>\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n\
         --b1\r\nContent-Type: text/plain\r\n\r\nYour results are within the normal range.\r\n\
         --b1\r\nContent-Type: application/pdf\r\n\
         Content-Disposition: attachment; filename=\"results.pdf\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{encoded}\r\n--b1--\r\n"
    )
    .into_bytes()
}

/// Messages in the queue, as (sender, recipients, body).
fn queued(database: &Path, keys: &Arc<MasterKeys>) -> Vec<(String, Vec<String>, String)> {
    let store = Store::open(database, Arc::clone(keys)).expect("queue database");
    let mut messages = Vec::new();
    for summary in store.list().expect("list") {
        let body = store.body(&summary.id).unwrap().expect("stored body");
        let recipients = store
            .recipients(&summary.id)
            .unwrap()
            .into_iter()
            .map(|row| row.address)
            .collect();
        messages.push((
            summary.sender,
            recipients,
            String::from_utf8_lossy(&body).into(),
        ));
    }
    messages
}

async fn wait_for_file(path: &Path) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(bytes) = std::fs::read(path)
            && !bytes.is_empty()
        {
            return bytes;
        }
        assert!(
            Instant::now() < deadline,
            "{} was not downloaded",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_collects_message_and_replies() {
    let dir = tempfile::tempdir().unwrap();
    let downloads: PathBuf = dir.path().join("downloads");
    let profile = dir.path().join("profile");
    std::fs::create_dir_all(&downloads).unwrap();

    let mut config = Config::development();
    config.server.data_dir = dir.path().join("data");
    config.server.keys_dir = dir.path().join("keys");
    hold::ensure_master_key(&config.server.keys_dir).expect("master key");
    let hold_store = HoldStore::open(&config).expect("hold store");
    let audit = AuditLog::open(&config).expect("audit log");
    let keys = Arc::new(MasterKeys::load(&config.server.keys_dir, None).expect("master keys"));
    let spool = Spool::start(
        &config.database_path(),
        Arc::clone(&keys),
        Arc::new(Notify::new()),
    )
    .expect("spool");

    let attachment: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let envelope = HeldEnvelope {
        queue_id: "0123456789ABCDEF".into(),
        sender: SENDER.into(),
        recipient: RECIPIENT.into(),
        subject: "Your blood test results".into(),
    };
    let held = hold_store
        .hold(&test_message(&attachment), &envelope)
        .expect("hold");

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    let settings = PortalSettings {
        base_url: base_url.clone(),
        organisation: "Example Trust".into(),
        passcode_sender: "no-reply@trust.nhs.uk".into(),
        passcode_digits: 6,
        passcode_lifetime: Duration::from_secs(900),
        max_passcode_attempts: 5,
        session_lifetime: Duration::from_secs(900),
        send_limits: SendLimits::default(),
        max_reply_size: 10 << 20,
        tls: false,
    };
    let backend = StoreBackend::new(hold_store, audit.clone());
    let context = PortalContext::new(settings, Arc::new(backend), spool, None);
    let server = tokio::spawn(serve_portal(listener, Arc::new(context)));

    let (_driver, browser) = start_browser(&profile, &downloads).await;
    let database = config.database_path();

    // Opening the link shows a page and sends nothing.
    browser.go(&format!("{base_url}/m/{}", held.token)).await;
    browser.wait_for_heading("You have a secure message").await;
    assert!(queued(&database, &keys).is_empty());

    browser.click("button[type=submit]").await;
    browser.wait_for_heading("Enter your passcode").await;
    let mails = queued(&database, &keys);
    assert_eq!(mails.len(), 1);
    let (_, recipients, body) = &mails[0];
    assert_eq!(recipients, &[RECIPIENT.to_string()]);
    assert!(
        !body.contains("normal range"),
        "passcode mail leaks content"
    );
    let passcode = regex::Regex::new(r"Your passcode is (\d{6})")
        .unwrap()
        .captures(body)
        .expect("passcode in the mail")[1]
        .to_string();

    browser.type_into("#passcode", &passcode).await;
    browser.click("form[action$='/verify'] button").await;
    browser.wait_for_heading("Your blood test results").await;
    assert!(browser.source().await.contains("within the normal range"));

    browser.click("a[href$='/attachments/0']").await;
    let downloaded = wait_for_file(&downloads.join("results.pdf")).await;
    assert_eq!(downloaded, attachment);

    let upload = dir.path().join("reply-note.txt");
    std::fs::write(&upload, b"note from the patient").unwrap();
    browser
        .type_into("#reply-text", "Thank you, see my note.")
        .await;
    browser
        .type_into("#reply-files", &upload.display().to_string())
        .await;
    browser.click("form[action$='/reply'] button").await;
    browser.wait_for_heading("Your reply has been sent").await;

    let mails = queued(&database, &keys);
    assert_eq!(mails.len(), 2);
    let (sender, recipients, reply) = mails
        .iter()
        .find(|(sender, _, _)| sender == RECIPIENT)
        .expect("reply in the queue");
    assert_eq!(sender, RECIPIENT);
    assert_eq!(recipients, &[SENDER.to_string()]);
    assert!(
        reply.contains("In-Reply-To: <results-1@trust.nhs.uk>"),
        "{reply}"
    );
    assert!(reply.contains("Thank you, see my note."), "{reply}");
    assert!(reply.contains("reply-note.txt"), "{reply}");

    let events: Vec<String> = audit
        .entries_for(&held.id)
        .unwrap()
        .into_iter()
        .map(|entry| entry.event)
        .collect();
    for expected in [
        "portal.passcode.sent",
        "portal.message.opened",
        "portal.attachment.downloaded",
        "portal.reply.sent",
    ] {
        assert!(
            events.iter().any(|event| event == expected),
            "{expected} in {events:?}"
        );
    }

    server.abort();
}
