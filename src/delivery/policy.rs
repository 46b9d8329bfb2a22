//! Chooses how each next hop's TLS is verified, strongest policy first:
//!
//! 1. DANE, when the MX answer and the host's TLSA records are DNSSEC-secure and at least
//!    one TLSA record is usable. A bogus TLSA lookup makes the host unusable.
//! 2. MTA-STS in `enforce` mode: the host must match the policy's MX patterns, and its
//!    certificate is verified with the web PKI roots and trust anchors.
//! 3. The route's own level: `forced-tls` verifies (`ca`), everything else is opportunistic.
//!
//! DANE and MTA-STS apply only to hosts found through MX records, never to static routes,
//! whose operator chose the next hop and its TLS name.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_resolver::proto::rr::{Name, RData, RecordType};
use tokio_rustls::TlsConnector;
use tracing::{debug, info, warn};

use super::dane::usable_records;
use super::dnssec::{SecureLookup, SecureResolver};
use super::mta_sts::{PolicyCache, PolicyFetcher, StsMode, StsPolicy, log_fetch, record_id};
use super::mx::{HopResolver, NextHop, TxtAnswer};
use super::tls::{ProbeResult, TlsConnectors};
use super::tlsrpt::{PolicyType, ReportStore, TlsResult};
use super::{DeliveryError, DeliveryJob, Failure, Stage, Verification};
use crate::config::{Config, DnssecMode, parse_dns_server};
use crate::policy::TlsRequirement;
use crate::telemetry::escape_field;

/// How to talk TLS to one next hop.
pub(crate) struct HostPlan {
    /// STARTTLS is required: the host is never sent mail in clear text.
    pub required: bool,
    /// The connector verifies the certificate, so a session counts as verified.
    pub authenticated: bool,
    /// The connector for STARTTLS.
    pub connector: TlsConnector,
    /// The policy behind `connector`, for the log.
    pub verification: Verification,
    /// Set in MTA-STS `testing` mode: the verification failure that `enforce` mode would have
    /// deferred on.
    pub probe: Option<ProbeResult>,
    /// The policy type for TLS-RPT.
    pub policy_type: PolicyType,
    /// The policy as text lines for TLS-RPT.
    pub policy_strings: Vec<String>,
}

/// Whether a next hop is tried, and how.
pub(crate) enum HostDecision {
    /// Try the host's addresses with this plan.
    Try(HostPlan),
    /// The host must not be used; its failure counts as the host's attempt.
    Skip(Failure, Verification),
}

/// The outcome of a host's TLSA lookup for its delivery.
enum DaneCheck {
    /// DANE decides: verify against the TLSA records, or skip the host.
    Applies(HostDecision),
    /// Secure TLSA records exist but none is usable, so TLS is required without
    /// authentication, and the next policy may still verify.
    EncryptOnly,
    /// No secure TLSA records: the next policy decides.
    DoesNotApply,
}

/// Decides [`HostDecision`]s from DNSSEC, TLSA and MTA-STS lookups.
pub(crate) struct TlsPlanner {
    tls: TlsConnectors,
    secure: Option<SecureResolver>,
    sts: Option<StsState>,
    reports: ReportStore,
}

#[derive(Clone)]
struct StsState {
    reports: ReportStore,
    cache: PolicyCache,
    fetcher: PolicyFetcher,
    /// Domains whose policy is being refreshed in the background.
    refreshing: Arc<Mutex<HashSet<String>>>,
}

impl TlsPlanner {
    /// Builds the planner from `[delivery]`, with `cache` as the MTA-STS policy cache and
    /// `reports` for TLS-RPT results.
    pub fn new(
        config: &Config,
        tls: TlsConnectors,
        cache: PolicyCache,
        reports: ReportStore,
    ) -> Result<TlsPlanner, DeliveryError> {
        let delivery = &config.delivery;
        let secure = match delivery.dnssec {
            DnssecMode::Off => None,
            DnssecMode::TrustResolver => {
                let mut servers = Vec::new();
                for text in &delivery.dns_servers {
                    let address = parse_dns_server(text)
                        .ok_or_else(|| DeliveryError::DnsServer(text.clone()))?;
                    if !address.ip().is_loopback() {
                        warn!(
                            server = %address,
                            "delivery.dnssec = \"trust-resolver\" with a resolver that is not on \
                             loopback: its AD bit can be forged on the way",
                        );
                    }
                    servers.push(address);
                }
                Some(SecureResolver::new(servers, delivery.dns_timeout.0))
            }
        };
        let sts = delivery.mta_sts.then(|| StsState {
            reports: reports.clone(),
            cache,
            fetcher: PolicyFetcher {
                connector: tls.https.clone(),
                port: delivery.mta_sts_port,
                timeout: delivery.mta_sts_timeout.0,
            },
            refreshing: Arc::default(),
        });
        Ok(TlsPlanner {
            tls,
            secure,
            sts,
            reports,
        })
    }

