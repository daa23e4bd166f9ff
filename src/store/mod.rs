//! The issued-token store: every account token the upstream issued, known by its fingerprint
//! and indexed by its account member, plus the revocation deny-list.
//!
//! Callers (the sign-up tee, the validator, the admin API) hold a [`Store`] and speak to it
//! through the [`TokenStore`] trait; a backend is one variant of [`Store`] (enum dispatch, no
//! boxing): [`MemoryStore`] in process for one replica, or [`RedisStore`] shared by every replica
//! (with a moka L1 in front), which is why every operation is `async` and fallible.
//!
//! # What is stored
//!
//! Only SHA-256 [`Fingerprint`]s of tokens, never raw tokens. Per fingerprint a [`TokenRecord`]:
//! member, account, account name and the expiry the upstream announced.
//!
//! # Consistency design (every backend must keep these promises)
//!
//! - **Expiry is authoritative.** A record is never returned at or after its `expires_at`,
//!   whatever the backend's own eviction schedule is; backends reclaim the space of dead entries
//!   (Redis at expiry, the memory backend amortised over later writes and scrapes).
//! - **Revocation wins.** [`TokenStore::revoke`] puts the fingerprint on a deny-list until the
//!   token's expiry plus a grace (≥ the validator's `exp` leeway) *before* it removes the record,
//!   and [`TokenStore::record`] refuses a denied fingerprint. In the memory backend both run under
//!   the lock of the fingerprint's stripe, so a `record` racing a `revoke` either lands first and
//!   is removed, or sees the deny entry: a revoked token is never resurrected, by a late sign-up
//!   tee, by `unknown = upstream` learning, or by a replay.
//! - **The member index never shows a dead token.** The per-member index is a hint kept in step
//!   with the records (removed on eviction, expiry and revocation); every listing is filtered
//!   through the records again, so a lagging index can only make a listing shorter by a record that
//!   is dying anyway, never longer.
//! - **Revocations are never pushed out.** The deny-list ([`DenyList`]) has no global bound for
//!   a flood to push against: it is bounded per member instead (past
//!   `store.max_revoked_per_member` entries a member's revocations fold into one watermark), and
//!   evicting records never touches it.
//! - **Everything else is bounded.** Records by `max_entries`, the member index by the live
//!   records (a member's set holds only fingerprints still in the records; empty sets are
//!   dropped).
//!
//! The memory backend's details are in [`memory`], the Redis backend's (keys, scripts, L1,
//! revocation fan-out, behaviour while Redis is down) in [`redis`].

mod deny;
mod fingerprint;
pub mod memory;
pub mod redis;

use std::future::Future;
use std::time::SystemTime;

use crate::telemetry::traced;

pub use deny::DenyList;
pub use fingerprint::Fingerprint;
pub use memory::{MemoryStore, MemoryStoreOptions};
pub use redis::{EvictionPolicy, RedisSetupError, RedisStore, RedisStoreOptions};

/// Every operation name of `store_errors_total{backend,op}`.
pub const OPS: [&str; 10] = [
    "record",
    "lookup",
    "is_revoked",
    "member_revoked",
    "resync",
    "list_member",
    "revoke",
    "revoke_member",
    "ping",
    "count",
];

/// Every backend name of `store_errors_total{backend,op}`.
pub const BACKENDS: [&str; 2] = [memory::BACKEND, redis::BACKEND];

/// What is known about one issued token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    /// The key: SHA-256 of the token.
    pub fingerprint: Fingerprint,
    /// The account member the token was issued to (`meta.account_member_id`, else the JWT `sub`);
    /// the key of logout and of the admin listing.
    pub member_id: String,
    /// The account the token is scoped to (`account_id`, the JWT `scope`); the validator compares
    /// it with the account the path names.
    pub account_id: String,
    /// The account's display name, when the upstream sent one (for the admin API only).
    pub account_name: Option<String>,
    /// The upstream's `expires` (else the JWT `exp`); the record is dead from this instant on.
    pub expires_at: SystemTime,
    /// Learned from an upstream 2xx to a request that carried it, not seen issued in a `201` of
    /// the token endpoint: provisional (`tokens.learned_ttl`), counted `reason="learned"`, and
    /// never a stand-in for a signature.
    pub learned: bool,
}

/// Puts a member's records in the order [`TokenStore::list_member`] promises: by account id,
/// then expiry, then fingerprint (so the order is total and the same on every backend).
pub(crate) fn sort_listing(records: &mut [TokenRecord]) {
    records.sort_by(|a, b| {
        (&a.account_id, a.expires_at, a.fingerprint.as_bytes()).cmp(&(
            &b.account_id,
            b.expires_at,
            b.fingerprint.as_bytes(),
        ))
    });
}

