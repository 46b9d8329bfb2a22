//! AUTH PLAIN and LOGIN (RFC 4954, RFC 4616), offered only over TLS.
//!
//! Passwords are checked against the Argon2 PHC strings in `inbound.users`. Each failure
//! waits longer before its `535` (the base delay doubles per failure), and the failure that
//! reaches `max_auth_failures` closes the session. Failures are also counted per client IP
//! address over all its sessions. Once that count reaches `max_auth_failures` within
//! `auth_failure_window`, AUTH gets `454 4.7.0` without a password check. The AUTH payload
//! and the password are never logged, and the user name is logged with its field
//! delimiters escaped.

use std::time::Instant;

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use smtp_proto::{AUTH_LOGIN, AUTH_PLAIN};
use tokio::io::{AsyncRead, AsyncWrite};

use super::connection::{Connection, Line};
use super::reply::{self, Reply};
use super::session::{Session, State, Step};
use crate::telemetry::escape_field;

/// Credentials decoded from the client, before they are checked.
struct Credentials {
    user: String,
    password: Vec<u8>,
}

/// Outcome of reading a SASL exchange.
enum Exchange {
    Credentials(Credentials),
    /// The exchange failed, and the reply gives the reason.
    Failed(Reply),
    /// The session must end (timeout or closed connection).
    Close,
}

impl Session {
    pub(super) async fn handle_auth<S>(
        &mut self,
        connection: &mut Connection<S>,
        mechanism: u64,
        initial_response: &str,
    ) -> Step
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        if let Some(reply) = self.auth_precondition() {
            return self.send(connection, reply);
        }
        // Checked before the exchange, so a blocked client costs no Argon2 run.
        if self
            .context
            .clients
            .auth_blocked(self.peer.ip(), Instant::now())
        {
            let suppressed = self
                .context
                .auth_limit_log
                .admit(self.peer.ip(), Instant::now());
            if let Some(suppressed) = suppressed {
                tracing::warn!(
                    suppressed,
                    "too many AUTH failures from this client, rejecting AUTH"
                );
            }
            let text = "too many authentication failures, try later";
            return self.send(connection, Reply::new(454, "4.7.0", text));
        }

        let exchange = match mechanism {
            AUTH_PLAIN => self.exchange_plain(connection, initial_response).await,
            AUTH_LOGIN => self.exchange_login(connection, initial_response).await,
            _ => Exchange::Failed(Reply::new(504, "5.5.4", "Unrecognized authentication type")),
        };
        let credentials = match exchange {
            Exchange::Credentials(credentials) => credentials,
            Exchange::Failed(reply) => return self.send(connection, reply),
            Exchange::Close => return Step::Close,
        };

        if self.verify(&credentials).await {
            tracing::info!(user = %escape_field(&credentials.user), "authenticated");
            self.context.clients.clear_auth_failures(self.peer.ip());
            self.auth_user = Some(credentials.user);
            connection.queue(&Reply::new(235, "2.7.0", "Authentication successful"));
            return Step::Continue;
        }

