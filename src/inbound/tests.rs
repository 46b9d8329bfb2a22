//! In-memory session tests: each runs a real session over `tokio::io::duplex` with a real
//! spool on a temporary database, and reads stored rows back through `Store`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};
use tokio::sync::Notify;

use super::{InboundContext, run_session};
use crate::config::{Config, ConfigDuration};
use crate::queue::Spool;
use crate::queue::store::{MessageSummary, Store};
use crate::store::{MasterKeys, test_master_keys};

/// Time allowed for any one reply; a hang fails the test instead of blocking it.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

struct Client {
    _folder: tempfile::TempDir,
    database: PathBuf,
    keys: Arc<MasterKeys>,
    stream: BufReader<DuplexStream>,
}

impl Client {
    async fn start(config: Config) -> Client {
        Client::start_from(config, "127.0.0.1:40000").await
    }

    async fn start_from(mut config: Config, peer: &str) -> Client {
        let folder = tempfile::tempdir().unwrap();
        config.server.data_dir = folder.path().to_owned();
        let database = config.database_path();
        let keys = test_master_keys(&folder.path().join("keys"));
        let spool = Spool::start(&database, Arc::clone(&keys), Arc::new(Notify::new())).unwrap();
        let context = InboundContext::new(Arc::new(config), None, spool);
        let (client, server) = tokio::io::duplex(1 << 16);
        let peer: SocketAddr = peer.parse().unwrap();
        tokio::spawn(run_session(server, peer, Arc::new(context)));

        let mut client = Client {
            _folder: folder,
            database,
            keys,
            stream: BufReader::new(client),
        };
        let greeting = client.reply().await;
        assert!(greeting.starts_with("220 mx.example.org "), "{greeting}");
        client
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).await.unwrap();
    }

    /// Reads one reply, all its lines joined with `\n`; empty when the server closed.
    async fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let read = tokio::time::timeout(REPLY_TIMEOUT, self.stream.read_line(&mut line))
                .await
                .expect("no reply within the timeout")
                .unwrap();
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

    async fn command(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    async fn expect(&mut self, line: &str, expected: &str) -> String {
        let reply = self.command(line).await;
        assert!(
            reply.starts_with(expected),
            "{line:?}: expected {expected:?}, got {reply:?}"
        );
        reply
    }

    /// EHLO, MAIL and one RCPT, each expected to succeed.
    async fn open_transaction(&mut self, recipient: &str) {
        self.expect("EHLO client.example.org", "250").await;
        self.expect("MAIL FROM:<alice@example.org>", "250 2.1.0")
            .await;
        self.expect(&format!("RCPT TO:<{recipient}>"), "250 2.1.5")
            .await;
    }

    /// Reads whether the server closed the connection, without sending anything.
    async fn closed(&mut self) -> bool {
        self.reply().await.is_empty()
    }

    fn messages(&self) -> Vec<MessageSummary> {
        self.store().list().unwrap()
    }

    fn store(&self) -> Store {
        Store::open(&self.database, Arc::clone(&self.keys)).unwrap()
    }
}

fn config() -> Config {
    let mut config = Config::development();
    config.server.hostname = "mx.example.org".into();
    config
}

fn queued_id(reply: &str) -> String {
    let id = reply
        .strip_prefix("250 2.0.0 Ok: queued as ")
        .unwrap_or_else(|| panic!("not a queued reply: {reply}"));
    id.to_owned()
}

