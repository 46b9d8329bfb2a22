//! Outbound delivery: find the next hops for a recipient domain (MX or static route), open
//! SMTP with the TLS level the route demands, and report a result per recipient.
//!
//! Delivery never decides routes and never touches the queue: it gets one [`DeliveryJob`]
//! (one sender, one domain, one route) and returns an [`AttemptReport`]. The queue manager
//! turns that into retries, bounces and log lines. [`Transport`] is the seam it calls, and
//! [`SmtpCourier`] is the SMTP implementation.
//!
//! The steps of one attempt, each in its own file:
//!
//! - `mx`: a matching `[[delivery.routes]]` entry wins. Otherwise the MX records are used
//!   in preference order (equal preferences shuffled), or the domain itself when it has no
//!   MX records (RFC 5321 §5.1). A null MX (RFC 7505) or a domain that does not exist is a
//!   permanent failure.
//! - `tls`: the verifying and the non-verifying rustls client configs, TLS 1.2 or newer.
//! - `client`: one SMTP conversation: greeting, EHLO, STARTTLS, MAIL, RCPT, DATA, QUIT.
//! - `transport`: the loop over hosts and addresses, and the TLS rules below.
//!
//! TLS rules. On [`TlsRequirement::Verified`] the next hop must offer STARTTLS, and the
//! handshake, the certificate chain and the name must all check out before MAIL FROM is
//! sent; otherwise that host is a temporary failure and the next one is tried. On
//! [`TlsRequirement::Opportunistic`] STARTTLS is used when offered, the certificate is not
//! checked, and a failed handshake is followed by a new connection to the same address
//! in clear text without STARTTLS (RFC 7435).
//!
//! Conversion rule. sealgate never converts a message. When the body is 8-bit and the
//! next hop does not offer 8BITMIME after TLS, the recipients bounce with 5.6.3; when the
//! message needs SMTPUTF8 and the next hop does not offer it, they bounce with 5.6.7
//! (RFC 6531 §3.4). A message larger than the `SIZE` the next hop announces bounces with
//! 5.3.4.

mod client;
mod dane;
mod dnssec;
mod mta_sts;
mod mx;
mod policy;
mod resolver;
mod tls;
pub mod tlsrpt;
mod transport;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{DeliveryConfig, DnssecMode};
use crate::policy::TlsRequirement;

pub use resolver::build_resolver;
pub use transport::{SmtpCourier, Transport};

/// A delivery setup that could not be built from the config.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// A trust anchor file could not be read.
    #[error("failed to read trust anchor {path}: {source}")]
    TrustAnchorRead {
        /// The file, as resolved against `server.keys_dir`.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A trust anchor file contains no usable certificate.
    #[error("invalid trust anchor {path}: {reason}")]
    TrustAnchorInvalid {
        /// The file, as resolved against `server.keys_dir`.
        path: PathBuf,
        /// The reason it was rejected.
        reason: String,
    },
    /// A `delivery.dns_servers` entry is not `ip` or `ip:port`.
    #[error("delivery.dns_servers: invalid DNS server {0:?}: expected an IP address or ip:port")]
    DnsServer(String),
    /// The system resolver config could not be read.
    #[error("failed to read the system DNS config (/etc/resolv.conf): {0}")]
    SystemDns(String),
    /// hickory rejected the resolver config.
    #[error("failed to build the DNS resolver: {0}")]
    Resolver(String),
    /// The TLS policy database could not be opened.
    #[error("failed to open the TLS policy database: {0}")]
    Database(String),
    /// rustls rejected the client config.
    #[error("failed to build the TLS client config: {0}")]
    Tls(#[from] rustls::Error),
}

/// One delivery attempt's input: recipients of one domain on one route.
#[derive(Clone, Debug)]
pub struct DeliveryJob<'a> {
    /// Queue id, for log context.
    pub queue_id: &'a str,
    /// Envelope sender; empty for the null sender.
    pub sender: &'a str,
    /// Recipient domain, lowercased.
    pub domain: &'a str,
    /// Recipients, all in `domain`.
    pub recipients: &'a [String],
    /// Message bytes, CRLF line endings, not dot-stuffed.
    pub body: &'a [u8],
    /// TLS level that must be reached.
    pub tls: TlsRequirement,
    /// The body has 8-bit bytes, so the next hop must offer 8BITMIME.
    pub body_8bit: bool,
    /// The envelope or headers need SMTPUTF8.
    pub smtputf8: bool,
}

/// Outcome of one delivery attempt.
#[derive(Clone, Debug)]
pub struct AttemptReport {
    /// The last host tried, as `name[ip]:port`, when any connection was made.
    pub relay: Option<String>,
    /// TLS on the connection that carried (or last tried to carry) the message.
    pub tls: TlsOutcome,
    /// The verification policy of that connection's certificate.
    pub verification: Verification,
    /// Time spent on DNS, connecting, greeting and TLS.
    pub connect_time: Duration,
    /// Time spent sending the envelope and data.
    pub transfer_time: Duration,
    /// One result per recipient of the job, in job order.
    pub results: Vec<RecipientResult>,
}

/// The result for one recipient.
#[derive(Clone, Debug)]
pub struct RecipientResult {
    /// Envelope address.
    pub recipient: String,
    /// Sent, deferred or bounced.
    pub status: DeliveryStatus,
}

