//! The `sealgate` command: run the gateway, check and create configs, and inspect the queue.

mod cli;
mod dkim_commands;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use sealgate::audit::{AuditEvent, AuditLog};
use sealgate::config::{Config, EXAMPLE_CONFIG};
use sealgate::delivery::{self, SmtpCourier};
use sealgate::envelope::{QueueId, display_address};
use sealgate::inbound::{self, InboundContext};
use sealgate::keys;
use sealgate::policy::classify::{self, Classifier};
use sealgate::policy::{CertificateSource, Router};
use sealgate::portal;
use sealgate::queue::review::{self, ReleaseMode};
use sealgate::queue::store::{RecipientState, Store, now_millis};
use sealgate::queue::{QueueManager, Spool};
use sealgate::smime::{CertificateDirectory, Smime};
use sealgate::store::{self as hold, HeldId, HoldStore};
use tokio::sync::Notify;

#[derive(Parser)]
#[command(
    name = "sealgate",
    version,
    about = "Outbound email encryption gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the SMTP listener and the delivery queue.
    Serve {
        /// Config file; without it, the embedded development default is used
        /// (loopback listener on 127.0.0.1:2525, data in ./data, keys in ./keys).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Check a config file and print the first error, naming the key and value.
    CheckConfig {
        /// The config file.
        file: PathBuf,
    },
    /// Write a commented example config and development keys into a folder.
    Init {
        /// Folder to create or fill; existing files are kept.
        dir: PathBuf,
    },
    /// Inspect and change the delivery queue.
    Queue {
        /// Config file (for the data folder); the development default without it.
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: QueueAction,
    },
    /// Inspect, revoke and expire messages held for the portal.
    Held {
        /// Config file (for the data and keys folders); the development default without it.
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: HeldAction,
    },
    /// Send SMTP TLS reports (RFC 8460).
    Tlsrpt {
        /// Config file (for the data folder and DNS); the development default without it.
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: TlsrptAction,
    },
    /// List and check the S/MIME recipient certificates.
    Certs {
        /// Config file (for `smime.certificates_dir`); the development default without it.
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: CertsAction,
    },
    /// Print the route each recipient address would get, and why, without sending.
    Route {
        /// Config file; the development default without it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Recipient addresses.
        #[arg(required = true)]
        recipients: Vec<String>,
    },
    /// Classify a message file and print, per recipient, the route and every rule that led
    /// to it, without sending anything.
    Explain {
        /// Config file; the development default without it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The message, as an RFC 5322 file (`.eml`).
        message: PathBuf,
        /// Envelope sender, shown in the report.
        #[arg(long)]
        from: Option<String>,
        /// Envelope recipients.
        #[arg(long = "rcpt", required = true)]
        recipients: Vec<String>,
    },
    /// Create DKIM signing keys.
    Dkim {
        /// Config file (for the keys folder); the development default without it.
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: dkim_commands::DkimAction,
    },
    /// Print or check the DNS records (SPF, DKIM, DMARC, MTA-STS, TLS-RPT) of a sending
    /// domain.
    Dns {
        /// Config file (for keys, resolver and addresses); the development default without it.
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: dkim_commands::DnsAction,
    },
    /// Read a password from standard input and print its Argon2id hash for
    /// `[[inbound.users]]`.
    HashPassword,
    /// Add, list and remove administrator accounts, set passwords and TOTP.
    Admin {
        /// Config file (for the data folder); the development default without it.
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: cli::accounts::AdminAction,
    },
    /// List, show, release, reject and delete messages held for review.
    Review {
        /// Config file; the development default without it.
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: cli::review::ReviewAction,
    },
    /// Verify and export the audit trail.
    Audit {
        /// Config file (for the data folder); the development default without it.
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: cli::audit::AuditAction,
    },
}

#[derive(Subcommand)]
enum QueueAction {
    /// One line per queued message: id, age, size, sender, recipients left.
    List,
    /// Envelope and per-recipient state of one message.
    Show {
        /// Queue id.
        id: String,
    },
    /// Make every deferred recipient due now.
    Flush,
    /// Remove a message from the queue without delivering it or sending a DSN.
    Delete {
        /// Queue id.
        id: String,
    },
}

