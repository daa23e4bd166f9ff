//! A bounded soak of a running gateway: a mix of sign-ups, valid, cross-account,
//! tampered, revoked and missing tokens at a fixed rate, every answer checked against the
//! decision it must get. Starts its own emulator as the upstream.
//!
//! `soak GATEWAY_PORT EMULATOR_PORT RPS SECONDS GATEWAY_PID` — see `benches/load/soak.sh`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use account_gate::emulator::{Emulator, EmulatorOptions, DEMO_CLIENT_ID, DEMO_PASSWORD_PROFILE_ID};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What each kind of request must be answered with.
const KINDS: [(&str, u16); 6] = [
    ("valid", 200),
    ("other_account", 403),
    ("tampered", 401),
    ("revoked", 401),
    ("missing", 401),
    ("signup", 201),
];

struct Member {
    account: String,
    token: String,
}

#[derive(Default)]
struct Counters {
    sent: [AtomicU64; 6],
    wrong: [AtomicU64; 6],
    server_errors: AtomicU64,
    failures: AtomicU64,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [gateway_port, emulator_port, rps, seconds, pid] = args.as_slice() else {
        return Err("usage: soak GATEWAY_PORT EMULATOR_PORT RPS SECONDS GATEWAY_PID".into());
    };
    let (rps, seconds): (u64, u64) = (rps.parse()?, seconds.parse()?);
    let options = EmulatorOptions {
        max_members: 5_000_000,
        max_accounts: 5_000_000,
        ..EmulatorOptions::default()
    };
    let _emulator = Emulator::spawn(format!("127.0.0.1:{emulator_port}").parse()?, options).await?;
    let base = format!("http://127.0.0.1:{gateway_port}");
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let access = access_token(&client, &base).await?;

