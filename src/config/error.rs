//! What can be wrong with a configuration, and the [`Report`] that collects every problem of one
//! load so that an operator fixes them all in one pass instead of one per restart.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

/// One problem with a configuration, named by its dotted key (`server.listen`) where it has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{}: cannot read: {reason}", .path.display())]
    Read { path: PathBuf, reason: String },
    /// The file is not valid TOML; nothing else is checked.
    #[error("line {line}, column {column}: TOML syntax error: {reason}")]
    Syntax {
        line: usize,
        column: usize,
        reason: String,
    },
    /// A `[section]` (or top-level key) the schema does not have.
    #[error("{key}: unknown section{}", FromEnv(.env_var))]
    UnknownSection {
        key: String,
        env_var: Option<String>,
    },
    /// A key the schema does not have in its section.
    #[error("{key}: unknown key{}", FromEnv(.env_var))]
    UnknownKey {
        key: String,
        env_var: Option<String>,
    },
    /// A required key is absent.
    #[error("{key}: missing (required){}", FromEnv(.env_var))]
    Missing {
        key: String,
        env_var: Option<String>,
    },
    /// A key is present but its value is wrong (type, syntax or range).
    #[error("{key}: {reason}{}", FromEnv(.env_var))]
    Invalid {
        key: String,
        reason: String,
        env_var: Option<String>,
    },
    /// An `ACCOUNT_GATE__…` variable whose name does not have the `<SECTION>__<KEY>` shape.
    #[error("{var}: {reason}")]
    EnvName { var: String, reason: String },
}

impl ConfigError {
    /// The dotted key (or section) this error is about, if it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownSection { key, .. }
            | ConfigError::UnknownKey { key, .. }
            | ConfigError::Missing { key, .. }
            | ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Read { .. } | ConfigError::Syntax { .. } | ConfigError::EnvName { .. } => {
                None
            }
        }
    }
}

/// Renders the ` (from ACCOUNT_GATE__…)` suffix of an error whose value came from the environment,
/// so an operator does not search the file for a value it does not hold.
struct FromEnv<'a>(&'a Option<String>);

impl fmt::Display for FromEnv<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(var) => write!(f, " (from {var})"),
            None => Ok(()),
        }
    }
}

/// Every problem found in one configuration; displayed one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", Lines(.errors))]
pub struct ConfigErrors {
    /// The problems, in the order they were found (sections and keys in alphabetical order).
    pub errors: Vec<ConfigError>,
}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        ConfigErrors {
            errors: vec![error],
        }
    }
}

struct Lines<'a>(&'a [ConfigError]);

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// Collects the errors and warnings of one load.
///
/// Keys whose value was rejected are remembered so that later checks (which then see the default
/// in its place) do not report a second, confusing problem about them; keys set from the
/// environment are remembered so that their errors name the variable.
#[derive(Debug, Default)]
pub(super) struct Report {
    errors: Vec<ConfigError>,
    warnings: Vec<String>,
    /// Dotted keys whose value has already been reported as wrong.
    rejected: BTreeSet<String>,
    /// Dotted key → the `ACCOUNT_GATE__…` variable that set it.
    origins: BTreeMap<String, String>,
}

impl Report {
    /// Records that `var` set `key`; returns the variable that already had, if one did.
    pub(super) fn set_from_env(&mut self, key: &str, var: &str) -> Option<String> {
        self.origins.insert(key.to_owned(), var.to_owned())
    }

    fn origin(&self, key: &str) -> Option<String> {
        self.origins.get(key).cloned()
    }

    /// Whether `key` has not been reported as wrong yet.
    pub(super) fn is_ok(&self, key: &str) -> bool {
        !self.rejected.contains(key)
    }

    /// `key` holds a wrong value.
    pub(super) fn invalid(&mut self, key: &str, reason: impl Into<String>) {
        self.rejected.insert(key.to_owned());
        self.errors.push(ConfigError::Invalid {
            key: key.to_owned(),
            reason: reason.into(),
            env_var: self.origin(key),
        });
    }

    /// `key` is not in the schema.
    pub(super) fn unknown_key(&mut self, key: String, env_var: Option<String>) {
        self.errors.push(ConfigError::UnknownKey { key, env_var });
    }

    /// `key` names no section of the schema.
    pub(super) fn unknown_section(&mut self, key: String, env_var: Option<String>) {
        self.errors
            .push(ConfigError::UnknownSection { key, env_var });
    }

    /// The required `key` is absent.
    pub(super) fn missing(&mut self, key: &str) {
        self.errors.push(ConfigError::Missing {
            key: key.to_owned(),
            env_var: self.origin(key),
        });
    }

    /// Any other error.
    pub(super) fn error(&mut self, error: ConfigError) {
        self.errors.push(error);
    }

    /// Something worth telling the operator that does not stop the load.
    pub(super) fn warn(&mut self, key: &str, message: impl fmt::Display) {
        self.warnings.push(format!("{key}: {message}"));
    }

    /// The warnings so far, or every error if there was one.
    pub(super) fn finish(self) -> Result<Vec<String>, ConfigErrors> {
        if self.errors.is_empty() {
            Ok(self.warnings)
        } else {
            Err(ConfigErrors {
                errors: self.errors,
            })
        }
    }
}
