//! The admin pages in headless Chromium against the real binary. The browser signs in,
//! filters the review queue and opens a message whose subject, addresses, file name and
//! body try to run script. It releases one message and rejects another, and a loopback
//! server receives the portal notification and the DSN. An auditor cannot act, and a
//! lock-out survives a restart.

mod common;
mod gateway;
mod webdriver;

use std::time::Duration;

use common::{ServerScript, SmtpServer};
use gateway::{Gateway, base_config, send};
use serde_json::json;
use webdriver::{Browser, start_browser};

const SENDER: &str = "ada@clinic.example.org";
const PASSWORD: &str = "a long test password";

/// Markup in every place the sender controls; `window.xssRan` is set if any of it runs.
fn hostile_message() -> String {
    format!(
        "From: \"<img src=x onerror=window.xssRan=1>\" <{SENDER}>\r\n\
         To: \"<svg onload=window.xssRan=2>\" <friend@mailbox.example>\r\n\
         Subject: <script>window.xssRan=3</script> BLUEBIRD\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n\
         --b1\r\nContent-Type: text/html\r\n\r\n\
         <p onclick=\"window.xssRan=4\">BLUEBIRD hi</p><script>window.xssRan=5</script>\
         <a href=\"javascript:window.xssRan=6\">link</a><img src=\"http://127.0.0.1:9/p.gif\">\
         <iframe src=\"javascript:window.xssRan=7\"></iframe>\r\n\
         --b1\r\nContent-Type: text/plain\r\n\
         Content-Disposition: attachment; filename=\"<img src=x onerror=window.xssRan=8>.txt\"\r\n\
         \r\ndata\r\n--b1--\r\n"
    )
}

fn plain_message(marker: &str) -> String {
    format!(
        "From: <{SENDER}>\r\nTo: <pal@mailbox.example>\r\nSubject: plans {marker}\r\n\r\n\
         The BLUEBIRD figures, {marker}.\r\n"
    )
}

async fn sign_in(browser: &Browser, base: &str, name: &str) {
    browser.go(&format!("{base}/login")).await;
    browser.type_into("#name", name).await;
    browser.type_into("#password", PASSWORD).await;
    browser.click("#sign-in").await;
    browser.wait_for_heading("Review queue").await;
}

