//! The start-up check of Redis' `maxmemory-policy`.
//!
//! A revocation must live until its token expires. Redis under memory pressure evicts keys by
//! its `maxmemory-policy`: every `allkeys-*` policy may evict a deny entry, and so may every
//! `volatile-*` policy, because deny entries carry a TTL (they end with their token). An evicted
//! deny entry makes a logged-out token valid again on any replica that (re)loads from Redis —
//! one started later, or one whose check reaches Redis before its first load. Only `noeviction`
//! keeps them: a full Redis then refuses writes, which the gateway answers with 503, rather
//! than forgetting a logout.
//!
//! The check runs once per seed node, in the background, retried until Redis answers; it never
//! stops the gateway. A Redis that refuses `CONFIG` (most managed offerings) cannot be checked,
//! which is logged as a warning.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Client;

use crate::sync::lock;

/// First wait before checking again after Redis could not be reached; doubled up to
/// [`MAX_RETRY`].
const MIN_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// What the check found out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvictionPolicy {
    /// Redis has not been reached yet.
    Unchecked,
    /// `noeviction` on every node checked.
    Safe,
    /// A policy that may evict deny entries, as Redis named it.
    Unsafe(String),
    /// Redis refused `CONFIG GET` (a managed Redis): not known.
    Unknown,
}

/// What one node answered.
enum Answer {
    Policy(String),
    Refused(String),
    Unreachable,
}

/// Checks every node of `clients` until each has answered, then records and logs the verdict
/// in `out`.
pub(super) async fn check(
    clients: Vec<Client>,
    timeout: Duration,
    out: Arc<Mutex<EvictionPolicy>>,
) {
    let mut retry = MIN_RETRY;
    let mut verdict = EvictionPolicy::Safe;
    for client in &clients {
        let answer = loop {
            match policy_of(client, timeout).await {
                Answer::Unreachable => {
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(MAX_RETRY);
                }
                answer => break answer,
            }
        };
        match answer {
            Answer::Policy(policy) if policy == "noeviction" => {}
            Answer::Policy(policy) => {
                tracing::error!(
                    %policy,
                    "Redis maxmemory-policy is {policy}: under memory pressure Redis may evict \
                     revocations (deny entries have a TTL, so volatile-* policies evict them too) \
                     and a logged-out token would be accepted again; set \
                     `maxmemory-policy noeviction`, with which a full Redis refuses writes \
                     (answered 503) instead of forgetting a logout"
                );
                verdict = EvictionPolicy::Unsafe(policy);
                break;
            }
            Answer::Refused(reason) => {
                tracing::warn!(
                    %reason,
                    "could not check Redis maxmemory-policy (CONFIG GET refused); it must be \
                     noeviction, or Redis may evict revocations under memory pressure and a \
                     logged-out token would be accepted again"
                );
                verdict = EvictionPolicy::Unknown;
                break;
            }
            Answer::Unreachable => {}
        }
    }
    if verdict == EvictionPolicy::Safe {
        tracing::debug!("Redis maxmemory-policy is noeviction");
    }
    *lock(&out) = verdict;
}

/// `CONFIG GET maxmemory-policy` on one node.
async fn policy_of(client: &Client, timeout: Duration) -> Answer {
    let ask = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async::<std::collections::HashMap<String, String>>(&mut conn)
            .await
    };
    match tokio::time::timeout(timeout.max(Duration::from_secs(1)), ask).await {
        Ok(Ok(answer)) => match answer.get("maxmemory-policy") {
            Some(policy) => Answer::Policy(policy.clone()),
            None => Answer::Refused("no maxmemory-policy in the answer".to_owned()),
        },
        // The server answered with an error (unknown or renamed command, no permission).
        Ok(Err(error)) if error.code().is_some() => Answer::Refused(error.to_string()),
        Ok(Err(_)) | Err(_) => Answer::Unreachable,
    }
}
