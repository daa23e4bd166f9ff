//! account-gate: an authenticating reverse proxy for the Commerce account-management API.
//!
//! Why the code is shaped as it is, with the measurements behind each choice, is in
//! `docs/design.md`.
//!
//! # Layout
//!
//! - [`config`]: the TOML schema, environment overrides and validation; the internal [`Config`].
//! - [`server`]: binds the listeners, runs them, and shuts down gracefully; [`generation`]: the
//!   request-handling state built from one configuration; [`reload`]: swapping in a new one.
//! - [`proxy`]: the data plane — accept loop, per-request handler, forwarding client, headers;
//!   and the authz listener's decisions for an ingress (`proxy::Decisions`), which forward nothing.
//! - [`answer`]: the one place where a refusal or failure becomes a JSON:API answer.
//! - [`signup`]: checks token requests, rate-limits them, and learns the tokens issued.
//! - [`store`]: the issued-token registry (fingerprints by member) and the revocation deny-list.
//! - [`token`]: reading account tokens and verifying their signatures (keys, JWKS, cache).
//! - [`target`]: the canonical request target every decision is made on and that is forwarded.
//! - [`scope`]: route rules — which paths need a token, which segment must match which claim.
//! - [`validator`]: the decision on each account-scoped request (modes, unknown tokens,
//!   revocation, identity headers).
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz` on their own listener; [`admin_api`]: the
//!   member-token listing and revocation behind the admin token.
//! - [`metrics`]: every Prometheus metric, declared once.
//! - [`logging`]: text or JSON log lines.
//! - [`tls`]: rustls client settings shared by the upstream and JWKS clients; `sync`: the one
//!   mutex-locking helper every stateful module uses.
//! - `emulator`: an in-process Commerce API stand-in for the demo, tests and benchmarks (cargo
//!   feature `emulator`, on by default; the container image leaves it out).
//! - `demo` (feature `emulator`) and [`cli`]: what the subcommands of `main.rs` do.
//!
//! # The path of a request
//!
//! `proxy::serve` accepts a connection (at `max_connections`, in place of the idlest one), holds
//! it to its deadlines from accept (head, idle, a client that stops reading) and hands each
//! request to `Gateway::handle`, which removes hop-by-hop, identity and routing-override
//! headers, puts the target in canonical form (or refuses it), routes it on that form (token
//! endpoint, CORS preflight, account-scoped), rewrites its headers (`X-Forwarded-*` and
//! `X-Request-Id` in), forwards it through the pooled `Upstream` client and streams the answer
//! back; an upstream failure becomes a 502/504 answer written by [`answer`].
//!
//! [`Config`]: config::Config

#![forbid(unsafe_code)]

pub mod admin;
pub mod admin_api;
pub mod answer;
pub mod cli;
pub mod config;
#[cfg(feature = "emulator")]
pub mod demo;
#[cfg(feature = "emulator")]
pub mod emulator;
pub mod generation;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod scope;
pub mod server;
pub mod signup;
pub mod store;
mod sync;
pub mod target;
pub mod telemetry;
pub mod tls;
pub mod token;
pub mod validator;

pub use server::{Server, StartError};

/// The release, from `Cargo.toml`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git revision the binary was built from (12 hex digits), or `unknown` (see `build.rs`).
pub const REVISION: &str = env!("ACCOUNT_GATE_REVISION");
/// What `--version` prints after the name: `0.1.0 (0123456789ab)`.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("ACCOUNT_GATE_REVISION"),
    ")"
);
