//! Log output: `tracing` events to stderr as text or JSON lines, level from `RUST_LOG` or the
//! config; and, when tracing is on, the gateway's spans to OpenTelemetry.
//!
//! The log layer takes events only: spans belong to the trace layer, and a span no layer takes
//! is never even created, which is what keeps traces free when they are off.
//!
//! Lines are not written by the thread that logs them. They are appended to one buffer in
//! memory, and a thread of its own writes the buffer out when 64 KiB are waiting or 50 ms after
//! the first line of a batch, whichever comes first: one `write(2)` for hundreds of access
//! lines, none on a request's thread. Past 1 MiB waiting (stderr blocked, a log collector
//! stalled) lines are dropped and counted (`account_gate_log_lines_dropped_total`), so a
//! request never waits on its log line. [`LogGuard`] writes out what is left at exit.
//!
//! Hand-written rather than `tracing-appender`'s non-blocking writer: that one sends each line
//! through a channel to its writing thread, which it wakes for every line that finds it idle,
//! and writes each batch as soon as it is woken, so at a steady few thousand lines a second it
//! costs a wake-up (a system call) per line instead of a write.

pub mod access;

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tracing_subscriber::filter::{filter_fn, FilterExt, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{LogConfig, LogFormat};
use crate::telemetry::Telemetry;

/// A batch is written out once this much is waiting.
const BATCH_BYTES: usize = 64 * 1024;
/// A line waits at most this long before its batch is written.
const BATCH_DELAY: Duration = Duration::from_millis(50);
/// Past this much waiting, lines are dropped.
const MAX_WAITING: usize = 1024 * 1024;
/// How long the last lines may take to be written at exit.
const FLUSH_AT_EXIT: Duration = Duration::from_secs(2);

/// Lines dropped because the buffer was full, since start.
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Where the installed subscriber's lines go, for [`LogGuard`] and the access lines.
static SINK: OnceLock<Sink> = OnceLock::new();

struct Sink {
    lines: Arc<Lines>,
    json: bool,
    /// Whether the filter lets access lines through.
    access: bool,
}

/// Lines dropped because the output could not keep up, since start.
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Installs the global subscriber, with `telemetry`'s layer when tracing is on. A second call
/// (tests, the demo) is a no-op. Keep the guard until the process exits: dropping it writes out
/// the lines still waiting.
pub fn init(config: &LogConfig, telemetry: Option<&Telemetry>) -> LogGuard {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // The hint keeps the combined filter's maximum level the level filter's: a filter without
    // one would lift it to TRACE, and every `trace!` in the libraries would be looked at again.
    let events =
        filter.and(filter_fn(|meta| meta.is_event()).with_max_level_hint(LevelFilter::TRACE));
    let buffer = Lines::start();
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(LineWriter(buffer.clone()))
        .with_ansi(std::io::stderr().is_terminal());
    let lines = match config.format {
        LogFormat::Json => lines.json().flatten_event(true).boxed(),
        LogFormat::Text => lines.boxed(),
    };
    // Two shapes rather than an `Option` layer: an absent layer counts as one interested in
    // everything, which would make every span and every event below the level live again.
    let lines = lines.with_filter(events);
    let installed = match telemetry {
        Some(telemetry) => Registry::default()
            .with(lines)
            .with(telemetry.layer())
            .try_init(),
        None => Registry::default().with(lines).try_init(),
    };
    match installed {
        Ok(()) => {
            let _ = SINK.set(Sink {
                lines: buffer,
                json: config.format == LogFormat::Json,
                access: access::filter_allows(),
            });
        }
        // Another subscriber was there first: this buffer's thread has nothing to write.
        Err(_) => buffer.close(Duration::ZERO),
    }
    LogGuard(())
}

/// Writes out the lines still waiting when dropped (at most [`FLUSH_AT_EXIT`]: a blocked stderr
/// must not keep the process from exiting).
#[must_use = "dropping the guard writes out the log lines still waiting"]
pub struct LogGuard(());

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(sink) = SINK.get() {
            sink.lines.close(FLUSH_AT_EXIT);
        }
    }
}

