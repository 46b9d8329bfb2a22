//! Time-based one-time passwords (RFC 6238 over RFC 4226's HOTP): HMAC-SHA1, 30-second
//! steps, six digits, which is what authenticator apps expect from an `otpauth://` URI
//! without parameters.

use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;

/// Seconds per time step.
pub const STEP: u64 = 30;
/// Digits in a code.
pub const DIGITS: u32 = 6;

/// Draws a new 160-bit secret (the HMAC-SHA1 block output size RFC 4226 recommends) and
/// returns it as unpadded base32, as authenticator apps take it.
pub fn new_secret() -> String {
    let bytes: [u8; 20] = rand::random();
    data_encoding::BASE32_NOPAD.encode(&bytes)
}

/// Builds the `otpauth://totp/` URI that authenticator apps read from a QR code.
pub fn otpauth_uri(issuer: &str, account: &str, secret: &str) -> String {
    format!(
        "otpauth://totp/{}:{}?secret={secret}&issuer={}",
        percent_encode(issuer),
        percent_encode(account),
        percent_encode(issuer)
    )
}

/// Computes the code for Unix time `seconds`; `None` when the secret is not base32.
pub fn code_at(secret: &str, seconds: u64) -> Option<String> {
    let key = data_encoding::BASE32_NOPAD
        .decode(secret.trim_end_matches('=').as_bytes())
        .ok()?;
    let counter = (seconds / STEP).to_be_bytes();
    let pkey = PKey::hmac(&key).ok()?;
    let mut signer = Signer::new(MessageDigest::sha1(), &pkey).ok()?;
    signer.update(&counter).ok()?;
    let mac = signer.sign_to_vec().ok()?;
    // RFC 4226 §5.3: dynamic truncation.
    let offset = usize::from(mac[mac.len() - 1] & 0x0f);
    let binary = u32::from_be_bytes([
        mac[offset] & 0x7f,
        mac[offset + 1],
        mac[offset + 2],
        mac[offset + 3],
    ]);
    Some(format!(
        "{:0width$}",
        binary % 10u32.pow(DIGITS),
        width = DIGITS as usize
    ))
}

/// Checks `code` against the steps around `seconds` (one before and one after, for clock
/// drift) and returns the matching step, so the caller can refuse a code used twice.
pub fn verify(secret: &str, code: &str, seconds: u64) -> Option<u64> {
    let code = code.trim();
    if code.len() != DIGITS as usize {
        return None;
    }
    let step = seconds / STEP;
    [step.saturating_sub(1), step, step + 1]
        .into_iter()
        .find(|candidate| {
            code_at(secret, candidate * STEP).is_some_and(|expected| {
                crate::portal::session::constant_time_eq(expected.as_bytes(), code.as_bytes())
            })
        })
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || b"-._~@".contains(&byte) {
                char::from(byte).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B's SHA-1 key "12345678901234567890" in base32.
    const RFC_SECRET: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";

    #[test]
    fn totp_matches_rfc_6238_vectors() {
        // The appendix lists eight digits; six-digit codes are their last six.
        for (seconds, expected) in [
            (59, "287082"),
            (1_111_111_109, "081804"),
            (1_111_111_111, "050471"),
            (1_234_567_890, "005924"),
            (2_000_000_000, "279037"),
        ] {
            assert_eq!(code_at(RFC_SECRET, seconds).as_deref(), Some(expected));
        }
    }

    #[test]
    fn totp_verify_allows_one_step_of_drift() {
        assert_eq!(verify(RFC_SECRET, "287082", 59), Some(1));
        assert_eq!(verify(RFC_SECRET, "287082", 59 + STEP), Some(1));
        assert_eq!(verify(RFC_SECRET, "287082", 59 + 3 * STEP), None);
        assert_eq!(verify(RFC_SECRET, "28708", 59), None);
        assert_eq!(verify("not base32!", "287082", 59), None);
    }

    #[test]
    fn otpauth_uri_escapes_names() {
        let uri = otpauth_uri("NHS Trust", "alice smith", "ABC");
        assert_eq!(
            uri,
            "otpauth://totp/NHS%20Trust:alice%20smith?secret=ABC&issuer=NHS%20Trust"
        );
        assert_eq!(new_secret().len(), 32);
    }
}
