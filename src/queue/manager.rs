//! The queue manager: one task that owns the schedule. It routes newly committed messages,
//! claims due recipients, hands each (message, route, domain) group to a delivery worker,
//! and turns the workers' reports into sent, deferred and bounced states, log lines and
//! DSNs. Only this task changes retry times.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OnceCell, Semaphore, mpsc};

use super::dsn::{self, FailedRecipient};
use super::store::{
    AttemptRecord, MessageRoutes, MessageSummary, RecipientRow, RecipientState, RecipientUpdate,
    Store, now_millis,
};
use super::{QueueError, Spool};
use crate::audit::{AuditEvent, AuditLog};
use crate::config::Config;
use crate::delivery::{
    AttemptReport, DeliveryJob, DeliveryStatus, Failure, RecipientResult, Stage, TlsOutcome,
    Transport,
};
use crate::dkim::{DkimSignatures, MessageSigner};
use crate::envelope::{AcceptedMessage, ClientInfo, QueueId, display_address, domain_of};
use crate::policy::classify::{self, Classifier};
use crate::policy::{CertificateSource, NoCertificates, Route, Router, TlsRequirement};
use crate::smime::{CertificateDirectory, Smime, SmimeOutcome};
use crate::store::{HoldStore, MasterKeys};
use crate::telemetry::{MAIL_LOG, escape, escape_field};

use super::portal::PortalHold;
use super::review::{self, AuditNote};

/// Unrouted messages routed together at most, with one commit.
const INCOMING_BATCH: usize = 100;
/// Body bytes that routing, or the portal route's hold step, loads for one batch at most.
/// A batch always takes its first message, whatever its size.
pub(super) const BATCH_BYTES: u64 = 32 * 1024 * 1024;
/// Recipients claimed per scan at most.
const CLAIM_BATCH: usize = 200;
/// How long a claim lasts. Longer than any attempt can take with the default timeouts; a
/// claim left by a crashed process is released when the next one starts.
const CLAIM_LEASE: Duration = Duration::from_secs(4 * 3600);

/// How often held messages past their retention are expired.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(60);
/// Interval between sweeps for finished messages whose removal failed. The first sweep
/// runs at start.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Finished messages removed per sweep at most.
const SWEEP_BATCH: usize = 500;

/// The queue manager and its delivery workers.
pub struct QueueManager {
    config: Arc<Config>,
    store: Arc<Mutex<Store>>,
    transport: Arc<dyn Transport>,
    spool: Spool,
    router: Router,
    classifier: Arc<Classifier>,
    certificates: Arc<dyn CertificateSource>,
    smime: Option<SmimeEncryption>,
    portal: Option<PortalHold>,
    dkim: Arc<MessageSigner>,
    audit: AuditLog,
    wake: Arc<Notify>,
}

/// A worker's report for one group.
struct WorkerDone {
    id: QueueId,
    route: Route,
    summary: MessageSummary,
    started_at: i64,
    report: AttemptReport,
    /// The `dkim=` log value: `none` or the signing `DOMAIN/SELECTOR`s.
    dkim: String,
}

impl QueueManager {
    /// Opens its own connection to the queue database, with the master keys from
    /// `server.keys_dir`. `wake` is the spool's commit notification.
    ///
    /// # Errors
    ///
    /// [`QueueError::MasterKey`] when the master keys cannot be loaded,
    /// [`QueueError::Setup`] naming the file when a DKIM key cannot be loaded, otherwise as
    /// for [`Store::open`].
    pub fn new(
        config: Arc<Config>,
        spool: Spool,
        wake: Arc<Notify>,
        transport: Arc<dyn Transport>,
    ) -> Result<QueueManager, QueueError> {
        let keys = MasterKeys::load(&config.server.keys_dir, config.store.master_key_id)?;
        let store = Store::open(&config.database_path(), Arc::new(keys))?;
        let classifier = Classifier::new(&config.policy.classify)
            .map_err(|error| QueueError::Setup(error.to_string()))?;
        let dkim =
            MessageSigner::load(&config).map_err(|error| QueueError::Setup(error.to_string()))?;
        let audit = AuditLog::open(&config)
            .map_err(|error| QueueError::Setup(format!("audit log: {error}")))?;
        Ok(QueueManager {
            audit,
            dkim: Arc::new(dkim),
            router: Router::new(&config.policy),
            classifier: Arc::new(classifier),
            certificates: Arc::new(NoCertificates),
            smime: None,
            portal: None,
            config,
            store: Arc::new(Mutex::new(store)),
            transport,
            spool,
            wake,
        })
    }

    /// Routes sensitive mail to S/MIME for the recipients in `certificates`, and encrypts
    /// it with `smime` at delivery.
    pub fn with_smime(mut self, smime: Smime, certificates: CertificateDirectory) -> QueueManager {
        let certificates = Arc::new(certificates);
        self.certificates = Arc::clone(&certificates) as Arc<dyn CertificateSource>;
        self.smime = Some(SmimeEncryption {
            smime: Arc::new(smime),
            certificates,
            classifier: Arc::clone(&self.classifier),
        });
        self
    }

    /// Moves `portal` recipients into `hold_store`, queues their notifications and records
    /// both in `audit`. Without this, `portal` recipients stay held.
    pub fn with_hold_store(mut self, hold_store: HoldStore, audit: AuditLog) -> QueueManager {
        self.portal = Some(PortalHold::new(
            Arc::clone(&self.config),
            hold_store,
            audit,
            Arc::clone(&self.wake),
        ));
        self
    }

