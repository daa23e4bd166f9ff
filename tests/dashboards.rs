//! The Grafana dashboard and the Prometheus rules in `deploy/` are well-formed and reference only
//! metrics (and label values) that a running gateway exports, so neither can silently show or
//! alert on nothing.
//!
//! When `promtool` is installed (Debian: `apt-get install prometheus`), the rules are also checked
//! with `promtool check rules`, their unit tests run with `promtool test rules`, and every
//! dashboard query is parsed by promtool; without it those checks are skipped with a note, except
//! in CI (`CI=true`), where a missing promtool fails.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use common::upstream::TestUpstream;
use common::TestGateway;
use serde_json::Value;

const DASHBOARD_PATH: &str = "deploy/grafana/account-gate.json";
const RULES_PATH: &str = "deploy/prometheus/account-gate-rules.yaml";
const RULE_TESTS_PATH: &str = "deploy/prometheus/account-gate-rules.test.yaml";
/// The file name the promtool unit tests expect the rules' `spec` under.
const RULES_SPEC_NAME: &str = "account-gate-rules.spec.yaml";

const DASHBOARD: &str = include_str!("../deploy/grafana/account-gate.json");
const RULES: &str = include_str!("../deploy/prometheus/account-gate-rules.yaml");
const RULE_TESTS: &str = include_str!("../deploy/prometheus/account-gate-rules.test.yaml");

/// The alerts an operator must have; more may exist.
const REQUIRED_ALERTS: [&str; 7] = [
    "AccountGateUpstreamErrorRatioHigh",
    "AccountGateLatencyP99High",
    "AccountGateTokenRejectionSpike",
    "AccountGateStoreErrors",
    "AccountGateTargetDown",
    "AccountGateMetricsAbsent",
    "AccountGateConfigReloadFailed",
];

fn dashboard() -> Value {
    serde_json::from_str(DASHBOARD)
        .unwrap_or_else(|e| panic!("{DASHBOARD_PATH} is not valid JSON: {e}"))
}

fn rules() -> Value {
    serde_norway::from_str(RULES).unwrap_or_else(|e| panic!("{RULES_PATH} is not valid YAML: {e}"))
}

fn rule_tests() -> Value {
    serde_norway::from_str(RULE_TESTS)
        .unwrap_or_else(|e| panic!("{RULE_TESTS_PATH} is not valid YAML: {e}"))
}

/// Every string anywhere in a document (values, not keys).
fn strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        Value::Object(map) => map.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// A metric name `account_gate_[a-z0-9_]+` used in `text`, with the selector that follows it
/// (`{...}`, without braces) if any. Names that are part of a longer identifier, such as the
/// recording rule `namespace_job:account_gate_requests:rate5m`, are not metrics and are skipped.
fn metric_uses(text: &str) -> Vec<(String, Option<String>)> {
    const PREFIX: &str = "account_gate_";
    let mut uses = Vec::new();
    let mut from = 0;
    while let Some(found) = text[from..].find(PREFIX) {
        let start = from + found;
        let end = start
            + text[start..]
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(text.len() - start);
        from = end;
        let before = text[..start].chars().next_back();
        let after = text[end..].chars().next();
        if before.is_some_and(is_name_char) || after.is_some_and(is_name_char) {
            continue;
        }
        let selector = text[end..]
            .strip_prefix('{')
            .and_then(|rest| rest.find('}').map(|close| rest[..close].to_owned()));
        uses.push((text[start..end].to_owned(), selector));
    }
    uses
}

/// `label="value"` equality matchers of a selector whose value is a literal (no variable).
fn literal_matchers(selector: &str) -> Vec<(String, String)> {
    selector
        .split(',')
        .filter_map(|matcher| {
            let (label, value) = matcher.split_once('=')?;
            let label = label.trim();
            let value = value.trim();
            if label.ends_with('!') || value.starts_with('~') || value.contains('$') {
                return None;
            }
            let value = value.strip_prefix('"')?.strip_suffix('"')?;
            Some((label.to_owned(), value.to_owned()))
        })
        .collect()
}

/// Metric names and literal label matchers used by a document, with where each is used.
#[derive(Default)]
struct Uses {
    /// name → the documents that use it
    names: BTreeMap<String, BTreeSet<&'static str>>,
    /// (name, label, value) → the documents that use it
    labels: BTreeMap<(String, String, String), BTreeSet<&'static str>>,
}

impl Uses {
    fn add(&mut self, document: &'static str, value: &Value) {
        let mut texts = Vec::new();
        strings(value, &mut texts);
        for text in &texts {
            for (name, selector) in metric_uses(text) {
                for (label, value) in selector
                    .as_deref()
                    .map(literal_matchers)
                    .unwrap_or_default()
                {
                    self.labels
                        .entry((name.clone(), label, value))
                        .or_default()
                        .insert(document);
                }
                self.names.entry(name).or_default().insert(document);
            }
        }
    }
}