#[derive(Subcommand)]
enum TlsrptAction {
    /// Queue a report for every domain with recorded results, today's included, to the
    /// `mailto:` addresses of its `_smtp._tls` record, and clear those results.
    Send,
}

#[derive(Subcommand)]
enum HeldAction {
    /// One line per held message: id, state, created, expires.
    List,
    /// The decrypted envelope of one held message: queue id, sender, recipient, subject.
    /// The message itself is never printed.
    Show {
        /// Held id.
        id: String,
    },
    /// Delete a held message's content and key, so its link stops working.
    Revoke {
        /// Held id.
        id: String,
    },
    /// Delete the content of every held message past its retention now.
    Expire,
    /// Create a master key with the next id; new messages use it unless
    /// `store.master_key_id` names another.
    NewKey,
}

#[derive(Subcommand)]
enum CertsAction {
    /// One line per address: the certificate it gets, with subject, issuer, expiry and file.
    List,
    /// One line per certificate file: valid, or invalid with the reason. Exits non-zero
    /// when any file is invalid.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve { .. }) {
        // Let `sealgate queue list | head` end quietly when the reader goes away, as other
        // command-line tools do, rather than panic on a failed write.
        // SAFETY: called before any other thread exists; SIG_DFL is a valid disposition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cli.command {
        Command::Serve { config } => serve(config.as_deref()),
        Command::CheckConfig { file } => check_config(&file),
        Command::Init { dir } => init(&dir),
        Command::Queue { config, action } => queue(config.as_deref(), action),
        Command::Certs { config, action } => certs(config.as_deref(), action),
        Command::Held { config, action } => held(config.as_deref(), action),
        Command::Tlsrpt { config, action } => tlsrpt(config.as_deref(), action),
        Command::Route { config, recipients } => route(config.as_deref(), &recipients),
        Command::Explain {
            config,
            message,
            from,
            recipients,
        } => explain(config.as_deref(), &message, from.as_deref(), &recipients),
        Command::Dkim { config, action } => dkim_commands::dkim(config.as_deref(), action),
        Command::Dns { config, action } => dkim_commands::dns(config.as_deref(), action),
        Command::HashPassword => hash_password(),
        Command::Admin { config, action } => {
            load_config(config.as_deref()).and_then(|config| cli::accounts::run(&config, action))
        }
        Command::Review { config, action } => {
            load_config(config.as_deref()).and_then(|config| cli::review::run(&config, action))
        }
        Command::Audit { config, action } => {
            load_config(config.as_deref()).and_then(|config| cli::audit::run(&config, action))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("sealgate: {message}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: Option<&Path>) -> Result<Config, String> {
    match path {
        Some(path) => Config::load(path).map_err(|error| error.to_string()),
        None => Ok(Config::development()),
    }
}

fn serve(config_path: Option<&Path>) -> Result<(), String> {
    sealgate::telemetry::init();
    let config = load_config(config_path)?;
    if config_path.is_none() {
        tracing::warn!(
            "no --config given: running the embedded development default (loopback only, \
             data in ./data, keys in ./keys)"
        );
        let created =
            keys::create_development_keys(&config.server.keys_dir, &config.server.hostname)
                .map_err(|error| error.to_string())?;
        if created {
            tracing::warn!(
                keys_dir = %config.server.keys_dir.display(),
                "created a self-signed development TLS certificate; replace it before real use"
            );
        }
        if let Some(path) =
            hold::ensure_master_key(&config.server.keys_dir).map_err(|error| error.to_string())?
        {
            tracing::warn!(path = %path.display(), "created a store master key");
        }
    }

    let runtime = tokio::runtime::Runtime::new()
        .map_err(|error| format!("failed to start the async runtime: {error}"))?;
    runtime.block_on(run_gateway(Arc::new(config)))
}

async fn run_gateway(config: Arc<Config>) -> Result<(), String> {
    let tls = keys::load_server_tls(
        &config.key_path(&config.inbound.tls_certificate),
        &config.key_path(&config.inbound.tls_key),
    )
    .map_err(|error| error.to_string())?;
    let courier = SmtpCourier::with_policy_database(&config).map_err(|error| error.to_string())?;

    // Queued bodies are encrypted at rest, so without a master key nothing is accepted.
    let master_keys = load_master_keys(&config)?;
    let committed = Arc::new(Notify::new());
    let spool = Spool::start(
        &config.database_path(),
        Arc::clone(&master_keys),
        Arc::clone(&committed),
    )
    .map_err(|error| error.to_string())?;
    let smime = Smime::new(&config).map_err(|error| error.to_string())?;
    let certificates = CertificateDirectory::load(&config).map_err(|error| error.to_string())?;
    let manager = QueueManager::new(
        Arc::clone(&config),
        spool.clone(),
        committed,
        Arc::new(courier),
    )
    .map_err(|error| error.to_string())?
    .with_smime(smime, certificates);
    let hold_store = open_hold_store(&config);
    let manager = match &hold_store {
        Ok((hold_store, audit)) => manager.with_hold_store(hold_store.clone(), audit.clone()),
        Err(error) => {
            // Fail closed: without the store, portal mail stays held in the queue.
            tracing::error!(%error, "hold store unavailable; portal mail stays held in the queue");
            manager
        }
    };
    let mut manager = tokio::spawn(manager.run());
    if config.delivery.tlsrpt {
        tokio::spawn(delivery::tlsrpt::run_reporter(
            Arc::clone(&config),
            spool.clone(),
        ));
    }

    let admin_hold_store = hold_store.as_ref().ok().map(|(store, _)| store.clone());
    if let Ok((hold_store, audit)) = hold_store {
        // The SMTP side keeps working without the portal; held mail waits for it.
        if let Err(error) =
            start_portal(&config, spool.clone(), Arc::clone(&tls), hold_store, audit).await
        {
            tracing::error!(%error, "portal not started");
        }
    } else {
        tracing::warn!("portal not started: the hold store is unavailable");
    }
    // The gateway keeps relaying without the admin pages; held mail waits for them.
    if let Err(error) = start_admin(&config, Arc::clone(&tls), admin_hold_store).await {
        tracing::error!(%error, "admin pages not started");
    }
    let context = Arc::new(InboundContext::new(
        Arc::clone(&config),
        Some(tokio_rustls::TlsAcceptor::from(tls)),
        spool,
    ));
    for address in &config.inbound.listen {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|error| format!("failed to listen on {address}: {error}"))?;
        tokio::spawn(inbound::serve(listener, Arc::clone(&context)));
    }

    // A gateway whose queue manager has stopped would accept mail it never delivers, so
    // its end ends the process.
    tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            Ok(())
        }
        outcome = &mut manager => {
            let reason = match outcome {
                Ok(()) => "it returned".to_string(),
                Err(error) => error.to_string(),
            };
            tracing::error!(%reason, "queue manager stopped; shutting down");
            Err(format!("queue manager stopped: {reason}"))
        }
    }
}

