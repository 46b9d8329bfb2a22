//! Next hops for a recipient domain: a static route when one matches, otherwise the MX
//! records resolved with hickory, each MX host with its A and AAAA addresses.
//!
//! A lookup error is turned into the status every recipient of the job gets: NXDOMAIN and
//! a null MX are permanent, SERVFAIL and timeouts are temporary.

use std::net::IpAddr;

use hickory_resolver::TokioResolver;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::rdata::MX;
use hickory_resolver::proto::rr::{Name, RData};
use rand::seq::SliceRandom;
use tracing::debug;

use super::{DeliveryError, DeliveryStatus, Failure, Stage};
use crate::config::{DeliveryConfig, StaticRoute};
use crate::policy::DomainSet;
use crate::telemetry::escape_field;

/// One host to try, with its addresses in the order to try them.
#[derive(Clone, Debug)]
pub(crate) struct NextHop {
    /// Host name or IP address, without a trailing dot, for logs and `relay`.
    pub name: String,
    /// Name the certificate must match when the route requires verified TLS.
    pub tls_name: String,
    /// TCP port.
    pub port: u16,
    /// Addresses from A and AAAA records, or the route's IP address.
    pub addresses: Vec<IpAddr>,
}

/// Finds next hops: static routes first, then DNS.
#[derive(Clone)]
pub(crate) struct HopResolver {
    resolver: TokioResolver,
    routes: Vec<(DomainSet, StaticRoute)>,
    mx_port: u16,
}

/// The MX records of a domain, reduced to what delivery acts on.
#[derive(Debug, PartialEq, Eq)]
enum MxAnswer {
    /// The only MX record is `.`: the domain accepts no mail (RFC 7505).
    Null,
    /// Exchange names, most preferred first.
    Hosts(Vec<Name>),
}

/// The result of a TXT lookup.
pub(crate) enum TxtAnswer {
    /// The texts of each record, the strings of one record joined.
    Found(Vec<String>),
    /// NXDOMAIN or no TXT records.
    NotFound,
    /// SERVFAIL, timeout or another error that may pass.
    Failed(String),
}

/// The reason an address lookup found no address.
enum AddressError {
    /// NXDOMAIN or no A/AAAA records.
    NotFound,
    /// SERVFAIL, timeout or another error that may pass.
    Temporary(String),
}

impl HopResolver {
    /// Builds the resolver from `delivery.dns_servers`, or from `/etc/resolv.conf` when
    /// that list is empty.
    pub fn new(config: &DeliveryConfig) -> Result<HopResolver, DeliveryError> {
        let resolver = super::resolver::build_resolver(config)?;

        let routes = config
            .routes
            .iter()
            .map(|route| {
                (
                    DomainSet::new(std::slice::from_ref(&route.domain)),
                    route.clone(),
                )
            })
            .collect();
        Ok(HopResolver {
            resolver,
            routes,
            mx_port: config.mx_port,
        })
    }

    /// Finds the hosts to try for `domain`, each with at least one address.
    ///
    /// # Errors
    ///
    /// The status for every recipient when no host can be tried. It is `Bounced` for
    /// NXDOMAIN (5.1.2), a null MX (5.1.10) and a domain with neither MX nor address
    /// records (5.1.2). It is `Deferred` (4.4.3, 4.4.4) for lookup failures that may pass.
    pub async fn next_hops(
        &self,
        queue_id: &str,
        domain: &str,
    ) -> Result<Vec<NextHop>, Box<DeliveryStatus>> {
        if let Some(route) = self.static_route(domain) {
            debug!(
                queue_id,
                domain = %escape_field(domain),
                host = %escape_field(&route.host),
                "using static route",
            );
            let hop = self.resolve_route(queue_id, route).await;
            return keep_reachable(domain, hop.into_iter().collect());
        }

        let name = fqdn(domain).map_err(|reason| {
            bounce(
                format!("invalid recipient domain {domain}: {reason}"),
                "5.1.2",
            )
        })?;
        let exchanges = match self.resolver.mx_lookup(name.clone()).await {
            Ok(lookup) => {
                let records = lookup
                    .answers()
                    .iter()
                    .filter_map(|record| match &record.data {
                        RData::MX(mx) => Some(mx.clone()),
                        _ => None,
                    });
                order_mx(records.collect())
            }
            Err(error) if error.is_nx_domain() => {
                return Err(bounce(
                    format!("domain {domain} not found (NXDOMAIN)"),
                    "5.1.2",
                ));
            }
            Err(error) if error.is_no_records_found() => MxAnswer::Hosts(Vec::new()),
            Err(error) => {
                return Err(defer(
                    format!("MX lookup for {domain} failed: {error}"),
                    "4.4.3",
                ));
            }
        };

        let exchanges = match exchanges {
            MxAnswer::Null => {
                return Err(bounce(
                    format!("domain {domain} accepts no mail (null MX, RFC 7505)"),
                    "5.1.10",
                ));
            }
            MxAnswer::Hosts(exchanges) if exchanges.is_empty() => {
                return self.implicit_mx(queue_id, domain, name).await;
            }
            MxAnswer::Hosts(exchanges) => exchanges,
        };

        self.resolve_exchanges(queue_id, domain, exchanges).await
    }

