//! The experiments crate's typed error.

use std::path::PathBuf;

/// Everything that can stop a command; each variant names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum ExpError {
    /// A data file or data set problem.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// A tensor or model error (shapes, unknown names, divergence).
    #[error("{0}")]
    Candle(#[from] candle_core::Error),
    /// A config file or `--set` override that is invalid.
    #[error("config {source_name}: {message}")]
    Config {
        /// The file (or `--set`) the problem came from.
        source_name: String,
        /// What was wrong.
        message: String,
    },
    /// A file system error, with the path.
    #[error("{path}: {source}")]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A run directory that cannot be used as asked.
    #[error("run {path}: {message}")]
    Run {
        /// The run directory.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
}

impl ExpError {
    /// A config error.
    pub fn config(source_name: impl Into<String>, message: impl Into<String>) -> Self {
        ExpError::Config {
            source_name: source_name.into(),
            message: message.into(),
        }
    }
    /// An I/O error with its path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ExpError::Io {
            path: path.into(),
            source,
        }
    }
}

/// The experiments crate's result type.
pub type Result<T> = std::result::Result<T, ExpError>;