/// Starts the recipient portal on `portal.listen`, with the inbound TLS certificate when
/// `portal.tls` is set.
async fn start_portal(
    config: &Config,
    spool: Spool,
    tls: Arc<rustls::ServerConfig>,
    store: HoldStore,
    audit: AuditLog,
) -> Result<(), String> {
    let address = config.portal.listen;
    portal::check_listen_address(
        address,
        config.portal.tls,
        config.portal.dangerous_allow_plain_http,
    )
    .map_err(|reason| format!("portal.listen = \"{address}\": {reason}"))?;
    let acceptor = config
        .portal
        .tls
        .then(|| tokio_rustls::TlsAcceptor::from(tls));
    let context = Arc::new(portal::PortalContext::new(
        portal::PortalSettings::from_config(config),
        Arc::new(portal::StoreBackend::new(store, audit)),
        spool,
        acceptor,
    ));
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|error| format!("failed to listen on {address} for the portal: {error}"))?;
    // Log the bound address, so that a configured port 0 shows the port in use.
    let address = listener.local_addr().unwrap_or(address);
    tracing::info!(%address, tls = config.portal.tls, "portal listening");
    tokio::spawn(portal::serve_portal(listener, context));
    Ok(())
}

/// Starts the admin pages on `admin.listen`, with the inbound TLS certificate when
/// `admin.tls` is set.
async fn start_admin(
    config: &Arc<Config>,
    tls: Arc<rustls::ServerConfig>,
    hold_store: Option<HoldStore>,
) -> Result<(), String> {
    let address = config.admin.listen;
    sealgate::admin::web::check_listen_address(address, config.admin.tls)?;
    let acceptor = config
        .admin
        .tls
        .then(|| tokio_rustls::TlsAcceptor::from(tls));
    let context = sealgate::admin::web::AdminContext::new(
        Arc::clone(config),
        certificate_source(config)?,
        hold_store,
        acceptor,
    )?;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|error| format!("failed to listen on {address} for the admin pages: {error}"))?;
    let bound = listener
        .local_addr()
        .map_err(|error| format!("failed to read the admin address: {error}"))?;
    tracing::info!(address = %bound, tls = config.admin.tls, "admin pages listening");
    tokio::spawn(sealgate::admin::web::serve_admin(
        listener,
        Arc::new(context),
    ));
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

