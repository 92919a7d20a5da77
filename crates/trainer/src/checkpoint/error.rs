//! Checkpoint errors.

use crate::model::ModelError;
use std::path::PathBuf;

/// What can go wrong reading or writing a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// File involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
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
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn format(path: &std::path::Path, msg: impl std::fmt::Display) -> Self {
        Self::Format {
            path: path.to_path_buf(),
            msg: msg.to_string(),
        }
    }
}
