//! Sections whose file form is also their internal form: no conversion is needed, so one struct
//! serves both, with its defaults written once in its `Default` impl.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::signup::Mechanism;

/// `[signup]`: the token endpoint and what a token request must satisfy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignupConfig {
    /// Path of the token endpoint. Default `/v2/account-members/tokens`.
    pub path: String,
    /// Mechanisms accepted; the others get 400 `mechanism_disabled`. Default: all five.
    pub mechanisms: Vec<Mechanism>,
    /// Whether `username` must look like an e-mail address. Default false.
    pub username_must_be_email: bool,
    /// Minimum password length for `self_signup`, in characters; 0 is off. Default 0.
    pub min_password_length: usize,
    /// Largest `201` answer copied to learn its tokens; larger ones pass through unlearnt.
    /// Default 1 MiB.
    pub max_response_bytes: usize,
}

impl Default for SignupConfig {
    fn default() -> Self {
        SignupConfig {
            path: "/v2/account-members/tokens".to_owned(),
            mechanisms: Mechanism::ALL.to_vec(),
            username_must_be_email: false,
            min_password_length: 0,
            max_response_bytes: 1024 * 1024,
        }
    }
}

/// `[rate_limit]`: token requests allowed per window; 0 turns one limit off.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Length of a counting window. Default `60s`.
    #[serde(with = "super::file::duration")]
    pub window: Duration,
    /// Sign-ups per client IP per window. Default 100.
    pub signup_per_ip: u32,
    /// Sign-ups per username per window. Default 10.
    pub signup_per_username: u32,
    /// Logins (every other mechanism) per client IP per window. Default 100.
    pub login_per_ip: u32,
    /// Logins per username per window. Default 10.
    pub login_per_username: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            window: Duration::from_secs(60),
            signup_per_ip: 100,
            signup_per_username: 10,
            login_per_ip: 100,
            login_per_username: 10,
        }
    }
}

/// `[store]`: where issued tokens are recorded.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `memory`: in this process. Default `memory`.
    pub backend: StoreBackend,
    /// Most token records held; the least recently used are evicted beyond. Each costs about
    /// 1 KiB of memory (measured: `benches/store_memory.rs`). Default 100 000.
    pub max_entries: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::Memory,
            max_entries: 100_000,
        }
    }
}

/// Store backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// moka, in this process.
    Memory,
}

/// `[tokens]`: how account tokens travel.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokensConfig {
    /// Header carrying the account token (case-insensitive).
    /// Default `EP-Account-Management-Authentication-Token`.
    pub header: String,
}

impl Default for TokensConfig {
    fn default() -> Self {
        TokensConfig {
            header: "EP-Account-Management-Authentication-Token".to_owned(),
        }
    }
}
