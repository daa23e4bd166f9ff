//! Reading the upstream's `201` answer to a token request: one record per issued token.

use std::borrow::Cow;
use std::time::{Duration, UNIX_EPOCH};

use serde::Deserialize;

use super::Text;
use crate::store::{Fingerprint, TokenRecord};
use crate::token::claims;

/// Why a `201` body taught the gateway nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LearnError {
    #[error("the answer is not the JSON:API token document")]
    Shape,
    #[error("an issued token has no member id in meta or in its claims")]
    NoMember,
    #[error("an issued token has no expiry in `expires` or in its claims")]
    NoExpiry,
}

// What is only read (the token, which is fingerprinted and perhaps peeked at, its expiry and the
// member id, copied into each record) is borrowed from the body when it has no escapes; what a
// record keeps as it is (the account's id and name) is read into its own `String` once.
#[derive(Deserialize)]
struct Issued<'a> {
    #[serde(borrow)]
    data: Vec<IssuedToken<'a>>,
    #[serde(default, borrow)]
    meta: Option<IssuedMeta<'a>>,
}

#[derive(Deserialize)]
struct IssuedMeta<'a> {
    #[serde(default, borrow)]
    account_member_id: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct IssuedToken<'a> {
    #[serde(borrow)]
    token: Cow<'a, str>,
    account_id: String,
    #[serde(default)]
    account_name: Option<String>,
    #[serde(default, borrow)]
    expires: Option<Text<'a>>,
}

/// The records to store for a `201` body. All or nothing: a body with one unusable entry
/// records none, since it is not the document the gateway understands.
pub fn records(body: &[u8]) -> Result<Vec<TokenRecord>, LearnError> {
    let issued: Issued = serde_json::from_slice(body).map_err(|_| LearnError::Shape)?;
    let meta_member = issued.meta.and_then(|m| m.account_member_id);
    issued
        .data
        .into_iter()
        .map(|entry| {
            // The token's own claims are read only for what the answer leaves out.
            let peeked = std::cell::OnceCell::new();
            let claims = || peeked.get_or_init(|| claims::peek(&entry.token).unwrap_or_default());
            let member_id = meta_member
                .as_ref()
                .map(|member| &*member.0)
                .or_else(|| claims().member_id())
                .ok_or(LearnError::NoMember)?
                .to_owned();
            let expires_at = entry
                .expires
                .as_ref()
                .and_then(|e| humantime::parse_rfc3339_weak(&e.0).ok())
                .or_else(|| {
                    let secs = u64::try_from(claims().expires_at()?).ok()?;
                    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
                })
                .ok_or(LearnError::NoExpiry)?;
            Ok(TokenRecord {
                fingerprint: Fingerprint::of(&entry.token),
                member_id,
                account_id: entry.account_id,
                account_name: entry.account_name,
                expires_at,
                learned: false,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_answer_gives_two_records() {
        let seed = include_str!("../../tests/corpus/seed-201.json");
        let records = records(seed.as_bytes()).unwrap();
        assert_eq!(records.len(), 2);
        // No meta.account_member_id in the seed: the member comes from each token's `sub`.
        assert_eq!(records[0].member_id, "1c45e4ec-26e0-4043-86e4-c15b9cf985a2");
        assert_eq!(
            records[1].account_id,
            "87acbe78-921f-4a25-84db-09dc276754ba"
        );
        assert_eq!(records[0].account_name.as_deref(), Some("acc-name-1"));
        assert_eq!(
            records[0].expires_at,
            humantime::parse_rfc3339("2021-03-16T19:36:11.070Z").unwrap()
        );
    }

    #[test]
    fn escaped_strings_are_read_as_their_text() {
        let plain = br#"{"meta":{"account_member_id":"m-1"},"data":[{"token":"a.b.c","account_id":"acc","expires":"2031-03-16T19:36:11Z"}]}"#;
        let escaped = br#"{"meta":{"account_member_id":"m\u002d1"},"data":[{"token":"a.b\u002ec","account_id":"acc","expires":"2031-03-16T19:36:11\u005a"}]}"#;
        let plain = records(plain).unwrap();
        let escaped = records(escaped).unwrap();
        assert_eq!(escaped[0].fingerprint, plain[0].fingerprint);
        assert_eq!(escaped[0].member_id, "m-1");
        assert_eq!(escaped[0].expires_at, plain[0].expires_at);
    }

    #[test]
    fn other_shapes_teach_nothing() {
        assert_eq!(records(b"not json"), Err(LearnError::Shape));
        assert_eq!(records(br#"{"data":{}}"#), Err(LearnError::Shape));
        assert_eq!(
            records(br#"{"data":[{"token":"x","account_id":"a"}]}"#),
            Err(LearnError::NoMember)
        );
    }
}
