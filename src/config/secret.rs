//! Secret values: `env:NAME`, `file:PATH` or a literal, resolved once at load. A
//! [`Secret`] never prints its value: `Debug` and `Display` are redacted.

use std::fmt;

use serde::Deserialize;

/// How a secret is written in the config; printable, because it holds no secret itself
/// (except a literal, which is shown as `literal`).
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(from = "String")]
pub enum SecretRef {
    Env(String),
    File(String),
    Literal(String),
}

impl From<String> for SecretRef {
    fn from(text: String) -> Self {
        if let Some(name) = text.strip_prefix("env:") {
            SecretRef::Env(name.to_string())
        } else if let Some(path) = text.strip_prefix("file:") {
            SecretRef::File(path.to_string())
        } else {
            SecretRef::Literal(text)
        }
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "env:{name}"),
            SecretRef::File(path) => write!(f, "file:{path}"),
            SecretRef::Literal(_) => f.write_str("literal"),
        }
    }
}

impl SecretRef {
    /// Reads the value. The error names where it looked, never a value.
    pub fn resolve(&self) -> Result<Secret, String> {
        let value = match self {
            SecretRef::Env(name) => std::env::var(name)
                .map_err(|_| format!("environment variable {name} is not set"))?,
            SecretRef::File(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {path}: {}", e.kind()))?
                .trim_end_matches(['\r', '\n'])
                .to_string(),
            SecretRef::Literal(value) => value.clone(),
        };
        if value.is_empty() {
            return Err(format!("{self} is empty"));
        }
        Ok(Secret(value.into_bytes()))
    }
}

/// A resolved secret. Its bytes are reachable only through [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(bytes.into())
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_resolve_from_env_file_and_literal() {
        std::env::set_var("HOOKGATE_TEST_SECRET_REF", "from-env");
        let env = SecretRef::from("env:HOOKGATE_TEST_SECRET_REF".to_string());
        assert_eq!(env.resolve().unwrap().expose(), b"from-env");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "from-file\n").unwrap();
        let file = SecretRef::from(format!("file:{}", path.display()));
        assert_eq!(file.resolve().unwrap().expose(), b"from-file");

        let literal = SecretRef::from("plain".to_string());
        assert_eq!(literal.resolve().unwrap().expose(), b"plain");
    }

    #[test]
    fn nothing_secret_is_printed() {
        let literal = SecretRef::from("hunter2".to_string());
        assert!(!format!("{literal:?} {literal}").contains("hunter2"));
        let secret = literal.resolve().unwrap();
        assert!(!format!("{secret:?}").contains("hunter2"));
        let missing = SecretRef::from("env:HOOKGATE_TEST_NOT_SET_ANYWHERE".to_string());
        assert!(missing
            .resolve()
            .unwrap_err()
            .contains("HOOKGATE_TEST_NOT_SET_ANYWHERE"));
    }
}
