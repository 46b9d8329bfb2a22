//! The SMTP server that staff mail servers relay through.
