//! Rate limits on token requests, per client IP (IPv6 clients by their /64) and per username,
//! separately for sign-ups and logins, in fixed windows.
//!
//! Counts are exact for up to `rate_limit.max_keys` distinct keys per limit and window; keys
//! beyond that are counted by `pingora-limits`' count-min estimator, which can only over-count.
//! A sketch alone is unfair at a busy store's volume: with 4 × 1 024 counters, 100 000 distinct
//! usernames in one window put about 100 in every counter, so nearly every shopper looked as if
//! they had logged in ten times. An exact entry costs about 20 bytes (a `u64` key hash and a
//! `u32` count in a hash table at its load factor), so the default 100 000 keys are about 2 MiB
//! per limit at most, allocated as keys arrive and released down to the last window's size when
//! a window ends.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pingora_limits::rate::Rate;
use sha2::{Digest, Sha256};

use crate::sync::lock;

/// Which limit a request ran into; the `rate_limited_total{limit}` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    SignupIp,
    SignupUsername,
    LoginIp,
    LoginUsername,
    LogoutIp,
    LogoutMember,
}

impl Limit {
    /// Every limit, for pre-initialising metric labels.
    pub const ALL: [Limit; 6] = [
        Limit::SignupIp,
        Limit::SignupUsername,
        Limit::LoginIp,
        Limit::LoginUsername,
        Limit::LogoutIp,
        Limit::LogoutMember,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::SignupIp => "signup_ip",
            Limit::SignupUsername => "signup_username",
            Limit::LoginIp => "login_ip",
            Limit::LoginUsername => "login_username",
            Limit::LogoutIp => "logout_ip",
            Limit::LogoutMember => "logout_member",
        }
    }
}

/// Requests allowed per window for each limit; 0 turns a limit off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimits {
    pub window: Duration,
    pub signup_per_ip: u32,
    pub signup_per_username: u32,
    pub login_per_ip: u32,
    pub login_per_username: u32,
    /// Logouts per client IP: each may leave a deny entry behind, so they are bounded too.
    pub logout_per_ip: u32,
    pub logout_per_member: u32,
    /// Distinct keys counted exactly per limit and window.
    pub max_keys: usize,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            window: Duration::from_secs(60),
            signup_per_ip: 100,
            signup_per_username: 10,
            login_per_ip: 100,
            login_per_username: 10,
            logout_per_ip: 100,
            logout_per_member: 10,
            max_keys: 100_000,
        }
    }
}

/// The limiter: one counter per limit.
pub struct RateLimiter {
    limits: RateLimits,
    counters: [Counter; 6],
    /// Hashes IP keys (usernames are SHA-256 already) so that clients cannot aim at one bucket.
    hasher: std::collections::hash_map::RandomState,
}

impl RateLimiter {
    /// A limiter with all counts at zero.
    pub fn new(limits: RateLimits) -> Self {
        let counter = || Counter::new(limits.window, limits.max_keys);
        RateLimiter {
            counters: std::array::from_fn(|_| counter()),
            limits,
            hasher: Default::default(),
        }
    }

    /// Counts one request and says whether it is over a limit, and when to retry. The IP is
    /// checked first, so one IP spraying usernames is stopped by the IP limit.
    pub fn check(
        &self,
        signup: bool,
        ip: IpAddr,
        username: Option<&str>,
    ) -> Result<(), (Limit, Duration)> {
        let (ip_limit, user_limit) = if signup {
            (Limit::SignupIp, Limit::SignupUsername)
        } else {
            (Limit::LoginIp, Limit::LoginUsername)
        };
        if self.allowed(ip_limit) > 0 {
            self.observe(ip_limit, self.hasher.hash_one(client_key(ip)))?;
        }
        if let Some(username) = username.filter(|_| self.allowed(user_limit) > 0) {
            // Usernames are e-mail addresses: hashed so they never sit in memory in clear,
            // trimmed and case-folded so `Joe@x.com`, `joe@x.com` and ` joe@x.com ` (which an
            // upstream may well treat as one user) share a budget.
            self.observe(user_limit, digest_key(&username.trim().to_lowercase()))?;
        }
        Ok(())
    }

    /// Counts one logout from `ip`, before its token is looked at.
    pub fn check_logout_ip(&self, ip: IpAddr) -> Result<(), (Limit, Duration)> {
        if self.allowed(Limit::LogoutIp) == 0 {
            return Ok(());
        }
        self.observe(Limit::LogoutIp, self.hasher.hash_one(client_key(ip)))
    }

