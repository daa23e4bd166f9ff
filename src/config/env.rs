//! Environment overrides: `ACCOUNT_GATE__<SECTION>__<KEY>=value` replaces `<key>` in
//! `[<section>]` of the file, before anything is validated.
//!
//! - The prefix is `ACCOUNT_GATE__` (two underscores), and segments are separated by `__`, so
//!   keys keep their single underscores: `ACCOUNT_GATE__SERVER__MAX_HEADER_BYTES=32768`.
//!   Variables with the single-underscore prefix (`ACCOUNT_GATE_CONFIG`, …) are not overrides.
//! - The value is typed by the key it replaces: it is tried as a string, then as an integer, then
//!   as a boolean, and the first form the key accepts is used; so `…__MAX_CONNECTIONS=500` is the
//!   integer 500 and `…__SHUTDOWN_GRACE=10s` is the duration string `"10s"`.
//! - An empty value removes the key, which then takes its default (or, for an optional key such
//!   as `upstream.ca_file`, is unset).
//! - A variable naming an unknown section or key is an error, like an unknown key in the file.
//!   Errors about a value set this way name the variable.

use toml::{Table, Value};

use super::error::{ConfigError, Report};
use super::schema::{section, Section};

/// The prefix of every override variable.
pub const ENV_PREFIX: &str = "ACCOUNT_GATE__";

/// Applies every override in `env` on `tree`, reporting the ones that name nothing.
pub(super) fn apply_overrides(tree: &mut Table, env: &[(&str, &str)], report: &mut Report) {
    let mut overrides: Vec<_> = env
        .iter()
        .filter_map(|&(var, value)| Some((var, var.strip_prefix(ENV_PREFIX)?, value)))
        .collect();
    // Sorted, so that the outcome does not depend on the order the environment was listed in.
    overrides.sort_unstable();

    for (var, path, raw) in overrides {
        let segments: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
        let Some((key, tables)) = segments.split_last().filter(|(_, t)| !t.is_empty()) else {
            report.error(ConfigError::EnvName {
                var: var.to_owned(),
                reason: format!("expected {ENV_PREFIX}<SECTION>__<KEY>"),
            });
            continue;
        };
        let Some(mut section) = section(&tables[0]) else {
            report.unknown_section(tables[0].clone(), Some(var.to_owned()));
            continue;
        };
        let mut unknown = false;
        for name in &tables[1..] {
            match section.child(name) {
                Some(child) => section = child,
                None => {
                    unknown = true;
                    break;
                }
            }
        }
        let dotted = format!("{}.{key}", tables.join("."));
        if unknown || !section.has(key) || section.child(key).is_some() {
            report.unknown_key(dotted, Some(var.to_owned()));
            continue;
        }
        if section.array {
            report.invalid(
                &dotted,
                "arrays of tables cannot be set from the environment",
            );
            continue;
        }
        if let Some(earlier) = report.set_from_env(&dotted, var) {
            report.invalid(&dotted, format!("also set by {earlier}"));
            continue;
        }
        // A table on the way that is not a table is reported when the tree is checked.
        let Some(table) = table_at(tree, tables) else {
            continue;
        };
        if raw.is_empty() {
            table.remove(key.as_str());
        } else {
            table.insert(key.clone(), typed(section, key, raw));
        }
    }
}

/// The table at `path` in `tree`, created where missing; `None` if something on the way is not
/// a table.
pub(super) fn table_at<'t>(tree: &'t mut Table, path: &[impl AsRef<str>]) -> Option<&'t mut Table> {
    let Some((first, rest)) = path.split_first() else {
        return Some(tree);
    };
    match tree
        .entry(first.as_ref())
        .or_insert_with(|| Value::Table(Table::new()))
    {
        Value::Table(inner) => table_at(inner, rest),
        _ => None,
    }
}

/// `raw` as the first TOML value the key accepts; if it accepts none, the most specific reading,
/// so that the error reads "expected usize, found integer -1" rather than "found string".
fn typed(section: &Section, key: &str, raw: &str) -> Value {
    let mut readings = vec![Value::String(raw.to_owned())];
    if let Ok(n) = raw.parse::<i64>() {
        readings.push(Value::Integer(n));
    }
    if let Ok(b) = raw.parse::<bool>() {
        readings.push(Value::Boolean(b));
    }
    let fallback = readings
        .last()
        .cloned()
        .unwrap_or(Value::String(raw.to_owned()));
    readings
        .into_iter()
        .find(|v| (section.check)(key, v).is_ok())
        .unwrap_or(fallback)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> &'static Section {
        section("server").expect("the schema has [server]")
    }

    #[test]
    fn values_take_the_type_of_their_key() {
        assert_eq!(typed(server(), "max_connections", "12"), Value::Integer(12));
        assert_eq!(
            typed(server(), "shutdown_grace", "10s"),
            Value::String("10s".into())
        );
        assert_eq!(typed(server(), "max_connections", "-1"), Value::Integer(-1));
        let log = section("log").expect("the schema has [log]");
        assert_eq!(typed(log, "level", "42"), Value::String("42".into()));
    }
}
