//! What one client connection is doing, as the listener's deadlines need to know it: when it was
//! accepted, whether a request is in flight, since when it has been idle, and whether the head
//! of its next HTTP/1 request has started to arrive.
//!
//! hyper knows none of this from outside: its HTTP/1 header timeout starts only after the
//! protocol has been detected and restarts as soon as a keep-alive connection is idle, and its
//! HTTP/2 server has no idle timeout. So every connection carries a [`Tracker`], fed by the
//! socket wrapper ([`Watched`]: bytes read) and by the service (requests started and finished,
//! through [`InFlight`] on the answer body), and read by [`watchdog`], which decides when the
//! connection has had its time.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body::{Body as HttpBody, Frame, SizeHint};
use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Why the gateway ended a connection (or why it ended): the `reason` label of
/// `connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// No complete request head within `server.header_read_timeout`.
    HeaderTimeout,
    /// A token request's body was not complete within `server.body_read_timeout`.
    BodyTimeout,
    /// No request in flight for `server.idle_timeout`.
    Idle,
    /// Closed at `max_connections`: the idlest one making room, or a newcomer refused with 503.
    Overload,
    /// The client stopped reading an answer for `upstream.body_timeout`.
    SendTimeout,
    /// The gateway is shutting down.
    Shutdown,
    /// The client closed it, or asked for it to be closed after an answer.
    Client,
    /// A protocol or socket error (malformed request, reset, failed write).
    Error,
}

impl CloseReason {
    /// Every reason, in label order.
    pub const ALL: [CloseReason; 8] = [
        CloseReason::HeaderTimeout,
        CloseReason::BodyTimeout,
        CloseReason::Idle,
        CloseReason::Overload,
        CloseReason::SendTimeout,
        CloseReason::Shutdown,
        CloseReason::Client,
        CloseReason::Error,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::BodyTimeout => "body_timeout",
            CloseReason::Idle => "idle",
            CloseReason::Overload => "overload",
            CloseReason::SendTimeout => "send_timeout",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Client => "client",
            CloseReason::Error => "error",
        }
    }

    /// The position of this reason in [`CloseReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    fn from_index(index: u8) -> Option<CloseReason> {
        CloseReason::ALL
            .get(usize::from(index).checked_sub(1)?)
            .copied()
    }
}

/// Put on an answer's extensions by the handler when the connection must not be reused after
/// it (a token request whose body timed out): HTTP/1 closes once the answer is written, and
/// the close is counted under this reason.
#[derive(Debug, Clone, Copy)]
pub struct CloseAfter(pub CloseReason);

/// The state of one connection, shared by its socket, its service and its watchdog.
pub(super) struct Tracker {
    /// When the connection was accepted; every time below is milliseconds after it.
    pub accepted: Instant,
    /// Requests whose answer is not yet fully written.
    in_flight: AtomicU32,
    /// Requests started; zero until the first complete head.
    started: AtomicU64,
    /// When `in_flight` last fell to zero (zero: accept).
    idle_since: AtomicU64,
    /// When the first byte of the next HTTP/1 head arrived on an idle connection, plus one
    /// (zero: none has).
    head_since: AtomicU64,
    /// When a write to the client last found the socket full, plus one (zero: the last write
    /// went through).
    write_blocked_since: AtomicU64,
    /// HTTP/2 frames (pings, window updates) are no request heads.
    http2: AtomicBool,
    /// Why the handler asked to close after an answer, plus one (zero: it did not).
    close_after: AtomicU8,
    /// Set when the listener closes this connection to make room for a new one.
    evicted: AtomicBool,
    /// Wakes the connection's task on eviction.
    evict: Notify,
}

