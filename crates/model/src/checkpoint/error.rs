//! Checkpoint errors.

use crate::ModelError;
use std::path::PathBuf;

/// What can go wrong reading or writing a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// File involved.
        path: PathBuf,
        /// The OS error, in the message only (a field named `source` would also be chained,
        /// and `{:#}` would print it twice).
        error: std::io::Error,
    },
    /// A file's content is malformed or lacks something required.
    #[error("{path}: {msg}")]
    Format {
        /// File involved.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// The weights do not fit the configuration.
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl CheckpointError {
    pub(crate) fn io(path: &std::path::Path, error: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            error,
        }
    }

    pub(crate) fn format(path: &std::path::Path, msg: impl std::fmt::Display) -> Self {
        Self::Format {
            path: path.to_path_buf(),
            msg: msg.to_string(),
        }
    }
}
