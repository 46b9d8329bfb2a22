//! The inbound listener on 127.0.0.1:0 with a certificate made for each test, driven by real
//! clients: mail-send, Python's smtplib, swaks, and raw bytes over TCP and tokio-rustls.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use argon2::{Algorithm, Argon2, Params, PasswordHasher, Version};
use mail_send::SmtpClientBuilder;
use mail_send::smtp::message::Message;
use rustls_pki_types::ServerName;
use sealgate::config::{ByteSize, Config, ConfigDuration, SmtpUser};
use sealgate::inbound::{InboundContext, serve};
use sealgate::keys::load_server_tls;
use sealgate::queue::Spool;
use sealgate::queue::store::{MessageSummary, Store};
use sealgate::store::MasterKeys;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::sync::Notify;
use tokio_rustls::{TlsAcceptor, TlsConnector};

const USER: &str = "mta";
const PASSWORD: &str = "correct horse battery staple";

/// Time allowed for any one reply; a hang fails the test instead of blocking it.
const REPLY_TIMEOUT: Duration = Duration::from_secs(20);

/// Base delay before a failed AUTH's reply in these tests.
const AUTH_DELAY: Duration = Duration::from_millis(100);

/// A running listener with its own folder, database and certificate.
struct Server {
    address: SocketAddr,
    folder: tempfile::TempDir,
    database: PathBuf,
    keys: Arc<MasterKeys>,
    certificate_pem: String,
}

impl Server {
    async fn start() -> Server {
        Server::start_with(|_| {}).await
    }

    async fn start_with(adjust: impl FnOnce(&mut Config)) -> Server {
        let folder = tempfile::tempdir().unwrap();
        let generated =
            rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
                .unwrap();
        let certificate_pem = generated.cert.pem();
        std::fs::write(folder.path().join("tls.crt"), &certificate_pem).unwrap();
        std::fs::write(
            folder.path().join("tls.key"),
            generated.signing_key.serialize_pem(),
        )
        .unwrap();

        let mut config = Config::development();
        config.server.hostname = "mx.example.org".into();
        config.server.data_dir = folder.path().join("data");
        config.server.keys_dir = folder.path().to_owned();
        config.inbound.users = vec![SmtpUser {
            name: USER.into(),
            password_hash: test_hash(PASSWORD),
        }];
        adjust(&mut config);

        let tls = load_server_tls(
            &config.key_path(&config.inbound.tls_certificate),
            &config.key_path(&config.inbound.tls_key),
        )
        .unwrap();
        let database = config.database_path();
        sealgate::store::ensure_master_key(&config.server.keys_dir).unwrap();
        let keys = Arc::new(MasterKeys::load(&config.server.keys_dir, None).unwrap());
        let spool = Spool::start(&database, Arc::clone(&keys), Arc::new(Notify::new())).unwrap();
        let context = InboundContext::new(Arc::new(config), Some(TlsAcceptor::from(tls)), spool)
            .with_auth_failure_delay(AUTH_DELAY);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, Arc::new(context)));

        Server {
            address,
            folder,
            database,
            keys,
            certificate_pem,
        }
    }

    fn messages(&self) -> Vec<MessageSummary> {
        self.store().list().unwrap()
    }

    fn store(&self) -> Store {
        Store::open(&self.database, Arc::clone(&self.keys)).unwrap()
    }

    fn recipients(&self, message: &MessageSummary) -> Vec<String> {
        let store = self.store();
        let rows = store.recipients(&message.id).unwrap();
        rows.into_iter().map(|row| row.address).collect()
    }

    fn body(&self, message: &MessageSummary) -> String {
        let store = self.store();
        String::from_utf8(store.body(&message.id).unwrap().unwrap()).unwrap()
    }

    /// Builds a TLS connector that trusts only this server's certificate.
    fn tls_connector(&self) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        let certificate =
            <rustls_pki_types::CertificateDer as rustls_pki_types::pem::PemObject>::from_pem_slice(
                self.certificate_pem.as_bytes(),
            )
            .unwrap();
        roots.add(certificate).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }

    fn certificate_file(&self) -> PathBuf {
        self.folder.path().join("tls.crt")
    }

    /// Creates a mail-send builder that verifies the server against the test certificate.
    fn mail_send(&self) -> SmtpClientBuilder<String> {
        SmtpClientBuilder::new_with_tls_connector(
            "127.0.0.1".to_owned(),
            self.address.port(),
            self.tls_connector(),
        )
        .implicit_tls(false)
        .helo_host("client.example.org")
        .timeout(REPLY_TIMEOUT)
    }

    async fn connect(&self) -> Raw<TcpStream> {
        let stream = TcpStream::connect(self.address).await.unwrap();
        let mut client = Raw {
            stream: BufReader::new(stream),
        };
        let greeting = client.reply().await;
        assert!(greeting.starts_with("220 mx.example.org"), "{greeting}");
        client
    }

    /// Connects from the loopback address `local`, such as `127.0.0.2`, and reads the
    /// reply to the connection, which is the greeting unless the server rejects it.
    async fn connect_from(&self, local: &str) -> (Raw<TcpStream>, String) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::new(local.parse().unwrap(), 0))
            .unwrap();
        let stream = socket.connect(self.address).await.unwrap();
        let mut client = Raw {
            stream: BufReader::new(stream),
        };
        let reply = client.reply().await;
        (client, reply)
    }

    /// Connects from `local`, greets and upgrades with STARTTLS.
    async fn connect_tls_from(
        &self,
        local: &str,
    ) -> Raw<tokio_rustls::client::TlsStream<TcpStream>> {
        let (mut client, greeting) = self.connect_from(local).await;
        assert!(greeting.starts_with("220 "), "{greeting}");
        client.expect("EHLO client.example.org", "250").await;
        client.expect("STARTTLS", "220 2.0.0").await;
        client.upgrade(&self.tls_connector()).await
    }

    /// Connects, greets and upgrades with STARTTLS.
    async fn connect_tls(&self) -> Raw<tokio_rustls::client::TlsStream<TcpStream>> {
        let mut client = self.connect().await;
        client.expect("EHLO client.example.org", "250").await;
        client.expect("STARTTLS", "220 2.0.0").await;
        client.upgrade(&self.tls_connector()).await
    }
}