    /// Looks up the addresses of each MX host in order, skipping hosts that are IP
    /// addresses or have no address.
    async fn resolve_exchanges(
        &self,
        queue_id: &str,
        domain: &str,
        exchanges: Vec<Name>,
    ) -> Result<Vec<NextHop>, Box<DeliveryStatus>> {
        let mut hops = Vec::new();
        for exchange in exchanges {
            let host = display_name(&exchange);
            if host.parse::<IpAddr>().is_ok() {
                debug!(
                    queue_id,
                    domain = %escape_field(domain),
                    host = %escape_field(&host),
                    "skipping MX host: an IP address is not a host name",
                );
                continue;
            }
            match self.addresses(exchange).await {
                Ok(addresses) => hops.push(NextHop {
                    tls_name: host.clone(),
                    name: host,
                    port: self.mx_port,
                    addresses,
                }),
                Err(error) => {
                    let reason = match error {
                        AddressError::NotFound => "no A or AAAA records".to_owned(),
                        AddressError::Temporary(reason) => reason,
                    };
                    debug!(
                        queue_id,
                        domain = %escape_field(domain),
                        host = %escape_field(&host),
                        reason = ?reason,
                        "skipping MX host",
                    );
                }
            }
        }
        keep_reachable(domain, hops)
    }

    /// RFC 5321 §5.1: a domain without MX records is its own mail host.
    async fn implicit_mx(
        &self,
        queue_id: &str,
        domain: &str,
        name: Name,
    ) -> Result<Vec<NextHop>, Box<DeliveryStatus>> {
        debug!(queue_id, domain = %escape_field(domain), "no MX records, using the domain's addresses");
        match self.addresses(name).await {
            Ok(addresses) => Ok(vec![NextHop {
                name: domain.to_owned(),
                tls_name: domain.to_owned(),
                port: self.mx_port,
                addresses,
            }]),
            Err(AddressError::NotFound) => Err(bounce(
                format!("domain {domain} has no MX, A or AAAA records"),
                "5.1.2",
            )),
            Err(AddressError::Temporary(reason)) => Err(defer(
                format!("address lookup for {domain} failed: {reason}"),
                "4.4.3",
            )),
        }
    }

    /// Checks whether `domain` is delivered through a `[[delivery.routes]]` entry.
    pub fn has_static_route(&self, domain: &str) -> bool {
        self.static_route(domain).is_some()
    }

    /// Looks up the TXT records of `name`.
    pub async fn txt(&self, name: &str) -> TxtAnswer {
        let Ok(name) = fqdn(name) else {
            return TxtAnswer::NotFound;
        };
        match self.resolver.txt_lookup(name).await {
            Ok(lookup) => TxtAnswer::Found(
                lookup
                    .answers()
                    .iter()
                    .filter_map(|record| match &record.data {
                        RData::TXT(txt) => Some(
                            txt.txt_data
                                .iter()
                                .map(|part| String::from_utf8_lossy(part).into_owned())
                                .collect(),
                        ),
                        _ => None,
                    })
                    .collect(),
            ),
            Err(error) if is_not_found(&error) => TxtAnswer::NotFound,
            Err(error) => TxtAnswer::Failed(error.to_string()),
        }
    }

    /// Looks up the A and AAAA addresses of `host`.
    pub async fn host_addresses(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        let name = fqdn(host)?;
        match self.addresses(name).await {
            Ok(addresses) => Ok(addresses),
            Err(AddressError::NotFound) => Err(format!("{host} has no A or AAAA records")),
            Err(AddressError::Temporary(reason)) => Err(reason),
        }
    }

    /// Picks the static route for `domain`: an exact pattern before a suffix, the longest
    /// suffix first, and the first in config order among equals.
    fn static_route(&self, domain: &str) -> Option<&StaticRoute> {
        self.routes
            .iter()
            .filter_map(|(set, route)| set.matching_rule(domain).map(|rule| (rule, route)))
            .min_by_key(|(rule, _)| (rule.starts_with('*'), std::cmp::Reverse(rule.len())))
            .map(|(_, route)| route)
    }

    async fn resolve_route(&self, queue_id: &str, route: &StaticRoute) -> Option<NextHop> {
        let tls_name = route.tls_name.clone().unwrap_or_else(|| route.host.clone());
        let addresses = match route.host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => {
                let name = fqdn(&route.host).ok()?;
                match self.addresses(name).await {
                    Ok(addresses) => addresses,
                    Err(_) => {
                        debug!(
                            queue_id,
                            host = %escape_field(&route.host),
                            "skipping static route host: no address found",
                        );
                        return None;
                    }
                }
            }
        };
        Some(NextHop {
            name: route.host.clone(),
            tls_name,
            port: route.port,
            addresses,
        })
    }

    async fn addresses(&self, name: Name) -> Result<Vec<IpAddr>, AddressError> {
        match self.resolver.lookup_ip(name).await {
            Ok(lookup) => {
                let addresses: Vec<IpAddr> = lookup.iter().collect();
                if addresses.is_empty() {
                    Err(AddressError::NotFound)
                } else {
                    Ok(addresses)
                }
            }
            Err(error) if is_not_found(&error) => Err(AddressError::NotFound),
            Err(error) => Err(AddressError::Temporary(error.to_string())),
        }
    }
}

