//! The one validator for tenant schema identifiers.
//!
//! The schema name is the only identifier duropg ever splices into SQL text, so
//! it is held to a deliberately narrow grammar: 1 to 63 bytes (Postgres's
//! `NAMEDATALEN - 1`), lower-case ASCII letters, digits and `_`, not starting
//! with a digit, and not a name Postgres reserves (`pg_*`,
//! `information_schema`). A name that passes can only be used through
//! [`SchemaName::quoted`], which wraps it in double quotes, so even a future
//! loosening of the grammar could not turn it into SQL syntax.

use std::fmt;

/// Longest identifier Postgres keeps without truncation (`NAMEDATALEN - 1`).
pub const MAX_SCHEMA_NAME_BYTES: usize = 63;

/// A validated tenant schema name. The only way to build one is [`SchemaName::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SchemaName(String);

/// Why a schema name was rejected. Every variant names the offending input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaNameError {
    /// The name is empty.
    Empty,
    /// The name is longer than [`MAX_SCHEMA_NAME_BYTES`] bytes.
    TooLong {
        /// The rejected name.
        name: String,
        /// Its length in bytes.
        len_bytes: usize,
    },
    /// The name contains a character outside `[a-z0-9_]`, or starts with a digit.
    BadCharacter {
        /// The rejected name.
        name: String,
        /// The first offending character.
        ch: char,
        /// Its byte offset.
        at_byte: usize,
    },
    /// The name is reserved by Postgres.
    Reserved {
        /// The rejected name.
        name: String,
    },
}

impl fmt::Display for SchemaNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "invalid schema name: it is empty"),
            Self::TooLong { name, len_bytes } => write!(
                f,
                "invalid schema name {name:?}: {len_bytes} bytes long, the limit is {MAX_SCHEMA_NAME_BYTES}"
            ),
            Self::BadCharacter { name, ch, at_byte } => write!(
                f,
                "invalid schema name {name:?}: character {ch:?} at byte {at_byte} is not allowed \
                 (use lower-case ASCII letters, digits and '_', not starting with a digit)"
            ),
            Self::Reserved { name } => write!(
                f,
                "invalid schema name {name:?}: names starting with 'pg_' and 'information_schema' are reserved by PostgreSQL"
            ),
        }
    }
}

impl std::error::Error for SchemaNameError {}

impl SchemaName {
    /// Validate `raw` as a tenant schema name.
    ///
    /// # Errors
    /// Returns a [`SchemaNameError`] naming the input and the rule it breaks.
    pub fn parse(raw: &str) -> Result<Self, SchemaNameError> {
        if raw.is_empty() {
            return Err(SchemaNameError::Empty);
        }
        if raw.len() > MAX_SCHEMA_NAME_BYTES {
            return Err(SchemaNameError::TooLong {
                name: raw.to_string(),
                len_bytes: raw.len(),
            });
        }
        for (at_byte, ch) in raw.char_indices() {
            let allowed = ch.is_ascii_lowercase() || ch == '_' || (at_byte > 0 && ch.is_ascii_digit());
            if !allowed {
                return Err(SchemaNameError::BadCharacter {
                    name: raw.to_string(),
                    ch,
                    at_byte,
                });
            }
        }
        if raw.starts_with("pg_") || raw == "information_schema" {
            return Err(SchemaNameError::Reserved { name: raw.to_string() });
        }
        Ok(Self(raw.to_string()))
    }

    /// The bare name, as stored in catalogs and used in messages.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a quoted SQL identifier (`"name"`), the only form that is
    /// ever spliced into SQL text. Embedded quotes are doubled even though the
    /// grammar above admits none.
    pub fn quoted(&self) -> String {
        format!("\"{}\"", self.0.replace('"', "\"\""))
    }
}

impl fmt::Display for SchemaName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;

    #[test]
    fn accepts_plain_names() {
        for ok in ["duropg", "tenant_42", "_private", "a", &"x".repeat(63)] {
            assert_eq!(
                SchemaName::parse(ok).map(|s| s.as_str().to_string()),
                Ok(ok.to_string())
            );
        }
    }

    #[test]
    fn rejects_injection_shapes_with_a_reason_naming_the_input() {
        let cases = [
            ("", "empty"),
            ("a\"b", "'\"'"),
            ("a;drop schema x", "';'"),
            ("Tenant", "'T'"),
            ("1abc", "'1'"),
            ("café", "'é'"),
            ("a b", "' '"),
            ("pg_catalog", "reserved"),
            ("information_schema", "reserved"),
        ];
        for (bad, needle) in cases {
            let err = SchemaName::parse(bad).expect_err(bad).to_string();
            assert!(err.contains(needle), "{bad:?}: {err}");
            if !bad.is_empty() {
                assert!(err.contains(&format!("{bad:?}")), "error must name the input: {err}");
            }
        }
    }

    #[test]
    fn rejects_64_bytes() {
        let err = SchemaName::parse(&"a".repeat(64)).unwrap_err();
        assert!(matches!(err, SchemaNameError::TooLong { len_bytes: 64, .. }));
    }

    #[test]
    fn quoting_wraps_in_double_quotes() {
        assert_eq!(SchemaName::parse("t1").unwrap().quoted(), "\"t1\"");
    }

    quickcheck! {
        fn accepted_names_are_inert_identifiers(raw: String) -> bool {
            match SchemaName::parse(&raw) {
                Ok(name) => {
                    let q = name.quoted();
                    q.len() == raw.len() + 2
                        && raw.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                }
                Err(_) => true,
            }
        }
    }
}
