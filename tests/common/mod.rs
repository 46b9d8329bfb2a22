//! Test support for delivery and other SMTP tests: real components on loopback only.
//!
//! - [`TestPki`]: a CA and server certificates made with rcgen and written to a temporary
//!   folder: signed by the CA ([`TestPki::server`]), self-signed, expired, or for any
//!   other name. The CA file is [`TestPki::CA_FILE`] inside [`TestPki::dir`], so a config
//!   with `server.keys_dir = pki.dir()` and `delivery.trust_anchors = [CA_FILE]` trusts it.
//! - [`SmtpServer`]: a scripted SMTP receiver on `127.0.0.1:0`. A [`ServerScript`] sets
//!   the EHLO capabilities, or rejects EHLO. Its [`StartTlsMode`] leaves STARTTLS off,
//!   presents a certificate, rejects STARTTLS or breaks the handshake. It can set the
//!   replies to MAIL, to chosen RCPTs and to the end of data, inject a [`Fault`] (drop
//!   the connection mid-DATA or stall after DATA), and send extra bytes right after its
//!   220 to STARTTLS.
//!   The server records every command with the TLS state it arrived in, and every message
//!   it accepted; [`SmtpServer::wait_for_messages`] waits for them with a time limit.
//! - [`DnsServer`]: an authoritative DNS server on `127.0.0.1:0` (UDP and TCP on the same
//!   port) that answers from a [`Zone`]: MX, A, AAAA, TLSA, null MX, NXDOMAIN and
//!   SERVFAIL, with the AD bit set for names marked [`Zone::authenticated`].
//! - [`SmtpSink`]: Postfix's `smtp-sink` on a free loopback port.
//! - [`delivery_config`] and [`job`]: a config pointed at those servers, and a job.
//!
//! Every server stops when its handle is dropped.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as ProcessCommand};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, MX, TLSA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sealgate::config::{Config, ConfigDuration};
use sealgate::delivery::DeliveryJob;
use sealgate::policy::TlsRequirement;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// Queue id used by [`job`].
pub const QUEUE_ID: &str = "0123456789ABCDEF";

/// Envelope sender used by [`job`].
pub const SENDER: &str = "clinic@org.test";

/// Installs a log subscriber that writes to the test output; `RUST_LOG` sets the filter.
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .with_ansi(false)
        .try_init();
}

// ---------------------------------------------------------------------------------------
// PKI

/// A test CA and the certificates it signs, written to a temporary folder.
pub struct TestPki {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    ca_certificate: CertificateDer<'static>,
}

/// A server certificate chain and key, as files and as a TLS acceptor config.
#[derive(Clone)]
pub struct ServerIdentity {
    /// PEM certificate chain (leaf first).
    pub certificate_path: PathBuf,
    /// PEM PKCS#8 private key.
    pub key_path: PathBuf,
    /// A rustls server config that presents this certificate.
    pub tls: Arc<rustls::ServerConfig>,
}

impl TestPki {
    /// File name of the CA certificate inside [`TestPki::dir`].
    pub const CA_FILE: &'static str = "ca.pem";

    /// Creates a CA and writes its certificate to a new temporary folder.
    pub fn new() -> TestPki {
        let dir = tempfile::tempdir().expect("create temporary folder");
        let key = KeyPair::generate().expect("generate CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        // A name of its own per CA, so that a certificate from another test's CA is an
        // unknown issuer rather than a bad signature under the same name.
        let folder = dir.path().file_name().unwrap_or_default().to_string_lossy();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("sealgate test CA {folder}"),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let certificate = params.self_signed(&key).expect("self-sign CA");
        std::fs::write(dir.path().join(Self::CA_FILE), certificate.pem()).expect("write CA");
        TestPki {
            dir,
            issuer: Issuer::new(params, key),
            ca_certificate: certificate.der().clone(),
        }
    }

    /// Returns the folder that contains the CA and every certificate made so far.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Returns the CA certificate.
    pub fn ca_certificate(&self) -> &CertificateDer<'static> {
        &self.ca_certificate
    }

    /// Issues a certificate for `name`, signed by the CA and valid now.
    pub fn server(&self, name: &str) -> ServerIdentity {
        self.issue(name, "signed", |params| params, true)
    }

