//! Account tokens: `claims::peek`, the unknown-token precheck and the signature verifier (HS256
//! and RS256 keys) must never panic, and never accept what the fuzzer makes up.
#![no_main]

use std::sync::OnceLock;

use account_gate::token::claims;
use account_gate::token::unverified::precheck;
use account_gate::token::{SignatureSettings, TokenError, Verifier};
use jsonwebtoken::Algorithm;
use libfuzzer_sys::fuzz_target;

const RSA_PUB: &[u8] = include_bytes!("../../tests/fixtures/keys/rsa-a.pub.pem");

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    })
}

fn verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let settings = SignatureSettings {
            algorithms: vec![Algorithm::HS256, Algorithm::RS256],
            hs256_secret: Some(b"an-hs256-secret-of-thirty-two-bytes!".to_vec()),
            public_keys: vec![RSA_PUB.to_vec()],
            // A fuzzer never repeats on purpose; the cache would only grow.
            cache_max_entries: 1,
            ..SignatureSettings::default()
        };
        runtime()
            .block_on(Verifier::new(settings))
            .expect("verifier")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let _ = claims::peek(token);
    let _ = precheck(token, 30);
    match runtime().block_on(verifier().verify_uncached(token)) {
        Ok(_) => panic!("a made-up token verified: {token:?}"),
        Err(TokenError::WrongIssuer | TokenError::WrongAudience) => {
            panic!("issuer/audience error with neither configured")
        }
        Err(_) => {}
    }
});
