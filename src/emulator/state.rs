//! The emulator's in-memory world: members, accounts, store access tokens and one-time
//! passwords, every table capped so a long benchmark cannot grow it without bound.
//!
//! One mutex guards the tables; it is never held across an `.await`, and handlers only call
//! the short operations below, so contention stays trivial next to the socket work.

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::counters::RequestCounters;
use super::error::ApiError;
use super::jwt::{format_expires, unix_now};
use super::options::EmulatorOptions;
use crate::sync::lock;

/// Which OAuth grant minted a store access token; some routes need `client_credentials`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GrantKind {
    Implicit,
    ClientCredentials,
}

impl GrantKind {
    /// The `identifier` the token endpoint reports for this grant.
    pub(crate) fn identifier(self) -> &'static str {
        match self {
            Self::Implicit => "implicit",
            Self::ClientCredentials => "client_credentials",
        }
    }
}

/// A store access token, remembered by fingerprint so the table holds nothing replayable.
struct AccessGrant {
    kind: GrantKind,
    expires_at: i64,
}

/// An account member; password members have a username, OIDC members do not.
struct Member {
    name: String,
    email: String,
    /// Salted SHA-256 of the password; the emulator never keeps a password itself.
    password_digest: Option<[u8; 32]>,
    /// Account ids in membership order, which is the order tokens are returned in.
    accounts: Vec<String>,
}

/// A pending one-time password; a new request replaces the previous one.
struct Otp {
    code: String,
    expires_at: i64,
}

/// An account as the read endpoints return it.
#[derive(Debug, Clone)]
pub(crate) struct AccountView {
    pub id: String,
    pub name: String,
    pub legal_name: String,
    pub created_at: String,
}

/// An account member as the read endpoint returns it.
#[derive(Debug, Clone)]
pub(crate) struct MemberView {
    pub id: String,
    pub name: String,
    pub email: String,
}

/// The tables behind the mutex.
#[derive(Default)]
struct Tables {
    members: HashMap<String, Member>,
    /// Username → member id, within the single configured password profile.
    by_username: HashMap<String, String>,
    /// OIDC authorization code → member id, so the same code always logs in the same member.
    by_oidc_code: HashMap<String, String>,
    accounts: HashMap<String, AccountView>,
    access_tokens: HashMap<[u8; 32], AccessGrant>,
    /// Username → pending OTP.
    otps: HashMap<String, Otp>,
}

/// Shared state of one emulator: options, tables and counters.
pub(crate) struct State {
    pub opts: EmulatorOptions,
    /// Base of the `links` URLs, e.g. `http://127.0.0.1:PORT`.
    pub base_url: String,
    /// Request counts, public so the handle can answer `requests`/`requests_to`.
    pub counters: RequestCounters,
    tables: Mutex<Tables>,
}

