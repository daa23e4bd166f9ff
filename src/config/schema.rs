//! Checking a parsed TOML tree against the file schema key by key, so that every unknown key and
//! every wrongly typed value is reported, where `deny_unknown_fields` would stop at the first.
//!
//! The schema is not written down twice: a section's keys are read from its serde derive (see
//! [`field_names`]) and a value is checked by deserialising it, alone, into the section's struct.
//! [`SECTIONS`] is the only list here, and a test keeps it in step with
//! [`FileConfig`](super::file::FileConfig).

use serde::de::{self, DeserializeOwned, Visitor};
use toml::{Table, Value};

use super::error::Report;
use super::file::{AdminFile, LogFile, ServerFile, UpstreamFile};
use super::{
    AuthzConfig, Http2Config, ListenerTlsConfig, RateLimitConfig, SignatureConfig, SignupConfig,
    StoreConfig, TokensConfig, TraceBatchConfig, TracingConfig,
};
use crate::scope::RouteConfig;

/// One `[section]` of the file, a table nested in one (`[tokens.signature]`), or an array of
/// tables (`[[routes]]`).
pub(super) struct Section {
    /// Its name in the file (and, upper-cased, in environment overrides).
    pub name: &'static str,
    /// Its keys, in declaration order.
    pub keys: fn() -> &'static [&'static str],
    /// Checks one `key = value` of the section on its own; the error is serde's message.
    pub check: fn(&str, &Value) -> Result<(), String>,
    /// Tables nested in this one, each checked key by key in turn.
    pub children: &'static [Section],
    /// Whether this is an array of tables, each element checked against the keys.
    pub array: bool,
}

impl Section {
    const fn of<S: DeserializeOwned>(name: &'static str) -> Section {
        Section {
            name,
            keys: field_names::<S>,
            check: check_key::<S>,
            children: &[],
            array: false,
        }
    }

    const fn with_children(mut self, children: &'static [Section]) -> Section {
        self.children = children;
        self
    }

    const fn array_of<S: DeserializeOwned>(name: &'static str) -> Section {
        let mut section = Section::of::<S>(name);
        section.array = true;
        section
    }

    /// Whether the section has `key`.
    pub(super) fn has(&self, key: &str) -> bool {
        (self.keys)().contains(&key)
    }

    /// The nested table called `name`.
    pub(super) fn child(&self, name: &str) -> Option<&'static Section> {
        self.children.iter().find(|s| s.name == name)
    }
}

/// Every section of the file, in the order they are rendered.
pub(super) const SECTIONS: &[Section] = &[
    Section::of::<ServerFile>("server").with_children(&[
        Section::of::<Http2Config>("http2"),
        Section::of::<ListenerTlsConfig>("tls"),
    ]),
    Section::of::<UpstreamFile>("upstream"),
    Section::of::<LogFile>("log"),
    Section::of::<AdminFile>("admin"),
    Section::of::<SignupConfig>("signup"),
    Section::of::<RateLimitConfig>("rate_limit"),
    Section::of::<StoreConfig>("store"),
    Section::of::<TokensConfig>("tokens")
        .with_children(&[Section::of::<SignatureConfig>("signature")]),
    Section::of::<TracingConfig>("tracing")
        .with_children(&[Section::of::<TraceBatchConfig>("batch")]),
    Section::array_of::<RouteConfig>("routes"),
    Section::of::<AuthzConfig>("authz"),
];

/// The section called `name`.
pub(super) fn section(name: &str) -> Option<&'static Section> {
    SECTIONS.iter().find(|s| s.name == name)
}

/// Every key of the schema, dotted (`server.listen`, `tokens.signature.jwks_url`), in file
/// order. Nested tables are listed by their keys, not by their own name.
pub fn schema_keys() -> Vec<String> {
    fn walk(prefix: &str, section: &Section, out: &mut Vec<String>) {
        let prefix = format!("{prefix}{}", section.name);
        for key in (section.keys)() {
            match section.child(key) {
                Some(child) => walk(&format!("{prefix}."), child, out),
                None => out.push(format!("{prefix}.{key}")),
            }
        }
    }
    let mut keys = Vec::new();
    for section in SECTIONS {
        walk("", section, &mut keys);
    }
    keys
}

