//! The upstream connections not held by a request: HTTP/1.1 connections kept for reuse, the
//! HTTP/2 connections every request shares, and the places that cap how many are open.
//!
//! A request takes the newest HTTP/1.1 connection that is ready and hands it back at once
//! (hyper marks it ready again when the answer has been read), or an HTTP/2 connection with
//! fewer than [`H2_STREAMS`] requests awaiting an answer. Closed and long-idle connections are
//! dropped as the pool is walked and by a timer.
//!
//! An HTTP/1.1 connection is driven by a task on the serving thread that opened it (see
//! `crate::server`). A request prefers a connection of its own thread: one of another thread
//! would wake that thread to write the request and again to hand the answer back. It takes
//! another thread's only when its own has none ready, rather than open one more.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use hyper::client::conn::{http1, http2};
use tokio::sync::Semaphore;
use tokio::time::Sleep;

use super::super::Body;
use crate::config::UpstreamConfig;
use crate::sync::lock;

/// Open connections not held by a request.
pub(super) struct Pool {
    /// HTTP/1.1 connections, newest last; each is ready again once its last answer was read.
    pub(super) http1: Mutex<Vec<Idle>>,
    /// HTTP/2 connections, when the upstream negotiated it: shared by every request, one more
    /// opened whenever each has [`H2_STREAMS`] requests waiting for an answer.
    http2: Mutex<Vec<Shared>>,
    max_idle: usize,
    idle_timeout: Duration,
    /// One permit per open connection, `upstream.max_connections` in all; a connection's task
    /// holds its permit until the connection closes.
    pub(super) slots: Arc<Semaphore>,
    /// `upstream.max_connections`, for the error.
    pub(super) max_connections: usize,
    /// Set once the upstream has negotiated HTTP/2.
    pub(super) speaks_h2: AtomicBool,
    /// Set while a request opens a connection (or waits for a place to), so that only one
    /// does at a time once the upstream is known to speak HTTP/2.
    pub(super) h2_opening: AtomicBool,
}

/// The right to open the next connection, held until it is open (or failed).
pub(super) struct Opening<'a>(&'a AtomicBool);

impl<'a> Opening<'a> {
    /// The right, unless another request holds it.
    pub(super) fn claim(flag: &'a AtomicBool) -> Option<Self> {
        flag.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| Opening(flag))
    }
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

pub(super) struct Idle {
    pub(super) sender: http1::SendRequest<Body>,
    /// The serving thread whose runtime drives the connection.
    thread: usize,
    timer: Timer,
    /// When it was last handed back.
    since: Instant,
}

/// Requests sent on one HTTP/2 upstream connection before another is opened. hyper does not
/// tell the upstream's `SETTINGS_MAX_CONCURRENT_STREAMS`; RFC 9113 recommends at least 100,
/// and load balancers allow 100 to 128. Counted from sending to the answer's head (account
/// answers are small, so their bodies hold a stream only briefly); beyond the upstream's own
/// limit, requests would wait inside the connection rather than fail.
const H2_STREAMS: usize = 100;

/// One HTTP/2 upstream connection and the requests on it awaiting an answer.
struct Shared {
    sender: http2::SendRequest<Body>,
    streams: Arc<AtomicUsize>,
}

/// A request counted on its HTTP/2 connection until its answer's head arrives.
pub(super) struct Stream(Arc<AtomicUsize>);

impl Drop for Stream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The timer an HTTP/1.1 connection keeps for the heads of its answers
/// (`upstream.response_timeout`), reset for each request rather than made anew; `None` until its
/// first request.
pub(super) type Timer = Option<Pin<Box<Sleep>>>;

/// A connection taken for one request.
pub(super) enum Sender {
    /// With the serving thread whose runtime drives the connection.
    Http1(http1::SendRequest<Body>, usize, Timer),
    Http2(http2::SendRequest<Body>, Stream),
}
impl Shared {
    /// The connection, counting one more request on it.
    fn take(&self) -> Sender {
        self.streams.fetch_add(1, Ordering::Relaxed);
        Sender::Http2(self.sender.clone(), Stream(self.streams.clone()))
    }
}

