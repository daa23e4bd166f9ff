//! Signing keys of every family and a JWKS server for tests: RSA fixtures from
//! `tests/fixtures/keys`, EC and Ed25519 keys made by rcgen, an HS256 secret; a JWKS server on
//! 127.0.0.1:0 (plain or TLS) that counts its hits and can change what it serves.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use account_gate::token::{SignatureSettings, Verifier};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub const RSA_A_KEY: &[u8] = include_bytes!("../fixtures/keys/rsa-a.key.pem");
pub const RSA_A_PUB: &[u8] = include_bytes!("../fixtures/keys/rsa-a.pub.pem");
pub const RSA_B_KEY: &[u8] = include_bytes!("../fixtures/keys/rsa-b.key.pem");
pub const RSA_B_PUB: &[u8] = include_bytes!("../fixtures/keys/rsa-b.pub.pem");
pub const SECRET: &[u8] = b"an-hs256-secret-of-thirty-two-bytes!";

/// The seed's first example: `exp`/`iat` as ISO strings.
pub const SEED_STRING_EXP: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJleHAiOiIyMDIxLTAzLTE2VDE5OjM2OjExLjA3MFoiLCJpYXQiOiIyMDIxLTAzLTE1VDE5OjM2OjExLjA3MFoiLCJzY29wZSI6IjFjNDVlNGVjLTI2ZTAtNDA0My04NmU0LWMxNWI5Y2Y5ODVhMyIsInN1YiI6IjFjNDVlNGVjLTI2ZTAtNDA0My04NmU0LWMxNWI5Y2Y5ODVhMiJ9.ytQ3UutTl_RJ8NiB1xN29Ta23p-FXsYOhcUM7MUQ4CM";

// ---------------------------------------------------------------------------------------------
// Keys and tokens
// ---------------------------------------------------------------------------------------------

/// A signing key with its public halves (PEM and JWK).
pub struct TestKey {
    pub alg: Algorithm,
    pub signing: EncodingKey,
    pub public_pem: Vec<u8>,
    /// JWK without `kid`.
    pub jwk: Value,
}

impl TestKey {
    pub fn rsa(private: &[u8], public: &[u8], alg: Algorithm) -> Self {
        let signing = EncodingKey::from_rsa_pem(private).expect("rsa key");
        let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&signing, alg).expect("rsa jwk");
        let mut jwk = serde_json::to_value(jwk).expect("jwk json");
        // Keep only what a plain JWKS publishes; our reader must not need more.
        jwk = json!({"kty": "RSA", "n": jwk["n"], "e": jwk["e"]});
        TestKey {
            alg,
            signing,
            public_pem: public.to_vec(),
            jwk,
        }
    }

    pub fn rsa_a() -> Self {
        Self::rsa(RSA_A_KEY, RSA_A_PUB, Algorithm::RS256)
    }

    pub fn rsa_b() -> Self {
        Self::rsa(RSA_B_KEY, RSA_B_PUB, Algorithm::RS256)
    }

    pub fn generated(alg: Algorithm) -> Self {
        let (rcgen_alg, crv) = match alg {
            Algorithm::ES256 => (&rcgen::PKCS_ECDSA_P256_SHA256, "P-256"),
            Algorithm::ES384 => (&rcgen::PKCS_ECDSA_P384_SHA384, "P-384"),
            Algorithm::EdDSA => (&rcgen::PKCS_ED25519, "Ed25519"),
            other => panic!("rcgen makes no {other:?} key"),
        };
        let pair = rcgen::KeyPair::generate_for(rcgen_alg).expect("generate");
        let private = pair.serialize_pem();
        let raw = pair.public_key_raw();
        let (signing, jwk) = if alg == Algorithm::EdDSA {
            let jwk = json!({"kty": "OKP", "crv": crv, "x": b64(raw)});
            (EncodingKey::from_ed_pem(private.as_bytes()), jwk)
        } else {
            let size = (raw.len() - 1) / 2;
            let (x, y) = raw[1..].split_at(size);
            let jwk = json!({"kty": "EC", "crv": crv, "x": b64(x), "y": b64(y)});
            (EncodingKey::from_ec_pem(private.as_bytes()), jwk)
        };
        TestKey {
            alg,
            signing: signing.expect("signing key"),
            public_pem: pair.public_key_pem().into_bytes(),
            jwk,
        }
    }

    pub fn hmac(secret: &[u8]) -> Self {
        TestKey {
            alg: Algorithm::HS256,
            signing: EncodingKey::from_secret(secret),
            public_pem: Vec::new(),
            jwk: Value::Null,
        }
    }

    pub fn jwk_with_kid(&self, kid: &str) -> Value {
        let mut jwk = self.jwk.clone();
        jwk["kid"] = json!(kid);
        jwk
    }

    /// A token with the given header members (besides `alg`) and claims.
    pub fn sign(&self, header: Value, claims: Value) -> String {
        sign_as(self.alg, &self.signing, header, claims)
    }

    /// A valid token signed as `alg` with this key (for algorithms outside the pinned list).
    pub fn sign_with(&self, alg: Algorithm) -> String {
        sign_as(alg, &self.signing, json!({}), claims())
    }

    /// A normal, valid token with this `kid`.
    pub fn token(&self, kid: Option<&str>) -> String {
        let header = kid.map_or(json!({}), |kid| json!({ "kid": kid }));
        self.sign(header, claims())
    }
}

pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// Claims like the upstream's: member, account, an hour to live.
pub fn claims() -> Value {
    json!({"sub": "member-1", "scope": "account-1", "exp": now() + 3600, "iat": now(),
           "store_id": "s", "realm_id": "r"})
}

/// Signs `header` (with `alg` added) and `claims` as `alg` with `key`.
pub fn sign_as(alg: Algorithm, key: &EncodingKey, header: Value, claims: Value) -> String {
    let mut header = header;
    header["alg"] = serde_json::to_value(alg).expect("alg");
    let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
    let signature = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).expect("sign");
    format!("{input}.{signature}")
}

/// A token whose header is given verbatim (for `alg` spellings jsonwebtoken cannot express).
pub fn with_raw_header(header: &str, claims: Value, signature: &str) -> String {
    format!("{}.{}.{signature}", b64(header), b64(claims.to_string()))
}

pub fn settings(algorithms: &[Algorithm]) -> SignatureSettings {
    SignatureSettings {
        algorithms: algorithms.to_vec(),
        ..SignatureSettings::default()
    }
}

pub async fn pem_verifier(algorithms: &[Algorithm], pems: &[&TestKey]) -> Verifier {
    let mut settings = settings(algorithms);
    settings.public_keys = pems.iter().map(|k| k.public_pem.clone()).collect();
    Verifier::new(settings).await.expect("verifier")
}

pub async fn hs_verifier() -> Verifier {
    let mut settings = settings(&[Algorithm::HS256]);
    settings.hs256_secret = Some(SECRET.to_vec());
    Verifier::new(settings).await.expect("verifier")
}

// ---------------------------------------------------------------------------------------------
// A JWKS server
// ---------------------------------------------------------------------------------------------

/// What the JWKS server answers.
#[derive(Clone)]
pub enum Serve {
    Keys(Value),
    Status(StatusCode),
    Body(Bytes),
}

/// A JWKS server on 127.0.0.1:0 counting its hits. Dropping it stops it.
pub struct JwksServer {
    pub url: String,
    hits: Arc<AtomicUsize>,
    serve: Arc<Mutex<Serve>>,
    ca_file: Option<PathBuf>,
    _stop: oneshot::Sender<()>,
    _dir: Option<tempfile::TempDir>,
}

impl JwksServer {
    pub async fn start(keys: &[(&TestKey, &str)]) -> Self {
        Self::start_with(jwks(keys), None).await
    }

    /// The same over TLS, with a certificate for 127.0.0.1 from a fresh CA (in `ca_file`).
    pub async fn start_tls(keys: &[(&TestKey, &str)]) -> Self {
        let (acceptor, ca_pem) = super::upstream::test_tls();
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca_pem).expect("write ca");
        let mut server = Self::start_with(jwks(keys), Some(acceptor)).await;
        server.url = server.url.replacen("http://", "https://", 1);
        server.ca_file = Some(ca_file);
        server._dir = Some(dir);
        server
    }

    pub async fn start_with(keys: Value, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let serve = Arc::new(Mutex::new(Serve::Keys(keys)));
        let (stop, mut stopped) = oneshot::channel::<()>();
        let (task_hits, task_serve) = (hits.clone(), serve.clone());
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                    _ = &mut stopped => return,
                };
                let (hits, serve, tls) = (task_hits.clone(), task_serve.clone(), tls.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |_request| {
                        hits.fetch_add(1, Ordering::SeqCst);
                        let serve = serve.lock().expect("lock").clone();
                        async move {
                            let response = match serve {
                                Serve::Keys(keys) => {
                                    Response::new(Full::new(Bytes::from(keys.to_string())))
                                }
                                Serve::Body(body) => Response::new(Full::new(body)),
                                Serve::Status(status) => {
                                    let mut response = Response::new(Full::new(Bytes::new()));
                                    *response.status_mut() = status;
                                    response
                                }
                            };
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(stream).await {
                                let _ = builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                    }
                });
            }
        });
        JwksServer {
            url: format!("http://{addr}/.well-known/jwks.json"),
            hits,
            serve,
            ca_file: None,
            _stop: stop,
            _dir: None,
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn serve(&self, what: Serve) {
        *self.serve.lock().expect("lock") = what;
    }

    pub fn serve_keys(&self, keys: &[(&TestKey, &str)]) {
        self.serve(Serve::Keys(jwks(keys)));
    }

    /// Settings that use this server, with short test intervals.
    pub fn settings(
        &self,
        algorithms: &[Algorithm],
        refresh: Duration,
        cooldown: Duration,
    ) -> SignatureSettings {
        let mut settings = settings(algorithms);
        settings.jwks_url = Some(self.url.parse().expect("url"));
        settings.jwks_ca_file = self.ca_file.clone();
        settings.jwks_refresh = refresh;
        settings.jwks_cooldown = cooldown;
        settings.jwks_timeout = Duration::from_secs(2);
        settings
    }
}

pub fn jwks(keys: &[(&TestKey, &str)]) -> Value {
    json!({"keys": keys.iter().map(|(key, kid)| key.jwk_with_kid(kid)).collect::<Vec<_>>()})
}