fn check_config(file: &Path) -> Result<(), String> {
    let config = Config::load(file).map_err(|error| error.to_string())?;
    keys::load_server_tls(
        &config.key_path(&config.inbound.tls_certificate),
        &config.key_path(&config.inbound.tls_key),
    )
    .map_err(|error| format!("{}: inbound TLS: {error}", file.display()))?;
    SmtpCourier::new(&config).map_err(|error| format!("{}: delivery: {error}", file.display()))?;
    Smime::new(&config).map_err(|error| format!("{}: smime: {error}", file.display()))?;
    CertificateDirectory::load(&config)
        .map_err(|error| format!("{}: smime: {error}", file.display()))?;
    sealgate::dkim::MessageSigner::load(&config)
        .map_err(|error| format!("{}: dkim: {error}", file.display()))?;
    if config.policy.secure_domains.is_empty() {
        eprintln!(
            "warning: {}: policy.secure_domains is empty, so no mail requires verified TLS",
            file.display()
        );
    }
    for network in &config.inbound.relay_networks {
        if network.prefix_len() == 0 {
            eprintln!(
                "warning: {}: inbound.relay_networks contains {network}, so every client may \
                 relay without AUTH",
                file.display()
            );
        }
    }
    println!(
        "{}: ok ({} listener(s), {} secure domain pattern(s), {} static route(s))",
        file.display(),
        config.inbound.listen.len(),
        config.policy.secure_domains.len(),
        config.delivery.routes.len()
    );
    Ok(())
}

fn init(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir)
        .map_err(|error| format!("failed to create {}: {error}", dir.display()))?;
    let config_path = dir.join("sealgate.toml");
    if config_path.exists() {
        println!("kept existing {}", config_path.display());
    } else {
        std::fs::write(&config_path, EXAMPLE_CONFIG)
            .map_err(|error| format!("failed to write {}: {error}", config_path.display()))?;
        println!("wrote {}", config_path.display());
    }
    let config = Config::load(&config_path).map_err(|error| error.to_string())?;
    let keys_dir = config.server.keys_dir.clone();
    let created = keys::create_development_keys(&keys_dir, &config.server.hostname)
        .map_err(|error| error.to_string())?;
    if created {
        println!(
            "wrote a self-signed development certificate to {} (replace it before real use)",
            keys_dir.display()
        );
    } else {
        println!("kept existing keys in {}", keys_dir.display());
    }
    match hold::ensure_master_key(&keys_dir).map_err(|error| error.to_string())? {
        Some(path) => println!(
            "wrote a store master key (encrypts queued and held mail) to {}",
            path.display()
        ),
        None => println!(
            "kept existing store master key(s) in {}",
            keys_dir.display()
        ),
    }
    println!(
        "check it with: sealgate check-config {}",
        config_path.display()
    );
    println!(
        "start with: sealgate serve --config {}",
        config_path.display()
    );
    Ok(())
}

