//! `sealgate audit`: verify the hash chain and export entries.

use clap::Subcommand;
use sealgate::audit::{AuditFilter, AuditLog};
use sealgate::config::Config;

/// Entries read per query during an export.
const EXPORT_BATCH: u32 = 1000;

#[derive(Subcommand)]
pub enum AuditAction {
    /// Check every entry's hash and link; exits non-zero and names the first bad entry.
    Verify,
    /// Print entries as JSON lines, oldest first, with RFC 3339 times.
    Export {
        /// First time included: 2026-12-03 (midnight UTC) or RFC 3339.
        #[arg(long)]
        since: Option<String>,
        /// First time excluded, in the same forms.
        #[arg(long)]
        until: Option<String>,
    },
}

pub fn run(config: &Config, action: AuditAction) -> Result<(), String> {
    super::require_database(config)?;
    let audit = AuditLog::open(config).map_err(|error| error.to_string())?;
    match action {
        AuditAction::Verify => match audit.verify().map_err(|error| error.to_string())? {
            Ok(head) => {
                println!(
                    "audit chain ok: {} entries, last id {}, head {}",
                    head.entries, head.last_id, head.hash
                );
                Ok(())
            }
            Err(broken) => Err(broken.to_string()),
        },
        AuditAction::Export { since, until } => {
            let filter = AuditFilter {
                since: since.as_deref().map(super::parse_time).transpose()?,
                until: until.as_deref().map(super::parse_time).transpose()?,
                ..AuditFilter::default()
            };
            let mut offset = 0;
            loop {
                let entries = audit
                    .search(&filter, false, EXPORT_BATCH, offset)
                    .map_err(|error| error.to_string())?;
                for entry in &entries {
                    let line = serde_json::json!({
                        "id": entry.id,
                        "time": super::rfc3339(entry.at),
                        "event": entry.event,
                        "actor": entry.actor,
                        "held_id": entry.held_id,
                        "queue_id": entry.queue_id,
                        "outcome": entry.outcome,
                        "detail": entry.detail,
                        "prev_hash": entry.prev_hash,
                        "hash": entry.hash,
                    });
                    println!("{line}");
                }
                if entries.len() < EXPORT_BATCH as usize {
                    return Ok(());
                }
                offset += u64::from(EXPORT_BATCH);
            }
        }
    }
}
