//! The Redis backend: one registry of issued tokens and one deny-list shared by every replica
//! (docs/design.md, "Scale-out"), with an in-process L1 in front, and the deny-list replicated
//! into every replica's memory.
//!
//! # Layout
//!
//! - `keys.rs`: key names (the table of every key), the stored record, and the two Lua scripts
//!   (`RECORD`, `REVOKE`) that make "denied? else store" and "deny, delete, announce" atomic.
//! - `entry.rs`: one revocation as the replicas exchange it (sorted-set member and message).
//! - `conn.rs`: the connections (node or cluster), each command bounded by `command_timeout`,
//!   failures counted in `store_errors_total{backend="redis",op}`.
//! - `l1.rs`: the bounded, short-lived cache of Redis answers, with its race guard.
//! - `replica.rs`: the local deny-list, its loads and periodic resyncs.
//! - `ops.rs`: the [`TokenStore`](crate::store::TokenStore) operations; `revoke.rs`: revoking.
//! - `subscriber.rs`: the task that listens for revocations, feeds the replica and invalidates
//!   the L1.
//! - `policy.rs`: the start-up check that Redis will not evict revocations.
//!
//! # Consistency across replicas
//!
//! Redis is the truth for records. Records and deny entries expire by Redis TTL (no sweeper): a
//! record at the token's expiry, a deny entry at the token's expiry plus the grace. `revoke`
//! adds the entry to the `revocations` set, then runs one script that writes the deny entry,
//! deletes the record and announces the entry; every replica adds it to its local deny-list
//! and drops it from its L1 on receipt — a few milliseconds. An L1 entry can be stale only
//! while a replica is cut off from pub/sub, and for at most `l1_ttl`; when its subscription is
//! back, the replica clears its L1 and re-syncs its deny-list (it may have missed messages).
//!
//! # Revocations are checked locally
//!
//! Every replica holds every live revocation ([`DenyList`](crate::store::DenyList), loaded at
//! start, kept by messages, re-synced every `store.revocation_resync` and after every
//! resubscription). Once its first load is complete, `is_revoked` and `member_revoked` answer
//! from it alone and never wait on Redis: a revoked token stays refused through an outage, in
//! every mode. Before that (a pod started while Redis is down) `is_revoked` asks Redis and
//! fails closed; `member_revoked` waits for the load at most `command_timeout`, then fails.
//! A replica never drops an entry before its end, even if Redis lost it.
//!
//! # Redis unavailable
//!
//! Every call is bounded by `command_timeout` and then fails with
//! [`StoreError::Unavailable`](crate::store::StoreError); revocation checks and L1 hits keep
//! being answered. The connections and the subscription reconnect by themselves.

mod conn;
mod entry;
mod keys;
mod l1;
mod ops;
mod policy;
mod replica;
mod revoke;
mod subscriber;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use prometheus::IntCounterVec;
use redis::AsyncCommands;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::{Fingerprint, StoreError};
use crate::sync::lock;
use conn::{Pool, PoolSettings};
use entry::DenyEntry;
use keys::{from_unix_ms, unix_ms, Keys, Scripts, Wire};
use l1::{Known, L1};
pub use policy::EvictionPolicy;
use replica::{Replica, Resync};

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
    /// How often the local deny-list is re-synced from Redis besides after each
    /// resubscription, in case a message was lost without the subscription dropping.
    pub revocation_resync: Duration,
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
            revocation_resync: Duration::from_secs(60),
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
    /// The local deny-list.
    replica: Arc<Replica>,
    /// What the `maxmemory-policy` check found.
    eviction: Arc<Mutex<EvictionPolicy>>,
    /// How long `member_revoked` waits for the first load.
    command_timeout: Duration,
    /// Live records, refreshed every [`COUNT_EVERY`].
    count: Arc<AtomicU64>,
    /// The last readiness ping: when, and whether it succeeded.
    last_ping: Mutex<Option<(Instant, bool)>>,
    /// The subscriber, the resync, the counter and the policy check; aborted when the last
    /// handle goes.
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
        let replica = Arc::new(Replica::new(
            options.max_revoked_per_member,
            subscribed.clone(),
        ));
        let eviction = Arc::new(Mutex::new(EvictionPolicy::Unchecked));
        let subscriber = subscriber::Subscriber {
            clients: clients.clone(),
            entries_channel: keys.entries_channel(),
            channel: keys.channel(),
            l1: l1.clone(),
            events: events.clone(),
            subscribed: subscribed.clone(),
            timeout: options.command_timeout,
            replica: replica.clone(),
            pool: pool.clone(),
            keys: keys.clone(),
            grace: options.revoked_grace,
        };
        let resync = Resync {
            replica: replica.clone(),
            pool: pool.clone(),
            key: keys.revocations(),
            every: options.revocation_resync,
        };
        let tasks = vec![
            tokio::spawn(subscriber.run()),
            tokio::spawn(resync.run()),
            tokio::spawn(count_records(pool.clone(), keys.expiries(), count.clone())),
            tokio::spawn(policy::check(
                clients,
                options.command_timeout,
                eviction.clone(),
            )),
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
                replica,
                eviction,
                command_timeout: options.command_timeout,
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

    /// Revocations held in this process's replica of the deny-list (the `revocations_held`
    /// gauge).
    pub fn revocations_held(&self) -> u64 {
        self.inner.replica.deny().len()
    }

    /// Whether the local deny-list has completed its first load, from when on revocation checks
    /// never wait on Redis.
    pub fn revocations_loaded(&self) -> bool {
        self.inner.replica.is_loaded()
    }

    /// What the start-up check of Redis' `maxmemory-policy` found (see the log for why it
    /// matters).
    pub fn eviction_policy(&self) -> EvictionPolicy {
        lock(&self.inner.eviction).clone()
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
                let end = until.max(now) + inner.revoked_grace;
                // Whatever Redis denies, the replica keeps (it may have missed the message).
                inner.replica.apply(&DenyEntry::new(*fp, end, now, None));
                Known::Revoked(end)
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
