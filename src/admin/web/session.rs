//! Signed-in administrators, kept in the portal's session table in memory, so a restart
//! signs everyone out.

use crate::admin::Account;
use crate::portal::session::Sessions;

/// A signed-in account and the token its forms must send back.
#[derive(Clone, Debug)]
pub struct AdminSession {
    /// The account, as it was at sign-in.
    pub account: Account,
    /// CSRF token of every form in the session.
    pub csrf: String,
}

/// The admin session table.
pub type AdminSessions = Sessions<AdminSession>;
