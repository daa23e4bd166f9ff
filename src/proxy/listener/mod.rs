//! The accept loop shared by the data and admin listeners: HTTP/1.1 and h2c on one port, a
//! deadline on every connection from accept, a connection limit that never leaves a client in
//! the kernel backlog, and graceful drain.
//!
//! Every connection runs in its own task beside a [`watchdog`](connection::watchdog): its first
//! request head must be complete within `header_read_timeout` of accept, whatever protocol it
//! turns out to speak (a silent socket or half an HTTP/2 preface is closed like a slow HTTP/1
//! head); later HTTP/1 heads get the same time from their first byte; a connection with no
//! request in flight is closed after `idle_timeout`. At `max_connections` a new client is still
//! accepted: the idlest connection is closed to make room ([`slots`]), and only when every
//! connection has a request in flight is the newcomer answered `503` and closed.

mod connection;
mod slots;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};

use super::Body;
use crate::config::Http2Config;
use crate::metrics::ListenerMetrics;
use connection::{Deadlines, RequestGuard, Tracker, Watched};
use slots::Slots;

pub use connection::{CloseAfter, CloseReason, InFlight};

/// Limits applied to every connection of one listener.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    /// Connections served at once; beyond, the idlest is closed or the newcomer refused.
    pub max_connections: usize,
    /// Time a client has to send a complete request head: from accept for the first, from the
    /// first byte for later HTTP/1 heads.
    pub header_read_timeout: Duration,
    /// Time a connection may stay open with no request in flight.
    pub idle_timeout: Duration,
    /// Time a client may leave an answer's bytes unread before it is disconnected.
    pub send_timeout: Duration,
    /// Largest request head accepted (431 beyond, for HTTP/1; the header-list limit of HTTP/2).
    pub max_header_bytes: usize,
    /// What one HTTP/2 connection may hold.
    pub http2: Http2Config,
    /// Time in-flight requests get to finish once `stop` has fired.
    pub shutdown_grace: Duration,
    /// TLS (`[server.tls]`), when set: the settings new handshakes use, swapped when the
    /// certificate files change. The handshake must be done within `header_read_timeout`.
    pub tls: Option<Arc<ArcSwap<rustls::ServerConfig>>>,
}

/// Newcomers being refused with `503` at once; beyond, they are closed without a word, so a
/// flood cannot make the refusals themselves pile up.
const REFUSING_AT_ONCE: usize = 64;
/// How long a refusal or an idle connection's goodbye (HTTP/2 GOAWAY) may take.
const GOODBYE_WITHIN: Duration = Duration::from_secs(1);

/// One listener's connection limit (`max_connections` places), shared by every thread that
/// accepts on the listener's address: the limit is the address's, whichever thread a connection
/// lands on.
#[derive(Clone)]
pub struct Places(Arc<Slots>);

impl Places {
    pub fn new(max_connections: usize) -> Self {
        Places(Arc::new(Slots::new(max_connections.max(1))))
    }
}

/// Serves connections from `listener` with `handler` until `stop` completes, then stops
/// accepting, lets in-flight requests finish within `shutdown_grace`, and returns.
pub async fn serve<H, F>(
    listener: TcpListener,
    settings: ListenerSettings,
    places: Places,
    metrics: ListenerMetrics,
    handler: H,
    stop: impl Future<Output = ()>,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    let builder = Arc::new(builder(&settings));
    let handler = Arc::new(handler);
    let metrics = Arc::new(metrics);
    let slots = places.0;
    let refusing = Arc::new(Semaphore::new(REFUSING_AT_ONCE));
    let deadlines = Deadlines {
        header_read: settings.header_read_timeout,
        idle: settings.idle_timeout,
        send_stall: settings.send_timeout,
    };
    // Every connection task holds a sender; once all are gone, the drain is over.
    let (open_tx, mut all_closed) = mpsc::channel::<()>(1);
    let (shutdown_tx, shutdown) = watch::channel(false);
    tokio::pin!(stop);

    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let tracker = Arc::new(Tracker::new(Instant::now()));
        let Some(slot) = slots.admit(&tracker) else {
            refuse(stream, &refusing, &metrics);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            tls: settings.tls.clone(),
            builder: builder.clone(),
            handler: handler.clone(),
            metrics: metrics.clone(),
            tracker,
            deadlines,
            shutdown: shutdown.clone(),
            _slot: slot,
            _open: open_tx.clone(),
        };
        tokio::spawn(connection.run(stream, peer));
    }

    drop(listener);
    drop(open_tx);
    tracing::info!(open = slots.len(), "listener closed, draining connections");
    let _ = shutdown_tx.send(true);
    if tokio::time::timeout(settings.shutdown_grace, all_closed.recv())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace expired with requests still in flight");
    }
}

/// The hyper connection builder for one listener's settings.
fn builder(settings: &ListenerSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // hyper's own header timer restarts the moment a keep-alive connection is idle, which
        // would make it an idle timeout too; the watchdog times heads from their first byte.
        .header_read_timeout(None)
        // Answers keep hyper's queued writes (head and body chunks in one writev()). One flat
        // buffer instead (`writev(false)`) measured +2.5 % GETs and +4 % sign-ups, but that
        // buffer keeps the size of the largest answer it ever held for as long as the
        // connection lives, and upstream chunks can be hundreds of KiB.
        .max_buf_size(settings.max_header_bytes.max(8192));
    let h2 = &settings.http2;
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(h2.max_concurrent_streams)
        .keep_alive_interval(h2.keep_alive_interval)
        .keep_alive_timeout(h2.keep_alive_timeout)
        .initial_stream_window_size(h2.initial_stream_window_size)
        .initial_connection_window_size(h2.initial_connection_window_size)
        .max_send_buf_size(h2.max_send_buf_size);
    builder
}

