//! A small W3C WebDriver client for headless Chromium through chromedriver on loopback,
//! for the browser tests. Needs Debian's `chromium` and `chromium-driver`.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const WEB_ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process. On drop, even after a failed assertion, it ends the browser
/// session (killing chromedriver alone would leave Chromium running) and then chromedriver.
pub struct Driver {
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
pub struct Browser {
    port: u16,
    session: String,
}

pub async fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> Value {
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
    pub async fn command(&self, method: &str, path: &str, body: Value) -> Value {
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

    pub async fn go(&self, url: &str) {
        self.command("POST", "/url", json!({ "url": url })).await;
    }

    pub async fn find(&self, css: &str) -> String {
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

    pub async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.command("POST", &format!("/element/{element}/click"), json!({}))
            .await;
    }

    pub async fn type_into(&self, css: &str, text: &str) {
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
    pub async fn wait_for_heading(&self, expected: &str) {
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
    pub async fn command_result(&self, method: &str, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let body = (method == "POST").then_some(&body);
        http(self.port, method, &path, body).await["value"].clone()
    }

    pub async fn source(&self) -> String {
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

pub async fn start_browser(profile: &Path, downloads: &Path) -> (Driver, Browser) {
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
