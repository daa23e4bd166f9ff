//! Secrets are never written in the configuration, only *referenced*: by the name of an
//! environment variable (`*_env`) or the path of a file (`*_file`, e.g. a mounted Kubernetes
//! Secret). The configuration, its `Debug` output and `check-config` therefore show where a secret
//! comes from and never what it is; [`Secret`] itself prints as `[redacted]`.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

/// Where a secret is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// The value of this environment variable.
    Env(String),
    /// The contents of this file, without its trailing newline.
    File(PathBuf),
}

/// Why a [`SecretRef`] could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The environment variable does not exist.
    #[error("environment variable {0} is not set")]
    NotSet(String),
    /// The file does not exist or cannot be read.
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The value is not UTF-8 text.
    #[error("{0} is not valid UTF-8")]
    NotUtf8(String),
    /// The value is empty; an empty secret would let an empty credential through.
    #[error("{0} is empty")]
    Empty(String),
    /// The value is not in the encoding the configuration says (`hs256_secret_encoding`).
    #[error("the value is not {0}")]
    Encoding(&'static str),
}

impl SecretRef {
    /// Reads the secret from the process environment or the file system.
    pub fn resolve(&self) -> Result<Secret, SecretError> {
        self.resolve_with(|name| std::env::var_os(name))
    }

    /// Like [`resolve`](Self::resolve), but environment variables are looked up with `lookup`,
    /// so that callers (and tests) need not touch the process environment.
    pub fn resolve_with(
        &self,
        lookup: impl FnOnce(&str) -> Option<OsString>,
    ) -> Result<Secret, SecretError> {
        let (what, value) = match self {
            SecretRef::Env(name) => {
                let what = format!("environment variable {name}");
                let value = lookup(name)
                    .ok_or_else(|| SecretError::NotSet(name.clone()))?
                    .into_string()
                    .map_err(|_| SecretError::NotUtf8(what.clone()))?;
                (what, value)
            }
            SecretRef::File(path) => {
                let what = format!("file {}", path.display());
                let bytes = std::fs::read(path).map_err(|source| SecretError::Read {
                    path: path.clone(),
                    source,
                })?;
                let mut text =
                    String::from_utf8(bytes).map_err(|_| SecretError::NotUtf8(what.clone()))?;
                // Files written by `echo` or editors end in a newline that is not part of the
                // secret.
                let kept = text.trim_end_matches(['\n', '\r']).len();
                text.truncate(kept);
                (what, text)
            }
        };
        if value.is_empty() {
            return Err(SecretError::Empty(what));
        }
        Ok(Secret(value))
    }

    /// The configuration key that holds this kind of reference in the `[admin]` section.
    pub(super) fn admin_key(&self) -> &'static str {
        match self {
            SecretRef::Env(_) => "admin.token_env",
            SecretRef::File(_) => "admin.token_file",
        }
    }
}

/// A secret value. Its `Debug` and `Display` print `[redacted]`, and it is not `Serialize`, so it
/// cannot end up in a log line or a rendered configuration by accident.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value (for callers that obtain secrets some other way, and for tests).
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself; call this only where the value is used, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_reference_uses_the_lookup() {
        let secret = SecretRef::Env("T".into())
            .resolve_with(|name| (name == "T").then(|| "s3cr3t".into()))
            .map(|s| s.expose().to_owned());
        assert_eq!(secret.ok().as_deref(), Some("s3cr3t"));
    }

    #[test]
    fn empty_values_are_refused() {
        let result = SecretRef::Env("T".into()).resolve_with(|_| Some("".into()));
        assert!(matches!(result, Err(SecretError::Empty(_))), "{result:?}");
    }

    #[test]
    fn display_is_redacted() {
        assert_eq!(Secret::new("s3cr3t").to_string(), "[redacted]");
    }
}
