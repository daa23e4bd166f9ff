//! The access line: one per request and per decision, written by hand rather than through
//! `tracing-subscriber`'s formatter.
//!
//! Why by hand: as a `tracing` event the line cost about an eighth of the gateway's throughput
//! (every field visited through `dyn Visit` and `fmt`, the timestamp and the floats formatted by
//! the general routines, the layer stack asked twice), for the one event every request writes.
//! Here it is a few appends to a buffer of the thread's own: the fields are known, only the
//! request id can hold a character that needs escaping, and the date part of the timestamp
//! changes once a second.
//!
//! The line keeps the formatter's shape, so a parser of the other lines reads it too: text
//! `<timestamp>  INFO access: request_id="…" method=GET …`, or with JSON logs one flat object
//! ending in `"target":"access"`. It is filtered like any event of target `access` at `INFO`
//! (`[log] level`, `RUST_LOG`). Without the gateway's own subscriber installed (the library
//! embedded in a program with its own), the line is a `tracing` event as before.

use std::cell::RefCell;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use opentelemetry::trace::TraceId;

/// The line's target, as a filter directive names it.
pub const TARGET: &str = "access";

/// Whether access lines are written: the level and `RUST_LOG` let events of target
/// [`TARGET`] at `INFO` through. A request asks before it gathers anything for its line.
///
/// Under the gateway's own subscriber the answer is the one read when it was installed (its
/// filter never changes); asking the filter costs a few hundred instructions a request, since
/// an event filter shared by every target leaves each call site's interest at "sometimes".
pub fn enabled() -> bool {
    match super::SINK.get() {
        Some(sink) => sink.access,
        None => filter_allows(),
    }
}

/// What the installed filter says of an access line.
pub(super) fn filter_allows() -> bool {
    tracing::event_enabled!(target: TARGET, tracing::Level::INFO)
}

/// What became of one request (or one decision of the authz listener). Never a header value
/// other than the request id, a body or a query string: they can hold tokens, passwords and
/// secrets.
pub struct AccessLine<'a> {
    /// The request id (`X-Request-Id`): printable ASCII, but `"` and `\` are allowed.
    pub request_id: &'a str,
    pub method: &'a str,
    pub route: &'static str,
    pub status: StatusCode,
    pub outcome: &'static str,
    pub reason: &'static str,
    pub elapsed: Duration,
    /// How long the upstream took to answer, when it was asked.
    pub upstream: Option<Duration>,
    pub client: IpAddr,
    /// The trace the request belongs to, if any.
    pub trace_id: Option<TraceId>,
}

impl AccessLine<'_> {
    /// Writes the line, if access lines are on (see [`enabled`]).
    pub fn write(&self) {
        let Some(sink) = super::SINK.get() else {
            self.emit();
            return;
        };
        if !sink.access {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        SCRATCH.with(|scratch| {
            // Re-entered only if writing a line logged one; that line is not worth a panic.
            let Ok(mut scratch) = scratch.try_borrow_mut() else {
                return;
            };
            let Scratch {
                line,
                second,
                stamp,
            } = &mut *scratch;
            if *second != now.as_secs() || stamp.is_empty() {
                *second = now.as_secs();
                stamp.clear();
                push_date_time(stamp, *second);
            }
            line.clear();
            self.format(line, stamp, now.subsec_micros(), sink.json);
            sink.lines.push(line);
        });
    }

    /// Appends the line, newline included, to `out`; `stamp` is the timestamp up to the
    /// seconds.
    fn format(&self, out: &mut Vec<u8>, stamp: &[u8], micros: u32, json: bool) {
        if json {
            out.extend_from_slice(b"{\"timestamp\":\"");
        }
        out.extend_from_slice(stamp);
        out.push(b'.');
        push_padded(out, u64::from(micros), 6);
        out.push(b'Z');
        out.extend_from_slice(if json {
            b"\",\"level\":\"INFO\""
        } else {
            b"  INFO access:"
        });
        let mut fields = Fields { out, json };
        fields.quoted(name!("request_id"), self.request_id);
        fields.bare(name!("method"), self.method);
        fields.quoted_static(name!("route"), self.route);
        fields.number(name!("status"), |out| {
            push_u64(out, self.status.as_u16().into())
        });
        fields.quoted_static(name!("outcome"), self.outcome);
        fields.quoted_static(name!("reason"), self.reason);
        fields.number(name!("duration_ms"), |out| push_millis(out, self.elapsed));
        if let Some(upstream) = self.upstream {
            fields.number(name!("upstream_ms"), |out| push_millis(out, upstream));
        }
        fields.bare_with(name!("client"), |out| push_ip(out, self.client));
        match self.trace_id {
            Some(id) => fields.bare_with(name!("trace_id"), |out| push_hex(out, &id.to_bytes())),
            None => fields.bare(name!("trace_id"), "-"),
        }
        if json {
            out.extend_from_slice(b",\"target\":\"access\"}");
        }
        out.push(b'\n');
    }

    /// The line as a `tracing` event, for a subscriber other than the gateway's.
    fn emit(&self) {
        tracing::info!(
            target: TARGET,
            request_id = self.request_id,
            method = %self.method,
            route = self.route,
            status = self.status.as_u16(),
            outcome = self.outcome,
            reason = self.reason,
            duration_ms = self.elapsed.as_secs_f64() * 1000.0,
            upstream_ms = self.upstream.map(|d| d.as_secs_f64() * 1000.0),
            client = %self.client,
            trace_id = %self.trace_id.map_or_else(|| "-".to_owned(), |id| id.to_string()),
        );
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        line: Vec::with_capacity(512),
        second: 0,
        stamp: Vec::with_capacity(19),
    });
}