/// Sorts MX records by preference, shuffling hosts of equal preference so that load
/// spreads, as RFC 5321 §5.1 recommends.
fn order_mx(mut records: Vec<MX>) -> MxAnswer {
    if !records.is_empty() && records.iter().all(|mx| mx.exchange.is_root()) {
        return MxAnswer::Null;
    }
    // A `.` next to real hosts is a broken zone; the real hosts are still tried.
    records.retain(|mx| !mx.exchange.is_root());
    records.shuffle(&mut rand::rng());
    records.sort_by_key(|mx| mx.preference);
    MxAnswer::Hosts(records.into_iter().map(|mx| mx.exchange).collect())
}

fn keep_reachable(domain: &str, hops: Vec<NextHop>) -> Result<Vec<NextHop>, Box<DeliveryStatus>> {
    if hops.is_empty() {
        return Err(defer(
            format!("no next hop for {domain} has an address"),
            "4.4.4",
        ));
    }
    Ok(hops)
}

fn is_not_found(error: &NetError) -> bool {
    error.is_nx_domain() || error.is_no_records_found()
}

/// Parses a name as fully qualified, so that resolv.conf search domains are never added.
fn fqdn(name: &str) -> Result<Name, String> {
    let name = name.trim_end_matches('.');
    Name::from_utf8(format!("{name}.")).map_err(|error| error.to_string())
}

fn display_name(name: &Name) -> String {
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

fn dns_failure(detail: String, status: &str) -> Failure {
    Failure {
        host: None,
        stage: Stage::Dns,
        detail,
        reply: None,
        status: status.to_owned(),
    }
}

fn bounce(detail: String, status: &str) -> Box<DeliveryStatus> {
    Box::new(DeliveryStatus::Bounced(dns_failure(detail, status)))
}

fn defer(detail: String, status: &str) -> Box<DeliveryStatus> {
    Box::new(DeliveryStatus::Deferred(dns_failure(detail, status)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mx(preference: u16, exchange: &str) -> MX {
        MX::new(preference, Name::from_ascii(exchange).unwrap())
    }

    fn hosts(answer: MxAnswer) -> Vec<String> {
        match answer {
            MxAnswer::Hosts(names) => names.iter().map(display_name).collect(),
            MxAnswer::Null => panic!("expected hosts, got a null MX"),
        }
    }

    #[test]
    fn mx_sorted_by_preference() {
        let answer = order_mx(vec![
            mx(20, "b.example."),
            mx(5, "a.example."),
            mx(30, "c.example."),
        ]);
        assert_eq!(hosts(answer), ["a.example", "b.example", "c.example"]);
    }

    #[test]
    fn equal_preferences_stay_behind_better_ones() {
        for _ in 0..20 {
            let answer = order_mx(vec![
                mx(10, "x.example."),
                mx(10, "y.example."),
                mx(1, "first.example."),
            ]);
            let order = hosts(answer);
            assert_eq!(order[0], "first.example");
            assert!(order[1..].contains(&"x.example".to_owned()));
            assert!(order[1..].contains(&"y.example".to_owned()));
        }
    }

    #[test]
    fn equal_preferences_are_shuffled() {
        let records: Vec<MX> = (0..8)
            .map(|index| mx(10, &format!("h{index}.example.")))
            .collect();
        let first_orders: std::collections::HashSet<String> = (0..50)
            .map(|_| hosts(order_mx(records.clone()))[0].clone())
            .collect();
        assert!(
            first_orders.len() > 1,
            "50 orderings all started with the same host"
        );
    }

    #[test]
    fn single_root_exchange_is_null_mx() {
        assert_eq!(order_mx(vec![mx(0, ".")]), MxAnswer::Null);
    }

    #[test]
    fn root_exchange_beside_hosts_is_ignored() {
        let answer = order_mx(vec![mx(0, "."), mx(10, "mx.example.")]);
        assert_eq!(hosts(answer), ["mx.example"]);
    }

    #[test]
    fn fqdn_adds_one_trailing_dot() {
        assert!(fqdn("example.org").unwrap().is_fqdn());
        assert_eq!(fqdn("example.org.").unwrap().to_ascii(), "example.org.");
    }

    #[test]
    fn fqdn_converts_u_labels_to_a_labels() {
        let name = fqdn("b\u{fc}cher.example").unwrap();
        assert_eq!(name.to_ascii(), "xn--bcher-kva.example.");
    }
}