/// `# TYPE` lines of an exposition: family name → type.
fn families(exposition: &str) -> BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.trim().to_owned()))
        .collect()
}

/// The family a name used in a query belongs to: itself, or a histogram (summary) family for
/// its `_bucket`, `_sum` and `_count` series.
fn family_of(name: &str, families: &BTreeMap<String, String>) -> Option<String> {
    if families.contains_key(name) {
        return Some(name.to_owned());
    }
    for (suffix, kinds) in [
        ("_bucket", &["histogram"][..]),
        ("_sum", &["histogram", "summary"][..]),
        ("_count", &["histogram", "summary"][..]),
    ] {
        if let Some(base) = name.strip_suffix(suffix) {
            if families
                .get(base)
                .is_some_and(|kind| kinds.contains(&kind.as_str()))
            {
                return Some(base.to_owned());
            }
        }
    }
    None
}

/// Whether a sample of `family` (or its `_bucket`/`_sum`/`_count` series) has `label="value"`.
fn has_label_value(exposition: &str, family: &str, label: &str, value: &str) -> bool {
    let needle = format!("{label}=\"{value}\"");
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once('{'))
        .filter(|(name, _)| {
            name.strip_prefix(family)
                .is_some_and(|rest| ["", "_bucket", "_sum", "_count"].contains(&rest))
        })
        .any(|(_, labels)| {
            let labels = labels.split('}').next().unwrap_or_default();
            labels.split(',').any(|matcher| matcher == needle)
        })
}

#[test]
fn metric_names_are_extracted_from_queries() {
    let uses = metric_uses(
        "histogram_quantile(0.99, sum by (le) (rate(account_gate_request_duration_seconds_bucket{job=~\"$job\", code_class=\"5xx\"}[5m]))) \
         / namespace_job:account_gate_requests:rate5m + account_gate_build_info \
         account_gate_x:y",
    );
    assert_eq!(
        uses,
        vec![
            (
                "account_gate_request_duration_seconds_bucket".to_owned(),
                Some("job=~\"$job\", code_class=\"5xx\"".to_owned())
            ),
            ("account_gate_build_info".to_owned(), None),
        ]
    );
    assert_eq!(
        literal_matchers("job=~\"$job\", code_class=\"5xx\", a!=\"b\", c=\"$c\""),
        vec![("code_class".to_owned(), "5xx".to_owned())]
    );

    let exposition = "# TYPE account_gate_d_seconds histogram\n\
        account_gate_d_seconds_bucket{route=\"scoped\",le=\"0.1\"} 0\n\
        # TYPE account_gate_c_total counter\n\
        account_gate_c_total{kind=\"x\"} 0\n";
    let families = families(exposition);
    for (name, family) in [
        (
            "account_gate_d_seconds_bucket",
            Some("account_gate_d_seconds"),
        ),
        (
            "account_gate_d_seconds_count",
            Some("account_gate_d_seconds"),
        ),
        ("account_gate_d_seconds", Some("account_gate_d_seconds")),
        ("account_gate_c_total", Some("account_gate_c_total")),
        ("account_gate_c_total_count", None),
        ("account_gate_c", None),
    ] {
        assert_eq!(family_of(name, &families).as_deref(), family, "{name}");
    }
    assert!(has_label_value(
        exposition,
        "account_gate_d_seconds",
        "route",
        "scoped"
    ));
    assert!(!has_label_value(
        exposition,
        "account_gate_c_total",
        "kind",
        "y"
    ));
}