    /// Runs until the process ends.
    pub async fn run(self) {
        match self.with_store(|store| store.release_claims()).await {
            Ok(released) if released > 0 => {
                tracing::info!(
                    released,
                    "released delivery claims left by an earlier process"
                )
            }
            Ok(_) => {}
            Err(error) => tracing::error!(%error, "failed to release old delivery claims"),
        }

        let (done_sender, mut done_receiver) = mpsc::channel(256);
        let workers = Arc::new(Semaphore::new(self.config.delivery.concurrency));
        let scan_interval = self.config.queue.scan_interval.0;
        let mut last_expiry: Option<Instant> = None;
        let mut last_sweep: Option<Instant> = None;
        loop {
            self.route_incoming().await;
            if let Some(portal) = &self.portal {
                let moved = portal.hold_due(&self.store).await;
                self.remove_finished(moved).await;
                if last_expiry.is_none_or(|at| at.elapsed() >= EXPIRY_INTERVAL) {
                    portal.expire_due().await;
                    last_expiry = Some(Instant::now());
                }
            }
            if last_sweep.is_none_or(|at| at.elapsed() >= SWEEP_INTERVAL) {
                self.sweep_finished().await;
                last_sweep = Some(Instant::now());
            }
            self.report_leftover_bounces().await;
            self.dispatch_due(&done_sender, &workers).await;
            let mut finished = Vec::new();
            tokio::select! {
                _ = self.wake.notified() => {}
                Some(done) = done_receiver.recv() => finished.push(done),
                _ = tokio::time::sleep(scan_interval) => {}
            }
            while let Ok(done) = done_receiver.try_recv() {
                finished.push(done);
            }
            if !finished.is_empty() {
                self.finish_attempts(finished).await;
            }
        }
    }

