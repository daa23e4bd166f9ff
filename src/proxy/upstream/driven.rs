//! An HTTP/1.1 upstream connection driven by whoever holds it, not by a task of its own: the
//! request that sends on it polls it while waiting for the answer's head, and the answer's body
//! polls it while it is read; then it goes back to the pool, where nothing polls it.
//!
//! Why: with a task per connection, every step of an exchange woke two tasks in turn — the
//! upstream's bytes woke the connection's task, which parsed them and woke the request's task
//! to take them — three task polls per proxied request that did nothing but hand work on.
//! Here the upstream's bytes wake the request's own task, which parses them itself.
//!
//! The catch is that a pooled connection is polled by nobody: an upstream that closes it is
//! noticed when the connection is next polled — by the request that takes it (which then gets
//! its request back unsent, and tries another connection) or by the pool's pruning timer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use super::super::Body;
use super::pool::{Pool, Timer};

/// The transport under an upstream connection: TCP, or rustls over TCP.
pub(super) type Stream = MaybeHttpsStream<TokioIo<TcpStream>>;

/// One HTTP/1.1 connection to the upstream, with what its requests need.
pub(super) struct Http1 {
    pub(super) sender: http1::SendRequest<Body>,
    /// `None` once it has ended (closed by either side, or failed). Dropping it fails the
    /// request waiting on it, handing back one not yet written.
    connection: Option<Box<http1::Connection<Stream, Body>>>,
    /// The serving thread whose runtime registered its socket: readiness is reported by that
    /// thread's reactor, so a request of another thread would be woken through it.
    pub(super) thread: usize,
    /// The timer for the heads of its answers (`upstream.response_timeout`).
    pub(super) timer: Timer,
    /// Its place among `upstream.max_connections`, freed when it is dropped.
    _permit: OwnedSemaphorePermit,
}

impl Http1 {
    pub(super) fn new(
        sender: http1::SendRequest<Body>,
        connection: http1::Connection<Stream, Body>,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        Http1 {
            sender,
            connection: Some(Box::new(connection)),
            thread: super::super::serving_thread(),
            timer: None,
            _permit: permit,
        }
    }

    /// Lets the connection do what it can (write a request, read an answer), registering `cx`
    /// for whatever it waits on. An ended connection is dropped.
    pub(super) fn drive(&mut self, cx: &mut Context<'_>) {
        let Some(connection) = self.connection.as_mut() else {
            return;
        };
        if let Poll::Ready(ended) = Pin::new(connection).poll(cx) {
            if let Err(error) = ended {
                tracing::debug!(%error, "upstream connection ended with an error");
            }
            self.connection = None;
        }
    }

    /// Whether it may take a request: not ended and ready. A pooled connection is polled here
    /// once, with nobody to wake, to notice a close or a read it has not yet finished.
    pub(super) fn usable(&mut self) -> bool {
        if self.connection.is_some() && self.sender.is_ready() {
            return true;
        }
        self.drive(&mut Context::from_waker(Waker::noop()));
        self.connection.is_some() && self.sender.is_ready()
    }

    /// Whether it has ended, polling it once to find out.
    pub(super) fn ended(&mut self) -> bool {
        self.drive(&mut Context::from_waker(Waker::noop()));
        self.connection.is_none()
    }

    /// Sends `request` and drives the connection until the answer's head arrives or `timer`
    /// fires (`None`).
    pub(super) async fn exchange(
        &mut self,
        request: http::Request<Body>,
        timer: Pin<&mut tokio::time::Sleep>,
    ) -> Option<
        Result<http::Response<Incoming>, hyper::client::conn::TrySendError<http::Request<Body>>>,
    > {
        let mut sending = std::pin::pin!(self.sender.try_send_request(request));
        let mut timer = timer;
        std::future::poll_fn(|cx| {
            self.drive(cx);
            // The answer comes only out of the poll just above (or out of dropping the
            // connection), so waiting for it needs no waker: one would be woken from inside
            // this very poll and have the task polled again for nothing.
            let quiet = &mut Context::from_waker(Waker::noop());
            if let Poll::Ready(answer) = sending.as_mut().poll(quiet) {
                return Poll::Ready(Some(answer));
            }
            timer.as_mut().poll(cx).map(|()| None)
        })
        .await
    }
}

/// The body of an upstream answer.
pub struct AnswerBody {
    body: Incoming,
    /// The HTTP/1.1 connection it arrives on, driven as the body is read and handed back to
    /// the pool when the body has been read whole; `None` for HTTP/2 (whose connections have
    /// tasks of their own) and once handed back.
    held: Option<Held>,
}

struct Held {
    connection: Http1,
    pool: Arc<Pool>,
    /// When the answer's head arrived: the start of the connection's idle time.
    since: Instant,
}

impl AnswerBody {
    /// An HTTP/2 answer: its connection has a task of its own.
    pub(super) fn shared(body: Incoming) -> Self {
        AnswerBody { body, held: None }
    }

    /// An answer arriving on `connection`, which goes back to `pool` once the body is read.
    pub(super) fn held(body: Incoming, connection: Http1, pool: Arc<Pool>, since: Instant) -> Self {
        AnswerBody {
            body,
            held: Some(Held {
                connection,
                pool,
                since,
            }),
        }
    }

    /// Hands the connection back to the pool, unless it has ended.
    fn hand_back(&mut self) {
        if let Some(held) = self.held.take() {
            if held.connection.connection.is_some() {
                held.pool.put(held.connection, held.since);
            }
        }
    }
}

impl HttpBody for AnswerBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = match &mut this.held {
            None => Pin::new(&mut this.body).poll_frame(cx),
            Some(held) => {
                // What the connection has read is taken first: a small answer came whole with
                // its head, and needs no further poll of the connection. Its frames come only
                // out of polling the connection here, which registers `cx` for whatever it
                // waits on, so the body is polled with no waker of its own.
                let quiet = &mut Context::from_waker(Waker::noop());
                match Pin::new(&mut this.body).poll_frame(quiet) {
                    Poll::Pending => {
                        held.connection.drive(cx);
                        Pin::new(&mut this.body).poll_frame(quiet)
                    }
                    ready => ready,
                }
            }
        };
        if let Poll::Ready(None) = frame {
            this.hand_back();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for AnswerBody {
    /// A body read whole (or empty from the start, as for `HEAD`, `204` and `304`, which the
    /// server may never poll) leaves its connection reusable; one given up halfway closes it,
    /// since the rest of the answer would still be on the way.
    fn drop(&mut self) {
        if self.body.is_end_stream() {
            self.hand_back();
        }
    }
}
