//! MAIL and RCPT: the envelope, its parameters, and relay rights.
//!
//! sealgate only relays outbound, so every recipient is relayed: clients in
//! `inbound.relay_networks` and authenticated clients may do so, everyone else gets
//! `550 5.7.1` at RCPT.

use std::borrow::Cow;

use smtp_proto::{
    MAIL_BODY_8BITMIME, MAIL_BODY_BINARYMIME, MAIL_BY_NOTIFY, MAIL_BY_RETURN, MAIL_BY_TRACE,
    MAIL_CONPERM, MAIL_REQUIRETLS, MAIL_RET_FULL, MAIL_RET_HDRS, MAIL_SMTPUTF8, MailFrom, RcptTo,
};

use super::path::{CommandText, DeclaredSize, DomainKind, PathCommand, domain_kind};
use super::reply::{self, Reply};
use super::session::{Session, State, Transaction};
use crate::envelope::display_address;

impl Session {
    /// Checks the raw text of a MAIL or RCPT line before smtp-proto parses it, and returns
    /// the rejection for an address or a `SIZE=` value that the parsed form would hide.
    pub(super) fn check_path_text(&self, command: PathCommand, line: &[u8]) -> Option<Reply> {
        let text = CommandText::split(line)?;
        let (address_code, role) = match command {
            PathCommand::Mail => ("5.1.7", "sender"),
            PathCommand::Rcpt => ("5.1.3", "recipient"),
        };
        // An address must be UTF-8 (RFC 6531), and smtp-proto would replace invalid bytes.
        if std::str::from_utf8(text.path).is_err() {
            return Some(Reply::new(553, "5.6.7", "Address is not valid UTF-8"));
        }
        if std::str::from_utf8(line).is_err() {
            return Some(Reply::new(501, "5.5.4", "Command is not valid UTF-8"));
        }

        match text.domain().map(domain_kind) {
            None | Some(DomainKind::Name) => {}
            // Delivery finds next hops by MX and address lookups only and cannot connect to
            // an address literal, so such a recipient is rejected here instead of bounced.
            Some(DomainKind::AddressLiteral) if command == PathCommand::Rcpt => {
                let text = "Address literals are not supported, use a domain name";
                return Some(Reply::new(550, "5.1.2", text));
            }
            // A DSN to such a sender could not be delivered either.
            Some(DomainKind::AddressLiteral) => {
                let text = "Address literals are not supported as sender domains";
                return Some(Reply::new(550, "5.1.8", text));
            }
            Some(DomainKind::Invalid) => {
                let text = format!("Invalid domain in {role} address");
                return Some(Reply::new(501, address_code, text));
            }
        }

        if command == PathCommand::Mail {
            match text.size() {
                DeclaredSize::Absent | DeclaredSize::Bytes(_) => {}
                DeclaredSize::TooLarge => return Some(self.size_exceeded()),
                DeclaredSize::Invalid => {
                    return Some(Reply::new(501, "5.5.4", "Invalid value for parameter SIZE"));
                }
            }
        }
        None
    }

    pub(super) fn handle_mail_from(&mut self, from: MailFrom<Cow<'_, str>>, line: &[u8]) -> Reply {
        let greeting = match &self.state {
            State::Connected => return reply::bad_sequence("Send EHLO or HELO first"),
            State::Transaction(..) => return reply::bad_sequence("Sender already specified"),
            State::Greeted(greeting) => greeting.clone(),
        };
        if self.context.config.inbound.require_tls && self.tls.is_none() {
            return Reply::new(530, "5.7.0", "Must issue a STARTTLS command first");
        }
        if let Some(parameter) = unsupported_mail_parameter(&from) {
            return parameter_not_supported(parameter);
        }
        let uses_extensions = from.flags != 0 || from.size != 0;
        if uses_extensions && !greeting.extended {
            return Reply::new(555, "5.5.4", "MAIL parameters need EHLO");
        }
        // `check_path_text` already rejected sizes that smtp-proto cannot read exactly.
        if from.size as u64 > self.context.config.inbound.max_message_size.0 {
            return self.size_exceeded();
        }
        let smtputf8 = from.flags & MAIL_SMTPUTF8 != 0;
        if !smtputf8 && !from.address.is_ascii() {
            return Reply::new(553, "5.6.7", "Non-ASCII address requires SMTPUTF8");
        }
        // smtp-proto returns an empty address for `<postmaster>` too, which must not
        // become the null sender.
        if from.address.is_empty() && !is_null_path(line) {
            return Reply::new(501, "5.1.7", "Sender address must include a domain");
        }
        if from.address.chars().any(char::is_control) {
            let text = "Control characters are not allowed in an address";
            return Reply::new(501, "5.1.7", text);
        }

        let sender = from.address.into_owned();
        let text = format!("Sender {} ok", display_address(&sender));
        self.state = State::Transaction(
            greeting,
            Transaction {
                sender,
                recipients: Vec::new(),
                declared_8bit: from.flags & MAIL_BODY_8BITMIME != 0,
                smtputf8,
            },
        );
        Reply::new(250, "2.1.0", text)
    }