impl Tracker {
    pub(super) fn new(accepted: Instant) -> Self {
        Tracker {
            accepted,
            in_flight: AtomicU32::new(0),
            started: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            write_blocked_since: AtomicU64::new(0),
            http2: AtomicBool::new(false),
            close_after: AtomicU8::new(0),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
        }
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.duration_since(self.accepted).as_millis()).unwrap_or(u64::MAX)
    }

    /// The end of the millisecond `millis` (as [`Tracker::millis`] truncates): a deadline
    /// counted from it never falls due before its full length has passed. Every connection's
    /// moments move alike, so their order (the idlest first) is kept.
    fn at(&self, millis: u64) -> Instant {
        self.accepted + Duration::from_millis(millis.saturating_add(1))
    }

    /// A request head was complete and its handler is starting.
    pub(super) fn request_started(&self, http2: bool) {
        if http2 && !self.http2.load(Relaxed) {
            self.http2.store(true, Relaxed);
        }
        self.in_flight.fetch_add(1, Relaxed);
        self.started.fetch_add(1, Relaxed);
        if self.head_since.load(Relaxed) != 0 {
            self.head_since.store(0, Relaxed);
        }
    }

    /// A request's answer was written whole (or given up).
    fn request_finished(&self) {
        if self.in_flight.fetch_sub(1, Relaxed) == 1 {
            self.idle_since.store(self.millis(Instant::now()), Relaxed);
        }
    }

    /// Bytes arrived from the client.
    fn bytes_read(&self) {
        // Only the first byte of a head on an idle HTTP/1 connection matters; the loads keep
        // every other read free of a clock read.
        if self.head_since.load(Relaxed) == 0
            && self.in_flight.load(Relaxed) == 0
            && self.started.load(Relaxed) != 0
            && !self.http2.load(Relaxed)
        {
            let now = self.millis(Instant::now());
            self.head_since.store(now.saturating_add(1), Relaxed);
        }
    }

    /// A write found the client's socket full: the client is not reading.
    fn write_blocked(&self) {
        if self.write_blocked_since.load(Relaxed) == 0 {
            let now = self.millis(Instant::now());
            self.write_blocked_since
                .store(now.saturating_add(1), Relaxed);
        }
    }

    /// A write went through.
    fn write_moved(&self) {
        if self.write_blocked_since.load(Relaxed) != 0 {
            self.write_blocked_since.store(0, Relaxed);
        }
    }

    /// The handler asked for the connection to close after an answer, for `reason`.
    pub(super) fn close_after(&self, reason: CloseReason) {
        // Stored plus one: zero means unset.
        let code = u8::try_from(reason.index() + 1).unwrap_or(0);
        self.close_after.store(code, Relaxed);
    }

    /// Why the handler asked to close, if it did.
    pub(super) fn close_reason(&self) -> Option<CloseReason> {
        CloseReason::from_index(self.close_after.load(Relaxed))
    }

    /// Since when the connection has had no request in flight; `None` while one is.
    pub(super) fn idle_since(&self) -> Option<Instant> {
        if self.in_flight.load(Relaxed) != 0 {
            return None;
        }
        Some(self.at(self.idle_since.load(Relaxed)))
    }

    /// Asks the connection's task to close it, to make room for a new one.
    pub(super) fn evict(&self) {
        self.evicted.store(true, Relaxed);
        self.evict.notify_one();
    }

    /// Completes once [`Tracker::evict`] has been called.
    pub(super) async fn evicted(&self) {
        while !self.evicted.load(Relaxed) {
            self.evict.notified().await;
        }
    }

    /// The next moment something may be due, and what closes the connection if it is.
    fn next_deadline(&self, now: Instant, limits: &Deadlines) -> (Instant, Option<CloseReason>) {
        if self.started.load(Relaxed) == 0 {
            // The first head, counted from accept: protocol detection included.
            return (
                self.accepted + limits.header_read,
                Some(CloseReason::HeaderTimeout),
            );
        }
        if self.in_flight.load(Relaxed) != 0 {
            // Busy: body timeouts bound what the upstream and the client's body do; what is
            // left is a client that does not read its answer.
            return match self.write_blocked_since.load(Relaxed) {
                0 => (now + limits.idle, None),
                since => (
                    self.at(since - 1) + limits.send_stall,
                    Some(CloseReason::SendTimeout),
                ),
            };
        }
        match self.head_since.load(Relaxed) {
            0 => (
                self.at(self.idle_since.load(Relaxed)) + limits.idle,
                Some(CloseReason::Idle),
            ),
            since => (
                self.at(since - 1) + limits.header_read,
                Some(CloseReason::HeaderTimeout),
            ),
        }
    }
}

/// The deadlines one listener gives its connections.
#[derive(Debug, Clone, Copy)]
pub(super) struct Deadlines {
    /// Accept to first complete head; first byte to complete head for later HTTP/1 requests.
    pub header_read: Duration,
    /// No request in flight.
    pub idle: Duration,
    /// A client that does not take an answer's bytes.
    pub send_stall: Duration,
}