/// The buffer and its writing thread.
struct Lines {
    state: Mutex<State>,
    /// Wakes the writing thread: a batch began, filled, or the buffer closed.
    wake: Condvar,
    /// Signalled by the writing thread when it has written everything after a close.
    done: Condvar,
}

#[derive(Default)]
struct State {
    waiting: Vec<u8>,
    /// When the oldest waiting line arrived.
    since: Option<Instant>,
    closed: bool,
    finished: bool,
}

impl Lines {
    fn start() -> Arc<Self> {
        let lines = Arc::new(Lines {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            done: Condvar::new(),
        });
        let writer = lines.clone();
        let spawned = std::thread::Builder::new()
            .name("log-writer".to_owned())
            .spawn(move || writer.write_out(&mut std::io::stderr()));
        if spawned.is_err() {
            // Without its thread the buffer would only fill: lines are written where they are
            // logged instead.
            lines.lock().finished = true;
        }
        lines
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves a buffer of complete lines: keep using it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes one line. Never blocks on the output.
    fn push(&self, line: &[u8]) {
        let mut state = self.lock();
        if state.finished {
            drop(state);
            let _ = std::io::stderr().write_all(line);
            return;
        }
        if state.waiting.len() + line.len() > MAX_WAITING {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let before = state.waiting.len();
        state.waiting.extend_from_slice(line);
        if before == 0 {
            state.since = Some(Instant::now());
            self.wake.notify_one();
        } else if before < BATCH_BYTES && state.waiting.len() >= BATCH_BYTES {
            self.wake.notify_one();
        }
    }

    /// The writing thread: waits for a batch to fill or age, writes it outside the lock.
    fn write_out(&self, out: &mut impl Write) {
        let mut batch = Vec::with_capacity(BATCH_BYTES);
        let mut state = self.lock();
        loop {
            let due = state.since.map(|since| since + BATCH_DELAY);
            let ready = state.closed
                || state.waiting.len() >= BATCH_BYTES
                || due.is_some_and(|due| due <= Instant::now());
            if !ready {
                state = match due {
                    None => self
                        .wake
                        .wait(state)
                        .unwrap_or_else(|poisoned| poisoned.into_inner()),
                    Some(due) => {
                        let left = due.saturating_duration_since(Instant::now());
                        match self.wake.wait_timeout(state, left) {
                            Ok((state, _)) => state,
                            Err(poisoned) => poisoned.into_inner().0,
                        }
                    }
                };
                continue;
            }
            std::mem::swap(&mut state.waiting, &mut batch);
            state.since = None;
            let closing = state.closed;
            drop(state);
            if !batch.is_empty() && out.write_all(&batch).and_then(|()| out.flush()).is_err() {
                let lost = batch.iter().filter(|&&b| b == b'\n').count();
                DROPPED.fetch_add(lost as u64, Ordering::Relaxed);
            }
            batch.clear();
            state = self.lock();
            if closing && state.waiting.is_empty() {
                state.finished = true;
                self.done.notify_all();
                return;
            }
        }
    }

    /// Stops taking lines into the buffer (later ones are written directly) and waits up to
    /// `within` for the writing thread to write out what is there.
    fn close(&self, within: Duration) {
        let mut state = self.lock();
        state.closed = true;
        self.wake.notify_one();
        let deadline = Instant::now() + within;
        while !state.finished {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            state = match self.done.wait_timeout(state, left) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

/// The log layer's writer: hands each formatted line to the buffer.
#[derive(Clone)]
struct LineWriter(Arc<Lines>);

impl Write for &Lines {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        self.push(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LineWriter {
    type Writer = &'a Lines;

    fn make_writer(&'a self) -> Self::Writer {
        &self.0
    }
}
