//! The seam the queue manager calls, and its SMTP implementation: resolve the next hops,
//! then try each address of each host in order until one finishes the transaction.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mail_send::SmtpClient;
use smtp_proto::EhloResponse;
use tokio::net::TcpStream;
use tracing::debug;

use super::client::{self, Peer, StartTls, Timeouts, Transaction};
use super::mta_sts::PolicyCache;
use super::mx::{HopResolver, NextHop};
use super::policy::{HostDecision, HostPlan, TlsPlanner};
use super::tls::TlsConnectors;
use super::tlsrpt::{ReportStore, TlsResult, result_type_of};
use super::{
    AttemptReport, DeliveryError, DeliveryJob, DeliveryStatus, Failure, RecipientResult, Stage,
    TlsOutcome, Verification,
};
use crate::config::Config;
use crate::telemetry::escape_field;

/// Delivers one job and reports a result per recipient. Implementations must not panic on
/// peer input and must return exactly one result per recipient, in job order.
pub trait Transport: Send + Sync {
    /// Makes one delivery attempt for `job`.
    fn deliver<'a>(
        &'a self,
        job: &'a DeliveryJob<'a>,
    ) -> Pin<Box<dyn Future<Output = AttemptReport> + Send + 'a>>;
}

/// Delivers over SMTP to the MX hosts or the static route of the recipient domain.
pub struct SmtpCourier {
    hops: Arc<HopResolver>,
    planner: TlsPlanner,
    reports: ReportStore,
    helo_name: String,
    timeouts: Timeouts,
}

/// The end of the attempt on one address.
enum AddressOutcome {
    /// The transaction reached a result for every recipient.
    Finished(Vec<RecipientResult>, TlsOutcome),
    /// This address failed; the next one is tried.
    Failed(Failure, TlsOutcome),
}

/// Time marks for the report.
struct Clock {
    started: Instant,
    connect_time: Duration,
    transfer_time: Duration,
}

impl SmtpCourier {
    /// Builds the courier: the DNS resolver, the TLS configs and the trust anchors.
    ///
    /// # Errors
    ///
    /// [`DeliveryError::TrustAnchorRead`] or [`DeliveryError::TrustAnchorInvalid`] for a
    /// trust anchor file, [`DeliveryError::DnsServer`] for a bad `dns_servers` entry,
    /// [`DeliveryError::SystemDns`] when `/etc/resolv.conf` cannot be used,
    /// [`DeliveryError::Resolver`] when hickory rejects the resolver config, and
    /// [`DeliveryError::Tls`] when rustls rejects the config.
    ///
    /// MTA-STS policies are cached in memory only; [`SmtpCourier::with_policy_database`]
    /// keeps them across restarts.
    pub fn new(config: &Config) -> Result<SmtpCourier, DeliveryError> {
        SmtpCourier::build(config, PolicyCache::open(None)?, ReportStore::open(None)?)
    }

    /// Builds the courier like [`SmtpCourier::new`], with the MTA-STS policy cache and the
    /// TLS-RPT results in the TLS database at [`Config::tls_database_path`].
    ///
    /// # Errors
    ///
    /// As [`SmtpCourier::new`], and [`DeliveryError::Database`] when the database cannot
    /// be opened.
    pub fn with_policy_database(config: &Config) -> Result<SmtpCourier, DeliveryError> {
        let path = config.tls_database_path();
        let cache = PolicyCache::open(Some(&path))?;
        SmtpCourier::build(config, cache, ReportStore::open(Some(&path))?)
    }

    fn build(
        config: &Config,
        cache: PolicyCache,
        reports: ReportStore,
    ) -> Result<SmtpCourier, DeliveryError> {
        let delivery = &config.delivery;
        let tls = TlsConnectors::new(config)?;
        Ok(SmtpCourier {
            hops: Arc::new(HopResolver::new(delivery)?),
            planner: TlsPlanner::new(config, tls, cache, reports.clone())?,
            reports,
            helo_name: config.helo_name().to_owned(),
            timeouts: Timeouts {
                connect: delivery.connect_timeout.0,
                command: delivery.command_timeout.0,
                data: delivery.data_timeout.0,
            },
        })
    }