/// Completes when the connection has overrun a deadline, with the reason to close it.
pub(super) async fn watchdog(tracker: &Tracker, limits: Deadlines) -> CloseReason {
    // Requests start and finish without telling the watchdog, so it looks at least this often;
    // a deadline it finds is then exact, since it is never found later than it falls due.
    let look_every = limits.header_read.min(limits.idle).min(limits.send_stall);
    let mut wake = tracker.accepted + look_every;
    loop {
        tokio::time::sleep_until(wake.into()).await;
        let now = Instant::now();
        match tracker.next_deadline(now, &limits) {
            (due, Some(reason)) if due <= now => return reason,
            (due, _) => wake = due.min(now + look_every),
        }
    }
}

/// The client socket, noting in the [`Tracker`] when bytes arrive.
pub(super) struct Watched {
    stream: TcpStream,
    tracker: std::sync::Arc<Tracker>,
}

impl Watched {
    pub(super) fn new(stream: TcpStream, tracker: std::sync::Arc<Tracker>) -> Self {
        Watched { stream, tracker }
    }
}

impl Watched {
    fn note_write(&self, blocked: bool) {
        if blocked {
            self.tracker.write_blocked();
        } else {
            self.tracker.write_moved();
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.tracker.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.note_write(polled.is_pending());
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.note_write(polled.is_pending());
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// One request in flight: counted in the tracker and the `requests_in_flight` gauge from the
/// moment its head is complete until its answer is written whole, or given up.
pub(super) struct RequestGuard {
    tracker: std::sync::Arc<Tracker>,
    gauge: Option<IntGauge>,
}

impl RequestGuard {
    pub(super) fn new(
        tracker: std::sync::Arc<Tracker>,
        gauge: Option<IntGauge>,
        http2: bool,
    ) -> Self {
        tracker.request_started(http2);
        if let Some(gauge) = &gauge {
            gauge.inc();
        }
        RequestGuard { tracker, gauge }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.tracker.request_finished();
        if let Some(gauge) = &self.gauge {
            gauge.dec();
        }
    }
}

/// An answer body that holds its request's [`RequestGuard`] until hyper drops it: after the
/// last frame is written, or when the client goes away.
pub struct InFlight<B> {
    body: B,
    _guard: RequestGuard,
}

impl<B> InFlight<B> {
    pub(super) fn new(body: B, guard: RequestGuard) -> Self {
        InFlight {
            body,
            _guard: guard,
        }
    }
}

impl<B: HttpBody + Unpin> HttpBody for InFlight<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_index_their_own_label() {
        for (i, reason) in CloseReason::ALL.into_iter().enumerate() {
            assert_eq!(reason.index(), i, "{}", reason.as_str());
            assert_eq!(CloseReason::from_index(i as u8 + 1), Some(reason));
        }
        assert_eq!(CloseReason::from_index(0), None);
    }

    #[test]
    fn each_phase_has_its_deadline() {
        let limits = Deadlines {
            header_read: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            send_stall: Duration::from_secs(30),
        };
        let accepted = Instant::now();
        let tracker = std::sync::Arc::new(Tracker::new(accepted));
        let now = accepted + Duration::from_secs(1);
        // Nothing yet: the head is due 10 s after accept, bytes or not.
        tracker.bytes_read();
        assert_eq!(
            tracker.next_deadline(now, &limits),
            (
                accepted + limits.header_read,
                Some(CloseReason::HeaderTimeout)
            )
        );
        // A request in flight: nothing is due.
        let guard = RequestGuard::new(tracker.clone(), None, false);
        assert_eq!(tracker.next_deadline(now, &limits).1, None);
        // Its answer written: idle from then on, and never due before the full idle timeout
        // has passed, though moments are kept in whole milliseconds.
        let finishing = Instant::now();
        drop(guard);
        let (due, reason) = tracker.next_deadline(now, &limits);
        assert_eq!(reason, Some(CloseReason::Idle));
        assert!(due >= finishing + limits.idle);
        assert!(due <= Instant::now() + limits.idle + Duration::from_millis(1));
        // The next head starts arriving: the header deadline again, from its first byte.
        let arriving = Instant::now();
        tracker.bytes_read();
        let (due, reason) = tracker.next_deadline(now, &limits);
        assert_eq!(reason, Some(CloseReason::HeaderTimeout));
        assert!(due >= arriving + limits.header_read);
        assert!(due <= Instant::now() + limits.header_read + Duration::from_millis(1));
    }
}
