//! Checks that need more than the type of a value: domain syntax, password hash format,
//! DNS server addresses and limits that must be positive.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use super::{Config, ConfigError};
use crate::policy::classify::ClassifyError;

impl Config {
    pub(super) fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, value: String, reason: &str| {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                key,
                value,
                reason: reason.to_owned(),
            })
        };

        if !is_domain_name(&self.server.hostname) {
            return invalid(
                "server.hostname".into(),
                quote(&self.server.hostname),
                "not a valid host name",
            );
        }
        let postmaster_domain = self
            .server
            .postmaster
            .rsplit_once('@')
            .map(|(_, domain)| domain);
        if !self.server.postmaster.is_empty() && !postmaster_domain.is_some_and(is_domain_name) {
            return invalid(
                "server.postmaster".into(),
                quote(&self.server.postmaster),
                "expected an address such as postmaster@example.org",
            );
        }

        if self.admin.max_failed_logins == 0 {
            return invalid(
                "admin.max_failed_logins".into(),
                "0".into(),
                "must be at least 1",
            );
        }
        let admin = &self.admin;
        if !admin.tls && !admin.listen.ip().is_loopback() {
            return invalid(
                "admin.listen".into(),
                quote(&admin.listen.to_string()),
                "plain HTTP is only allowed on a loopback address; set admin.tls = true or \
                 listen on 127.0.0.1 behind a TLS reverse proxy",
            );
        }
        let admin_url_valid =
            crate::store::is_web_url(&admin.base_url) && !admin.base_url.ends_with('/');
        if !admin.base_url.is_empty() && !admin_url_valid {
            return invalid(
                "admin.base_url".into(),
                quote(&admin.base_url),
                "expected an https:// or http:// URL without a trailing slash",
            );
        }

        let inbound = &self.inbound;
        if inbound.listen.is_empty() {
            return invalid(
                "inbound.listen".into(),
                "[]".into(),
                "at least one address is needed",
            );
        }
        // The upper bounds keep semaphores and buffers within what the process can hold;
        // they are far above any sensible setting.
        for (key, value, min, max) in [
            ("inbound.max_recipients", inbound.max_recipients, 1, 100_000),
            (
                "inbound.max_command_line",
                inbound.max_command_line,
                512,
                1 << 20,
            ),
            (
                "inbound.max_text_line",
                inbound.max_text_line,
                1000,
                1 << 20,
            ),
            ("inbound.max_sessions", inbound.max_sessions, 1, 100_000),
            (
                "inbound.max_sessions_per_client",
                inbound.max_sessions_per_client,
                1,
                100_000,
            ),
            ("delivery.concurrency", self.delivery.concurrency, 1, 10_000),
        ] {
            if value < min || value > max {
                return invalid(
                    key.into(),
                    value.to_string(),
                    &format!("must be between {min} and {max}"),
                );
            }
        }
        if inbound.auth_failure_window.0.is_zero() {
            return invalid(
                "inbound.auth_failure_window".into(),
                quote(&inbound.auth_failure_window.to_string()),
                "must not be 0",
            );
        }
        let mut listen_seen = std::collections::HashSet::new();
        for (index, address) in inbound.listen.iter().enumerate() {
            if !listen_seen.insert(address) {
                return invalid(
                    format!("inbound.listen[{index}]"),
                    quote(&address.to_string()),
                    "listed twice",
                );
            }
        }
        if inbound.max_message_size.0 < 1024 {
            return invalid(
                "inbound.max_message_size".into(),
                quote(&inbound.max_message_size.to_string()),
                "must be at least 1KB",
            );
        }
        for (index, user) in inbound.users.iter().enumerate() {
            if user.name.is_empty() || user.name.chars().any(char::is_control) {
                return invalid(
                    format!("inbound.users[{index}].name"),
                    quote(&user.name),
                    "must be non-empty printable text",
                );
            }
            if inbound.users[..index]
                .iter()
                .any(|earlier| earlier.name == user.name)
            {
                return invalid(
                    format!("inbound.users[{index}].name"),
                    quote(&user.name),
                    "listed twice",
                );
            }
            let is_argon2 = argon2::PasswordHash::new(&user.password_hash)
                .is_ok_and(|hash| hash.algorithm.as_str().starts_with("argon2"));
            if !is_argon2 {
                // The hash itself is not echoed: it is a secret.
                return invalid(
                    format!("inbound.users[{index}].password_hash"),
                    "<redacted>".into(),
                    "not an Argon2 PHC string; create one with `sealgate hash-password`",
                );
            }
        }

        for (index, domain) in self.policy.secure_domains.iter().enumerate() {
            if !is_domain_pattern(domain) {
                return invalid(
                    format!("policy.secure_domains[{index}]"),
                    quote(domain),
                    "expected a domain name, *.suffix or *",
                );
            }
        }

        if let Err(ClassifyError::Invalid { key, value, reason }) = self.policy.classify.check() {
            return invalid(key, value, &reason);
        }

        if self.policy.forced_tls_fallback_after == Some(0) {
            return invalid(
                "policy.forced_tls_fallback_after".into(),
                "0".into(),
                "must be at least 1; leave it out to turn the fallback off",
            );
        }

        let delivery = &self.delivery;
        if let Some(helo) = &delivery.helo_name
            && !is_domain_name(helo)
        {
            return invalid(
                "delivery.helo_name".into(),
                quote(helo),
                "not a valid host name",
            );
        }
        for (index, server) in delivery.dns_servers.iter().enumerate() {
            if parse_dns_server(server).is_none() {
                return invalid(
                    format!("delivery.dns_servers[{index}]"),
                    quote(server),
                    "expected an IP address or ip:port",
                );
            }
        }
        if delivery.mta_sts_port == 0 {
            return invalid("delivery.mta_sts_port".into(), "0".into(), "must not be 0");
        }
        if delivery.mta_sts_timeout.0.is_zero() {
            return invalid(
                "delivery.mta_sts_timeout".into(),
                quote(&delivery.mta_sts_timeout.to_string()),
                "must not be 0",
            );
        }
        if delivery.tlsrpt_interval.0 < std::time::Duration::from_secs(60) {
            return invalid(
                "delivery.tlsrpt_interval".into(),
                quote(&delivery.tlsrpt_interval.to_string()),
                "must be at least 1m",
            );
        }
        if delivery.dnssec == super::DnssecMode::TrustResolver && delivery.dns_servers.is_empty() {
            return invalid(
                "delivery.dnssec".into(),
                quote("trust-resolver"),
                "needs delivery.dns_servers: the AD bit is trusted only from resolvers named there",
            );
        }
        for (index, route) in delivery.routes.iter().enumerate() {
            if !is_domain_pattern(&route.domain) {
                return invalid(
                    format!("delivery.routes[{index}].domain"),
                    quote(&route.domain),
                    "expected a domain name, *.suffix or *",
                );
            }
            if route.host.parse::<IpAddr>().is_err() && !is_domain_name(&route.host) {
                return invalid(
                    format!("delivery.routes[{index}].host"),
                    quote(&route.host),
                    "expected a host name or IP address",
                );
            }
            if route.port == 0 {
                return invalid(
                    format!("delivery.routes[{index}].port"),
                    "0".into(),
                    "must not be 0",
                );
            }
            if let Some(name) = &route.tls_name
                && !is_domain_name(name)
                && name.parse::<IpAddr>().is_err()
            {
                return invalid(
                    format!("delivery.routes[{index}].tls_name"),
                    quote(name),
                    "expected a host name",
                );
            }
        }

        let queue = &self.queue;
        if queue.retry_schedule.is_empty() {
            return invalid(
                "queue.retry_schedule".into(),
                "[]".into(),
                "at least one delay is needed",
            );
        }
        for (index, delay) in queue.retry_schedule.iter().enumerate() {
            if delay.0.is_zero() {
                return invalid(
                    format!("queue.retry_schedule[{index}]"),
                    quote(&delay.to_string()),
                    "must not be 0",
                );
            }
        }
        if queue.max_lifetime.0.is_zero() {
            return invalid(
                "queue.max_lifetime".into(),
                quote(&queue.max_lifetime.to_string()),
                "must not be 0",
            );
        }
        if queue.scan_interval.0.is_zero() {
            return invalid(
                "queue.scan_interval".into(),
                quote(&queue.scan_interval.to_string()),
                "must not be 0",
            );
        }
        self.smime.validate(path)?;
        self.store.validate(path)?;
        self.portal.validate(path)?;
        crate::dkim::validate(&self.dkim, path)?;
        self.dns_records.validate(path)
    }
}

