//! An open-loop load generator for the latency benchmark:
//! `openloop URL RATE SECS [TOKEN] [--conns N] [--drain SECS]`.
//!
//! Requests are due at a fixed rate whatever the answers do (wrk waits for each answer before
//! the next, so a slow answer hides the requests that would have queued behind it): a stall of
//! the target delays every request due during it, and each of those counts it.
//!
//! The requests go over a fixed set of HTTP/1.1 keep-alive connections (`--conns`, 64 unless
//! told), all opened before the first request is due. A released request goes to whichever
//! connection is free; while none is, it waits in a first-in first-out queue, and that wait is
//! part of its latency. A connection the target closes (nginx closes one after 1 000 requests)
//! is opened again before it takes its next request; a request refused unwritten by a closing
//! connection goes out on the new one. Nothing is opened beyond the set, so a slow target
//! cannot make the generator open thousands of connections and run out of ports, file
//! descriptors or the target's `worker_connections`.
//!
//! Releasing: one thread of its own (not the runtime's) sleeps until each request is due and
//! hands it to the runtime's queue; "released" is the instant that thread, awake again, hands
//! the request over. A request's latency runs from its release to the last byte of its answer.
//! The sleeps are `thread::sleep`, not spinning, since the generator shares its core with the
//! upstream: they end a few tens of microseconds after the request was due (the kernel's timer
//! slack is 50 us), so at 10 000 req/s (every 100 us) the requests leave one or two at a time
//! rather than in the bursts of ten that tokio's 1 ms timer would make. The lag from due to
//! release is the generator's, not the target's: it is not in the latencies but reported apart
//! (its p99 and maximum), so a generator starved of CPU shows.
//!
//! The round ends when every request has been answered, or `--drain` seconds (30 unless told)
//! after the last one was due: a target that falls behind (say, one whose core is shared with
//! other work) gets that long to work through the queue, and what it has not answered by then
//! is counted, not waited for.
//! Prints one line: `scheduled ok failed unsent p50_us p90_us p99_us p999_us max_us lag_p99_us
//! lag_max_us`. `ok` counts 2xx answers read to the end, the only ones in the percentiles;
//! `failed` the requests written that got an error, another status or no answer by the end;
//! `unsent` the requests due that were never written (no connection to take them by the end).
//! `scheduled = ok + failed + unsent`. Error messages go to stderr.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONNECTION, HOST};
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

type Error = Box<dyn std::error::Error + Send + Sync>;
type Queue = Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Instant>>>;

/// Where the requests go and what they carry.
struct Target {
    addr: String,
    host: HeaderValue,
    path: Uri,
    token: Option<HeaderValue>,
}

impl Target {
    fn request(&self) -> Result<Request<Empty<Bytes>>, http::Error> {
        let mut request = Request::get(self.path.clone()).header(HOST, self.host.clone());
        if let Some(token) = &self.token {
            request = request.header("EP-Account-Management-Authentication-Token", token.clone());
        }
        request.body(Empty::new())
    }

    async fn connect(&self) -> Result<SendRequest<Empty<Bytes>>, Error> {
        let stream = TcpStream::connect(&self.addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // Its errors reach the request in flight, if any.
            let _ = connection.await;
        });
        Ok(sender)
    }
}

/// What the connections saw.
#[derive(Default)]
struct Tally {
    /// Requests written (or being written) on a connection.
    sent: usize,
    /// Latencies of the 2xx answers, in microseconds.
    latencies: Vec<u64>,
    /// Failures by message.
    errors: BTreeMap<String, usize>,
}

impl Tally {
    fn error(&mut self, message: String) {
        *self.errors.entry(message).or_default() += 1;
    }
}

