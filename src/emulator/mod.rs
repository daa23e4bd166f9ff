//! An in-process stand-in for the Commerce account-management API, for `account-gate demo`,
//! the integration tests and the benchmarks.
//!
//! It behaves like the real API where a gateway can tell the difference: store access tokens
//! from `/oauth/access_token`, account tokens from `/v2/account-members/tokens` for every
//! authentication mechanism in the seed's exact 201 shape (HS256 JWTs with numeric
//! `exp`/`iat`), account-scoped reads that answer 401/403 like the real API, and JSON:API
//! errors everywhere. It is bounded in memory (every table has a cap and answers 503 when
//! full) and never panics on input.
//!
//! # Layout
//!
//! - [`options`]: [`EmulatorOptions`] and the demo ids and secrets.
//! - `router`: path → handler.
//! - `counters`: requests received, in total and by path, for tests.
//! - `oauth`, `tokens`, `accounts`: the endpoints.
//! - `request`: body limits, credentials and JSON:API `data` checks shared by the endpoints.
//! - `state`: the capped in-memory tables.
//! - `jwt`: signing and verifying account tokens; [`mint_token`] for tests.
//! - `error`: the one place a refusal becomes a JSON:API answer.

mod accounts;
mod counters;
mod error;
mod jwt;
mod oauth;
pub mod options;
mod request;
mod router;
mod state;
mod tokens;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

pub use jwt::mint_token;
pub use options::{
    EmulatorOptions, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_PASSWORD_PROFILE_ID, DEMO_REALM_ID,
    DEMO_SIGNING_SECRET, DEMO_STORE_ID,
};

use state::State;

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// The emulator server; see the module docs.
pub struct Emulator;

impl Emulator {
    /// Serve on an already-bound listener until `shutdown` completes, then drain connections.
    pub async fn serve(
        listener: TcpListener,
        opts: EmulatorOptions,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        let base_url = base_url(listener.local_addr()?);
        run(listener, Arc::new(State::new(opts, base_url)), shutdown).await
    }

    /// Bind `addr` (use `127.0.0.1:0` in tests), serve on the current runtime, return a handle.
    ///
    /// Dropping the handle shuts the emulator down too.
    pub async fn spawn(addr: SocketAddr, opts: EmulatorOptions) -> io::Result<EmulatorHandle> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::new(opts, base_url(addr)));
        let (shutdown, stop) = oneshot::channel::<()>();
        // A dropped sender also completes `stop`, which is what makes drop a shutdown.
        let stopped = async move {
            let _ = stop.await;
        };
        let task = tokio::spawn(run(listener, Arc::clone(&state), stopped));
        Ok(EmulatorHandle {
            addr,
            state,
            shutdown,
            task,
        })
    }
}

/// A running emulator: its address, its counters, and the way to stop it.
pub struct EmulatorHandle {
    /// Where it listens (the actual port when bound to port 0).
    addr: SocketAddr,
    /// Shared with the server, so tests can read counters and OTPs.
    state: Arc<State>,
    /// Sending (or dropping) this stops the accept loop.
    shutdown: oneshot::Sender<()>,
    /// The server task, awaited by `shutdown` so the port is closed when it returns.
    task: JoinHandle<io::Result<()>>,
}

impl EmulatorHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL, e.g. `http://127.0.0.1:PORT` (an unspecified bind address is given as loopback).
    pub fn url(&self) -> String {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
            });
        }
        format!("http://{addr}")
    }

    /// The options it runs with (e.g. to `mint_token` against its secret).
    pub fn options(&self) -> &EmulatorOptions {
        &self.state.opts
    }

    /// Total requests received, whatever their answer.
    pub fn requests(&self) -> u64 {
        self.state.counters.total()
    }

    /// Requests whose path (without query) starts with `path_prefix`.
    pub fn requests_to(&self, path_prefix: &str) -> u64 {
        self.state.counters.with_prefix(path_prefix)
    }

    /// The pending one-time password of `username`, standing in for the email the API sends.
    pub fn last_otp(&self, username: &str) -> Option<String> {
        self.state.last_otp(username)
    }

    /// Stop accepting, let in-flight requests finish (up to the drain timeout), and wait.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(());
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(%err, "emulator stopped with an error"),
            Err(err) => tracing::warn!(%err, "emulator task failed"),
        }
    }
}

fn base_url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// The accept loop: one task per connection, then a bounded drain on shutdown.
async fn run(
    listener: TcpListener,
    state: Arc<State>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    // `true` tells every connection to finish its in-flight requests and close.
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(serve_connection(stream, Arc::clone(&state), drain_rx.clone()));
                }
                Err(err) => {
                    tracing::warn!(%err, "emulator accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            // Reap finished connections so the set does not grow over a long benchmark.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let _ = drain_tx.send(true);
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(state.opts.drain_timeout, drained)
        .await
        .is_err()
    {
        tracing::warn!("emulator drain timed out; dropping remaining connections");
        connections.abort_all();
    }
    Ok(())
}

/// Serves one connection (HTTP/1.1 or HTTP/2, detected from the preface).
async fn serve_connection(stream: TcpStream, state: Arc<State>, mut drain: watch::Receiver<bool>) {
    // Small JSON answers: waiting for Nagle only adds latency to every benchmark request.
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request| {
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(router::handle(state, request).await) }
    });
    let builder = Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(err) = result {
                tracing::debug!(%err, "emulator connection ended with an error");
            }
        }
        _ = drain.changed() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}