#[tokio::test]
async fn accepted_message_is_stored_with_received_header() {
    let mut client = Client::start(config()).await;
    client.open_transaction("bob@example.net").await;
    client
        .expect("DATA", "354 Start mail input; end with <CRLF>.<CRLF>")
        .await;
    let reply = client
        .command("Subject: hello\r\n\r\nHi Bob\r\n..dot line\r\n.")
        .await;
    let id = queued_id(&reply);

    let messages = client.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].id.as_str(), id);
    assert_eq!(messages[0].sender, "alice@example.org");
    assert_eq!(messages[0].client, "client.example.org[127.0.0.1]:40000");
    assert!(!messages[0].body_8bit);

    let store = client.store();
    let body = store.body(&messages[0].id).unwrap().unwrap();
    let body = String::from_utf8(body).unwrap();
    assert!(
        body.starts_with("Received: from client.example.org ([127.0.0.1])\r\n"),
        "{body}"
    );
    assert!(body.contains(&format!("with ESMTP id {id}")), "{body}");
    assert!(body.contains("\tfor <bob@example.net>;"), "{body}");
    assert!(
        body.ends_with("Subject: hello\r\n\r\nHi Bob\r\n.dot line\r\n"),
        "{body}"
    );

    let recipients = store.recipients(&messages[0].id).unwrap();
    let addresses: Vec<&str> = recipients.iter().map(|row| row.address.as_str()).collect();
    assert_eq!(addresses, ["bob@example.net"]);
}

#[tokio::test]
async fn received_header_omits_for_with_two_recipients() {
    let mut client = Client::start(config()).await;
    client.open_transaction("bob@example.net").await;
    client
        .expect("RCPT TO:<carol@example.net>", "250 2.1.5")
        .await;
    client.expect("DATA", "354").await;
    client
        .expect("Subject: two\r\n\r\nx\r\n.", "250 2.0.0")
        .await;

    let store = client.store();
    let id = client.messages()[0].id.clone();
    let body = String::from_utf8(store.body(&id).unwrap().unwrap()).unwrap();
    assert!(!body.contains("for <"), "{body}");
    assert_eq!(store.recipients(&id).unwrap().len(), 2);
}

#[tokio::test]
async fn ehlo_advertises_extensions_without_tls() {
    let mut client = Client::start(config()).await;
    let reply = client.command("EHLO client.example.org").await;
    let lines: Vec<&str> = reply.lines().collect();

    assert_eq!(lines[0], "250-mx.example.org");
    for extension in [
        "PIPELINING",
        "SIZE 35000000",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
    ] {
        assert!(
            lines.iter().any(|line| line[4..] == *extension),
            "{extension} missing from {reply}"
        );
    }
    // No TLS acceptor, so no STARTTLS, and no TLS, so no AUTH.
    assert!(!reply.contains("STARTTLS"), "{reply}");
    assert!(!reply.contains("AUTH"), "{reply}");
}

#[tokio::test]
async fn helo_gets_plain_reply_and_smtp_protocol() {
    let mut client = Client::start(config()).await;
    client
        .expect("HELO client.example.org", "250 mx.example.org")
        .await;
    client
        .expect("MAIL FROM:<alice@example.org>", "250 2.1.0")
        .await;
    client
        .expect("RCPT TO:<bob@example.net>", "250 2.1.5")
        .await;
    client.expect("DATA", "354").await;
    client.expect("Subject: x\r\n\r\nx\r\n.", "250 2.0.0").await;

    let store = client.store();
    let id = client.messages()[0].id.clone();
    let body = String::from_utf8(store.body(&id).unwrap().unwrap()).unwrap();
    assert!(body.contains(" with SMTP id "), "{body}");
}

#[tokio::test]
async fn mail_parameters_need_ehlo() {
    let mut client = Client::start(config()).await;
    client.expect("HELO client.example.org", "250").await;
    client
        .expect("MAIL FROM:<alice@example.org> BODY=8BITMIME", "555 5.5.4")
        .await;
}

#[tokio::test]
async fn rejects_mail_before_helo() {
    let mut client = Client::start(config()).await;
    client
        .expect("MAIL FROM:<alice@example.org>", "503 5.5.1")
        .await;
}

#[tokio::test]
async fn rejects_rcpt_before_mail() {
    let mut client = Client::start(config()).await;
    client.expect("EHLO client.example.org", "250").await;
    client
        .expect("RCPT TO:<bob@example.net>", "503 5.5.1")
        .await;
}

