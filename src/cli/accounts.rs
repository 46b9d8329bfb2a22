//! `sealgate admin`: administrator accounts.

use clap::Subcommand;
use sealgate::admin::{Accounts, Role, totp};
use sealgate::audit::{AuditEvent, AuditLog, AuditRecord};
use sealgate::config::Config;

#[derive(Subcommand)]
pub enum AdminAction {
    /// Add an account; the password is asked for twice, or read from standard input.
    Add {
        /// Account name: letters, digits, '.', '_', '-' or '@'.
        user: String,
        /// `admin` may act on held mail; `auditor` may only read.
        #[arg(long)]
        role: Role,
        /// Read the password as one line from standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// One line per account: name, role, TOTP, failed sign-ins, lock-out.
    List,
    /// Remove an account.
    Remove {
        /// Account name.
        user: String,
    },
    /// Set a new password, which also ends a lock-out.
    Passwd {
        /// Account name.
        user: String,
        /// Read the password as one line from standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Create a new TOTP secret, print its otpauth URI once, and require codes from now on.
    Totp {
        /// Account name.
        user: String,
    },
    /// End a lock-out after failed sign-ins.
    Unlock {
        /// Account name.
        user: String,
    },
}

pub fn run(config: &Config, action: AdminAction) -> Result<(), String> {
    let accounts = Accounts::open(config).map_err(|error| error.to_string())?;
    let audit = AuditLog::open(config).map_err(|error| error.to_string())?;
    let (user, change) = match action {
        AdminAction::Add {
            user,
            role,
            password_stdin,
        } => {
            let password = super::read_password(password_stdin)?;
            accounts.add(&user, role, &password)?;
            println!("added {user} ({role})");
            (user, format!("added with role {role}"))
        }
        AdminAction::List => {
            let now = sealgate::queue::store::now_millis();
            for account in accounts.list().map_err(|error| error.to_string())? {
                let lock = if account.locked_until > now {
                    format!("locked until {}", super::rfc3339(account.locked_until))
                } else {
                    "not locked".into()
                };
                println!(
                    "{}  {}  totp={}  failed={}  {lock}",
                    account.name,
                    account.role,
                    if account.totp { "on" } else { "off" },
                    account.failed_logins
                );
            }
            return Ok(());
        }
        AdminAction::Remove { user } => {
            if !accounts.remove(&user).map_err(|error| error.to_string())? {
                return Err(format!("account {user:?} not found"));
            }
            println!("removed {user}");
            (user, "removed".into())
        }
        AdminAction::Passwd {
            user,
            password_stdin,
        } => {
            let password = super::read_password(password_stdin)?;
            if !accounts.set_password(&user, &password)? {
                return Err(format!("account {user:?} not found"));
            }
            println!("password of {user} changed");
            (user, "password changed".into())
        }
        AdminAction::Totp { user } => {
            let secret = accounts
                .new_totp(&user)
                .map_err(|error| error.to_string())?
                .ok_or_else(|| format!("account {user:?} not found"))?;
            let issuer = format!("sealgate {}", config.server.hostname);
            println!("{}", totp::otpauth_uri(&issuer, &user, &secret));
            println!("secret: {secret}");
            println!("add it to an authenticator app now; it is not shown again");
            (user, "new TOTP secret".into())
        }
        AdminAction::Unlock { user } => {
            if !accounts.unlock(&user).map_err(|error| error.to_string())? {
                return Err(format!("account {user:?} not found"));
            }
            println!("unlocked {user}");
            (user, "unlocked".into())
        }
    };
    let detail = format!("account {user}: {change}");
    audit
        .append(&AuditRecord {
            event: AuditEvent::AdminAccount,
            actor: "cli",
            held_id: None,
            queue_id: None,
            outcome: "ok",
            detail: &detail,
        })
        .map_err(|error| error.to_string())?;
    Ok(())
}
