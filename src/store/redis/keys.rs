//! Redis key names, the stored form of a record, and the Lua scripts that keep the store's
//! promises atomically.
//!
//! # Keys (with the default prefix `account-gate:`)
//!
//! | key | type | TTL | holds |
//! |---|---|---|---|
//! | `account-gate:{<fp hex>}:t` | string | the token's remaining life | the record, JSON ([`Wire`]) |
//! | `account-gate:{<fp hex>}:r` | string | remaining life + grace | deny entry: revoked until (unix ms) |
//! | `account-gate:member:<member id>` | set | the member's longest remaining life | fingerprints (hex), a hint |
//! | `account-gate:expiries` | sorted set | none; trimmed as it is counted | fingerprint → expiry, for `store_entries` |
//! | `account-gate:revocations` | sorted set | none; trimmed by each load | every deny entry (`entry.rs`) → its end (unix ms), for the replicas' local deny-lists |
//! | `account-gate:revocations` | pub/sub channel | — | each deny entry as written: `<end> <entry>` |
//! | `account-gate:revoked` | pub/sub channel | — | revoked fingerprints (hex), the format of earlier versions |
//!
//! A fingerprint's record and deny entry share the hash tag `{<fp hex>}`, so they live in one
//! Redis Cluster slot and one script can read and write both atomically. Every other step
//! touches a single key. Only fingerprints are ever written, never tokens.
//!
//! The `revocations` set cannot join the script (another slot), so it is written first: a
//! revocation whose script then fails is over-announced (a replica denies a token Redis does
//! not), never under-announced. Both channels are published, so that during a rolling upgrade
//! replicas of the earlier version keep dropping revoked tokens from their caches.
//!
//! Every one of these keys must survive memory pressure: Redis needs `maxmemory-policy
//! noeviction` (`policy.rs` checks it at start).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Script;
use serde::{Deserialize, Serialize};

use crate::store::{Fingerprint, TokenRecord};

/// Names every key of one gateway fleet (one `key_prefix`).
#[derive(Debug, Clone)]
pub(super) struct Keys {
    prefix: String,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    /// The record of `fp`.
    pub(super) fn record(&self, fp: &Fingerprint) -> String {
        format!("{}{{{}}}:t", self.prefix, fp.to_hex())
    }

    /// The deny entry of `fp`.
    pub(super) fn revoked(&self, fp: &Fingerprint) -> String {
        format!("{}{{{}}}:r", self.prefix, fp.to_hex())
    }

    /// The set of a member's fingerprints.
    pub(super) fn member(&self, member_id: &str) -> String {
        format!("{}member:{member_id}", self.prefix)
    }

    /// The sorted set counted for `store_entries`.
    pub(super) fn expiries(&self) -> String {
        format!("{}expiries", self.prefix)
    }

    /// The revocation channel of earlier versions: bare fingerprints.
    pub(super) fn channel(&self) -> String {
        format!("{}revoked", self.prefix)
    }

    /// The sorted set of every deny entry, for the replicas' loads.
    pub(super) fn revocations(&self) -> String {
        format!("{}revocations", self.prefix)
    }

    /// The channel announcing each deny entry in full.
    pub(super) fn entries_channel(&self) -> String {
        format!("{}revocations", self.prefix)
    }
}

/// A record as stored: short field names, expiry in unix milliseconds. The scripts read `m`
/// and `e`, so those names are a contract with [`REVOKE`].
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Wire {
    /// Member id.
    m: String,
    /// Account id.
    a: String,
    /// Account name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n: Option<String>,
    /// Expiry, unix milliseconds.
    e: u64,
    /// Learned, not issued (absent: issued, as every record written before the flag existed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    l: bool,
}

impl Wire {
    /// The stored form of `record`.
    pub(super) fn encode(record: &TokenRecord) -> String {
        let wire = Wire {
            m: record.member_id.clone(),
            a: record.account_id.clone(),
            n: record.account_name.clone(),
            e: unix_ms(record.expires_at),
            l: record.learned,
        };
        // Serialising a struct of strings and an integer cannot fail.
        serde_json::to_string(&wire).unwrap_or_default()
    }

    /// The record of `fp` from its stored form; `None` if it is not one (another version wrote it).
    pub(super) fn decode(fp: Fingerprint, text: &str) -> Option<TokenRecord> {
        let wire: Wire = serde_json::from_str(text).ok()?;
        Some(TokenRecord {
            fingerprint: fp,
            member_id: wire.m,
            account_id: wire.a,
            account_name: wire.n,
            expires_at: from_unix_ms(wire.e),
            learned: wire.l,
        })
    }
}

