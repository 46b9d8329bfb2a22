//! Routing: for every recipient of an accepted message, the route it must leave by and the
//! reason. The plan groups recipients by route, so a message with recipients on several
//! routes is split into one delivery per route.
//!
//! A message that is not sensitive goes `forced-tls` to secure domains and `opportunistic`
//! to everyone else. A sensitive one (see [`classify`]) goes `forced-tls` to secure
//! domains, `smime` to a recipient with a valid certificate, and `portal` to everyone
//! else; a rule with the `review` action sends every recipient to `review`. `portal` and
//! `review` recipients are held in the queue and never delivered by SMTP.
//!
//! Routes are stored in the queue by name, and delivery reads only the TLS requirement a
//! route carries, so a route adds a variant here and a mapping in
//! [`Route::tls_requirement`] without touching the queue schema or the SMTP client.

pub mod classify;
mod domains;

use std::fmt;
use std::str::FromStr;

pub use domains::DomainSet;

use crate::config::PolicyConfig;
use crate::envelope::domain_of;
use classify::{Action, Classification};

/// Route of a recipient's copy, weakest requirement first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Route {
    /// STARTTLS when offered, clear text otherwise (RFC 7435).
    Opportunistic,
    /// STARTTLS required and the certificate verified for the next hop's name.
    ForcedTls,
    /// S/MIME enveloped data for the recipient's certificate, over opportunistic TLS.
    Smime,
    /// Held encrypted for collection from the portal; only a notification leaves.
    Portal,
    /// Held until an administrator releases or rejects it.
    Review,
}

/// Result of a certificate lookup for one recipient, for routing and explanations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertificateLookup {
    /// A valid encryption certificate, described for the reason text (subject, expiry,
    /// file).
    Found(String),
    /// No usable certificate, and why (none known, or each known one and its flaw).
    Missing(String),
}

/// Finds recipients' S/MIME certificates; implemented by the S/MIME certificate directory.
pub trait CertificateSource: Send + Sync {
    /// Looks up the encryption certificate for exactly this address.
    fn certificate_for(&self, address: &str) -> CertificateLookup;
}

/// A certificate source that contains no certificates.
pub struct NoCertificates;

impl CertificateSource for NoCertificates {
    fn certificate_for(&self, _address: &str) -> CertificateLookup {
        CertificateLookup::Missing("no certificate directory is loaded".into())
    }
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

    /// Routes one recipient of a message that is not sensitive.
    pub fn route_recipient(&self, address: &str) -> (Route, RoutedRecipient) {
        self.decide(address, &Classification::default(), &NoCertificates)
    }

    /// Routes one recipient of a classified message.
    pub fn route_classified(
        &self,
        address: &str,
        classification: &Classification,
        certificates: &dyn CertificateSource,
    ) -> (Route, RoutedRecipient) {
        self.decide(address, classification, certificates)
    }

    /// Routes every recipient of a message that is not sensitive, grouped by route.
    pub fn plan(&self, recipients: &[String]) -> Plan {
        self.plan_classified(recipients, &Classification::default(), &NoCertificates)
    }