    async fn with_store<T: Send + 'static>(
        &self,
        operation: impl FnOnce(&mut Store) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || {
            let mut store = store
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            operation(&mut store)
        })
        .await
        .unwrap_or_else(|join_error| Err(QueueError::CommitFailed(join_error.to_string())))
    }

    /// Routes every message whose recipients have no route yet, a batch at a time: one
    /// blocking task reads the batch, one classifies it, and one transaction stores every
    /// route.
    async fn route_incoming(&self) {
        let incoming = match self
            .with_store(|store| read_incoming(store, BATCH_BYTES))
            .await
        {
            Ok((incoming, more)) => {
                if more {
                    // Come round again at once for the rest instead of at the next scan.
                    self.wake.notify_one();
                }
                incoming
            }
            Err(error) => {
                tracing::error!(%error, "failed to read incoming messages");
                return;
            }
        };
        if incoming.is_empty() {
            return;
        }
        let classifier = Arc::clone(&self.classifier);
        let classify_config = self.config.policy.classify.clone();
        let classified = tokio::task::spawn_blocking(move || {
            incoming
                .into_iter()
                .map(|message| {
                    examine(message, |body| {
                        let classification = classifier.classify(body);
                        let stripped = classify::strip_subject_tags(body, &classify_config);
                        (classification, stripped)
                    })
                })
                .collect::<Vec<_>>()
        })
        .await;
        let Ok(classified) = classified else {
            // Fail closed: without a classification nothing is routed, so nothing leaves.
            tracing::error!("classification task failed; incoming messages left unrouted");
            return;
        };

        let mut planned = Vec::with_capacity(classified.len());
        let mut notes = Vec::new();
        for (message, classification, stripped) in classified {
            let id = message.summary.id;
            let routes = self.plan_routes(
                &id,
                &message.addresses,
                classification,
                message.summary.review_release,
                &mut notes,
            );
            if stripped.is_some() {
                tracing::info!(target: MAIL_LOG, "{id}: subject tag removed");
            }
            planned.push((id, routes, stripped));
        }
        let count = planned.len();
        if let Err(error) = self
            .with_store(move |store| {
                let messages: Vec<MessageRoutes<'_>> = planned
                    .iter()
                    .map(|(id, routes, stripped)| MessageRoutes {
                        id,
                        routes,
                        body: stripped.as_deref(),
                    })
                    .collect();
                store.set_routes_of_all(&messages)
            })
            .await
        {
            tracing::error!(messages = count, %error, "failed to store routes");
            return;
        }
        review::record_notes(&self.audit, notes).await;
    }

    /// Chooses the route of each of a message's `addresses`, logs each choice and adds its
    /// audit note to `notes`; returns `(address, route, reason)` for each.
    fn plan_routes(
        &self,
        id: &QueueId,
        addresses: &[String],
        classification: classify::Classification,
        release: Option<review::ReleaseMode>,
        notes: &mut Vec<(QueueId, AuditNote)>,
    ) -> Vec<(String, Route, String)> {
        let classification = review::apply_release(classification, release);
        let plan =
            self.router
                .plan_classified(addresses, &classification, self.certificates.as_ref());
        let mut routes = Vec::new();
        for group in plan.groups {
            for mut recipient in group.recipients {
                if let Some(mode) = release {
                    recipient.reason = format!(
                        "{}; released from review ({})",
                        recipient.reason,
                        mode.as_str()
                    );
                }
                tracing::info!(
                    target: MAIL_LOG,
                    "{id}: to={}, route={}, reason=\"{}\"",
                    display_address(&recipient.address),
                    group.route,
                    quoted_reason(Some(&recipient.reason))
                );
                let note = AuditNote {
                    event: AuditEvent::Routed,
                    actor: "policy",
                    outcome: group.route.as_str().to_string(),
                    detail: format!(
                        "to={}; {}",
                        display_address(&recipient.address),
                        recipient.reason
                    ),
                };
                notes.push((id.clone(), note));
                routes.push((recipient.address, group.route, recipient.reason));
            }
        }
        routes
    }

    /// Claims due recipients and starts one worker per (message, route, domain) group.
    async fn dispatch_due(&self, done: &mpsc::Sender<WorkerDone>, workers: &Arc<Semaphore>) {
        let now = now_millis();
        let lease_until = now + CLAIM_LEASE.as_millis() as i64;
        let claimed = match self
            .with_store(move |store| store.claim_due(now, lease_until, CLAIM_BATCH))
            .await
        {
            Ok(claimed) => claimed,
            Err(error) => {
                tracing::error!(%error, "failed to claim due deliveries");
                return;
            }
        };

        // Each S/MIME recipient is its own delivery: its message opens only with its key.
        let mut groups: BTreeMap<(QueueId, String, String, String), Vec<String>> = BTreeMap::new();
        for (id, address, route) in claimed {
            let domain = domain_of(&address);
            let own_delivery = if route == Route::Smime.as_str() {
                address.clone()
            } else {
                String::new()
            };
            groups
                .entry((id, route, domain, own_delivery))
                .or_default()
                .push(address);
        }
        // Groups of one message carry the same bytes, except S/MIME ones, so they share
        // one DKIM signature per dispatch.
        let mut shared_signatures: BTreeMap<QueueId, Arc<OnceCell<SignOutcome>>> = BTreeMap::new();
        for ((id, route_name, domain, own_delivery), recipients) in groups {
            let Ok(route) = route_name.parse::<Route>() else {
                // Fail closed: a route this version does not know is never guessed at.
                tracing::error!(queue_id = %id, route = %escape(&route_name), "unknown route; delivery held");
                continue;
            };
            let signatures = if own_delivery.is_empty() {
                Arc::clone(shared_signatures.entry(id.clone()).or_default())
            } else {
                Arc::default()
            };
            let worker = DeliveryWorker {
                store: Arc::clone(&self.store),
                transport: Arc::clone(&self.transport),
                smime: self.smime.clone(),
                dkim: Arc::clone(&self.dkim),
                signatures,
                done: done.clone(),
                workers: Arc::clone(workers),
            };
            tokio::spawn(worker.run(id, route, domain, recipients));
        }
    }

    /// Records the reports of the workers that finished together: states, log lines, retry
    /// times, DSNs. Their recipients are read in one blocking task and every result is
    /// stored in one transaction, so one commit serves the whole batch.
    async fn finish_attempts(&self, finished: Vec<WorkerDone>) {
        let ids: Vec<QueueId> = finished.iter().map(|done| done.id.clone()).collect();
        let rows = match self
            .with_store(move |store| {
                ids.iter()
                    .map(|id| store.recipients(id))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await
        {
            Ok(rows) => rows,
            Err(error) => {
                // Without the stored rows, reasons and attempt counts start from nothing;
                // the results are still recorded.
                tracing::error!(%error, "failed to read recipients of finished attempts");
                Vec::new()
            }
        };

        let now = now_millis();
        let mut attempts = Vec::with_capacity(finished.len());
        let mut notes = Vec::new();
        let mut followups = Vec::with_capacity(finished.len());
        for (index, done) in finished.into_iter().enumerate() {
            let rows = rows.get(index).map(Vec::as_slice).unwrap_or_default();
            let (updates, message_notes) = self.results_of(&done, rows, now);
            let moved: Vec<String> = updates
                .iter()
                .filter(|update| update.to_portal)
                .map(|update| update.address.clone())
                .collect();
            notes.extend(
                message_notes
                    .into_iter()
                    .map(|note| (done.id.clone(), note)),
            );
            followups.push((done.id.clone(), done.summary, moved));
            attempts.push((done.id, updates));
        }
        let attempts_needed = self.config.policy.forced_tls_fallback_after.unwrap_or(0);
        let fallback_reason =
            format!("verified TLS failed {attempts_needed} times; moved to the portal");

        let reason = fallback_reason.clone();
        let removed = match self
            .with_store(move |store| store.record_results(&attempts, &reason))
            .await
        {
            Ok(removed) => removed,
            Err(error) => {
                for (id, _, _) in &followups {
                    tracing::error!(queue_id = %id, %error, "failed to record delivery results");
                }
                return;
            }
        };
        review::record_notes(&self.audit, notes).await;
        for ((id, summary, moved), removed) in followups.into_iter().zip(removed) {
            for address in &moved {
                tracing::info!(
                    target: MAIL_LOG,
                    "{id}: to={}, route=portal, reason=\"{}\"",
                    display_address(address),
                    quoted_reason(Some(&fallback_reason))
                );
                self.tell_sender_of_fallback(&id, &summary, address).await;
            }
            self.finish_message(&id, removed).await;
        }
    }

    /// Turns one worker's report into the new state of each recipient it tried, logs each
    /// result and returns the states with their audit notes. `rows` are the message's
    /// recipients as stored before the attempt.
    fn results_of(
        &self,
        done: &WorkerDone,
        rows: &[RecipientRow],
        now: i64,
    ) -> (Vec<RecipientUpdate>, Vec<AuditNote>) {
        let WorkerDone {
            id,
            route,
            summary,
            started_at,
            report,
            dkim,
        } = done;
        let (route, started_at) = (*route, *started_at);
        let expires_at = summary.received_at + self.config.queue.max_lifetime.0.as_millis() as i64;
        let routed_at = summary.routed_at.unwrap_or(summary.received_at);
        let delays = format!(
            "{:.1}/{:.1}/{:.1}/{:.1}",
            seconds(routed_at - summary.received_at),
            seconds(started_at - routed_at),
            report.connect_time.as_secs_f64(),
            report.transfer_time.as_secs_f64()
        );
        let relay = report.relay.clone().unwrap_or_else(|| "none".into());
        let tls = report.tls_field();
        let row_of = |address: &str| rows.iter().find(|row| row.address == address);

        let mut updates = Vec::new();
        let mut notes = Vec::new();
        for result in &report.results {
            let mut status_code = result.status.dsn_code();
            let mut expired = false;
            let mut fallback = false;
            let (state, next_attempt, word, detail) = match &result.status {
                DeliveryStatus::Sent(reply) => {
                    (RecipientState::Sent, now, "sent", reply.to_string())
                }
                DeliveryStatus::Bounced(failure) => {
                    (RecipientState::Bounced, now, "bounced", failure.to_string())
                }
                DeliveryStatus::Deferred(failure) if now >= expires_at => {
                    // RFC 3463 §3.5: 4.4.7 is "delivery time expired".
                    expired = true;
                    status_code = "4.4.7".into();
                    (RecipientState::Bounced, now, "expired", failure.to_string())
                }
                DeliveryStatus::Deferred(failure)
                    if self.falls_back_to_portal(
                        route,
                        summary,
                        failure,
                        row_of(&result.recipient),
                    ) =>
                {
                    fallback = true;
                    (RecipientState::Held, now, "deferred", failure.to_string())
                }
                DeliveryStatus::Deferred(failure) => {
                    let attempts = row_of(&result.recipient).map_or(0, |row| row.attempts);
                    let delay = self.retry_delay(attempts);
                    let next = (now + delay.as_millis() as i64).min(expires_at);
                    (
                        RecipientState::Pending,
                        next,
                        "deferred",
                        failure.to_string(),
                    )
                }
            };
            tracing::info!(
                target: MAIL_LOG,
                "{id}: to={}, relay={}, delay={:.1}, delays={delays}, tls={tls}, dkim={dkim}, route={route}, reason=\"{}\", dsn={status_code}, status={word} ({})",
                display_address(&result.recipient),
                escape_field(&relay),
                seconds(now - summary.received_at),
                quoted_reason(row_of(&result.recipient).and_then(|row| row.reason.as_deref())),
                escape(&detail)
            );
            notes.push(AuditNote {
                event: AuditEvent::Delivery,
                actor: "delivery",
                outcome: if fallback { "moved-to-portal" } else { word }.to_string(),
                detail: format!(
                    "to={}; route={route}; relay={}; tls={tls}; status={status_code}",
                    display_address(&result.recipient),
                    escape_field(&relay)
                ),
            });
            let record = AttemptRecord {
                status: status_code,
                relay: report.relay.clone(),
                tls: tls.clone(),
                detail,
            };
            updates.push(RecipientUpdate {
                address: result.recipient.clone(),
                state,
                next_attempt,
                record,
                expired,
                to_portal: fallback,
            });
        }
        (updates, notes)
    }

    /// True when a `forced-tls` recipient's TLS failure reaches the configured fallback
    /// threshold, counting this attempt. Mail sealgate wrote itself (notifications, DSNs,
    /// notices) never falls back, or each fallback would hold a notification about a
    /// notification.
    fn falls_back_to_portal(
        &self,
        route: Route,
        summary: &MessageSummary,
        failure: &Failure,
        row: Option<&RecipientRow>,
    ) -> bool {
        let Some(threshold) = self.config.policy.forced_tls_fallback_after else {
            return false;
        };
        if summary.is_dsn || summary.is_notification {
            return false;
        }
        let attempts = row.map_or(0, |row| row.attempts) + 1;
        route == Route::ForcedTls && failure.stage == Stage::Tls && attempts >= threshold
    }

    /// Wraps a report that sealgate wrote (a DSN or a notice) as a message from the null
    /// sender to `sender`, so that a failure to deliver it cannot cause another report.
    fn report_to_sender(&self, sender: &str, bytes: Vec<u8>) -> AcceptedMessage {
        AcceptedMessage {
            sender: String::new(),
            recipients: vec![sender.to_owned()],
            body_8bit: bytes.iter().any(|byte| *byte > 127),
            body: bytes,
            smtputf8: false,
            client: ClientInfo {
                addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                helo: self.config.server.hostname.clone(),
                tls: None,
                auth_user: None,
            },
        }
    }

    /// Tells the sender that a recipient's copy went to the portal because verified TLS to
    /// its domain kept failing. The notice has the null sender, like a DSN.
    async fn tell_sender_of_fallback(&self, id: &QueueId, summary: &MessageSummary, address: &str) {
        if summary.sender.is_empty() {
            return;
        }
        let text = format!(
            "Your message (queue id {id}) to {address} could not be delivered over TLS with a\r\n\
             verified certificate, so it has been held securely instead. The recipient gets a\r\n\
             notification with a link to collect it from the secure portal.\r\n"
        );
        let postmaster = self.config.postmaster();
        let bytes = mail_builder::MessageBuilder::new()
            .from(("Mail Delivery System", postmaster.as_str()))
            .to(summary.sender.as_str())
            .subject(format!("Message to {address} moved to the secure portal"))
            .header(
                "Auto-Submitted",
                mail_builder::headers::raw::Raw::new("auto-replied"),
            )
            .text_body(text)
            .write_to_vec()
            .expect("writing to a Vec cannot fail");
        let message = self.report_to_sender(&summary.sender, bytes);
        match self.spool.submit_dsn(message).await {
            Ok(notice) => {
                tracing::info!(target: MAIL_LOG, "{id}: portal fallback notice to sender: {notice}")
            }
            Err(error) => {
                tracing::error!(queue_id = %id, %error, "failed to queue the fallback notice")
            }
        }
    }

    /// Sends one DSN for every bounced recipient of the message not yet reported, once no
    /// other attempt for the message is in flight, so recipients that fail in the same run
    /// share one DSN. The bounces are committed before the DSN is queued, and cleared only
    /// after it is: a crash in between repeats the DSN rather than losing it.
    async fn report_bounces(&self, id: &QueueId) {
        let now = now_millis();
        let target = id.clone();
        let pending = self
            .with_store(move |store| {
                if store.in_flight(&target, now)? {
                    return Ok(None);
                }
                let bounced: Vec<_> = store
                    .recipients(&target)?
                    .into_iter()
                    .filter(|row| row.dsn_pending)
                    .collect();
                Ok(Some((store.message(&target)?, bounced)))
            })
            .await;
        let (summary, bounced) = match pending {
            Ok(Some((Some(summary), bounced))) => (summary, bounced),
            Ok(_) => return,
            Err(error) => {
                tracing::error!(queue_id = %id, %error, "failed to read bounced recipients");
                return;
            }
        };

        if !bounced.is_empty() {
            let failed: Vec<FailedRecipient> = bounced
                .iter()
                .map(|row| FailedRecipient {
                    address: row.address.clone(),
                    status: row.last_status.clone().unwrap_or_else(|| "5.0.0".into()),
                    diagnostic: row.last_detail.clone().unwrap_or_default(),
                    remote_mta: row.last_relay.clone(),
                    tls: row.last_tls.clone().unwrap_or_else(|| "none".into()),
                    expired: row.expired,
                })
                .collect();
            if !self.send_dsn(id, &summary, &failed).await {
                return;
            }
            let target = id.clone();
            let addresses: Vec<String> = bounced.into_iter().map(|row| row.address).collect();
            if let Err(error) = self
                .with_store(move |store| store.clear_dsn_pending(&target, &addresses))
                .await
            {
                tracing::error!(queue_id = %id, %error, "failed to mark bounces as reported");
                return;
            }
        }

        let target = id.clone();
        match self
            .with_store(move |store| store.delete_if_done(std::slice::from_ref(&target)))
            .await
        {
            Ok(deleted) if deleted == [true] => tracing::info!(target: MAIL_LOG, "{id}: removed"),
            Ok(_) => {}
            Err(error) => tracing::error!(queue_id = %id, %error, "failed to remove message"),
        }
    }

    /// Removes, in one transaction, each of these messages that has nothing left to do,
    /// and goes through the bounce report of each of the others, which may have a DSN to
    /// send.
    async fn remove_finished(&self, mut ids: Vec<QueueId>) {
        // A message with several recipients moved at once is named once per recipient.
        ids.sort();
        ids.dedup();
        if ids.is_empty() {
            return;
        }
        let targets = ids.clone();
        let deleted = match self
            .with_store(move |store| store.delete_if_done(&targets))
            .await
        {
            Ok(deleted) => deleted,
            Err(error) => {
                tracing::error!(messages = ids.len(), %error, "failed to remove finished messages");
                vec![false; ids.len()]
            }
        };
        for (id, deleted) in ids.iter().zip(deleted) {
            self.finish_message(id, deleted).await;
        }
    }

    /// Logs the removal of the message when `removed` is set. Otherwise runs its bounce
    /// report, which sends any DSN owed and removes the message once nothing is left.
    async fn finish_message(&self, id: &QueueId, removed: bool) {
        if removed {
            tracing::info!(target: MAIL_LOG, "{id}: removed");
        } else {
            self.report_bounces(id).await;
        }
    }

    /// Removes the messages that have nothing left to do but are still queued, because the
    /// commit that would have removed them failed or the process stopped before it.
    async fn sweep_finished(&self) {
        match self
            .with_store(|store| store.finished_messages(SWEEP_BATCH))
            .await
        {
            Ok(ids) => self.remove_finished(ids).await,
            Err(error) => tracing::error!(%error, "failed to look for finished messages"),
        }
    }

    /// Reports bounces left unreported by an earlier process or a failed DSN commit.
    async fn report_leftover_bounces(&self) {
        match self
            .with_store(|store| store.messages_with_pending_dsn())
            .await
        {
            Ok(ids) => {
                for id in ids {
                    self.report_bounces(&id).await;
                }
            }
            Err(error) => tracing::error!(%error, "failed to read unreported bounces"),
        }
    }

    /// Delay before the next attempt after `attempts` earlier ones: the schedule's entry,
    /// or its last entry once the schedule is used up.
    fn retry_delay(&self, attempts: u32) -> Duration {
        let schedule = &self.config.queue.retry_schedule;
        let index = (attempts as usize).min(schedule.len() - 1);
        schedule[index].0
    }

    /// Queues a DSN to the message's sender; returns whether the bounces count as reported.
    async fn send_dsn(
        &self,
        id: &QueueId,
        summary: &MessageSummary,
        failed: &[FailedRecipient],
    ) -> bool {
        if summary.sender.is_empty() {
            tracing::info!(target: MAIL_LOG, "{id}: sender is <>, no DSN sent");
            return true;
        }
        let lookup = id.clone();
        let original = self
            .with_store(move |store| store.body(&lookup))
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        let postmaster = self.config.postmaster();
        let bytes = dsn::build(&dsn::Report {
            queue_id: id,
            reporting_mta: &self.config.server.hostname,
            postmaster: &postmaster,
            sender: &summary.sender,
            arrival: summary.received_at,
            recipients: failed,
            original: &original,
        });
        let message = self.report_to_sender(&summary.sender, bytes);
        match self.spool.submit_dsn(message).await {
            Ok(dsn_id) => {
                tracing::info!(
                    target: MAIL_LOG,
                    "{id}: sender non-delivery notification: {dsn_id}"
                );
                true
            }
            Err(error) => {
                tracing::error!(queue_id = %id, %error, "failed to queue DSN; retried on the next scan");
                false
            }
        }
    }
}

/// One delivery attempt for one group, on its own task.
struct DeliveryWorker {
    store: Arc<Mutex<Store>>,
    transport: Arc<dyn Transport>,
    smime: Option<SmimeEncryption>,
    dkim: Arc<MessageSigner>,
    /// The signature of this group's bytes, made by the first worker that needs it.
    signatures: Arc<OnceCell<SignOutcome>>,
    done: mpsc::Sender<WorkerDone>,
    workers: Arc<Semaphore>,
}

/// The DKIM signatures for a message, or the signing error.
type SignOutcome = Result<DkimSignatures, String>;

/// The S/MIME context of the `smime` route at delivery time.
#[derive(Clone)]
struct SmimeEncryption {
    smime: Arc<Smime>,
    certificates: Arc<CertificateDirectory>,
    classifier: Arc<Classifier>,
}

impl DeliveryWorker {
    async fn run(self, id: QueueId, route: Route, domain: String, recipients: Vec<String>) {
        let Ok(_permit) = Arc::clone(&self.workers).acquire_owned().await else {
            return;
        };
        let store = Arc::clone(&self.store);
        let lookup = id.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let store = store
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            Ok::<_, QueueError>((store.message(&lookup)?, store.body(&lookup)?))
        })
        .await;
        let (summary, body) = match loaded {
            Ok(Ok((Some(summary), Some(body)))) => (summary, body),
            Ok(Ok(_)) => {
                tracing::info!(queue_id = %id, "message left the queue before its attempt");
                return;
            }
            Ok(Err(error)) => {
                tracing::error!(queue_id = %id, %error, "failed to load message for delivery");
                return;
            }
            Err(error) => {
                tracing::error!(queue_id = %id, %error, "message load task failed");
                return;
            }
        };

        let Some(tls) = route.tls_requirement() else {
            // Held routes are stored as held and never claimed; fail closed if one is.
            tracing::error!(queue_id = %id, %route, "held route reached delivery; not sent");
            return;
        };
        let started_at = now_millis();
        let clock = Instant::now();
        let (report, dkim) = self
            .attempt(&id, route, tls, &domain, &recipients, &summary, body)
            .await;
        tracing::debug!(queue_id = %id, elapsed = ?clock.elapsed(), "delivery attempt finished");
        let done = WorkerDone {
            id,
            route,
            summary,
            started_at,
            report,
            dkim,
        };
        let _ = self.done.send(done).await;
    }

    /// Prepares the body for the route, signs it and makes one attempt, returning a result
    /// for every recipient and the `dkim=` log value.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        id: &QueueId,
        route: Route,
        tls: TlsRequirement,
        domain: &str,
        recipients: &[String],
        summary: &MessageSummary,
        body: Vec<u8>,
    ) -> (AttemptReport, String) {
        let (body, body_8bit) = if route == Route::Smime {
            match self.encrypt(id, recipients, &body) {
                Ok(protected) => {
                    let body_8bit = protected.iter().any(|byte| *byte > 127);
                    (protected, body_8bit)
                }
                // Fail closed: without the envelope nothing is sent; retry later.
                Err(detail) => return (not_attempted(recipients, detail), "none".into()),
            }
        } else {
            (body, summary.body_8bit)
        };
        // Signing comes last, over the bytes that go on the wire.
        // NOTE: like S/MIME encryption above, signing runs on the worker's async task, so
        // hashing a large body blocks that runtime thread until it is done (not measured).
        let signed = self
            .signatures
            .get_or_init(|| async { self.dkim.sign(&body).map_err(|error| error.to_string()) })
            .await;
        let signatures = match signed {
            Ok(signatures) => signatures,
            Err(detail) => {
                tracing::error!(queue_id = %id, error = %detail, "DKIM signing failed");
                return (not_attempted(recipients, detail.clone()), "failed".into());
            }
        };
        let body = signatures.apply(&body);
        let job = DeliveryJob {
            queue_id: id.as_str(),
            sender: &summary.sender,
            domain,
            recipients,
            body: &body,
            tls,
            body_8bit,
            smtputf8: summary.smtputf8,
        };
        let mut report = self.transport.deliver(&job).await;
        let missing: Vec<String> = recipients
            .iter()
            .filter(|recipient| {
                !report
                    .results
                    .iter()
                    .any(|result| &result.recipient == *recipient)
            })
            .cloned()
            .collect();
        if !missing.is_empty() {
            // Every claimed recipient must come back with a state, or it would stay claimed
            // until the lease ran out.
            tracing::error!(queue_id = %id, "delivery returned no result for a recipient");
            let failure = Failure {
                host: report.relay.clone(),
                stage: Stage::Connect,
                detail: "delivery returned no result for this recipient".into(),
                reply: None,
                status: "4.3.0".into(),
            };
            report.results.extend(deferred_all(&missing, &failure));
        }
        (report, signatures.log_value())
    }

    /// Builds the S/MIME message for the one recipient of an `smime` delivery, or the
    /// header-filtered original when it is already encrypted. A subject in which the
    /// classifier found an NHS number or a pattern is replaced in the outer message, since
    /// the outer header travels in clear.
    fn encrypt(&self, id: &QueueId, recipients: &[String], body: &[u8]) -> Result<Vec<u8>, String> {
        let [recipient] = recipients else {
            return Err(format!(
                "an S/MIME delivery needs one recipient, got {}",
                recipients.len()
            ));
        };
        let Some(encryption) = &self.smime else {
            return Err("S/MIME is not set up in this process".into());
        };
        let Some(certificate) = encryption.certificates.lookup(recipient) else {
            return Err(format!(
                "no valid certificate for {recipient} any more; not sent"
            ));
        };
        let classification = encryption.classifier.classify(body);
        let subject_is_sensitive = classification.matches.iter().any(|found| {
            let in_subject = found.location == "subject" || found.location == "header Subject";
            in_subject && (found.rule == "nhs-number" || found.rule.starts_with("pattern:"))
        });
        let replacement = encryption.smime.replacement_subject();
        let subject_override = subject_is_sensitive.then_some(replacement.as_str());
        match encryption
            .smime
            .encrypt_with_subject(body, recipient, certificate, subject_override)
        {
            Ok(SmimeOutcome::Encrypted(bytes)) => {
                tracing::debug!(queue_id = %id, "message encrypted for its recipient");
                Ok(bytes)
            }
            Ok(SmimeOutcome::AlreadyEncrypted(bytes)) => Ok(bytes),
            Err(error) => {
                tracing::error!(queue_id = %id, %error, "S/MIME encryption failed");
                Err(format!("S/MIME encryption failed: {error}"))
            }
        }
    }
}

