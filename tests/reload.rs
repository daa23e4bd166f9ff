//! Live configuration reload: a valid change is swapped in under load without a failed request,
//! an invalid one is refused and the old configuration keeps serving, a changed file is picked
//! up by itself, and SIGHUP reloads the running binary.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use account_gate::reload::ReloadError;
use common::upstream::TestUpstream;
use common::{get, wait_until, TestGateway};
use http::StatusCode;

/// A configuration forwarding to `upstream`, with `extra` appended.
fn config_text(upstream: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nshutdown_delay = \"0s\"\n{extra}\n\
         [upstream]\nurl = \"{upstream}\"\n"
    )
}

/// A scratch directory holding `account-gate.toml` with `text`, and that file's path. Keep the
/// directory: dropping it removes the file.
fn config_file(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("account-gate.toml");
    write(&path, text);
    (dir, path)
}

fn write(path: &std::path::Path, text: &str) {
    // Replace the file in one step, as a ConfigMap update does (new file, then rename).
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).expect("create");
    file.write_all(text.as_bytes()).expect("write");
    file.sync_all().expect("sync");
    std::fs::rename(&tmp, path).expect("rename");
}

fn reloads(metrics: &str, outcome: &str) -> u64 {
    let prefix = format!("account_gate_config_reloads_total{{outcome=\"{outcome}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
        .expect("reload counter")
}

#[tokio::test]
async fn a_valid_change_is_swapped_in_under_load_without_a_failed_request() {
    let (old, new) = (TestUpstream::http().await, TestUpstream::http().await);
    let (_dir, path) = config_file(&config_text(&old.url, "config_poll_interval = \"0s\""));
    let gateway = TestGateway::from_file(&path).start().await;

    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (url, stop) = (gateway.url("/v2/carts"), stop.clone());
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    statuses.push(get(&url).await.0);
                }
                statuses
            })
        })
        .collect();
    wait_until("load reaches the old upstream", || async {
        old.calls() > 20
    })
    .await;

    write(
        &path,
        &config_text(&new.url, "config_poll_interval = \"0s\""),
    );
    let reloader = gateway.reloader.as_ref().expect("reloader");
    let reloaded = reloader.reload().await.expect("valid config reloads");
    assert!(reloaded.restart_needed.is_empty());
    assert!(gateway
        .metrics()
        .await
        .contains("account_gate_config_restart_required 0"));
    let at_swap = new.calls();
    wait_until("load reaches the new upstream", || async {
        new.calls() > at_swap + 20
    })
    .await;
    stop.store(true, Ordering::SeqCst);

    let mut total = 0;
    for task in load {
        let statuses = task.await.expect("load task");
        total += statuses.len();
        assert!(
            statuses.iter().all(|s| *s == StatusCode::OK),
            "a request failed during the reload: {statuses:?}"
        );
    }
    assert!(total > 40, "{total} requests");
    let calls_before = old.calls();
    let _ = get(&gateway.url("/v2/carts")).await;
    assert_eq!(
        old.calls(),
        calls_before,
        "new requests go to the new upstream only"
    );
    assert_eq!(reloads(&gateway.metrics().await, "success"), 1);
}

