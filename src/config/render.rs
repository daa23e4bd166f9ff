//! The effective configuration as TOML, for `account-gate check-config`.

use std::fmt::Write as _;

use toml::{Table, Value};

use super::file::FileConfig;
use super::schema::{Section, SECTIONS};
use super::Config;

impl Config {
    /// The effective configuration — every key, defaults filled in — as TOML that loads back to
    /// an equal `Config`. Secrets appear only as their reference (variable name or file path);
    /// keys that are not set appear as comments.
    pub fn to_redacted_toml(&self) -> String {
        let mut out = String::from(
            "# Effective account-gate configuration (file, defaults, ACCOUNT_GATE__* overrides and the\n\
             # standard OTEL_* variables).\n\
             # Secrets are shown as references only.\n",
        );
        let tree = match Value::try_from(FileConfig::from(self)) {
            Ok(Value::Table(tree)) => tree,
            // Not reachable with the schema's types (strings, integers, tables), but a rendering
            // helper must not panic.
            Ok(_) => return out + "# cannot render the configuration\n",
            Err(e) => return out + &format!("# cannot render the configuration: {e}\n"),
        };
        for section in SECTIONS {
            match tree.get(section.name) {
                Some(Value::Array(elements)) if section.array => {
                    for element in elements {
                        render_table(&mut out, section.name, section, element.as_table(), true);
                    }
                }
                // An empty array of tables is written as nothing at all.
                _ if section.array => {}
                table => render_table(
                    &mut out,
                    section.name,
                    section,
                    table.and_then(Value::as_table),
                    false,
                ),
            }
        }
        out
    }
}

/// Writes `[name]` (or `[[name]]`) with every key of `section`, then its nested tables.
fn render_table(
    out: &mut String,
    name: &str,
    section: &Section,
    table: Option<&Table>,
    array: bool,
) {
    // Writing to a String cannot fail.
    let _ = if array {
        writeln!(out, "\n[[{name}]]")
    } else {
        writeln!(out, "\n[{name}]")
    };
    for key in (section.keys)() {
        if section.child(key).is_some() {
            continue;
        }
        let _ = match table.and_then(|t| t.get(*key)) {
            Some(value) => writeln!(out, "{key} = {value}"),
            None => writeln!(out, "# {key} is not set"),
        };
    }
    for child in section.children {
        let nested = table
            .and_then(|t| t.get(child.name))
            .and_then(Value::as_table);
        let child_name = format!("{name}.{}", child.name);
        if nested.is_none() {
            // An optional table that is off (`[server.tls]`): an empty one would turn it on.
            let keys = (child.keys)().join(", ");
            let _ = writeln!(out, "\n# [{child_name}] is not set ({keys})");
            continue;
        }
        render_table(out, &child_name, child, nested, false);
    }
}