/// Classifies an unrouted message with `classify`, which returns the classification and
/// the message with its subject tag removed when configured; returns the message with both.
///
/// A notification sealgate wrote contains no content of the held message, so it is not
/// classified: its link could look like a sensitive pattern and send it to the portal
/// again. When `classify` panics, the message is logged and held for review under the
/// rule `policy-error`, so it never leaves unprotected and does not hold back its batch.
fn examine(
    message: IncomingMessage,
    classify: impl FnOnce(&[u8]) -> (classify::Classification, Option<Vec<u8>>),
) -> (IncomingMessage, classify::Classification, Option<Vec<u8>>) {
    if message.summary.is_notification {
        return (message, classify::Classification::default(), None);
    }
    match catch_unwind(AssertUnwindSafe(|| classify(&message.body))) {
        Ok((classification, stripped)) => (message, classification, stripped),
        Err(_) => {
            tracing::error!(
                queue_id = %message.summary.id,
                "classification panicked; message held for review"
            );
            let classification = classify::Classification::policy_error("classification failed");
            (message, classification, None)
        }
    }
}

/// An unrouted message as routing reads it.
struct IncomingMessage {
    summary: MessageSummary,
    /// The recipients still `incoming`.
    addresses: Vec<String>,
    body: Vec<u8>,
}

