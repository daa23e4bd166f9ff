//! The Redis backend: one registry of issued tokens and one deny-list shared by every replica
//! (docs/design.md, "Scale-out"), with an in-process L1 in front and revocations fanned out by
//! pub/sub.
//!
//! # Layout
//!
//! - `keys.rs`: key names, the stored record, and the two Lua scripts (`RECORD`, `REVOKE`)
//!   that make "denied? else store" and "deny, delete, publish" atomic.
//! - `conn.rs`: the connections (node or cluster), each command bounded by `command_timeout`,
//!   failures counted in `store_errors_total{backend="redis",op}`.
//! - `l1.rs`: the bounded, short-lived cache of Redis answers, with its race guard.
//! - `ops.rs`: the [`TokenStore`](crate::store::TokenStore) operations.
//! - `subscriber.rs`: the task that listens for revocations and invalidates the L1.
//!
//! # Consistency across replicas
//!
//! Redis is the truth. Records and deny entries expire by Redis TTL (no sweeper): a record at
//! the token's expiry, a deny entry at the token's expiry plus the grace. `revoke` runs one
//! script that writes the deny entry, deletes the record and publishes the fingerprint; every
//! replica (the revoking one included) drops it from its L1 on receipt — a few milliseconds.
//! An L1 entry can be stale only while a replica is cut off from pub/sub, and for at most
//! `l1_ttl`; when its subscription is back, the replica clears its L1 (it may have missed
//! messages).
//!
//! # Redis unavailable
//!
//! Every call is bounded by `command_timeout` and then fails with
//! [`StoreError::Unavailable`](crate::store::StoreError); L1 hits keep being answered. The
//! connections and the subscription reconnect by themselves.

mod conn;
mod keys;
mod l1;
mod ops;
mod subscriber;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use prometheus::IntCounterVec;
use redis::AsyncCommands;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::{Fingerprint, StoreError, TokenRecord};
use crate::sync::lock;
use conn::{Pool, PoolSettings};
use keys::{from_unix_ms, unix_ms, Keys, Scripts, Wire};
use l1::{Known, L1};

/// The backend's name in `store_errors_total{backend}` and logs.
pub const BACKEND: &str = "redis";

/// How long a readiness ping's answer is reused.
const PING_CACHE: Duration = Duration::from_secs(1);
/// How often the record count behind `store_entries` is refreshed.
const COUNT_EVERY: Duration = Duration::from_secs(5);
/// Revocations buffered per [`RedisStore::revocation_events`] receiver.
const EVENTS_CAPACITY: usize = 1024;

/// How to reach Redis and how to cache; see `[store]` in the configuration.
#[derive(Clone)]
pub struct RedisStoreOptions {
    /// `redis://` or `rediss://` URL; with `cluster`, comma-separated seed nodes.
    pub url: String,
    /// Whether `url` names a Redis Cluster.
    pub cluster: bool,
    /// AUTH password (kept out of the URL so that it is never logged with it).
    pub password: Option<String>,
    /// Multiplexed connections used in turn (single node).
    pub pool_size: usize,
    /// Bound of one Redis command.
    pub command_timeout: Duration,
    /// Prefix of every key and of the channel.
    pub key_prefix: String,
    /// Longest reuse of an L1 entry; zero disables the L1.
    pub l1_ttl: Duration,
    /// Most L1 entries.
    pub l1_max_entries: u64,
    /// How long a deny entry outlives its token (at least the validator's `exp` leeway).
    pub revoked_grace: Duration,
    /// Deny entries one member holds before they fold into one (see `store::DenyList`).
    pub max_revoked_per_member: usize,
    /// `store_errors_total`, to count failed calls in.
    pub errors: Option<IntCounterVec>,
}

impl RedisStoreOptions {
    /// Options for `url` with the configuration's defaults.
    pub fn new(url: &str) -> Self {
        RedisStoreOptions {
            url: url.to_owned(),
            cluster: false,
            password: None,
            pool_size: 2,
            command_timeout: Duration::from_millis(250),
            key_prefix: "account-gate:".to_owned(),
            l1_ttl: Duration::from_secs(5),
            l1_max_entries: 100_000,
            revoked_grace: Duration::from_secs(60),
            max_revoked_per_member: 32,
            errors: None,
        }
    }
}