/// Hashes with Argon2id and tiny parameters, so that tests do not spend seconds hashing.
fn test_hash(password: &str) -> String {
    let params = Params::new(8, 1, 1, None).unwrap();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes())
        .unwrap()
        .to_string()
}

/// A line-level SMTP client for byte-exact tests.
struct Raw<S> {
    stream: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    async fn send(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).await.unwrap();
    }

    /// Reads one reply, all lines joined with `\n`; empty when the server closed.
    async fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let read = tokio::time::timeout(REPLY_TIMEOUT, self.stream.read_line(&mut line))
                .await
                .expect("no reply within the timeout")
                .unwrap_or(0);
            if read == 0 {
                return lines.join("\n");
            }
            let line = line.trim_end_matches("\r\n").to_owned();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return lines.join("\n");
            }
        }
    }

    async fn expect(&mut self, line: &str, expected: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        let reply = self.reply().await;
        assert!(
            reply.starts_with(expected),
            "{line:?}: expected {expected:?}, got {reply:?}"
        );
        reply
    }

    async fn closed(&mut self) -> bool {
        self.reply().await.is_empty()
    }
}

impl Raw<TcpStream> {
    async fn upgrade(
        self,
        connector: &TlsConnector,
    ) -> Raw<tokio_rustls::client::TlsStream<TcpStream>> {
        assert!(
            self.stream.buffer().is_empty(),
            "server sent bytes after 220"
        );
        let stream = self.stream.into_inner();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let stream = connector.connect(name, stream).await.unwrap();
        Raw {
            stream: BufReader::new(stream),
        }
    }
}

