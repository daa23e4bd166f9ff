//! TLS on the data listener (`[server.tls]`) with real TLS clients: rustls in the tests (HTTP/1.1
//! and HTTP/2 by ALPN) and curl; certificates rotated under a running gateway; mutual TLS.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::upstream::TestUpstream;
use common::{wait_until, RunningGateway, TestGateway};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A CA and what it signed, as PEM.
struct Pki {
    ca_pem: String,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new() -> Self {
        let ca_key = KeyPair::generate().expect("ca key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct names: OpenSSL (curl) takes a leaf named like its issuer for self-signed.
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "account-gate test CA");
        let ca = params.self_signed(&ca_key).expect("ca");
        Pki {
            ca_pem: ca.pem(),
            ca,
            ca_key,
        }
    }

    /// A leaf for `names`: (certificate PEM, key PEM).
    fn leaf(&self, names: &[&str]) -> (String, String) {
        self.leaf_with(KeyPair::generate().expect("leaf key"), names)
    }

    /// A leaf for `names` with `key`.
    fn leaf_with(&self, key: KeyPair, names: &[&str]) -> (String, String) {
        let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let mut params = CertificateParams::new(names.clone()).expect("leaf params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0].clone());
        let cert = params
            .signed_by(&key, &self.ca, &self.ca_key)
            .expect("leaf");
        (cert.pem(), key.serialize_pem())
    }
}

fn write(path: &Path, text: &str) {
    // In one step, as a Secret volume update does.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// The server's files in `dir`: (cert, key).
fn server_files(dir: &Path, pki: &Pki) -> (PathBuf, PathBuf) {
    let (cert, key) = pki.leaf(&["127.0.0.1", "localhost"]);
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    write(&cert_path, &cert);
    write(&key_path, &key);
    (cert_path, key_path)
}

/// A rustls client trusting `ca_pem`, with a client certificate when given; ALPN `alpn`.
fn client_config(ca_pem: &str, client: Option<(&str, &str)>, alpn: &[u8]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("ca pem")).expect("ca");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("client cert");
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("client key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    config
}

/// One GET over a fresh TLS connection: the status, or the error that stopped it.
async fn get_tls(
    gateway: &RunningGateway,
    config: rustls::ClientConfig,
    path: &str,
) -> Result<(StatusCode, http::Version), String> {
    let tcp = tokio::net::TcpStream::connect(gateway.addr)
        .await
        .map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let request = Request::get(format!("https://127.0.0.1{path}"))
        .body(Empty::<Bytes>::new())
        .expect("request");
    let io = TokioIo::new(tls);
    let response = if h2 {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        sender.send_request(request).await
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        sender.send_request(request).await
    }
    .map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    let _ = body.collect().await;
    Ok((parts.status, parts.version))
}

fn config_text(upstream: &str, tls: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nshutdown_delay = \"0s\"\n\
         config_poll_interval = \"100ms\"\nheader_read_timeout = \"1s\"\n\n[server.tls]\n{tls}\n[upstream]\nurl = \"{upstream}\"\n"
    )
}

async fn tls_gateway(dir: &Path, upstream: &TestUpstream, extra: &str) -> RunningGateway {
    let path = dir.join("account-gate.toml");
    let tls = format!(
        "cert_file = \"{}\"\nkey_file = \"{}\"\n{extra}",
        dir.join("tls.crt").display(),
        dir.join("tls.key").display()
    );
    write(&path, &config_text(&upstream.url, &tls));
    TestGateway::from_file(&path).start().await
}

#[tokio::test]
async fn serves_http1_and_http2_over_tls_and_nothing_in_clear() {
    let dir = tempfile::tempdir().expect("dir");
    let pki = Pki::new();
    server_files(dir.path(), &pki);
    let upstream = TestUpstream::http().await;
    let gateway = tls_gateway(dir.path(), &upstream, "").await;

    for (alpn, version) in [
        (&b"http/1.1"[..], http::Version::HTTP_11),
        (&b"h2"[..], http::Version::HTTP_2),
    ] {
        let answer = get_tls(
            &gateway,
            client_config(&pki.ca_pem, None, alpn),
            "/v2/carts",
        )
        .await;
        assert_eq!(answer, Ok((StatusCode::OK, version)));
    }
    assert_eq!(upstream.calls(), 2);
    // Plain HTTP to the TLS port is not served.
    let (status, _) = common::get(&gateway.url("/v2/carts")).await;
    assert_ne!(status, StatusCode::OK);
    assert_eq!(upstream.calls(), 2);
    // A client that does not trust the certificate gets nowhere.
    let stranger = Pki::new();
    let refused = get_tls(
        &gateway,
        client_config(&stranger.ca_pem, None, b"http/1.1"),
        "/",
    )
    .await;
    assert!(refused.is_err(), "{refused:?}");
    // The admin port stays plain HTTP for probes and Prometheus.
    assert_eq!(
        common::get(&gateway.admin_url("/readyz")).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_rotated_certificate_is_used_for_new_handshakes_without_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let (old, new) = (Pki::new(), Pki::new());
    server_files(dir.path(), &old);
    let upstream = TestUpstream::http().await;
    let gateway = tls_gateway(dir.path(), &upstream, "").await;
    let old_client = || client_config(&old.ca_pem, None, b"http/1.1");
    let new_client = || client_config(&new.ca_pem, None, b"http/1.1");
    assert!(get_tls(&gateway, old_client(), "/").await.is_ok());
    assert!(get_tls(&gateway, new_client(), "/").await.is_err());

    // An open connection made with the old certificate.
    let tcp = tokio::net::TcpStream::connect(gateway.addr)
        .await
        .expect("tcp");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(old_client()))
        .connect(ServerName::try_from("127.0.0.1").expect("name"), tcp)
        .await
        .expect("handshake");
    let (mut open, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("http1");
    tokio::spawn(connection);

    server_files(dir.path(), &new);
    wait_until("new handshakes get the new certificate", || async {
        get_tls(&gateway, new_client(), "/").await.is_ok()
    })
    .await;
    assert!(get_tls(&gateway, old_client(), "/").await.is_err());
    // The connection opened before keeps working.
    let request = Request::get("https://127.0.0.1/v2/carts")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let answer = open.send_request(request).await.expect("open connection");
    assert_eq!(answer.status(), StatusCode::OK);
    assert!(gateway
        .metrics()
        .await
        .contains("account_gate_config_restart_required 0"));
}

#[tokio::test]
async fn certificate_files_renamed_in_a_reload_need_a_restart_and_the_running_ones_stay_in_force() {
    let dir = tempfile::tempdir().expect("dir");
    let (old, other, renewed) = (Pki::new(), Pki::new(), Pki::new());
    server_files(dir.path(), &old);
    let upstream = TestUpstream::http().await;
    let gateway = tls_gateway(dir.path(), &upstream, "").await;
    let client = |pki: &Pki| client_config(&pki.ca_pem, None, b"http/1.1");

    // The configuration now names other files, holding another certificate.
    let (cert, key) = other.leaf(&["127.0.0.1", "localhost"]);
    let (cert_path, key_path) = (dir.path().join("other.crt"), dir.path().join("other.key"));
    write(&cert_path, &cert);
    write(&key_path, &key);
    let tls = format!(
        "cert_file = \"{}\"\nkey_file = \"{}\"\n",
        cert_path.display(),
        key_path.display()
    );
    write(
        &dir.path().join("account-gate.toml"),
        &config_text(&upstream.url, &tls),
    );
    let reloader = gateway.reloader.as_ref().expect("reloader");
    let reloaded = reloader.reload().await.expect("reload");
    assert_eq!(reloaded.restart_needed, ["server.tls"]);
    assert!(get_tls(&gateway, client(&old), "/").await.is_ok());
    assert!(get_tls(&gateway, client(&other), "/").await.is_err());

    // The files the listener runs with are still watched and read again when they change.
    server_files(dir.path(), &renewed);
    wait_until("the running files' new certificate is served", || async {
        get_tls(&gateway, client(&renewed), "/").await.is_ok()
    })
    .await;
    assert!(get_tls(&gateway, client(&other), "/").await.is_err());
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate_of_the_client_ca() {
    let dir = tempfile::tempdir().expect("dir");
    let (server_pki, client_pki, other_pki) = (Pki::new(), Pki::new(), Pki::new());
    server_files(dir.path(), &server_pki);
    let client_ca = dir.path().join("client-ca.pem");
    write(&client_ca, &client_pki.ca_pem);
    let upstream = TestUpstream::http().await;
    let gateway = tls_gateway(
        dir.path(),
        &upstream,
        &format!("client_ca_file = \"{}\"\n", client_ca.display()),
    )
    .await;

    let (cert, key) = client_pki.leaf(&["storefront"]);
    let with_cert = client_config(&server_pki.ca_pem, Some((&cert, &key)), b"h2");
    assert_eq!(
        get_tls(&gateway, with_cert, "/v2/carts").await,
        Ok((StatusCode::OK, http::Version::HTTP_2))
    );
    let without = get_tls(
        &gateway,
        client_config(&server_pki.ca_pem, None, b"h2"),
        "/",
    )
    .await;
    assert!(without.is_err(), "{without:?}");
    let (cert, key) = other_pki.leaf(&["intruder"]);
    let wrong_ca = client_config(&server_pki.ca_pem, Some((&cert, &key)), b"http/1.1");
    let refused = get_tls(&gateway, wrong_ca, "/").await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(
        upstream.calls(),
        1,
        "only the client with a certificate got through"
    );
}

#[tokio::test]
async fn curl_speaks_to_it() {
    let Ok(curl) = which_curl() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "curl is required in CI (.ci/run installs it)"
        );
        eprintln!("SKIPPED: curl not installed");
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let pki = Pki::new();
    server_files(dir.path(), &pki);
    let ca = dir.path().join("ca.pem");
    write(&ca, &pki.ca_pem);
    let upstream = TestUpstream::http().await;
    let gateway = tls_gateway(dir.path(), &upstream, "").await;
    let url = format!("https://127.0.0.1:{}/v2/carts", gateway.addr.port());
    for flag in ["--http1.1", "--http2"] {
        let output = tokio::process::Command::new(&curl)
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{http_version}",
                flag,
            ])
            .arg("--cacert")
            .arg(&ca)
            .arg(&url)
            .output()
            .await
            .expect("curl runs");
        let out = String::from_utf8_lossy(&output.stdout);
        let expected = if flag == "--http2" {
            "200 2"
        } else {
            "200 1.1"
        };
        assert_eq!(out, expected, "{}", String::from_utf8_lossy(&output.stderr));
    }
}

