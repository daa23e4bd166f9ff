//! The revocation deny-list held in this process: the memory backend's only copy, the Redis
//! backend's local replica (so that a revocation check never waits on Redis).
//!
//! # What it promises
//!
//! - **A revocation lives until its token expires** (plus the grace the caller adds): nothing
//!   evicts a live entry, not a flood of sign-ups, not a flood of other members' logouts. There
//!   is no global bound to push against.
//! - **The bound is per member instead.** Each member holds at most `max_per_member` token
//!   entries. The next one *folds* the member: a watermark "every token of this member issued at
//!   or before now is revoked until the latest expiry seen" takes the place of further entries.
//!   The watermark covers every token the member's entries covered (each was issued before it
//!   was revoked, so before the fold) and possibly more of the same member's older tokens, never
//!   another member's. A member can only fill their own quota, and only with valid tokens of
//!   their own; what fills it is a thief minting tokens with a stolen one (account switch), and
//!   the fold is what keeps the victim's logout from being outgrown.
//! - Entries whose member is unknown (a token the gateway cannot vouch for, logged out) are
//!   bounded by the logout rate limit per client, not here.
//!
//! Memory (`cargo bench --bench store_memory`, which prints it first): a token entry is a
//! fingerprint and an expiry in a hash map, plus its member's count; a member is known by 16
//! bytes of a digest. See the bench's report for the bytes per revocation.
//!
//! # Why it is hand-written
//!
//! moka and the memory backend's tables evict under pressure, which is exactly what a deny-list
//! must not do; what is left is two striped `HashMap`s with lazy expiry.
//!
//! # Precision
//!
//! Instants are kept in milliseconds since the epoch (Redis' unit). A JWT's `iat` has whole
//! seconds, so a token issued in the same second as a fold, after it, counts as issued before
//! it: the error is on the side of refusing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::Fingerprint;
use crate::sync::lock;

/// Mutex stripes of each map: well above the core count, so that checks rarely contend.
const STRIPES: usize = 64;

/// Fewest entries a token stripe holds before its first full sweep.
const MIN_SWEEP_AT: usize = 1024;

/// The deny-list; cloning yields a handle to the same list.
#[derive(Clone)]
pub struct DenyList {
    inner: Arc<Inner>,
}

struct Inner {
    /// Fingerprint → end of its entry (ms).
    tokens: Box<[Mutex<TokenStripe>]>,
    /// Member → how many entries it holds, and its watermark once folded.
    members: Box<[Mutex<MemberStripe>]>,
    max_per_member: usize,
    /// Watermarks held (live or not yet swept): while zero, [`DenyList::member_denied`] answers
    /// without hashing or locking, which is the common case.
    watermarks: AtomicUsize,
}

#[derive(Default)]
struct TokenStripe {
    ends: HashMap<Fingerprint, u64>,
    /// Size at which the next insert sweeps the whole stripe (amortised: doubles with it).
    sweep_at: usize,
}

/// What the list knows of members: how many entries each holds, and the folded ones.
#[derive(Default)]
struct MemberStripe {
    quotas: HashMap<MemberKey, Quota>,
    /// Folded members (rare): (cutoff, end), every token issued at or before `cutoff` is revoked
    /// until `end`.
    folded: HashMap<MemberKey, (u64, u64)>,
}

/// A member as the list knows it: 16 bytes of the SHA-256 of the id. Shorter than the id (36
/// bytes for a UUID, in an allocation of its own), and no client picks which stripe it lands in.
type MemberKey = [u8; 16];

fn member_key(member: &str) -> MemberKey {
    let digest = Sha256::digest(member.as_bytes());
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

/// A member's entries, counted until the latest of them ends. An entry that ends earlier is
/// still counted until then: a member can be folded a little early, never late, and the count
/// costs 16 bytes instead of a list of ends.
#[derive(Clone, Copy, Default)]
struct Quota {
    held: u32,
    /// The latest end among the entries counted (ms).
    until: u64,
}

impl MemberStripe {
    /// Forgets what has ended (`watermarks` counts the folded members held).
    fn prune(&mut self, now: u64, watermarks: &AtomicUsize) {
        self.quotas.retain(|_, quota| quota.until > now);
        let before = self.folded.len();
        self.folded.retain(|_, (_, end)| *end > now);
        watermarks.fetch_sub(before - self.folded.len(), Ordering::Relaxed);
    }
}

impl std::fmt::Debug for DenyList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DenyList")
            .field("max_per_member", &self.inner.max_per_member)
            .finish_non_exhaustive()
    }
}

