//! Access lines leave the request path: a stderr nobody reads costs no request (lines are
//! dropped and counted instead), and the lines still waiting at exit are written out. They
//! follow the level and the format like any other line, and a request id cannot forge a field.

mod common;

use std::io::{BufRead, BufReader, Read, Write as _};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::process::BIN;
use common::upstream::TestUpstream;
use common::{get, sample, wait_until};
use http::StatusCode;

fn config(upstream: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("config");
    write!(
        file,
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         shutdown_delay = \"0s\"\n[upstream]\nurl = \"{upstream}\"\n"
    )
    .expect("write config");
    file
}

/// Starts the binary and reads its stderr up to the ready line; returns the child, the rest of
/// its stderr (unread), and the data and admin addresses.
fn start(
    config: &tempfile::NamedTempFile,
) -> (Child, BufReader<std::process::ChildStderr>, String, String) {
    start_with(config, "info", &[])
}

/// As [`start`], with `RUST_LOG` set to `level` and `args` added after the config path.
fn start_with(
    config: &tempfile::NamedTempFile,
    level: &str,
    args: &[&str],
) -> (Child, BufReader<std::process::ChildStderr>, String, String) {
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(config.path())
        .args(args)
        .env("RUST_LOG", level)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).expect("read stderr") > 0,
            "exited before it was ready"
        );
        if line.contains("account-gate ready") {
            break;
        }
    }
    let field = |key: &str| match serde_json::from_str::<serde_json::Value>(&line) {
        Ok(json) => json[key].as_str().expect("field present").to_owned(),
        Err(_) => common::process::field(&line, key),
    };
    (child, stderr, field("listen"), field("admin"))
}

/// `n` GETs on `concurrency` connections; every answer must be 200.
async fn load(listen: &str, n: usize, concurrency: usize) {
    let per_task = n / concurrency;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let url = format!("http://{listen}/v2/catalog/products");
            tokio::spawn(async move {
                for _ in 0..per_task {
                    assert_eq!(get(&url).await.0, StatusCode::OK);
                }
            })
        })
        .collect();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("answered without waiting on the log")
            .expect("every request answered 200");
    }
}

#[tokio::test]
async fn a_stderr_nobody_reads_costs_no_request() {
    let upstream = TestUpstream::http().await;
    let config = config(&upstream.url);
    let (mut child, stderr, listen, admin) = start(&config);

    // Nobody reads stderr from here on: the pipe fills at 64 KiB, the writer blocks, the
    // buffer fills at 1 MiB, and then lines are dropped; requests go on.
    load(&listen, 12_000, 8).await;
    assert_eq!(upstream.calls(), 12_000);
    let metrics = format!("http://{admin}/metrics");
    wait_until("dropped lines counted", || async {
        let text = String::from_utf8_lossy(&get(&metrics).await.1).into_owned();
        sample(&text, "account_gate_log_lines_dropped_total") > 0.0
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    drop(stderr);
}

#[tokio::test]
async fn the_lines_still_waiting_are_written_at_exit() {
    let upstream = TestUpstream::http().await;
    let config = config(&upstream.url);
    let (child, stderr, listen, _admin) = start(&config);
    load(&listen, 200, 4).await;
    // At once, within the 50 ms a batch may wait.
    let rest = stop(child, stderr);
    let access = rest.lines().filter(|l| l.contains(" access:")).count();
    assert_eq!(access, 200, "{rest}");
    assert!(
        rest.contains("account-gate stopped"),
        "the shutdown lines too: {rest}"
    );
}

/// Sends SIGTERM and returns everything the process writes to stderr until it exits 0.
fn stop(mut child: Child, mut stderr: BufReader<std::process::ChildStderr>) -> String {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).expect("read to exit");
    assert_eq!(child.wait().expect("wait").code(), Some(0), "{rest}");
    rest
}

#[tokio::test]
async fn a_json_access_line_names_the_request_and_a_request_id_cannot_forge_a_field() {
    let upstream = TestUpstream::http().await;
    let config = config(&upstream.url);
    let (child, stderr, listen, _admin) = start_with(&config, "info", &["--log-format", "json"]);
    let forged = r#"id"\,"status":500,"x":"\"#;
    let request = http::Request::get(format!("http://{listen}/v2/catalog/products?secret=1"))
        .header("x-request-id", forged)
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body(http_body_util::Full::default())
        .expect("request");
    let (response, _) = common::send(request).await;
    assert_eq!(response.status(), StatusCode::OK);

    let rest = stop(child, stderr);
    let lines: Vec<serde_json::Value> = rest
        .lines()
        .filter(|l| l.contains(r#""target":"access""#))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 1, "{rest}");
    let line = &lines[0];
    assert_eq!(line["request_id"], forged, "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(
        (&line["method"], &line["route"], &line["outcome"]),
        (&"GET".into(), &"passthrough".into(), &"forwarded".into()),
        "{line}"
    );
    assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(line["client"], "127.0.0.1");
    assert_eq!(line["level"], "INFO");
    assert!(
        line["duration_ms"].as_f64().is_some_and(|ms| ms > 0.0),
        "{line}"
    );
    assert!(line["upstream_ms"].as_f64().is_some(), "{line}");
    let stamp = line["timestamp"].as_str().expect("a timestamp");
    assert_eq!(stamp.len(), "2026-11-30T18:31:43.000042Z".len(), "{stamp}");
    assert!(
        !rest.contains("secret=1"),
        "no query string is logged: {rest}"
    );
}

#[tokio::test]
async fn a_level_above_info_writes_no_access_line() {
    let upstream = TestUpstream::http().await;
    let config = config(&upstream.url);
    // `ready` is an info line: let that one through, and nothing else at info.
    let (child, stderr, listen, _admin) =
        start_with(&config, "warn,account_gate=info,access=warn", &[]);
    load(&listen, 20, 2).await;
    let rest = stop(child, stderr);
    assert!(
        rest.contains("account-gate stopped"),
        "the gateway's own info lines still come: {rest}"
    );
    assert!(!rest.contains("access"), "{rest}");
}
