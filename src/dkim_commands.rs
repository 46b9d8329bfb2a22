//! `sealgate dkim` and `sealgate dns`: create DKIM keys, print the DNS records a sending
//! domain publishes, and check what it publishes.

use std::path::{Path, PathBuf};

use clap::{Subcommand, ValueEnum};
use sealgate::config::{Config, is_domain_name};
use sealgate::delivery::build_resolver;
use sealgate::dkim::{self, DkimAlgorithm};
use sealgate::records::{self, ExpectedRecord, RecordKind};

#[derive(Subcommand)]
pub enum DkimAction {
    /// Create a DKIM private key in keys_dir/dkim/DOMAIN.SELECTOR.pem (mode 0600) and print
    /// the TXT record to publish and the [[dkim]] entry to add to the config.
    Generate {
        /// Signing domain, such as example.org.
        domain: String,
        /// Selector, such as sel2026; the record goes at SELECTOR._domainkey.DOMAIN.
        selector: String,
        /// Key type: RSA-2048 (rsa-sha256) or Ed25519 (ed25519-sha256).
        #[arg(long, value_enum, default_value_t = KeyAlgorithm::Rsa)]
        algorithm: KeyAlgorithm,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum KeyAlgorithm {
    /// RSA, 2048 bits.
    Rsa,
    /// Ed25519.
    Ed25519,
}

#[derive(Subcommand)]
pub enum DnsAction {
    /// Print the SPF, DKIM, DMARC, MTA-STS and TLS-RPT records DOMAIN must publish, and
    /// the MTA-STS policy file.
    Records {
        /// The sending domain.
        domain: String,
    },
    /// Look up each record with the resolver delivery uses and report it as present,
    /// missing or wrong, with the fix. Exits non-zero unless every record is present.
    Check {
        /// The sending domain.
        domain: String,
    },
}

fn load_config(path: Option<&Path>) -> Result<Config, String> {
    match path {
        Some(path) => Config::load(path).map_err(|error| error.to_string()),
        None => Ok(Config::development()),
    }
}

/// Runs `sealgate dkim ACTION`.
pub fn dkim(config_path: Option<&Path>, action: DkimAction) -> Result<(), String> {
    let config = load_config(config_path)?;
    let DkimAction::Generate {
        domain,
        selector,
        algorithm,
    } = action;
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    if !is_domain_name(&domain) || !domain.contains('.') {
        return Err(format!(
            "invalid domain {domain:?}: expected a domain name such as example.org"
        ));
    }
    if !is_domain_name(&selector) {
        return Err(format!(
            "invalid selector {selector:?}: expected letters, digits and hyphens, such as sel2026"
        ));
    }
    let algorithm = match algorithm {
        KeyAlgorithm::Rsa => DkimAlgorithm::RsaSha256,
        KeyAlgorithm::Ed25519 => DkimAlgorithm::Ed25519Sha256,
    };
    let file = dkim::default_key_file(&domain, &selector);
    let path: PathBuf = config.key_path(&file);
    let generated = dkim::generate_key(&path, algorithm).map_err(|error| error.to_string())?;
    let record = ExpectedRecord {
        kind: RecordKind::Dkim,
        name: format!("{}._domainkey.{domain}", selector.to_ascii_lowercase()),
        text: Some(generated.record),
        notes: Vec::new(),
        dkim_public_key: None,
    };
    println!(
        "wrote {} ({}, mode 0600)",
        generated.path.display(),
        algorithm.as_str()
    );
    println!("\npublish this record:");
    println!("{}", record.zone_line().unwrap_or_default());
    println!("\nthen add this entry to the config:");
    println!(
        "[[dkim]]\ndomain = \"{domain}\"\nselector = \"{selector}\"\nalgorithm = \"{}\"",
        algorithm.as_str()
    );
    Ok(())
}

/// Runs `sealgate dns ACTION`.
pub fn dns(config_path: Option<&Path>, action: DnsAction) -> Result<(), String> {
    let config = load_config(config_path)?;
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|error| format!("failed to start the async runtime: {error}"))?;
    runtime.block_on(async {
        let resolver = build_resolver(&config.delivery).map_err(|error| error.to_string())?;
        match action {
            DnsAction::Records { domain } => {
                let expected = records::expected_records(&config, &domain, &resolver)
                    .await
                    .map_err(|error| error.to_string())?;
                print!("{}", records::render(&expected));
                Ok(())
            }
            DnsAction::Check { domain } => {
                let expected = records::expected_records(&config, &domain, &resolver)
                    .await
                    .map_err(|error| error.to_string())?;
                let results = records::check(&expected, &resolver).await;
                for result in &results {
                    print!("{}", result.render());
                }
                let failed = results.iter().filter(|result| !result.is_ok()).count();
                if failed == 0 {
                    println!("{}: all {} records present", expected.domain, results.len());
                    Ok(())
                } else {
                    Err(format!(
                        "{}: {failed} of {} records missing, wrong or not looked up",
                        expected.domain,
                        results.len()
                    ))
                }
            }
        }
    })
}
