//! The hash chain over audit entries.
//!
//! Each entry stores the SHA-256 of the entry before it (`prev_hash`) and its own hash,
//! computed over `prev_hash` and a canonical encoding of its fields. Editing an entry
//! changes its hash, and deleting one breaks the link from the entry after it, so
//! [`verify`](super::AuditLog::verify) names the first entry that no longer fits.

use sha2::{Digest, Sha256};

use super::AuditEntry;

/// `prev_hash` of the first entry: 64 zero digits.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Computes an entry's hash: SHA-256 over `prev_hash`, a line feed and the canonical
/// encoding of the fields, as lower-case hex.
pub fn entry_hash(prev_hash: &str, entry: &AuditEntry) -> String {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.as_bytes());
    hasher.update(b"\n");
    hasher.update(canonical_encoding(entry));
    hex(&hasher.finalize())
}

/// Encodes the fields in a fixed order, each as `name=` followed by `~` for a missing
/// value or by the byte length, `:` and the bytes, then a line feed. The length prefix
/// makes the encoding unambiguous whatever the values contain.
fn canonical_encoding(entry: &AuditEntry) -> Vec<u8> {
    let id = entry.id.to_string();
    let at = entry.at.to_string();
    let fields: [(&str, Option<&str>); 8] = [
        ("id", Some(&id)),
        ("at", Some(&at)),
        ("event", Some(&entry.event)),
        ("actor", Some(&entry.actor)),
        ("held_id", entry.held_id.as_deref()),
        ("queue_id", entry.queue_id.as_deref()),
        ("outcome", Some(&entry.outcome)),
        ("detail", Some(&entry.detail)),
    ];
    let mut encoded = Vec::new();
    for (name, value) in fields {
        encoded.extend_from_slice(name.as_bytes());
        encoded.push(b'=');
        match value {
            None => encoded.push(b'~'),
            Some(value) => {
                encoded.extend_from_slice(value.len().to_string().as_bytes());
                encoded.push(b':');
                encoded.extend_from_slice(value.as_bytes());
            }
        }
        encoded.push(b'\n');
    }
    encoded
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(detail: &str, held_id: Option<&str>) -> AuditEntry {
        AuditEntry {
            id: 1,
            at: 1_700_000_000_000,
            event: "review.released".into(),
            actor: "alice".into(),
            held_id: held_id.map(str::to_owned),
            queue_id: None,
            outcome: "ok".into(),
            detail: detail.into(),
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    #[test]
    fn hash_depends_on_every_field() {
        let base = entry_hash(GENESIS, &entry("a", None));
        assert_eq!(base.len(), 64);
        assert_ne!(base, entry_hash(GENESIS, &entry("b", None)));
        assert_ne!(base, entry_hash(&"1".repeat(64), &entry("a", None)));
        // A missing value and an empty one encode differently.
        assert_ne!(
            entry_hash(GENESIS, &entry("a", None)),
            entry_hash(GENESIS, &entry("a", Some("")))
        );
    }

    #[test]
    fn encoding_is_unambiguous() {
        let mut first = entry("x\ndetail=1:y", None);
        let mut second = entry("x", None);
        first.outcome = "ok".into();
        second.outcome = "ok\ndetail=1:y".into();
        assert_ne!(canonical_encoding(&first), canonical_encoding(&second));
    }
}