    /// Routes every recipient of a classified message and groups them by route.
    pub fn plan_classified(
        &self,
        recipients: &[String],
        classification: &Classification,
        certificates: &dyn CertificateSource,
    ) -> Plan {
        let mut plan = Plan::default();
        for address in recipients {
            let (route, recipient) = self.decide(address, classification, certificates);
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

    fn decide(
        &self,
        address: &str,
        classification: &Classification,
        certificates: &dyn CertificateSource,
    ) -> (Route, RoutedRecipient) {
        let domain = domain_of(address);
        let secure_rule = self.secure_domains.matching_rule(&domain);
        let (route, reason) = match (classification.action, secure_rule) {
            (Some(Action::Review), _) => (Route::Review, "held for review".to_string()),
            (_, Some(rule)) => (
                Route::ForcedTls,
                format!("domain {domain} is secure (rule {rule})"),
            ),
            (None, None) => (
                Route::Opportunistic,
                format!("domain {domain} is not in the secure domain list"),
            ),
            (Some(Action::Protect), None) => match certificates.certificate_for(address) {
                CertificateLookup::Found(certificate) => (
                    Route::Smime,
                    format!("domain {domain} is not secure; certificate {certificate}"),
                ),
                CertificateLookup::Missing(why) => (
                    Route::Portal,
                    format!("domain {domain} is not secure and no certificate is usable: {why}"),
                ),
            },
        };
        let reason = if classification.matches.is_empty() {
            reason
        } else {
            let rules: Vec<String> = classification
                .matches
                .iter()
                .map(|m| m.to_string())
                .collect();
            format!("sensitive ({}); {reason}", rules.join("; "))
        };
        let recipient = RoutedRecipient {
            address: address.to_owned(),
            reason,
        };
        (route, recipient)
    }
}

impl Route {
    /// The TLS level delivery must reach on this route, or `None` for a route that is
    /// held and never delivered by SMTP.
    pub fn tls_requirement(self) -> Option<TlsRequirement> {
        match self {
            // The S/MIME envelope protects the content; TLS is a second layer.
            Route::Opportunistic | Route::Smime => Some(TlsRequirement::Opportunistic),
            Route::ForcedTls => Some(TlsRequirement::Verified),
            Route::Portal | Route::Review => None,
        }
    }

    /// True for routes whose recipients stay held in the queue.
    pub fn is_held(self) -> bool {
        self.tls_requirement().is_none()
    }

    /// Returns the name stored in the queue and shown in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Opportunistic => "opportunistic",
            Route::ForcedTls => "forced-tls",
            Route::Smime => "smime",
            Route::Portal => "portal",
            Route::Review => "review",
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
            "smime" => Ok(Route::Smime),
            "portal" => Ok(Route::Portal),
            "review" => Ok(Route::Review),
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
        for route in [
            Route::Opportunistic,
            Route::ForcedTls,
            Route::Smime,
            Route::Portal,
            Route::Review,
        ] {
            assert_eq!(route.as_str().parse::<Route>().unwrap(), route);
        }
        assert!("smoke-signal".parse::<Route>().is_err());
    }

    #[test]
    fn forced_tls_requires_verification() {
        assert!(Route::ForcedTls.tls_requirement() > Route::Opportunistic.tls_requirement());
        assert_eq!(
            Route::Smime.tls_requirement(),
            Some(TlsRequirement::Opportunistic)
        );
        assert!(Route::Portal.is_held());
        assert!(Route::Review.is_held());
    }

    struct KnownCertificate;

    impl CertificateSource for KnownCertificate {
        fn certificate_for(&self, address: &str) -> CertificateLookup {
            if address == "bob@partner.example" {
                CertificateLookup::Found("CN=Bob".into())
            } else {
                CertificateLookup::Missing(format!("no certificate for {address}"))
            }
        }
    }

    fn sensitive(action: Action) -> Classification {
        Classification {
            action: Some(action),
            matches: vec![classify::RuleMatch {
                rule: "subject-tag".into(),
                action,
                location: "subject".into(),
                detail: "tag [secure]".into(),
            }],
        }
    }

    #[test]
    fn sensitive_mail_routes_by_domain_and_certificate() {
        let router = router(&["nhs.net", "*.nhs.net"]);
        let classification = sensitive(Action::Protect);
        let cases = [
            ("referrals@trust.nhs.net", Route::ForcedTls),
            ("bob@partner.example", Route::Smime),
            ("sam.patient@mailbox.example", Route::Portal),
        ];
        for (address, expected) in cases {
            let (route, recipient) =
                router.route_classified(address, &classification, &KnownCertificate);
            assert_eq!(route, expected, "{address}");
            assert!(
                recipient
                    .reason
                    .starts_with("sensitive (subject-tag in subject"),
                "{}",
                recipient.reason
            );
        }
        let (_, portal) = router.route_classified(
            "sam.patient@mailbox.example",
            &classification,
            &KnownCertificate,
        );
        assert!(
            portal
                .reason
                .contains("no certificate for sam.patient@mailbox.example"),
            "{}",
            portal.reason
        );
    }

    #[test]
    fn review_rule_holds_every_recipient() {
        let router = router(&["nhs.net"]);
        let classification = sensitive(Action::Review);
        for address in ["gp@nhs.net", "bob@partner.example", "x@mailbox.example"] {
            let (route, _) = router.route_classified(address, &classification, &KnownCertificate);
            assert_eq!(route, Route::Review, "{address}");
        }
    }

    #[test]
    fn unclassified_mail_ignores_certificates() {
        let router = router(&["nhs.net"]);
        let (route, _) = router.route_classified(
            "bob@partner.example",
            &Classification::default(),
            &KnownCertificate,
        );
        assert_eq!(route, Route::Opportunistic);
    }
}
