//! The one TOML config file. Every section is named after the pipeline stage that reads it,
//! every default sits in a `Default` impl here, and `load` rejects unknown keys and bad
//! values with an error that names the file, the key and the value.

mod units;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::policy::classify::ClassifyConfig;

pub use units::{ByteSize, ConfigDuration};
pub(crate) use validate::is_domain_pattern;
pub use validate::{is_domain_name, parse_dns_server};

use crate::dkim::DkimKeyConfig;
use crate::records::DnsRecordsConfig;
use crate::smime::SmimeConfig;
use crate::store::{PortalConfig, StoreConfig};

/// The commented example that `sealgate init` writes.
pub const EXAMPLE_CONFIG: &str = include_str!("../../templates/sealgate.example.toml");

/// The whole config file.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Identity and file locations.
    pub server: ServerConfig,
    /// The SMTP listener that staff mail servers relay through.
    pub inbound: InboundConfig,
    /// Secure domains and message classification.
    pub policy: PolicyConfig,
    /// Outbound SMTP: DNS, TLS trust and static routes.
    pub delivery: DeliveryConfig,
    /// Retry schedule and queue lifetime.
    pub queue: QueueConfig,
    /// Recipient certificates, S/MIME algorithms and the signing identity.
    pub smime: SmimeConfig,
    /// Retention and master key of the encrypted hold store.
    pub store: StoreConfig,
    /// Notification branding and the portal listener.
    pub portal: PortalConfig,
    /// `[[dkim]]`: DKIM signing keys, one entry per domain and selector.
    pub dkim: Vec<DkimKeyConfig>,
    /// Addresses and report destinations for the records `sealgate dns records` prints.
    pub dns_records: DnsRecordsConfig,
    /// Administrator sign-in and review rules.
    pub admin: AdminConfig,
}

/// `[admin]`: administrator accounts and the review queue.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// A release from review needs a second, different administrator to approve it.
    /// Default: false.
    pub four_eyes: bool,
    /// Failed sign-ins in a row after which an account is locked. Default: 5.
    pub max_failed_logins: u32,
    /// How long a locked account stays locked. Default: `15m`.
    pub lockout: ConfigDuration,
    /// Address of the admin pages, separate from the portal. Default: `127.0.0.1:8444`.
    pub listen: std::net::SocketAddr,
    /// sealgate terminates TLS for the admin pages with the inbound certificate. Plain
    /// HTTP is allowed only on a loopback address. Default: true.
    pub tls: bool,
    /// URL that browsers use for the admin pages, such as `https://admin.example.nhs.uk`,
    /// whose origin form posts must come from. Without it, posts must come from the
    /// loopback address the browser connected to.
    pub base_url: String,
    /// How long a sign-in lasts. Default: `15m`.
    pub session_lifetime: ConfigDuration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            four_eyes: false,
            max_failed_logins: 5,
            lockout: ConfigDuration::secs(15 * 60),
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 8444)),
            tls: true,
            base_url: String::new(),
            session_lifetime: ConfigDuration::secs(15 * 60),
        }
    }
}

/// `[server]`: identity and file locations.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Host name used in the SMTP greeting, EHLO to next hops, `Received:` and DSNs.
    /// Default: `localhost`.
    pub hostname: String,
    /// Folder holding the queue database. A relative path is taken from the config file's
    /// folder (from the working directory for the embedded default). Default: `./data`.
    pub data_dir: PathBuf,
    /// Folder holding TLS certificates and keys, relative like `data_dir`. Default: `./keys`.
    pub keys_dir: PathBuf,
    /// Address that DSNs are sent from, as `MAILER-DAEMON@hostname` when empty.
    /// The envelope sender of a DSN is always the null sender.
    pub postmaster: String,
}

