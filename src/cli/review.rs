//! `sealgate review`: the messages held for review, and the actions on them.

use clap::{Args, Subcommand};
use sealgate::admin::Accounts;
use sealgate::admin::actions::{ReleaseOutcome, ReviewDesk};
use sealgate::audit::AuditLog;
use sealgate::config::Config;
use sealgate::envelope::display_address;
use sealgate::portal::message::parse_view;
use sealgate::queue::review::{ReleaseMode, ReviewFilter};
use sealgate::queue::store::Store;
use sealgate::telemetry::escape;

#[derive(Subcommand)]
pub enum ReviewAction {
    /// One line per held message, newest first: id, time, size, sender, recipients, reason.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Messages per page.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Messages to skip, for the next pages.
        #[arg(long, default_value_t = 0)]
        offset: u64,
    },
    /// Headers, text, attachments and the routing explanation of one held message.
    Show {
        /// Queue id.
        id: String,
        /// Administrator or auditor account recorded in the audit trail.
        #[arg(long)]
        actor: String,
    },
    /// Route the message again with the review rule read as `protect`, or as ordinary
    /// mail with --not-sensitive.
    Release {
        /// Queue id.
        id: String,
        /// Administrator account recorded in the audit trail.
        #[arg(long)]
        actor: String,
        /// Route as ordinary mail, without classification; needs --reason.
        #[arg(long)]
        not_sensitive: bool,
        /// Why, recorded in the audit trail.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Bounce the message; the sender gets a DSN with the reason.
    Reject {
        /// Queue id.
        id: String,
        /// Administrator account recorded in the audit trail.
        #[arg(long)]
        actor: String,
        /// Why, shown to the sender in the DSN.
        #[arg(long)]
        reason: String,
    },
    /// Remove the message without telling the sender.
    Delete {
        /// Queue id.
        id: String,
        /// Administrator account recorded in the audit trail.
        #[arg(long)]
        actor: String,
        /// Why, recorded in the audit trail.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

/// The list filters.
#[derive(Args)]
pub struct FilterArgs {
    /// Part of the envelope sender.
    #[arg(long)]
    sender: Option<String>,
    /// Part of a held recipient's address.
    #[arg(long)]
    recipient: Option<String>,
    /// Received at or after: 2026-12-03 (midnight UTC) or RFC 3339.
    #[arg(long)]
    since: Option<String>,
    /// Received before, in the same forms.
    #[arg(long)]
    until: Option<String>,
    /// Part of the routing reason, such as a rule name `pattern:codename`.
    #[arg(long)]
    rule: Option<String>,
}

impl FilterArgs {
    fn to_filter(&self) -> Result<ReviewFilter, String> {
        Ok(ReviewFilter {
            sender: self.sender.clone(),
            recipient: self.recipient.clone(),
            since: self.since.as_deref().map(super::parse_time).transpose()?,
            until: self.until.as_deref().map(super::parse_time).transpose()?,
            rule: self.rule.clone(),
        })
    }
}

pub fn run(config: &Config, action: ReviewAction) -> Result<(), String> {
    super::require_database(config)?;
    let mut store = Store::open(&config.database_path(), crate::load_master_keys(config)?)
        .map_err(|error| error.to_string())?;
    let audit = AuditLog::open(config).map_err(|error| error.to_string())?;
    let accounts = Accounts::open(config).map_err(|error| error.to_string())?;
    let account = |name: &str| {
        accounts
            .get(name)
            .map_err(|error| error.to_string())?
            .ok_or_else(|| format!("account {name:?} not found; add it with `sealgate admin add`"))
    };
    let parse_id = |text: &str| crate::parse_id(text);
    let mut desk = ReviewDesk {
        store: &mut store,
        audit: &audit,
        four_eyes: config.admin.four_eyes,
    };
    let error = |error: sealgate::admin::actions::ActionError| error.to_string();
    match action {
        ReviewAction::List {
            filter,
            limit,
            offset,
        } => {
            let filter = filter.to_filter()?;
            let total = desk
                .store
                .review_count(&filter)
                .map_err(|e| e.to_string())?;
            let items = desk
                .store
                .review_list(&filter, limit, offset)
                .map_err(|e| e.to_string())?;
            for item in &items {
                let recipients: Vec<String> =
                    item.recipients.iter().map(|r| display_address(r)).collect();
                println!(
                    "{}  {}  {:>9}  from={}  to={}  reason={}",
                    item.id,
                    super::rfc3339(item.received_at),
                    item.size,
                    display_address(&item.sender),
                    recipients.join(","),
                    escape(&item.reason)
                );
            }
            println!(
                "{} of {total} held message(s) from offset {offset}",
                items.len()
            );
        }
        ReviewAction::Show { id, actor } => {
            let id = parse_id(&id)?;
            let actor = account(&actor)?;
            show(config, desk.store, &id)?;
            desk.viewed(&actor, &id).map_err(error)?;
        }
        ReviewAction::Release {
            id,
            actor,
            not_sensitive,
            reason,
        } => {
            let id = parse_id(&id)?;
            let actor = account(&actor)?;
            let mode = if not_sensitive {
                ReleaseMode::NotSensitive
            } else {
                ReleaseMode::Protected
            };
            match desk.release(&actor, &id, mode, &reason).map_err(error)? {
                ReleaseOutcome::Released { recipients, .. } => println!(
                    "released {id} ({}): {recipients} recipient(s) are routed again",
                    mode.as_str()
                ),
                ReleaseOutcome::Requested => println!(
                    "release of {id} requested; a different administrator must approve it with \
                     the same command"
                ),
            }
        }
        ReviewAction::Reject { id, actor, reason } => {
            let id = parse_id(&id)?;
            let actor = account(&actor)?;
            let count = desk.reject(&actor, &id, &reason).map_err(error)?;
            println!("rejected {id}: {count} recipient(s); the sender gets a DSN");
        }
        ReviewAction::Delete { id, actor, reason } => {
            let id = parse_id(&id)?;
            let actor = account(&actor)?;
            desk.delete(&actor, &id, &reason).map_err(error)?;
            println!("deleted {id}");
        }
    }
    Ok(())
}

/// Prints the envelope, the headers, the text, the attachments and how the message is
/// routed once released. Untrusted text is escaped, so it cannot send terminal controls.
fn show(config: &Config, store: &Store, id: &sealgate::envelope::QueueId) -> Result<(), String> {
    if !store.is_in_review(id).map_err(|e| e.to_string())? {
        return Err(format!("message {id} is not held for review"));
    }
    let summary = store
        .message(id)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("message {id} not found in the queue"))?;
    let body = store
        .body(id)
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    println!("id: {id}");
    println!("from: {}", display_address(&summary.sender));
    println!("received: {}", super::rfc3339(summary.received_at));
    println!("size: {}", summary.size);
    let recipients = store.recipients(id).map_err(|e| e.to_string())?;
    for row in &recipients {
        println!(
            "to: {} route={}",
            display_address(&row.address),
            row.route.as_deref().unwrap_or("-")
        );
        if let Some(reason) = &row.reason {
            println!("    reason: {}", escape(reason));
        }
    }
    match parse_view(&body) {
        Some(view) => {
            println!("header From: {}", escape(&view.from));
            println!("header To: {}", escape(&view.to));
            if !view.cc.is_empty() {
                println!("header Cc: {}", escape(&view.cc));
            }
            println!("header Date: {}", escape(&view.date));
            println!("header Subject: {}", escape(&view.subject));
            for attachment in &view.attachments {
                println!(
                    "attachment {}: {} ({}, {} bytes)",
                    attachment.index,
                    escape(&attachment.name),
                    escape(&attachment.content_type),
                    attachment.size
                );
            }
            if let Some(text) = &view.text {
                println!("text:");
                for line in text.lines() {
                    println!("  | {}", escape(line));
                }
            } else if view.html.is_some() {
                println!("text: none; the message has only HTML");
            }
        }
        None => println!("the message cannot be parsed for display"),
    }
    let addresses: Vec<String> = recipients.into_iter().map(|row| row.address).collect();
    println!("on release:");
    crate::print_explanation(config, &body, &addresses, Some(ReleaseMode::Protected))
}