/// Why a store operation could not be answered. The caller decides what that means for the
/// request (docs/design.md, "Scale-out": answer from what else it knows, else 503 `store_unavailable`).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached or did not answer in time (Redis); never returned by the
    /// memory backend.
    #[error("token store `{backend}` unavailable during {op}: {reason}")]
    Unavailable {
        /// Backend name, a label value of `store_errors_total{backend,op}`.
        backend: &'static str,
        /// Operation name (`record`, `lookup`, …), the other label value.
        op: &'static str,
        /// Human-readable cause (timeout, connection refused); never contains a token.
        reason: String,
    },
}

/// The operations the validator, sign-up learning and the admin API need from a token store.
///
/// # Implementing a backend
///
/// This trait is the extension point: a backend (the Redis one, say) implements it, gets a
/// variant in [`Store`], and no caller changes. Contract:
///
/// - Methods return `impl Future + Send` so that callers can await them inside spawned hyper
///   tasks; an implementation may simply write `async fn`. A future must finish in bounded time:
///   a backend with I/O applies its own timeout and returns [`StoreError::Unavailable`] rather
///   than hang a request. Never panic on backend trouble.
/// - Keys are [`Fingerprint`]s; never store, log or send a raw token.
/// - Expiry is authoritative (see the module docs): a record at or past its `expires_at` is
///   absent for [`lookup`](Self::lookup) and [`list_member`](Self::list_member), even if the
///   backend has not evicted it yet. Backends should evict at expiry (Redis: key TTL = remaining
///   life) so nothing needs a sweeper.
/// - Revocation wins over recording: once [`revoke`](Self::revoke) has returned, no `record` of
///   that fingerprint may make it look-up-able again until the deny entry expires. A backend must
///   make "is it denied? then store" atomic against "deny, then delete" (Redis: one Lua script or
///   `WATCH`/`MULTI` per operation).
/// - Operations are idempotent: recording the same token twice, revoking twice, revoking an
///   unknown member are all fine.
/// - [`count`](Self::count) is synchronous and cheap enough for a metrics scrape; it may lag.
pub trait TokenStore: Send + Sync {
    /// Records a token the upstream issued (or that was learned from a 2xx answer).
    ///
    /// Replaces an existing record of the same fingerprint. Ignores — successfully — a record
    /// whose `expires_at` has passed, and a fingerprint on the deny-list (a revoked token is never
    /// brought back). May evict older records to stay within the backend's bound.
    fn record(&self, record: TokenRecord) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The live record of a fingerprint: `None` if it was never recorded, has expired, was
    /// evicted, or was revoked. The validator's hot path in `issued` mode.
    fn lookup(
        &self,
        fp: &Fingerprint,
    ) -> impl Future<Output = Result<Option<TokenRecord>, StoreError>> + Send;

    /// Whether the fingerprint is on the deny-list (revoked and not yet expired). Checked in
    /// every validation mode, including for tokens the store never recorded (`signature` mode),
    /// so that neither a valid signature nor the upstream can bring a revoked token back.
    fn is_revoked(&self, fp: &Fingerprint)
        -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Whether `member`'s revocations were folded into a watermark (see [`DenyList`]) that
    /// covers a token of theirs issued at `issued_at` (`None`: unknown, covered). Checked once
    /// the token's member is known: a folded token has no deny entry of its own.
    fn member_revoked(
        &self,
        member: &str,
        issued_at: Option<SystemTime>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Every live record of a member, ordered by account id (then expiry), for the admin API and
    /// for logout. Never contains an expired, evicted or revoked token.
    fn list_member(
        &self,
        member_id: &str,
    ) -> impl Future<Output = Result<Vec<TokenRecord>, StoreError>> + Send;

    /// Revokes one token: puts `fp` on the deny-list until `expires_at` (the token's own expiry;
    /// if the store holds a record expiring later, until that) plus the backend's configured
    /// grace (at least the validator's `exp` leeway), then removes its record.
    ///
    /// `member` is the token's member when the caller knows it (else the record's, if any): the
    /// deny-list's per-member bound counts it there.
    ///
    /// Works for a fingerprint the store never recorded (a `signature`-mode token). Returns `true`
    /// if the fingerprint was newly put on the deny-list — the increment of
    /// `tokens_revoked_total` — and `false` if it already was, or if the token's expiry plus the
    /// grace has already passed (such a token needs no deny entry; its record, if any, is still
    /// removed).
    fn revoke(
        &self,
        fp: &Fingerprint,
        expires_at: SystemTime,
        member: Option<&str>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Revokes every live token of a member (logout, admin API) as [`revoke`](Self::revoke) does,
    /// each until its own expiry, and returns the records it removed. A token recorded
    /// concurrently with the call may escape it; call again to catch it.
    fn revoke_member(
        &self,
        member_id: &str,
    ) -> impl Future<Output = Result<Vec<TokenRecord>, StoreError>> + Send;

    /// The current number of live records, for the `store_entries` gauge. Synchronous and cheap;
    /// a backend may answer from a cached or approximate figure.
    fn count(&self) -> u64;
}

/// The configured backend; callers hold this (or an `Arc` of it). Enum dispatch: no boxing, no
/// `async-trait`.
#[derive(Clone, Debug)]
pub enum Store {
    /// The in-process store of one replica.
    Memory(MemoryStore),
    /// Redis, shared by every replica, with an in-process L1.
    Redis(RedisStore),
}

impl From<RedisStore> for Store {
    fn from(store: RedisStore) -> Self {
        Store::Redis(store)
    }
}

impl From<MemoryStore> for Store {
    fn from(store: MemoryStore) -> Self {
        Store::Memory(store)
    }
}

impl Store {
    /// The backend's name, as used in `store_errors_total{backend}` and log lines.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Memory(_) => memory::BACKEND,
            Store::Redis(_) => redis::BACKEND,
        }
    }

