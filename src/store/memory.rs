//! The in-process backend: right for one replica (docs/design.md, "Scale-out"), built to hold a
//! million tokens in a sidecar's memory (200–225 bytes resident per record, member index included;
//! `cargo bench --bench store_memory`).
//!
//! # Structure
//!
//! - `records`: fingerprint → (expiry, packed strings), bounded by `max_entries`. The member id,
//!   account id and account name are packed into one exactly sized block, canonical UUIDs as 16
//!   bytes (`codec.rs`); the expiry is nanoseconds since the epoch, so a record reads back exactly
//!   as it was written.
//! - `members`: member id → fingerprints of its records (`members.rs`), for `list_member` and
//!   `revoke_member`.
//! - `revoked`: the deny-list ([`DenyList`]), fingerprint → the instant its entry ends
//!   (`revoked_grace` after the token's expiry, so a validator's `exp` leeway cannot reopen the
//!   window), bounded per member, never evicted.
//!
//! Records live in fingerprint-striped tables (`table.rs`): up to 64 mutexes,
//! each over a dense vector with a hash index of positions (`slab.rs`), each stripe holding its
//! exact share of the bound, so the bound holds for the store as a whole. The price: fingerprints
//! do not spread perfectly evenly, so the fullest stripes start evicting a little before the whole
//! store is full (1,000,000 inserts into a store of 1,000,000 keep 996,601).
//! Stores below 2,048 entries use one stripe.
//!
//! # Expiry and eviction
//!
//! Every read compares the entry's expiry with the clock, so a dead entry is never returned,
//! whenever its memory is reclaimed. Reclaiming is amortised, with no timer per entry: each insert
//! sweeps a few entries of its stripe, and [`MemoryStore::count`] (the metrics scrape) sweeps the
//! stripes whose earliest expiry has passed. A full stripe makes room by evicting one entry of a
//! random sample of 8 — a dead one if the sample holds one — so a fresh sign-up is always
//! admitted. Among live records the least recently used goes (each record keeps the time of its
//! last record or lookup; ties by soonest expiry): a member who keeps using a token keeps it
//! while a flood of sign-ups fills the store. Evicting a record never touches the deny-list.
//!
//! # Races
//!
//! Everything that changes the record of a fingerprint — `record`, `revoke`, a sweep, an eviction
//! — runs under the lock of that fingerprint's record stripe, and updates the deny-list and the
//! member index inside it. `record` checks the deny-list and stores under that lock; `revoke`
//! writes the deny entry and removes the record under it: a revoked token is never resurrected,
//! and a live record is never on the deny-list (so `lookup` needs only the one lock). The member
//! index changes in the same critical sections as the records, so it is exact: a fingerprint is
//! indexed under a member exactly while its record (alive or not yet swept) names that member.
//!
//! Lock order: record stripe → deny-list, record stripe → member stripe; nothing is locked while
//! the deny-list or a member stripe is held, and no two stripes of one table are ever held
//! together.
//! `list_member` and `revoke_member` copy a member's fingerprints, release its stripe, then visit
//! each record under its own lock.

mod codec;
mod members;
mod slab;
mod table;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use self::codec::IdRef;
use self::members::MemberIndex;
use self::table::{instant, nanos, Entry, Sharded};
use super::{DenyList, Fingerprint, StoreError, TokenRecord, TokenStore};

/// The backend's name in metrics labels and logs.
pub(crate) const BACKEND: &str = "memory";

/// Default [`MemoryStoreOptions::revoked_grace`]: above any sensible clock-skew leeway.
const DEFAULT_REVOKED_GRACE: Duration = Duration::from_secs(5 * 60);

/// Default [`MemoryStoreOptions::max_revoked_per_member`].
pub const DEFAULT_MAX_REVOKED_PER_MEMBER: usize = 32;

/// Bounds of a [`MemoryStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryStoreOptions {
    /// Most records kept (`store.max_entries`); when full, the least recently used record of a
    /// sample makes room for a new one. Default 1,000,000. Each live record costs 200–225 bytes
    /// resident, member index included, with UUID ids and a short account name (`cargo bench
    /// --bench store_memory`): about 200 MiB at the default.
    pub max_entries: u64,
    /// Most deny-list entries one member holds before their revocations fold into one watermark
    /// (`store.max_revoked_per_member`, see [`DenyList`]). Default 32.
    pub max_revoked_per_member: usize,
    /// How long a deny entry outlives its token's expiry. A validator that accepts a token for a
    /// `leeway` past its `exp` must not see the deny entry go first, so this must be at least the
    /// configured `tokens.leeway`. Default 5 minutes.
    pub revoked_grace: Duration,
}

