//! Checks of `[store]`: the Redis backend's URL, password reference, timeouts and L1 bounds.

use std::ffi::OsString;
use std::time::Duration;

use super::error::Report;
use super::{StoreBackend, StoreConfig};

/// Longest `command_timeout`: a call that waits longer than this for Redis holds a request far
/// past any client's patience.
const MAX_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest `l1_ttl`: a replica cut off from the revocation channel may accept a revoked token
/// for this long, so it must stay short.
const MAX_L1_TTL: Duration = Duration::from_secs(60);
/// Most `max_revoked_per_member`: one member's entries are searched in a list.
const MAX_REVOKED_PER_MEMBER: usize = 10_000;
/// Bounds of `revocation_resync`: each resync reads every revocation (a second's work per
/// million), so not more often than a second; a lost message may go unheard this long, so not
/// rarer than an hour.
const MIN_REVOCATION_RESYNC: Duration = Duration::from_secs(1);
const MAX_REVOCATION_RESYNC: Duration = Duration::from_secs(60 * 60);
/// Most Redis connections per replica.
const MAX_POOL_SIZE: usize = 64;

/// Records every problem of `[store]` in `report`.
pub(super) fn validate_store(
    store: &StoreConfig,
    lookup: &dyn Fn(&str) -> Option<OsString>,
    report: &mut Report,
) {
    if store.max_entries == 0 {
        report.invalid("store.max_entries", "must be at least 1");
    }
    if store.redis_pool_size == 0 || store.redis_pool_size > MAX_POOL_SIZE {
        report.invalid(
            "store.redis_pool_size",
            format!(
                "must be between 1 and {MAX_POOL_SIZE}, got {}",
                store.redis_pool_size
            ),
        );
    }
    if store.command_timeout.is_zero() || store.command_timeout > MAX_COMMAND_TIMEOUT {
        report.invalid("store.command_timeout", "must be between 1ms and 60s");
    }
    if store.l1_ttl > MAX_L1_TTL {
        report.invalid(
            "store.l1_ttl",
            "must be at most 60s (0s turns the L1 cache off)",
        );
    }
    if store.max_revoked_per_member == 0 || store.max_revoked_per_member > MAX_REVOKED_PER_MEMBER {
        report.invalid(
            "store.max_revoked_per_member",
            format!("must be between 1 and {MAX_REVOKED_PER_MEMBER}"),
        );
    }
    if !(MIN_REVOCATION_RESYNC..=MAX_REVOCATION_RESYNC).contains(&store.revocation_resync) {
        report.invalid("store.revocation_resync", "must be between 1s and 1h");
    }
    if store.l1_max_entries == 0 {
        report.invalid("store.l1_max_entries", "must be at least 1");
    }
    // Hash tags (`{…}`) decide a key's Redis Cluster slot; a brace in the prefix would move them.
    if store.key_prefix.is_empty()
        || store
            .key_prefix
            .contains(|c: char| c == '{' || c == '}' || c.is_whitespace() || c.is_control())
    {
        report.invalid(
            "store.key_prefix",
            format!(
                "must be non-empty, without braces or whitespace, got {:?}",
                store.key_prefix
            ),
        );
    }
    let password = match (&store.redis_password_env, &store.redis_password_file) {
        (Some(_), Some(_)) => {
            report.invalid(
                "store",
                "redis_password_env and redis_password_file are both set; set one of them",
            );
            None
        }
        (Some(name), None) if name.is_empty() || name.contains(['=', '\0']) => {
            report.invalid(
                "store.redis_password_env",
                format!("{name:?} is not an environment variable name"),
            );
            None
        }
        _ => store.redis_password(),
    };

    match (&store.redis_url, store.backend) {
        (None, StoreBackend::Redis) => report.missing("store.redis_url"),
        (None, StoreBackend::Memory) => {}
        (Some(urls), backend) => {
            if let Err(reason) = check_redis_urls(urls, store.redis_cluster) {
                report.invalid("store.redis_url", reason);
            } else if backend == StoreBackend::Memory {
                report.warn("store.redis_url", "ignored: store.backend is \"memory\"");
            }
        }
    }
    if let (Some(secret), StoreBackend::Redis) = (password, store.backend) {
        if let Err(e) = secret.resolve_with(lookup) {
            let key = match secret {
                super::SecretRef::Env(_) => "store.redis_password_env",
                super::SecretRef::File(_) => "store.redis_password_file",
            };
            report.warn(key, e);
        }
    }
}

/// Checks the URL (or, for a cluster, each seed node's URL). Never echoes a URL, which could
/// carry a password.
fn check_redis_urls(urls: &str, cluster: bool) -> Result<(), String> {
    let nodes: Vec<&str> = urls.split(',').map(str::trim).collect();
    if nodes.len() > 1 && !cluster {
        return Err("lists several URLs; that is only for store.redis_cluster = true".to_owned());
    }
    for (index, node) in nodes.iter().enumerate() {
        let which = if nodes.len() > 1 {
            format!("URL {} ", index + 1)
        } else {
            String::new()
        };
        let Some(url) = redis::parse_redis_url(node) else {
            return Err(format!(
                "{which}is not a Redis URL (expected e.g. \"redis://redis:6379\" or \"rediss://redis:6380/0\")"
            ));
        };
        if !matches!(url.scheme(), "redis" | "rediss") {
            return Err(format!("{which}must start with redis:// or rediss://"));
        }
        if url.password().is_some() {
            return Err(format!(
                "{which}must not contain a password; use store.redis_password_env or store.redis_password_file"
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("{which}has no host"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls() {
        for ok in [
            "redis://127.0.0.1:6379",
            "rediss://redis.example:6380/2",
            "redis://user@h",
        ] {
            assert_eq!(check_redis_urls(ok, false), Ok(()), "{ok}");
        }
        assert!(check_redis_urls("redis://a:1, redis://b:2", true).is_ok());
        for bad in [
            "http://h",
            "redis://:secret@h",
            "not a url",
            "redis://a:1,redis://b:2",
        ] {
            let err = check_redis_urls(bad, false).unwrap_err();
            assert!(!err.contains("secret"), "{err}");
        }
    }
}