fn fingerprint(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn password_digest(member_id: &str, password: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(member_id.as_bytes());
    hasher.update([0]);
    hasher.update(password.as_bytes());
    hasher.finalize().into()
}

/// A fresh opaque store access token: 128 random bits twice, hex.
fn opaque_token() -> String {
    format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
}

fn six_digits() -> String {
    format!("{:06}", Uuid::new_v4().as_u128() % 1_000_000)
}

impl State {
    /// Empty state for `opts`, with `links` pointing at `base_url`.
    pub(crate) fn new(opts: EmulatorOptions, base_url: String) -> Self {
        Self {
            opts,
            base_url,
            counters: RequestCounters::default(),
            tables: Mutex::new(Tables::default()),
        }
    }

    /// Mints and remembers a store access token; returns it with its expiry (unix seconds).
    pub(crate) fn issue_access_token(&self, kind: GrantKind) -> Result<(String, i64), ApiError> {
        let now = unix_now();
        let lifetime = i64::try_from(self.opts.access_token_lifetime.as_secs()).unwrap_or(i64::MAX);
        let expires_at = now.saturating_add(lifetime);
        let token = opaque_token();
        let mut tables = lock(&self.tables);
        if tables.access_tokens.len() >= self.opts.max_access_tokens {
            tables
                .access_tokens
                .retain(|_, grant| grant.expires_at > now);
        }
        if tables.access_tokens.len() >= self.opts.max_access_tokens {
            return Err(ApiError::Full {
                what: "access token",
                limit: self.opts.max_access_tokens,
            });
        }
        let grant = AccessGrant { kind, expires_at };
        tables.access_tokens.insert(fingerprint(&token), grant);
        Ok((token, expires_at))
    }

    /// The grant of a live access token, or `None` if unknown or expired.
    pub(crate) fn access_grant(&self, token: &str) -> Option<GrantKind> {
        let tables = lock(&self.tables);
        let grant = tables.access_tokens.get(&fingerprint(token))?;
        (grant.expires_at > unix_now()).then_some(grant.kind)
    }

    /// Creates a password member with one account named after them; returns the member id.
    pub(crate) fn sign_up(
        &self,
        username: &str,
        password: &str,
        name: &str,
        email: &str,
    ) -> Result<String, ApiError> {
        let mut tables = lock(&self.tables);
        if tables.by_username.contains_key(username) {
            return Err(ApiError::Conflict(format!(
                "an account member with username {username} already exists"
            )));
        }
        let member_id = self.insert_member_with_account(&mut tables, name, email)?;
        if let Some(member) = tables.members.get_mut(&member_id) {
            member.password_digest = Some(password_digest(&member_id, password));
        }
        tables
            .by_username
            .insert(username.to_owned(), member_id.clone());
        Ok(member_id)
    }

    /// The member whose username and password match.
    pub(crate) fn check_password(
        &self,
        username: &str,
        password: &str,
    ) -> Result<String, ApiError> {
        let tables = lock(&self.tables);
        let refused = || ApiError::Unauthorized("invalid username or password".to_owned());
        let member_id = tables.by_username.get(username).ok_or_else(refused)?;
        let member = tables.members.get(member_id).ok_or_else(refused)?;
        match member.password_digest {
            Some(digest) if digest == password_digest(member_id, password) => Ok(member_id.clone()),
            _ => Err(refused()),
        }
    }

    /// The member an OIDC authorization code identifies, created with one account on first use.
    pub(crate) fn oidc_member(&self, code: &str) -> Result<String, ApiError> {
        let mut tables = lock(&self.tables);
        if let Some(member_id) = tables.by_oidc_code.get(code) {
            return Ok(member_id.clone());
        }
        let email = format!("{code}@oidc.emulator.invalid");
        let member_id = self.insert_member_with_account(&mut tables, code, &email)?;
        tables
            .by_oidc_code
            .insert(code.to_owned(), member_id.clone());
        Ok(member_id)
    }

    fn insert_member_with_account(
        &self,
        tables: &mut Tables,
        name: &str,
        email: &str,
    ) -> Result<String, ApiError> {
        if tables.members.len() >= self.opts.max_members {
            return Err(ApiError::Full {
                what: "account member",
                limit: self.opts.max_members,
            });
        }
        let account = self.insert_account(tables, name, name)?;
        let member_id = Uuid::new_v4().to_string();
        let member = Member {
            name: name.to_owned(),
            email: email.to_owned(),
            password_digest: None,
            accounts: vec![account.id],
        };
        tables.members.insert(member_id.clone(), member);
        Ok(member_id)
    }

    /// Creates a pending OTP for `username`; unknown usernames get none, like the real API,
    /// which answers 202 either way so the endpoint cannot be used to enumerate members.
    pub(crate) fn request_otp(&self, username: &str) -> Result<(), ApiError> {
        let now = unix_now();
        let lifetime = i64::try_from(self.opts.otp_lifetime.as_secs()).unwrap_or(i64::MAX);
        let mut tables = lock(&self.tables);
        if !tables.by_username.contains_key(username) {
            return Ok(());
        }
        if !tables.otps.contains_key(username) && tables.otps.len() >= self.opts.max_otps {
            tables.otps.retain(|_, otp| otp.expires_at > now);
            if tables.otps.len() >= self.opts.max_otps {
                return Err(ApiError::Full {
                    what: "one-time password",
                    limit: self.opts.max_otps,
                });
            }
        }
        let otp = Otp {
            code: six_digits(),
            expires_at: now.saturating_add(lifetime),
        };
        tables.otps.insert(username.to_owned(), otp);
        Ok(())
    }

    /// The member `username` if `code` is their live OTP; a match consumes it.
    pub(crate) fn redeem_otp(&self, username: &str, code: &str) -> Result<String, ApiError> {
        let mut tables = lock(&self.tables);
        let live = tables
            .otps
            .get(username)
            .is_some_and(|otp| otp.code == code && otp.expires_at > unix_now());
        let member_id = tables.by_username.get(username).cloned();
        match member_id {
            Some(member_id) if live => {
                tables.otps.remove(username);
                Ok(member_id)
            }
            _ => Err(ApiError::Unauthorized(
                "invalid username or one-time password".to_owned(),
            )),
        }
    }

    /// The most recent pending OTP of `username`.
    pub(crate) fn last_otp(&self, username: &str) -> Option<String> {
        lock(&self.tables)
            .otps
            .get(username)
            .map(|otp| otp.code.clone())
    }

    /// `(account id, account name)` for each account of a member, in membership order.
    pub(crate) fn member_accounts(&self, member_id: &str) -> Option<Vec<(String, String)>> {
        let tables = lock(&self.tables);
        let member = tables.members.get(member_id)?;
        let accounts = member
            .accounts
            .iter()
            .filter_map(|id| tables.accounts.get(id))
            .map(|account| (account.id.clone(), account.name.clone()))
            .collect();
        Some(accounts)
    }

    /// Creates an account with no members.
    pub(crate) fn create_account(
        &self,
        name: &str,
        legal_name: &str,
    ) -> Result<AccountView, ApiError> {
        let mut tables = lock(&self.tables);
        self.insert_account(&mut tables, name, legal_name)
    }

    fn insert_account(
        &self,
        tables: &mut Tables,
        name: &str,
        legal_name: &str,
    ) -> Result<AccountView, ApiError> {
        if tables.accounts.len() >= self.opts.max_accounts {
            return Err(ApiError::Full {
                what: "account",
                limit: self.opts.max_accounts,
            });
        }
        let account = AccountView {
            id: Uuid::new_v4().to_string(),
            name: name.to_owned(),
            legal_name: legal_name.to_owned(),
            created_at: format_expires(unix_now()),
        };
        tables.accounts.insert(account.id.clone(), account.clone());
        Ok(account)
    }

    /// Makes `member_id` a member of `account_id`.
    pub(crate) fn add_membership(&self, account_id: &str, member_id: &str) -> Result<(), ApiError> {
        let mut tables = lock(&self.tables);
        if !tables.accounts.contains_key(account_id) {
            return Err(ApiError::NotFound(format!(
                "account {account_id} not found"
            )));
        }
        let limit = self.opts.max_accounts_per_member;
        let Some(member) = tables.members.get_mut(member_id) else {
            return Err(ApiError::invalid(
                "/data/account_member_id",
                format!("account member {member_id} not found"),
            ));
        };
        if member.accounts.iter().any(|id| id == account_id) {
            return Err(ApiError::Conflict(format!(
                "account member {member_id} is already a member of account {account_id}"
            )));
        }
        if member.accounts.len() >= limit {
            return Err(ApiError::Full {
                what: "accounts per member",
                limit,
            });
        }
        member.accounts.push(account_id.to_owned());
        Ok(())
    }

    /// The account `id`.
    pub(crate) fn account(&self, id: &str) -> Option<AccountView> {
        lock(&self.tables).accounts.get(id).cloned()
    }

    /// The account member `id`.
    pub(crate) fn member(&self, id: &str) -> Option<MemberView> {
        let tables = lock(&self.tables);
        let member = tables.members.get(id)?;
        Some(MemberView {
            id: id.to_owned(),
            name: member.name.clone(),
            email: member.email.clone(),
        })
    }
}