fn tally(tally: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    tally
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One connection of the set: takes the next released request whenever it is free, until the
/// queue is closed and empty.
async fn connection(
    target: Arc<Target>,
    queue: Queue,
    counts: Arc<Mutex<Tally>>,
    first: SendRequest<Empty<Bytes>>,
) -> Result<(), http::Error> {
    let mut sender = Some(first);
    // A request taken from the queue that a closing connection gave back unwritten.
    let mut refused: Option<Instant> = None;
    loop {
        let usable = match sender.as_mut() {
            Some(sender) => sender.ready().await.is_ok(),
            None => false,
        };
        let mut live = match sender.take() {
            Some(sender) if usable => sender,
            _ => match target.connect().await {
                Ok(sender) => sender,
                Err(error) => {
                    tally(&counts).error(format!("connect: {error}"));
                    let queue = queue.lock().await;
                    if refused.is_none() && queue.is_closed() && queue.is_empty() {
                        return Ok(());
                    }
                    drop(queue);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let released = match refused.take() {
            Some(released) => released,
            None => match queue.lock().await.recv().await {
                Some(released) => released,
                None => return Ok(()),
            },
        };
        tally(&counts).sent += 1;
        match live.try_send_request(target.request()?).await {
            Ok(answer) => {
                let closing = answer
                    .headers()
                    .get(CONNECTION)
                    .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"close"));
                let status = answer.status();
                let body = answer.into_body().collect().await;
                let took = released.elapsed();
                let mut counts = tally(&counts);
                match body {
                    Ok(_) if status.is_success() => counts.latencies.push(took.as_micros() as u64),
                    Ok(_) => counts.error(format!("status {status}")),
                    Err(error) => counts.error(format!("body: {error}")),
                }
                if !closing {
                    sender = Some(live);
                }
            }
            Err(mut error) => {
                let mut counts = tally(&counts);
                if error.take_message().is_some() {
                    // Never written: it goes out on the next connection.
                    counts.sent -= 1;
                    refused = Some(released);
                } else {
                    counts.error(format!("request: {}", error.into_error()));
                }
            }
        }
    }
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    let at = ((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(at).copied().unwrap_or(0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    const USAGE: &str = "usage: openloop URL RATE SECS [TOKEN] [--conns N] [--drain SECS]";
    let mut conns = 64usize;
    let mut drain = 30.0f64;
    let mut positional = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--conns" {
            conns = args.next().ok_or(USAGE)?.parse()?;
        } else if arg == "--drain" {
            drain = args.next().ok_or(USAGE)?.parse()?;
        } else {
            positional.push(arg);
        }
    }
    let (url, rate, secs, token) = match positional.as_slice() {
        [url, rate, secs] => (url, rate, secs, None),
        [url, rate, secs, token] => (url, rate, secs, Some(HeaderValue::from_str(token)?)),
        _ => return Err(USAGE.into()),
    };
    if conns == 0 {
        return Err("--conns must be at least 1".into());
    }
    let rate: f64 = rate.parse()?;
    let secs: f64 = secs.parse()?;
    if !(rate > 0.0 && secs > 0.0 && drain >= 0.0) {
        return Err("RATE and SECS must be positive, --drain not negative".into());
    }
    let total = (rate * secs) as usize;
    let url: Uri = url.parse()?;
    if url.scheme_str() != Some("http") {
        return Err("the URL must be http://".into());
    }
    let authority = url.authority().ok_or("the URL has no host")?;
    let target = Arc::new(Target {
        addr: format!(
            "{}:{}",
            authority.host(),
            authority.port_u16().unwrap_or(80)
        ),
        host: HeaderValue::from_str(authority.as_str())?,
        path: url.path_and_query().map_or("/", |p| p.as_str()).parse()?,
        token,
    });

    let mut senders = Vec::with_capacity(conns);
    for _ in 0..conns {
        senders.push(target.connect().await?);
    }
    let (release, queue) = mpsc::unbounded_channel::<Instant>();
    let queue: Queue = Arc::new(tokio::sync::Mutex::new(queue));
    let counts = Arc::new(Mutex::new(Tally {
        latencies: Vec::with_capacity(total),
        ..Tally::default()
    }));
    let mut tasks = tokio::task::JoinSet::new();
    for sender in senders {
        tasks.spawn(connection(
            target.clone(),
            queue.clone(),
            counts.clone(),
            sender,
        ));
    }

    let start = Instant::now() + Duration::from_millis(50);
    let releaser = std::thread::spawn(move || {
        let mut lags = Vec::with_capacity(total);
        for i in 0..total {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if now < due {
                std::thread::sleep(due - now);
            }
            let released = Instant::now();
            lags.push(released.duration_since(due).as_micros() as u64);
            if release.send(released).is_err() {
                break;
            }
        }
        lags
    });

    let end = start + Duration::from_secs_f64(secs + drain);
    let drained = tokio::time::timeout_at(end.into(), async {
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        Ok::<_, Error>(())
    })
    .await;
    if let Ok(finished) = drained {
        finished?;
    }
    let mut lags = tokio::task::spawn_blocking(move || releaser.join())
        .await?
        .map_err(|_| "the releasing thread panicked")?;

    let mut counts = tally(&counts);
    let ok = counts.latencies.len();
    let failed = counts.sent - ok;
    let unsent = total - counts.sent;
    counts.latencies.sort_unstable();
    lags.sort_unstable();
    let latencies = &counts.latencies;
    println!(
        "{total} {ok} {failed} {unsent} {} {} {} {} {} {} {}",
        percentile(latencies, 0.50),
        percentile(latencies, 0.90),
        percentile(latencies, 0.99),
        percentile(latencies, 0.999),
        latencies.last().copied().unwrap_or(0),
        percentile(&lags, 0.99),
        lags.last().copied().unwrap_or(0),
    );
    for (message, count) in &counts.errors {
        eprintln!("openloop: {count} x {message}");
    }
    Ok(())
}