/// `[inbound]`: the SMTP listener.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InboundConfig {
    /// Addresses to listen on, as `ip:port` (`[v6]:port`). Default: `["127.0.0.1:2525"]`.
    #[serde(deserialize_with = "units::socket_addresses")]
    pub listen: Vec<SocketAddr>,
    /// Client networks allowed to relay without AUTH, as `ip/prefix` or a single `ip`.
    /// Default: loopback only.
    #[serde(deserialize_with = "units::networks")]
    pub relay_networks: Vec<IpNet>,
    /// Reject MAIL with `530 5.7.0` until the client has done STARTTLS. Default: false.
    pub require_tls: bool,
    /// TLS certificate chain (PEM), relative to `server.keys_dir`. Default: `tls.crt`.
    pub tls_certificate: PathBuf,
    /// TLS private key (PEM), relative to `server.keys_dir`. Default: `tls.key`.
    pub tls_key: PathBuf,
    /// Largest message accepted, checked against `SIZE=` and while receiving.
    /// Default: `35MB`.
    pub max_message_size: ByteSize,
    /// Maximum recipients in one transaction. Default: 100.
    pub max_recipients: usize,
    /// Maximum command line length, CRLF included (RFC 5321 §4.5.3.1.4 sets 512 as the
    /// minimum). Default: 2048.
    pub max_command_line: usize,
    /// Maximum length of a line of message text, CRLF included (RFC 5322 §2.1.1 sets 1000).
    /// Default: 1000.
    pub max_text_line: usize,
    /// Time allowed for each command. Default: `5m`.
    pub command_timeout: ConfigDuration,
    /// Time allowed for the whole DATA transfer. Default: `10m`.
    pub data_timeout: ConfigDuration,
    /// Bad commands before the session is closed with `421 4.7.0`. Default: 10.
    pub max_bad_commands: u32,
    /// Failed AUTH attempts before the session is closed. Each failure also waits a
    /// growing delay before the reply. The same number of failures from one IP address
    /// within `auth_failure_window`, over any sessions, makes AUTH from that address
    /// answer `454 4.7.0` until the oldest failure leaves the window. Default: 3.
    pub max_auth_failures: u32,
    /// The period over which AUTH failures from one IP address are counted. Default: `10m`.
    pub auth_failure_window: ConfigDuration,
    /// Concurrent sessions; more get `421 4.3.2`. Default: 200.
    pub max_sessions: usize,
    /// Concurrent sessions from one IP address; more get `421 4.7.0`. Default: 20.
    pub max_sessions_per_client: usize,
    /// SMTP AUTH users. AUTH is offered only after STARTTLS.
    pub users: Vec<SmtpUser>,
}

/// One `[[inbound.users]]` entry.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpUser {
    /// Login name.
    pub name: String,
    /// Argon2 PHC string, as printed by `sealgate hash-password`.
    pub password_hash: String,
}

/// `[policy]`: routing decisions.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Secure domains: exact names (`nhs.net`) or `*.suffix` for every subdomain of the
    /// suffix (not the suffix itself). Mail to them leaves only over verified TLS.
    /// Default: `["nhs.net", "*.nhs.net"]`.
    pub secure_domains: Vec<String>,
    /// `[policy.classify]`: which messages are sensitive. Default: see [`ClassifyConfig`].
    #[serde(default)]
    pub classify: ClassifyConfig,
    /// Failed TLS attempts after which a `forced-tls` recipient moves to the portal route
    /// instead of waiting for its bounce, and the sender gets a notice. Only attempts that
    /// failed at STARTTLS, the handshake or the certificate count. Default: off.
    pub forced_tls_fallback_after: Option<u32>,
}

