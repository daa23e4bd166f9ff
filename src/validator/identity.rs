//! The identity headers told to the upstream (`X-Account-Id`, `X-Account-Member-Id`), and the
//! removal of any copy a client sent: the upstream must be able to trust them.

use http::{HeaderMap, HeaderName, HeaderValue};

use super::Identity;

/// The configured header names; `None` turns one off (a client's copy is still removed).
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    pub account_id: Option<HeaderName>,
    pub member_id: Option<HeaderName>,
    /// Names removed from every request whatever the configuration: the defaults, so that
    /// turning a header off never lets a client's copy through to an upstream that trusts it.
    pub always_removed: [HeaderName; 2],
}

impl IdentityHeaders {
    /// From the configured names; empty turns one off.
    pub fn new(account_id: &str, member_id: &str) -> Self {
        let name = |s: &str| {
            (!s.is_empty())
                .then(|| HeaderName::from_bytes(s.as_bytes()).ok())
                .flatten()
        };
        IdentityHeaders {
            account_id: name(account_id),
            member_id: name(member_id),
            always_removed: [
                HeaderName::from_static("x-account-id"),
                HeaderName::from_static("x-account-member-id"),
            ],
        }
    }

    /// Every name a client's copy is removed under: the defaults and the configured names.
    pub fn names(&self) -> impl Iterator<Item = &HeaderName> {
        self.always_removed
            .iter()
            .chain(self.account_id.iter())
            .chain(self.member_id.iter())
    }

    /// Sets the validated identity. Client copies were removed when the request came in.
    pub fn set(&self, headers: &mut HeaderMap, identity: &Identity) {
        for (name, value) in [
            (&self.account_id, &identity.account_id),
            (&self.member_id, &identity.member_id),
        ] {
            if let (Some(name), Some(value)) = (name, value) {
                // Ids come from the upstream's answer or a verified token; a value that is not
                // a valid header value is left out rather than sent mangled.
                if let Ok(value) = HeaderValue::from_str(value) {
                    headers.insert(name.clone(), value);
                }
            }
        }
    }
}
