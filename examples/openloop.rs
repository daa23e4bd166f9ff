//! An open-loop load generator for the latency benchmark: `openloop URL RATE SECS [TOKEN]`.
//!
//! Requests are sent at a fixed rate whatever the answers do (wrk waits for each answer before
//! the next, so a slow answer hides the requests that would have queued behind it): a stall of
//! the target delays every request due during it, and each of those counts it. A request's
//! latency runs from when it was released: tokio's timer has a resolution of 1 ms, so requests
//! leave up to 1 ms after they were due, in bursts of RATE/1000, and that lag is the
//! generator's, not the target's. Prints one line: `sent ok p50_us p90_us p99_us p999_us
//! max_us`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Mutex;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (url, rate, secs, token) = match args.as_slice() {
        [url, rate, secs] => (url, rate, secs, None),
        [url, rate, secs, token] => (url, rate, secs, Some(token.clone())),
        _ => return Err("usage: openloop URL RATE SECS [TOKEN]".into()),
    };
    let rate: f64 = rate.parse()?;
    let total = (rate * secs.parse::<f64>()?) as usize;
    let url: http::Uri = url.parse()?;
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build_http::<Empty<Bytes>>();
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let due = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let released = Instant::now();
        let mut request = Request::get(url.clone());
        if let Some(token) = &token {
            request = request.header("EP-Account-Management-Authentication-Token", token);
        }
        let request = request.body(Empty::new())?;
        let (client, latencies) = (client.clone(), latencies.clone());
        tasks.push(tokio::spawn(async move {
            let ok = match client.request(request).await {
                Ok(answer) => {
                    let ok = answer.status().is_success();
                    ok && answer.into_body().collect().await.is_ok()
                }
                Err(_) => false,
            };
            if ok {
                let took = released.elapsed();
                latencies.lock().await.push(took.as_micros() as u64);
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let mut latencies = latencies.lock().await.clone();
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{total} {} {} {} {} {} {}",
        latencies.len(),
        at(0.50),
        at(0.90),
        at(0.99),
        at(0.999),
        latencies.last().copied().unwrap_or(0)
    );
    Ok(())
}