        self.auth_failures += 1;
        self.context
            .clients
            .record_auth_failure(self.peer.ip(), Instant::now());
        tracing::warn!(
            user = %escape_field(&credentials.user),
            failures = self.auth_failures,
            "authentication failed"
        );
        // Write what is queued now, so the delay is not also spent on earlier replies.
        if connection.flush().await.is_err() {
            return Step::Close;
        }
        let exponent = (self.auth_failures - 1).min(10);
        tokio::time::sleep(self.context.auth_failure_delay * 2u32.pow(exponent)).await;
        connection.queue(&Reply::new(
            535,
            "5.7.8",
            "Authentication credentials invalid",
        ));
        if self.auth_failures >= self.context.config.inbound.max_auth_failures {
            tracing::warn!(
                failures = self.auth_failures,
                "too many AUTH failures, closing"
            );
            connection.queue(&Reply::new(
                421,
                "4.7.0",
                "Too many authentication failures, closing connection",
            ));
            return Step::Close;
        }
        Step::Continue
    }

    /// The reply that rejects AUTH in the current state, if any.
    fn auth_precondition(&self) -> Option<Reply> {
        if self.tls.is_none() {
            let text = "Encryption required for requested authentication mechanism";
            return Some(Reply::new(538, "5.7.11", text));
        }
        if !self.auth_available() {
            return Some(Reply::new(502, "5.5.1", "AUTH not available"));
        }
        if self.auth_user.is_some() {
            return Some(reply::bad_sequence("Already authenticated"));
        }
        match self.state {
            State::Connected => Some(reply::bad_sequence("Send EHLO first")),
            State::Transaction(..) => Some(reply::bad_sequence(
                "AUTH not allowed during a mail transaction",
            )),
            State::Greeted(_) => None,
        }
    }

    /// PLAIN: `authzid NUL authcid NUL password`, in the initial response or after an empty
    /// `334` challenge.
    async fn exchange_plain<S>(&self, connection: &mut Connection<S>, initial: &str) -> Exchange
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let response = match initial {
            "" => match self.read_response(connection, "").await {
                Ok(response) => response,
                Err(exchange) => return exchange,
            },
            // RFC 4954 §4: `=` is an empty initial response.
            "=" => Vec::new(),
            initial => match decode(initial.as_bytes()) {
                Ok(response) => response,
                Err(exchange) => return exchange,
            },
        };

        let mut parts = response.split(|byte| *byte == 0);
        let (Some(authzid), Some(authcid), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Exchange::Failed(Reply::new(501, "5.5.2", "Invalid PLAIN response"));
        };
        let Ok(user) = String::from_utf8(authcid.to_vec()) else {
            return Exchange::Failed(Reply::new(501, "5.5.2", "User name is not UTF-8"));
        };
        // Acting for another identity is not supported, so authzid must be empty or equal.
        if !authzid.is_empty() && authzid != authcid {
            return Exchange::Failed(Reply::new(
                535,
                "5.7.8",
                "Authorization identity not allowed",
            ));
        }
        Exchange::Credentials(Credentials {
            user,
            password: password.to_vec(),
        })
    }

    /// LOGIN: user name (in the initial response or after `334 Username:`), then password.
    async fn exchange_login<S>(&self, connection: &mut Connection<S>, initial: &str) -> Exchange
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let user = if initial.is_empty() {
            self.read_response(connection, "VXNlcm5hbWU6").await
        } else {
            decode(initial.as_bytes())
        };
        let user = match user {
            Ok(user) => user,
            Err(exchange) => return exchange,
        };
        let password = match self.read_response(connection, "UGFzc3dvcmQ6").await {
            Ok(password) => password,
            Err(exchange) => return exchange,
        };
        let Ok(user) = String::from_utf8(user) else {
            return Exchange::Failed(Reply::new(501, "5.5.2", "User name is not UTF-8"));
        };
        Exchange::Credentials(Credentials { user, password })
    }

    /// Sends a `334` challenge and reads the client's base64 response line.
    async fn read_response<S>(
        &self,
        connection: &mut Connection<S>,
        challenge: &'static str,
    ) -> Result<Vec<u8>, Exchange>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        connection.queue(&Reply::bare(334, vec![challenge.into()]));
        let inbound = &self.context.config.inbound;
        let read = connection.read_line(inbound.max_command_line);
        let line = match tokio::time::timeout(inbound.command_timeout.0, read).await {
            Err(_) => {
                connection.queue(&reply::timed_out());
                return Err(Exchange::Close);
            }
            Ok(Err(_) | Ok(Line::Closed)) => return Err(Exchange::Close),
            Ok(Ok(Line::TooLong)) => {
                let reply = Reply::new(500, "5.5.2", "Authentication response too long");
                return Err(Exchange::Failed(reply));
            }
            Ok(Ok(Line::Complete(line))) => line,
        };
        let Some(content) = line.strip_suffix(b"\r\n") else {
            return Err(Exchange::Failed(Reply::new(
                500,
                "5.5.2",
                "Lines must end with CRLF",
            )));
        };
        if content == b"*" {
            return Err(Exchange::Failed(Reply::new(
                501,
                "5.0.0",
                "Authentication cancelled",
            )));
        }
        decode(content)
    }

    /// Checks credentials on a blocking thread, because Argon2 is deliberately slow. An
    /// unknown user is checked against another user's hash, so that the time taken does not
    /// reveal which names exist.
    async fn verify(&self, credentials: &Credentials) -> bool {
        let users = &self.context.config.inbound.users;
        let known = users.iter().find(|user| user.name == credentials.user);
        let Some(target) = known.or(users.first()) else {
            return false;
        };
        let hash = target.password_hash.clone();
        let password = credentials.password.clone();
        let matched = tokio::task::spawn_blocking(move || {
            let Ok(parsed) = PasswordHash::new(&hash) else {
                return false;
            };
            Argon2::default()
                .verify_password(&password, &parsed)
                .is_ok()
        })
        .await
        .unwrap_or(false);
        matched && known.is_some()
    }
}

fn decode(text: &[u8]) -> Result<Vec<u8>, Exchange> {
    BASE64
        .decode(text)
        .map_err(|_| Exchange::Failed(Reply::new(501, "5.5.2", "Invalid base64 data")))
}