#[tokio::test]
async fn an_invalid_change_is_refused_and_the_old_configuration_keeps_serving() {
    let upstream = TestUpstream::http().await;
    let (_dir, path) = config_file(&config_text(&upstream.url, "config_poll_interval = \"0s\""));
    let gateway = TestGateway::from_file(&path).start().await;
    let reloader = gateway.reloader.as_ref().expect("reloader");

    write(
        &path,
        &config_text("ftp://nowhere", "bogus = 1\nmax_connections = \"many\""),
    );
    match reloader.reload().await {
        Err(ReloadError::Invalid(errors)) => {
            let text = errors.to_string();
            for key in ["server.bogus", "server.max_connections", "upstream.url"] {
                assert!(text.contains(key), "{key} missing from {text}");
            }
        }
        other => panic!("expected an invalid configuration, got {other:?}"),
    }
    let (status, _) = get(&gateway.url("/v2/carts")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(upstream.calls(), 1, "still the old upstream");
    let metrics = gateway.metrics().await;
    assert_eq!(reloads(&metrics, "failure"), 1);
    assert_eq!(reloads(&metrics, "success"), 0);
}

#[tokio::test]
async fn a_changed_file_is_reloaded_by_itself_and_fixed_settings_are_reported() {
    let (old, new) = (TestUpstream::http().await, TestUpstream::http().await);
    let (_dir, path) = config_file(&config_text(&old.url, "config_poll_interval = \"100ms\""));
    let gateway = TestGateway::from_file(&path).start().await;
    assert_eq!(get(&gateway.url("/v2/carts")).await.0, StatusCode::OK);
    assert_eq!(old.calls(), 1);

    // A new upstream, and a listener change that only a restart could apply.
    let changed = config_text(
        &new.url,
        "config_poll_interval = \"100ms\"\nmax_connections = 77",
    );
    write(&path, &changed);
    let url = gateway.url("/v2/carts");
    wait_until("the changed file is in force", || async {
        get(&url).await;
        new.calls() > 0
    })
    .await;
    let metrics = gateway.metrics().await;
    assert_eq!(reloads(&metrics, "success"), 1);
    assert!(
        metrics.contains("account_gate_config_restart_required 1"),
        "{metrics}"
    );
    // Reloading by hand reports what was kept.
    let reloader = gateway.reloader.as_ref().expect("reloader");
    let reloaded = reloader.reload().await.expect("reload");
    assert_eq!(reloaded.restart_needed, ["server.max_connections"]);

    // The store is built once: a change to it is reported, not silently ignored.
    write(
        &path,
        &format!("{changed}\n[store]\nkey_prefix = \"other:\"\nl1_ttl = \"2s\"\n"),
    );
    let reloaded = reloader.reload().await.expect("reload");
    assert_eq!(
        reloaded.restart_needed,
        ["server.max_connections", "store.key_prefix", "store.l1_ttl"]
    );
}

#[test]
fn sighup_reloads_the_running_binary() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (old, new) =
        runtime.block_on(async { (TestUpstream::http().await, TestUpstream::http().await) });
    let (_dir, path) = config_file(&config_text(&old.url, "config_poll_interval = \"0s\""));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_account-gate"))
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("account-gate ready"))
        .expect("ready");
    let listen = ready
        .split_whitespace()
        .find_map(|f| f.strip_prefix("listen="))
        .expect("listen")
        .to_owned();
    std::thread::spawn(move || for _ in lines {});
    let url = format!("http://{listen}/v2/carts");
    runtime.block_on(async {
        assert_eq!(get(&url).await.0, StatusCode::OK);
        assert_eq!(old.calls(), 1);
        write(
            &path,
            &config_text(&new.url, "config_poll_interval = \"0s\""),
        );
        let status = std::process::Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        wait_until("SIGHUP applied the new upstream", || async {
            get(&url).await;
            new.calls() > 0
        })
        .await;
    });
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().expect("exit").success());
}

/// A GET of account-1 with `token`: its status and error code.
async fn account_answer(gateway: &common::RunningGateway, token: &str) -> (StatusCode, String) {
    let answer = common::commerce::Commerce::new(&gateway.url(""))
        .send(
            http::Method::GET,
            "/v2/accounts/account-1",
            &[(common::commerce::ACCOUNT_TOKEN, token)],
            "",
        )
        .await;
    let code = if answer.status.is_success() {
        String::new()
    } else {
        answer.error_code_and_pointer().0
    };
    (answer.status, code)
}

#[tokio::test]
async fn rotated_signing_keys_are_picked_up_and_the_old_ones_stop_at_once() {
    use common::keys::{TestKey, RSA_A_PUB, RSA_B_PUB};
    let upstream = TestUpstream::http().await;
    let dir = tempfile::tempdir().expect("dir");
    let (secret, pem) = (dir.path().join("hs256"), dir.path().join("key.pem"));
    // Rotation as a Kubernetes Secret does it: the files change, the configuration does not.
    write(&secret, "first-secret-of-thirty-two-bytes!!\n");
    write(&pem, std::str::from_utf8(RSA_A_PUB).expect("pem"));
    let path = dir.path().join("account-gate.toml");
    let extra = format!(
        "config_poll_interval = \"100ms\"\n[tokens]\nmode = \"signature\"\n\
         [tokens.signature]\nalgorithms = [\"HS256\", \"RS256\"]\n\
         hs256_secret_file = \"{}\"\npublic_key_file = \"{}\"\n",
        secret.display(),
        pem.display()
    );
    write(&path, &config_text(&upstream.url, &extra));
    let gateway = TestGateway::from_file(&path).start().await;

    let (old_hs, old_rs) = (
        TestKey::hmac(b"first-secret-of-thirty-two-bytes!!").token(None),
        TestKey::rsa_a().token(None),
    );
    let (new_hs, new_rs) = (
        TestKey::hmac(b"second-secret-of-thirty-two-bytes!").token(None),
        TestKey::rsa_b().token(None),
    );
    // Both old tokens verified, so both sit in the verified cache.
    for token in [&old_hs, &old_rs] {
        assert_eq!(account_answer(&gateway, token).await.0, StatusCode::OK);
    }
    assert_eq!(account_answer(&gateway, &new_hs).await.1, "bad_signature");

    write(&secret, "second-secret-of-thirty-two-bytes!\n");
    write(&pem, std::str::from_utf8(RSA_B_PUB).expect("pem"));
    wait_until("the rotated keys are in force", || async {
        account_answer(&gateway, &new_hs).await.0 == StatusCode::OK
            && account_answer(&gateway, &new_rs).await.0 == StatusCode::OK
    })
    .await;
    // The old keys' tokens are refused at once, not served from the cache.
    for token in [&old_hs, &old_rs] {
        assert_eq!(
            account_answer(&gateway, token).await,
            (StatusCode::UNAUTHORIZED, "bad_signature".to_owned())
        );
    }
    let metrics = gateway.metrics().await;
    assert!(reloads(&metrics, "success") >= 1);
    assert!(metrics.contains("account_gate_config_restart_required 0"));
}