fn open_store(config_path: Option<&Path>) -> Result<Store, String> {
    let config = load_config(config_path)?;
    let path = config.database_path();
    if !path.exists() {
        return Err(format!(
            "no queue database at {}; check server.data_dir or start `sealgate serve` once",
            path.display()
        ));
    }
    Store::open(&path, load_master_keys(&config)?).map_err(|error| error.to_string())
}

fn load_master_keys(config: &Config) -> Result<Arc<hold::MasterKeys>, String> {
    hold::MasterKeys::load(&config.server.keys_dir, config.store.master_key_id)
        .map(Arc::new)
        .map_err(|error| error.to_string())
}

fn parse_id(text: &str) -> Result<QueueId, String> {
    QueueId::parse(text).ok_or_else(|| format!("invalid queue id {text:?}: expected 16 hex digits"))
}

fn queue(config_path: Option<&Path>, action: QueueAction) -> Result<(), String> {
    let mut store = open_store(config_path)?;
    let error = |error: sealgate::queue::QueueError| error.to_string();
    match action {
        QueueAction::List => {
            let now = now_millis();
            let messages = store.list().map_err(error)?;
            for message in &messages {
                let recipients = store.recipients(&message.id).map_err(error)?;
                let open: Vec<String> = recipients
                    .iter()
                    .filter(|row| {
                        matches!(
                            row.state,
                            RecipientState::Incoming
                                | RecipientState::Pending
                                | RecipientState::Held
                        )
                    })
                    .map(|row| display_address(&row.address))
                    .collect();
                println!(
                    "{}  {:>8}  {:>9}  from={}  to={}",
                    message.id,
                    format_age(now - message.received_at),
                    message.size,
                    display_address(&message.sender),
                    open.join(",")
                );
            }
            println!("{} message(s)", messages.len());
        }
        QueueAction::Show { id } => {
            let id = parse_id(&id)?;
            let message = store
                .message(&id)
                .map_err(error)?
                .ok_or_else(|| format!("message {id} not found in the queue"))?;
            println!("id: {}", message.id);
            println!("from: {}", display_address(&message.sender));
            println!("client: {}", sealgate::telemetry::escape(&message.client));
            println!("size: {}", message.size);
            println!("age: {}", format_age(now_millis() - message.received_at));
            println!(
                "8bit: {}, smtputf8: {}",
                message.body_8bit, message.smtputf8
            );
            for row in store.recipients(&id).map_err(error)? {
                println!(
                    "to: {} state={:?} route={} attempts={} next={} status={} relay={} tls={}",
                    display_address(&row.address),
                    row.state,
                    row.route.as_deref().unwrap_or("-"),
                    row.attempts,
                    if row.state == RecipientState::Pending {
                        format!("in {}", format_age(row.next_attempt - now_millis()))
                    } else {
                        "-".into()
                    },
                    row.last_status.as_deref().unwrap_or("-"),
                    row.last_relay.as_deref().unwrap_or("-"),
                    row.last_tls.as_deref().unwrap_or("-"),
                );
                if let Some(reason) = &row.reason {
                    println!("    reason: {}", sealgate::telemetry::escape(reason));
                }
                if let Some(detail) = &row.last_detail {
                    println!("    last: {}", sealgate::telemetry::escape(detail));
                }
            }
        }
        QueueAction::Flush => {
            let count = store.flush().map_err(error)?;
            println!("{count} recipient(s) made due now");
        }
        QueueAction::Delete { id } => {
            let id = parse_id(&id)?;
            if !store.delete(&id).map_err(error)? {
                return Err(format!("message {id} not found in the queue"));
            }
            println!("deleted {id}");
        }
    }
    Ok(())
}