#[tokio::test]
async fn every_metric_in_the_dashboard_and_rules_is_exported() {
    let mut uses = Uses::default();
    uses.add(DASHBOARD_PATH, &dashboard());
    uses.add(RULES_PATH, &rules());
    assert!(
        uses.names.len() >= 15,
        "expected the dashboard and rules to use most metrics, found only {:?}",
        uses.names.keys()
    );

    let upstream = TestUpstream::http().await;
    let gateway = TestGateway::new(&upstream.url).start().await;
    let exposition = gateway.metrics().await;
    gateway.shutdown().await;
    let families = families(&exposition);

    let mut problems = Vec::new();
    for (name, documents) in &uses.names {
        if family_of(name, &families).is_none() {
            problems.push(format!(
                "  metric {name} (used in {}) is not exported",
                documents.iter().copied().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    for ((name, label, value), documents) in &uses.labels {
        // A missing family is reported above, once.
        let Some(family) = family_of(name, &families) else {
            continue;
        };
        if !has_label_value(&exposition, &family, label, value) {
            problems.push(format!(
                "  {name}{{{label}=\"{value}\"}} (used in {}) has no such series at start-up; \
                 pre-initialise that label value in src/metrics.rs",
                documents.iter().copied().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "the dashboard or the alert rules use metrics the gateway does not export:\n{}\n\
         families the gateway exports:\n{}",
        problems.join("\n"),
        families
            .iter()
            .map(|(name, kind)| format!("  {name} ({kind})"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Every panel, rows' nested panels included.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        out.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

#[test]
fn dashboard_is_well_formed() {
    let dashboard = dashboard();
    assert!(
        dashboard["schemaVersion"].as_u64().expect("schemaVersion") >= 36,
        "schemaVersion"
    );
    assert!(dashboard["uid"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(dashboard["title"].as_str().is_some_and(|s| !s.is_empty()));

    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating");
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no `{name}` template variable"))
    };
    let datasource = variable("datasource");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    for name in ["job", "instance"] {
        let v = variable(name);
        assert_eq!(v["type"], "query", "{name}");
        assert_eq!(v["datasource"]["uid"], "${datasource}", "{name}");
    }

    let panels = all_panels(&dashboard);
    let mut ids = BTreeSet::new();
    let mut queries = 0;
    for panel in &panels {
        let id = panel["id"].as_u64().expect("every panel has a numeric id");
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(ids.insert(id), "panel id {id} ({title}) is not unique");
        assert!(!title.is_empty(), "panel {id} has no title");
        for key in ["x", "y", "w", "h"] {
            assert!(panel["gridPos"][key].is_u64(), "{title}: gridPos.{key}");
        }
        if panel["type"] == "row" {
            continue;
        }
        let description = panel["description"].as_str().unwrap_or_default();
        assert!(
            description.len() >= 100,
            "panel \"{title}\" needs a description saying what it means and what to do \
             when it looks wrong"
        );
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        let mut refs = BTreeSet::new();
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
            assert!(
                refs.insert(target["refId"].as_str().expect("refId")),
                "{title}: refIds must be unique"
            );
            let expr = target["expr"].as_str().expect("expr");
            queries += 1;
            // Every selector follows the job and instance variables.
            for (name, selector) in metric_uses(expr) {
                let selector = selector.unwrap_or_default();
                assert!(
                    selector.contains("job=~\"$job\"")
                        && selector.contains("instance=~\"$instance\""),
                    "{title}: {name} is not filtered by $job and $instance"
                );
            }
        }
        assert!(
            panel["fieldConfig"]["defaults"]["unit"]
                .as_str()
                .is_some_and(|u| !u.is_empty()),
            "{title} has no unit"
        );
    }
    assert!(panels.len() >= 20, "only {} panels", panels.len());
    assert!(queries >= 20, "only {queries} queries");
}

/// The rules of the PrometheusRule, each with its group's name.
fn rule_list(rules: &Value) -> Vec<&Value> {
    rules["spec"]["groups"]
        .as_array()
        .expect("spec.groups")
        .iter()
        .flat_map(|group| group["rules"].as_array().expect("group.rules"))
        .collect()
}

fn is_duration(s: &str) -> bool {
    let units = ["ms", "s", "m", "h", "d", "w", "y"];
    !s.is_empty()
        && units.iter().any(|unit| {
            s.strip_suffix(unit)
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
}

#[test]
fn rules_are_a_well_formed_prometheus_rule() {
    let rules = rules();
    assert_eq!(rules["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rules["kind"], "PrometheusRule");
    assert!(rules["metadata"]["name"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));

    let mut group_names = BTreeSet::new();
    for group in rules["spec"]["groups"].as_array().expect("spec.groups") {
        let name = group["name"].as_str().expect("group name");
        assert!(group_names.insert(name), "group {name} twice");
    }

    let mut recorded = BTreeSet::new();
    let mut alerts = BTreeSet::new();
    let runbook = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/runbook.md"))
        .expect("docs/runbook.md");
    let list = rule_list(&rules);
    for rule in &list {
        let expr = rule["expr"].as_str().expect("every rule has an expr");
        assert!(!expr.trim().is_empty());
        match (rule["record"].as_str(), rule["alert"].as_str()) {
            (Some(record), None) => {
                assert!(record.contains(':'), "{record}: level:metric:operations");
                assert!(recorded.insert(record), "{record} recorded twice");
            }
            (None, Some(alert)) => {
                assert!(alerts.insert(alert), "alert {alert} twice");
                let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
                assert!(
                    ["critical", "warning", "info"].contains(&severity),
                    "{alert}: severity {severity:?}"
                );
                for annotation in ["summary", "description", "runbook"] {
                    assert!(
                        rule["annotations"][annotation]
                            .as_str()
                            .is_some_and(|s| s.len() >= 20),
                        "{alert}: annotation {annotation}"
                    );
                }
                // Every alert links its section of docs/runbook.md (GitHub's anchor of a
                // heading is its lower-cased text).
                let url = rule["annotations"]["runbook_url"]
                    .as_str()
                    .unwrap_or_default();
                let anchor = url.rsplit_once("docs/runbook.md#").map(|(_, a)| a);
                assert_eq!(
                    anchor,
                    Some(alert.to_lowercase().as_str()),
                    "{alert}: runbook_url {url:?}"
                );
                assert!(
                    runbook.lines().any(|line| line == format!("## {alert}")),
                    "docs/runbook.md has no section \"## {alert}\""
                );
                let for_ = rule["for"].as_str().unwrap_or_default();
                assert!(is_duration(for_), "{alert}: `for` {for_:?}");
            }
            _ => panic!("a rule must have exactly one of record and alert: {rule}"),
        }
    }
    for required in REQUIRED_ALERTS {
        assert!(alerts.contains(required), "no {required} alert");
    }

    // Every recording rule an expression reads is defined here.
    for rule in &list {
        let expr = rule["expr"].as_str().unwrap_or_default();
        for token in expr.split(|c: char| !is_name_char(c)) {
            if token.contains(':') && token.starts_with(|c: char| c.is_ascii_alphabetic()) {
                assert!(recorded.contains(token), "{token} is used but not recorded");
            }
        }
    }
}

#[test]
fn every_alert_has_a_firing_unit_test() {
    let tests = rule_tests();
    assert_eq!(tests["rule_files"][0], RULES_SPEC_NAME);
    let mut fired = BTreeSet::new();
    for test in tests["tests"].as_array().expect("tests") {
        for case in test["alert_rule_test"].as_array().into_iter().flatten() {
            if case["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()) {
                fired.insert(case["alertname"].as_str().expect("alertname").to_owned());
            }
        }
    }
    let rules = rules();
    for rule in rule_list(&rules) {
        if let Some(alert) = rule["alert"].as_str() {
            assert!(
                fired.contains(alert),
                "{alert} is never expected to fire in {RULE_TESTS_PATH}"
            );
        }
    }
}

/// promtool, when installed. In CI (`CI=true`, where `.ci/run` installs it) a missing promtool
/// fails the test: a check that silently does not run there is no check.
fn promtool() -> Option<&'static str> {
    let found = Command::new("promtool").arg("--version").output().is_ok();
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "promtool is not installed; in CI it must be (Debian: apt-get install prometheus)"
        );
        eprintln!(
            "SKIPPED: promtool not installed (Debian: apt-get install prometheus): \
             no promtool checks of {RULES_PATH} and {DASHBOARD_PATH}"
        );
    }
    found.then_some("promtool")
}

fn run_promtool(promtool: &str, args: &[&str], dir: &Path) {
    let output = Command::new(promtool)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run promtool");
    assert!(
        output.status.success(),
        "promtool {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn promtool_accepts_the_rules_and_their_unit_tests_pass() {
    let Some(promtool) = promtool() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = serde_norway::to_string(&rules()["spec"]).expect("spec as YAML");
    std::fs::write(dir.path().join(RULES_SPEC_NAME), spec).expect("write spec");
    std::fs::write(dir.path().join("tests.yaml"), RULE_TESTS).expect("write tests");
    run_promtool(promtool, &["check", "rules", RULES_SPEC_NAME], dir.path());
    run_promtool(promtool, &["test", "rules", "tests.yaml"], dir.path());
}

#[test]
fn promtool_parses_every_dashboard_query() {
    let Some(promtool) = promtool() else {
        return;
    };
    // Each query becomes a recording rule, with Grafana's variables replaced by what they
    // expand to, so that promtool parses it.
    let mut rules = Vec::new();
    let dashboard = dashboard();
    for panel in all_panels(&dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .expect("expr")
                .replace("$__rate_interval", "2m")
                .replace("$__range", "6h")
                .replace("$job", ".*")
                .replace("$instance", ".*");
            rules.push(serde_json::json!({
                "record": format!("dashboard:panel_{}:{}", panel["id"], target["refId"].as_str().unwrap_or("A")),
                "expr": expr,
            }));
        }
    }
    let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("dashboard.yaml"),
        serde_norway::to_string(&file).expect("yaml"),
    )
    .expect("write");
    run_promtool(promtool, &["check", "rules", "dashboard.yaml"], dir.path());
}