/// A thread's line buffer, and its timestamp to the second (`2026-11-30T18:31:43`).
struct Scratch {
    line: Vec<u8>,
    second: u64,
    stamp: Vec<u8>,
}

/// A field's name as each format introduces it: ` name=` after the text prefix, `,"name":`
/// inside the JSON object. Both are spelt out at compile time, so a field costs one copy.
struct Name {
    text: &'static [u8],
    json: &'static [u8],
}

macro_rules! name {
    ($name:literal) => {
        Name {
            text: concat!(" ", $name, "=").as_bytes(),
            json: concat!(",\"", $name, "\":").as_bytes(),
        }
    };
}
use name;

/// Writes `name=value` pairs after the text prefix, or `"name":value` members into the JSON
/// object.
struct Fields<'a> {
    out: &'a mut Vec<u8>,
    json: bool,
}

impl Fields<'_> {
    fn name(&mut self, name: Name) {
        self.out
            .extend_from_slice(if self.json { name.json } else { name.text });
    }

    /// A string, quoted in both formats (as `tracing` prints a `&str` field).
    fn quoted(&mut self, name: Name, value: &str) {
        self.name(name);
        push_quoted(self.out, value);
    }

    /// As [`Fields::quoted`], for the gateway's own words (a route, an outcome, a reason code),
    /// which never need escaping: a third of the line not scanned byte by byte.
    fn quoted_static(&mut self, name: Name, value: &'static str) {
        debug_assert!(!value.bytes().any(needs_escape), "{value:?}");
        self.name(name);
        self.out.push(b'"');
        self.out.extend_from_slice(value.as_bytes());
        self.out.push(b'"');
    }

    /// A value printed bare in text and as a string in JSON (as `tracing` prints a field
    /// recorded with `%`).
    fn bare(&mut self, name: Name, value: &str) {
        self.bare_with(name, |out| out.extend_from_slice(value.as_bytes()));
    }

    /// As [`Fields::bare`], for a value written by `write`, which writes nothing that needs
    /// escaping.
    fn bare_with(&mut self, name: Name, write: impl FnOnce(&mut Vec<u8>)) {
        self.name(name);
        if self.json {
            self.out.push(b'"');
            write(self.out);
            self.out.push(b'"');
        } else {
            write(self.out);
        }
    }

    /// A number, bare in both formats.
    fn number(&mut self, name: Name, write: impl FnOnce(&mut Vec<u8>)) {
        self.name(name);
        write(self.out);
    }
}

/// `value` in double quotes, with `"`, `\` and control characters escaped the same way in
/// text and JSON. The runs between them (usually the whole value) are copied whole.
fn push_quoted(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    let mut rest = value.as_bytes();
    while let Some(at) = rest.iter().position(|&byte| needs_escape(byte)) {
        out.extend_from_slice(&rest[..at]);
        match rest[at] {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            byte => {
                out.extend_from_slice(b"\\u00");
                push_hex(out, &[byte]);
            }
        }
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
    out.push(b'"');
}

fn needs_escape(byte: u8) -> bool {
    matches!(byte, b'"' | b'\\' | 0..=0x1f | 0x7f)
}

/// `n` in decimal.
fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `n` in decimal, zero-padded to `width` digits (`n` has no more).
fn push_padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut n = n;
    for at in (0..width).rev() {
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&digits[..width]);
}

/// A duration in milliseconds to the microsecond: `0.512`, `1500.000`.
fn push_millis(out: &mut Vec<u8>, duration: Duration) {
    let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
    push_u64(out, micros / 1000);
    out.push(b'.');
    push_padded(out, micros % 1000, 3);
}

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for &byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)]);
        out.push(DIGITS[usize::from(byte & 0xf)]);
    }
}

fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_u64(out, octet.into());
            }
        }
        // Rare enough behind the usual proxies for the general routine.
        IpAddr::V6(v6) => {
            use std::io::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

/// `2026-11-30T18:31:43` for `seconds` since the Unix epoch (UTC), by the days-to-civil
/// calculation in Howard Hinnant's "chrono-Compatible Low-Level Date Algorithms".
fn push_date_time(out: &mut Vec<u8>, seconds: u64) {
    let days = seconds / 86_400;
    let in_day = seconds % 86_400;
    // Days since 0000-03-01, in 400-year eras of 146 097 days.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153; // 0 = March
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    push_padded(out, year, 4);
    out.push(b'-');
    push_padded(out, month, 2);
    out.push(b'-');
    push_padded(out, day, 2);
    out.push(b'T');
    push_padded(out, in_day / 3600, 2);
    out.push(b':');
    push_padded(out, in_day / 60 % 60, 2);
    out.push(b':');
    push_padded(out, in_day % 60, 2);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(json: bool, request_id: &str, upstream: Option<Duration>) -> String {
        let line = AccessLine {
            request_id,
            method: "GET",
            route: "scoped",
            status: StatusCode::OK,
            outcome: "forwarded",
            reason: "issued",
            elapsed: Duration::from_micros(1_512),
            upstream,
            client: "198.51.100.7".parse().unwrap(),
            trace_id: TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").ok(),
        };
        let mut stamp = Vec::new();
        push_date_time(&mut stamp, 1_796_063_503);
        let mut out = Vec::new();
        line.format(&mut out, &stamp, 42, json);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn text_line_has_the_formatters_shape() {
        assert_eq!(
            line(false, "abc-1", Some(Duration::from_micros(900))),
            "2026-11-30T18:31:43.000042Z  INFO access: request_id=\"abc-1\" method=GET \
             route=\"scoped\" status=200 outcome=\"forwarded\" reason=\"issued\" \
             duration_ms=1.512 upstream_ms=0.900 client=198.51.100.7 \
             trace_id=4bf92f3577b34da6a3ce929d0e0e4736\n"
        );
    }

    #[test]
    fn json_line_parses_with_every_field() {
        let text = line(true, r#"a"b\c"#, None);
        assert!(text.ends_with("}\n"), "{text}");
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "timestamp": "2026-11-30T18:31:43.000042Z",
                "level": "INFO",
                "request_id": "a\"b\\c",
                "method": "GET",
                "route": "scoped",
                "status": 200,
                "outcome": "forwarded",
                "reason": "issued",
                "duration_ms": 1.512,
                "client": "198.51.100.7",
                "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
                "target": "access",
            })
        );
    }

    #[test]
    fn request_id_cannot_break_out_of_its_quotes() {
        let text = line(false, "x\" status=500 \\", None);
        assert!(
            text.contains(r#"request_id="x\" status=500 \\" method=GET"#),
            "{text}"
        );
        let json = line(true, "\n\u{1}", None);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["request_id"], "\n\u{1}");
        assert_eq!(json.matches('\n').count(), 1, "{json}");
    }

    proptest::proptest! {
        /// Whatever the request id holds, the JSON line parses back to it, and the text line
        /// reads back to it between its quotes: escaping copies the clean runs whole and must
        /// not lose, double or misplace a byte around the ones it escapes.
        #[test]
        fn any_request_id_reads_back(id in "\\PC*|[\\x00-\\x7f]{0,40}") {
            let json = line(true, &id, None);
            let value: serde_json::Value = serde_json::from_str(&json).unwrap();
            proptest::prop_assert_eq!(value["request_id"].as_str(), Some(id.as_str()));

            let text = line(false, &id, None);
            let quoted = text
                .split_once("request_id=")
                .and_then(|(_, rest)| rest.rsplit_once(" method=GET"))
                .map(|(quoted, _)| quoted)
                .unwrap();
            let unescaped: String = serde_json::from_str(quoted).unwrap();
            proptest::prop_assert_eq!(unescaped, id);
            proptest::prop_assert_eq!(text.matches('\n').count(), 1);
        }
    }

    #[test]
    fn dates_match_the_calendar() {
        for (seconds, expected) in [
            (0, "1970-01-01T00:00:00"),
            (951_782_400, "2000-02-29T00:00:00"),
            (1_709_251_199, "2024-02-29T23:59:59"),
            (4_102_444_800, "2100-01-01T00:00:00"),
        ] {
            let mut out = Vec::new();
            push_date_time(&mut out, seconds);
            assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
    }

    #[test]
    fn durations_and_addresses() {
        let mut out = Vec::new();
        push_millis(&mut out, Duration::from_nanos(999));
        out.push(b' ');
        push_millis(&mut out, Duration::from_secs(12));
        out.push(b' ');
        push_ip(&mut out, "::1".parse().unwrap());
        out.push(b' ');
        push_ip(&mut out, "0.10.200.255".parse().unwrap());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "0.000 12000.000 ::1 0.10.200.255"
        );
    }
}