/// Reads up to [`INCOMING_BATCH`] unrouted messages, oldest first, and stops earlier once
/// their bodies would pass `budget` bytes ([`BATCH_BYTES`] in the queue manager), so a
/// burst of large messages is not all in memory at once. Returns them and whether unrouted messages were left for the next batch. A
/// message that cannot be read is logged and left unrouted, so it never leaves, and the
/// others go on.
fn read_incoming(
    store: &mut Store,
    budget: u64,
) -> Result<(Vec<IncomingMessage>, bool), QueueError> {
    let ids = store.incoming_messages(INCOMING_BATCH)?;
    let mut more = ids.len() == INCOMING_BATCH;
    let mut incoming = Vec::with_capacity(ids.len());
    let mut loaded = 0;
    for id in ids {
        let summary = match store.message(&id) {
            Ok(Some(summary)) => summary,
            Ok(None) => continue,
            Err(error) => {
                tracing::error!(queue_id = %id, %error, "failed to read message for routing");
                continue;
            }
        };
        // The first message is read whatever its size.
        if !incoming.is_empty() && loaded + summary.size > budget {
            more = true;
            break;
        }
        match routing_input(store, summary) {
            Ok(Some(message)) => {
                loaded += message.summary.size;
                incoming.push(message);
            }
            Ok(None) => {}
            Err(error) => {
                tracing::error!(queue_id = %id, %error, "failed to read message for routing")
            }
        }
    }
    Ok((incoming, more))
}

