//! The [`TokenStore`] operations of the Redis backend (see the parent module for the design).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use futures_util::future::join_all;
use redis::AsyncCommands;

use super::keys::{unix_ms, Wire};
use super::l1::Known;
use super::revoke::Revocation;
use super::RedisStore;
use crate::store::{sort_listing, Fingerprint, StoreError, TokenRecord, TokenStore};

impl TokenStore for RedisStore {
    async fn record(&self, record: TokenRecord) -> Result<(), StoreError> {
        let Ok(left) = record.expires_at.duration_since(SystemTime::now()) else {
            tracing::debug!(fingerprint = %record.fingerprint, "not recording an expired token");
            return Ok(());
        };
        let inner = &self.inner;
        let fp = record.fingerprint;
        let ttl_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1);
        let (member_key, expiries, hex) = (
            inner.keys.member(&record.member_id),
            inner.keys.expiries(),
            fp.to_hex(),
        );
        // The index first: a record that exists is always findable by `revoke_member`. Each
        // command touches one key, so this works on a cluster too.
        let member_hex = hex.clone();
        let index = inner.pool.run("record", |mut c| {
            let (member_key, hex) = (member_key, member_hex);
            async move {
                redis::pipe()
                    .sadd(&member_key, &hex)
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(&member_key)
                    .arg(ttl_ms)
                    .arg("NX")
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(&member_key)
                    .arg(ttl_ms)
                    .arg("GT")
                    .ignore()
                    .query_async::<()>(&mut c)
                    .await
            }
        });
        let expires_ms = unix_ms(record.expires_at);
        let counted = inner.pool.run("record", |mut c| async move {
            c.zadd::<_, _, _, i64>(expiries, hex, expires_ms).await
        });
        tokio::try_join!(index, counted)?;

        let mut invocation = inner.scripts.record.prepare_invoke();
        invocation
            .key(inner.keys.record(&fp))
            .key(inner.keys.revoked(&fp))
            .arg(Wire::encode(&record))
            .arg(ttl_ms);
        let stored: i64 = inner
            .pool
            .run("record", |mut c| async move {
                invocation.invoke_async(&mut c).await
            })
            .await?;
        if stored == 1 {
            inner.l1.put(fp, Known::Live(Arc::new(record)));
        } else {
            tracing::debug!(fingerprint = %fp, "not recording a revoked token");
            inner.l1.invalidate(&fp);
        }
        Ok(())
    }

    async fn lookup(&self, fp: &Fingerprint) -> Result<Option<TokenRecord>, StoreError> {
        // Revocation wins, even over a record Redis still holds (it lost the deny entry).
        if self.inner.replica.deny().is_denied(fp) {
            return Ok(None);
        }
        Ok(match self.known(fp, "lookup").await? {
            Known::Live(record) => Some((*record).clone()),
            Known::Revoked(_) | Known::Absent => None,
        })
    }

    async fn is_revoked(&self, fp: &Fingerprint) -> Result<bool, StoreError> {
        let replica = &self.inner.replica;
        if replica.deny().is_denied(fp) {
            return Ok(true);
        }
        // Complete: no need (and, through an outage, no way) to ask Redis.
        if replica.is_loaded() {
            return Ok(false);
        }
        Ok(matches!(
            self.known(fp, "is_revoked").await?,
            Known::Revoked(_)
        ))
    }

    async fn list_member(&self, member_id: &str) -> Result<Vec<TokenRecord>, StoreError> {
        let hexes = self.member_fingerprints(member_id, "list_member").await?;
        let fps: Vec<(String, Option<Fingerprint>)> = hexes
            .into_iter()
            .map(|hex| {
                let fp = Fingerprint::from_hex(&hex);
                (hex, fp)
            })
            .collect();
        let answers = join_all(fps.iter().map(|(_, fp)| async move {
            match fp {
                Some(fp) => self.fetch(fp, "list_member").await.map(Some),
                None => Ok(None),
            }
        }))
        .await;
        let mut records = Vec::new();
        let mut dead = Vec::new();
        for ((hex, _), answer) in fps.into_iter().zip(answers) {
            match answer? {
                Some(Known::Live(record)) if record.member_id == member_id => {
                    records.push((*record).clone());
                }
                _ => dead.push(hex),
            }
        }
        // Tidy the hint as we go; its members expire with the set otherwise.
        self.forget(member_id, dead, "list_member").await;
        sort_listing(&mut records);
        Ok(records)
    }

    async fn member_revoked(
        &self,
        member: &str,
        issued_at: Option<SystemTime>,
    ) -> Result<bool, StoreError> {
        let inner = &self.inner;
        let deny = inner.replica.deny();
        if deny.member_denied(member, issued_at) {
            return Ok(true);
        }
        // Redis keeps no watermarks, only the entries they fold: until they are all loaded,
        // "no" could be wrong. A pod that just started waits a moment for its first load.
        if inner.replica.is_loaded() || inner.replica.wait_loaded(inner.command_timeout).await {
            return Ok(deny.member_denied(member, issued_at));
        }
        Err(inner.pool.failed(
            "member_revoked",
            "revocations not loaded from Redis yet".to_owned(),
        ))
    }

    async fn revoke(
        &self,
        fp: &Fingerprint,
        expires_at: SystemTime,
        member: Option<&str>,
    ) -> Result<bool, StoreError> {
        let revocation = Revocation {
            fp,
            until: expires_at,
            owner: None,
            member,
            op: "revoke",
        };
        Ok(self.revoke_one(revocation).await?.0)
    }

    async fn revoke_member(&self, member_id: &str) -> Result<Vec<TokenRecord>, StoreError> {
        let now = SystemTime::now();
        let hexes = self.member_fingerprints(member_id, "revoke_member").await?;
        let fps: Vec<Fingerprint> = hexes
            .iter()
            .filter_map(|h| Fingerprint::from_hex(h))
            .collect();
        // Concurrently, so the whole call takes about one command's time, not one per token.
        // `now` as the floor: the record's own expiry is taken when it is later.
        let results = join_all(fps.iter().map(|fp| {
            self.revoke_one(Revocation {
                fp,
                until: now,
                owner: Some(member_id),
                member: Some(member_id),
                op: "revoke_member",
            })
        }))
        .await;
        let mut removed = Vec::new();
        for result in results {
            if let (_, Some(record)) = result? {
                if record.expires_at > now {
                    removed.push(record);
                }
            }
        }
        self.forget(member_id, hexes, "revoke_member").await;
        removed.sort_by(|a, b| a.account_id.cmp(&b.account_id));
        Ok(removed)
    }

    fn count(&self) -> u64 {
        self.inner.count.load(Ordering::Relaxed)
    }
}