fn quote(text: &str) -> String {
    format!("{text:?}")
}

/// Parses `ip` or `ip:port` (`[v6]:port` for IPv6); port 53 when none is given.
pub fn parse_dns_server(text: &str) -> Option<SocketAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 53));
    }
    text.parse::<SocketAddr>().ok()
}

/// True for a host name of letters, digits and hyphens in dot-separated labels.
pub fn is_domain_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
        })
}

/// True for `example.org`, `*.example.org` or `*` (every domain).
pub fn is_domain_pattern(pattern: &str) -> bool {
    pattern == "*" || is_domain_name(pattern.strip_prefix("*.").unwrap_or(pattern))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigError};

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/sealgate.toml"))
    }

    #[test]
    fn empty_file_gives_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.inbound.max_recipients, 100);
        assert_eq!(config.policy.secure_domains, ["nhs.net", "*.nhs.net"]);
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let error = parse("[inbound]\nmax_recipient = 5\n")
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("/etc/sealgate.toml: "), "{error}");
        assert!(error.contains("max_recipient"), "{error}");
        assert!(error.contains("line 2"), "{error}");
    }

    #[test]
    fn unknown_section_is_rejected() {
        let error = parse("[inbond]\n").unwrap_err().to_string();
        assert!(error.contains("inbond"), "{error}");
    }

    #[test]
    fn bad_duration_names_key_and_value() {
        let error = parse("[queue]\nmax_lifetime = \"5x\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("queue.max_lifetime"), "{error}");
        assert!(error.contains("\"5x\""), "{error}");
    }

    #[test]
    fn bad_size_names_key_and_value() {
        let error = parse("[inbound]\nmax_message_size = \"35\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("inbound.max_message_size"), "{error}");
        assert!(error.contains("\"35\""), "{error}");
    }

    #[test]
    fn bad_secure_domain_names_index() {
        let error = parse("[policy]\nsecure_domains = [\"nhs.net\", \"bad domain\"]\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "/etc/sealgate.toml: policy.secure_domains[1] = \"bad domain\": \
             expected a domain name, *.suffix or *"
        );
    }

    #[test]
    fn bad_network_names_key() {
        let error = parse("[inbound]\nrelay_networks = [\"10.0.0.0/33\"]\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("inbound.relay_networks"), "{error}");
    }

    #[test]
    fn bad_password_hash_is_redacted() {
        let error = parse("[[inbound.users]]\nname = \"mta\"\npassword_hash = \"hunter2\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("inbound.users[0].password_hash"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn relay_network_error_names_value() {
        let error = parse("[inbound]\nrelay_networks = [\"10.0.0.300/8\"]\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("\"10.0.0.300/8\""), "{error}");
    }

    #[test]
    fn relay_network_accepts_single_address() {
        let config = parse("[inbound]\nrelay_networks = [\"10.0.0.1\", \"::1\"]\n").unwrap();
        assert_eq!(config.inbound.relay_networks[0].to_string(), "10.0.0.1/32");
        assert_eq!(config.inbound.relay_networks[1].to_string(), "::1/128");
    }

    #[test]
    fn listen_error_names_value() {
        let error = parse("[inbound]\nlisten = [\"localhost:25\"]\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("inbound.listen"), "{error}");
        assert!(error.contains("\"localhost:25\""), "{error}");
    }

    #[test]
    fn duplicate_listen_address_is_rejected() {
        let error = parse("[inbound]\nlisten = [\"127.0.0.1:25\", \"127.0.0.1:25\"]\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("inbound.listen[1]"), "{error}");
    }

    #[test]
    fn huge_limits_are_rejected() {
        for text in [
            "[delivery]\nconcurrency = 2305843009213693952\n",
            "[inbound]\nmax_sessions = 2305843009213693952\n",
        ] {
            let error = parse(text).unwrap_err().to_string();
            assert!(error.contains("must be between"), "{error}");
        }
    }

    #[test]
    fn non_argon2_hash_and_duplicate_user_are_rejected() {
        let pbkdf2 = "$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXo";
        let error = parse(&format!(
            "[[inbound.users]]\nname = \"mta\"\npassword_hash = \"{pbkdf2}\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(error.contains("inbound.users[0].password_hash"), "{error}");

        let argon =
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXo";
        let user = format!("[[inbound.users]]\nname = \"mta\"\npassword_hash = \"{argon}\"\n");
        parse(&user).unwrap();
        let error = parse(&format!("{user}{user}")).unwrap_err().to_string();
        assert!(error.contains("inbound.users[1].name"), "{error}");
        assert!(error.contains("listed twice"), "{error}");
    }

    #[test]
    fn postmaster_needs_a_valid_domain() {
        let error = parse("[server]\npostmaster = \"postmaster@\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("server.postmaster"), "{error}");
    }

    #[test]
    fn admin_settings_are_checked() {
        let plain = parse("[admin]\nlisten = \"0.0.0.0:8444\"\ntls = false\n")
            .unwrap_err()
            .to_string();
        assert!(plain.contains("admin.listen = \"0.0.0.0:8444\""), "{plain}");
        parse("[admin]\nlisten = \"0.0.0.0:8444\"\ntls = true\n").unwrap();
        let url = parse("[admin]\nbase_url = \"admin.example/\"\n")
            .unwrap_err()
            .to_string();
        assert!(url.contains("admin.base_url"), "{url}");
        let zero = parse("[admin]\nmax_failed_logins = 0\n")
            .unwrap_err()
            .to_string();
        assert!(zero.contains("admin.max_failed_logins = 0"), "{zero}");
        let config = parse("[admin]\nfour_eyes = true\n").unwrap();
        assert!(config.admin.four_eyes);
        assert_eq!(config.admin.max_failed_logins, 5);
    }

    #[test]
    fn catch_all_route_is_accepted() {
        let config = parse("[[delivery.routes]]\ndomain = \"*\"\nhost = \"127.0.0.1\"\n").unwrap();
        assert_eq!(config.delivery.routes[0].domain, "*");
    }

    #[test]
    fn relative_folders_follow_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sealgate.toml");
        std::fs::write(&path, "[server]\ndata_dir = \"spool\"\n").unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(config.server.data_dir, dir.path().join("spool"));
        assert_eq!(config.server.keys_dir, dir.path().join("keys"));
    }

    #[test]
    fn bad_dns_server_is_rejected() {
        let error = parse("[delivery]\ndns_servers = [\"dns.example\"]\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("delivery.dns_servers[0]"), "{error}");
    }

    #[test]
    fn static_route_port_defaults_to_25() {
        let config =
            parse("[[delivery.routes]]\ndomain = \"trust.example\"\nhost = \"10.1.2.3\"\n")
                .unwrap();
        assert_eq!(config.delivery.routes[0].port, 25);
    }

    #[test]
    fn classify_section_parses() {
        let config = parse(
            "[policy.classify.nhs_number]\nrequire_keyword = true\n\
             [[policy.classify.patterns]]\nname = \"ref\"\nregex = \"REF[0-9]+\"\n\
             action = \"review\"\n",
        )
        .unwrap();
        let classify = &config.policy.classify;
        assert!(classify.nhs_number.require_keyword);
        assert_eq!(classify.patterns[0].min_count, 1);
        assert_eq!(classify.subject_tags.tags, ["[secure]"]);
    }

    #[test]
    fn bad_classify_regex_names_file_key_and_value() {
        let error = parse("[[policy.classify.patterns]]\nname = \"x\"\nregex = \"(\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with(
                "/etc/sealgate.toml: policy.classify.patterns[0].regex = \"(\": \
                 invalid regular expression: "
            ),
            "{error}"
        );
    }

    #[test]
    fn unknown_classify_key_is_rejected() {
        let error = parse("[policy.classify.markings]\nbody_line = 3\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("body_line"), "{error}");
    }

    #[test]
    fn bad_classify_action_names_key() {
        let error = parse("[policy.classify.subject_tags]\naction = \"encrypt\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("policy.classify.subject_tags.action"),
            "{error}"
        );
    }

    #[test]
    fn example_config_is_valid() {
        let config = parse(crate::config::EXAMPLE_CONFIG).unwrap();
        assert!(!config.policy.secure_domains.is_empty());
        assert_eq!(
            config.policy.classify.header_rules,
            crate::policy::classify::ClassifyConfig::default().header_rules
        );
    }

    #[test]
    fn tls_policy_settings_are_checked() {
        let cases = [
            (
                "[delivery]\ndnssec = \"trust-resolver\"\n",
                "delivery.dnssec",
            ),
            ("[delivery]\ndnssec = \"yes\"\n", "delivery.dnssec"),
            ("[delivery]\nmta_sts_port = 0\n", "delivery.mta_sts_port"),
            (
                "[delivery]\nmta_sts_timeout = \"0s\"\n",
                "delivery.mta_sts_timeout",
            ),
            (
                "[delivery]\ntlsrpt_interval = \"10s\"\n",
                "delivery.tlsrpt_interval",
            ),
        ];
        for (text, key) in cases {
            let error = parse(text).unwrap_err().to_string();
            assert!(error.contains(key), "{text}: {error}");
        }
        let config =
            parse("[delivery]\ndns_servers = [\"127.0.0.1:53\"]\ndnssec = \"trust-resolver\"\n")
                .unwrap();
        assert_eq!(
            config.delivery.dnssec,
            crate::config::DnssecMode::TrustResolver
        );
    }

    #[test]
    fn wrong_type_names_key() {
        let error = parse("[inbound]\nrequire_tls = \"yes\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("inbound.require_tls"), "{error}");
    }
}