    /// Decides, for each of `hops`, whether and how it is tried.
    pub async fn plan(
        &self,
        resolver: &Arc<HopResolver>,
        job: &DeliveryJob<'_>,
        hops: &[NextHop],
    ) -> Vec<HostDecision> {
        let base_required = job.tls == TlsRequirement::Verified;
        if resolver.has_static_route(job.domain) {
            return hops
                .iter()
                .map(|hop| HostDecision::Try(self.route_plan(base_required, hop, None)))
                .collect();
        }

        let sts_policy = match &self.sts {
            Some(sts) => sts.policy(resolver, job.queue_id, job.domain).await,
            None => None,
        };
        let mx_secure = self.mx_is_secure(job.domain).await;

        let mut decisions = Vec::with_capacity(hops.len());
        for hop in hops {
            let dane = if mx_secure {
                self.dane_check(job, hop).await
            } else {
                DaneCheck::DoesNotApply
            };
            let mut decision = match dane {
                DaneCheck::Applies(decision) => {
                    decisions.push(decision);
                    continue;
                }
                DaneCheck::EncryptOnly | DaneCheck::DoesNotApply => {
                    self.fallback_decision(job, hop, sts_policy.as_ref(), base_required)
                }
            };
            if let (DaneCheck::EncryptOnly, HostDecision::Try(plan)) = (&dane, &mut decision)
                && !plan.required
            {
                plan.required = true;
                plan.verification = Verification::Dane;
                plan.policy_type = PolicyType::Tlsa;
            }
            decisions.push(decision);
        }
        decisions
    }

    /// Decides for a host that DANE does not verify: MTA-STS, then the route's level.
    fn fallback_decision(
        &self,
        job: &DeliveryJob<'_>,
        hop: &NextHop,
        policy: Option<&StsPolicy>,
        base_required: bool,
    ) -> HostDecision {
        match policy {
            Some(policy) if policy.mode == StsMode::Enforce => {
                if policy.matches_mx(&hop.name) {
                    HostDecision::Try(HostPlan {
                        required: true,
                        authenticated: true,
                        connector: self.tls.verified.clone(),
                        verification: Verification::MtaSts,
                        probe: None,
                        policy_type: PolicyType::Sts,
                        policy_strings: policy.lines(),
                    })
                } else {
                    let detail = format!(
                        "MX host {} is not listed in the MTA-STS policy of {}",
                        hop.name, job.domain
                    );
                    self.record_mx_mismatch(job.domain, hop, policy, &detail);
                    HostDecision::Skip(policy_failure(detail), Verification::MtaSts)
                }
            }
            Some(policy) if policy.mode == StsMode::Testing => {
                if !policy.matches_mx(&hop.name) {
                    let detail = format!(
                        "MX host {} is not listed in the MTA-STS policy of {}",
                        hop.name, job.domain
                    );
                    self.record_mx_mismatch(job.domain, hop, policy, &detail);
                    warn!(
                        queue_id = job.queue_id,
                        domain = %escape_field(job.domain),
                        host = %escape_field(&hop.name),
                        "MTA-STS testing mode: MX host not listed in the policy; \
                         enforce mode would skip it",
                    );
                }
                HostDecision::Try(self.route_plan(base_required, hop, Some(policy)))
            }
            _ => HostDecision::Try(self.route_plan(base_required, hop, None)),
        }
    }

    fn record_mx_mismatch(&self, domain: &str, hop: &NextHop, policy: &StsPolicy, detail: &str) {
        self.reports.record(&TlsResult {
            domain,
            policy_type: PolicyType::Sts,
            policy_strings: &policy.lines(),
            mx_host: &hop.name,
            receiving_ip: "",
            result_type: Some("validation-failure"),
            detail,
        });
    }

