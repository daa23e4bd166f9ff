//! Log output: `tracing` events to stderr as text or JSON lines, level from `RUST_LOG` or the
//! config; and, when tracing is on, the gateway's spans to OpenTelemetry.
//!
//! The log layer takes events only: spans belong to the trace layer, and a span no layer takes
//! is never even created, which is what keeps traces free when they are off.

use std::io::IsTerminal;

use tracing_subscriber::filter::{filter_fn, FilterExt, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{LogConfig, LogFormat};
use crate::telemetry::Telemetry;

/// Installs the global subscriber, with `telemetry`'s layer when tracing is on. A second call
/// (tests, the demo) is a no-op.
pub fn init(config: &LogConfig, telemetry: Option<&Telemetry>) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // The hint keeps the combined filter's maximum level the level filter's: a filter without
    // one would lift it to TRACE, and every `trace!` in the libraries would be looked at again.
    let events =
        filter.and(filter_fn(|meta| meta.is_event()).with_max_level_hint(LevelFilter::TRACE));
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let lines = match config.format {
        LogFormat::Json => lines.json().flatten_event(true).boxed(),
        LogFormat::Text => lines.boxed(),
    };
    // Two shapes rather than an `Option` layer: an absent layer counts as one interested in
    // everything, which would make every span and every event below the level live again.
    let lines = lines.with_filter(events);
    let _ = match telemetry {
        Some(telemetry) => Registry::default()
            .with(lines)
            .with(telemetry.layer())
            .try_init(),
        None => Registry::default().with(lines).try_init(),
    };
}