/// The Redis client could not be set up (an unusable URL).
#[derive(Debug, thiserror::Error)]
#[error("store.redis_url: {0}")]
pub struct RedisSetupError(String);

/// The Redis token store. Cloning is cheap and yields a handle to the same store.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Arc<Pool>,
    keys: Keys,
    scripts: Scripts,
    l1: L1,
    revoked_grace: Duration,
    /// Fingerprints revoked anywhere, as the subscriber receives them.
    events: broadcast::Sender<Fingerprint>,
    /// Whether the revocation subscription is live.
    subscribed: Arc<AtomicBool>,
    /// Live records, refreshed every [`COUNT_EVERY`].
    count: Arc<AtomicU64>,
    /// The last readiness ping: when, and whether it succeeded.
    last_ping: Mutex<Option<(Instant, bool)>>,
    /// The subscriber and the counter; aborted when the last handle goes.
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.keys.channel())
            .field("subscribed", &self.is_subscribed())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// The store; connects lazily and starts its background tasks (call within a Tokio
    /// runtime). Fails only on an unusable URL.
    pub fn new(options: RedisStoreOptions) -> Result<Self, RedisSetupError> {
        let nodes: Vec<String> = options
            .url
            .split(',')
            .map(|node| node.trim().to_owned())
            .filter(|node| !node.is_empty())
            .collect();
        let setup = |e: redis::RedisError| RedisSetupError(e.to_string());
        let pool = Arc::new(
            Pool::new(PoolSettings {
                nodes: &nodes,
                cluster: options.cluster,
                password: options.password.as_deref(),
                pool_size: options.pool_size,
                timeout: options.command_timeout,
                errors: options.errors.clone(),
            })
            .map_err(setup)?,
        );
        let clients = nodes
            .iter()
            .map(|node| conn::client(node, options.password.as_deref()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(setup)?;
        if clients.is_empty() {
            return Err(RedisSetupError("no Redis URL given".to_owned()));
        }
        let keys = Keys::new(&options.key_prefix);
        let l1 = L1::new(options.l1_max_entries, options.l1_ttl);
        let (events, _) = broadcast::channel(EVENTS_CAPACITY);
        let subscribed = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let subscriber = subscriber::Subscriber {
            clients,
            channel: keys.channel(),
            l1: l1.clone(),
            events: events.clone(),
            subscribed: subscribed.clone(),
            timeout: options.command_timeout,
        };
        let tasks = vec![
            tokio::spawn(subscriber.run()),
            tokio::spawn(count_records(pool.clone(), keys.expiries(), count.clone())),
        ];
        Ok(RedisStore {
            inner: Arc::new(Inner {
                pool,
                keys,
                scripts: Scripts::new(),
                l1,
                revoked_grace: options.revoked_grace,
                events,
                subscribed,
                count,
                last_ping: Mutex::new(None),
                tasks,
            }),
        })
    }

    /// Fingerprints revoked by any replica, as they arrive on the revocation channel.
    pub fn revocation_events(&self) -> broadcast::Receiver<Fingerprint> {
        self.inner.events.subscribe()
    }

    /// Revocations held in this process (placeholder until the deny-list is replicated).
    pub fn revocations_held(&self) -> u64 {
        0
    }

    /// Whether this replica is currently subscribed to revocations.
    pub fn is_subscribed(&self) -> bool {
        self.inner.subscribed.load(Ordering::SeqCst)
    }

    /// Whether Redis answers a `PING` within the command timeout; the answer is reused for a
    /// second, so a probe storm costs Redis one ping a second.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let cached = *lock(&self.inner.last_ping);
        let ok = match cached {
            Some((at, ok)) if at.elapsed() < PING_CACHE => ok,
            _ => {
                let result = self
                    .inner
                    .pool
                    .run("ping", |mut c| async move {
                        redis::cmd("PING").query_async::<String>(&mut c).await
                    })
                    .await;
                let ok = result.is_ok();
                *lock(&self.inner.last_ping) = Some((Instant::now(), ok));
                ok
            }
        };
        if ok {
            Ok(())
        } else {
            Err(StoreError::Unavailable {
                backend: BACKEND,
                op: "ping",
                reason: "Redis did not answer PING".to_owned(),
            })
        }
    }

    /// What Redis holds for `fp` now, cached in the L1 unless an invalidation raced the read.
    async fn fetch(&self, fp: &Fingerprint, op: &'static str) -> Result<Known, StoreError> {
        let inner = &self.inner;
        let generation = inner.l1.generation();
        let keys = [inner.keys.record(fp), inner.keys.revoked(fp)];
        let (record, denied): (Option<String>, Option<String>) = inner
            .pool
            .run(op, |mut c| async move { c.mget(&keys).await })
            .await?;
        let now = SystemTime::now();
        let known = match (denied, record) {
            (Some(until), _) => {
                let until = until.parse().map_or(now, from_unix_ms);
                Known::Revoked(until.max(now) + inner.revoked_grace)
            }
            (None, Some(text)) => match Wire::decode(*fp, &text) {
                Some(record) if record.expires_at > now => Known::Live(Arc::new(record)),
                Some(_) => Known::Absent,
                None => {
                    tracing::warn!(fingerprint = %fp, "ignoring a token record in an unknown format");
                    Known::Absent
                }
            },
            (None, None) => Known::Absent,
        };
        inner.l1.fill(*fp, known.clone(), generation);
        Ok(known)
    }

    /// The L1's answer, else Redis's.
    async fn known(&self, fp: &Fingerprint, op: &'static str) -> Result<Known, StoreError> {
        match self.inner.l1.get(fp) {
            Some(known) => Ok(known),
            None => self.fetch(fp, op).await,
        }
    }

    /// Runs `REVOKE` for `fp` (deny until `until` or the record's later expiry, delete the
    /// record if it is `member`'s, publish). Returns (newly denied, removed record).
    async fn revoke_one(
        &self,
        fp: &Fingerprint,
        until: SystemTime,
        member: Option<&str>,
        op: &'static str,
    ) -> Result<(bool, Option<TokenRecord>), StoreError> {
        let inner = &self.inner;
        let mut invocation = inner.scripts.revoke.prepare_invoke();
        invocation
            .key(inner.keys.record(fp))
            .key(inner.keys.revoked(fp))
            .arg(unix_ms(until))
            .arg(unix_ms(SystemTime::now()))
            .arg(u64::try_from(inner.revoked_grace.as_millis()).unwrap_or(u64::MAX))
            .arg(member.unwrap_or(""))
            .arg(inner.keys.channel())
            .arg(fp.to_hex());
        let result = inner
            .pool
            .run(op, |mut c| async move {
                invocation
                    .invoke_async::<(i64, Option<String>)>(&mut c)
                    .await
            })
            .await;
        // Whatever happened, this replica must not answer from what it cached before.
        inner.l1.invalidate(fp);
        let (newly, removed) = result?;
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

    /// Drops `hexes` from `member`'s set (a hint; failures are counted and otherwise harmless).
    async fn forget(&self, member_id: &str, hexes: Vec<String>, op: &'static str) {
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
    async fn member_fingerprints(
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

/// Keeps `count` at the number of live records: trims expired members of the `expiries` set and
/// counts the rest, every [`COUNT_EVERY`].
async fn count_records(pool: Arc<Pool>, expiries: String, count: Arc<AtomicU64>) {
    let mut every = tokio::time::interval(COUNT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let now = unix_ms(SystemTime::now());
        let key = expiries.clone();
        let counted = pool
            .run("count", |mut c| async move {
                let (_, live): (i64, u64) = redis::pipe()
                    .zrembyscore(&key, "-inf", now)
                    .zcard(&key)
                    .query_async(&mut c)
                    .await?;
                Ok(live)
            })
            .await;
        if let Ok(live) = counted {
            count.store(live, Ordering::Relaxed);
        }
    }
}