impl Pool {
    /// An empty pool for `config`, pruned by a timer while it exists.
    pub(super) fn new(config: &UpstreamConfig) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            http1: Mutex::new(Vec::new()),
            http2: Mutex::new(Vec::new()),
            max_idle: config.pool_max_idle_per_host,
            idle_timeout: config.pool_idle_timeout,
            slots: Arc::new(Semaphore::new(config.max_connections.max(1))),
            max_connections: config.max_connections.max(1),
            speaks_h2: AtomicBool::new(false),
            h2_opening: AtomicBool::new(false),
        });
        Pool::start_pruning(&pool);
        pool
    }

    /// A connection ready for a request — the shared HTTP/2 one, or the newest ready HTTP/1.1
    /// one — with how long it sat in the pool since its last answer began (zero for HTTP/2).
    /// Closed and long-idle connections met on the way are dropped.
    /// `now` is the caller's reading of the clock.
    pub(super) fn take(&self, now: Instant) -> Option<(Sender, Duration)> {
        {
            let mut http2 = lock(&self.http2);
            http2.retain(|shared| !shared.sender.is_closed());
            if let Some(shared) = http2
                .iter()
                .find(|shared| shared.streams.load(Ordering::Relaxed) < H2_STREAMS)
            {
                return Some((shared.take(), Duration::ZERO));
            }
            if !http2.is_empty() {
                return None; // every HTTP/2 connection is full: open another
            }
        }
        let here = super::super::serving_thread();
        let mut idle = lock(&self.http1);
        // The newest ready connection of another thread, taken if this one has none.
        let mut elsewhere = None;
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            let entry = &idle[i];
            if entry.sender.is_closed() || self.expired(entry, now) {
                idle.remove(i);
                elsewhere = elsewhere.map(|at: usize| at - 1);
            } else if entry.sender.is_ready() {
                if entry.thread == here {
                    return Some(Self::taken(idle.remove(i), now));
                }
                elsewhere = elsewhere.or(Some(i));
            }
        }
        elsewhere.map(|at| Self::taken(idle.remove(at), now))
    }

    fn taken(entry: Idle, now: Instant) -> (Sender, Duration) {
        (
            Sender::Http1(entry.sender, entry.thread, entry.timer),
            now.duration_since(entry.since),
        )
    }

    /// Hands an HTTP/1.1 connection back as soon as its request is answered; it is ready
    /// again once the answer's body has been read. Beyond `max_idle`, the oldest goes (it
    /// closes after its current exchange). `now` is when the answer's head arrived.
    pub(super) fn put(
        &self,
        sender: http1::SendRequest<Body>,
        thread: usize,
        timer: Pin<Box<Sleep>>,
        now: Instant,
    ) {
        if self.max_idle == 0 {
            return;
        }
        let mut idle = lock(&self.http1);
        if idle.len() >= self.max_idle {
            idle.remove(0);
        }
        idle.push(Idle {
            sender,
            thread,
            timer: Some(timer),
            since: now,
        });
    }

    /// Adds a new HTTP/2 connection to the pool and takes it for the request that opened it.
    pub(super) fn share_http2(&self, sender: http2::SendRequest<Body>) -> Sender {
        let shared = Shared {
            sender,
            streams: Arc::new(AtomicUsize::new(0)),
        };
        let taken = shared.take();
        lock(&self.http2).push(shared);
        taken
    }

    /// Ready (so not answering) and handed back longer ago than the idle timeout.
    fn expired(&self, entry: &Idle, now: Instant) -> bool {
        now.duration_since(entry.since) >= self.idle_timeout && entry.sender.is_ready()
    }

    /// Drops closed and expired connections.
    pub(super) fn prune(&self) {
        let now = Instant::now();
        lock(&self.http1).retain(|entry| !entry.sender.is_closed() && !self.expired(entry, now));
        let mut http2 = lock(&self.http2);
        http2.retain(|shared| !shared.sender.is_closed());
        // Connections opened for a burst go once nothing waits on them; one idle one stays.
        let mut kept_idle = false;
        http2.retain(|shared| {
            let idle = shared.streams.load(Ordering::Relaxed) == 0;
            let keep = !idle || !kept_idle;
            kept_idle |= idle;
            keep
        });
    }

    /// Prunes the pool every half idle timeout while it exists (when built inside a runtime),
    /// so idle connections close on time even when no request comes.
    fn start_pruning(pool: &Arc<Pool>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak: Weak<Pool> = Arc::downgrade(pool);
        let period = (pool.idle_timeout / 2).max(Duration::from_millis(100));
        runtime.spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(pool) = weak.upgrade() else { return };
                pool.prune();
            }
        });
    }
}