#[tokio::test]
async fn rejects_second_mail_in_transaction() {
    let mut client = Client::start(config()).await;
    client.expect("EHLO client.example.org", "250").await;
    client
        .expect("MAIL FROM:<alice@example.org>", "250 2.1.0")
        .await;
    client
        .expect("MAIL FROM:<alice@example.org>", "503 5.5.1")
        .await;
}

#[tokio::test]
async fn rejects_data_without_recipients() {
    let mut client = Client::start(config()).await;
    client.expect("EHLO client.example.org", "250").await;
    client.expect("DATA", "503 5.5.1").await;
    client
        .expect("MAIL FROM:<alice@example.org>", "250 2.1.0")
        .await;
    client.expect("DATA", "554 5.5.1").await;
}

#[tokio::test]
async fn rset_ends_transaction() {
    let mut client = Client::start(config()).await;
    client.open_transaction("bob@example.net").await;
    client.expect("RSET", "250 2.0.0").await;
    client
        .expect("RCPT TO:<bob@example.net>", "503 5.5.1")
        .await;
    client
        .expect("MAIL FROM:<alice@example.org>", "250 2.1.0")
        .await;
}

#[tokio::test]
async fn simple_commands_have_enhanced_codes() {
    let mut client = Client::start(config()).await;
    client.expect("NOOP", "250 2.0.0").await;
    client.expect("VRFY bob", "252 2.1.5").await;
    client.expect("HELP", "214 2.0.0").await;
    client.expect("EXPN staff", "502 5.5.1").await;
    client.expect("QUIT", "221 2.0.0").await;
    assert!(client.closed().await);
}

#[tokio::test]
async fn rejects_unknown_command() {
    let mut client = Client::start(config()).await;
    client.expect("FROB", "500 5.5.1").await;
}

#[tokio::test]
async fn rejects_bad_argument_syntax() {
    let mut client = Client::start(config()).await;
    client.expect("EHLO client.example.org", "250").await;
    client.expect("MAIL alice@example.org", "501 5.5.4").await;
    client.expect("EHLO", "501 5.5.4").await;
}

#[tokio::test]
async fn rejects_invalid_addresses() {
    let mut client = Client::start(config()).await;
    client.expect("EHLO client.example.org", "250").await;
    client
        .expect("MAIL FROM:<alice@@example.org>", "501 5.1.7")
        .await;
    client
        .expect("MAIL FROM:<alice@example.org>", "250 2.1.0")
        .await;
    client
        .expect("RCPT TO:<bob..x@example.net>", "501 5.1.3")
        .await;
    client.expect("RCPT TO:<>", "501 5.1.3").await;
}

#[tokio::test]
async fn rejects_bare_lf_in_command_line() {
    let mut client = Client::start(config()).await;
    client.send(b"NOOP\n").await;
    let reply = client.reply().await;
    assert!(reply.starts_with("500 5.5.2"), "{reply}");
    client.send(b"NOOP\rNOOP\r\n").await;
    let reply = client.reply().await;
    assert!(reply.starts_with("500 5.5.2"), "{reply}");
}

#[tokio::test]
async fn rejects_overlong_command_line_and_keeps_reading() {
    let mut client = Client::start(config()).await;
    let long = format!("NOOP {}", "x".repeat(5000));
    client.expect(&long, "500 5.5.2").await;
    client.expect("NOOP", "250 2.0.0").await;
}

#[tokio::test]
async fn closes_after_max_bad_commands() {
    let mut config = config();
    config.inbound.max_bad_commands = 3;
    let mut client = Client::start(config).await;
    client.expect("FROB", "500 5.5.1").await;
    client.expect("FROB", "500 5.5.1").await;
    client.expect("FROB", "500 5.5.1").await;
    let reply = client.reply().await;
    assert!(reply.starts_with("421 4.7.0"), "{reply}");
    assert!(client.closed().await);
}