    /// Counts one logout of `member` (a validated token's).
    pub fn check_logout_member(&self, member: &str) -> Result<(), (Limit, Duration)> {
        if self.allowed(Limit::LogoutMember) == 0 {
            return Ok(());
        }
        self.observe(Limit::LogoutMember, digest_key(member))
    }

    /// Requests allowed per window under `limit`; 0 is no limit.
    fn allowed(&self, limit: Limit) -> u32 {
        match limit {
            Limit::SignupIp => self.limits.signup_per_ip,
            Limit::SignupUsername => self.limits.signup_per_username,
            Limit::LoginIp => self.limits.login_per_ip,
            Limit::LoginUsername => self.limits.login_per_username,
            Limit::LogoutIp => self.limits.logout_per_ip,
            Limit::LogoutMember => self.limits.logout_per_member,
        }
    }

    fn observe(&self, limit: Limit, key: u64) -> Result<(), (Limit, Duration)> {
        let (count, remaining) = self.counters[limit as usize].observe(key);
        if count <= u64::from(self.allowed(limit)) {
            Ok(())
        } else {
            Err((limit, remaining))
        }
    }

    /// Keys counted exactly in the current window, per limit.
    #[cfg(test)]
    fn exact_keys(&self) -> [usize; 6] {
        self.counters
            .each_ref()
            .map(|c| lock(&c.window).counts.len())
    }
}

/// A key no client can aim at a bucket with: the first 8 bytes of SHA-256.
fn digest_key(text: &str) -> u64 {
    let digest = Sha256::digest(text.as_bytes());
    let mut key = [0u8; 8];
    key.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(key)
}

/// What a client is counted as: its IPv4 address, or the /64 of its IPv6 address (one host
/// usually has a whole /64 to pick addresses from).
fn client_key(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => u64::from(u32::from(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u64::from(u32::from(v4)),
            None => (u128::from(v6) >> 64) as u64 | 1 << 63,
        },
    }
}

/// Counts per key in fixed windows: exactly for the first `max_keys` keys of a window, by a
/// count-min sketch beyond.
struct Counter {
    length: Duration,
    max_keys: usize,
    window: Mutex<Window>,
    /// Keys beyond `max_keys`: bounded memory whatever their number, over-counting only.
    overflow: Rate,
}

struct Window {
    started: Instant,
    counts: HashMap<u64, u64, Passthrough>,
}

impl Counter {
    fn new(length: Duration, max_keys: usize) -> Self {
        Counter {
            length,
            max_keys,
            window: Mutex::new(Window {
                started: Instant::now(),
                counts: HashMap::default(),
            }),
            overflow: Rate::new(length),
        }
    }

    /// Counts one event for `key`: its count in this window, and the time until the window
    /// ends.
    fn observe(&self, key: u64) -> (u64, Duration) {
        let now = Instant::now();
        let mut window = lock(&self.window);
        let elapsed = now.saturating_duration_since(window.started);
        if elapsed >= self.length {
            // Windows stay aligned to their first start, as if they had rolled all along.
            let whole = (elapsed.as_nanos() / self.length.as_nanos().max(1)) as u32;
            window.started += self.length * whole;
            // Memory follows the load: what the last window needed, not the largest ever.
            let last = window.counts.len();
            window.counts.clear();
            window.counts.shrink_to(last);
        }
        let remaining = self
            .length
            .saturating_sub(now.saturating_duration_since(window.started));
        if let Some(count) = window.counts.get_mut(&key) {
            *count += 1;
            return (*count, remaining);
        }
        if window.counts.len() < self.max_keys {
            window.counts.insert(key, 1);
            return (1, remaining);
        }
        drop(window);
        let count = self.overflow.observe(&key, 1).max(1) as u64;
        (count, remaining)
    }
}

/// The keys are hashes already (SHA-256 of a username, or a keyed hash of an address): used as
/// they are.
#[derive(Clone, Copy, Default)]
struct Passthrough;

impl BuildHasher for Passthrough {
    type Hasher = PassthroughHasher;
    fn build_hasher(&self) -> PassthroughHasher {
        PassthroughHasher(0)
    }
}

struct PassthroughHasher(u64);