    /// Issues a certificate for `name`, signed by the CA, that expired in 2021.
    pub fn expired(&self, name: &str) -> ServerIdentity {
        self.issue(
            name,
            "expired",
            |mut params| {
                params.not_before = rcgen::date_time_ymd(2020, 1, 1);
                params.not_after = rcgen::date_time_ymd(2021, 1, 1);
                params
            },
            true,
        )
    }

    /// Issues a certificate for `name`, signed by the CA, that is itself marked as a CA,
    /// which a server must not present as its own certificate.
    pub fn ca_flagged(&self, name: &str) -> ServerIdentity {
        self.issue(
            name,
            "ca-flagged",
            |mut params| {
                params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                params
            },
            true,
        )
    }

    /// Issues a certificate for `name`, signed by the CA, and presents the CA certificate
    /// after it in the chain, as DANE-TA servers must.
    pub fn server_with_ca(&self, name: &str) -> ServerIdentity {
        self.issue(name, "with-ca", |params| params, true)
    }

    /// Makes a self-signed certificate for `name`, which no trust anchor covers.
    pub fn self_signed(&self, name: &str) -> ServerIdentity {
        self.issue(name, "self-signed", |params| params, false)
    }

    fn issue(
        &self,
        name: &str,
        kind: &str,
        adjust: impl FnOnce(CertificateParams) -> CertificateParams,
        signed_by_ca: bool,
    ) -> ServerIdentity {
        let key = KeyPair::generate().expect("generate server key");
        let params = adjust(CertificateParams::new(vec![name.to_owned()]).expect("server params"));
        let certificate = if signed_by_ca {
            params.signed_by(&key, &self.issuer)
        } else {
            params.self_signed(&key)
        }
        .expect("issue server certificate");

        let stem = format!("{name}-{kind}");
        let certificate_path = self.dir().join(format!("{stem}.crt"));
        let key_path = self.dir().join(format!("{stem}.key"));
        std::fs::write(&certificate_path, certificate.pem()).expect("write certificate");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");

        let mut chain = vec![certificate.der().clone()];
        if kind == "with-ca" {
            chain.push(self.ca_certificate.clone());
        }
        let private_key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, private_key)
            .expect("server TLS config");
        ServerIdentity {
            certificate_path,
            key_path,
            tls: Arc::new(tls),
        }
    }
}

impl Default for TestPki {
    fn default() -> Self {
        TestPki::new()
    }
}

// ---------------------------------------------------------------------------------------
// Scripted SMTP server

/// What the server does when the client sends STARTTLS.
#[derive(Clone, Default)]
pub enum StartTlsMode {
    /// STARTTLS is not offered.
    #[default]
    Off,
    /// STARTTLS is offered and the handshake presents this certificate.
    Certificate(ServerIdentity),
    /// STARTTLS is offered but rejected with `454 4.7.0`, and the session goes on in clear
    /// text.
    Rejected,
    /// STARTTLS is offered and accepted with 220, then the server sends bytes that are not
    /// TLS and closes the connection, so the handshake fails.
    BrokenHandshake,
}

/// A fault the server injects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    /// Behave.
    #[default]
    None,
    /// Close the connection after the first line of message data.
    DropMidData,
    /// Read the whole message and never send the final reply.
    StallAfterData,
}

/// How the server behaves. `ServerScript::default()` offers 8BITMIME and SMTPUTF8, no
/// STARTTLS, and accepts every command.
#[derive(Clone)]
pub struct ServerScript {
    /// STARTTLS offer and certificate.
    pub starttls: StartTlsMode,
    /// Reject EHLO with `502 5.5.2`, so that the client must fall back to HELO.
    /// Default: false.
    pub reject_ehlo: bool,
    /// Offer 8BITMIME. Default: true.
    pub eightbitmime: bool,
    /// Offer SMTPUTF8. Default: true.
    pub smtputf8: bool,
    /// Offer `SIZE n`. Default: none.
    pub size: Option<usize>,
    /// Whole reply lines for chosen recipients, such as `("b@x.test", "550 5.1.1 no")`.
    pub rcpt_replies: Vec<(String, String)>,
    /// Reply line for MAIL FROM instead of `250`.
    pub mail_reply: Option<String>,
    /// Reply line for the end of data instead of `250`.
    pub data_reply: Option<String>,
    /// A fault to inject.
    pub fault: Fault,
    /// Inject the fault on the first connection only, so a retry succeeds. Default: false.
    pub fault_first_only: bool,
    /// Bytes sent right after `220` to STARTTLS in the same write, before the handshake.
    pub inject_before_handshake: Option<Vec<u8>>,
}