#[tokio::test]
async fn rejects_relay_from_outside_relay_networks() {
    let mut client = Client::start_from(config(), "192.0.2.10:40000").await;
    client.expect("EHLO client.example.org", "250").await;
    client
        .expect("MAIL FROM:<alice@example.org>", "250 2.1.0")
        .await;
    client
        .expect("RCPT TO:<bob@example.net>", "550 5.7.1")
        .await;
    client.expect("DATA", "554 5.5.1").await;
    assert!(client.messages().is_empty());
}

#[tokio::test]
async fn relay_networks_match_ipv4_mapped_peers() {
    let mut client = Client::start_from(config(), "[::ffff:127.0.0.1]:40000").await;
    client.open_transaction("bob@example.net").await;
}

#[tokio::test]
async fn require_tls_rejects_mail_before_starttls() {
    let mut config = config();
    config.inbound.require_tls = true;
    let mut client = Client::start(config).await;
    client.expect("EHLO client.example.org", "250").await;
    client
        .expect(
            "MAIL FROM:<alice@example.org>",
            "530 5.7.0 Must issue a STARTTLS command first",
        )
        .await;
}

#[tokio::test]
async fn rejects_auth_before_starttls() {
    let mut config = config();
    config.inbound.users = vec![crate::config::SmtpUser {
        name: "mta".into(),
        password_hash: "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo".into(),
    }];
    let mut client = Client::start(config).await;
    let ehlo = client.expect("EHLO client.example.org", "250").await;
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    client
        .expect("AUTH PLAIN AG10YQBzZWNyZXQ=", "538 5.7.11")
        .await;
}

#[tokio::test]
async fn starttls_without_certificate_is_not_available() {
    let mut client = Client::start(config()).await;
    client.expect("EHLO client.example.org", "250").await;
    client.expect("STARTTLS", "502 5.5.1").await;
}

#[tokio::test]
async fn rejects_size_parameter_over_limit() {
    let mut config = config();
    config.inbound.max_message_size = crate::config::ByteSize(10_000);
    let mut client = Client::start(config).await;
    client.expect("EHLO client.example.org", "250").await;
    client
        .expect("MAIL FROM:<alice@example.org> SIZE=10001", "552 5.3.4")
        .await;
    client
        .expect("MAIL FROM:<alice@example.org> SIZE=10000", "250 2.1.0")
        .await;
}

#[tokio::test]
async fn rejects_unsupported_parameters() {
    let mut client = Client::start(config()).await;
    client.expect("EHLO client.example.org", "250").await;
    for line in [
        "MAIL FROM:<alice@example.org> FOO=BAR",
        "MAIL FROM:<alice@example.org> RET=FULL",
        "MAIL FROM:<alice@example.org> REQUIRETLS",
        "MAIL FROM:<alice@example.org> BODY=BINARYMIME",
    ] {
        client.expect(line, "555 5.5.4").await;
    }
    client.expect("MAIL FROM:<alice@example.org>", "250").await;
    client
        .expect("RCPT TO:<bob@example.net> NOTIFY=NEVER", "555 5.5.4")
        .await;
}

#[tokio::test]
async fn body_and_smtputf8_parameters_are_stored() {
    let mut client = Client::start(config()).await;
    client.expect("EHLO client.example.org", "250").await;
    client
        .expect(
            "MAIL FROM:<élodie@example.org> BODY=8BITMIME SMTPUTF8",
            "250 2.1.0",
        )
        .await;
    client
        .expect("RCPT TO:<zoë@example.net>", "250 2.1.5")
        .await;
    client.expect("DATA", "354").await;
    client.expect("Subject: x\r\n\r\nx\r\n.", "250 2.0.0").await;

    let messages = client.messages();
    assert_eq!(messages[0].sender, "élodie@example.org");
    assert!(messages[0].body_8bit);
    assert!(messages[0].smtputf8);
}