/// Waits until the page source contains `needle` and returns the source.
async fn wait_for_text(browser: &Browser, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let source = browser.source().await;
        if source.contains(needle) {
            return source;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{needle:?} not shown; page: {source}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn script(browser: &Browser, source: &str) -> serde_json::Value {
    browser
        .command(
            "POST",
            "/execute/sync",
            json!({ "script": source, "args": [] }),
        )
        .await
}

/// Fails when the current page ran injected script or contains a script element, an
/// event handler attribute or a `javascript:` URL.
async fn assert_inert(browser: &Browser, page: &str) {
    let ran = script(
        browser,
        "return window.xssRan === undefined ? null : window.xssRan;",
    )
    .await;
    assert!(ran.is_null(), "script ran on {page}: {ran}");
    let scripts = script(
        browser,
        "return document.querySelectorAll('script').length;",
    )
    .await;
    assert_eq!(scripts, json!(0), "script element on {page}");
    let handlers = script(
        browser,
        "return [...document.querySelectorAll('*')].flatMap(e => [...e.attributes])\
         .filter(a => a.name.toLowerCase().startsWith('on')).map(a => a.name);",
    )
    .await;
    assert_eq!(handlers, json!([]), "event handler attributes on {page}");
    let urls = script(
        browser,
        "return [...document.querySelectorAll('[href],[src],[action]')]\
         .map(e => e.getAttribute('href') || e.getAttribute('src') || e.getAttribute('action'))\
         .filter(u => u.trim().toLowerCase().startsWith('javascript:'));",
    )
    .await;
    assert_eq!(urls, json!([]), "javascript: URLs on {page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_reviews_releases_and_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = SmtpServer::start(ServerScript::default()).await;
    sealgate::store::create_master_key(&dir.path().join("keys")).unwrap();
    let config = base_config(
        dir.path(),
        &format!(
            "[[policy.classify.patterns]]\nname = \"codename\"\nregex = 'BLUEBIRD'\n\
             action = \"review\"\n\n[portal]\nbase_url = \"https://portal.clinic.example\"\n\n\
             [[delivery.routes]]\ndomain = \"*\"\nhost = \"127.0.0.1\"\nport = {}\n",
            receiver.port()
        ),
    );
    let gateway = Gateway::start(dir.path(), &config);
    let admin = gateway
        .admin
        .unwrap_or_else(|| panic!("admin pages not started; log:\n{}", gateway.log()));
    let base = format!("http://{admin}");
    for (name, role) in [("alice", "admin"), ("audrey", "auditor")] {
        let output = gateway.command_output(
            "admin",
            &["add", name, "--role", role, "--password-stdin"],
            &format!("{PASSWORD}\n"),
        );
        assert!(output.status.success(), "{output:?}");
    }
    let hostile = send(
        gateway.smtp,
        SENDER,
        &["friend@mailbox.example"],
        &hostile_message(),
    )
    .await;
    let rejected = send(
        gateway.smtp,
        SENDER,
        &["pal@mailbox.example"],
        &plain_message("m2"),
    )
    .await;
    for id in [&hostile, &rejected] {
        gateway
            .wait_for_log(&format!("{id}: to=<"), Duration::from_secs(20))
            .unwrap_or_else(|| panic!("{id} not routed; log:\n{}", gateway.log()));
    }

    let profile = dir.path().join("profile");
    let downloads = dir.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let (_driver, browser) = start_browser(&profile, &downloads).await;
    sign_in(&browser, &base, "alice").await;
    assert_inert(&browser, "the review list").await;
    let list = browser.source().await;
    assert!(
        list.contains(&hostile) && list.contains(&rejected),
        "{list}"
    );

    // Filter by recipient.
    browser.type_into("#recipient", "pal@").await;
    browser.click("#apply").await;
    let filtered = wait_for_text(&browser, "1 held message(s)").await;
    assert!(filtered.contains(&rejected), "{filtered}");
    assert!(!filtered.contains(&hostile), "{filtered}");

    // The hostile message renders inert.
    browser.go(&format!("{base}/review/{hostile}")).await;
    browser
        .wait_for_heading("<script>window.xssRan=3</script> BLUEBIRD")
        .await;
    assert_inert(&browser, "the message page").await;
    let detail = browser.source().await;
    assert!(
        detail.contains("BLUEBIRD hi"),
        "sanitised HTML missing: {detail}"
    );
    assert!(
        detail.contains("&lt;friend@mailbox.example&gt;: portal"),
        "{detail}"
    );

    // Release it: as sensitive, it goes to the portal and only a notification leaves.
    browser.click("#release").await;
    browser.wait_for_heading("Release").await;
    assert_inert(&browser, "the confirmation page").await;
    browser.click("#confirm").await;
    browser.wait_for_heading("Done").await;
    let notification = receiver
        .wait_for_messages(1, Duration::from_secs(20))
        .await
        .remove(0);
    let text = String::from_utf8_lossy(&notification.data).to_string();
    assert!(text.contains("portal.clinic.example"), "{text}");
    assert!(
        !text.contains("BLUEBIRD"),
        "content left in the notification: {text}"
    );

    // Reject the other one; the sender's server receives the DSN with the reason.
    browser.go(&format!("{base}/review/{rejected}")).await;
    browser.wait_for_heading("plans m2").await;
    browser.click("#reject").await;
    browser.wait_for_heading("Reject").await;
    browser
        .type_into("#reason", "wrong recipient for this data")
        .await;
    browser.click("#confirm").await;
    browser.wait_for_heading("Done").await;
    let messages = receiver.wait_for_messages(2, Duration::from_secs(20)).await;
    let dsn = messages
        .iter()
        .find(|message| message.recipients.iter().any(|r| r.contains(SENDER)))
        .expect("a DSN to the sender");
    let dsn = String::from_utf8_lossy(&dsn.data).to_string();
    assert!(dsn.contains("wrong recipient for this data"), "{dsn}");

    // An auditor reads the trail but cannot act.
    browser.click("nav button").await;
    let third = send(
        gateway.smtp,
        SENDER,
        &["pal@mailbox.example"],
        &plain_message("m3"),
    )
    .await;
    gateway
        .wait_for_log(&format!("{third}: to=<"), Duration::from_secs(20))
        .unwrap();
    sign_in(&browser, &base, "audrey").await;
    browser.go(&format!("{base}/review/{third}/delete")).await;
    browser.wait_for_heading("Not allowed").await;
    browser.go(&format!("{base}/audit?event=review")).await;
    browser.wait_for_heading("Audit trail").await;
    assert_inert(&browser, "the audit page").await;
    let audit = browser.source().await;
    assert!(audit.contains("review.released"), "{audit}");
    assert!(audit.contains("review.rejected"), "{audit}");
    assert!(!audit.contains("BLUEBIRD"), "{audit}");
    let list = gateway.command("review", &["list"]);
    assert!(
        list.contains(&third),
        "the auditor changed the queue: {list}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockout_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(
        dir.path(),
        "[admin]\ntls = false\nmax_failed_logins = 3\nlockout = \"1h\"\n",
    );
    let mut gateway = Gateway::start(dir.path(), &config);
    let output = gateway.command_output(
        "admin",
        &["add", "alice", "--role", "admin", "--password-stdin"],
        &format!("{PASSWORD}\n"),
    );
    assert!(output.status.success(), "{output:?}");
    let profile = dir.path().join("profile");
    let downloads = dir.path().join("downloads");
    let (_driver, browser) = start_browser(&profile, &downloads).await;
    let base = format!("http://{}", gateway.admin.unwrap());
    for attempt in 0..3 {
        browser.go(&format!("{base}/login")).await;
        browser.type_into("#name", "alice").await;
        browser
            .type_into("#password", &format!("guess {attempt}"))
            .await;
        browser.click("#sign-in").await;
        browser.wait_for_heading("Sign in").await;
    }
    assert!(
        browser.source().await.contains("locked"),
        "no lock-out shown"
    );

    gateway.kill9();
    drop(gateway);
    let gateway = Gateway::start(dir.path(), &config);
    let base = format!("http://{}", gateway.admin.unwrap());
    browser.go(&format!("{base}/login")).await;
    browser.type_into("#name", "alice").await;
    browser.type_into("#password", PASSWORD).await;
    browser.click("#sign-in").await;
    let page = wait_for_text(&browser, "locked").await;
    assert!(
        !page.contains("Review queue</h1>"),
        "signed in after a restart: {page}"
    );
    assert!(
        gateway.command("admin", &["list"]).contains("locked until"),
        "lock not stored"
    );
}
