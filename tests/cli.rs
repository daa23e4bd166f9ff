//! The `account-gate` binary: `run` with SIGTERM, `check-config`, and the `demo` walkthrough.

mod common;

use std::io::Write;
use std::process::Command;

use common::process::{field, Process, BIN};
use common::upstream::TestUpstream;
use common::{get, wait_until};
use http::StatusCode;

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(text.as_bytes()).expect("write config");
    file
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_after_readiness_turns_false() {
    let upstream = TestUpstream::http().await;
    let config = config_file(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         shutdown_delay = \"300ms\"\nshutdown_grace = \"10s\"\n\n[upstream]\nurl = \"{}\"\n",
        upstream.url
    ));
    let path = config.path().to_str().expect("utf-8 path").to_owned();
    let mut gateway = Process::spawn(&["run", "--config", &path]);
    let ready = Process::wait_for_line(&gateway.stderr, "account-gate ready");
    let (listen, admin) = (field(&ready, "listen"), field(&ready, "admin"));
    assert_eq!(
        get(&format!("http://{admin}/readyz")).await.0,
        StatusCode::OK
    );

    let slow = format!("http://{listen}/slow?ms=1500");
    let in_flight: Vec<_> = (0..3)
        .map(|_| {
            let slow = slow.clone();
            tokio::spawn(async move { get(&slow).await.0 })
        })
        .collect();
    wait_until("requests in flight", || async { upstream.calls() == 3 }).await;

    gateway.signal("TERM");
    let readyz = format!("http://{admin}/readyz");
    wait_until("readiness false", || async {
        get(&readyz).await.0 == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    for request in in_flight {
        assert_eq!(request.await.expect("task"), StatusCode::OK);
    }
    let status = tokio::task::spawn_blocking(move || gateway.wait_exit())
        .await
        .expect("wait");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn check_config_prints_the_effective_config_or_every_error() {
    let good = config_file("[upstream]\nurl = \"http://127.0.0.1:1\"\n");
    let output = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(good.path())
        .output()
        .expect("run");
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("[upstream]") && stdout.contains("listen = \"0.0.0.0:8080\""));

    let bad = config_file(
        "[server]\nlisten = \"nowhere\"\nbogus = 1\n\n[upstream]\nurl = \"http://127.0.0.1:1\"\n\
         connect_timeout = \"5 parsecs\"\n",
    );
    let output = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(bad.path())
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for key in ["server.listen", "server.bogus", "upstream.connect_timeout"] {
        assert!(stderr.contains(key), "{key} missing from:\n{stderr}");
    }
}

#[test]
fn a_missing_secret_is_a_warning_for_check_config_and_fatal_for_run() {
    let config = config_file(
        "[upstream]\nurl = \"http://127.0.0.1:1\"\n\n[admin]\ntoken_env = \"ACCOUNT_GATE_TEST_UNSET_TOKEN\"\n",
    );
    let check = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(config.path())
        .env_remove("ACCOUNT_GATE_TEST_UNSET_TOKEN")
        .output()
        .expect("run");
    assert!(check.status.success());
    assert!(String::from_utf8_lossy(&check.stderr).contains("ACCOUNT_GATE_TEST_UNSET_TOKEN"));
    assert!(String::from_utf8_lossy(&check.stdout)
        .contains("token_env = \"ACCOUNT_GATE_TEST_UNSET_TOKEN\""));

    let run = Command::new(BIN)
        .args(["run", "--config"])
        .arg(config.path())
        .env_remove("ACCOUNT_GATE_TEST_UNSET_TOKEN")
        .output()
        .expect("run");
    assert_eq!(run.status.code(), Some(1));

    // With the secret present, check-config shows the reference, never the value.
    let check = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(config.path())
        .env("ACCOUNT_GATE_TEST_UNSET_TOKEN", "s3cr3t-admin-token")
        .output()
        .expect("run");
    assert!(check.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(!all.contains("s3cr3t-admin-token"));
}

#[test]
fn demo_comes_up_and_its_walkthrough_works() {
    let demo = Process::spawn(&[
        "demo",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--emulator-listen",
        "127.0.0.1:0",
    ]);
    Process::wait_for_line(&demo.stdout, "# --- walkthrough ---");
    let mut script = String::new();
    loop {
        let line = Process::wait_for_line(&demo.stdout, "");
        if line.starts_with("# --- end ---") {
            break;
        }
        script.push_str(&line);
        script.push('\n');
    }
    let output = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .output()
        .expect("bash");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "walkthrough failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("account "), "{stdout}");
    let account: serde_json::Value = serde_json::from_str(lines[1]).expect("account JSON");
    assert_eq!(account["data"]["type"], "account");
    assert_eq!(
        account["data"]["id"],
        lines[0].trim_start_matches("account ")
    );
    let code = |line: &str| {
        let (body, status) = line.rsplit_once(' ').expect("body and status");
        let body: serde_json::Value = serde_json::from_str(body).expect("JSON:API error");
        (
            status.to_owned(),
            body["errors"][0]["code"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    };
    assert_eq!(
        code(lines[2]),
        ("401".into(), "token_unknown".into()),
        "tampered"
    );
    assert_eq!(
        code(lines[3]),
        ("403".into(), "scope_mismatch".into()),
        "IDOR"
    );
    assert_eq!(lines[4], "204", "logout");
    assert_eq!(
        code(lines[5]),
        ("401".into(), "token_revoked".into()),
        "after logout"
    );
    assert!(
        stdout.contains("account_gate_requests_total{code_class=\"2xx\",route=\"signup\"} 3"),
        "{stdout}"
    );
    assert!(
        stdout.contains("account_gate_tokens_revoked_total 1"),
        "{stdout}"
    );
}

#[test]
fn version_names_the_release_and_the_git_revision() {
    let output = Command::new(BIN).arg("--version").output().expect("run");
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).expect("utf-8");
    let (release, revision) = printed
        .trim()
        .strip_prefix("account-gate ")
        .and_then(|rest| rest.split_once(" ("))
        .and_then(|(release, rest)| Some((release, rest.strip_suffix(')')?)))
        .unwrap_or_else(|| panic!("unexpected --version output {printed:?}"));
    assert_eq!(release, env!("CARGO_PKG_VERSION"));
    // In a git checkout it is the commit built; outside one (a tarball), `unknown`.
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    match head {
        Some(head) if std::env::var_os("ACCOUNT_GATE_REVISION").is_none() => {
            assert_eq!(revision, head)
        }
        _ => assert!(!revision.is_empty()),
    }
}

/// `worker_threads = 0` takes the CPUs the process may really use, a serving thread each: pinned
/// to one, it serves from the one thread; unpinned, from one per CPU, each on a socket of its
/// own, and every connection is answered whichever socket the kernel gives it to.
#[tokio::test]
async fn worker_threads_follow_the_available_cpus() {
    if Command::new("taskset").arg("-V").output().is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "taskset (util-linux) is required in CI"
        );
        eprintln!("SKIPPED: taskset is not installed");
        return;
    }
    let upstream = TestUpstream::http().await;
    let config = config_file(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         shutdown_delay = \"0s\"\n[upstream]\nurl = \"{}\"\n",
        upstream.url
    ));
    let path = config.path().to_str().expect("utf-8 path").to_owned();
    let mut pinned = Command::new("taskset");
    pinned.args(["-c", "0", BIN]);
    let gateway = Process::spawn_command(pinned, &["run", "--config", &path], &[]);
    let ready = Process::wait_for_line(&gateway.stderr, "account-gate ready");
    assert_eq!(field(&ready, "threads"), "1", "{ready}");
    assert_eq!(serving_threads(&gateway), 0, "only the main thread serves");
    let listen = field(&ready, "listen");
    assert_eq!(
        get(&format!("http://{listen}/anything")).await.0,
        StatusCode::OK
    );

    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let gateway = Process::spawn(&["run", "--config", &path]);
    let ready = Process::wait_for_line(&gateway.stderr, "account-gate ready");
    assert_eq!(field(&ready, "threads"), cpus.to_string(), "{ready}");
    assert_eq!(serving_threads(&gateway), cpus - 1);
    if cpus > 1 {
        // The process may use exactly one CPU per thread: each thread keeps one of its own.
        let mut pinned = thread_cpus(&gateway);
        pinned.sort();
        let expected: Vec<String> = (0..cpus).map(|cpu| cpu.to_string()).collect();
        assert_eq!(pinned, expected, "one CPU per serving thread");
    }
    // Each request on a connection of its own: the kernel picks a socket per connection.
    let listen = field(&ready, "listen");
    for _ in 0..32 {
        let request = http::Request::get(format!("http://{listen}/anything"))
            .header("connection", "close")
            .body(http_body_util::Full::default())
            .expect("request");
        assert_eq!(common::send(request).await.0.status(), StatusCode::OK);
    }
    assert_eq!(upstream.calls(), 33);
}

/// The CPUs the serving threads (the main one and the `serve-N`) may run on, as
/// `/proc/…/status` lists them.
fn thread_cpus(process: &Process) -> Vec<String> {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", process.child.id())).expect("tasks");
    tasks
        .filter_map(|task| {
            let path = task.ok()?.path();
            let name = std::fs::read_to_string(path.join("comm")).ok()?;
            let serving = name.starts_with("serve-") || name.trim() == "account-gate";
            let status = std::fs::read_to_string(path.join("status")).ok()?;
            let cpus = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
            serving.then(|| cpus.trim().to_owned())
        })
        .collect()
}

/// The process's threads named `serve-N`: the serving threads besides the main one.
fn serving_threads(process: &Process) -> usize {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", process.child.id())).expect("tasks");
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("serve-"))
        .count()
}
