//! `[tracing]`: OpenTelemetry traces, and the standard `OTEL_*` variables that set the same keys.
//!
//! The section mirrors the variables an OpenTelemetry SDK reads, so that a pod set up by the
//! OpenTelemetry Operator (or by hand, the usual way) needs nothing else. A variable, when set and
//! not empty, replaces its key the way an `ACCOUNT_GATE__TRACING__*` override does; the same key set
//! by both is an error. The gateway reads these variables here only, once, so that
//! `check-config` shows what will be used and a bad value is refused before anything starts.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

use super::env::table_at;
use super::error::Report;

/// `[tracing]`: where spans go and which requests are traced. Off unless an endpoint is set.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// `otlp` exports spans; `none` turns tracing off whatever else is set
    /// (`OTEL_TRACES_EXPORTER`; `OTEL_SDK_DISABLED=true` also means `none`). Default `otlp`.
    pub exporter: TraceExporter,
    /// Base URL of an OTLP/HTTP collector; `/v1/traces` is appended, as the variable's
    /// specification says (`OTEL_EXPORTER_OTLP_ENDPOINT`). Tracing is off while neither this nor
    /// `traces_endpoint` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Full URL spans are posted to, used as it is; wins over `endpoint`
    /// (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traces_endpoint: Option<String>,
    /// Extra CA certificates (PEM) trusted for an `https` collector, on top of the system roots
    /// (`OTEL_EXPORTER_OTLP_CERTIFICATE`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
    /// How long one export may take (`OTEL_EXPORTER_OTLP_TIMEOUT`, in milliseconds there).
    /// Default `10s`.
    #[serde(with = "super::file::duration")]
    pub timeout: Duration,
    /// `service.name` of every span (`OTEL_SERVICE_NAME`). Default `account-gate`.
    pub service_name: String,
    /// More resource attributes, `key=value` pairs separated by commas, values percent-encoded
    /// (`OTEL_RESOURCE_ATTRIBUTES`), e.g. `deployment.environment=prod,k8s.cluster.name=eu-1`.
    /// Default empty.
    pub resource_attributes: String,
    /// Which requests are traced (`OTEL_TRACES_SAMPLER`). Default `parentbased_always_on`: the
    /// caller's decision when its `traceparent` carries one, every request otherwise.
    pub sampler: TraceSampler,
    /// The ratio of the `traceidratio` samplers, from 0 to 1 (`OTEL_TRACES_SAMPLER_ARG`).
    /// Default 1.
    pub sampler_arg: Ratio,
    /// `[tracing.batch]`: how finished spans are queued and sent.
    pub batch: TraceBatchConfig,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            exporter: TraceExporter::Otlp,
            endpoint: None,
            traces_endpoint: None,
            ca_file: None,
            timeout: Duration::from_secs(10),
            service_name: "account-gate".to_owned(),
            resource_attributes: String::new(),
            sampler: TraceSampler::ParentbasedAlwaysOn,
            sampler_arg: Ratio(1.0),
            batch: TraceBatchConfig::default(),
        }
    }
}

impl TracingConfig {
    /// Where spans are posted, when tracing is on: `traces_endpoint` as it is, else `endpoint`
    /// with `/v1/traces` appended.
    pub fn export_url(&self) -> Option<String> {
        if self.exporter == TraceExporter::None {
            return None;
        }
        match (&self.traces_endpoint, &self.endpoint) {
            (Some(url), _) => Some(url.clone()),
            (None, Some(base)) => Some(format!("{}/v1/traces", base.trim_end_matches('/'))),
            (None, None) => None,
        }
    }