impl Default for ServerScript {
    fn default() -> Self {
        ServerScript {
            starttls: StartTlsMode::Off,
            reject_ehlo: false,
            eightbitmime: true,
            smtputf8: true,
            size: None,
            rcpt_replies: Vec::new(),
            mail_reply: None,
            data_reply: None,
            fault: Fault::None,
            fault_first_only: false,
            inject_before_handshake: None,
        }
    }
}

impl ServerScript {
    /// Builds the default script with STARTTLS offered, presenting `identity`.
    pub fn with_tls(identity: ServerIdentity) -> ServerScript {
        ServerScript {
            starttls: StartTlsMode::Certificate(identity),
            ..ServerScript::default()
        }
    }
}

/// One command line the server received.
#[derive(Clone, Debug)]
pub struct ReceivedCommand {
    /// Connection number, from 0 in accept order.
    pub connection: usize,
    /// The line without CRLF.
    pub line: String,
    /// TLS version when the command came over TLS, such as `TLSv1.3`.
    pub tls: Option<String>,
}

/// One message the server accepted with 250 (or with `data_reply`).
#[derive(Clone, Debug)]
pub struct ReceivedMessage {
    /// Connection number, from 0 in accept order.
    pub connection: usize,
    /// Everything after `MAIL FROM:`, such as `<a@x.test> BODY=8BITMIME`.
    pub mail_from: String,
    /// RCPT addresses the server accepted, without angle brackets.
    pub recipients: Vec<String>,
    /// The message as stored: dot-stuffing removed, final `.` line excluded.
    pub data: Vec<u8>,
    /// TLS version when the transaction ran over TLS.
    pub tls: Option<String>,
}

#[derive(Default)]
struct ServerLog {
    connections: usize,
    commands: Vec<ReceivedCommand>,
    messages: Vec<ReceivedMessage>,
}

/// A running scripted SMTP server; it stops when dropped.
pub struct SmtpServer {
    addr: SocketAddr,
    log: Arc<Mutex<ServerLog>>,
    task: JoinHandle<()>,
}