#[tokio::test]
async fn eight_bit_body_is_detected() {
    let mut client = Client::start(config()).await;
    client.open_transaction("bob@example.net").await;
    client.expect("DATA", "354").await;
    client.send(b"Subject: x\r\n\r\ncaf\xc3\xa9\r\n.\r\n").await;
    let reply = client.reply().await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    assert!(client.messages()[0].body_8bit);
}

#[tokio::test]
async fn rejects_non_ascii_address_without_smtputf8() {
    let mut client = Client::start(config()).await;
    client.expect("EHLO client.example.org", "250").await;
    client
        .expect("MAIL FROM:<élodie@example.org>", "553 5.6.7")
        .await;
    client.expect("MAIL FROM:<alice@example.org>", "250").await;
    client
        .expect("RCPT TO:<zoë@example.net>", "553 5.6.7")
        .await;
}

#[tokio::test]
async fn accepts_null_sender() {
    let mut client = Client::start(config()).await;
    client.expect("EHLO client.example.org", "250").await;
    client
        .expect("MAIL FROM:<>", "250 2.1.0 Sender <> ok")
        .await;
    client.expect("RCPT TO:<bob@example.net>", "250").await;
    client.expect("DATA", "354").await;
    client.expect("Subject: x\r\n\r\nx\r\n.", "250 2.0.0").await;
    assert_eq!(client.messages()[0].sender, "");
}

#[tokio::test]
async fn limits_recipients_per_transaction() {
    let mut config = config();
    config.inbound.max_recipients = 2;
    let mut client = Client::start(config).await;
    client.open_transaction("one@example.net").await;
    client
        .expect("RCPT TO:<two@example.net>", "250 2.1.5")
        .await;
    client
        .expect("RCPT TO:<three@example.net>", "452 4.5.3")
        .await;
}

#[tokio::test]
async fn duplicate_recipient_is_stored_once() {
    let mut client = Client::start(config()).await;
    client.open_transaction("bob@example.net").await;
    client
        .expect("RCPT TO:<bob@EXAMPLE.net>", "250 2.1.5")
        .await;
    client
        .expect("RCPT TO:<Bob@example.net>", "250 2.1.5")
        .await;
    client.expect("DATA", "354").await;
    client.expect("Subject: x\r\n\r\nx\r\n.", "250 2.0.0").await;

    let store = client.store();
    let id = client.messages()[0].id.clone();
    let recipients = store.recipients(&id).unwrap();
    let addresses: Vec<&str> = recipients.iter().map(|row| row.address.as_str()).collect();
    assert_eq!(addresses, ["bob@example.net", "Bob@example.net"]);
}

#[tokio::test]
async fn rejects_bare_line_breaks_in_data() {
    let payloads: &[&[u8]] = &[
        b"Subject: a\r\n\r\nx\n.\nMAIL FROM:<eve@example.org>\r\nRCPT TO:<smuggled@example.net>\r\nDATA\r\ny\r\n.\r\n",
        b"Subject: a\r\n\r\nx\r\n.\rMAIL FROM:<eve@example.org>\r\nRCPT TO:<smuggled@example.net>\r\nDATA\r\ny\r\n.\r\n",
        b"Subject: a\r\n\r\nx\r.\r\nMAIL FROM:<eve@example.org>\r\nRCPT TO:<smuggled@example.net>\r\nDATA\r\ny\r\n.\r\n",
        b"Subject: a\r\n\r\nx\n.\r\nMAIL FROM:<eve@example.org>\r\nRCPT TO:<smuggled@example.net>\r\nDATA\r\ny\r\n.\r\n",
    ];
    for payload in payloads {
        let mut client = Client::start(config()).await;
        client.open_transaction("bob@example.net").await;
        client.expect("DATA", "354").await;
        client.send(payload).await;
        let reply = client.reply().await;
        let shown = String::from_utf8_lossy(payload);
        assert!(reply.starts_with("550 5.6.0"), "{shown:?}: {reply}");
        // The next reply is the one for this NOOP, so nothing in the payload ran as a command.
        client.expect("NOOP", "250 2.0.0").await;
        assert!(client.messages().is_empty(), "{shown:?} stored a message");
    }
}