/// Milliseconds since the epoch, saturating.
pub(crate) fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Milliseconds since the epoch, rounded up: the end of an entry, which must not come a
/// fraction of a millisecond before the instant it was given (`now` is rounded down).
fn millis_up(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| {
        let partial = u128::from(d.subsec_nanos() % 1_000_000 != 0);
        u64::try_from(d.as_millis() + partial).unwrap_or(u64::MAX)
    })
}

fn now() -> u64 {
    millis(SystemTime::now())
}

impl DenyList {
    /// An empty list folding a member past `max_per_member` token entries (at least 1).
    pub fn new(max_per_member: usize) -> Self {
        let stripes = |_| Mutex::default();
        DenyList {
            inner: Arc::new(Inner {
                tokens: (0..STRIPES).map(stripes).collect(),
                members: (0..STRIPES).map(|_| Mutex::default()).collect(),
                max_per_member: max_per_member.max(1),
                watermarks: AtomicUsize::new(0),
            }),
        }
    }

    /// Denies `fp` until `until` (an entry is extended, never shortened); `member` is the
    /// token's member when known. `true` if the token was not denied before (the increment of
    /// `tokens_revoked_total`); `false` too when `until` has passed already.
    pub fn deny(&self, fp: Fingerprint, until: SystemTime, member: Option<&str>) -> bool {
        let now = now();
        if millis(until) <= now {
            return false;
        }
        let until = millis_up(until);
        let Some(member) = member else {
            return self.inner.deny_token(fp, until, now);
        };
        let inner = &*self.inner;
        let key = member_key(member);
        let mut members = lock(inner.member_stripe(&key));
        if inner.token_denied(&fp, || now) {
            // Held already: extended, not counted twice.
            return inner.deny_token(fp, until, now);
        }
        let quota = members.quotas.entry(key).or_default();
        if quota.until <= now {
            *quota = Quota::default();
        }
        if (quota.held as usize) < inner.max_per_member {
            quota.held += 1;
            quota.until = quota.until.max(until);
            return inner.deny_token(fp, until, now);
        }
        // Folded: the watermark covers this token (issued before now) and all the member's
        // earlier ones, until the latest end the member has seen.
        let latest = quota.until;
        let watermark = members.folded.entry(key).or_insert_with(|| {
            inner.watermarks.fetch_add(1, Ordering::Relaxed);
            (0, 0)
        });
        if watermark.1 <= now {
            *watermark = (0, 0);
        }
        *watermark = (watermark.0.max(now), watermark.1.max(until).max(latest));
        tracing::debug!(
            fingerprint = %fp,
            "member over its revocation quota: its tokens issued until now are revoked together"
        );
        true
    }

    /// Whether `fp` has a live entry.
    pub fn is_denied(&self, fp: &Fingerprint) -> bool {
        // The clock is read only for a token that has an entry: almost every token has none.
        self.inner.token_denied(fp, now)
    }

    /// Whether a watermark of `member` covers a token issued at `issued_at` (`None`: a token
    /// without `iat`, covered by any watermark).
    pub fn member_denied(&self, member: &str, issued_at: Option<SystemTime>) -> bool {
        let inner = &*self.inner;
        if inner.watermarks.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let key = member_key(member);
        let members = lock(inner.member_stripe(&key));
        let Some(&(cutoff, end)) = members.folded.get(&key) else {
            return false;
        };
        end > now() && issued_at.is_none_or(|at| millis(at) <= cutoff)
    }

