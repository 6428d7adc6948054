//! Errors for bad values (priors, divergence names, layer configurations).
//!
//! Tensor code returns [`candle_core::Result`]; a [`ConfigError`] converts into a
//! [`candle_core::Error`] with `?`, so both mix freely.

/// A refused value: which thing, which field, what was expected and what was given.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A numeric field out of its valid range.
    #[error("{what}: field `{field}` must be {expected}, got {got}")]
    Invalid {
        /// The value being checked, e.g. `prior gaussian`.
        what: String,
        /// The offending field.
        field: &'static str,
        /// What the field must satisfy.
        expected: &'static str,
        /// The value that was given.
        got: String,
    },
    /// A string that does not parse.
    #[error("cannot parse {what} `{input}`: {reason}")]
    Parse {
        /// What was being parsed, e.g. `divergence`.
        what: &'static str,
        /// The input string.
        input: String,
        /// Why it was refused and what is accepted.
        reason: String,
    },
    /// A combination the method does not define (e.g. analytic KL to a scale-mixture prior).
    #[error("{0}")]
    Unsupported(String),
}

impl ConfigError {
    pub(crate) fn invalid(what: impl Into<String>, field: &'static str, expected: &'static str, got: f64) -> Self {
        ConfigError::Invalid {
            what: what.into(),
            field,
            expected,
            got: got.to_string(),
        }
    }
}

impl From<ConfigError> for candle_core::Error {
    fn from(e: ConfigError) -> Self {
        candle_core::Error::wrap(e)
    }
}