fn open_hold_store(config: &Config) -> Result<(HoldStore, AuditLog), String> {
    let hold_store = HoldStore::open(config).map_err(|error| error.to_string())?;
    let audit = AuditLog::open(config).map_err(|error| error.to_string())?;
    Ok((hold_store, audit))
}

fn parse_held_id(text: &str) -> Result<HeldId, String> {
    HeldId::parse(text).ok_or_else(|| format!("invalid held id {text:?}: expected 16 hex digits"))
}

fn tlsrpt(config_path: Option<&Path>, action: TlsrptAction) -> Result<(), String> {
    let config = load_config(config_path)?;
    let TlsrptAction::Send = action;
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|error| format!("failed to start the async runtime: {error}"))?;
    runtime.block_on(async {
        let spool = Spool::start(
            &config.database_path(),
            load_master_keys(&config)?,
            Arc::new(Notify::new()),
        )
        .map_err(|error| error.to_string())?;
        let queued = delivery::tlsrpt::queue_reports(&config, &spool, true).await?;
        for (domain, id) in &queued {
            println!("{domain}: queued as {id}");
        }
        println!("{} reports queued", queued.len());
        Ok(())
    })
}

fn held(config_path: Option<&Path>, action: HeldAction) -> Result<(), String> {
    let config = load_config(config_path)?;
    if let HeldAction::NewKey = action {
        let (id, path) =
            hold::create_master_key(&config.server.keys_dir).map_err(|error| error.to_string())?;
        println!("wrote master key {id} to {}", path.display());
        return Ok(());
    }
    if !config.database_path().exists() {
        return Err(format!(
            "no queue database at {}; check server.data_dir or start `sealgate serve` once",
            config.database_path().display()
        ));
    }
    let (store, audit) = open_hold_store(&config)?;
    let error = |error: hold::StoreError| error.to_string();
    match action {
        HeldAction::List => {
            let held = store.list().map_err(error)?;
            for summary in &held {
                println!(
                    "{}  {:<7}  created {}  expires {}",
                    summary.id,
                    summary.state,
                    format_time(summary.created_at),
                    format_time(summary.expires_at)
                );
            }
            println!("{} held message(s)", held.len());
        }
        HeldAction::Show { id } => {
            let id = parse_held_id(&id)?;
            let summary = store
                .list()
                .map_err(error)?
                .into_iter()
                .find(|summary| summary.id == id)
                .ok_or_else(|| format!("held message {id} not found"))?;
            println!("id: {}", summary.id);
            println!("state: {}", summary.state);
            println!("created: {}", format_time(summary.created_at));
            println!("expires: {}", format_time(summary.expires_at));
            if let Some(key_id) = store.key_id(&id).map_err(error)? {
                println!("master key: {key_id}");
            }
            match store.open_envelope(&id) {
                Ok(envelope) => {
                    println!(
                        "queue id: {}",
                        sealgate::telemetry::escape(&envelope.queue_id)
                    );
                    println!("from: {}", display_address(&envelope.sender));
                    println!("to: {}", display_address(&envelope.recipient));
                    println!(
                        "subject: {}",
                        sealgate::telemetry::escape(&envelope.subject)
                    );
                }
                Err(hold::StoreError::NotActive { .. }) => {
                    println!("envelope: deleted with the content");
                }
                Err(other) => return Err(other.to_string()),
            }
        }
        HeldAction::Revoke { id } => {
            let id = parse_held_id(&id)?;
            if store.revoke(&id).map_err(error)? {
                audit
                    .record(AuditEvent::Revoked, Some(&id), None, "sealgate held revoke")
                    .map_err(error)?;
                println!("revoked {id}");
            } else {
                return Err(format!(
                    "held message {id} is not active; nothing to revoke"
                ));
            }
        }
        HeldAction::Expire => {
            let ids = store.expire_due_ids(now_millis()).map_err(error)?;
            for id in &ids {
                audit
                    .record(AuditEvent::Expired, Some(id), None, "sealgate held expire")
                    .map_err(error)?;
            }
            println!("{} held message(s) expired", ids.len());
        }
        HeldAction::NewKey => unreachable!("handled above"),
    }
    Ok(())
}