impl MemoryStoreOptions {
    /// At most `max_entries` records, the other bounds at their defaults.
    pub fn with_max_entries(max_entries: u64) -> Self {
        Self {
            max_entries,
            max_revoked_per_member: DEFAULT_MAX_REVOKED_PER_MEMBER,
            revoked_grace: DEFAULT_REVOKED_GRACE,
        }
    }
}

impl Default for MemoryStoreOptions {
    fn default() -> Self {
        Self::with_max_entries(1_000_000)
    }
}

/// The in-process token store. Cloning is cheap and yields a handle to the same store.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Fingerprint → packed strings (`codec.rs`), with the record's expiry.
    records: Sharded<Stored>,
    /// The deny-list.
    revoked: DenyList,
    /// Member id → fingerprints, in step with `records`.
    members: MemberIndex,
    /// [`MemoryStoreOptions::revoked_grace`], in nanoseconds.
    revoked_grace: u64,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("records", &self.inner.records.len())
            .field("revoked", &self.inner.revoked)
            .finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store with the given bounds.
    pub fn new(opts: MemoryStoreOptions) -> Self {
        let records = Sharded::new(opts.max_entries);
        let members = MemberIndex::new(records.stripes());
        Self {
            inner: Arc::new(Inner {
                records,
                revoked: DenyList::new(opts.max_revoked_per_member),
                members,
                revoked_grace: u64::try_from(opts.revoked_grace.as_nanos()).unwrap_or(u64::MAX),
            }),
        }
    }

    /// Reclaims every dead record and deny entry now (otherwise it happens piggy-backed on
    /// inserts and on [`count`](TokenStore::count)). Takes every stripe lock in turn.
    pub fn reclaim_expired(&self) {
        let now = table::now();
        let inner = &*self.inner;
        for mut stripe in inner.records.each() {
            stripe.sweep_all(now, |entry| inner.unindex(&entry));
        }
        inner.revoked.len();
    }

    /// Revocations held: deny entries plus folded members (ended ones reclaimed first).
    pub fn revocations_held(&self) -> u64 {
        self.inner.revoked.len()
    }

    #[cfg(test)]
    fn indexed(&self) -> (usize, usize) {
        self.inner.members.len()
    }
}

impl Inner {
    /// Drops a record that left the table from its member's index entry.
    fn unindex(&self, entry: &Entry<Stored>) {
        self.members
            .remove(codec::member(&entry.value.block), &entry.fp);
    }

    /// Revokes `fp` until `until` (or its record's later expiry) plus the grace, and removes its
    /// record — unless `only` is given and the record is another member's (then neither).
    /// `member` names the token's member for the deny-list when there is no record to say so.
    /// Returns (newly denied, the removed record if it was alive).
    fn revoke_one(
        &self,
        fp: &Fingerprint,
        until: SystemTime,
        only: Option<IdRef<'_>>,
        member: Option<&str>,
    ) -> (bool, Option<TokenRecord>) {
        let now = table::now();
        let mut until = nanos(until);
        let mut records = self.records.lock(fp);
        let pos = records.position(fp);
        let mut owner = member.map(str::to_owned);
        if let Some(pos) = pos {
            let entry = records.at(pos);
            let recorded = codec::member(&entry.value.block);
            if only.is_some_and(|m| m != recorded) {
                return (false, None);
            }
            until = until.max(entry.expires);
            owner = Some(recorded.to_string_exact());
        }
        // Deny first, under the record stripe's lock: no `record` of `fp` can slip in between.
        let newly = self.revoked.deny(
            *fp,
            instant(until.saturating_add(self.revoked_grace)),
            owner.as_deref(),
        );
        let removed = pos.map(|pos| records.remove_at(pos)).and_then(|entry| {
            self.unindex(&entry);
            (entry.expires > now).then(|| to_record(&entry))
        });
        (newly, removed)
    }
}

/// A record's value: its packed strings and when it was last recorded or looked up.
struct Stored {
    /// Member id, account id and account name (`codec.rs`).
    block: Box<[u8]>,
    /// Last record or lookup, as nanoseconds since the epoch: 8 bytes a record (a `u32` of whole
    /// seconds would pad the table's entry to the same 64 bytes, and tie every record touched
    /// within one second).
    used: u64,
}

impl Stored {
    /// Eviction order: least recently used first, ties by soonest expiry.
    fn rank(entry: &Entry<Self>) -> (u64, u64) {
        (entry.value.used, entry.expires)
    }
}