fn queued_id(text: &str) -> String {
    let (_, id) = text
        .split_once("queued as ")
        .unwrap_or_else(|| panic!("no queue id in {text:?}"));
    id.trim().to_owned()
}

const PYTHON_SEND: &str = r#"
import smtplib, ssl, sys
port, cafile, mechanism, initial = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4] == "initial"
context = ssl.create_default_context(cafile=cafile)
with smtplib.SMTP("127.0.0.1", port, local_hostname="python.example.org", timeout=20) as smtp:
    smtp.starttls(context=context)
    smtp.ehlo("python.example.org")
    smtp.user, smtp.password = "mta", "correct horse battery staple"
    method = smtp.auth_plain if mechanism == "PLAIN" else smtp.auth_login
    code, text = smtp.auth(mechanism, method, initial_response_ok=initial)
    print(code, text.decode())
    smtp.mail("alice@example.org")
    smtp.rcpt("bob@example.net")
    code, text = smtp.data(b"Subject: from python\r\n\r\nHello\r\n")
    print(code, text.decode())
"#;

async fn python_send(server: &Server, mechanism: &str, initial: &str) -> String {
    let output = Command::new("python3")
        .arg("-c")
        .arg(PYTHON_SEND)
        .arg(server.address.port().to_string())
        .arg(server.certificate_file())
        .arg(mechanism)
        .arg(initial)
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "python failed: {stdout}\n{stderr}");
    stdout
}

#[tokio::test]
async fn mail_send_delivers_in_plain_text() {
    let server = Server::start().await;
    let mut client = server.mail_send().connect_plain().await.unwrap();
    let message = Message::new(
        "alice@example.org",
        ["bob@example.net"],
        &b"Subject: plain\r\n\r\nHello"[..],
    );
    let reply = client.send(message).await.unwrap();
    client.quit().await.unwrap();

    assert_eq!(reply.code, 250);
    assert_eq!(reply.esc, [2, 0, 0]);
    let messages = server.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].id.as_str(), queued_id(&reply.message));
    assert_eq!(server.recipients(&messages[0]), ["bob@example.net"]);
    let body = server.body(&messages[0]);
    assert!(body.contains(" with ESMTP id "), "{body}");
    assert!(body.ends_with("Subject: plain\r\n\r\nHello\r\n"), "{body}");
}

#[tokio::test]
async fn mail_send_delivers_with_starttls_and_auth_plain() {
    let server = Server::start_with(|config| {
        // Only authentication can grant relay rights here.
        config.inbound.relay_networks = vec!["192.0.2.0/24".parse().unwrap()];
    })
    .await;
    let mut client = server
        .mail_send()
        .credentials((USER.to_owned(), PASSWORD.to_owned()))
        .connect()
        .await
        .unwrap();
    let message = Message::new(
        "alice@example.org",
        ["bob@example.net"],
        &b"Subject: tls\r\n\r\nHello\r\n"[..],
    );
    let reply = client.send(message).await.unwrap();
    client.quit().await.unwrap();

    let messages = server.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].id.as_str(), queued_id(&reply.message));
    let body = server.body(&messages[0]);
    assert!(body.contains(" with ESMTPSA (using TLSv1.3/"), "{body}");
}

#[tokio::test]
async fn python_smtplib_authenticates_with_plain() {
    let server = Server::start().await;
    let output = python_send(&server, "PLAIN", "initial").await;

    assert!(output.contains("235 2.7.0"), "{output}");
    let messages = server.messages();
    assert_eq!(messages.len(), 1);
    assert!(
        output.contains(&format!("250 2.0.0 Ok: queued as {}", messages[0].id)),
        "{output}"
    );
    let client = &messages[0].client;
    assert!(
        client.starts_with("python.example.org[127.0.0.1]:"),
        "{client}"
    );
}