/// `[delivery]`: outbound SMTP.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Host name sent in EHLO. Default: `server.hostname`.
    pub helo_name: Option<String>,
    /// Port used for MX hosts. Default: 25.
    pub mx_port: u16,
    /// DNS servers (`ip` or `ip:port`); the system resolver config when empty.
    pub dns_servers: Vec<String>,
    /// Extra trust anchors (PEM files, relative to `server.keys_dir`) added to the
    /// built-in web PKI roots for certificate verification.
    pub trust_anchors: Vec<PathBuf>,
    /// Trust the built-in web PKI roots. Default: true.
    pub webpki_roots: bool,
    /// Time allowed for one DNS query. hickory retries a query that timed out, and a
    /// lookup that still fails defers the delivery. Default: `5s`.
    pub dns_timeout: ConfigDuration,
    /// Time allowed to connect. Default: `30s`.
    pub connect_timeout: ConfigDuration,
    /// Time allowed for each command reply. Default: `5m`.
    pub command_timeout: ConfigDuration,
    /// Time allowed for the message transfer and its final reply. Default: `10m`.
    pub data_timeout: ConfigDuration,
    /// Messages delivered at the same time. Default: 20.
    pub concurrency: usize,
    /// Static routes, like Postfix's transport maps.
    pub routes: Vec<StaticRoute>,
    /// Source of DNSSEC-validated answers, which DANE needs. Default: `off` (no DANE).
    pub dnssec: DnssecMode,
    /// Look up and apply the MTA-STS policy (RFC 8461) of every recipient domain reached
    /// through its MX records. Default: true.
    pub mta_sts: bool,
    /// Time allowed to fetch one MTA-STS policy over HTTPS. Default: `30s`.
    pub mta_sts_timeout: ConfigDuration,
    /// Port of MTA-STS policy servers. RFC 8461 fixes 443; another port is only for
    /// tests with a policy server on loopback. Default: 443.
    pub mta_sts_port: u16,
    /// Send TLS-RPT aggregate reports (RFC 8460) to domains that publish `_smtp._tls`.
    /// Default: true.
    pub tlsrpt: bool,
    /// How often reports of the finished UTC days are sent. Default: `1d`.
    pub tlsrpt_interval: ConfigDuration,
}

/// `delivery.dnssec`: how DNS answers are known to be DNSSEC-validated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DnssecMode {
    /// No DNSSEC, so DANE is never used.
    #[default]
    Off,
    /// The resolvers in `delivery.dns_servers` validate, and their AD bit is trusted.
    /// Only safe for a validating resolver on loopback or a protected link.
    TrustResolver,
}

/// One `[[delivery.routes]]` entry: mail for `domain` goes to `host:port` instead of the MX.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StaticRoute {
    /// Recipient domain, exact or `*.suffix`.
    pub domain: String,
    /// Next hop: a host name or an IP address.
    pub host: String,
    /// Next hop port. Default: 25.
    #[serde(default = "default_smtp_port")]
    pub port: u16,
    /// Name the next hop's certificate must match when the route requires verified TLS.
    /// Default: `host`.
    pub tls_name: Option<String>,
}

/// `[queue]`: retries and lifetime.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Delays between attempts; the last one repeats. Default: `["1m", "5m", "15m",
    /// "30m", "1h", "2h", "4h"]`.
    pub retry_schedule: Vec<ConfigDuration>,
    /// Age after which an undelivered recipient is bounced. Default: `5d`.
    pub max_lifetime: ConfigDuration,
    /// How often the queue is scanned for due deliveries, so that `sealgate queue
    /// flush` and other instances' changes are noticed. Default: `1s`.
    pub scan_interval: ConfigDuration,
}

fn default_smtp_port() -> u16 {
    25
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            hostname: "localhost".into(),
            data_dir: "./data".into(),
            keys_dir: "./keys".into(),
            postmaster: String::new(),
        }
    }
}