    /// Whether the backend can be reached now, for `/readyz` (bounded in time; the memory
    /// backend always can).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Memory(_) => Ok(()),
            Store::Redis(store) => store.ping().await,
        }
    }

    /// The span of one store operation named `name`.
    fn span(&self, name: &'static str) -> tracing::Span {
        tracing::info_span!(
            target: crate::telemetry::TARGET,
            "store",
            otel.name = name,
            account_gate.store.backend = self.backend(),
        )
    }

    /// Revocations held in this process (token entries plus folded members), for the
    /// `revocations_held` gauge.
    pub fn revocations_held(&self) -> u64 {
        match self {
            Store::Memory(store) => store.revocations_held(),
            Store::Redis(store) => store.revocations_held(),
        }
    }

    /// Fingerprints revoked by other replicas, as they are announced, so that caches outside
    /// the store (the verifier's) can drop them; `None` for a backend that is not shared.
    pub fn revocation_events(&self) -> Option<tokio::sync::broadcast::Receiver<Fingerprint>> {
        match self {
            Store::Memory(_) => None,
            Store::Redis(store) => Some(store.revocation_events()),
        }
    }
}

// The Redis operations on the request path are boxed: their futures are about a kilobyte each,
// and unboxed they would make every request's future (memory backend included) that much
// larger, copied each time a request starts.
impl TokenStore for Store {
    async fn record(&self, record: TokenRecord) -> Result<(), StoreError> {
        traced!(self.span("store record"), async {
            match self {
                Store::Memory(store) => store.record(record).await,
                Store::Redis(store) => Box::pin(store.record(record)).await,
            }
        })
    }

    async fn lookup(&self, fp: &Fingerprint) -> Result<Option<TokenRecord>, StoreError> {
        traced!(self.span("store lookup"), async {
            match self {
                Store::Memory(store) => store.lookup(fp).await,
                Store::Redis(store) => Box::pin(store.lookup(fp)).await,
            }
        })
    }

    async fn is_revoked(&self, fp: &Fingerprint) -> Result<bool, StoreError> {
        traced!(self.span("store is revoked"), async {
            match self {
                Store::Memory(store) => store.is_revoked(fp).await,
                Store::Redis(store) => Box::pin(store.is_revoked(fp)).await,
            }
        })
    }

    async fn list_member(&self, member_id: &str) -> Result<Vec<TokenRecord>, StoreError> {
        traced!(self.span("store list member"), async {
            match self {
                Store::Memory(store) => store.list_member(member_id).await,
                Store::Redis(store) => store.list_member(member_id).await,
            }
        })
    }

    async fn member_revoked(
        &self,
        member: &str,
        issued_at: Option<SystemTime>,
    ) -> Result<bool, StoreError> {
        traced!(self.span("store member revoked"), async {
            match self {
                Store::Memory(store) => store.member_revoked(member, issued_at).await,
                Store::Redis(store) => Box::pin(store.member_revoked(member, issued_at)).await,
            }
        })
    }

    async fn revoke(
        &self,
        fp: &Fingerprint,
        expires_at: SystemTime,
        member: Option<&str>,
    ) -> Result<bool, StoreError> {
        traced!(self.span("store revoke"), async {
            match self {
                Store::Memory(store) => store.revoke(fp, expires_at, member).await,
                Store::Redis(store) => store.revoke(fp, expires_at, member).await,
            }
        })
    }

    async fn revoke_member(&self, member_id: &str) -> Result<Vec<TokenRecord>, StoreError> {
        traced!(self.span("store revoke member"), async {
            match self {
                Store::Memory(store) => store.revoke_member(member_id).await,
                Store::Redis(store) => store.revoke_member(member_id).await,
            }
        })
    }

    fn count(&self) -> u64 {
        match self {
            Store::Memory(store) => store.count(),
            Store::Redis(store) => store.count(),
        }
    }
}