    /// `resource_attributes` as pairs, values percent-decoded; an entry without `=` or with an
    /// empty key is an error naming it.
    pub fn resource_pairs(&self) -> Result<Vec<(String, String)>, String> {
        let mut pairs = Vec::new();
        for entry in self.resource_attributes.split(',') {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let Some((key, value)) = entry.split_once('=') else {
                return Err(format!("{entry:?} is not key=value"));
            };
            let key = key.trim();
            if key.is_empty() {
                return Err(format!("{entry:?} has an empty key"));
            }
            let value = percent_decode(value.trim()).ok_or_else(|| {
                format!("the value of {key:?} is not valid percent-encoded UTF-8")
            })?;
            pairs.push((key.to_owned(), value));
        }
        Ok(pairs)
    }
}

/// `[tracing.batch]`: the SDK's batch span processor (`OTEL_BSP_*`). Spans are queued without
/// blocking the request that ended them; past `max_queue_size` they are dropped.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TraceBatchConfig {
    /// Longest wait between two exports (`OTEL_BSP_SCHEDULE_DELAY`, ms). Default `5s`.
    #[serde(with = "super::file::duration")]
    pub schedule_delay: Duration,
    /// Spans held waiting for export (`OTEL_BSP_MAX_QUEUE_SIZE`). Default 2048.
    pub max_queue_size: usize,
    /// Spans sent in one export (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`); at most `max_queue_size`.
    /// Default 512.
    pub max_export_batch_size: usize,
    /// How long one export may take before it is abandoned (`OTEL_BSP_EXPORT_TIMEOUT`, ms); an
    /// export is one HTTP exchange, so the smaller of this and `tracing.timeout` bounds it.
    /// Default `30s`.
    #[serde(with = "super::file::duration")]
    pub export_timeout: Duration,
}

impl Default for TraceBatchConfig {
    fn default() -> Self {
        TraceBatchConfig {
            schedule_delay: Duration::from_secs(5),
            max_queue_size: 2048,
            max_export_batch_size: 512,
            export_timeout: Duration::from_secs(30),
        }
    }
}

/// `tracing.exporter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceExporter {
    /// OTLP over HTTP with protobuf bodies.
    Otlp,
    /// No traces.
    None,
}

/// `tracing.sampler`: the specification's names for the built-in samplers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceSampler {
    AlwaysOn,
    AlwaysOff,
    Traceidratio,
    ParentbasedAlwaysOn,
    ParentbasedAlwaysOff,
    ParentbasedTraceidratio,
}

/// A ratio from 0 to 1, compared by its bits so that the configuration stays `Eq`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Ratio(pub f64);