/// Milliseconds since the epoch (0 before it).
pub(super) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The instant `ms` milliseconds after the epoch.
pub(super) fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_millis(ms))
        .unwrap_or(UNIX_EPOCH)
}

/// Records a token unless it is denied: the deny check and the write are one step.
///
/// `KEYS[1]` record, `KEYS[2]` deny entry; `ARGV[1]` the record's JSON, `ARGV[2]` its TTL in ms.
/// Returns 1 if stored, 0 if refused.
pub(super) const RECORD: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

/// Revokes one fingerprint: writes (or extends) the deny entry, then deletes the record, then
/// announces the entry — one atomic step, so no `RECORD` can slip in between.
///
/// `KEYS[1]` record, `KEYS[2]` deny entry; `ARGV[1]` the token's expiry (unix ms, the floor of
/// the deny entry), `ARGV[2]` now (unix ms, the gateway's clock, like every TTL here),
/// `ARGV[3]` grace (ms), `ARGV[4]` the member the record must belong to (`''`: any),
/// `ARGV[5]` the channel of bare fingerprints, `ARGV[6]` the fingerprint (hex), `ARGV[7]` the
/// channel of entries, `ARGV[8]` the entry as in the `revocations` set (`entry.rs`).
/// Returns `{newly denied (0/1), removed record JSON or nil, end of the deny entry (unix ms;
/// 0 when the token is past its expiry plus the grace and needs none)}`.
pub(super) const REVOKE: &str = r"
local until_ms = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local record = redis.call('GET', KEYS[1])
if record then
  local ok, decoded = pcall(cjson.decode, record)
  if ARGV[4] ~= '' and not (ok and decoded.m == ARGV[4]) then
    record = false
  elseif ok and tonumber(decoded.e) and tonumber(decoded.e) > until_ms then
    until_ms = tonumber(decoded.e)
  end
end
local ttl = until_ms + tonumber(ARGV[3]) - now
local newly = 0
local end_ms = 0
if ttl > 0 then
  local current = redis.call('PTTL', KEYS[2])
  if current == -2 then
    newly = 1
  end
  end_ms = now + ttl
  if current ~= -1 and current < ttl then
    redis.call('SET', KEYS[2], string.format('%d', until_ms), 'PX', string.format('%d', ttl))
  elseif current > ttl then
    end_ms = now + current
  end
end
if record then
  redis.call('DEL', KEYS[1])
end
if end_ms > 0 then
  redis.call('PUBLISH', ARGV[7], string.format('%d %s', end_ms, ARGV[8]))
end
if newly == 1 or record then
  redis.call('PUBLISH', ARGV[5], ARGV[6])
end
return { newly, record, end_ms }
";

/// The two scripts, hashed once.
pub(super) struct Scripts {
    pub(super) record: Script,
    pub(super) revoke: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Scripts {
            record: Script::new(RECORD),
            revoke: Script::new(REVOKE),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprints_keys_share_one_hash_tag() {
        let keys = Keys::new("p:");
        let fp = Fingerprint::of("t");
        let tag = format!("{{{}}}", fp.to_hex());
        assert_eq!(keys.record(&fp), format!("p:{tag}:t"));
        assert_eq!(keys.revoked(&fp), format!("p:{tag}:r"));
        assert_eq!(keys.channel(), "p:revoked");
        assert_eq!(keys.revocations(), "p:revocations");
        assert_eq!(keys.entries_channel(), "p:revocations");
    }

    #[test]
    fn wire_round_trip_keeps_millisecond_expiry() {
        let fp = Fingerprint::of("t");
        let record = TokenRecord {
            fingerprint: fp,
            member_id: "m".into(),
            account_id: "a".into(),
            account_name: None,
            expires_at: from_unix_ms(1_900_000_000_123),
            learned: false,
        };
        let text = Wire::encode(&record);
        assert!(!text.contains("\"n\""), "{text}");
        assert!(!text.contains("\"l\""), "{text}");
        assert_eq!(Wire::decode(fp, &text), Some(record.clone()));
        let learned = TokenRecord {
            learned: true,
            ..record
        };
        assert_eq!(Wire::decode(fp, &Wire::encode(&learned)), Some(learned));
        assert_eq!(Wire::decode(fp, "garbage"), None);
    }
}