#[tokio::test]
async fn python_smtplib_authenticates_with_login() {
    let server = Server::start().await;
    // With an initial response (`AUTH LOGIN <user>`), then with both challenges.
    for initial in ["initial", "challenge"] {
        let output = python_send(&server, "LOGIN", initial).await;
        assert!(output.contains("235 2.7.0"), "{initial}: {output}");
        assert!(
            output.contains("250 2.0.0 Ok: queued as "),
            "{initial}: {output}"
        );
    }
    assert_eq!(server.messages().len(), 2);
}

#[tokio::test]
async fn swaks_delivers_with_starttls_and_auth_login() {
    let server = Server::start().await;
    let output = Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{}", server.address.port())])
        .args(["--from", "alice@example.org", "--to", "bob@example.net"])
        .args(["--helo", "swaks.example.org", "--tls"])
        .args([
            "--auth",
            "LOGIN",
            "--auth-user",
            USER,
            "--auth-password",
            PASSWORD,
        ])
        .args(["--timeout", "20"])
        .output()
        .await
        .expect("swaks runs");
    let transcript = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{transcript}{}",
        String::from_utf8_lossy(&output.stderr)
    );

    assert!(transcript.contains("<~  235 2.7.0"), "{transcript}");
    let messages = server.messages();
    assert_eq!(messages.len(), 1);
    let queued = format!("<~  250 2.0.0 Ok: queued as {}", messages[0].id);
    assert!(transcript.contains(&queued), "{transcript}");
}

#[tokio::test]
async fn swaks_delivers_in_plain_text() {
    let server = Server::start().await;
    let output = Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{}", server.address.port())])
        .args(["--from", "alice@example.org", "--to", "bob@example.net"])
        .args(["--helo", "swaks.example.org", "--timeout", "20"])
        .output()
        .await
        .expect("swaks runs");
    let transcript = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{transcript}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(server.messages().len(), 1);
}

