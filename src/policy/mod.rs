//! Routing: for every recipient of an accepted message, the route it must leave by and the
//! reason. The plan groups recipients by route, so a message with recipients on several
//! routes is split into one delivery per route.
//!
//! Routes are stored in the queue by name, and delivery reads only the TLS requirement a
//! route carries, so further routes add a variant here and a mapping in
//! [`Route::tls_requirement`] without touching the queue schema or the SMTP client.

pub mod classify;
mod domains;

use std::fmt;
use std::str::FromStr;

pub use domains::DomainSet;

use crate::config::PolicyConfig;
use crate::envelope::domain_of;

/// How a recipient's copy may leave, weakest requirement first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Route {
    /// STARTTLS when offered, clear text otherwise (RFC 7435).
    Opportunistic,
    /// STARTTLS required and the certificate verified for the next hop's name.
    ForcedTls,
}

/// The TLS level delivery must reach, ordered so that `<` means weaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsRequirement {
    /// Try STARTTLS, fall back to clear text when it is missing or the handshake fails.
    Opportunistic,
    /// STARTTLS with a verified certificate, or no delivery.
    Verified,
}

/// One group of recipients that share a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteGroup {
    /// The route.
    pub route: Route,
    /// The recipients, each with the reason it got this route.
    pub recipients: Vec<RoutedRecipient>,
}

/// A recipient and why it was routed as it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutedRecipient {
    /// Envelope address.
    pub address: String,
    /// Human-readable reason, such as `domain nhs.net is secure (rule nhs.net)`.
    pub reason: String,
}

/// The routing decision for one message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Recipient groups, at most one per route, in route order.
    pub groups: Vec<RouteGroup>,
}

/// Decides routes from the `[policy]` config.
#[derive(Clone, Debug)]
pub struct Router {
    secure_domains: DomainSet,
}

impl Router {
    /// Builds a router; patterns were checked when the config was loaded.
    pub fn new(config: &PolicyConfig) -> Router {
        Router {
            secure_domains: DomainSet::new(&config.secure_domains),
        }
    }

    /// Routes one recipient.
    pub fn route_recipient(&self, address: &str) -> (Route, RoutedRecipient) {
        self.decide(address)
    }

    /// Routes every recipient and groups them by route.
    pub fn plan(&self, recipients: &[String]) -> Plan {
        let mut plan = Plan::default();
        for address in recipients {
            let (route, recipient) = self.decide(address);
            match plan.groups.iter_mut().find(|group| group.route == route) {
                Some(group) => group.recipients.push(recipient),
                None => plan.groups.push(RouteGroup {
                    route,
                    recipients: vec![recipient],
                }),
            }
        }
        plan.groups.sort_by_key(|group| group.route);
        plan
    }

    fn decide(&self, address: &str) -> (Route, RoutedRecipient) {
        let domain = domain_of(address);
        let (route, reason) = match self.secure_domains.matching_rule(&domain) {
            Some(rule) => (
                Route::ForcedTls,
                format!("domain {domain} is secure (rule {rule})"),
            ),
            None => (
                Route::Opportunistic,
                format!("domain {domain} is not in the secure domain list"),
            ),
        };
        let recipient = RoutedRecipient {
            address: address.to_owned(),
            reason,
        };
        (route, recipient)
    }
}

impl Route {
    /// The TLS level delivery must reach on this route.
    pub fn tls_requirement(self) -> TlsRequirement {
        match self {
            Route::Opportunistic => TlsRequirement::Opportunistic,
            Route::ForcedTls => TlsRequirement::Verified,
        }
    }

    /// The name stored in the queue and shown in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Opportunistic => "opportunistic",
            Route::ForcedTls => "forced-tls",
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Route {
    type Err = String;

    fn from_str(text: &str) -> Result<Route, String> {
        match text {
            "opportunistic" => Ok(Route::Opportunistic),
            "forced-tls" => Ok(Route::ForcedTls),
            _ => Err(format!("unknown route {text:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(domains: &[&str]) -> Router {
        Router::new(&PolicyConfig {
            secure_domains: domains.iter().map(|domain| domain.to_string()).collect(),
            ..PolicyConfig::default()
        })
    }

    #[test]
    fn secure_domain_gets_forced_tls() {
        let router = router(&["nhs.net"]);
        let plan = router.plan(&["a@NHS.NET".into()]);
        assert_eq!(plan.groups.len(), 1);
        assert_eq!(plan.groups[0].route, Route::ForcedTls);
        assert!(plan.groups[0].recipients[0].reason.contains("rule nhs.net"));
    }

    #[test]
    fn exact_rule_does_not_cover_subdomains() {
        let router = router(&["nhs.net"]);
        let plan = router.plan(&["referrals@trust.nhs.net".into()]);
        assert_eq!(plan.groups[0].route, Route::Opportunistic);
    }

    #[test]
    fn mixed_recipients_split_per_route() {
        let router = router(&["nhs.net", "*.nhs.uk"]);
        let recipients = [
            "friends@mailbox.example".to_string(),
            "gp@nhs.net".to_string(),
            "ward@hospital.nhs.uk".to_string(),
            "bob@partner.example".to_string(),
        ];
        let plan = router.plan(&recipients);
        assert_eq!(plan.groups.len(), 2);
        assert_eq!(plan.groups[0].route, Route::Opportunistic);
        assert_eq!(plan.groups[1].route, Route::ForcedTls);
        let secure: Vec<_> = plan.groups[1]
            .recipients
            .iter()
            .map(|r| &r.address)
            .collect();
        assert_eq!(secure, ["gp@nhs.net", "ward@hospital.nhs.uk"]);
        assert_eq!(plan.groups[0].recipients.len(), 2);
    }

    #[test]
    fn route_names_round_trip() {
        for route in [Route::Opportunistic, Route::ForcedTls] {
            assert_eq!(route.as_str().parse::<Route>().unwrap(), route);
        }
        assert!("smoke-signal".parse::<Route>().is_err());
    }

    #[test]
    fn forced_tls_requires_verification() {
        assert!(Route::ForcedTls.tls_requirement() > Route::Opportunistic.tls_requirement());
    }
}
