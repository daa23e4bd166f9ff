//! Rate limits on token requests, per client IP and per username, separately for sign-ups and
//! logins. Built on `pingora-limits`' count-min estimator, so memory is fixed whatever the
//! number of distinct keys (it can only over-count, never under-count).

use std::net::IpAddr;
use std::time::Duration;

use pingora_limits::rate::Rate;
use sha2::{Digest, Sha256};

/// Which limit a request ran into; the `rate_limited_total{limit}` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    SignupIp,
    SignupUsername,
    LoginIp,
    LoginUsername,
}

impl Limit {
    /// Every limit, for pre-initialising metric labels.
    pub const ALL: [Limit; 4] = [
        Limit::SignupIp,
        Limit::SignupUsername,
        Limit::LoginIp,
        Limit::LoginUsername,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::SignupIp => "signup_ip",
            Limit::SignupUsername => "signup_username",
            Limit::LoginIp => "login_ip",
            Limit::LoginUsername => "login_username",
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
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            window: Duration::from_secs(60),
            signup_per_ip: 100,
            signup_per_username: 10,
            login_per_ip: 100,
            login_per_username: 10,
        }
    }
}

/// The limiter: one estimator per limit, each counting in fixed windows.
pub struct RateLimiter {
    limits: RateLimits,
    estimators: [Rate; 4],
}

impl RateLimiter {
    /// A limiter with all counts at zero.
    pub fn new(limits: RateLimits) -> Self {
        let window = limits.window;
        RateLimiter {
            limits,
            estimators: [
                Rate::new(window),
                Rate::new(window),
                Rate::new(window),
                Rate::new(window),
            ],
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
        self.observe(ip_limit, &ip)?;
        if let Some(username) = username.filter(|_| self.allowed(user_limit) > 0) {
            // Usernames are e-mail addresses: hashed so they never sit in memory in clear,
            // trimmed and case-folded so `Joe@x.com`, `joe@x.com` and ` joe@x.com ` (which an
            // upstream may well treat as one user) share a budget.
            let key: [u8; 32] = Sha256::digest(username.trim().to_lowercase().as_bytes()).into();
            self.observe(user_limit, &key)?;
        }
        Ok(())
    }

    /// Requests allowed per window under `limit`; 0 is no limit.
    fn allowed(&self, limit: Limit) -> u32 {
        match limit {
            Limit::SignupIp => self.limits.signup_per_ip,
            Limit::SignupUsername => self.limits.signup_per_username,
            Limit::LoginIp => self.limits.login_per_ip,
            Limit::LoginUsername => self.limits.login_per_username,
        }
    }

    fn observe<K: std::hash::Hash>(&self, limit: Limit, key: &K) -> Result<(), (Limit, Duration)> {
        let allowed = self.allowed(limit);
        if allowed == 0 {
            return Ok(());
        }
        let estimator = &self.estimators[limit as usize];
        let count = estimator.observe(key, 1);
        if count <= allowed as isize {
            return Ok(());
        }
        // The count resets when the current window ends; say how far away that is.
        let window = self.limits.window;
        let elapsed = estimator.rate_with(key, |c| c.current_interval_fraction);
        let remaining = window.mul_f64((1.0 - elapsed).clamp(0.0, 1.0));
        Err((limit, remaining))
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
}
