//! One revocation as Redis keeps it for the replicas: the member of the `revocations` sorted set
//! and the message on the `revocations` channel.
//!
//! A local replica is rebuilt from these alone, so each names everything
//! [`DenyList::deny`](crate::store::DenyList::deny) needs: the fingerprint, the end of the deny
//! entry, and the token's member (for the per-member bound). It also names when the revocation
//! was made: a replica that reloads an entry it has already folded into its member's watermark
//! must not fold it again "now" (that would move the watermark past tokens the member was issued
//! after the revocation); see [`Replica::apply`](super::replica::Replica::apply).
//!
//! | form | text |
//! |---|---|
//! | set member | `t:<fp hex>:<revoked at, unix ms>:<member id>` (member empty when unknown) |
//! | set score | end of the deny entry (unix ms): the token's expiry plus the grace |
//! | message | `<end, unix ms> <set member>` |
//!
//! The member id is last, so a member id holding `:` or a space still parses. Only fingerprints
//! are written, never tokens.

use std::time::SystemTime;

use super::keys::{from_unix_ms, unix_ms};
use crate::store::Fingerprint;

/// Marks a token entry (a later version may add other kinds, e.g. member watermarks; this one
/// skips what it does not know).
const TOKEN: &str = "t";

/// One revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DenyEntry {
    /// The revoked token's fingerprint.
    pub(super) fp: Fingerprint,
    /// When the deny entry ends (the token's expiry plus the grace), in whole milliseconds.
    pub(super) end: SystemTime,
    /// When the revocation was made (the revoking replica's clock): the token was issued before.
    pub(super) revoked_at: SystemTime,
    /// The token's member, when known.
    pub(super) member: Option<String>,
}

impl DenyEntry {
    /// The entry for a revocation made now; instants are kept in whole milliseconds, as Redis
    /// keeps them, so that what is written and what is read back compare equal.
    pub(super) fn new(
        fp: Fingerprint,
        end: SystemTime,
        revoked_at: SystemTime,
        member: Option<&str>,
    ) -> Self {
        DenyEntry {
            fp,
            end: from_unix_ms(unix_ms(end)),
            revoked_at: from_unix_ms(unix_ms(revoked_at)),
            member: member.filter(|m| !m.is_empty()).map(str::to_owned),
        }
    }

    /// The member of the sorted set (its score is [`end_ms`](Self::end_ms)).
    pub(super) fn set_member(&self) -> String {
        format!(
            "{TOKEN}:{}:{}:{}",
            self.fp.to_hex(),
            unix_ms(self.revoked_at),
            self.member.as_deref().unwrap_or("")
        )
    }

    /// The end as the sorted set's score.
    pub(super) fn end_ms(&self) -> u64 {
        unix_ms(self.end)
    }

    /// The entry named by a set member with its score; `None` for anything else (another
    /// version's kind of entry, or garbage).
    pub(super) fn from_set_member(member: &str, end_ms: u64) -> Option<Self> {
        let mut parts = member.splitn(4, ':');
        if parts.next()? != TOKEN {
            return None;
        }
        let fp = Fingerprint::from_hex(parts.next()?)?;
        let revoked_at: u64 = parts.next()?.parse().ok()?;
        let member = parts.next()?;
        Some(DenyEntry::new(
            fp,
            from_unix_ms(end_ms),
            from_unix_ms(revoked_at),
            Some(member),
        ))
    }

    /// The message announcing the entry (the `REVOKE` script writes the same text, with the end
    /// it settled on, which may be later than this one's).
    #[cfg(test)]
    pub(super) fn message(&self) -> String {
        format!("{} {}", self.end_ms(), self.set_member())
    }

    /// The entry a message announces; `None` if it is not one.
    pub(super) fn from_message(message: &str) -> Option<Self> {
        let (end, member) = message.split_once(' ')?;
        Self::from_set_member(member, end.parse().ok()?)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn set_members_and_messages_round_trip() {
        let now = SystemTime::now();
        let fp = Fingerprint::of("t");
        for member in [None, Some("m-1"), Some("odd:id with space")] {
            let entry = DenyEntry::new(fp, now + Duration::from_secs(60), now, member);
            let parsed = DenyEntry::from_set_member(&entry.set_member(), entry.end_ms());
            assert_eq!(parsed.as_ref(), Some(&entry));
            assert_eq!(DenyEntry::from_message(&entry.message()), Some(entry));
        }
        let unknown = DenyEntry::new(fp, now, now, Some(""));
        assert_eq!(unknown.member, None);
        assert!(unknown.set_member().ends_with(':'));
    }

    #[test]
    fn anything_else_is_ignored() {
        let hex = Fingerprint::of("t").to_hex();
        for bad in [
            "",
            "garbage",
            &hex,
            &format!("w:{hex}:1:m"),
            &format!("t:{hex}:soon:m"),
            &format!("t:{hex}:1"),
            "t:nothex:1:m",
        ] {
            assert_eq!(DenyEntry::from_set_member(bad, 1), None, "{bad}");
            assert_eq!(DenyEntry::from_message(&format!("1 {bad}")), None, "{bad}");
        }
        assert_eq!(
            DenyEntry::from_message(&hex),
            None,
            "the old bare-hex message"
        );
    }
}
