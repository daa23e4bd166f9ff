//! Prints an account token for benchmarks: `mint hs256 SECRET SUB SCOPE SECS` or
//! `mint rs256 PRIVATE_KEY.pem SUB SCOPE SECS`.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [alg, key, sub, scope, secs] = args.as_slice() else {
        return Err("usage: mint hs256|rs256 SECRET|KEY.pem SUB SCOPE SECS".into());
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = serde_json::json!({
        "sub": sub, "scope": scope, "iat": now, "exp": now + secs.parse::<u64>()?,
        "store_id": "bench-store", "realm_id": "bench-realm",
    });
    let (algorithm, key) = match alg.as_str() {
        "hs256" => (Algorithm::HS256, EncodingKey::from_secret(key.as_bytes())),
        "rs256" => (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(&std::fs::read(key)?)?,
        ),
        other => return Err(format!("unknown algorithm {other}").into()),
    };
    println!("{}", encode(&Header::new(algorithm), &claims, &key)?);
    Ok(())
}