#[tokio::test]
async fn rsa_ecdsa_and_ed25519_keys_over_tls_1_2_and_1_3() {
    let rsa_pem = include_str!("fixtures/keys/rsa-a.key.pem");
    let keys = [
        ("ECDSA P-256", KeyPair::generate().expect("ecdsa")),
        (
            "Ed25519",
            KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519"),
        ),
        (
            "RSA",
            KeyPair::from_pem_and_sign_algo(rsa_pem, &rcgen::PKCS_RSA_SHA256).expect("rsa"),
        ),
    ];
    let upstream = TestUpstream::http().await;
    for (kind, key) in keys {
        let dir = tempfile::tempdir().expect("dir");
        let pki = Pki::new();
        let (cert, key) = pki.leaf_with(key, &["127.0.0.1"]);
        write(&dir.path().join("tls.crt"), &cert);
        write(&dir.path().join("tls.key"), &key);
        let gateway = tls_gateway(dir.path(), &upstream, "").await;
        for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
                roots.add(cert.expect("ca")).expect("ca");
            }
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_protocol_versions(&[version])
            .expect("version")
            .with_root_certificates(roots)
            .with_no_client_auth();
            let answer = get_tls(&gateway, config, "/v2/carts").await;
            assert_eq!(
                answer,
                Ok((StatusCode::OK, http::Version::HTTP_11)),
                "{kind} over {version:?}"
            );
        }
        gateway.shutdown().await;
    }
}

fn which_curl() -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("curl"))
        .find(|path| path.is_file())
        .ok_or(())
}

#[tokio::test]
async fn a_slow_handshake_is_closed_at_the_head_deadline() {
    let dir = tempfile::tempdir().expect("dir");
    let pki = Pki::new();
    server_files(dir.path(), &pki);
    let upstream = TestUpstream::http().await;
    let gateway = tls_gateway(dir.path(), &upstream, "").await;
    // Connect and say nothing: the handshake never starts.
    let mut silent = tokio::net::TcpStream::connect(gateway.addr)
        .await
        .expect("tcp");
    wait_until("the silent client is closed", || async {
        gateway.metrics().await.contains(
            "account_gate_connections_closed_total{listener=\"data\",reason=\"header_timeout\"} 1",
        )
    })
    .await;
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        use tokio::io::AsyncReadExt;
        silent.read(&mut buf).await
    })
    .await
    .expect("closed, not hanging");
    assert!(matches!(read, Ok(0) | Err(_)));
}