impl SmtpServer {
    /// Starts the server on `127.0.0.1:0`.
    pub async fn start(script: ServerScript) -> SmtpServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind SMTP server");
        let addr = listener.local_addr().expect("SMTP server address");
        let log = Arc::new(Mutex::new(ServerLog::default()));
        let script = Arc::new(script);
        let task_log = log.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let connection = {
                    let mut log = task_log.lock().unwrap();
                    log.connections += 1;
                    log.connections - 1
                };
                let session = Session {
                    connection,
                    script: script.clone(),
                    log: task_log.clone(),
                };
                tokio::spawn(async move {
                    let _ = session.run(stream).await;
                });
            }
        });
        SmtpServer { addr, log, task }
    }

    /// Returns the listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Returns the listening port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.log.lock().unwrap().connections
    }

    /// Returns every command received so far, in order.
    pub fn commands(&self) -> Vec<ReceivedCommand> {
        self.log.lock().unwrap().commands.clone()
    }

    /// Command lines that arrived outside TLS and start with `verb` (case-insensitive).
    pub fn clear_text_commands(&self, verb: &str) -> Vec<String> {
        let verb = verb.to_ascii_uppercase();
        self.commands()
            .into_iter()
            .filter(|command| command.tls.is_none())
            .filter(|command| command.line.to_ascii_uppercase().starts_with(&verb))
            .map(|command| command.line)
            .collect()
    }

    /// Command lines of any TLS state that start with `verb` (case-insensitive).
    pub fn commands_named(&self, verb: &str) -> Vec<ReceivedCommand> {
        let verb = verb.to_ascii_uppercase();
        self.commands()
            .into_iter()
            .filter(|command| command.line.to_ascii_uppercase().starts_with(&verb))
            .collect()
    }

    /// Returns every message accepted so far.
    pub fn messages(&self) -> Vec<ReceivedMessage> {
        self.log.lock().unwrap().messages.clone()
    }

    /// Waits until at least `count` messages were accepted, polling every 10 ms.
    ///
    /// # Panics
    ///
    /// When `timeout` passes first, with the number of messages seen.
    pub async fn wait_for_messages(&self, count: usize, timeout: Duration) -> Vec<ReceivedMessage> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= count {
                return messages;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {count} messages, got {}",
                messages.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What ended a command loop.
enum LoopEnd {
    Closed,
    StartTls,
}

#[derive(Default)]
struct Envelope {
    mail_from: Option<String>,
    recipients: Vec<String>,
}

struct Session {
    connection: usize,
    script: Arc<ServerScript>,
    log: Arc<Mutex<ServerLog>>,
}

impl Session {
    async fn run(self, stream: TcpStream) -> std::io::Result<()> {
        let mut plain = BufReader::new(stream);
        plain
            .write_all(b"220 mx.test ESMTP scripted test server\r\n")
            .await?;
        if let LoopEnd::Closed = self.serve(&mut plain, None).await? {
            return Ok(());
        }

        // Bytes the client sent after STARTTLS and before the handshake are dropped with
        // the buffer, as a server must.
        let tcp = plain.into_inner();
        let StartTlsMode::Certificate(identity) = &self.script.starttls else {
            return Ok(());
        };
        let acceptor = TlsAcceptor::from(identity.tls.clone());
        let Ok(secure) = acceptor.accept(tcp).await else {
            return Ok(());
        };
        let version = match secure.get_ref().1.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
            other => format!("{other:?}"),
        };
        let mut secure = BufReader::new(secure);
        self.serve(&mut secure, Some(version)).await?;
        Ok(())
    }

    async fn serve<S>(
        &self,
        stream: &mut BufReader<S>,
        tls: Option<String>,
    ) -> std::io::Result<LoopEnd>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut envelope = Envelope::default();
        loop {
            let Some(line) = read_line(stream).await? else {
                return Ok(LoopEnd::Closed);
            };
            let text = String::from_utf8_lossy(&line)
                .trim_end_matches(['\r', '\n'])
                .to_owned();
            self.log.lock().unwrap().commands.push(ReceivedCommand {
                connection: self.connection,
                line: text.clone(),
                tls: tls.clone(),
            });
            let upper = text.to_ascii_uppercase();

            if upper.starts_with("EHLO") && self.script.reject_ehlo {
                stream
                    .write_all(b"502 5.5.2 EHLO not supported\r\n")
                    .await?;
            } else if upper.starts_with("EHLO") {
                let reply = self.ehlo_reply(tls.is_some());
                stream.write_all(reply.as_bytes()).await?;
            } else if upper.starts_with("HELO") {
                stream.write_all(b"250 mx.test\r\n").await?;
            } else if upper == "STARTTLS" {
                if let Some(end) = self.start_tls(stream, tls.is_some()).await? {
                    return Ok(end);
                }
            } else if let Some(argument) = strip_verb(&text, "MAIL FROM:") {
                match &self.script.mail_reply {
                    Some(reply) => write_reply(stream, reply).await?,
                    None => {
                        envelope = Envelope {
                            mail_from: Some(argument.to_owned()),
                            recipients: Vec::new(),
                        };
                        stream.write_all(b"250 2.1.0 ok\r\n").await?;
                    }
                }
            } else if let Some(argument) = strip_verb(&text, "RCPT TO:") {
                let address = argument
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_owned();
                let scripted = self
                    .script
                    .rcpt_replies
                    .iter()
                    .find(|(rcpt, _)| rcpt.eq_ignore_ascii_case(&address));
                match scripted {
                    Some((_, reply)) => write_reply(stream, reply).await?,
                    None if envelope.mail_from.is_none() => {
                        stream.write_all(b"503 5.5.1 MAIL first\r\n").await?
                    }
                    None => {
                        envelope.recipients.push(address);
                        stream.write_all(b"250 2.1.5 ok\r\n").await?;
                    }
                }
            } else if upper == "DATA" {
                if envelope.recipients.is_empty() {
                    stream
                        .write_all(b"503 5.5.1 no valid recipients\r\n")
                        .await?;
                    continue;
                }
                stream.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                let Some(data) = self.read_data(stream).await? else {
                    return Ok(LoopEnd::Closed);
                };
                self.log.lock().unwrap().messages.push(ReceivedMessage {
                    connection: self.connection,
                    mail_from: envelope.mail_from.take().unwrap_or_default(),
                    recipients: std::mem::take(&mut envelope.recipients),
                    data,
                    tls: tls.clone(),
                });
                match &self.script.data_reply {
                    Some(reply) => write_reply(stream, reply).await?,
                    None => {
                        stream
                            .write_all(b"250 2.0.0 ok: queued as TEST1\r\n")
                            .await?
                    }
                }
            } else if upper == "RSET" {
                envelope = Envelope::default();
                stream.write_all(b"250 2.0.0 ok\r\n").await?;
            } else if upper == "NOOP" {
                stream.write_all(b"250 2.0.0 ok\r\n").await?;
            } else if upper == "QUIT" {
                stream.write_all(b"221 2.0.0 bye\r\n").await?;
                return Ok(LoopEnd::Closed);
            } else {
                stream.write_all(b"500 5.5.2 unknown command\r\n").await?;
            }
        }
    }

    fn ehlo_reply(&self, in_tls: bool) -> String {
        let mut lines = vec![
            "mx.test greets you".to_owned(),
            "ENHANCEDSTATUSCODES".to_owned(),
        ];
        if self.script.eightbitmime {
            lines.push("8BITMIME".into());
        }
        if self.script.smtputf8 {
            lines.push("SMTPUTF8".into());
        }
        if let Some(size) = self.script.size {
            lines.push(format!("SIZE {size}"));
        }
        if !in_tls && !matches!(self.script.starttls, StartTlsMode::Off) {
            lines.push("STARTTLS".into());
        }
        let last = lines.len() - 1;
        lines
            .iter()
            .enumerate()
            .map(|(index, line)| {
                let separator = if index == last { ' ' } else { '-' };
                format!("250{separator}{line}\r\n")
            })
            .collect()
    }

    /// Replies to STARTTLS, and returns the end of the command loop when the handshake
    /// follows.
    async fn start_tls<S>(
        &self,
        stream: &mut BufReader<S>,
        in_tls: bool,
    ) -> std::io::Result<Option<LoopEnd>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if in_tls || matches!(self.script.starttls, StartTlsMode::Off) {
            stream
                .write_all(b"502 5.5.1 STARTTLS not available\r\n")
                .await?;
            return Ok(None);
        }
        if let StartTlsMode::Rejected = self.script.starttls {
            let reply = b"454 4.7.0 TLS not available due to temporary reason\r\n";
            stream.write_all(reply).await?;
            return Ok(None);
        }
        let mut reply = b"220 go ahead\r\n".to_vec();
        if let Some(extra) = &self.script.inject_before_handshake {
            reply.extend_from_slice(extra);
        }
        stream.write_all(&reply).await?;
        stream.flush().await?;

        if let StartTlsMode::BrokenHandshake = self.script.starttls {
            // Wait for the ClientHello, then reply with bytes that are not a TLS record.
            let mut hello = [0u8; 512];
            let _ = stream.get_mut().read(&mut hello).await?;
            stream.write_all(b"this is not TLS\r\n").await?;
            stream.flush().await?;
            return Ok(Some(LoopEnd::Closed));
        }
        Ok(Some(LoopEnd::StartTls))
    }

    /// True when the script injects `fault` on this connection.
    fn fault_is(&self, fault: Fault) -> bool {
        self.script.fault == fault && (!self.script.fault_first_only || self.connection == 0)
    }

    /// Reads message data up to the `.` line and removes dot-stuffing; `None` when the
    /// script drops or stalls the connection.
    async fn read_data<S>(&self, stream: &mut BufReader<S>) -> std::io::Result<Option<Vec<u8>>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut data = Vec::new();
        loop {
            let Some(line) = read_line(stream).await? else {
                return Ok(None);
            };
            if self.fault_is(Fault::DropMidData) {
                return Ok(None);
            }
            if line == b".\r\n" {
                break;
            }
            match line.strip_prefix(b".") {
                Some(rest) => data.extend_from_slice(rest),
                None => data.extend_from_slice(&line),
            }
        }
        if self.fault_is(Fault::StallAfterData) {
            // Keep the connection open without replying until the client gives up.
            while read_line(stream).await?.is_some() {}
            return Ok(None);
        }
        Ok(Some(data))
    }
}

