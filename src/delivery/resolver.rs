//! The hickory resolver built from `[delivery]`. MX delivery and `sealgate dns check` share
//! it, so a check gets the answers delivery would get.

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

use super::DeliveryError;
use crate::config::{DeliveryConfig, parse_dns_server};

/// Builds the resolver from `delivery.dns_servers`, or from `/etc/resolv.conf` when that
/// list is empty, with `delivery.dns_timeout` per query.
///
/// # Errors
///
/// [`DeliveryError::DnsServer`] for a bad `dns_servers` entry, [`DeliveryError::SystemDns`]
/// when `/etc/resolv.conf` cannot be used, and [`DeliveryError::Resolver`] when hickory
/// rejects the config.
pub fn build_resolver(config: &DeliveryConfig) -> Result<TokioResolver, DeliveryError> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = if config.dns_servers.is_empty() {
        TokioResolver::builder(provider)
            .map_err(|error| DeliveryError::SystemDns(error.to_string()))?
    } else {
        let mut servers = Vec::new();
        for text in &config.dns_servers {
            let address =
                parse_dns_server(text).ok_or_else(|| DeliveryError::DnsServer(text.clone()))?;
            let mut server = NameServerConfig::udp_and_tcp(address.ip());
            for connection in &mut server.connections {
                connection.port = address.port();
            }
            servers.push(server);
        }
        TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
    };
    builder.options_mut().timeout = config.dns_timeout.0;
    builder
        .build()
        .map_err(|error| DeliveryError::Resolver(error.to_string()))
}
