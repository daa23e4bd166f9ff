//! The SHA-256 fingerprint under which a token is known. The raw token never enters the store,
//! so a dump of the cache (or of Redis) yields nothing a client could present.

use std::fmt;

use sha2::{Digest, Sha256};

/// Number of hex characters [`Fingerprint::prefix`] shows: 48 bits, enough to tell tokens apart
/// in a log line, far too few to search for a token.
const PREFIX_HEX_CHARS: usize = 12;

/// SHA-256 of the raw token bytes. `Debug`/`Display` show only a short hex prefix (never enough to
/// matter), so a fingerprint can be logged; use [`Fingerprint::to_hex`] where the full value is
/// needed on purpose (the admin API, a Redis key).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// Fingerprints a raw token (the exact header value, no trimming).
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// Wraps an already computed SHA-256 digest.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The digest itself.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// All 64 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex characters, for logs and error details.
    pub fn prefix(&self) -> String {
        let mut hex = hex::encode(&self.0[..PREFIX_HEX_CHARS / 2]);
        hex.truncate(PREFIX_HEX_CHARS);
        hex
    }

    /// Parses exactly 64 hex characters (either case); anything else is `None`.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).ok()?;
        Some(Self(bytes))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({}…)", self.prefix())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}…", self.prefix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn of_is_sha256_of_the_token_bytes() {
        // `echo -n abc | sha256sum`
        let fp = Fingerprint::of("abc");
        assert_eq!(
            fp.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(fp.prefix(), "ba7816bf8f01");
    }

    #[test]
    fn from_hex_rejects_wrong_length_and_non_hex() {
        let hex = Fingerprint::of("abc").to_hex();
        assert!(Fingerprint::from_hex(&hex[..63]).is_none());
        assert!(Fingerprint::from_hex(&format!("{hex}0")).is_none());
        assert!(Fingerprint::from_hex(&hex.replace('b', "g")).is_none());
        assert!(Fingerprint::from_hex("").is_none());
        // 64 bytes, but not 64 ASCII hex digits.
        assert!(Fingerprint::from_hex(&"é".repeat(32)).is_none());
        assert_eq!(
            Fingerprint::from_hex(&hex.to_uppercase()),
            Some(Fingerprint::of("abc"))
        );
    }
}