/// Formats Unix milliseconds as `2026-12-03 14:05:09Z`.
fn format_time(millis: i64) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");
    time::OffsetDateTime::from_unix_timestamp(millis / 1000)
        .ok()
        .and_then(|moment| moment.format(&format).ok())
        .unwrap_or_else(|| millis.to_string())
}

fn certs(config_path: Option<&Path>, action: CertsAction) -> Result<(), String> {
    let config = load_config(config_path)?;
    let directory = CertificateDirectory::load(&config).map_err(|error| error.to_string())?;
    match action {
        CertsAction::List => print!("{}", directory.list_report()),
        CertsAction::Check => {
            let (report, all_valid) = directory.check_report();
            print!("{report}");
            if !directory.dir_exists() {
                return Err(format!(
                    "certificate folder {} not found",
                    directory.dir().display()
                ));
            }
            if !all_valid {
                return Err(format!(
                    "{} invalid certificate(s) or file(s) in {}",
                    directory.skipped().len(),
                    directory.dir().display()
                ));
            }
        }
    }
    Ok(())
}

fn route(config_path: Option<&Path>, recipients: &[String]) -> Result<(), String> {
    let config = load_config(config_path)?;
    let router = Router::new(&config.policy);
    for address in recipients {
        let (route, recipient) = router.route_recipient(address);
        println!(
            "{}: {route} ({})",
            display_address(&recipient.address),
            recipient.reason
        );
    }
    Ok(())
}

fn explain(
    config_path: Option<&Path>,
    message_path: &Path,
    from: Option<&str>,
    recipients: &[String],
) -> Result<(), String> {
    let config = load_config(config_path)?;
    let message = std::fs::read(message_path)
        .map_err(|error| format!("failed to read {}: {error}", message_path.display()))?;
    println!("message: {}", message_path.display());
    if let Some(from) = from {
        println!("from: {}", display_address(from));
    }
    print_explanation(&config, &message, recipients, None)
}

/// Prints the classification of `message`, with `release` applied when given, and the
/// route and reason of each recipient.
fn print_explanation(
    config: &Config,
    message: &[u8],
    recipients: &[String],
    release: Option<ReleaseMode>,
) -> Result<(), String> {
    let classifier = Classifier::new(&config.policy.classify).map_err(|error| error.to_string())?;
    let certificates = certificate_source(config)?;
    let classification = review::apply_release(classifier.classify(message), release);
    match classification.action {
        Some(action) => println!("classification: sensitive, action {action}"),
        None => println!("classification: not sensitive"),
    }
    for rule in &classification.matches {
        println!("  rule: {rule}");
    }
    if classify::strip_subject_tags(message, &config.policy.classify).is_some() {
        println!("  the subject tag is removed before delivery");
    }
    let router = Router::new(&config.policy);
    for address in recipients {
        let (route, recipient) =
            router.route_classified(address, &classification, certificates.as_ref());
        println!("{}: {route}", display_address(address));
        println!("  because: {}", recipient.reason);
        if let Some(requirement) = route.tls_requirement() {
            println!(
                "  tls: {}",
                delivery::describe_tls_policy(&config.delivery, requirement)
            );
        }
    }
    Ok(())
}

/// The certificate source for routing: the S/MIME certificate directory.
fn certificate_source(config: &Config) -> Result<Arc<dyn CertificateSource>, String> {
    let directory = CertificateDirectory::load(config).map_err(|error| error.to_string())?;
    Ok(Arc::new(directory))
}

fn hash_password() -> Result<(), String> {
    let password = cli::read_password(false)?;
    println!("{}", sealgate::admin::hash_password(&password)?);
    Ok(())
}

fn format_age(millis: i64) -> String {
    let seconds = millis.max(0) / 1000;
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m", seconds / 60),
        3600..86_400 => format!("{}h{}m", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{}d{}h", seconds / 86_400, seconds % 86_400 / 3600),
    }
}