    pub(super) fn handle_rcpt_to(&mut self, to: RcptTo<Cow<'_, str>>, line: &[u8]) -> Reply {
        let relay_allowed = self.relay_allowed();
        let max_recipients = self.context.config.inbound.max_recipients;
        let postmaster = self.context.config.postmaster();
        let State::Transaction(_, transaction) = &mut self.state else {
            return reply::bad_sequence("Need MAIL before RCPT");
        };
        if to.orcpt.is_some() || to.flags != 0 || to.rrvs != 0 {
            return parameter_not_supported("NOTIFY, ORCPT, RRVS and CONNEG");
        }
        // smtp-proto returns an empty address for `<>` and for `<postmaster>`. RFC 5321
        // §4.5.1 requires `<postmaster>` without a domain to be accepted, and sealgate has
        // no local mailboxes, so it is replaced by the configured postmaster address. Relay
        // rights still apply, because that address is relayed like any other.
        let address = if !to.address.is_empty() {
            to.address.into_owned()
        } else if CommandText::split(line).is_some_and(|text| text.is_postmaster()) {
            postmaster
        } else {
            return Reply::new(501, "5.1.3", "Recipient address must include a domain");
        };
        if !transaction.smtputf8 && !address.is_ascii() {
            return Reply::new(553, "5.6.7", "Non-ASCII address requires SMTPUTF8");
        }
        if address.chars().any(char::is_control) {
            let text = "Control characters are not allowed in an address";
            return Reply::new(501, "5.1.3", text);
        }
        if !relay_allowed {
            tracing::info!(rcpt = %display_address(&address), "relay denied");
            return Reply::new(550, "5.7.1", "Relaying denied");
        }

        let text = format!("Recipient {} ok", display_address(&address));
        if transaction
            .recipients
            .iter()
            .any(|known| same_address(known, &address))
        {
            return Reply::new(250, "2.1.5", text);
        }
        if transaction.recipients.len() >= max_recipients {
            return Reply::new(452, "4.5.3", "Too many recipients");
        }
        transaction.recipients.push(address);
        Reply::new(250, "2.1.5", text)
    }

    /// Clients in a relay network, and authenticated clients, may relay.
    fn relay_allowed(&self) -> bool {
        if self.auth_user.is_some() {
            return true;
        }
        // An IPv4 client of a dual-stack listener shows up as `::ffff:a.b.c.d`.
        let ip = self.peer.ip().to_canonical();
        self.context
            .config
            .inbound
            .relay_networks
            .iter()
            .any(|network| network.contains(&ip))
    }

    /// Builds the `552 5.3.4` reply for a declared size over `inbound.max_message_size`.
    fn size_exceeded(&self) -> Reply {
        let max_size = self.context.config.inbound.max_message_size.0;
        let text = format!("Message size exceeds fixed maximum message size of {max_size}");
        Reply::new(552, "5.3.4", text)
    }
}

/// True when the line's path is `<>`, the null reverse-path.
fn is_null_path(line: &[u8]) -> bool {
    CommandText::split(line).is_some_and(|text| text.path.is_empty())
}

/// The first MAIL parameter that smtp-proto parsed but EHLO does not advertise.
fn unsupported_mail_parameter(from: &MailFrom<Cow<'_, str>>) -> Option<&'static str> {
    let flags = from.flags;
    let checks = [
        (flags & MAIL_BODY_BINARYMIME != 0, "BODY=BINARYMIME"),
        (flags & (MAIL_RET_FULL | MAIL_RET_HDRS) != 0, "RET"),
        (from.env_id.is_some(), "ENVID"),
        (flags & MAIL_REQUIRETLS != 0, "REQUIRETLS"),
        (
            flags & (MAIL_BY_NOTIFY | MAIL_BY_RETURN | MAIL_BY_TRACE) != 0,
            "BY",
        ),
        (
            from.hold_for != 0 || from.hold_until != 0,
            "HOLDFOR/HOLDUNTIL",
        ),
        (from.trans_id.is_some(), "TRANSID"),
        (from.solicit.is_some(), "SOLICIT"),
        (from.mtrk.is_some(), "MTRK"),
        (from.mt_priority != 0, "MT-PRIORITY"),
        (flags & MAIL_CONPERM != 0, "CONPERM"),
    ];
    // `AUTH=` (RFC 4954 §5) is accepted and ignored: sealgate trusts only its own AUTH.
    checks
        .into_iter()
        .find_map(|(present, name)| present.then_some(name))
}

fn parameter_not_supported(parameter: &str) -> Reply {
    Reply::new(555, "5.5.4", format!("Parameter {parameter} not supported"))
}

/// Compares two addresses with the domain case-insensitive and the local part exact
/// (RFC 5321 §2.4).
fn same_address(left: &str, right: &str) -> bool {
    match (left.rsplit_once('@'), right.rsplit_once('@')) {
        (Some((left_local, left_domain)), Some((right_local, right_domain))) => {
            left_local == right_local && left_domain.eq_ignore_ascii_case(right_domain)
        }
        _ => left == right,
    }
}
