//! End to end through the real binary: a sensitive message to a recipient without a secure
//! domain or a certificate is held in the encrypted store, and only a notification with
//! the portal link reaches the recipient's server.

mod common;
mod gateway;

use std::time::Duration;

use common::{ServerScript, SmtpServer};
use gateway::{Gateway, base_config, link_token, plain_portal, route_to, send};

const SAMPLE: &str = include_str!("fixtures/samples/02-results-to-patient.eml");

/// Phrases of the sample that must never leave the gateway: subject, body, the NHS
/// number and the attachment, both decoded and as base64.
const CONTENT: [&str; 6] = [
    "blood test results",
    "Dear Sam",
    "999-000-0026",
    "Your results are attached",
    "Haemoglobin",
    "SGFlbW9nbG9iaW4",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensitive_mail_is_held_and_only_notified() {
    common::init_logs();
    let dir = tempfile::tempdir().unwrap();
    sealgate::store::create_master_key(&dir.path().join("keys")).unwrap();
    let receiver = SmtpServer::start(ServerScript::default()).await;
    let config = base_config(
        dir.path(),
        &format!(
            "[portal]\norganisation = \"Riverside Health Centre\"\n\
             base_url = \"https://portal.riverside.example\"\n\n\
             [[delivery.routes]]\ndomain = \"mailbox.example\"\nhost = \"127.0.0.1\"\nport = {}\n",
            receiver.port()
        ),
    );
    let gateway = Gateway::start(dir.path(), &config);

    let queue_id = send(
        gateway.smtp,
        "ada.lovell@clinic.example.org",
        &["sam.patient@mailbox.example"],
        SAMPLE,
    )
    .await;

    let held_line = gateway
        .wait_for_log("route=portal, status=held", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no hold logged; log:\n{}", gateway.log()));
    assert!(held_line.contains(&queue_id), "{held_line}");
    let notification_id = held_line
        .split("notification ")
        .nth(1)
        .and_then(|rest| rest.strip_suffix(')'))
        .expect("hold line names the notification")
        .to_string();

    let messages = receiver.wait_for_messages(1, Duration::from_secs(20)).await;
    assert_eq!(messages.len(), 1, "log:\n{}", gateway.log());
    let delivered = &messages[0];
    assert_eq!(delivered.recipients, ["sam.patient@mailbox.example"]);
    assert!(
        delivered
            .mail_from
            .starts_with("<no-reply@gateway.test.example>"),
        "{}",
        delivered.mail_from
    );

    let raw = String::from_utf8_lossy(&delivered.data).to_string();
    for phrase in CONTENT {
        assert!(
            !raw.contains(phrase),
            "notification contains {phrase:?}:\n{raw}"
        );
    }
    let parsed = mail_parser::MessageParser::default()
        .parse(&delivered.data)
        .unwrap();
    assert_eq!(
        parsed.subject(),
        Some("You have a secure message from Riverside Health Centre")
    );
    let text = parsed.body_text(0).expect("a text part").to_string();
    let html = parsed.body_html(0).expect("an HTML part").to_string();
    assert!(parsed.text_body.len() == 1 && parsed.html_body.len() == 1);
    let link_start = text
        .find("https://portal.riverside.example/m/")
        .expect("text part has the portal link");
    let token: String = text[link_start + "https://portal.riverside.example/m/".len()..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    assert!(
        token.len() >= 22,
        "token {token:?} is shorter than 128 bits"
    );
    assert!(html.contains(&format!("https://portal.riverside.example/m/{token}")));
    for part in [&text, &html] {
        assert!(part.contains("Riverside Health Centre"), "{part}");
        assert!(part.contains("ada.lovell@clinic.example.org"), "{part}");
        assert!(
            !part.contains("sam.patient"),
            "link or text names the recipient: {part}"
        );
        for phrase in CONTENT {
            assert!(!part.contains(phrase), "notification contains {phrase:?}");
        }
    }

    // The notification itself went out opportunistically, not to the portal again.
    let notification_route = gateway
        .wait_for_log(
            &format!("{notification_id}: to=<sam.patient@mailbox.example>, route="),
            Duration::from_secs(5),
        )
        .expect("notification routed");
    assert!(
        notification_route.contains("route=opportunistic"),
        "{notification_route}"
    );
    assert_eq!(
        gateway.log().matches("route=portal, status=held").count(),
        1
    );

    let listed = gateway.command("held", &["list"]);
    assert!(listed.contains("1 held message(s)"), "{listed}");
    assert!(listed.contains("active"), "{listed}");
    let held_id = listed.split_whitespace().next().unwrap().to_string();
    let shown = gateway.command("held", &["show", &held_id]);
    assert!(
        shown.contains("to: <sam.patient@mailbox.example>"),
        "{shown}"
    );
    assert!(
        shown.contains("subject: Your blood test results"),
        "{shown}"
    );
    assert!(!shown.contains("Dear Sam"), "{shown}");

    // The original left the queue: only the hold store has it, encrypted.
    let queue = gateway.queue_command(&["list"]);
    assert!(!queue.contains(&queue_id), "{queue}");

    let revoked = gateway.command("held", &["revoke", &held_id]);
    assert!(revoked.contains("revoked"), "{revoked}");
    let listed = gateway.command("held", &["list"]);
    assert!(listed.contains("revoked"), "{listed}");
}

/// Several sensitive messages that arrive together are held in one batch: each recipient
/// gets one notification with its own link, and every copy is in the hold store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_burst_notifies_each_recipient() {
    common::init_logs();
    let dir = tempfile::tempdir().unwrap();
    sealgate::store::create_master_key(&dir.path().join("keys")).unwrap();
    let receiver = SmtpServer::start(ServerScript::default()).await;
    let base_url = "https://portal.riverside.example";
    let config = base_config(
        dir.path(),
        &format!(
            "[portal]\nbase_url = \"{base_url}\"\n\n\
             [[delivery.routes]]\ndomain = \"mailbox.example\"\nhost = \"127.0.0.1\"\nport = {}\n",
            receiver.port()
        ),
    );
    let gateway = Gateway::start(dir.path(), &config);

    let sender = "ada.lovell@clinic.example.org";
    let group = [
        "sam.patient@mailbox.example",
        "carer.one@mailbox.example",
        "carer.two@mailbox.example",
    ];
    let (first, second, third) = tokio::join!(
        send(gateway.smtp, sender, &group, SAMPLE),
        send(
            gateway.smtp,
            sender,
            &["lee.patient@mailbox.example"],
            SAMPLE
        ),
        send(
            gateway.smtp,
            sender,
            &["kim.patient@mailbox.example"],
            SAMPLE
        ),
    );

    let messages = receiver.wait_for_messages(5, Duration::from_secs(30)).await;
    assert_eq!(messages.len(), 5, "log:\n{}", gateway.log());
    let mut recipients: Vec<&str> = messages
        .iter()
        .flat_map(|message| message.recipients.iter().map(String::as_str))
        .collect();
    recipients.sort_unstable();
    assert_eq!(
        recipients,
        [
            "carer.one@mailbox.example",
            "carer.two@mailbox.example",
            "kim.patient@mailbox.example",
            "lee.patient@mailbox.example",
            "sam.patient@mailbox.example",
        ]
    );
    let mut tokens: Vec<String> = messages
        .iter()
        .map(|message| {
            let raw = String::from_utf8_lossy(&message.data);
            for phrase in CONTENT {
                assert!(!raw.contains(phrase), "notification contains {phrase:?}");
            }
            let parsed = mail_parser::MessageParser::default()
                .parse(&message.data)
                .unwrap();
            link_token(&parsed.body_text(0).expect("a text part"), base_url)
        })
        .collect();
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens.len(), 5, "each notification has its own link");

    let hold_lines = gateway.log().matches("route=portal, status=held").count();
    assert_eq!(hold_lines, 5, "log:\n{}", gateway.log());
    let listed = gateway.command("held", &["list"]);
    assert!(listed.contains("5 held message(s)"), "{listed}");
    assert_eq!(listed.matches("active").count(), 5, "{listed}");
    let queue = gateway.queue_command(&["list"]);
    for queue_id in [first, second, third] {
        assert!(!queue.contains(&queue_id), "{queue}");
    }
}

/// A response from the portal.
struct PortalResponse {
    status: u16,
    head: String,
    body: String,
}

/// Sends one HTTP/1.1 request to the portal on `127.0.0.1:port`. POSTs carry the portal's
/// `Origin` and `form` as a URL-encoded body.
async fn portal_request(
    port: u16,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    form: &str,
) -> PortalResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the portal");
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    if let Some(cookie) = cookie {
        request.push_str(&format!("Cookie: {cookie}\r\n"));
    }
    if method == "POST" {
        request.push_str(&format!(
            "Origin: http://127.0.0.1:{port}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            form.len()
        ));
    }
    request.push_str("Connection: close\r\n\r\n");
    request.push_str(form);
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head}"));
    PortalResponse {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// Opens the link page and returns the CSRF cookie's value, which the forms send back.
async fn csrf_cookie(port: u16, token: &str) -> String {
    let page = portal_request(port, "GET", &format!("/m/{token}"), None, "").await;
    assert_eq!(page.status, 200, "{}", page.body);
    page.head
        .lines()
        .find_map(|line| line.strip_prefix("set-cookie: sealgate-csrf="))
        .or_else(|| {
            page.head
                .lines()
                .find_map(|line| line.strip_prefix("Set-Cookie: sealgate-csrf="))
        })
        .and_then(|value| value.split(';').next())
        .unwrap_or_else(|| panic!("no CSRF cookie in {}", page.head))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passcode_lockout_survives_restart() {
    common::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let receiver = SmtpServer::start(ServerScript::default()).await;
    let port = common::free_tcp_port();
    let config = base_config(
        dir.path(),
        &format!(
            "{}{}",
            plain_portal(
                port,
                "max_passcode_attempts = 2\nlockout_cooldown = \"1h\"\n\
                 passcode_resend_interval = \"1s\""
            ),
            route_to("mailbox.example", receiver.port())
        ),
    );
    let mut gateway = Gateway::start(dir.path(), &config);
    send(
        gateway.smtp,
        "ada.lovell@clinic.example.org",
        &["sam.patient@mailbox.example"],
        SAMPLE,
    )
    .await;
    let notification = receiver.wait_for_messages(1, Duration::from_secs(20)).await;
    assert_eq!(notification.len(), 1, "log:\n{}", gateway.log());
    let text = String::from_utf8_lossy(&notification[0].data).replace("=\r\n", "");
    let token = link_token(&text, &format!("http://127.0.0.1:{port}"));

    let csrf = csrf_cookie(port, &token).await;
    let cookie = format!("sealgate-csrf={csrf}");
    let form = format!("csrf={csrf}");
    let sent = portal_request(
        port,
        "POST",
        &format!("/m/{token}/passcode"),
        Some(&cookie),
        &form,
    )
    .await;
    assert_eq!(sent.status, 200, "{}\nlog:\n{}", sent.body, gateway.log());
    let mails = receiver.wait_for_messages(2, Duration::from_secs(20)).await;
    assert_eq!(mails.len(), 2, "no passcode mail; log:\n{}", gateway.log());
    let passcode_mail = String::from_utf8_lossy(&mails[1].data).into_owned();
    let passcode = regex::Regex::new(r"Your passcode is (\d{6})")
        .unwrap()
        .captures(&passcode_mail)
        .expect("passcode in the mail")[1]
        .to_string();
    let wrong = if passcode == "111111" {
        "222222"
    } else {
        "111111"
    };

    let verify = format!("/m/{token}/verify");
    let guess = format!("csrf={csrf}&passcode={wrong}");
    let first = portal_request(port, "POST", &verify, Some(&cookie), &guess).await;
    assert_eq!(first.status, 400, "{}", first.body);
    let second = portal_request(port, "POST", &verify, Some(&cookie), &guess).await;
    assert_eq!(second.status, 429, "{}", second.body);
    // Even the right passcode no longer opens the message.
    let right = format!("csrf={csrf}&passcode={passcode}");
    let after = portal_request(port, "POST", &verify, Some(&cookie), &right).await;
    assert_eq!(after.status, 200, "{}", after.body);
    assert!(after.body.contains("no valid passcode"), "{}", after.body);

    gateway.kill9();
    let gateway = Gateway::start(dir.path(), &config);
    let csrf = csrf_cookie(port, &token).await;
    let cookie = format!("sealgate-csrf={csrf}");
    let resend = portal_request(
        port,
        "POST",
        &format!("/m/{token}/passcode"),
        Some(&cookie),
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(resend.status, 429, "{}", resend.body);
    let retry_after: u64 = resend
        .head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("retry-after")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no Retry-After in {}", resend.head));
    assert!(
        retry_after > 3000 && retry_after <= 3600,
        "Retry-After: {retry_after}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.messages().len(),
        2,
        "a passcode was mailed after the restart; log:\n{}",
        gateway.log()
    );
}