    async fn deliver_job(&self, job: &DeliveryJob<'_>) -> AttemptReport {
        let mut clock = Clock {
            started: Instant::now(),
            connect_time: Duration::ZERO,
            transfer_time: Duration::ZERO,
        };
        debug!(
            queue_id = job.queue_id,
            domain = %escape_field(job.domain),
            tls = ?job.tls,
            recipients = job.recipients.len(),
            "delivery attempt",
        );

        // An envelope that cannot be written as SMTP paths bounces here, before any
        // lookup or connection, with no host named in the failure.
        let unsendable_stage = if client::reverse_path(job.sender).is_none() {
            Some(Stage::MailFrom)
        } else if job
            .recipients
            .iter()
            .all(|recipient| client::smtp_path(recipient).is_none())
        {
            Some(Stage::RcptTo)
        } else {
            None
        };
        if let Some(stage) = unsendable_stage {
            let status = DeliveryStatus::Bounced(client::unsendable(stage));
            return report(
                job,
                None,
                (TlsOutcome::NotConnected, Verification::None),
                &clock,
                same_for_all(job, status),
            );
        }

        let hops = match self.hops.next_hops(job.queue_id, job.domain).await {
            Ok(hops) => hops,
            Err(status) => {
                debug!(
                    queue_id = job.queue_id,
                    domain = %escape_field(job.domain),
                    status = status.dsn_code(),
                    "no next hop",
                );
                clock.connect_time = clock.started.elapsed();
                return report(
                    job,
                    None,
                    (TlsOutcome::NotConnected, Verification::None),
                    &clock,
                    same_for_all(job, *status),
                );
            }
        };

        let decisions = self.planner.plan(&self.hops, job, &hops).await;
        let mut relay = None;
        let mut tls = (TlsOutcome::NotConnected, Verification::None);
        let mut last_failure = None;
        for (hop, decision) in hops.iter().zip(decisions) {
            let plan = match decision {
                HostDecision::Try(plan) => plan,
                HostDecision::Skip(failure, verification) => {
                    debug!(
                        queue_id = job.queue_id,
                        host = %escape_field(&hop.name),
                        detail = ?failure.detail,
                        "host skipped by TLS policy",
                    );
                    tls.1 = verification;
                    last_failure = Some(failure);
                    continue;
                }
            };
            for ip in &hop.addresses {
                let peer = Peer {
                    label: format!("{}[{ip}]:{}", hop.name, hop.port),
                    address: SocketAddr::new(*ip, hop.port),
                    tls_name: &hop.tls_name,
                    queue_id: job.queue_id,
                };
                relay = Some(peer.label.clone());
                let outcome = self.try_address(job, &peer, &plan, &mut clock).await;
                self.record_result(job, hop, *ip, &plan, &outcome);
                match outcome {
                    AddressOutcome::Finished(results, outcome) => {
                        let tls = (outcome, plan.verification);
                        return report(job, relay, tls, &clock, results);
                    }
                    AddressOutcome::Failed(failure, outcome) => {
                        debug!(
                            queue_id = job.queue_id,
                            host = %escape_field(&peer.label),
                            stage = %failure.stage,
                            detail = ?failure.to_string(),
                            "host failed",
                        );
                        tls = (outcome, plan.verification);
                        last_failure = Some(failure);
                    }
                }
            }
        }

        clock.connect_time = clock.started.elapsed();
        // Unreachable in practice: `next_hops` returns at least one hop with an address.
        let failure = last_failure.unwrap_or_else(|| Failure {
            host: None,
            stage: Stage::Connect,
            detail: format!("no address to try for {}", job.domain),
            reply: None,
            status: "4.4.4".into(),
        });
        report(
            job,
            relay,
            tls,
            &clock,
            same_for_all(job, DeliveryStatus::Deferred(failure)),
        )
    }

