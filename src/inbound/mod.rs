//! The SMTP server that staff mail servers relay through.
//!
//! [`serve`] accepts connections and runs one task per session. A session speaks ESMTP with
//! PIPELINING, SIZE, 8BITMIME, ENHANCEDSTATUSCODES, STARTTLS, AUTH PLAIN and LOGIN (after TLS
//! only) and SMTPUTF8. It enforces relay rights and limits and hands each message to the
//! spool, and `250` is sent only after the spool's fsync. CHUNKING (BDAT), DSN parameters and
//! local delivery are not offered.

mod auth;
mod connection;
mod data;
mod limits;
mod mail;
mod path;
mod reply;
mod session;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use crate::config::Config;
use crate::queue::Spool;
use connection::Connection;
pub use data::{DataDecoder, Flaws};
use limits::{ClientLimits, RejectionLog};
use reply::Reply;
use session::{Session, Step};

/// Base delay before the reply to a failed AUTH; it doubles with each further failure.
const AUTH_FAILURE_DELAY: Duration = Duration::from_secs(1);

/// Pause after a failed `accept`, which is usually out of file descriptors, so the loop
/// does not spin.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Shared state of all inbound sessions: config, TLS acceptor, spool, and the global and
/// per-client limits.
pub struct InboundContext {
    config: Arc<Config>,
    tls: Option<TlsAcceptor>,
    spool: Spool,
    sessions: Arc<Semaphore>,
    clients: Arc<ClientLimits>,
    auth_failure_delay: Duration,
    /// Rate limits for the log lines about clients rejected at connect or at AUTH.
    session_limit_log: RejectionLog,
    client_limit_log: RejectionLog,
    auth_limit_log: RejectionLog,
}

impl InboundContext {
    /// Creates a context for sessions that use `config.inbound`. Without `tls`, STARTTLS and so
    /// AUTH are not offered.
    pub fn new(config: Arc<Config>, tls: Option<TlsAcceptor>, spool: Spool) -> InboundContext {
        let sessions = Arc::new(Semaphore::new(config.inbound.max_sessions));
        let clients = Arc::new(ClientLimits::new(&config.inbound));
        InboundContext {
            config,
            tls,
            spool,
            sessions,
            clients,
            auth_failure_delay: AUTH_FAILURE_DELAY,
            session_limit_log: RejectionLog::new(),
            client_limit_log: RejectionLog::new(),
            auth_limit_log: RejectionLog::new(),
        }
    }

    /// Replaces the base delay before a failed AUTH's reply (default one second). Tests use
    /// a short one.
    pub fn with_auth_failure_delay(mut self, delay: Duration) -> InboundContext {
        self.auth_failure_delay = delay;
        self
    }
}

/// Accepts connections forever, one task per session. A client with
/// `inbound.max_sessions_per_client` sessions already gets `421 4.7.0`, and any client
/// beyond `inbound.max_sessions` gets `421 4.3.2`; both are then disconnected. Each kind
/// of rejection is logged at most once a minute per client, with the number left out.
pub async fn serve(listener: TcpListener, context: Arc<InboundContext>) {
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "SMTP listener started");
    }
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "failed to accept a connection");
                tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                continue;
            }
        };
        let span = tracing::info_span!("smtp.session", %peer);
        let Some(slot) = context.clients.try_acquire(peer.ip()) else {
            if let Some(suppressed) = context.client_limit_log.admit(peer.ip(), Instant::now()) {
                tracing::warn!(
                    parent: &span,
                    limit = context.config.inbound.max_sessions_per_client,
                    suppressed,
                    "per-client session limit reached, rejecting"
                );
            }
            let text = "Too many connections from your address, try again later";
            reject(stream, Reply::new(421, "4.7.0", text));
            continue;
        };
        let Ok(permit) = context.sessions.clone().try_acquire_owned() else {
            if let Some(suppressed) = context.session_limit_log.admit(peer.ip(), Instant::now()) {
                tracing::warn!(
                    parent: &span,
                    limit = context.config.inbound.max_sessions,
                    suppressed,
                    "session limit reached, rejecting"
                );
            }
            reject(
                stream,
                Reply::new(421, "4.3.2", "Too many connections, try again later"),
            );
            continue;
        };
        let context = context.clone();
        tokio::spawn(
            async move {
                run_session(stream, peer, context).await;
                drop(permit);
                drop(slot);
            }
            .instrument(span),
        );
    }
}

/// Sends `reply` to a client that is not given a session, and closes the connection.
fn reject(stream: tokio::net::TcpStream, reply: Reply) {
    tokio::spawn(async move {
        let mut connection = Connection::new(stream);
        connection.queue(&reply);
        connection.close().await;
    });
}

/// Runs one SMTP session on `stream` from greeting to close, including the STARTTLS
/// upgrade. `peer` decides relay rights and appears in logs and `Received:`.
pub async fn run_session<S>(stream: S, peer: SocketAddr, context: Arc<InboundContext>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    tracing::debug!("session started");
    let mut session = Session::new(context.clone(), peer);
    let mut connection = Connection::new(stream);
    connection.queue(&session.greeting());
    if session.run(&mut connection).await != Step::StartTls {
        connection.close().await;
        return;
    }

    if connection.flush().await.is_err() {
        return;
    }
    // RFC 3207 §4.2: commands the client pipelined behind STARTTLS were sent in clear text
    // and are dropped with the plain-text buffer, never executed over TLS.
    let (stream, discarded) = connection.into_stream();
    if discarded > 0 {
        tracing::warn!(
            bytes = discarded,
            "discarded input pipelined after STARTTLS"
        );
    }
    let acceptor = context
        .tls
        .as_ref()
        .expect("STARTTLS is accepted only when a TLS acceptor exists");
    let timeout = context.config.inbound.command_timeout.0;
    let stream = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::info!(%error, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::info!("TLS handshake timed out");
            return;
        }
    };

    let description = describe_tls(stream.get_ref().1);
    tracing::debug!(tls = %description, "TLS established");
    session.start_tls(description);
    let mut connection = Connection::new(stream);
    session.run(&mut connection).await;
    connection.close().await;
}

/// Protocol version and cipher suite, such as `TLSv1.3/TLS13_AES_256_GCM_SHA384`.
fn describe_tls(connection: &rustls::ServerConnection) -> String {
    let version = match connection.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
        Some(other) => format!("{other:?}"),
        None => "unknown".to_owned(),
    };
    let suite = connection
        .negotiated_cipher_suite()
        .map(|suite| format!("{:?}", suite.suite()))
        .unwrap_or_else(|| "unknown".to_owned());
    format!("{version}/{suite}")
}