async fn read_line<S: AsyncRead + Unpin>(
    stream: &mut BufReader<S>,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let read = stream.read_until(b'\n', &mut line).await?;
    Ok((read > 0).then_some(line))
}

async fn write_reply<S: AsyncWrite + Unpin>(stream: &mut S, reply: &str) -> std::io::Result<()> {
    stream.write_all(format!("{reply}\r\n").as_bytes()).await
}

fn strip_verb<'a>(line: &'a str, verb: &str) -> Option<&'a str> {
    let head = line.get(..verb.len())?;
    head.eq_ignore_ascii_case(verb).then(|| &line[verb.len()..])
}

// ---------------------------------------------------------------------------------------
// DNS

/// In-memory DNS data. Names are matched case-insensitively, with or without a trailing
/// dot. A name with data of another type than the queried one gets an empty NOERROR
/// response. A name with no data at all gets NXDOMAIN.
#[derive(Clone, Default)]
pub struct Zone {
    records: HashMap<(String, RecordType), Vec<RData>>,
    nxdomain: HashSet<String>,
    servfail: HashSet<String>,
    unresponsive: HashSet<String>,
    authenticated: HashSet<String>,
}

impl Zone {
    /// Creates an empty zone.
    pub fn new() -> Zone {
        Zone::default()
    }

