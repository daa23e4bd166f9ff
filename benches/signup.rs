//! The token endpoint's own work, per request: checking a token request body before it is
//! forwarded, and reading the upstream's `201` answer into store records and recording them.
//!
//! `cargo bench --bench signup`

use std::hint::black_box;

use account_gate::signup::{check_body, records, SignupPolicy};
use account_gate::store::{MemoryStore, MemoryStoreOptions, TokenStore};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

mod common;

use common::ready;

/// A password login, as storefronts send it.
const PASSWORD: &str = r#"{"data":{"type":"account_management_authentication_token","authentication_mechanism":"password","password_profile_id":"8d3f0a5e-2c1b-4a7e-9f61-0b5c2d7e4a10","username":"shopper@example.com","password":"correct horse battery staple"}}"#;

/// A self sign-up with every optional name field.
const SELF_SIGNUP: &str = r#"{"data":{"type":"account_management_authentication_token","authentication_mechanism":"self_signup","password_profile_id":"8d3f0a5e-2c1b-4a7e-9f61-0b5c2d7e4a10","username":"new.shopper@example.com","password":"correct horse battery staple","name":"New Shopper","email":"new.shopper@example.com","given_name":"New","family_name":"Shopper"}}"#;

/// The Commerce API's answer to a login with two accounts (the contract's seed document).
const ISSUED: &str = include_str!("../tests/corpus/seed-201.json");

fn bench(c: &mut Criterion) {
    let policy = SignupPolicy {
        username_must_be_email: true,
        min_password_length: 8,
        ..SignupPolicy::default()
    };
    let mut group = c.benchmark_group("signup");
    group.throughput(Throughput::Elements(1));
    for (name, body) in [
        ("check_body/password", PASSWORD),
        ("check_body/self_signup", SELF_SIGNUP),
    ] {
        assert!(check_body(body.as_bytes(), &policy).is_ok(), "{name}");
        group.bench_function(name, |b| {
            b.iter(|| check_body(black_box(body.as_bytes()), &policy))
        });
    }
    assert_eq!(records(ISSUED.as_bytes()).map(|r| r.len()), Ok(2));
    group.bench_function("records/two_accounts", |b| {
        b.iter(|| records(black_box(ISSUED.as_bytes())))
    });
    // Reading the answer and recording what it teaches: the same two tokens again and again, as
    // when one member logs in repeatedly (each record replaces the last).
    let store = MemoryStore::new(MemoryStoreOptions::with_max_entries(100_000));
    group.bench_function("records_and_record/two_accounts", |b| {
        b.iter(|| {
            for record in records(black_box(ISSUED.as_bytes())).unwrap_or_default() {
                let _ = ready(store.record(record));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