    /// Counts the TLS result of one address for TLS-RPT: a TLS session, or a failure at
    /// the TLS step. Clear-text sessions without a policy are not counted.
    fn record_result(
        &self,
        job: &DeliveryJob<'_>,
        hop: &NextHop,
        ip: IpAddr,
        plan: &HostPlan,
        outcome: &AddressOutcome,
    ) {
        let testing_failure = plan
            .probe
            .as_ref()
            .and_then(|probe| probe.lock().ok().and_then(|result| result.clone()));
        let (result_type, detail) = match (outcome, testing_failure) {
            (_, Some(detail)) => (Some(result_type_of(&detail)), detail),
            (AddressOutcome::Failed(failure, _), None) if failure.stage == Stage::Tls => (
                Some(result_type_of(&failure.detail)),
                failure.detail.clone(),
            ),
            (
                AddressOutcome::Finished(
                    _,
                    TlsOutcome::Verified { .. } | TlsOutcome::Unverified { .. },
                )
                | AddressOutcome::Failed(
                    _,
                    TlsOutcome::Verified { .. } | TlsOutcome::Unverified { .. },
                ),
                None,
            ) => (None, String::new()),
            _ => return,
        };
        self.reports.record(&TlsResult {
            domain: job.domain,
            policy_type: plan.policy_type,
            policy_strings: &plan.policy_strings,
            mx_host: &hop.name,
            receiving_ip: &ip.to_string(),
            result_type,
            detail: &detail,
        });
    }

    /// Delivers to one address with the TLS plan of its host.
    async fn try_address(
        &self,
        job: &DeliveryJob<'_>,
        peer: &Peer<'_>,
        plan: &HostPlan,
        clock: &mut Clock,
    ) -> AddressOutcome {
        let (mut plain, capabilities) = match self.open(peer).await {
            Ok(opened) => opened,
            Err(outcome) => return outcome,
        };
        let offers_starttls = capabilities.has_capability(smtp_proto::EXT_START_TLS);

        if plan.required && !offers_starttls {
            debug!(
                queue_id = job.queue_id,
                host = %escape_field(&peer.label),
                "STARTTLS not offered, verified TLS required",
            );
            let failure = client::tls_failure(peer, "STARTTLS not offered".into(), None);
            client::quit(&mut plain, peer).await;
            return AddressOutcome::Failed(failure, TlsOutcome::Plain);
        }
        if !offers_starttls {
            report_testing_failure(job, peer, plan, "STARTTLS not offered");
            return self
                .transact(plain, peer, job, &capabilities, TlsOutcome::Plain, clock)
                .await;
        }

        match client::start_tls(plain, peer, &plan.connector).await {
            StartTls::Upgraded(secure, version) => {
                let mut secure = *secure;
                let outcome = if plan.authenticated {
                    TlsOutcome::Verified { version }
                } else {
                    TlsOutcome::Unverified { version }
                };
                if let Some(probe) = &plan.probe
                    && let Some(detail) = probe.lock().ok().and_then(|result| result.clone())
                {
                    report_testing_failure(job, peer, plan, &detail);
                }
                // RFC 3207 §4.2: forget what was learned before TLS and ask again.
                let capabilities = match client::hello(&mut secure, peer, &self.helo_name).await {
                    Ok(capabilities) => capabilities,
                    Err(failure) => return AddressOutcome::Failed(failure, outcome),
                };
                self.transact(secure, peer, job, &capabilities, outcome, clock)
                    .await
            }
            StartTls::Rejected(mut plain, failure) => {
                if plan.required {
                    client::quit(&mut plain, peer).await;
                    AddressOutcome::Failed(failure, TlsOutcome::Plain)
                } else {
                    report_testing_failure(job, peer, plan, &failure.detail);
                    debug!(
                        queue_id = job.queue_id,
                        host = %escape_field(&peer.label),
                        "STARTTLS rejected, continuing in clear text",
                    );
                    self.transact(plain, peer, job, &capabilities, TlsOutcome::Plain, clock)
                        .await
                }
            }
            StartTls::HandshakeFailed(failure) => {
                if plan.required {
                    AddressOutcome::Failed(failure, TlsOutcome::Failed)
                } else {
                    report_testing_failure(job, peer, plan, &failure.detail);
                    self.retry_in_clear(job, peer, failure, clock).await
                }
            }
        }
    }

