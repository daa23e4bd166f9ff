//! One decision of the authz listener, as an ingress asks for it (nginx's `X-Original-Method` and
//! `X-Original-URI`, the account token): the whole answer, from the call's head to the response
//! with its identity headers, counted in the metrics, in `issued` mode with the memory store. An
//! allowed call, one refused for another account, and one without a token.
//!
//! `cargo bench --bench authz`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use account_gate::config::{AuthzConfig, TokenMode, UnknownTokens};
use account_gate::metrics::Metrics;
use account_gate::proxy::Decisions;
use account_gate::scope::Rules;
use account_gate::store::{
    Fingerprint, MemoryStore, MemoryStoreOptions, Store, TokenRecord, TokenStore,
};
use account_gate::validator::{IdentityHeaders, Validator, ValidatorSettings};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use http::request::Parts;
use http::{HeaderName, Request, StatusCode};

mod common;

use common::ready;

const TOKEN_HEADER: &str = "ep-account-management-authentication-token";
const ACCOUNT: &str = "8f1e2c3d-4b5a-4c6d-8e7f-9a0b1c2d3e4f";
const OTHER: &str = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d";
const MEMBER: &str = "2b3c4d5e-6f7a-4b8c-9d0e-1f2a3b4c5d6e";
/// An account token's size and shape (the store keys it by its SHA-256 only).
const TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIyYjNjNGQ1ZS02ZjdhLTRiOGMtOWQwZS0xZjJhM2I0YzVkNmUiLCJzY29wZSI6IjhmMWUyYzNkLTRiNWEtNGM2ZC04ZTdmLTlhMGIxYzJkM2U0ZiIsImV4cCI6MTc5NjAwMDAwMCwiaWF0IjoxNzk1OTEzNjAwfQ.c2lnbmF0dXJlLW9mLXRoZS1hY2NvdW50LXRva2VuLWZvci1iZW5jaA";

fn decisions() -> Decisions {
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let store = Arc::new(Store::Memory(MemoryStore::new(
        MemoryStoreOptions::with_max_entries(100_000),
    )));
    ready(store.record(TokenRecord {
        fingerprint: Fingerprint::of(TOKEN),
        member_id: MEMBER.to_owned(),
        account_id: ACCOUNT.to_owned(),
        account_name: None,
        expires_at: SystemTime::now() + Duration::from_secs(3600),
        learned: false,
    }))
    .expect("record");
    let settings = ValidatorSettings {
        mode: TokenMode::Issued,
        unknown: UnknownTokens::Reject,
        header: HeaderName::from_static(TOKEN_HEADER),
        leeway: Duration::from_secs(30),
        negative_ttl: Duration::from_secs(60),
        learned_ttl: Duration::from_secs(900),
        negative_max_entries: 10_000,
        rules: Rules::new(Vec::new(), "/v2/account-members/tokens"),
        identity: IdentityHeaders::new("X-Account-Id", "X-Account-Member-Id"),
    };
    let validator = Arc::new(Validator::new(settings, store, None, metrics.clone()));
    Decisions::new(validator, &AuthzConfig::default(), metrics)
}

/// The head of nginx's `auth_request` call about `GET target`.
fn call(target: &str, token: Option<&str>) -> Parts {
    let mut request = Request::get("/_account_gate")
        .header("host", "account-gate:8081")
        .header("x-original-method", "GET")
        .header("x-original-uri", target)
        .header("user-agent", "Mozilla/5.0 (X11; Linux x86_64) storefront")
        .header("accept", "application/json")
        .header(
            "authorization",
            "Bearer 0123456789abcdef0123456789abcdef01234567",
        );
    if let Some(token) = token {
        request = request.header(TOKEN_HEADER, token);
    }
    request.body(()).expect("request").into_parts().0
}

fn bench(c: &mut Criterion) {
    let decisions = decisions();
    let client = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let own = format!("/v2/accounts/{ACCOUNT}/addresses?page[limit]=10");
    let other = format!("/v2/accounts/{OTHER}/addresses");
    let mut group = c.benchmark_group("authz");
    group.throughput(Throughput::Elements(1));
    for (name, target, token, status) in [
        (
            "decision/allowed",
            own.as_str(),
            Some(TOKEN),
            StatusCode::OK,
        ),
        (
            "decision/other_account",
            other.as_str(),
            Some(TOKEN),
            StatusCode::FORBIDDEN,
        ),
        (
            "decision/no_token",
            own.as_str(),
            None,
            StatusCode::UNAUTHORIZED,
        ),
    ] {
        let answer = ready(decisions.answer(&call(target, token), client));
        assert_eq!(answer.status(), status, "{name}");
        group.bench_function(name, |b| {
            b.iter_batched(
                || call(target, token),
                |parts| ready(decisions.answer(black_box(&parts), client)),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
