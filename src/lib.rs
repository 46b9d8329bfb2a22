//! sealgate: an outbound email encryption gateway for health and care organisations.
//!
//! Staff mail servers relay outbound mail to it as their smarthost. For every recipient it
//! decides how the message may leave (forced TLS to secure domains, opportunistic TLS to
//! everyone else) and delivers it from a durable queue. The modules follow the pipeline:
//!
//! `inbound` (SMTP server) → `queue` (spool, schedule, DSNs) → `policy` (routes) →
//! `delivery` (MX lookup, outbound SMTP with the route's TLS level), with `smime`
//! (recipient certificates, S/MIME encryption) and `store` (the encrypted hold store and
//! portal notifications) for the routes that need them, `audit` recording decisions,
//! deliveries and accesses in a hash chain, and `admin` holding administrator accounts.

pub mod admin;
pub mod audit;
pub mod config;
pub mod delivery;
pub mod dkim;
pub mod envelope;
pub mod inbound;
pub mod keys;
pub mod policy;
pub mod portal;
pub mod queue;
pub mod records;
pub mod smime;
pub mod store;
pub mod telemetry;