    // Members: the first 40 stay valid, the last 10 log out (their tokens must stay refused).
    let mut members = Vec::new();
    for i in 0..50 {
        members.push(sign_up(&client, &base, &access, &format!("soak-{i}@example.com")).await?);
    }
    for member in &members[40..] {
        let status = send(
            &client,
            &base,
            Method::DELETE,
            "/v2/account-members/tokens",
            None,
            Some(&member.token),
            None,
        )
        .await?;
        assert_eq!(status, StatusCode::NO_CONTENT, "logout");
    }
    let members = Arc::new(members);
    let counters = Arc::new(Counters::default());
    let rss_start = rss(pid);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let workers = 32u64;
    let period = Duration::from_secs_f64(workers as f64 / rps as f64);
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let (client, base, access, members, counters) = (
            client.clone(),
            base.clone(),
            access.clone(),
            members.clone(),
            counters.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            let mut n = worker;
            while Instant::now() < deadline {
                tick.tick().await;
                n += workers;
                let kind = match n % 100 {
                    0..=44 => 0,
                    45..=59 => 1,
                    60..=74 => 2,
                    75..=84 => 3,
                    85..=94 => 4,
                    _ => 5,
                };
                let member = &members[(n as usize / 7) % 40];
                let other = &members[(n as usize / 7 + 1) % 40];
                let revoked = &members[40 + (n as usize % 10)];
                let result = match kind {
                    0 => {
                        get(
                            &client,
                            &base,
                            &access,
                            &member.account,
                            Some(&member.token),
                        )
                        .await
                    }
                    1 => get(&client, &base, &access, &other.account, Some(&member.token)).await,
                    2 => {
                        get(
                            &client,
                            &base,
                            &access,
                            &member.account,
                            Some(&tamper(&member.token)),
                        )
                        .await
                    }
                    3 => {
                        get(
                            &client,
                            &base,
                            &access,
                            &revoked.account,
                            Some(&revoked.token),
                        )
                        .await
                    }
                    4 => get(&client, &base, &access, &member.account, None).await,
                    _ => {
                        let body = signup_body(&format!("soak-{worker}-{n}@example.com"));
                        send(
                            &client,
                            &base,
                            Method::POST,
                            "/v2/account-members/tokens",
                            Some(&access),
                            None,
                            Some(body),
                        )
                        .await
                    }
                };
                counters.sent[kind].fetch_add(1, Ordering::Relaxed);
                match result {
                    Ok(status) => {
                        if status.is_server_error() {
                            counters.server_errors.fetch_add(1, Ordering::Relaxed);
                        }
                        if status.as_u16() != KINDS[kind].1 {
                            counters.wrong[kind].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        counters.failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let mut samples = Vec::new();
    while Instant::now() < deadline {
        tokio::time::sleep(
            Duration::from_secs(30).min(deadline.saturating_duration_since(Instant::now())),
        )
        .await;
        samples.push(rss(pid));
    }
    for task in tasks {
        task.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total: u64 = counters
        .sent
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum();
    println!(
        "soak: {total} requests in {elapsed:.0} s ({:.0} req/s, target {rps})",
        total as f64 / elapsed
    );
    for (i, (kind, expected)) in KINDS.iter().enumerate() {
        println!(
            "  {kind:<14} expect {expected}: sent {:>8}, wrong decisions {}",
            counters.sent[i].load(Ordering::Relaxed),
            counters.wrong[i].load(Ordering::Relaxed)
        );
    }
    let wrong: u64 = counters
        .wrong
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum();
    println!(
        "  5xx: {}, connection failures: {}, wrong decisions: {wrong}",
        counters.server_errors.load(Ordering::Relaxed),
        counters.failures.load(Ordering::Relaxed)
    );
    println!("  gateway RSS (KiB): start {rss_start}, every 30 s {samples:?}");
    Ok(())
}

fn rss(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn tamper(token: &str) -> String {
    let i = token.len() - 10;
    let replacement = if &token[i..i + 1] == "A" { "B" } else { "A" };
    format!("{}{replacement}{}", &token[..i], &token[i + 1..])
}

fn signup_body(username: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"data":{{"type":"account_management_authentication_token","authentication_mechanism":"self_signup","password_profile_id":"{DEMO_PASSWORD_PROFILE_ID}","username":"{username}","password":"soak-password","name":"Soak","email":"{username}"}}}}"#
    ))
}

async fn get(
    client: &HttpClient,
    base: &str,
    access: &str,
    account: &str,
    token: Option<&str>,
) -> Result<StatusCode, BoxError> {
    send(
        client,
        base,
        Method::GET,
        &format!("/v2/accounts/{account}"),
        Some(access),
        token,
        None,
    )
    .await
}

async fn send(
    client: &HttpClient,
    base: &str,
    method: Method,
    path: &str,
    access: Option<&str>,
    token: Option<&str>,
    body: Option<Bytes>,
) -> Result<StatusCode, BoxError> {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("{base}{path}"));
    if let Some(access) = access {
        request = request.header("authorization", format!("Bearer {access}"));
    }
    if let Some(token) = token {
        request = request.header("EP-Account-Management-Authentication-Token", token);
    }
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let response = client
        .request(request.body(Full::new(body.unwrap_or_default()))?)
        .await?;
    let status = response.status();
    response.into_body().collect().await?;
    Ok(status)
}

/// POSTs `body` as `content_type` and parses the JSON answer.
async fn post_json(
    client: &HttpClient,
    url: String,
    content_type: &str,
    authorization: Option<String>,
    body: Bytes,
) -> Result<serde_json::Value, BoxError> {
    let mut request = Request::post(url).header("content-type", content_type);
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    let response = client.request(request.body(Full::new(body))?).await?;
    let body = response.into_body().collect().await?.to_bytes();
    Ok(serde_json::from_slice(&body)?)
}

async fn access_token(client: &HttpClient, base: &str) -> Result<String, BoxError> {
    let form = format!("grant_type=implicit&client_id={DEMO_CLIENT_ID}");
    let value = post_json(
        client,
        format!("{base}/oauth/access_token"),
        "application/x-www-form-urlencoded",
        None,
        Bytes::from(form),
    )
    .await?;
    Ok(value["access_token"]
        .as_str()
        .ok_or("no access token")?
        .to_owned())
}

async fn sign_up(
    client: &HttpClient,
    base: &str,
    access: &str,
    username: &str,
) -> Result<Member, BoxError> {
    let value = post_json(
        client,
        format!("{base}/v2/account-members/tokens"),
        "application/json",
        Some(format!("Bearer {access}")),
        signup_body(username),
    )
    .await?;
    Ok(Member {
        account: value["data"][0]["account_id"]
            .as_str()
            .ok_or("no account")?
            .to_owned(),
        token: value["data"][0]["token"]
            .as_str()
            .ok_or("no token")?
            .to_owned(),
    })
}