impl Hasher for PassthroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eleventh_request_in_a_window_is_refused() {
        let limiter = RateLimiter::new(RateLimits {
            signup_per_ip: 10,
            ..RateLimits::default()
        });
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for i in 0..10 {
            let user = format!("user{i}@example.com");
            assert!(limiter.check(true, ip, Some(&user)).is_ok());
        }
        let (limit, retry) = limiter
            .check(true, ip, Some("new@example.com"))
            .unwrap_err();
        assert_eq!(limit, Limit::SignupIp);
        assert!(retry <= Duration::from_secs(60) && retry > Duration::ZERO);
        // Logins have their own budget.
        assert!(limiter.check(false, ip, Some("new@example.com")).is_ok());
    }

    #[test]
    fn usernames_are_limited_case_insensitively() {
        let limiter = RateLimiter::new(RateLimits::default());
        for i in 0..10u8 {
            let ip = IpAddr::from([192, 0, 2, i]);
            assert!(limiter.check(false, ip, Some("Joe@example.com")).is_ok());
        }
        for spelling in ["joe@example.com", " JOE@example.com\t", "joe@EXAMPLE.com "] {
            let ip = IpAddr::from([192, 0, 2, 99]);
            let (limit, _) = limiter.check(false, ip, Some(spelling)).unwrap_err();
            assert_eq!(limit, Limit::LoginUsername, "{spelling:?}");
        }
    }

    #[test]
    fn a_hundred_thousand_shoppers_in_one_window_are_not_refused() {
        let limiter = RateLimiter::new(RateLimits {
            login_per_ip: 0,
            ..RateLimits::default()
        });
        let ip = IpAddr::from([192, 0, 2, 1]);
        let refused = (0..100_000)
            .filter(|i| {
                let user = format!("shopper{i}@example.com");
                limiter.check(false, ip, Some(&user)).is_err()
            })
            .count();
        // Fewer than 0.1 % is the bound; exact counting refuses none.
        assert_eq!(refused, 0);
        assert_eq!(limiter.exact_keys()[Limit::LoginUsername as usize], 100_000);
        // And a shopper over the limit is still refused among them.
        for _ in 0..9 {
            assert!(limiter
                .check(false, ip, Some("shopper7@example.com"))
                .is_ok());
        }
        assert!(limiter
            .check(false, ip, Some("shopper7@example.com"))
            .is_err());
    }

    #[test]
    fn beyond_max_keys_the_sketch_counts_and_still_limits() {
        let limiter = RateLimiter::new(RateLimits {
            login_per_ip: 0,
            max_keys: 10,
            ..RateLimits::default()
        });
        let ip = IpAddr::from([192, 0, 2, 1]);
        for i in 0..10 {
            assert!(limiter.check(false, ip, Some(&format!("u{i}"))).is_ok());
        }
        assert_eq!(limiter.exact_keys()[Limit::LoginUsername as usize], 10);
        for _ in 0..10 {
            assert!(limiter.check(false, ip, Some("overflow")).is_ok());
        }
        assert!(limiter.check(false, ip, Some("overflow")).is_err());
        assert_eq!(limiter.exact_keys()[Limit::LoginUsername as usize], 10);
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let limiter = RateLimiter::new(RateLimits {
            login_per_ip: 3,
            login_per_username: 0,
            ..RateLimits::default()
        });
        for host in 1..=3u16 {
            let ip = IpAddr::from([0x2001, 0xdb8, 1, 2, 0, 0, 0, host]);
            assert!(limiter.check(false, ip, None).is_ok());
        }
        let same_64 = IpAddr::from([0x2001, 0xdb8, 1, 2, 0xffff, 1, 2, 3]);
        assert!(limiter.check(false, same_64, None).is_err());
        let other_64 = IpAddr::from([0x2001, 0xdb8, 1, 3, 0, 0, 0, 1]);
        assert!(limiter.check(false, other_64, None).is_ok());
        // An IPv4-mapped address is its IPv4 client.
        let v4: IpAddr = "192.0.2.9".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.9".parse().unwrap();
        for _ in 0..3 {
            assert!(limiter.check(false, v4, None).is_ok());
        }
        assert!(limiter.check(false, mapped, None).is_err());
    }

    #[test]
    fn a_new_window_starts_every_count_again() {
        let counter = Counter::new(Duration::from_millis(50), 10);
        assert_eq!(counter.observe(1).0, 1);
        assert_eq!(counter.observe(1).0, 2);
        // Age the window by hand rather than sleeping through it.
        lock(&counter.window).started -= Duration::from_millis(120);
        let (count, remaining) = counter.observe(1);
        assert_eq!(count, 1);
        assert!(remaining <= Duration::from_millis(50));
    }
}