/// Reports every unknown section or key and every value its field rejects, and removes each of
/// them from `tree` so that what is left deserialises into
/// [`FileConfig`](super::file::FileConfig).
pub(super) fn check_tree(tree: &mut Table, report: &mut Report) {
    tree.retain(|name, value| {
        let Some(section) = section(name) else {
            let key = name.to_owned();
            match value {
                Value::Table(_) => report.unknown_section(key, None),
                _ => report.unknown_key(key, None),
            }
            return false;
        };
        if section.array {
            let Value::Array(elements) = value else {
                report.invalid(
                    name,
                    format!(
                        "expected an array of tables ([[{name}]]), found {}",
                        value.type_str()
                    ),
                );
                return false;
            };
            let mut index = 0;
            elements.retain_mut(|element| {
                let prefix = format!("{name}[{index}]");
                index += 1;
                match element {
                    Value::Table(table) => {
                        check_table(&prefix, section, table, report);
                        true
                    }
                    other => {
                        report.invalid(
                            &prefix,
                            format!("expected a table, found {}", other.type_str()),
                        );
                        false
                    }
                }
            });
            return true;
        }
        let Value::Table(table) = value else {
            report.invalid(
                name,
                format!("expected a table, found {}", value.type_str()),
            );
            return false;
        };
        check_table(name, section, table, report);
        true
    });
}

/// Checks every key of `table` (the table of `section`, at `prefix`), recursing into nested
/// tables, and removes what it reports.
fn check_table(prefix: &str, section: &Section, table: &mut Table, report: &mut Report) {
    table.retain(|key, value| {
        let dotted = format!("{prefix}.{key}");
        if let Some(child) = section.child(key) {
            let Value::Table(nested) = value else {
                report.invalid(
                    &dotted,
                    format!("expected a table, found {}", value.type_str()),
                );
                return false;
            };
            check_table(&dotted, child, nested, report);
            return true;
        }
        if !section.has(key) {
            report.unknown_key(dotted, None);
            return false;
        }
        match (section.check)(key, value) {
            Ok(()) => true,
            Err(reason) => {
                report.invalid(&dotted, reason);
                false
            }
        }
    });
}

fn check_key<S: DeserializeOwned>(key: &str, value: &Value) -> Result<(), String> {
    let mut alone = Table::new();
    alone.insert(key.to_owned(), value.clone());
    Value::Table(alone)
        .try_into::<S>()
        .map(drop)
        // serde names Rust types; an operator thinks in TOML.
        .map_err(|e| {
            e.message()
                .trim_end()
                .replace("usize", "a non-negative integer")
        })
}

/// The field names of a struct, as its derived `Deserialize` hands them to the deserializer.
///
/// A derived impl calls `deserialize_struct(name, FIELDS, visitor)`; this deserializer records
/// `FIELDS` and stops. (It sees nothing for a `#[serde(flatten)]` struct, which the schema does
/// not use; the tests below would notice.)
fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    // The probe always fails by design; only the recorded field list matters.
    let _ = T::deserialize(FieldProbe {
        fields: &mut fields,
    });
    fields
}

struct FieldProbe<'a> {
    fields: &'a mut &'static [&'static str],
}

#[derive(Debug)]
struct Stop;

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("field probe")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<M: std::fmt::Display>(_: M) -> Self {
        Stop
    }
}

impl<'de> de::Deserializer<'de> for FieldProbe<'_> {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Stop> {
        *self.fields = fields;
        Err(Stop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::super::file::FileConfig;
    use super::*;

    #[test]
    fn sections_match_the_file_schema() {
        let names: Vec<_> = SECTIONS.iter().map(|s| s.name).collect();
        assert_eq!(names, field_names::<FileConfig>());
    }

    #[test]
    fn field_names_come_from_the_derive() {
        assert_eq!(
            field_names::<AdminFile>(),
            ["token_env", "token_file"].as_slice()
        );
        assert_eq!(field_names::<ServerFile>().len(), 16);
    }

    #[test]
    fn a_value_is_checked_alone() {
        let check = section("server").expect("the schema has [server]").check;
        assert_eq!(check("max_connections", &Value::Integer(3)), Ok(()));
        let err = check("max_connections", &Value::String("x".into()));
        assert!(err.is_err_and(|e| e.contains("expected a non-negative integer")));
    }
}
