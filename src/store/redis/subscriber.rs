//! The revocation subscriber: one task per replica listening on both revocation channels.
//!
//! - A full entry (the `revocations` channel, see `entry.rs`) goes into the local replica of
//!   the deny-list.
//! - A bare fingerprint (the `revoked` channel: every replica publishes it, and replicas of
//!   earlier versions publish only that) drops the fingerprint from the L1 and is passed on (to
//!   the verifier's cache, through
//!   [`RedisStore::revocation_events`](super::RedisStore::revocation_events)). A revocation the
//!   replica did not hear of in full (an earlier version's) is then read from its deny key.
//!
//! When the subscription is lost it reconnects with a capped backoff, trying the next seed node
//! in cluster mode (a cluster delivers every `PUBLISH` to subscribers on any node). Once
//! subscribed again it clears the L1 and asks for a resync of the replica, because messages
//! published meanwhile are gone. Until then the L1 keeps answering (that is what keeps a replica
//! serving while Redis is down), each entry for at most `l1_ttl`, and the replica keeps every
//! entry it holds. A ping every second notices a connection that died without closing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::Client;
use tokio::sync::broadcast;

use super::conn::Pool;
use super::entry::DenyEntry;
use super::l1::L1;
use super::replica::{learn_old_revocation, Replica};
use crate::store::Fingerprint;

/// First wait before resubscribing; doubled per failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How often the subscription connection is pinged.
const PING_EVERY: Duration = Duration::from_secs(1);

/// Everything the task needs; owns no handle to the store, so dropping the store ends nothing
/// but the task's abort handle does (see `RedisStore`).
pub(super) struct Subscriber {
    /// One client per seed node (one in single-node mode).
    pub(super) clients: Vec<Client>,
    /// The channel of full entries.
    pub(super) entries_channel: String,
    /// The channel of bare fingerprints.
    pub(super) channel: String,
    pub(super) l1: L1,
    pub(super) events: broadcast::Sender<Fingerprint>,
    /// Whether the subscription is live now (for tests and readiness detail).
    pub(super) subscribed: Arc<AtomicBool>,
    /// Bound of connecting, subscribing and of each ping.
    pub(super) timeout: Duration,
    /// The local deny-list.
    pub(super) replica: Arc<Replica>,
    /// To read the deny key of a revocation announced in the old format.
    pub(super) pool: Arc<Pool>,
    /// `store.key_prefix`, for that deny key.
    pub(super) keys: super::keys::Keys,
    /// How long a deny entry outlives its token.
    pub(super) grace: Duration,
}

impl Subscriber {
    /// Listens until the task is aborted.
    pub(super) async fn run(self) {
        let mut backoff = MIN_BACKOFF;
        let mut node = 0usize;
        loop {
            let client = &self.clients[node % self.clients.len().max(1)];
            match self.session(client).await {
                // It was up: start the backoff afresh.
                Ok(()) => backoff = MIN_BACKOFF,
                Err(error) => {
                    tracing::debug!(%error, "revocation subscription failed");
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            if self.subscribed.swap(false, Ordering::SeqCst) {
                tracing::warn!("revocation subscription lost; reconnecting");
            }
            node = node.wrapping_add(1);
            tokio::time::sleep(backoff).await;
        }
    }

    /// One subscription, from connect until it is lost. `Ok` if it was established.
    async fn session(&self, client: &Client) -> Result<(), String> {
        let bound = self.timeout.max(Duration::from_millis(500));
        let mut pubsub = tokio::time::timeout(bound, client.get_async_pubsub())
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let channels = [self.entries_channel.as_str(), self.channel.as_str()];
        tokio::time::timeout(bound, pubsub.subscribe(&channels))
            .await
            .map_err(|_| "subscribe timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        // Whatever was published while we were not listening is lost: forget what we cached.
        self.l1.clear();
        self.subscribed.store(true, Ordering::SeqCst);
        self.replica.subscribed_again();
        tracing::info!(channel = %self.entries_channel, "subscribed to revocations");

        let (mut sink, mut stream) = pubsub.split();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = stream.next() => {
                    let Some(message) = message else {
                        return Ok(());
                    };
                    let payload: String = message.get_payload().unwrap_or_default();
                    if message.get_channel_name() == self.entries_channel {
                        self.entry(&payload);
                    } else {
                        self.revoked(&payload);
                    }
                }
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(bound, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Handles a full entry: into the replica, out of the L1.
    fn entry(&self, payload: &str) {
        let Some(entry) = DenyEntry::from_message(payload) else {
            tracing::debug!("ignoring a malformed revocation entry");
            return;
        };
        self.replica.apply(&entry);
        self.l1.invalidate(&entry.fp);
    }

    /// Handles a bare fingerprint in hex. Anything else is ignored (and cannot be a token: only
    /// fingerprints are published).
    fn revoked(&self, payload: &str) {
        let Some(fp) = Fingerprint::from_hex(payload.trim()) else {
            tracing::debug!("ignoring a malformed revocation message");
            return;
        };
        self.l1.invalidate(&fp);
        // A replica of this version announced the entry first, on the other channel; one of an
        // earlier version did not, and its deny key is the only place to learn the end from.
        if !self.replica.deny().is_denied(&fp) {
            tokio::spawn(learn_old_revocation(
                self.replica.clone(),
                self.pool.clone(),
                self.keys.revoked(&fp),
                fp,
                self.grace,
            ));
        }
        // No receiver (no verifier) is fine.
        let _ = self.events.send(fp);
    }
}