#[tokio::test]
async fn rejects_auth_before_starttls() {
    let server = Server::start().await;
    let mut client = server.connect().await;
    let ehlo = client.expect("EHLO client.example.org", "250").await;
    assert!(ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    client
        .expect("AUTH PLAIN AG10YQBwYXNzd29yZA==", "538 5.7.11")
        .await;
    client.expect("AUTH LOGIN", "538 5.7.11").await;
}

#[tokio::test]
async fn ehlo_after_starttls_offers_auth_and_not_starttls() {
    let server = Server::start().await;
    let mut client = server.connect_tls().await;
    // The session starts over after TLS, so MAIL needs a new EHLO.
    client
        .expect("MAIL FROM:<alice@example.org>", "503 5.5.1")
        .await;
    let ehlo = client.expect("EHLO client.example.org", "250").await;
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    client.expect("STARTTLS", "503 5.5.1").await;
}

#[tokio::test]
async fn wrong_password_is_delayed_then_disconnected() {
    let server = Server::start().await;
    let mut client = server.connect_tls().await;
    client.expect("EHLO client.example.org", "250").await;
    let wrong = base64_plain(USER, "wrong password");

    let started = Instant::now();
    client
        .expect(&format!("AUTH PLAIN {wrong}"), "535 5.7.8")
        .await;
    let first = started.elapsed();
    client
        .expect(&format!("AUTH PLAIN {wrong}"), "535 5.7.8")
        .await;
    let second = started.elapsed() - first;
    client
        .expect(&format!("AUTH PLAIN {wrong}"), "535 5.7.8")
        .await;
    let closing = client.reply().await;

    assert!(first >= AUTH_DELAY, "first failure waited {first:?}");
    assert!(second >= AUTH_DELAY * 2, "second failure waited {second:?}");
    assert!(closing.starts_with("421 4.7.0"), "{closing}");
    assert!(client.closed().await);
}

#[tokio::test]
async fn unknown_user_is_rejected_like_wrong_password() {
    let server = Server::start().await;
    let mut client = server.connect_tls().await;
    client.expect("EHLO client.example.org", "250").await;
    let unknown = base64_plain("nobody", PASSWORD);
    client
        .expect(&format!("AUTH PLAIN {unknown}"), "535 5.7.8")
        .await;
    client.expect("AUTH FOO", "504 5.5.4").await;
    client.expect("AUTH LOGIN", "334 VXNlcm5hbWU6").await;
    client.expect("*", "501 5.0.0").await;
}

fn base64_plain(user: &str, password: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"))
}

#[tokio::test]
async fn rejects_relay_from_outside_relay_networks() {
    let server = Server::start_with(|config| {
        config.inbound.relay_networks = vec!["192.0.2.0/24".parse().unwrap()];
    })
    .await;
    let mut client = server.connect().await;
    client.expect("EHLO client.example.org", "250").await;
    client
        .expect("MAIL FROM:<alice@example.org>", "250 2.1.0")
        .await;
    client
        .expect("RCPT TO:<bob@example.net>", "550 5.7.1")
        .await;
    client.expect("DATA", "554 5.5.1").await;

    let mut mail_send = server.mail_send().connect_plain().await.unwrap();
    let message = Message::new("alice@example.org", ["bob@example.net"], &b"x\r\n"[..]);
    let error = mail_send.send(message).await.unwrap_err();
    assert!(error.to_string().contains("550"), "{error}");
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn require_tls_rejects_mail_until_starttls() {
    let server = Server::start_with(|config| config.inbound.require_tls = true).await;
    let mut client = server.connect().await;
    client.expect("EHLO client.example.org", "250").await;
    client
        .expect(
            "MAIL FROM:<alice@example.org>",
            "530 5.7.0 Must issue a STARTTLS command first",
        )
        .await;
    client.expect("STARTTLS", "220 2.0.0").await;
    let mut client = client.upgrade(&server.tls_connector()).await;
    client.expect("EHLO client.example.org", "250").await;
    client
        .expect("MAIL FROM:<alice@example.org>", "250 2.1.0")
        .await;
}

#[tokio::test]
async fn rejects_oversized_message_by_size_and_by_bytes() {
    let server = Server::start_with(|config| {
        config.inbound.max_message_size = ByteSize(4096);
    })
    .await;
    let mut client = server.connect().await;
    let ehlo = client.expect("EHLO client.example.org", "250").await;
    assert!(ehlo.contains("SIZE 4096"), "{ehlo}");
    client
        .expect("MAIL FROM:<alice@example.org> SIZE=5000", "552 5.3.4")
        .await;

    client
        .expect("MAIL FROM:<alice@example.org>", "250 2.1.0")
        .await;
    client
        .expect("RCPT TO:<bob@example.net>", "250 2.1.5")
        .await;
    client.expect("DATA", "354").await;
    let line = format!("{}\r\n", "y".repeat(78));
    client.send(line.repeat(100).as_bytes()).await;
    client.expect(".", "552 5.3.4").await;
    client.expect("NOOP", "250 2.0.0").await;
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn rejects_overlong_command_line() {
    let server = Server::start().await;
    let mut client = server.connect().await;
    let line = format!("EHLO {}", "a".repeat(3000));
    client.expect(&line, "500 5.5.2").await;
    client.expect("EHLO client.example.org", "250").await;
}

#[tokio::test]
async fn rejects_too_many_recipients() {
    let server = Server::start_with(|config| config.inbound.max_recipients = 2).await;
    let mut client = server.connect().await;
    client.expect("EHLO client.example.org", "250").await;
    client.expect("MAIL FROM:<alice@example.org>", "250").await;
    client
        .expect("RCPT TO:<one@example.net>", "250 2.1.5")
        .await;
    client
        .expect("RCPT TO:<two@example.net>", "250 2.1.5")
        .await;
    client
        .expect("RCPT TO:<three@example.net>", "452 4.5.3")
        .await;
    client.expect("DATA", "354").await;
    let reply = client.expect("Subject: x\r\n\r\nx\r\n.", "250 2.0.0").await;

    let messages = server.messages();
    assert_eq!(messages[0].id.as_str(), queued_id(&reply));
    assert_eq!(
        server.recipients(&messages[0]),
        ["one@example.net", "two@example.net"]
    );
}

#[tokio::test]
async fn rejects_commands_out_of_order() {
    let server = Server::start().await;
    let mut client = server.connect().await;
    client.expect("EHLO client.example.org", "250").await;
    client
        .expect("RCPT TO:<bob@example.net>", "503 5.5.1")
        .await;
    client.expect("MAIL FROM:<alice@example.org>", "250").await;
    client.expect("DATA", "554 5.5.1").await;
}

#[tokio::test]
async fn closes_after_bad_command_limit() {
    let server = Server::start_with(|config| config.inbound.max_bad_commands = 2).await;
    let mut client = server.connect().await;
    client.expect("XYZZY", "500 5.5.1").await;
    client.expect("XYZZY", "500 5.5.1").await;
    let closing = client.reply().await;
    assert!(closing.starts_with("421 4.7.0"), "{closing}");
    assert!(client.closed().await);
}

#[tokio::test]
async fn smuggled_transactions_are_never_stored() {
    let smuggled = "MAIL FROM:<eve@example.org>\r\nRCPT TO:<smuggled@example.net>\r\nDATA\r\n\
                    Subject: smuggled\r\n\r\nevil\r\n";
    let variants = [
        format!("Subject: a\r\n\r\nx\n.\n{smuggled}.\r\n"),
        format!("Subject: a\r\n\r\nx\r\n.\r{smuggled}.\r\n"),
        format!("Subject: a\r\n\r\nx\r.\r{smuggled}.\r\n"),
        format!("Subject: a\r\n\r\nx\n.\r\n{smuggled}.\r\n"),
        format!("Subject: a\r\n\r\nx\r\n.\n{smuggled}.\r\n"),
    ];
    for variant in &variants {
        let server = Server::start().await;
        let mut client = server.connect().await;
        client.expect("EHLO client.example.org", "250").await;
        client.expect("MAIL FROM:<alice@example.org>", "250").await;
        client.expect("RCPT TO:<bob@example.net>", "250").await;
        client.expect("DATA", "354").await;
        client.send(variant.as_bytes()).await;
        let reply = client.reply().await;
        client.expect("QUIT", "221 2.0.0").await;

        let messages = server.messages();
        assert!(
            messages.len() <= 1,
            "{variant:?} stored {} messages",
            messages.len()
        );
        for message in &messages {
            let recipients = server.recipients(message);
            assert!(
                !recipients
                    .iter()
                    .any(|address| address.contains("smuggled")),
                "{variant:?} stored {recipients:?}"
            );
        }
        assert!(reply.starts_with("550 5.6.0"), "{variant:?}: {reply}");
        assert!(messages.is_empty(), "{variant:?} stored a message");
    }
}

#[tokio::test]
async fn commands_pipelined_with_starttls_are_discarded() {
    let server = Server::start().await;
    let mut client = server.connect().await;
    client.expect("EHLO client.example.org", "250").await;
    client
        .send(b"STARTTLS\r\nMAIL FROM:<eve@example.org>\r\nRCPT TO:<smuggled@example.net>\r\n")
        .await;
    let reply = client.reply().await;
    assert!(reply.starts_with("220 2.0.0"), "{reply}");
    let mut client = client.upgrade(&server.tls_connector()).await;

    // Had the pipelined MAIL run, this EHLO would reply second and RCPT would be accepted.
    let ehlo = client
        .expect("EHLO client.example.org", "250-mx.example.org")
        .await;
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    client
        .expect("RCPT TO:<bob@example.net>", "503 5.5.1")
        .await;
    client.expect("DATA", "503 5.5.1").await;
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn idle_client_times_out() {
    let server = Server::start_with(|config| {
        config.inbound.command_timeout = ConfigDuration(Duration::from_millis(300));
    })
    .await;
    let mut client = server.connect().await;
    let reply = client.reply().await;
    assert!(reply.starts_with("421 4.4.2"), "{reply}");
    assert!(client.closed().await);
}

#[tokio::test]
async fn session_limit_rejects_extra_clients() {
    let server = Server::start_with(|config| config.inbound.max_sessions = 1).await;
    let mut first = server.connect().await;

    let stream = TcpStream::connect(server.address).await.unwrap();
    let mut second = Raw {
        stream: BufReader::new(stream),
    };
    let reply = second.reply().await;
    assert!(reply.starts_with("421 4.3.2"), "{reply}");
    first.expect("NOOP", "250 2.0.0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sessions_are_all_stored() {
    const SESSIONS: usize = 50;
    let server = Server::start_with(|config| config.inbound.max_sessions_per_client = SESSIONS);
    let server = Arc::new(server.await);
    let mut tasks = Vec::new();
    for index in 0..SESSIONS {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = server.mail_send().connect_plain().await.unwrap();
            let body = format!("Subject: message {index}\r\n\r\nHello\r\n");
            let recipient = format!("rcpt{index}@example.net");
            let message =
                Message::new("alice@example.org", [recipient.as_str()], body.into_bytes());
            let reply = client.send(message).await.unwrap();
            client.quit().await.unwrap();
            assert_eq!(reply.code, 250);
            queued_id(&reply.message)
        }));
    }
    let mut replied = HashSet::new();
    for task in tasks {
        replied.insert(task.await.unwrap());
    }

    let stored: HashSet<String> = server
        .messages()
        .iter()
        .map(|message| message.id.to_string())
        .collect();
    assert_eq!(replied.len(), SESSIONS);
    assert_eq!(stored, replied);
}

#[tokio::test]
async fn client_session_limit_spares_other_clients() {
    let server = Server::start_with(|config| config.inbound.max_sessions_per_client = 2).await;
    let mut first = server.connect().await;
    let _second = server.connect().await;

    let (mut third, reply) = server.connect_from("127.0.0.1").await;
    assert!(reply.starts_with("421 4.7.0"), "{reply}");
    assert!(third.closed().await);

    let (mut other, greeting) = server.connect_from("127.0.0.2").await;
    assert!(greeting.starts_with("220 mx.example.org"), "{greeting}");
    other.expect("NOOP", "250 2.0.0").await;
    first.expect("NOOP", "250 2.0.0").await;

    drop(first);
    // The slot is given back when the session ends, which follows the close shortly.
    let deadline = Instant::now() + REPLY_TIMEOUT;
    loop {
        let (_client, reply) = server.connect_from("127.0.0.1").await;
        if reply.starts_with("220 ") {
            break;
        }
        assert!(Instant::now() < deadline, "slot not given back: {reply}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn auth_failures_count_across_sessions() {
    let server = Server::start().await;
    let wrong = base64_plain(USER, "wrong password");
    let right = base64_plain(USER, PASSWORD);

    let mut client = server.connect_tls().await;
    client.expect("EHLO client.example.org", "250").await;
    for _ in 0..3 {
        client
            .expect(&format!("AUTH PLAIN {wrong}"), "535 5.7.8")
            .await;
    }
    let closing = client.reply().await;
    assert!(closing.starts_with("421 4.7.0"), "{closing}");

    // A new session from the same address gets 454 at once, even with the right password.
    let mut again = server.connect_tls().await;
    again.expect("EHLO client.example.org", "250").await;
    let started = Instant::now();
    again
        .expect(
            &format!("AUTH PLAIN {right}"),
            "454 4.7.0 too many authentication failures, try later",
        )
        .await;
    assert!(started.elapsed() < AUTH_DELAY, "{:?}", started.elapsed());

    // Another address is not affected.
    let mut other = server.connect_tls_from("127.0.0.2").await;
    other.expect("EHLO client.example.org", "250").await;
    other
        .expect(&format!("AUTH PLAIN {right}"), "235 2.7.0")
        .await;
}