/// Answers a newcomer `503 overloaded` and closes it, when every slot has a request in flight.
fn refuse(stream: TcpStream, refusing: &Arc<Semaphore>, metrics: &Arc<ListenerMetrics>) {
    metrics.closed(CloseReason::Overload);
    let Ok(permit) = refusing.clone().try_acquire_owned() else {
        return; // dropped: closed at once
    };
    tokio::spawn(async move {
        let mut stream = stream;
        // An HTTP/1.1 answer: the protocol is not known yet, and an HTTP/2 client reads the
        // close alone, which is all it needs to try elsewhere.
        let answer = crate::answer::overloaded_http1();
        let _ = tokio::time::timeout(GOODBYE_WITHIN, async {
            stream.write_all(&answer).await?;
            stream.shutdown().await
        })
        .await;
        drop(permit);
    });
}

/// One accepted connection and what it needs to be served.
struct Connection<H> {
    /// The listener's TLS settings, when it has TLS.
    tls: Option<Arc<ArcSwap<rustls::ServerConfig>>>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    handler: Arc<H>,
    metrics: Arc<ListenerMetrics>,
    tracker: Arc<Tracker>,
    deadlines: Deadlines,
    /// Turns `true` when the listener stops.
    shutdown: watch::Receiver<bool>,
    /// Frees the connection's place in [`Slots`] when dropped.
    _slot: slots::Slot,
    /// Dropped when the connection is over, which the drain waits for.
    _open: mpsc::Sender<()>,
}

impl<H, F> Connection<H>
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    async fn run(self, stream: TcpStream, peer: SocketAddr) {
        let Connection {
            tls,
            builder,
            handler,
            metrics,
            tracker,
            deadlines,
            mut shutdown,
            ..
        } = self;
        metrics.open.inc();
        let service = {
            let tracker = tracker.clone();
            let in_flight = metrics.in_flight.clone();
            service_fn(move |request: Request<Incoming>| {
                let http2 = request.version() == http::Version::HTTP_2;
                let guard = RequestGuard::new(tracker.clone(), in_flight.clone(), http2);
                // Boxed: the handler's future is several KiB, and held by value in this wrapper
                // it was copied whole into hyper's slot for it: callgrind counted 8 500 more
                // instructions of memcpy per proxied GET than the box's allocation costs.
                let answer = Box::pin(handler(request, peer));
                let tracker = tracker.clone();
                async move {
                    let response = answer.await?;
                    if let Some(CloseAfter(reason)) = response.extensions().get::<CloseAfter>() {
                        tracker.close_after(*reason);
                    }
                    Ok::<_, Infallible>(response.map(|body| InFlight::new(body, guard)))
                }
            })
        };
        let watched = Watched::new(stream, tracker.clone());
        let reason = match tls {
            None => {
                drive(
                    &builder,
                    TokioIo::new(watched),
                    service,
                    &tracker,
                    deadlines,
                    &mut shutdown,
                )
                .await
            }
            Some(tls) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.load_full());
                // The handshake is part of the head: it gets the head's deadline from accept.
                match tokio::time::timeout(deadlines.header_read, acceptor.accept(watched)).await {
                    Ok(Ok(stream)) => {
                        drive(
                            &builder,
                            TokioIo::new(stream),
                            service,
                            &tracker,
                            deadlines,
                            &mut shutdown,
                        )
                        .await
                    }
                    Ok(Err(error)) => {
                        tracing::debug!(%error, "TLS handshake failed");
                        CloseReason::Error
                    }
                    Err(_) => CloseReason::HeaderTimeout,
                }
            }
        };
        metrics.open.dec();
        metrics.closed(reason);
    }
}

/// Serves one connection's requests over `io` until it ends, and says why it did.
async fn drive<I, S>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    service: S,
    tracker: &Tracker,
    deadlines: Deadlines,
    shutdown: &mut watch::Receiver<bool>,
) -> CloseReason
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<InFlight<Body>>,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);

    tokio::select! {
        ended = connection.as_mut() => ended_by(ended, tracker),
        reason = connection::watchdog(tracker, deadlines) => match reason {
            // Nothing in flight: a goodbye (HTTP/2 GOAWAY) is polite and cheap.
            CloseReason::Idle => {
                connection.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(GOODBYE_WITHIN, connection.as_mut()).await;
                reason
            }
            // A client that never finished a head gets nothing more.
            _ => reason,
        },
        () = tracker.evicted() => CloseReason::Overload,
        () = stopping(shutdown) => {
            connection.as_mut().graceful_shutdown();
            // In-flight requests finish; a head still trickling in keeps its deadline.
            tokio::select! {
                ended = connection.as_mut() => match ended {
                    Err(_) => CloseReason::Error,
                    Ok(()) => CloseReason::Shutdown,
                },
                reason = connection::watchdog(tracker, deadlines) => reason,
            }
        }
    }
}

/// Completes once the listener stops.
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    // The borrow `wait_for` returns must not live across an await (it is not `Send`).
    let _ = shutdown.wait_for(|stop| *stop).await.is_ok();
}

/// Why a connection hyper finished serving ended.
fn ended_by(
    result: Result<(), Box<dyn std::error::Error + Send + Sync>>,
    tracker: &Tracker,
) -> CloseReason {
    match result {
        Ok(()) => tracker.close_reason().unwrap_or(CloseReason::Client),
        Err(error) => {
            tracing::debug!(%error, "connection ended with an error");
            // A client gone while an answer was written is still the client's doing.
            match error.downcast_ref::<hyper::Error>() {
                Some(e) if e.is_incomplete_message() || e.is_canceled() => CloseReason::Client,
                _ => tracker.close_reason().unwrap_or(CloseReason::Error),
            }
        }
    }
}