    /// Builds the plan of a host without DANE or an enforced MTA-STS policy.
    fn route_plan(&self, required: bool, hop: &NextHop, testing: Option<&StsPolicy>) -> HostPlan {
        let (policy_type, policy_strings) = match testing {
            Some(policy) => (PolicyType::Sts, policy.lines()),
            None => (PolicyType::NoPolicyFound, Vec::new()),
        };
        let mut plan = HostPlan {
            required,
            authenticated: required,
            connector: self.tls.unverified.clone(),
            verification: Verification::None,
            probe: None,
            policy_type,
            policy_strings,
        };
        if required {
            plan.connector = self.tls.verified.clone();
            plan.verification = Verification::Ca;
        } else if testing.is_some()
            && let Ok((connector, probe)) = self.tls.probing(&hop.tls_name)
        {
            plan.connector = connector;
            plan.probe = Some(probe);
        }
        plan
    }

    /// RFC 7672: DANE applies only when the MX records themselves are secure.
    async fn mx_is_secure(&self, domain: &str) -> bool {
        let Some(secure) = &self.secure else {
            return false;
        };
        let Ok(name) = Name::from_utf8(format!("{}.", domain.trim_end_matches('.'))) else {
            return false;
        };
        match secure.lookup(&name, RecordType::MX).await {
            SecureLookup::Found { secure, records } => secure && !records.is_empty(),
            SecureLookup::NotFound | SecureLookup::Failed(_) => false,
        }
    }

    /// Looks up the `_PORT._tcp.HOST` TLSA records and decides what DANE means for the host.
    async fn dane_check(&self, job: &DeliveryJob<'_>, hop: &NextHop) -> DaneCheck {
        let Some(secure) = self.secure.as_ref() else {
            return DaneCheck::DoesNotApply;
        };
        let owner = format!("_{}._tcp.{}.", hop.port, hop.name);
        let Ok(name) = Name::from_utf8(&owner) else {
            return DaneCheck::DoesNotApply;
        };
        let records = match secure.lookup(&name, RecordType::TLSA).await {
            SecureLookup::Found {
                secure: true,
                records,
            } if !records.is_empty() => records,
            SecureLookup::Found { .. } | SecureLookup::NotFound => {
                debug!(
                    queue_id = job.queue_id,
                    host = %escape_field(&hop.name),
                    "no secure TLSA records, DANE does not apply",
                );
                return DaneCheck::DoesNotApply;
            }
            SecureLookup::Failed(reason) => {
                let detail = format!(
                    "TLSA lookup for {} failed, so DANE cannot be checked: {reason}",
                    owner.trim_end_matches('.')
                );
                self.reports.record(&TlsResult {
                    domain: job.domain,
                    policy_type: PolicyType::Tlsa,
                    policy_strings: &[],
                    mx_host: &hop.name,
                    receiving_ip: "",
                    result_type: Some("dnssec-invalid"),
                    detail: &detail,
                });
                return DaneCheck::Applies(HostDecision::Skip(
                    policy_failure(detail),
                    Verification::Dane,
                ));
            }
        };
        let policy_strings: Vec<String> = records
            .iter()
            .filter_map(|record| match &record.data {
                RData::TLSA(tlsa) => Some(tlsa.to_string()),
                _ => None,
            })
            .collect();
        let usable = usable_records(&records);
        if usable.is_empty() {
            // Secure TLSA records declare TLS support, so clear text stays ruled out.
            info!(
                queue_id = job.queue_id,
                host = %escape_field(&hop.name),
                "secure TLSA records, but none usable for SMTP: TLS required, not verified by DANE",
            );
            self.reports.record(&TlsResult {
                domain: job.domain,
                policy_type: PolicyType::Tlsa,
                policy_strings: &policy_strings,
                mx_host: &hop.name,
                receiving_ip: "",
                result_type: Some("tlsa-invalid"),
                detail: "no TLSA record usable for SMTP",
            });
            return DaneCheck::EncryptOnly;
        }
        let decision = match self.tls.dane(usable) {
            Ok(connector) => HostDecision::Try(HostPlan {
                required: true,
                authenticated: true,
                connector,
                verification: Verification::Dane,
                probe: None,
                policy_type: PolicyType::Tlsa,
                policy_strings,
            }),
            Err(error) => HostDecision::Skip(
                policy_failure(format!("failed to build the DANE verifier: {error}")),
                Verification::Dane,
            ),
        };
        DaneCheck::Applies(decision)
    }
}