#[tokio::test]
async fn a_rotated_redis_password_is_reported_as_needing_a_restart() {
    let upstream = TestUpstream::http().await;
    let dir = tempfile::tempdir().expect("dir");
    let password = dir.path().join("redis-password");
    write(&password, "first\n");
    let path = dir.path().join("account-gate.toml");
    let extra = format!(
        "config_poll_interval = \"0s\"\n[store]\nredis_password_file = \"{}\"\n",
        password.display()
    );
    write(&path, &config_text(&upstream.url, &extra));
    let gateway = TestGateway::from_file(&path).start().await;
    let reloader = gateway.reloader.as_ref().expect("reloader");
    assert!(reloader
        .reload()
        .await
        .expect("reload")
        .restart_needed
        .is_empty());
    write(&password, "second\n");
    let reloaded = reloader.reload().await.expect("reload");
    assert_eq!(
        reloaded.restart_needed,
        ["store.redis_password_file (its content)"]
    );
    assert!(gateway
        .metrics()
        .await
        .contains("account_gate_config_restart_required 1"));
}

#[tokio::test]
async fn the_authz_path_prefix_reloads_live_and_its_listener_needs_a_restart() {
    let upstream = TestUpstream::http().await;
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("account-gate.toml");
    let authz = |listen: &str, prefix: &str| {
        config_text(
            &upstream.url,
            &format!(
                "config_poll_interval = \"0s\"\n[authz]\nlisten = \"{listen}\"\npath_prefix = \"{prefix}\"\n"
            ),
        )
    };
    write(&path, &authz("127.0.0.1:0", "/one"));
    let gateway = TestGateway::from_file(&path).start().await;
    let base = format!("http://{}", gateway.authz_addr.expect("authz listener"));
    let status = |path: &str| {
        let url = format!("{base}{path}");
        async move { get(&url).await.0 }
    };
    assert_eq!(status("/one/v2/carts").await, StatusCode::OK);
    assert_eq!(status("/two/v2/carts").await, StatusCode::BAD_REQUEST);

    write(&path, &authz("127.0.0.1:0", "/two"));
    let reloader = gateway.reloader.as_ref().expect("reloader");
    let reloaded = reloader.reload().await.expect("valid config reloads");
    assert!(reloaded.restart_needed.is_empty());
    assert_eq!(status("/two/v2/carts").await, StatusCode::OK);
    assert_eq!(status("/one/v2/carts").await, StatusCode::BAD_REQUEST);

    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    write(&path, &authz(&free.to_string(), "/two"));
    let reloaded = reloader.reload().await.expect("valid config reloads");
    assert_eq!(reloaded.restart_needed, ["authz.listen"]);
    // Still served where it was bound.
    assert_eq!(status("/two/v2/carts").await, StatusCode::OK);
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_reload_that_leaves_the_upstream_as_it_was_keeps_its_connections() {
    let upstream = TestUpstream::http().await;
    let (_dir, path) = config_file(&config_text(&upstream.url, "config_poll_interval = \"0s\""));
    let gateway = TestGateway::from_file(&path).start().await;
    let reloader = gateway.reloader.as_ref().expect("reloader");
    assert_eq!(get(&gateway.url("/v2/carts")).await.0, StatusCode::OK);
    assert_eq!(upstream.connections(), 1);

    // Another section changes: the pooled connection serves on.
    let mut text = config_text(&upstream.url, "config_poll_interval = \"0s\"");
    text.push_str("[rate_limit]\nsignup_per_ip = 7\n");
    write(&path, &text);
    reloader.reload().await.expect("reloaded");
    assert_eq!(get(&gateway.url("/v2/carts")).await.0, StatusCode::OK);
    assert_eq!(upstream.connections(), 1, "the connection was kept");

    // `[upstream]` changes: a new client, new connections.
    text.push_str("[upstream]\nresponse_timeout = \"7s\"\n");
    let text = text.replacen(&format!("[upstream]\nurl = \"{}\"\n", upstream.url), "", 1)
        + &format!("url = \"{}\"\n", upstream.url);
    write(&path, &text);
    reloader.reload().await.expect("reloaded");
    assert_eq!(get(&gateway.url("/v2/carts")).await.0, StatusCode::OK);
    assert_eq!(upstream.connections(), 2, "a new client connects anew");
}
