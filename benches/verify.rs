//! Token verification cost: a fresh verification (signature + claims) against an answer from the
//! verified cache, for HS256, RS256 and ES256. Ends with the cached/uncached ratios, which
//! survive a noisy machine better than the absolute times.
//!
//! `cargo bench --bench verify`

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use account_gate::token::{SignatureSettings, Verifier};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use criterion::Criterion;
use jsonwebtoken::{Algorithm, EncodingKey};
use tokio::runtime::Runtime;

mod common;

const RSA_KEY: &[u8] = include_bytes!("../tests/fixtures/keys/rsa-a.key.pem");
const RSA_PUB: &[u8] = include_bytes!("../tests/fixtures/keys/rsa-a.pub.pem");
const SECRET: &[u8] = b"an-hs256-secret-of-thirty-two-bytes!";

/// One algorithm's verifier and a valid token for it.
struct Case {
    alg: Algorithm,
    verifier: Verifier,
    token: String,
}

fn token(alg: Algorithm, key: &EncodingKey) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 3600;
    let header = serde_json::json!({"alg": alg, "typ": "JWT"});
    let claims = serde_json::json!({"sub": "member-1", "scope": "account-1", "exp": exp,
        "iat": exp - 3600, "store_id": "store", "realm_id": "realm"});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).expect("sign");
    format!("{input}.{signature}")
}

fn cases(runtime: &Runtime) -> Vec<Case> {
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ec key");
    let keys = [
        (Algorithm::HS256, EncodingKey::from_secret(SECRET), None),
        (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(RSA_KEY).expect("rsa"),
            Some(RSA_PUB.to_vec()),
        ),
        (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).expect("ec"),
            Some(ec.public_key_pem().into_bytes()),
        ),
    ];
    keys.into_iter()
        .map(|(alg, signing, public)| {
            let settings = SignatureSettings {
                algorithms: vec![alg],
                hs256_secret: public.is_none().then(|| SECRET.to_vec()),
                public_keys: public.into_iter().collect(),
                ..SignatureSettings::default()
            };
            let verifier = runtime.block_on(Verifier::new(settings)).expect("verifier");
            Case {
                alg,
                verifier,
                token: token(alg, &signing),
            }
        })
        .collect()
}

fn bench(c: &mut Criterion, runtime: &Runtime, cases: &[Case]) {
    let mut group = c.benchmark_group("verify");
    for case in cases {
        let name = format!("{:?}", case.alg);
        group.bench_function(format!("{name}/uncached"), |b| {
            b.iter(|| runtime.block_on(case.verifier.verify_uncached(black_box(&case.token))))
        });
        runtime
            .block_on(case.verifier.verify(&case.token))
            .expect("valid token");
        group.bench_function(format!("{name}/cached"), |b| {
            b.iter(|| runtime.block_on(case.verifier.verify(black_box(&case.token))))
        });
    }
    group.finish();
}

/// Mean time per call over `iterations`.
fn mean(iterations: u32, mut call: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..iterations {
        call();
    }
    start.elapsed() / iterations
}

fn print_ratios(runtime: &Runtime, cases: &[Case]) {
    println!("\ncached / uncached (lower is better):");
    for case in cases {
        let iterations = if case.alg == Algorithm::HS256 {
            20_000
        } else {
            2_000
        };
        let uncached = mean(iterations, || {
            let _ = runtime.block_on(case.verifier.verify_uncached(black_box(&case.token)));
        });
        let cached = mean(iterations * 5, || {
            let _ = runtime.block_on(case.verifier.verify(black_box(&case.token)));
        });
        println!(
            "  {:?}: uncached {:>9.2?}  cached {:>9.2?}  ratio {:.4} ({:.0}x faster)",
            case.alg,
            uncached,
            cached,
            cached.as_secs_f64() / uncached.as_secs_f64(),
            uncached.as_secs_f64() / cached.as_secs_f64()
        );
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cases = cases(&runtime);
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion, &runtime, &cases);
    criterion.final_summary();
    print_ratios(&runtime, &cases);
}