impl Default for InboundConfig {
    fn default() -> Self {
        InboundConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 2525))],
            relay_networks: vec![
                "127.0.0.0/8".parse().expect("literal network"),
                "::1/128".parse().expect("literal network"),
            ],
            require_tls: false,
            tls_certificate: "tls.crt".into(),
            tls_key: "tls.key".into(),
            max_message_size: ByteSize(35_000_000),
            max_recipients: 100,
            max_command_line: 2048,
            max_text_line: 1000,
            command_timeout: ConfigDuration::secs(300),
            data_timeout: ConfigDuration::secs(600),
            max_bad_commands: 10,
            max_auth_failures: 3,
            auth_failure_window: ConfigDuration::secs(600),
            max_sessions: 200,
            max_sessions_per_client: 20,
            users: Vec::new(),
        }
    }
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            secure_domains: vec!["nhs.net".into(), "*.nhs.net".into()],
            classify: ClassifyConfig::default(),
            forced_tls_fallback_after: None,
        }
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            helo_name: None,
            mx_port: 25,
            dns_servers: Vec::new(),
            trust_anchors: Vec::new(),
            webpki_roots: true,
            dns_timeout: ConfigDuration::secs(5),
            connect_timeout: ConfigDuration::secs(30),
            command_timeout: ConfigDuration::secs(300),
            data_timeout: ConfigDuration::secs(600),
            concurrency: 20,
            routes: Vec::new(),
            dnssec: DnssecMode::Off,
            mta_sts: true,
            mta_sts_timeout: ConfigDuration::secs(30),
            mta_sts_port: 443,
            tlsrpt: true,
            tlsrpt_interval: ConfigDuration::secs(86_400),
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            retry_schedule: ["1m", "5m", "15m", "30m", "1h", "2h", "4h"]
                .iter()
                .map(|text| text.parse().expect("literal duration"))
                .collect(),
            max_lifetime: ConfigDuration::secs(5 * 86_400),
            scan_interval: ConfigDuration::secs(1),
        }
    }
}

/// A config file that could not be read, parsed or validated.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("failed to read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or a key has the wrong type or an unknown name.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The problem, naming the key and value.
        message: String,
    },
    /// A key parsed but its value is not acceptable.
    #[error("{path}: {key} = {value}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Dotted key, such as `policy.secure_domains[2]`.
        key: String,
        /// The value as written.
        value: String,
        /// The reason it was rejected.
        reason: String,
    },
}

impl Config {
    /// Reads and validates a config file.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Read`] when the file cannot be read, [`ConfigError::Parse`] for bad
    /// TOML, unknown keys and wrong types, [`ConfigError::Invalid`] for values that fail
    /// validation.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Config::parse(&text, path)?;
        if let Some(folder) = path.parent() {
            let resolve =
                |relative: &Path| folder.join(relative.strip_prefix("./").unwrap_or(relative));
            config.server.data_dir = resolve(&config.server.data_dir);
            config.server.keys_dir = resolve(&config.server.keys_dir);
        }
        Ok(config)
    }

    /// Parses and validates config text; `path` is used only in errors.
    ///
    /// # Errors
    ///
    /// As for [`Config::load`], less the read error.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let parse_error = |message: String| ConfigError::Parse {
            path: path.to_owned(),
            message,
        };
        let deserializer =
            toml::Deserializer::parse(text).map_err(|error| parse_error(error.to_string()))?;
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let key = error.path().to_string();
            let inner = error.into_inner();
            let detail = inner.message().trim_end().to_owned();
            let location = inner
                .span()
                .map(|span| line_of(text, span.start))
                .map(|line| format!(" (line {line})"))
                .unwrap_or_default();
            if key == "." || key.is_empty() {
                parse_error(format!("{detail}{location}"))
            } else {
                parse_error(format!("key {key}{location}: {detail}"))
            }
        })?;
        config.validate(path)?;
        Ok(config)
    }

    /// Returns the embedded development default: loopback listeners, `./data` and `./keys`.
    pub fn development() -> Config {
        Config::default()
    }

    /// Host name sent in EHLO to next hops.
    pub fn helo_name(&self) -> &str {
        self.delivery
            .helo_name
            .as_deref()
            .unwrap_or(&self.server.hostname)
    }

    /// Address DSNs are sent from.
    pub fn postmaster(&self) -> String {
        if self.server.postmaster.is_empty() {
            format!("MAILER-DAEMON@{}", self.server.hostname)
        } else {
            self.server.postmaster.clone()
        }
    }

    /// Resolves a file named in the config relative to `server.keys_dir`.
    pub fn key_path(&self, file: &Path) -> PathBuf {
        self.server.keys_dir.join(file)
    }

    /// Path of the TLS policy database (MTA-STS policy cache).
    pub fn tls_database_path(&self) -> PathBuf {
        self.server.data_dir.join("tls.sqlite")
    }

    /// Path of the queue database.
    pub fn database_path(&self) -> PathBuf {
        self.server.data_dir.join("queue.sqlite")
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|byte| **byte == b'\n')
        .count()
        + 1
}