#[tokio::test]
async fn rejects_oversized_data_after_reading_it() {
    let mut config = config();
    config.inbound.max_message_size = crate::config::ByteSize(2000);
    let mut client = Client::start(config).await;
    client.open_transaction("bob@example.net").await;
    client.expect("DATA", "354").await;
    let line = format!("{}\r\n", "x".repeat(98));
    client.send(line.repeat(30).as_bytes()).await;
    client.expect(".", "552 5.3.4").await;
    client.expect("NOOP", "250 2.0.0").await;
    assert!(client.messages().is_empty());
}

#[tokio::test]
async fn rejects_long_text_line() {
    let mut client = Client::start(config()).await;
    client.open_transaction("bob@example.net").await;
    client.expect("DATA", "354").await;
    let body = format!("Subject: x\r\n\r\n{}\r\n.", "x".repeat(999));
    client.expect(&body, "552 5.3.4").await;
    assert!(client.messages().is_empty());
}

#[tokio::test]
async fn spool_failure_replies_451() {
    let mut client = Client::start(config()).await;
    let database = rusqlite::Connection::open(&client.database).unwrap();
    database
        .execute_batch(
            "CREATE TRIGGER reject_insert BEFORE INSERT ON messages
             BEGIN SELECT RAISE(ABORT, 'disk full'); END;",
        )
        .unwrap();
    client.open_transaction("bob@example.net").await;
    client.expect("DATA", "354").await;
    let reply = client.expect("Subject: x\r\n\r\nx\r\n.", "451 4.3.0").await;
    assert!(!reply.contains("disk full"), "{reply}");
}

#[tokio::test]
async fn command_timeout_closes_with_421() {
    let mut config = config();
    config.inbound.command_timeout = ConfigDuration(Duration::from_millis(200));
    let mut client = Client::start(config).await;
    let reply = client.reply().await;
    assert!(reply.starts_with("421 4.4.2"), "{reply}");
    assert!(client.closed().await);
}

#[tokio::test]
async fn data_timeout_closes_with_421() {
    let mut config = config();
    config.inbound.data_timeout = ConfigDuration(Duration::from_millis(200));
    let mut client = Client::start(config).await;
    client.open_transaction("bob@example.net").await;
    client.expect("DATA", "354").await;
    client.send(b"Subject: slow\r\n").await;
    let reply = client.reply().await;
    assert!(reply.starts_with("421 4.4.2"), "{reply}");
    assert!(client.messages().is_empty());
}

