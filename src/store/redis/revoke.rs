//! Revoking: one fingerprint at a time, in the order that keeps every replica's deny-list
//! complete (see `keys.rs` for the keys and the `REVOKE` script).
//!
//! 1. The local replica denies the token at once: this replica refuses it from now on, whatever
//!    Redis answers (a logout that reached this replica is kept here even through an outage).
//! 2. The record is read for its expiry and member: the deny entry must last until the later
//!    of the caller's expiry and the record's, and name the member.
//! 3. The entry is added to the `revocations` set, *before* the script: if the script then
//!    fails, a replica loading the set denies a token Redis does not (over-denies), where the
//!    other order could leave a revocation no load would find.
//! 4. The script denies, deletes the record and announces the entry on both channels.
//! 5. The local replica takes the end the script settled on.

use std::time::SystemTime;

use redis::AsyncCommands;

use super::entry::DenyEntry;
use super::keys::{unix_ms, Wire};
use super::RedisStore;
use crate::store::{Fingerprint, StoreError, TokenRecord};

/// What to revoke.
pub(super) struct Revocation<'a> {
    pub(super) fp: &'a Fingerprint,
    /// The token's expiry as the caller knows it (the floor of the deny entry).
    pub(super) until: SystemTime,
    /// The member whose record may be deleted (`None`: whoever's it is).
    pub(super) owner: Option<&'a str>,
    /// The token's member as the caller knows it (else the record's).
    pub(super) member: Option<&'a str>,
    /// `store_errors_total{op}`.
    pub(super) op: &'static str,
}

impl RedisStore {
    /// Revokes one fingerprint (see the module docs). Returns (newly denied in Redis, the record
    /// removed, if it was `owner`'s).
    pub(super) async fn revoke_one(
        &self,
        revocation: Revocation<'_>,
    ) -> Result<(bool, Option<TokenRecord>), StoreError> {
        let Revocation {
            fp,
            until,
            owner,
            member,
            op,
        } = revocation;
        let inner = &self.inner;
        let grace = inner.revoked_grace;
        let now = SystemTime::now();
        inner
            .replica
            .apply(&DenyEntry::new(*fp, until + grace, now, member));

        let key = inner.keys.record(fp);
        let stored: Option<String> = inner
            .pool
            .run(op, |mut c| async move { c.get(key).await })
            .await?;
        let stored = stored.and_then(|text| Wire::decode(*fp, &text));
        let stored = stored.filter(|record| owner.is_none_or(|owner| record.member_id == owner));
        let until = stored
            .as_ref()
            .map_or(until, |record| record.expires_at.max(until));
        let member = member.or(stored.as_ref().map(|record| record.member_id.as_str()));
        let entry = DenyEntry::new(*fp, until + grace, now, member);
        self.announce(&entry, op).await?;

        let mut invocation = inner.scripts.revoke.prepare_invoke();
        invocation
            .key(inner.keys.record(fp))
            .key(inner.keys.revoked(fp))
            .arg(unix_ms(until))
            .arg(unix_ms(now))
            .arg(u64::try_from(grace.as_millis()).unwrap_or(u64::MAX))
            .arg(owner.unwrap_or(""))
            .arg(inner.keys.channel())
            .arg(fp.to_hex())
            .arg(inner.keys.entries_channel())
            .arg(entry.set_member());
        let result = inner
            .pool
            .run(op, |mut c| async move {
                invocation
                    .invoke_async::<(i64, Option<String>, u64)>(&mut c)
                    .await
            })
            .await;
        // Whatever happened, this replica must not answer from what it cached before.
        inner.l1.invalidate(fp);
        let (newly, removed, end_ms) = result?;
        if end_ms > entry.end_ms() {
            // The deny entry already lasted longer (an earlier revocation, announced then), or
            // the record changed in between; either way the set should say so.
            let later = DenyEntry {
                end: super::keys::from_unix_ms(end_ms),
                ..entry
            };
            let _ = self.announce(&later, op).await;
            inner.replica.apply(&later);
        }
        let removed = removed.and_then(|text| Wire::decode(*fp, &text));
        if removed.is_some() {
            let (expiries, hex) = (inner.keys.expiries(), fp.to_hex());
            // Only the count depends on it; a failure here is counted and otherwise harmless.
            let _ = inner
                .pool
                .run(op, |mut c| async move {
                    c.zrem::<_, _, i64>(expiries, hex).await
                })
                .await;
        }
        Ok((newly == 1, removed))
    }

    /// Adds `entry` to the `revocations` set, or moves its end later (`GT`: never earlier).
    async fn announce(&self, entry: &DenyEntry, op: &'static str) -> Result<(), StoreError> {
        let (key, member, score) = (
            self.inner.keys.revocations(),
            entry.set_member(),
            entry.end_ms(),
        );
        self.inner
            .pool
            .run(op, |mut c| async move {
                redis::cmd("ZADD")
                    .arg(key)
                    .arg("GT")
                    .arg(score)
                    .arg(member)
                    .query_async::<i64>(&mut c)
                    .await
            })
            .await
            .map(drop)
    }

    /// Drops `hexes` from `member`'s set (a hint; failures are counted and otherwise harmless).
    pub(super) async fn forget(&self, member_id: &str, hexes: Vec<String>, op: &'static str) {
        if hexes.is_empty() {
            return;
        }
        let key = self.inner.keys.member(member_id);
        let _ = self
            .inner
            .pool
            .run(
                op,
                |mut c| async move { c.srem::<_, _, i64>(key, hexes).await },
            )
            .await;
    }

    /// The fingerprints in `member`'s set.
    pub(super) async fn member_fingerprints(
        &self,
        member_id: &str,
        op: &'static str,
    ) -> Result<Vec<String>, StoreError> {
        let key = self.inner.keys.member(member_id);
        self.inner
            .pool
            .run(op, |mut c| async move { c.smembers(key).await })
            .await
    }
}