/// Temporary versus permanent is part of the type, so callers cannot forget it.
#[derive(Clone, Debug)]
pub enum DeliveryStatus {
    /// The next hop accepted the message for this recipient.
    Sent(Reply),
    /// A temporary failure; retry later.
    Deferred(Failure),
    /// A permanent failure; send a DSN.
    Bounced(Failure),
}

/// TLS on a connection, ordered so that `<` means weaker.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsOutcome {
    /// No connection was made.
    NotConnected,
    /// STARTTLS was sent but the handshake failed, so no message data was sent.
    Failed,
    /// Clear text.
    Plain,
    /// Encrypted, certificate not verified.
    Unverified {
        /// Such as `TLSv1.3`.
        version: String,
    },
    /// Encrypted, certificate chain and name verified.
    Verified {
        /// Such as `TLSv1.3`.
        version: String,
    },
}

/// The policy that decided how a next hop's certificate is verified, strongest first
/// (see `docs/tls-policy.md`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Verification {
    /// DNSSEC-validated TLSA records (RFC 7672).
    Dane,
    /// The domain's MTA-STS policy in `enforce` mode (RFC 8461): web PKI and MX name.
    MtaSts,
    /// A `forced-tls` route: web PKI roots and trust anchors, and the next hop's name.
    Ca,
    /// No verification: opportunistic TLS or clear text.
    #[default]
    None,
}

impl AttemptReport {
    /// Formats the `tls=` log field: the outcome, then the verification policy, such as
    /// `TLSv1.3/verified/dane` or `plain/none`.
    pub fn tls_field(&self) -> String {
        format!("{}/{}", self.tls, self.verification)
    }
}

/// Describes, for `sealgate explain`, which verification policies a delivery with
/// `requirement` tries in order, given the `[delivery]` settings.
pub fn describe_tls_policy(config: &DeliveryConfig, requirement: TlsRequirement) -> String {
    let mut steps = Vec::new();
    if config.dnssec != DnssecMode::Off {
        steps.push("dane when the MX and TLSA records are DNSSEC-secure");
    }
    if config.mta_sts {
        steps.push("mta-sts when the domain publishes an enforce policy");
    }
    steps.push(match requirement {
        TlsRequirement::Verified => "ca: STARTTLS and a verified certificate, never clear text",
        TlsRequirement::Opportunistic => "none: STARTTLS when offered, certificate not checked",
    });
    format!(
        "{} (static routes: the last step only)",
        steps.join(", else ")
    )
}

impl fmt::Display for Verification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verification::Dane => "dane",
            Verification::MtaSts => "mta-sts",
            Verification::Ca => "ca",
            Verification::None => "none",
        })
    }
}

/// An SMTP reply from a remote server, kept whole for DSNs and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Basic code, such as 250.
    pub code: u16,
    /// Enhanced status code, such as `2.0.0`, when the server sent one.
    pub enhanced: Option<String>,
    /// Reply text, lines joined with spaces.
    pub text: String,
}

/// Cause of a failed attempt for a recipient.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The host involved, as `name[ip]:port`, when a connection was made.
    pub host: Option<String>,
    /// The step that failed.
    pub stage: Stage,
    /// Description of the failure, in words.
    pub detail: String,
    /// The remote reply, when the failure was a reply.
    pub reply: Option<Reply>,
    /// Enhanced status code for the DSN and the log, such as `4.7.5`.
    pub status: String,
}

/// The step of an attempt, for failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// MX or address lookup.
    Dns,
    /// TCP connection or greeting.
    Connect,
    /// EHLO or HELO.
    Ehlo,
    /// STARTTLS and the handshake, including certificate checks.
    Tls,
    /// MAIL FROM.
    MailFrom,
    /// RCPT TO.
    RcptTo,
    /// DATA and the final reply.
    Data,
    /// The message cannot be sent as it is to this next hop (8BITMIME, SMTPUTF8).
    Conversion,
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.enhanced {
            Some(enhanced) => write!(f, "{} {} {}", self.code, enhanced, self.text),
            None => write!(f, "{} {}", self.code, self.text),
        }
    }
}

impl fmt::Display for TlsOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsOutcome::NotConnected => f.write_str("none"),
            TlsOutcome::Failed => f.write_str("failed"),
            TlsOutcome::Plain => f.write_str("plain"),
            TlsOutcome::Unverified { version } => write!(f, "{version}/unverified"),
            TlsOutcome::Verified { version } => write!(f, "{version}/verified"),
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Dns => "dns",
            Stage::Connect => "connect",
            Stage::Ehlo => "ehlo",
            Stage::Tls => "tls",
            Stage::MailFrom => "mail-from",
            Stage::RcptTo => "rcpt-to",
            Stage::Data => "data",
            Stage::Conversion => "conversion",
        })
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.host, &self.reply) {
            (Some(host), Some(reply)) => {
                write!(f, "host {host} said: {reply} (in reply to {})", self.stage)
            }
            (Some(host), None) => write!(f, "{host}: {}", self.detail),
            (None, _) => f.write_str(&self.detail),
        }
    }
}

impl DeliveryStatus {
    /// Returns the enhanced status code for logs and DSNs.
    pub fn dsn_code(&self) -> String {
        match self {
            DeliveryStatus::Sent(reply) => reply.enhanced.clone().unwrap_or_else(|| "2.0.0".into()),
            DeliveryStatus::Deferred(failure) | DeliveryStatus::Bounced(failure) => {
                failure.status.clone()
            }
        }
    }
}
