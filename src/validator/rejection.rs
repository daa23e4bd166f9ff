//! Why the validator refused a request: one variant per status, with the JSON:API `code` and
//! `detail` the answer carries (`answer.rs` turns it into the response).

/// Why a request was refused. Each maps to one status and `code` in `answer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// 401 with this `code` (`token_missing`, `token_expired`, …).
    #[error("{}", unauthorized_detail(.0))]
    Unauthorized(&'static str),
    /// 403: valid token, another account in the path.
    #[error("the account token is scoped to another account")]
    ScopeMismatch,
    /// 403: valid token, another member in the path.
    #[error("the account token belongs to another account member")]
    MemberMismatch,
    /// 503: the store could not be asked and nothing else can decide.
    #[error("the token store is unavailable")]
    StoreUnavailable,
}

/// The human `detail` of a 401, by its code.
fn unauthorized_detail(code: &str) -> &'static str {
    match code {
        "token_missing" => "an account management token is required",
        "token_malformed" => "the account management token is not a well-formed token",
        "bad_signature" => "the account management token's signature is not valid",
        "algorithm_not_allowed" => {
            "the account management token is signed with an algorithm that is not accepted"
        }
        "token_expired" => "the account management token has expired",
        "token_not_yet_valid" => "the account management token is not valid yet",
        "token_unknown" => "the account management token was not issued to this storefront",
        "token_revoked" => "the account management token has been revoked (logged out)",
        _ => "the account management token is not valid",
    }
}

impl Rejection {
    /// The JSON:API `code` and the `token_validations_total{reason}` label.
    pub fn code(self) -> &'static str {
        match self {
            Rejection::Unauthorized(code) => code,
            Rejection::ScopeMismatch => "scope_mismatch",
            Rejection::MemberMismatch => "member_mismatch",
            Rejection::StoreUnavailable => "store_unavailable",
        }
    }

    /// Every reason a rejection can give, for pre-initialising metric labels.
    pub const REASONS: [&'static str; 13] = [
        "token_missing",
        "token_malformed",
        "bad_signature",
        "algorithm_not_allowed",
        "token_expired",
        "token_not_yet_valid",
        "token_unknown",
        "token_revoked",
        "token_wrong_issuer",
        "token_wrong_audience",
        "scope_mismatch",
        "member_mismatch",
        "store_unavailable",
    ];
}