    /// Live token entries plus live watermarks (the `revocations_held` gauge); reclaims what has
    /// ended first, one stripe lock at a time.
    pub fn len(&self) -> u64 {
        let now = now();
        let inner = &*self.inner;
        let mut held = 0;
        for stripe in inner.tokens.iter() {
            let mut stripe = lock(stripe);
            stripe.ends.retain(|_, end| *end > now);
            held += stripe.ends.len() as u64;
        }
        for stripe in inner.members.iter() {
            let mut members = lock(stripe);
            members.prune(now, &inner.watermarks);
            held += members.folded.len() as u64;
        }
        held
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn member_stripe(&self, key: &MemberKey) -> &Mutex<MemberStripe> {
        &self.members[usize::from(key[0]) % STRIPES]
    }

    fn token_stripe(&self, fp: &Fingerprint) -> &Mutex<TokenStripe> {
        let [a, b, ..] = *fp.as_bytes();
        &self.tokens[usize::from(u16::from_le_bytes([a, b])) % STRIPES]
    }

    /// Whether `fp` has a live entry; `now` is called only when it has one.
    fn token_denied(&self, fp: &Fingerprint, now: impl FnOnce() -> u64) -> bool {
        lock(self.token_stripe(fp))
            .ends
            .get(fp)
            .is_some_and(|&end| end > now())
    }

    /// Puts or extends `fp`'s entry; `true` if it had none alive.
    fn deny_token(&self, fp: Fingerprint, until: u64, now: u64) -> bool {
        let mut stripe = lock(self.token_stripe(&fp));
        if stripe.ends.len() >= stripe.sweep_at {
            stripe.ends.retain(|_, end| *end > now);
            stripe.sweep_at = (stripe.ends.len() * 2).max(MIN_SWEEP_AT);
        }
        let end = stripe.ends.entry(fp).or_insert(0);
        let newly = *end <= now;
        *end = if newly { until } else { (*end).max(until) };
        newly
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn in_secs(s: u64) -> SystemTime {
        SystemTime::now() + Duration::from_secs(s)
    }

    #[test]
    fn an_end_is_never_rounded_earlier() {
        let at = |nanos| UNIX_EPOCH + Duration::from_nanos(nanos);
        assert_eq!(millis_up(at(2_000_000)), 2);
        assert_eq!(millis_up(at(1_000_001)), 2);
        assert_eq!(millis_up(at(1_999_999)), 2);
        assert_eq!(millis(at(1_999_999)), 1);
    }

    #[test]
    fn an_entry_lives_until_its_end_and_only_grows() {
        let list = DenyList::new(4);
        let fp = Fingerprint::of("t");
        assert!(list.deny(fp, in_secs(60), Some("m")));
        assert!(!list.deny(fp, in_secs(1), Some("m")), "already denied");
        assert!(list.is_denied(&fp));
        assert!(!list.is_denied(&Fingerprint::of("u")));
        assert!(!list.deny(Fingerprint::of("past"), SystemTime::now(), None));
        assert_eq!(list.len(), 1);
    }

    #[test]
    fn other_members_cannot_push_an_entry_out() {
        let list = DenyList::new(2);
        let victim = Fingerprint::of("victim");
        list.deny(victim, in_secs(60), Some("victim"));
        for i in 0..10_000 {
            list.deny(
                Fingerprint::of(&format!("t{i}")),
                in_secs(60),
                Some(&format!("m{i}")),
            );
            list.deny(Fingerprint::of(&format!("u{i}")), in_secs(60), None);
        }
        assert!(list.is_denied(&victim));
        assert_eq!(list.len(), 20_001);
    }

    #[test]
    fn a_member_past_its_quota_is_folded_into_a_watermark() {
        let list = DenyList::new(2);
        let before = SystemTime::now() - Duration::from_secs(1);
        for i in 0..5 {
            list.deny(
                Fingerprint::of(&format!("t{i}")),
                in_secs(60 + i),
                Some("m"),
            );
        }
        // Two entries, the rest folded: one watermark.
        assert!(list.is_denied(&Fingerprint::of("t0")));
        assert!(!list.is_denied(&Fingerprint::of("t4")));
        assert!(list.member_denied("m", Some(before)));
        assert!(list.member_denied("m", None), "no iat: covered");
        assert!(!list.member_denied("m", Some(in_secs(5))), "issued later");
        assert!(!list.member_denied("other", Some(before)));
        assert_eq!(list.len(), 3);
    }

    #[test]
    fn ended_entries_and_watermarks_go() {
        let list = DenyList::new(1);
        let soon = SystemTime::now() + Duration::from_millis(30);
        list.deny(Fingerprint::of("a"), soon, Some("m"));
        list.deny(Fingerprint::of("b"), soon, Some("m"));
        assert!(list.member_denied("m", None));
        std::thread::sleep(Duration::from_millis(40));
        assert!(!list.is_denied(&Fingerprint::of("a")));
        assert!(!list.member_denied("m", None));
        assert_eq!(list.len(), 0);
        assert_eq!(list.inner.watermarks.load(Ordering::Relaxed), 0);
    }
}