#[tokio::test]
async fn pipelined_commands_get_replies_in_order() {
    let mut client = Client::start(config()).await;
    client.expect("EHLO client.example.org", "250").await;
    client
        .send(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n")
        .await;
    for expected in ["250 2.1.0", "250 2.1.5", "354"] {
        let reply = client.reply().await;
        assert!(
            reply.starts_with(expected),
            "expected {expected}, got {reply}"
        );
    }
    client.expect("Subject: x\r\n\r\nx\r\n.", "250 2.0.0").await;
}

/// Counts the fields named `name=` in a mail log line.
fn field_count(line: &str, name: &str) -> usize {
    line.match_indices(&format!("{name}=")).count()
}

#[test]
fn acceptance_line_resists_forged_fields() {
    let client = crate::envelope::ClientInfo {
        addr: "127.0.0.1:40000".parse().unwrap(),
        helo: "fake.host[10.0.0.1]:25, tls=TLSv1.3/verified".into(),
        tls: None,
        auth_user: Some("mta failures=0, auth=admin".into()),
    };
    let id = crate::envelope::QueueId::parse("0123456789ABCDEF").unwrap();
    let sender = "\"x>, relay=mx.nhs.net[1.2.3.4]:25, status=sent\"@partner.example";

    let line = super::data::acceptance_line(&id, sender, 120, 1, &client);

    for field in ["from", "client", "tls", "auth", "relay", "status"] {
        let expected = usize::from(!matches!(field, "relay" | "status"));
        assert_eq!(field_count(&line, field), expected, "{field}= in {line}");
    }
    assert!(
        line.contains(
            "client=fake.host[10.0.0.1]:25\\x2c\\x20tls\\x3dTLSv1.3/verified[127.0.0.1]:40000, "
        ),
        "{line}"
    );
}

#[test]
fn display_address_cannot_end_its_field() {
    let forged = "\"x>, relay=mx.nhs.net[1.2.3.4]:25, status=sent\"@partner.example";

    let shown = crate::envelope::display_address(forged);

    assert_eq!(shown.matches('>').count(), 1, "{shown}");
    assert!(shown.ends_with("@partner.example>"), "{shown}");
    assert!(!shown.contains(", "), "{shown}");
    assert!(!shown.contains('='), "{shown}");
}

#[tokio::test]
async fn rejects_nul_byte_in_data() {
    let payloads: &[&[u8]] = &[
        b"Subject: a\r\n\r\nx\x00y\r\n.\r\n",
        b"Subject: a\r\n\r\nx\r\n.\x00\r\n.\r\n",
    ];
    for payload in payloads {
        let mut client = Client::start(config()).await;
        client.open_transaction("bob@example.net").await;
        client.expect("DATA", "354").await;
        client.send(payload).await;
        let reply = client.reply().await;
        let shown = String::from_utf8_lossy(payload);
        assert!(reply.starts_with("554 5.6.0"), "{shown:?}: {reply}");
        client.expect("NOOP", "250 2.0.0").await;
        assert!(client.messages().is_empty(), "{shown:?} stored a message");
    }
}

#[tokio::test]
async fn postmaster_sender_is_not_null_sender() {
    let mut client = Client::start(config()).await;
    client.expect("EHLO client.example.org", "250").await;
    for sender in ["<postmaster>", "<PostMaster>"] {
        client
            .expect(&format!("MAIL FROM:{sender}"), "501 5.1.7")
            .await;
    }
    client.expect("MAIL FROM:<alice>", "501 5.1.7").await;
    client
        .expect("MAIL FROM:<>", "250 2.1.0 Sender <> ok")
        .await;
}

#[tokio::test]
async fn postmaster_recipient_is_configured_postmaster() {
    let mut config = config();
    config.server.postmaster = "hostmaster@trust.example".into();
    let mut client = Client::start(config).await;
    client.expect("EHLO client.example.org", "250").await;
    client.expect("MAIL FROM:<alice@example.org>", "250").await;
    client
        .expect(
            "RCPT TO:<POSTMASTER>",
            "250 2.1.5 Recipient <hostmaster@trust.example> ok",
        )
        .await;
    client.expect("RCPT TO:<bob>", "501 5.1.3").await;
    client.expect("DATA", "354").await;
    client.expect("Subject: x\r\n\r\nx\r\n.", "250 2.0.0").await;

    let store = client.store();
    let id = client.messages()[0].id.clone();
    let recipients = store.recipients(&id).unwrap();
    let addresses: Vec<&str> = recipients.iter().map(|row| row.address.as_str()).collect();
    assert_eq!(addresses, ["hostmaster@trust.example"]);
}

#[tokio::test]
async fn rejects_invalid_domains() {
    let mut config = config();
    config.inbound.max_bad_commands = 100;
    let mut client = Client::start(config).await;
    client.expect("EHLO client.example.org", "250").await;
    for domain in ["", "-bad-.example", ".example", "exa mple", "a_b..example"] {
        client
            .expect(&format!("MAIL FROM:<x@{domain}>"), "501 5.1.7")
            .await;
    }
    client.expect("MAIL FROM:<alice@example.org>", "250").await;
    for domain in ["", "-bad-.example", ".example", "exa mple", "[192.0.2.300]"] {
        client
            .expect(&format!("RCPT TO:<x@{domain}>"), "501 5.1.3")
            .await;
    }
    client.expect("DATA", "554 5.5.1").await;
}

#[tokio::test]
async fn rejects_address_literals_at_rcpt() {
    let mut client = Client::start(config()).await;
    client.expect("EHLO client.example.org", "250").await;
    client
        .expect("MAIL FROM:<alice@[192.0.2.1]>", "550 5.1.8")
        .await;
    client.expect("MAIL FROM:<alice@example.org>", "250").await;
    client
        .expect("RCPT TO:<bob@[192.0.2.1]>", "550 5.1.2")
        .await;
    client
        .expect("RCPT TO:<bob@[IPv6:2001:db8::1]>", "550 5.1.2")
        .await;
}

#[tokio::test]
async fn accepts_utf8_domain_under_smtputf8() {
    let mut client = Client::start(config()).await;
    client.expect("EHLO client.example.org", "250").await;
    client
        .expect("MAIL FROM:<alice@example.org> SMTPUTF8", "250")
        .await;
    client
        .expect("RCPT TO:<jürgen@bücher.example>", "250 2.1.5")
        .await;
    client
        .expect("RCPT TO:<bob@nhs\u{3002}net>", "501 5.1.3")
        .await;
}

#[tokio::test]
async fn rejects_invalid_utf8_in_address() {
    let mut client = Client::start(config()).await;
    client.expect("EHLO client.example.org", "250").await;
    client.send(b"MAIL FROM:<\xff\xfea@example.org>\r\n").await;
    let reply = client.reply().await;
    assert!(reply.starts_with("553 5.6.7"), "{reply}");
    client
        .expect("MAIL FROM:<alice@example.org> SMTPUTF8", "250")
        .await;
    for recipient in [&b"\xff\xfeinvalid@example.net"[..], b"bob@ex\xc3ample.net"] {
        let mut line = b"RCPT TO:<".to_vec();
        line.extend_from_slice(recipient);
        line.extend_from_slice(b">\r\n");
        client.send(&line).await;
        let reply = client.reply().await;
        assert!(reply.starts_with("553 5.6.7"), "{reply}");
    }
    client.expect("DATA", "554 5.5.1").await;
}

#[tokio::test]
async fn rejects_control_characters_in_address() {
    let mut client = Client::start(config()).await;
    client.expect("EHLO client.example.org", "250").await;
    client
        .expect("MAIL FROM:<\"a\u{1}b\"@example.org>", "501 5.1.7")
        .await;
    client.expect("MAIL FROM:<alice@example.org>", "250").await;
    client
        .expect("RCPT TO:<\"a\u{7f}b\"@example.net>", "501 5.1.3")
        .await;
}

#[tokio::test]
async fn size_parameter_values() {
    let mut config = config();
    config.inbound.max_message_size = crate::config::ByteSize(10_000);
    let mut client = Client::start(config).await;
    client.expect("EHLO client.example.org", "250").await;
    for size in [
        "99999999999999999999999",
        "18446744073709551615",
        "4294967296",
    ] {
        client
            .expect(
                &format!("MAIL FROM:<alice@example.org> SIZE={size}"),
                "552 5.3.4",
            )
            .await;
    }
    for size in ["", "12x", "-1"] {
        client
            .expect(
                &format!("MAIL FROM:<alice@example.org> SIZE={size}"),
                "501 5.5.4",
            )
            .await;
    }
    client
        .expect("MAIL FROM:<alice@example.org> SIZE=9999", "250 2.1.0")
        .await;
}