impl PartialEq for Ratio {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for Ratio {}

/// How a standard variable's value is read.
#[derive(Clone, Copy)]
enum Reading {
    /// As a string.
    Text,
    /// As a whole number of milliseconds.
    Millis,
    /// As an integer.
    Integer,
    /// As a number.
    Number,
}

/// Every standard variable the gateway reads, the key it sets (under `[tracing]`) and how its
/// value is read. The signal-specific variable comes after the general one, which it overrides.
const VARIABLES: &[(&str, &[&str], Reading)] = &[
    ("OTEL_TRACES_EXPORTER", &["exporter"], Reading::Text),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", &["endpoint"], Reading::Text),
    (
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        &["traces_endpoint"],
        Reading::Text,
    ),
    (
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
        &["ca_file"],
        Reading::Text,
    ),
    (
        "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
        &["ca_file"],
        Reading::Text,
    ),
    ("OTEL_EXPORTER_OTLP_TIMEOUT", &["timeout"], Reading::Millis),
    (
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        &["timeout"],
        Reading::Millis,
    ),
    ("OTEL_SERVICE_NAME", &["service_name"], Reading::Text),
    (
        "OTEL_RESOURCE_ATTRIBUTES",
        &["resource_attributes"],
        Reading::Text,
    ),
    ("OTEL_TRACES_SAMPLER", &["sampler"], Reading::Text),
    ("OTEL_TRACES_SAMPLER_ARG", &["sampler_arg"], Reading::Number),
    (
        "OTEL_BSP_SCHEDULE_DELAY",
        &["batch", "schedule_delay"],
        Reading::Millis,
    ),
    (
        "OTEL_BSP_MAX_QUEUE_SIZE",
        &["batch", "max_queue_size"],
        Reading::Integer,
    ),
    (
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
        &["batch", "max_export_batch_size"],
        Reading::Integer,
    ),
    (
        "OTEL_BSP_EXPORT_TIMEOUT",
        &["batch", "export_timeout"],
        Reading::Millis,
    ),
];

/// The protocols the exporter speaks (`OTEL_EXPORTER_OTLP_PROTOCOL`): only OTLP/HTTP with
/// protobuf bodies. Another value is an error rather than spans silently lost.
const PROTOCOL_VARIABLES: &[&str] = &[
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
];

/// Compression of the export (`OTEL_EXPORTER_OTLP_COMPRESSION`): none. The spans of a batch are
/// a few hundred KiB at most, sent to a collector that is usually on the same node; another
/// value is an error here rather than a failed start.
const COMPRESSION_VARIABLES: &[&str] = &[
    "OTEL_EXPORTER_OTLP_COMPRESSION",
    "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
];

/// Applies the standard variables in `env` on `tree` (after the `ACCOUNT_GATE__*` overrides,
/// whose record of what they set is in `report`).
pub(super) fn apply_standard_variables(
    tree: &mut Table,
    env: &[(&str, &str)],
    report: &mut Report,
) {
    let get = |name: &str| {
        env.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    };
    for var in PROTOCOL_VARIABLES {
        if let Some(protocol) = get(var) {
            if protocol != "http/protobuf" {
                report.invalid(
                    var,
                    format!(
                        "{protocol:?} is not supported: account-gate exports OTLP over HTTP with \
                         protobuf bodies (\"http/protobuf\", port 4318 on a collector)"
                    ),
                );
            }
        }
    }
    for var in COMPRESSION_VARIABLES {
        if let Some(compression) = get(var) {
            if !compression.eq_ignore_ascii_case("none") {
                report.invalid(
                    var,
                    format!("{compression:?} is not supported: spans are exported uncompressed"),
                );
            }
        }
    }
    // Signal-specific variables come later in the list and override the general ones; only
    // the last one set is applied.
    let mut chosen: Vec<(&[&str], &str, Reading, &str)> = Vec::new();
    for &(var, path, reading) in VARIABLES {
        let Some(raw) = get(var) else { continue };
        chosen.retain(|(p, ..)| *p != path);
        chosen.push((path, var, reading, raw));
    }
    for (path, var, reading, raw) in chosen {
        let dotted = format!("tracing.{}", path.join("."));
        if let Some(earlier) = report.set_from_env(&dotted, var) {
            report.invalid(&dotted, format!("also set by {earlier}"));
            continue;
        }
        let value = match (reading, path) {
            // Names from a fixed set are read case-insensitively, as the specification says.
            (Reading::Text, ["exporter"] | ["sampler"]) => Value::String(raw.to_ascii_lowercase()),
            (Reading::Text, _) => Value::String(raw.to_owned()),
            (Reading::Millis, _) => match raw.parse::<u64>() {
                Ok(ms) => Value::String(format!("{ms}ms")),
                Err(_) => {
                    report.invalid(&dotted, format!("{var}={raw:?}: expected milliseconds"));
                    continue;
                }
            },
            (Reading::Integer, _) => match raw.parse::<i64>() {
                Ok(n) => Value::Integer(n),
                Err(_) => {
                    report.invalid(&dotted, format!("{var}={raw:?}: expected a whole number"));
                    continue;
                }
            },
            (Reading::Number, _) => match raw.parse::<f64>() {
                Ok(n) => Value::Float(n),
                Err(_) => {
                    report.invalid(&dotted, format!("{var}={raw:?}: expected a number"));
                    continue;
                }
            },
        };
        let Some((key, tables)) = path.split_last() else {
            continue;
        };
        if let Some(table) = table_at(tree, &[&["tracing"], tables].concat()) {
            table.insert((*key).to_owned(), value);
        }
    }
    // `OTEL_SDK_DISABLED=true` turns every signal off, whatever else is set.
    if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        if let Some(table) = table_at(tree, &["tracing"]) {
            table.insert("exporter".to_owned(), Value::String("none".to_owned()));
        }
    }
}

