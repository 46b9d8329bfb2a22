//! End-to-end tests of the real binary: mail in over SMTP, out to Postfix's `smtp-sink`.

mod gateway;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use gateway::{Gateway, base_config};
use mail_send::SmtpClientBuilder;

/// Postfix's `smtp-sink`, dumping each transaction to a file in a folder.
struct SmtpSink {
    child: Child,
    dumps: PathBuf,
}

impl SmtpSink {
    fn start(address: SocketAddr, dumps: &Path) -> SmtpSink {
        std::fs::create_dir_all(dumps).unwrap();
        let program = ["/usr/sbin/smtp-sink", "/usr/bin/smtp-sink"]
            .into_iter()
            .find(|path| Path::new(path).exists())
            .expect("smtp-sink not found: install Debian's postfix package");
        let child = Command::new(program)
            .arg("-u")
            .arg(whoami())
            .arg("-d")
            .arg(format!("{}/%H%M%S.", dumps.display()))
            .arg(address.to_string())
            .arg("100")
            .spawn()
            .expect("failed to start smtp-sink");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(address).is_err() {
            assert!(Instant::now() < deadline, "smtp-sink did not start on {address}");
            std::thread::sleep(Duration::from_millis(50));
        }
        SmtpSink {
            child,
            dumps: dumps.to_owned(),
        }
    }

    /// Contents of every dumped transaction.
    fn messages(&self) -> Vec<String> {
        let mut messages = Vec::new();
        for entry in std::fs::read_dir(&self.dumps).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            messages.push(String::from_utf8_lossy(&bytes).into_owned());
        }
        messages
    }

    /// Waits until the dumps together contain every marker, and returns how often each
    /// marker was seen.
    fn wait_for_markers(&self, markers: &[String], timeout: Duration) -> Vec<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            let counts: Vec<usize> = markers
                .iter()
                .map(|marker| messages.iter().filter(|m| m.contains(marker.as_str())).count())
                .collect();
            if counts.iter().all(|count| *count > 0) || Instant::now() >= deadline {
                return counts;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn whoami() -> String {
    std::env::var("USER")
        .ok()
        .filter(|user| !user.is_empty())
        .unwrap_or_else(|| "root".into())
}

/// A free loopback port: bound, read back and released.
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn route_to(domain: &str, next_hop: SocketAddr) -> String {
    format!(
        "[[delivery.routes]]\ndomain = \"{domain}\"\nhost = \"127.0.0.1\"\nport = {}\n",
        next_hop.port()
    )
}

/// Sends one message with mail-send and returns the queue id from the `250` reply.
async fn send(gateway: SocketAddr, from: &str, to: &[&str], body: String) -> String {
    let mut client = SmtpClientBuilder::new("127.0.0.1".to_string(), gateway.port())
        .expect("builder for a loopback address")
        .implicit_tls(false)
        .helo_host("staff-mta.clinic.example.org")
        .timeout(Duration::from_secs(30))
        .connect_plain()
        .await
        .expect("connect to the gateway");
    let message = mail_send::smtp::message::Message::new(from, to.to_vec(), body.into_bytes());
    let reply = client.send(message).await.expect("gateway accepted the message");
    assert_eq!(reply.code(), 250);
    let text = reply.message().to_string();
    let id = text
        .rsplit(' ')
        .next()
        .expect("250 reply names the queue id")
        .to_string();
    assert_eq!(id.len(), 16, "queue id in {text:?}");
    let _ = client.quit().await;
    id
}

fn message_with_marker(marker: &str) -> String {
    format!(
        "From: Ada <ada@clinic.example.org>\r\nTo: <friend@sink.example>\r\n\
         Subject: test {marker}\r\nMessage-ID: <{marker}@clinic.example.org>\r\n\r\n\
         body line for {marker}\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_after_250_loses_no_mail() {
    let dir = tempfile::tempdir().unwrap();
    let sink_address = free_port();
    // The next hop is down during the first run, so every message is still queued when
    // the gateway is killed.
    let config = base_config(dir.path(), &route_to("sink.example", sink_address));
    let mut gateway = Gateway::start(dir.path(), &config);

    let markers: Vec<String> = (0..40).map(|n| format!("crash-{n:02}-{}", std::process::id())).collect();
    let mut sends = Vec::new();
    for marker in &markers {
        let body = message_with_marker(marker);
        let address = gateway.smtp;
        sends.push(tokio::spawn(async move {
            send(address, "ada@clinic.example.org", &["friend@sink.example"], body).await
        }));
    }
    let mut ids = Vec::new();
    for send in sends {
        ids.push(send.await.unwrap());
    }
    gateway.kill9();

    let sink = SmtpSink::start(sink_address, &dir.path().join("sink"));
    let gateway = Gateway::start(dir.path(), &config);
    let counts = sink.wait_for_markers(&markers, Duration::from_secs(60));
    for (marker, count) in markers.iter().zip(&counts) {
        assert!(*count >= 1, "{marker} was accepted but never delivered; log:\n{}", gateway.log());
    }
    for id in &ids {
        assert!(
            gateway
                .wait_for_log(&format!("{id}: to=<friend@sink.example>, relay="), Duration::from_secs(10))
                .is_some_and(|line| line.contains("status=sent")),
            "no sent line for {id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_log_lines_keep_their_format() {
    let dir = tempfile::tempdir().unwrap();
    let sink_address = free_port();
    let sink = SmtpSink::start(sink_address, &dir.path().join("sink"));
    let config = base_config(dir.path(), &route_to("sink.example", sink_address));
    let gateway = Gateway::start(dir.path(), &config);

    let id = send(
        gateway.smtp,
        "ada@clinic.example.org",
        &["friend@sink.example"],
        message_with_marker("format"),
    )
    .await;
    sink.wait_for_markers(&["format".to_string()], Duration::from_secs(20));

    let queued = gateway
        .wait_for_log(&format!("{id}: queued"), Duration::from_secs(10))
        .expect("queued line");
    assert!(queued.contains("from=<ada@clinic.example.org>"), "{queued}");
    assert!(queued.contains("nrcpt=1"), "{queued}");
    assert!(queued.contains("size="), "{queued}");

    let sent = gateway
        .wait_for_log(&format!("{id}: to=<friend@sink.example>, relay="), Duration::from_secs(10))
        .expect("delivery line");
    let fields = sent.split_once(&format!("{id}: ")).unwrap().1;
    let expected_order = ["to=", "relay=", "delay=", "delays=", "tls=", "route=", "dsn=", "status="];
    let mut position = 0;
    for field in expected_order {
        let found = fields[position..]
            .find(field)
            .unwrap_or_else(|| panic!("{field} missing or out of order in {sent}"));
        position += found + field.len();
    }
    assert!(
        fields.contains(&format!("relay=127.0.0.1[127.0.0.1]:{}", sink_address.port())),
        "{sent}"
    );
    assert!(fields.contains("route=opportunistic"), "{sent}");
    assert!(fields.contains("tls=plain"), "smtp-sink offers no STARTTLS: {sent}");
    assert!(fields.contains("dsn=2.0.0"), "{sent}");
    assert!(fields.contains("status=sent (250"), "{sent}");
}