    /// RFC 7435: after a failed opportunistic handshake, reconnect and send in clear
    /// text without STARTTLS.
    async fn retry_in_clear(
        &self,
        job: &DeliveryJob<'_>,
        peer: &Peer<'_>,
        tls_failure: Failure,
        clock: &mut Clock,
    ) -> AddressOutcome {
        debug!(
            queue_id = job.queue_id,
            host = %escape_field(&peer.label),
            detail = ?tls_failure.detail,
            "TLS handshake failed, reconnecting in clear text",
        );
        let (plain, capabilities) = match self.open(peer).await {
            Ok(opened) => opened,
            Err(outcome) => return outcome,
        };
        self.transact(plain, peer, job, &capabilities, TlsOutcome::Plain, clock)
            .await
    }

    /// Connects, reads the greeting and sends EHLO in clear text.
    async fn open(
        &self,
        peer: &Peer<'_>,
    ) -> Result<(SmtpClient<TcpStream>, EhloResponse<String>), AddressOutcome> {
        let mut plain = client::connect(peer, self.timeouts)
            .await
            .map_err(|failure| AddressOutcome::Failed(failure, TlsOutcome::NotConnected))?;
        let capabilities = client::hello(&mut plain, peer, &self.helo_name)
            .await
            .map_err(|failure| AddressOutcome::Failed(failure, TlsOutcome::Plain))?;
        Ok((plain, capabilities))
    }

    async fn transact<T>(
        &self,
        mut client: SmtpClient<T>,
        peer: &Peer<'_>,
        job: &DeliveryJob<'_>,
        capabilities: &EhloResponse<String>,
        outcome: TlsOutcome,
        clock: &mut Clock,
    ) -> AddressOutcome
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    {
        clock.connect_time = clock.started.elapsed();
        let transfer_started = Instant::now();
        let transaction =
            client::transact(&mut client, peer, job, capabilities, self.timeouts).await;
        clock.transfer_time = transfer_started.elapsed();

        match transaction {
            Transaction::Finished(results) => {
                // A DATA failure without a reply is a lost connection or a timeout, after
                // which the session is unusable and QUIT would only wait.
                let connection_lost = results.iter().any(|result| match &result.status {
                    DeliveryStatus::Deferred(failure) => {
                        failure.stage == Stage::Data && failure.reply.is_none()
                    }
                    _ => false,
                });
                if !connection_lost {
                    client::quit(&mut client, peer).await;
                }
                AddressOutcome::Finished(results, outcome)
            }
            Transaction::NextHost(failure) => {
                client::quit(&mut client, peer).await;
                AddressOutcome::Failed(failure, outcome)
            }
        }
    }
}

impl Transport for SmtpCourier {
    fn deliver<'a>(
        &'a self,
        job: &'a DeliveryJob<'a>,
    ) -> Pin<Box<dyn Future<Output = AttemptReport> + Send + 'a>> {
        Box::pin(self.deliver_job(job))
    }
}

fn same_for_all(job: &DeliveryJob<'_>, status: DeliveryStatus) -> Vec<RecipientResult> {
    job.recipients
        .iter()
        .map(|recipient| RecipientResult {
            recipient: recipient.clone(),
            status: status.clone(),
        })
        .collect()
}

/// Logs, in MTA-STS `testing` mode, a failure that `enforce` mode would have deferred on.
fn report_testing_failure(job: &DeliveryJob<'_>, peer: &Peer<'_>, plan: &HostPlan, detail: &str) {
    if plan.probe.is_none() {
        return;
    }
    tracing::warn!(
        queue_id = job.queue_id,
        domain = %escape_field(job.domain),
        host = %escape_field(&peer.label),
        detail = ?detail,
        "MTA-STS testing mode: verified TLS failed; enforce mode would defer",
    );
}

fn report(
    job: &DeliveryJob<'_>,
    relay: Option<String>,
    (tls, verification): (TlsOutcome, Verification),
    clock: &Clock,
    results: Vec<RecipientResult>,
) -> AttemptReport {
    debug!(
        queue_id = job.queue_id,
        relay = %relay.as_deref().map_or_else(|| "none".to_owned(), escape_field),
        tls = %tls,
        %verification,
        "delivery attempt finished",
    );
    AttemptReport {
        relay,
        tls,
        verification,
        connect_time: clock.connect_time,
        transfer_time: clock.transfer_time,
        results,
    }
}
