//! The effective configuration as TOML, for `account-gate check-config`.

use std::fmt::Write as _;

use toml::Value;

use super::file::FileConfig;
use super::schema::SECTIONS;
use super::Config;

impl Config {
    /// The effective configuration — every key, defaults filled in — as TOML that loads back to
    /// an equal `Config`. Secrets appear only as their reference (variable name or file path);
    /// keys that are not set appear as comments.
    pub fn to_redacted_toml(&self) -> String {
        let mut out = String::from(
            "# Effective account-gate configuration (file, defaults and ACCOUNT_GATE__* overrides).\n\
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
            let table = tree.get(section.name).and_then(Value::as_table);
            // Writing to a String cannot fail.
            let _ = writeln!(out, "\n[{}]", section.name);
            for key in (section.keys)() {
                let _ = match table.and_then(|t| t.get(*key)) {
                    Some(value) => writeln!(out, "{key} = {value}"),
                    None => writeln!(out, "# {key} is not set"),
                };
            }
        }
        out
    }
}