/// The caller's view of a stored entry.
fn to_record(entry: &Entry<Stored>) -> TokenRecord {
    let fields = codec::decode(&entry.value.block);
    TokenRecord {
        fingerprint: entry.fp,
        member_id: fields.member.to_string_exact(),
        account_id: fields.account.to_string_exact(),
        account_name: fields.name.map(str::to_owned),
        expires_at: instant(entry.expires),
        learned: fields.learned,
    }
}

impl TokenStore for MemoryStore {
    async fn record(&self, record: TokenRecord) -> Result<(), StoreError> {
        let now = table::now();
        let expires = nanos(record.expires_at);
        let fp = record.fingerprint;
        if expires <= now {
            tracing::debug!(fingerprint = %fp, "not recording an expired token");
            return Ok(());
        }
        let member = IdRef::parse(&record.member_id);
        let block = codec::encode(
            member,
            IdRef::parse(&record.account_id),
            record.account_name.as_deref(),
            record.learned,
        );
        let inner = &*self.inner;
        let mut records = inner.records.lock(&fp);
        // Under the record stripe's lock, which `revoke_one` holds while it denies and removes.
        if inner.revoked.is_denied(&fp) {
            tracing::debug!(fingerprint = %fp, "not recording a revoked token");
            return Ok(());
        }
        if let Some(pos) = records.position(&fp) {
            let previous = codec::member(&records.at(pos).value.block);
            if previous != member {
                inner.members.remove(previous, &fp);
                inner.members.insert(member, fp);
            }
            records.replace(pos, expires, Stored { block, used: now });
            return Ok(());
        }
        if records.make_room(now, Stored::rank, |gone| inner.unindex(&gone)) {
            records.insert(fp, expires, Stored { block, used: now });
            inner.members.insert(member, fp);
        }
        Ok(())
    }

    async fn lookup(&self, fp: &Fingerprint) -> Result<Option<TokenRecord>, StoreError> {
        let mut stripe = self.inner.records.lock(fp);
        Ok(stripe.get_live_mut(fp, table::now).map(|(entry, now)| {
            entry.value.used = now;
            to_record(entry)
        }))
    }

    async fn is_revoked(&self, fp: &Fingerprint) -> Result<bool, StoreError> {
        Ok(self.inner.revoked.is_denied(fp))
    }

    async fn member_revoked(
        &self,
        member: &str,
        issued_at: Option<SystemTime>,
    ) -> Result<bool, StoreError> {
        Ok(self.inner.revoked.member_denied(member, issued_at))
    }

    async fn list_member(&self, member_id: &str) -> Result<Vec<TokenRecord>, StoreError> {
        let member = IdRef::parse(member_id);
        let now = table::now();
        let mut records: Vec<TokenRecord> = self
            .inner
            .members
            .fingerprints(member)
            .iter()
            .filter_map(|fp| {
                let stripe = self.inner.records.lock(fp);
                let entry = stripe.get_live(fp, || now)?;
                (codec::member(&entry.value.block) == member).then(|| to_record(entry))
            })
            .collect();
        super::sort_listing(&mut records);
        Ok(records)
    }

    async fn revoke(
        &self,
        fp: &Fingerprint,
        expires_at: SystemTime,
        member: Option<&str>,
    ) -> Result<bool, StoreError> {
        Ok(self.inner.revoke_one(fp, expires_at, None, member).0)
    }

    async fn revoke_member(&self, member_id: &str) -> Result<Vec<TokenRecord>, StoreError> {
        let member = IdRef::parse(member_id);
        let now = SystemTime::now();
        let mut removed: Vec<TokenRecord> = self
            .inner
            .members
            .fingerprints(member)
            .iter()
            // `now` as the floor: the deny entry takes the record's own expiry under its lock. A
            // fingerprint whose record went away meanwhile is still denied for the grace.
            .filter_map(|fp| {
                self.inner
                    .revoke_one(fp, now, Some(member), Some(member_id))
                    .1
            })
            .collect();
        removed.sort_by(|a, b| a.account_id.cmp(&b.account_id));
        Ok(removed)
    }

    fn count(&self) -> u64 {
        // Exact: stripes that may hold a dead record are swept first. In steady state (tokens
        // expiring all the time) that is one pass over every record per scrape, a few ms for a
        // million, taken one stripe lock at a time.
        let now = table::now();
        let inner = &*self.inner;
        inner
            .records
            .each()
            .map(|mut stripe| {
                if stripe.needs_sweep(now) {
                    stripe.sweep_all(now, |entry| inner.unindex(&entry));
                }
                stripe.len() as u64
            })
            .sum()
    }
}

#[cfg(test)]
mod tests;
