//! The recipient portal in a real browser, through the real binary. `sealgate serve` keeps
//! a sensitive message in the hold store, and the notification and the passcode arrive at
//! the recipient's loopback mail server. Headless Chromium, driven through chromedriver's
//! W3C WebDriver API, collects the message and sends a reply, which arrives at the
//! sender's own mail server over verified TLS. Needs Debian's `chromium` and
//! `chromium-driver`.

mod common;
mod gateway;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{ServerScript, SmtpServer, TestPki};
use gateway::{Gateway, base_config, link_token, plain_portal, route_to, send};
use mail_parser::{MessageParser, MimeHeaders};
use sealgate::audit::AuditLog;
use sealgate::config::Config;
use sealgate::store::HeldId;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SAMPLE: &str = include_str!("fixtures/samples/02-results-to-patient.eml");
const SENDER: &str = "ada.lovell@clinic.example.org";
const RECIPIENT: &str = "sam.patient@mailbox.example";
const ORIGINAL_ID: &str = "<02-results-to-patient@clinic.example.org>";
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

    /// Waits until the page's `h1` contains `expected`, since a click may return before
    /// the next page has loaded.
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
                if text.as_str().is_some_and(|text| text.contains(expected)) {
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

/// Returns the contents of the first attachment of a parsed message.
fn first_attachment(message: &[u8]) -> Vec<u8> {
    let parsed = MessageParser::default()
        .parse(message)
        .expect("parsable message");
    parsed
        .attachment(0)
        .expect("an attachment")
        .contents()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_collects_through_gateway() {
    common::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let downloads: PathBuf = dir.path().join("downloads");
    let profile = dir.path().join("profile");
    std::fs::create_dir_all(&downloads).unwrap();

    // The recipient's mail server takes the notification and the passcode mail. The
    // organisation's own server, a secure domain behind a static route, takes the reply
    // over verified TLS.
    let recipient_server = SmtpServer::start(ServerScript::default()).await;
    let pki = TestPki::new();
    let own_server = SmtpServer::start(ServerScript::with_tls(
        pki.server("mail.clinic.example.org"),
    ))
    .await;
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::copy(
        pki.dir().join(TestPki::CA_FILE),
        keys.join(TestPki::CA_FILE),
    )
    .unwrap();
    let port = common::free_tcp_port();
    let base_url = format!("http://127.0.0.1:{port}");
    let extra = format!(
        "[policy]\nsecure_domains = [\"nhs.net\", \"*.nhs.net\", \"clinic.example.org\"]\n\n\
         [delivery]\nwebpki_roots = false\ntrust_anchors = [\"{ca}\"]\n\n\
         {portal}{recipient_route}{own_route}tls_name = \"mail.clinic.example.org\"\n",
        ca = TestPki::CA_FILE,
        portal = plain_portal(port, ""),
        recipient_route = route_to("mailbox.example", recipient_server.port()),
        own_route = route_to("clinic.example.org", own_server.port()),
    );
    let gateway = Gateway::start(dir.path(), &base_config(dir.path(), &extra));
    send(gateway.smtp, SENDER, &[RECIPIENT], SAMPLE).await;

    let notification = recipient_server
        .wait_for_messages(1, Duration::from_secs(20))
        .await;
    assert_eq!(notification.len(), 1, "log:\n{}", gateway.log());
    let parsed = MessageParser::default()
        .parse(&notification[0].data)
        .expect("parsable notification");
    let text = parsed.body_text(0).expect("a text part").to_string();
    let token = link_token(&text, &base_url);

    let (_driver, browser) = start_browser(&profile, &downloads).await;

    // Opening the link shows a page and sends nothing.
    browser.go(&format!("{base_url}/m/{token}")).await;
    browser.wait_for_heading("You have a secure message").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(recipient_server.messages().len(), 1);

    browser.click("button[type=submit]").await;
    browser.wait_for_heading("Enter your passcode").await;
    let mails = recipient_server
        .wait_for_messages(2, Duration::from_secs(20))
        .await;
    assert_eq!(mails.len(), 2, "no passcode mail; log:\n{}", gateway.log());
    assert_eq!(mails[1].recipients, [RECIPIENT]);
    let passcode_mail = String::from_utf8_lossy(&mails[1].data).into_owned();
    assert!(
        !passcode_mail.contains("Dear Sam"),
        "passcode mail leaks content"
    );
    let passcode = regex::Regex::new(r"Your passcode is (\d{6})")
        .unwrap()
        .captures(&passcode_mail)
        .expect("passcode in the mail")[1]
        .to_string();

    browser.type_into("#passcode", &passcode).await;
    browser.click("form[action$='/verify'] button").await;
    browser.wait_for_heading("Your blood test results").await;
    assert!(browser.source().await.contains("Dear Sam"));

    let expected_attachment = first_attachment(SAMPLE.as_bytes());
    browser.click("a[href$='/attachments/0']").await;
    let downloaded = wait_for_file(&downloads.join("results.txt")).await;
    assert_eq!(downloaded, expected_attachment);

    browser.click("a[href$='/original.eml']").await;
    let original = wait_for_file(&downloads.join("message.eml")).await;
    let parsed = MessageParser::default()
        .parse(&original)
        .expect("parsable .eml");
    assert_eq!(
        parsed.message_id(),
        Some(ORIGINAL_ID.trim_matches(['<', '>']))
    );
    assert!(
        parsed
            .body_text(0)
            .is_some_and(|text| text.contains("Dear Sam"))
    );
    assert_eq!(first_attachment(&original), expected_attachment);

    let upload = dir.path().join("reply-note.txt");
    let note = b"note from the patient\n";
    std::fs::write(&upload, note).unwrap();
    browser
        .type_into("#reply-text", "Thank you, see my note.")
        .await;
    browser
        .type_into("#reply-files", &upload.display().to_string())
        .await;
    browser.click("form[action$='/reply'] button").await;
    browser.wait_for_heading("Your reply has been sent").await;

    let replies = own_server
        .wait_for_messages(1, Duration::from_secs(20))
        .await;
    assert_eq!(
        replies.len(),
        1,
        "no reply arrived; log:\n{}",
        gateway.log()
    );
    let reply = &replies[0];
    assert!(
        reply.mail_from.starts_with(&format!("<{RECIPIENT}>")),
        "{}",
        reply.mail_from
    );
    assert_eq!(reply.recipients, [SENDER]);
    assert!(
        own_server.clear_text_commands("MAIL").is_empty(),
        "the reply was sent without TLS"
    );
    let raw = String::from_utf8_lossy(&reply.data).into_owned();
    assert!(
        raw.contains(&format!("In-Reply-To: {ORIGINAL_ID}")),
        "{raw}"
    );
    assert!(raw.contains(&format!("References: {ORIGINAL_ID}")), "{raw}");
    let parsed = MessageParser::default()
        .parse(&reply.data)
        .expect("parsable reply");
    assert!(
        parsed
            .body_text(0)
            .is_some_and(|text| text.contains("Thank you, see my note.")),
        "{raw}"
    );
    let attached = parsed.attachment(0).expect("the reply's attachment");
    assert_eq!(attached.attachment_name(), Some("reply-note.txt"));
    assert_eq!(attached.contents(), note);

    let listed = gateway.command("held", &["list"]);
    let held_id = HeldId::parse(listed.split_whitespace().next().unwrap()).expect("held id");
    let config = Config::load(&dir.path().join("sealgate.toml")).unwrap();
    let events: Vec<String> = AuditLog::open(&config)
        .unwrap()
        .entries_for(&held_id)
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
}