/// Adds to a message's summary its recipients that are still `incoming` and its body;
/// `None` when the message is gone.
fn routing_input(
    store: &Store,
    summary: MessageSummary,
) -> Result<Option<IncomingMessage>, QueueError> {
    let addresses = store
        .recipients(&summary.id)?
        .into_iter()
        .filter(|row| row.state == RecipientState::Incoming)
        .map(|row| row.address)
        .collect();
    Ok(store.body(&summary.id)?.map(|body| IncomingMessage {
        summary,
        addresses,
        body,
    }))
}

/// Returns the report of an attempt stopped before any connection because the message
/// could not be encrypted or signed: every recipient is deferred with 4.7.5, which RFC 3463
/// §3.8 defines as "cryptographic failure".
fn not_attempted(recipients: &[String], detail: String) -> AttemptReport {
    let failure = Failure {
        host: None,
        stage: Stage::Conversion,
        detail,
        reply: None,
        // X.7.5 is "cryptographic failure" (RFC 3463).
        status: "4.7.5".into(),
    };
    AttemptReport {
        relay: None,
        tls: TlsOutcome::NotConnected,
        verification: Default::default(),
        connect_time: Duration::ZERO,
        transfer_time: Duration::ZERO,
        results: deferred_all(recipients, &failure),
    }
}

