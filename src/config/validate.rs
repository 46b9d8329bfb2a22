//! Checks that need more than the type of a value: domain syntax, password hash format,
//! DNS server addresses and limits that must be positive.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use super::{Config, ConfigError};

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
        if !self.server.postmaster.is_empty() && !self.server.postmaster.contains('@') {
            return invalid(
                "server.postmaster".into(),
                quote(&self.server.postmaster),
                "expected an address such as postmaster@example.org",
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
        for (key, value, min) in [
            ("inbound.max_recipients", inbound.max_recipients, 1),
            ("inbound.max_command_line", inbound.max_command_line, 512),
            ("inbound.max_text_line", inbound.max_text_line, 1000),
            ("inbound.max_sessions", inbound.max_sessions, 1),
            ("delivery.concurrency", self.delivery.concurrency, 1),
        ] {
            if value < min {
                return invalid(
                    key.into(),
                    value.to_string(),
                    &format!("must be at least {min}"),
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
            if argon2::PasswordHash::new(&user.password_hash).is_err() {
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
                    "expected a domain name or *.suffix",
                );
            }
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
        for (index, route) in delivery.routes.iter().enumerate() {
            if !is_domain_pattern(&route.domain) {
                return invalid(
                    format!("delivery.routes[{index}].domain"),
                    quote(&route.domain),
                    "expected a domain name or *.suffix",
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
        self.smime.validate(path)
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

/// True for `example.org` or `*.example.org`.
pub fn is_domain_pattern(pattern: &str) -> bool {
    is_domain_name(pattern.strip_prefix("*.").unwrap_or(pattern))
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
             expected a domain name or *.suffix"
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
    fn example_config_is_valid() {
        let config = parse(crate::config::EXAMPLE_CONFIG).unwrap();
        assert!(!config.policy.secure_domains.is_empty());
    }

    #[test]
    fn wrong_type_names_key() {
        let error = parse("[inbound]\nrequire_tls = \"yes\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("inbound.require_tls"), "{error}");
    }
}