    /// Adds an MX record.
    pub fn mx(mut self, domain: &str, preference: u16, exchange: &str) -> Zone {
        let exchange = Name::from_ascii(format!("{}.", key(exchange))).expect("MX exchange name");
        self.add(
            domain,
            RecordType::MX,
            RData::MX(MX::new(preference, exchange)),
        );
        self
    }

    /// Adds the null MX of RFC 7505: `MX 0 .`.
    pub fn null_mx(mut self, domain: &str) -> Zone {
        self.add(domain, RecordType::MX, RData::MX(MX::new(0, Name::root())));
        self
    }

    /// Adds an A record.
    pub fn a(mut self, host: &str, address: Ipv4Addr) -> Zone {
        self.add(host, RecordType::A, RData::A(A(address)));
        self
    }

    /// Adds an AAAA record.
    pub fn aaaa(mut self, host: &str, address: Ipv6Addr) -> Zone {
        self.add(host, RecordType::AAAA, RData::AAAA(AAAA(address)));
        self
    }

    /// Adds a TXT record, which makes `host` exist without any mail or address record.
    pub fn txt(mut self, host: &str, text: &str) -> Zone {
        self.add(
            host,
            RecordType::TXT,
            RData::TXT(TXT::new(vec![text.to_owned()])),
        );
        self
    }

    /// Adds a TXT record of several character-strings, the form records longer than 255
    /// bytes (such as RSA DKIM keys) take.
    pub fn txt_strings(mut self, host: &str, strings: &[&str]) -> Zone {
        let strings = strings.iter().map(|part| part.to_string()).collect();
        self.add(host, RecordType::TXT, RData::TXT(TXT::new(strings)));
        self
    }

    /// Adds a TLSA record, such as `_25._tcp.mx.example`.
    pub fn tlsa(mut self, name: &str, tlsa: TLSA) -> Zone {
        self.add(name, RecordType::TLSA, RData::TLSA(tlsa));
        self
    }

    /// Sets the AD bit on every answer for `name`, as a validating resolver does for
    /// DNSSEC-secure data.
    pub fn authenticated(mut self, name: &str) -> Zone {
        self.authenticated.insert(key(name));
        self
    }

    /// Makes every query for `name` return NXDOMAIN.
    pub fn nxdomain(mut self, name: &str) -> Zone {
        self.nxdomain.insert(key(name));
        self
    }

    /// Makes every query for `name` go unanswered, so that the client times out.
    pub fn unresponsive(mut self, name: &str) -> Zone {
        self.unresponsive.insert(key(name));
        self
    }

    /// Makes every query for `name` return SERVFAIL.
    pub fn servfail(mut self, name: &str) -> Zone {
        self.servfail.insert(key(name));
        self
    }

    fn add(&mut self, name: &str, record_type: RecordType, data: RData) {
        self.records
            .entry((key(name), record_type))
            .or_default()
            .push(data);
    }