/// Returns the same temporary failure for each recipient.
fn deferred_all(recipients: &[String], failure: &Failure) -> Vec<RecipientResult> {
    recipients
        .iter()
        .map(|recipient| RecipientResult {
            recipient: recipient.clone(),
            status: DeliveryStatus::Deferred(failure.clone()),
        })
        .collect()
}

/// Escapes a routing reason for a `reason="..."` log field.
fn quoted_reason(reason: Option<&str>) -> String {
    escape(reason.unwrap_or("")).replace('"', "\\x22")
}

fn seconds(millis: i64) -> f64 {
    millis.max(0) as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::store::tests::accepted;
    use crate::store::test_master_keys;

    #[test]
    fn read_incoming_stops_at_the_byte_budget() {
        let dir = tempfile::tempdir().expect("temp dir");
        let keys = test_master_keys(&dir.path().join("keys"));
        let mut store = Store::open(&dir.path().join("queue.sqlite"), keys).expect("store");
        // Three messages of 40 % of the budget each: two fit, the third waits.
        let budget = 10_000;
        let size = (budget * 2 / 5) as usize;
        let ids: Vec<QueueId> = (0..3).map(|_| QueueId::generate()).collect();
        for id in &ids {
            let mut body = b"Subject: large\r\n\r\n".to_vec();
            body.resize(size, b'x');
            store
                .insert_messages(&[(id.clone(), &accepted(&body), false)])
                .expect("insert");
        }

        let (first, more) = read_incoming(&mut store, budget).expect("first batch");
        assert_eq!(first.len(), 2);
        assert!(more, "the third message is left for the next batch");
        assert!(first.iter().all(|message| message.body.len() == size));
        for message in &first {
            let routes = [(
                "rcpt@example.net".to_string(),
                Route::Opportunistic,
                String::new(),
            )];
            store
                .set_routes(&message.summary.id, &routes, None)
                .expect("routes");
        }

        let (second, more) = read_incoming(&mut store, budget).expect("second batch");
        assert_eq!(second.len(), 1);
        assert!(!more);
        let mut read: Vec<&QueueId> = first
            .iter()
            .chain(&second)
            .map(|message| &message.summary.id)
            .collect();
        read.sort();
        let mut inserted: Vec<&QueueId> = ids.iter().collect();
        inserted.sort();
        assert_eq!(read, inserted);
    }

    #[test]
    fn read_incoming_takes_one_message_over_the_budget() {
        let dir = tempfile::tempdir().expect("temp dir");
        let keys = test_master_keys(&dir.path().join("keys"));
        let mut store = Store::open(&dir.path().join("queue.sqlite"), keys).expect("store");
        let mut body = b"Subject: larger than a batch\r\n\r\n".to_vec();
        body.resize(20_000, b'x');
        store
            .insert_messages(&[(QueueId::generate(), &accepted(&body), false)])
            .expect("insert");
        let (incoming, more) = read_incoming(&mut store, 10_000).expect("batch");
        assert_eq!(incoming.len(), 1);
        assert!(!more);
    }

    /// Queues one small message in a store under `folder` and reads it back as routing does.
    fn one_incoming(folder: &std::path::Path) -> IncomingMessage {
        let keys = test_master_keys(&folder.join("keys"));
        let mut store = Store::open(&folder.join("queue.sqlite"), keys).expect("store");
        store
            .insert_messages(&[(
                QueueId::generate(),
                &accepted(b"Subject: x\r\n\r\nx\r\n"),
                false,
            )])
            .expect("insert");
        let (mut incoming, _) = read_incoming(&mut store, 10_000).expect("batch");
        incoming.pop().expect("one message")
    }

    #[test]
    fn examine_holds_panicking_classification() {
        let dir = tempfile::tempdir().expect("temp dir");
        let message = one_incoming(dir.path());

        let (_, classification, stripped) = examine(message, |_| panic!("classifier bug"));
        assert_eq!(classification.action, Some(classify::Action::Review));
        assert_eq!(classification.matches.len(), 1);
        assert_eq!(classification.matches[0].rule, "policy-error");
        assert!(stripped.is_none());
    }

    #[test]
    fn examine_passes_classification_through() {
        let dir = tempfile::tempdir().expect("temp dir");
        let message = one_incoming(dir.path());

        let (_, classification, stripped) = examine(message, |_| {
            (classify::Classification::default(), Some(b"new".to_vec()))
        });
        assert_eq!(classification.action, None);
        assert_eq!(stripped.as_deref(), Some(b"new".as_slice()));
    }
}