/// `%XX` sequences decoded; `None` for a bad escape or bytes that are not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The checks of `[tracing]` that its types do not make: URLs, the ratio, the batch sizes and
/// the resource attributes.
pub(super) fn validate(tracing: &TracingConfig, report: &mut Report) {
    for (key, url) in [
        ("tracing.endpoint", &tracing.endpoint),
        ("tracing.traces_endpoint", &tracing.traces_endpoint),
    ] {
        let Some(url) = url else { continue };
        let parsed = url.parse::<http::Uri>();
        let ok = parsed.as_ref().is_ok_and(|uri| {
            matches!(uri.scheme_str(), Some("http" | "https"))
                && uri.host().is_some_and(|h| !h.is_empty())
        });
        if !ok {
            report.invalid(
                key,
                format!("invalid URL {url:?} (expected e.g. \"http://otel-collector:4318\")"),
            );
        } else if url.contains('?') {
            report.invalid(key, format!("{url:?}: a query string is not allowed"));
        }
    }
    if !(0.0..=1.0).contains(&tracing.sampler_arg.0) {
        report.invalid(
            "tracing.sampler_arg",
            format!("{} is not a ratio from 0 to 1", tracing.sampler_arg.0),
        );
    }
    if tracing.service_name.trim().is_empty() {
        report.invalid("tracing.service_name", "must not be empty");
    }
    if let Err(reason) = tracing.resource_pairs() {
        report.invalid("tracing.resource_attributes", reason);
    }
    let batch = &tracing.batch;
    if batch.max_queue_size == 0 {
        report.invalid("tracing.batch.max_queue_size", "must be at least 1");
    }
    if batch.max_export_batch_size == 0 || batch.max_export_batch_size > batch.max_queue_size {
        report.invalid(
            "tracing.batch.max_export_batch_size",
            format!(
                "must be from 1 to max_queue_size ({}), not {}",
                batch.max_queue_size, batch.max_export_batch_size
            ),
        );
    }
    for (key, value) in [
        ("tracing.timeout", tracing.timeout),
        ("tracing.batch.schedule_delay", batch.schedule_delay),
        ("tracing.batch.export_timeout", batch.export_timeout),
    ] {
        if value.is_zero() {
            report.invalid(key, "must be greater than 0");
        } else if value > super::validate::MAX_DURATION {
            report.invalid(key, "must be at most 24h");
        }
    }
    if let Some(path) = &tracing.ca_file {
        if let Err(reason) = super::validate::readable_file(path) {
            report.invalid("tracing.ca_file", reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_attributes_are_decoded_pairs() {
        let config = TracingConfig {
            resource_attributes: "deployment.environment=prod, team=a%2Cb,empty=".to_owned(),
            ..TracingConfig::default()
        };
        assert_eq!(
            config.resource_pairs(),
            Ok(vec![
                ("deployment.environment".to_owned(), "prod".to_owned()),
                ("team".to_owned(), "a,b".to_owned()),
                ("empty".to_owned(), String::new()),
            ])
        );
        for bad in ["novalue", "=x", "k=%zz", "k=%c3"] {
            let config = TracingConfig {
                resource_attributes: bad.to_owned(),
                ..TracingConfig::default()
            };
            assert!(config.resource_pairs().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_export_url_appends_the_signal_path_to_the_base_only() {
        let mut config = TracingConfig::default();
        assert_eq!(config.export_url(), None);
        config.endpoint = Some("http://collector:4318/".to_owned());
        assert_eq!(
            config.export_url().as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        config.traces_endpoint = Some("https://collector/custom".to_owned());
        assert_eq!(
            config.export_url().as_deref(),
            Some("https://collector/custom")
        );
        config.exporter = TraceExporter::None;
        assert_eq!(config.export_url(), None);
    }
}
