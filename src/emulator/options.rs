//! What an emulator instance is configured with: identities, secrets, lifetimes and the
//! capacity limits that keep it bounded in memory under benchmark load.

use std::fmt;
use std::time::Duration;

/// Store id stamped into every account token by a default emulator.
pub const DEMO_STORE_ID: &str = "7c1d5c4e-0a8f-4b5e-9d5a-3f2b1e6c8a01";
/// Authentication realm id of a default emulator.
pub const DEMO_REALM_ID: &str = "2f9e4a7b-6c3d-4e8f-a1b2-c3d4e5f60718";
/// The one password profile a default emulator knows.
pub const DEMO_PASSWORD_PROFILE_ID: &str = "c5687352-d102-46fd-b85e-256f10574019";
/// HS256 secret a default emulator signs account tokens with; demo and tests only.
pub const DEMO_SIGNING_SECRET: &[u8] = b"account-gate-demo-signing-secret-not-for-production";
/// OAuth client id a default emulator accepts for both grants.
pub const DEMO_CLIENT_ID: &str = "demo-client-id";
/// OAuth client secret a default emulator accepts for `client_credentials`.
pub const DEMO_CLIENT_SECRET: &str = "demo-client-secret";

/// Everything an emulator needs; `Default` gives the demo store.
///
/// `Debug` redacts the signing secret and the client secret, so options can be logged.
#[derive(Clone)]
pub struct EmulatorOptions {
    /// HS256 key for account tokens; a gateway in `signature` mode must be given the same one.
    pub signing_secret: Vec<u8>,
    /// Lifetime of account tokens (the real API uses 24 h).
    pub token_lifetime: Duration,
    /// `store_id` claim of issued tokens.
    pub store_id: String,
    /// `realm_id` claim, and the realm the OTP endpoint answers for.
    pub realm_id: String,
    /// The only password profile accepted by password-based mechanisms.
    pub password_profile_id: String,
    /// OAuth client id accepted by both grants.
    pub client_id: String,
    /// OAuth client secret required by `client_credentials`.
    pub client_secret: String,
    /// Lifetime of store access tokens (`expires_in`; the real API uses one hour).
    pub access_token_lifetime: Duration,
    /// Lifetime of one-time passwords for passwordless login.
    pub otp_lifetime: Duration,
    /// Cap on account members; sign-ups beyond it are answered 503.
    pub max_members: usize,
    /// Cap on accounts; creating more is answered 503.
    pub max_accounts: usize,
    /// Cap on accounts one member may belong to, which bounds a login response.
    pub max_accounts_per_member: usize,
    /// Cap on live access tokens; expired ones are evicted first, then 503.
    pub max_access_tokens: usize,
    /// Cap on pending one-time passwords; expired ones are evicted first, then 503.
    pub max_otps: usize,
    /// Largest request body read; larger ones are answered 413.
    pub max_body_bytes: usize,
    /// How long shutdown waits for in-flight requests before dropping connections.
    pub drain_timeout: Duration,
}

impl fmt::Debug for EmulatorOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmulatorOptions")
            .field("signing_secret", &"<redacted>")
            .field("token_lifetime", &self.token_lifetime)
            .field("store_id", &self.store_id)
            .field("realm_id", &self.realm_id)
            .field("password_profile_id", &self.password_profile_id)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("access_token_lifetime", &self.access_token_lifetime)
            .field("otp_lifetime", &self.otp_lifetime)
            .field("max_members", &self.max_members)
            .field("max_accounts", &self.max_accounts)
            .field("max_accounts_per_member", &self.max_accounts_per_member)
            .field("max_access_tokens", &self.max_access_tokens)
            .field("max_otps", &self.max_otps)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("drain_timeout", &self.drain_timeout)
            .finish()
    }
}

impl Default for EmulatorOptions {
    fn default() -> Self {
        Self {
            signing_secret: DEMO_SIGNING_SECRET.to_vec(),
            token_lifetime: Duration::from_secs(24 * 60 * 60),
            store_id: DEMO_STORE_ID.to_owned(),
            realm_id: DEMO_REALM_ID.to_owned(),
            password_profile_id: DEMO_PASSWORD_PROFILE_ID.to_owned(),
            client_id: DEMO_CLIENT_ID.to_owned(),
            client_secret: DEMO_CLIENT_SECRET.to_owned(),
            access_token_lifetime: Duration::from_secs(60 * 60),
            otp_lifetime: Duration::from_secs(10 * 60),
            max_members: 100_000,
            max_accounts: 200_000,
            max_accounts_per_member: 100,
            max_access_tokens: 100_000,
            max_otps: 10_000,
            max_body_bytes: 1024 * 1024,
            drain_timeout: Duration::from_secs(5),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_secrets() {
        let printed = format!("{:?}", EmulatorOptions::default());
        assert!(!printed.contains(DEMO_CLIENT_SECRET), "{printed}");
        assert!(!printed.contains("not-for-production"), "{printed}");
        assert!(printed.contains(DEMO_CLIENT_ID), "{printed}");
    }
}
