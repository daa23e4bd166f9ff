//! Account tokens: reading their claims, and verifying their signatures.
//!
//! - [`claims`]: the claims of a token, read without verifying it (learning issued tokens).
//! - [`verify`]: the [`Verifier`] — pinned algorithms, keys (HS256 secret, PEM public keys, a
//!   JWKS), claim checks and the verified-token cache. Its helpers: `jws` (header and segments),
//!   `validate` (claims), `keys` (key families), `jwks`/`fetch`/`source` (the JWKS), `cache`.
//! - [`unverified`]: the checks that need no key, run on a token the gateway does not know
//!   before the upstream is asked about it.
//! - [`error`]: [`TokenError`] (why a token is refused, with its response `code`) and
//!   [`KeyError`] (why a key configuration is refused).

mod cache;
pub mod claims;
pub mod error;
mod fetch;
mod jwks;
mod jws;
mod keys;
mod source;
pub mod unverified;
mod validate;
pub mod verify;

pub use error::{KeyError, TokenError};
pub use verify::{SignatureSettings, VerifiedToken, Verifier};