impl StsState {
    /// Returns the MTA-STS policy to apply to `domain`, fetching it when the TXT id
    /// changed, and falling back to the cached one when the fetch fails.
    async fn policy(
        &self,
        resolver: &Arc<HopResolver>,
        queue_id: &str,
        domain: &str,
    ) -> Option<StsPolicy> {
        let now = unix_now();
        let cached = self.cache.get(domain, now);
        let id = match resolver.txt(&format!("_mta-sts.{domain}")).await {
            TxtAnswer::Found(texts) => record_id(&texts),
            TxtAnswer::NotFound => None,
            TxtAnswer::Failed(reason) => {
                debug!(queue_id, domain = %escape_field(domain), reason, "MTA-STS TXT lookup failed");
                return cached.map(|cached| cached.policy);
            }
        };
        let Some(id) = id else {
            // RFC 8461: a cached policy stays in force until it expires, even when the
            // TXT record is gone.
            return cached.map(|cached| cached.policy);
        };
        if let Some(cached) = &cached
            && cached.id == id
        {
            let age = now - cached.fetched_at;
            let refresh_after =
                i64::try_from((cached.policy.max_age / 2).min(86_400)).unwrap_or(86_400);
            if age > refresh_after {
                self.refresh_in_background(resolver, domain, &id);
            }
            return Some(cached.policy.clone());
        }

        match self.fetch(resolver, domain).await {
            Ok((policy, text)) => {
                self.cache.put(domain, &id, &text, &policy, now);
                Some(policy)
            }
            Err(error) => {
                let result_type = if error.contains("TLS handshake failed") {
                    "sts-webpki-invalid"
                } else if error.contains("invalid policy") {
                    "sts-policy-invalid"
                } else {
                    "sts-policy-fetch-error"
                };
                self.reports.record(&TlsResult {
                    domain,
                    policy_type: PolicyType::Sts,
                    policy_strings: &[],
                    mx_host: "",
                    receiving_ip: "",
                    result_type: Some(result_type),
                    detail: &error,
                });
                if cached.is_some() {
                    warn!(
                        queue_id,
                        domain = %escape_field(domain),
                        "using the cached MTA-STS policy because the fetch failed",
                    );
                }
                cached.map(|cached| cached.policy)
            }
        }
    }

    async fn fetch(
        &self,
        resolver: &HopResolver,
        domain: &str,
    ) -> Result<(StsPolicy, String), String> {
        let host = format!("mta-sts.{domain}");
        let outcome = match resolver.host_addresses(&host).await {
            Ok(addresses) => self.fetcher.fetch(domain, &addresses).await,
            Err(reason) => Err(format!("address lookup for {host} failed: {reason}")),
        };
        log_fetch(domain, &outcome);
        outcome
    }

    fn refresh_in_background(&self, resolver: &Arc<HopResolver>, domain: &str, id: &str) {
        let Ok(mut refreshing) = self.refreshing.lock() else {
            return;
        };
        if !refreshing.insert(domain.to_owned()) {
            return;
        }
        drop(refreshing);
        let state = self.clone();
        let resolver = Arc::clone(resolver);
        let domain = domain.to_owned();
        let id = id.to_owned();
        tokio::spawn(async move {
            if let Ok((policy, text)) = state.fetch(&resolver, &domain).await {
                state.cache.put(&domain, &id, &text, &policy, unix_now());
            }
            if let Ok(mut refreshing) = state.refreshing.lock() {
                refreshing.remove(&domain);
            }
        });
    }
}

fn policy_failure(detail: String) -> Failure {
    Failure {
        host: None,
        stage: Stage::Tls,
        detail,
        reply: None,
        // RFC 3463: X.7.5 is "cryptographic failure"; the host is not used, so temporary.
        status: "4.7.5".into(),
    }
}

fn unix_now() -> i64 {
    let elapsed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
}
