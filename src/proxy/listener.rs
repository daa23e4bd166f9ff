//! The accept loop shared by the data and admin listeners: connection limit, HTTP/1.1 and h2c,
//! header limits and timeouts, and graceful drain.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::Body;

/// Limits applied to every connection of one listener.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time a client has to send a complete request head (HTTP/1).
    pub header_read_timeout: Duration,
    /// Largest request head accepted (431 beyond, for HTTP/1).
    pub max_header_bytes: usize,
    /// Time in-flight requests get to finish once `stop` has fired.
    pub shutdown_grace: Duration,
}

/// Serves connections from `listener` with `handler` until `stop` completes, then stops
/// accepting, lets in-flight requests finish within `shutdown_grace`, and returns.
pub async fn serve<H, F>(
    listener: TcpListener,
    settings: ListenerSettings,
    handler: H,
    stop: impl Future<Output = ()>,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        // Answers keep hyper's queued writes (head and body chunks in one writev()). One flat
        // buffer instead (`writev(false)`) measured +2.5 % GETs and +4 % sign-ups, but that
        // buffer keeps the size of the largest answer it ever held for as long as the
        // connection lives, and upstream chunks can be hundreds of KiB.
        .max_buf_size(settings.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX));
    let handler = Arc::new(handler);
    let permits = Arc::new(Semaphore::new(settings.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop);

    loop {
        // Wait for a free slot before accepting, so excess clients queue in the kernel backlog
        // instead of costing memory here.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // the semaphore is never closed
            },
            () = &mut stop => break,
        };
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
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let service = service_fn(move |request| handler(request, peer));
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            drop(permit);
        });
    }

    drop(listener);
    let open = graceful.count();
    tracing::info!(open, "listener closed, draining connections");
    if tokio::time::timeout(settings.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace expired with requests still in flight");
    }
}