    /// Builds the response to `query`, or `None` when the name is unresponsive.
    fn answer(&self, query: &Message) -> Option<Message> {
        let mut response = Message::response(query.metadata.id, query.metadata.op_code);
        response.metadata.authoritative = true;
        response.metadata.recursion_desired = query.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        let Some(question) = query.queries.first() else {
            response.metadata.response_code = ResponseCode::FormErr;
            return Some(response);
        };
        response.add_query(question.clone());

        let name = key(&question.name().to_ascii());
        if self.unresponsive.contains(&name) {
            return None;
        }
        if self.servfail.contains(&name) {
            response.metadata.response_code = ResponseCode::ServFail;
            return Some(response);
        }
        response.metadata.authentic_data = self.authenticated.contains(&name);
        let known = self.records.keys().any(|(owner, _)| *owner == name);
        if self.nxdomain.contains(&name) || !known {
            response.metadata.response_code = ResponseCode::NXDomain;
            return Some(response);
        }
        for data in self
            .records
            .get(&(name, question.query_type()))
            .into_iter()
            .flatten()
        {
            response.add_answer(Record::from_rdata(
                question.name().clone(),
                60,
                data.clone(),
            ));
        }
        Some(response)
    }
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// A running DNS server on loopback; it stops when dropped.
pub struct DnsServer {
    addr: SocketAddr,
    queries: Arc<Mutex<Vec<(String, RecordType)>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl DnsServer {
    /// Starts the server on a free port of `127.0.0.1`, UDP and TCP.
    pub async fn start(zone: Zone) -> DnsServer {
        let (udp, tcp) = bind_udp_and_tcp().await;
        let addr = udp.local_addr().expect("DNS server address");
        let zone = Arc::new(zone);
        let queries = Arc::new(Mutex::new(Vec::new()));

        let udp_task = {
            let zone = zone.clone();
            let queries = queries.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 4096];
                while let Ok((length, peer)) = udp.recv_from(&mut buffer).await {
                    if let Some(response) = respond(&zone, &queries, &buffer[..length]) {
                        let _ = udp.send_to(&response, peer).await;
                    }
                }
            })
        };
        let tcp_task = {
            let zone = zone.clone();
            let queries = queries.clone();
            tokio::spawn(async move {
                while let Ok((mut stream, _)) = tcp.accept().await {
                    let zone = zone.clone();
                    let queries = queries.clone();
                    tokio::spawn(async move {
                        while let Ok(length) = stream.read_u16().await {
                            let mut request = vec![0u8; usize::from(length)];
                            if stream.read_exact(&mut request).await.is_err() {
                                return;
                            }
                            let Some(response) = respond(&zone, &queries, &request) else {
                                return;
                            };
                            let Ok(length) = u16::try_from(response.len()) else {
                                return;
                            };
                            let mut framed = length.to_be_bytes().to_vec();
                            framed.extend_from_slice(&response);
                            if stream.write_all(&framed).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            })
        };
        DnsServer {
            addr,
            queries,
            tasks: vec![udp_task, tcp_task],
        }
    }

    /// Returns the address, for UDP and TCP.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Returns every question received so far, as (lowercase name without dot, type).
    pub fn queries(&self) -> Vec<(String, RecordType)> {
        self.queries.lock().unwrap().clone()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn respond(
    zone: &Zone,
    queries: &Mutex<Vec<(String, RecordType)>>,
    request: &[u8],
) -> Option<Vec<u8>> {
    let query = Message::from_vec(request).ok()?;
    if let Some(question) = query.queries.first() {
        queries
            .lock()
            .unwrap()
            .push((key(&question.name().to_ascii()), question.query_type()));
    }
    zone.answer(&query)?.to_vec().ok()
}

async fn bind_udp_and_tcp() -> (UdpSocket, TcpListener) {
    for _ in 0..20 {
        let udp = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind DNS UDP socket");
        let port = udp.local_addr().expect("UDP address").port();
        if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)).await {
            return (udp, tcp);
        }
    }
    panic!("no loopback port was free for both UDP and TCP after 20 tries");
}

// ---------------------------------------------------------------------------------------
// Postfix smtp-sink

/// Postfix's `smtp-sink`, a plain-text SMTP sink, on a loopback port; killed on drop.
pub struct SmtpSink {
    child: Child,
    port: u16,
    dumps: Option<PathBuf>,
}

impl SmtpSink {
    /// Path of the binary, as Debian's `postfix` package installs it.
    pub const PATH: &'static str = "/usr/sbin/smtp-sink";

    /// Starts `smtp-sink` on a free loopback port and waits until it accepts connections.
    ///
    /// # Panics
    ///
    /// When the binary is missing (install Debian's `postfix` package) or does not listen
    /// within 5 seconds.
    pub fn start() -> SmtpSink {
        SmtpSink::launch_on_free_port(None)
    }

    /// Starts `smtp-sink` on a free port, dumping each transaction to a file in `dumps`, so
    /// a test can read what arrived with [`SmtpSink::messages`].
    pub fn start_dumping(dumps: &Path) -> SmtpSink {
        std::fs::create_dir_all(dumps).expect("create dump folder");
        SmtpSink::launch_on_free_port(Some(dumps.to_owned()))
    }

    /// Tries free ports until smtp-sink binds one, because between probing a port and
    /// smtp-sink binding it, another test's listener may take it.
    fn launch_on_free_port(dumps: Option<PathBuf>) -> SmtpSink {
        for _ in 0..10 {
            if let Some(sink) = SmtpSink::launch(free_tcp_port(), dumps.clone()) {
                return sink;
            }
        }
        panic!("smtp-sink could not bind a loopback port in 10 tries");
    }

    /// Starts smtp-sink on `port`; `None` when it exits because the port was taken.
    fn launch(port: u16, dumps: Option<PathBuf>) -> Option<SmtpSink> {
        assert!(
            Path::new(Self::PATH).exists(),
            "{} not found: install the postfix package (apt-get install postfix), which CI does",
            Self::PATH
        );
        let mut command = ProcessCommand::new(Self::PATH);
        command.args(["-u", "root"]);
        if let Some(dumps) = &dumps {
            command
                .arg("-d")
                .arg(format!("{}/%H%M%S.", dumps.display()));
        }
        let child = command
            .args([&format!("127.0.0.1:{port}"), "100"])
            .spawn()
            .expect("start smtp-sink");
        let mut sink = SmtpSink { child, port, dumps };

        let deadline = Instant::now() + Duration::from_secs(5);
        while StdTcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(_)) = sink.child.try_wait() {
                return None;
            }
            assert!(
                Instant::now() < deadline,
                "smtp-sink did not listen on port {port} within 5s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The connection may have reached another process on the same port; smtp-sink
        // exits at once when its bind fails.
        std::thread::sleep(Duration::from_millis(100));
        match sink.child.try_wait() {
            Ok(None) => Some(sink),
            _ => None,
        }
    }

    /// Returns the listening port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every dumped transaction, as text; empty unless started with a dump folder.
    pub fn messages(&self) -> Vec<String> {
        let Some(dumps) = &self.dumps else {
            return Vec::new();
        };
        std::fs::read_dir(dumps)
            .expect("read dump folder")
            .filter_map(|entry| std::fs::read(entry.ok()?.path()).ok())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .collect()
    }

    /// Waits until the dumps contain every marker or `timeout` passes, and returns how many
    /// dumps contain each marker.
    pub fn wait_for_markers(&self, markers: &[String], timeout: Duration) -> Vec<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            let counts: Vec<usize> = markers
                .iter()
                .map(|marker| {
                    messages
                        .iter()
                        .filter(|text| text.contains(marker.as_str()))
                        .count()
                })
                .collect();
            if counts.iter().all(|count| *count > 0) || Instant::now() >= deadline {
                return counts;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Returns a loopback TCP port that was free a moment ago: bound, read back and released.
pub fn free_tcp_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind probe port");
    probe.local_addr().expect("probe address").port()
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Config and jobs

/// Builds a config for delivery tests: EHLO name `sealgate.test`, DNS at `dns`, MX port
/// `mx_port`, the test CA as the only trust anchor, and 5-second timeouts.
pub fn delivery_config(pki: &TestPki, dns: SocketAddr, mx_port: u16) -> Config {
    let mut config = Config::default();
    config.server.hostname = "sealgate.test".into();
    config.server.keys_dir = pki.dir().to_owned();
    config.delivery.dns_servers = vec![dns.to_string()];
    config.delivery.mx_port = mx_port;
    config.delivery.webpki_roots = false;
    config.delivery.trust_anchors = vec![TestPki::CA_FILE.into()];
    config.delivery.connect_timeout = ConfigDuration::secs(5);
    config.delivery.command_timeout = ConfigDuration::secs(5);
    config.delivery.data_timeout = ConfigDuration::secs(5);
    config
}

/// Builds a job from [`SENDER`] with queue id [`QUEUE_ID`], 7-bit and without SMTPUTF8.
pub fn job<'a>(
    domain: &'a str,
    recipients: &'a [String],
    body: &'a [u8],
    tls: TlsRequirement,
) -> DeliveryJob<'a> {
    DeliveryJob {
        queue_id: QUEUE_ID,
        sender: SENDER,
        domain,
        recipients,
        body,
        tls,
        body_8bit: false,
        smtputf8: false,
    }
}

/// A short 7-bit message with CRLF line endings.
pub const BODY: &[u8] =
    b"From: clinic@org.test\r\nTo: gp@secure.test\r\nSubject: test\r\n\r\nHello.\r\n";
