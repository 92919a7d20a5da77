//! Errors: every bad-input error names the file, the 1-based line and the field.
//!
//! ```
//! use data::DataError;
//! let e = DataError::MissingField { path: "a.jsonl".into(), line: 3, field: "completion".into() };
//! assert_eq!(e.to_string(), "a.jsonl:3: missing field `completion`");
//! assert_eq!(e.skip_reason(), Some("missing_field"));
//! ```

use std::path::PathBuf;

/// Everything that can go wrong between files on disk and batches.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Reading or writing a file failed.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error, in the message only. (Not named `source`: thiserror would
        /// chain a field of that name too, and `{:#}` printed "No such file or directory"
        /// twice.)
        error: std::io::Error,
    },
    /// A line is not valid JSON (or not a JSON object).
    #[error("{}:{line}: invalid JSON: {message}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The parser's message.
        message: String,
    },
    /// A line holds bytes that are not UTF-8.
    #[error("{}:{line}: not valid UTF-8", path.display())]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// A line is longer than `data.max_line_bytes`; its bytes were not kept in memory.
    #[error("{}:{line}: line of {bytes} bytes is longer than data.max_line_bytes = {limit} (raise data.max_line_bytes or set data.on_bad_line = \"skip\")", path.display())]
    LineTooLong {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The line's size in bytes, without its `\n` (more than `limit`).
        bytes: usize,
        /// The limit, `data.max_line_bytes`.
        limit: usize,
    },
    /// A required field is absent.
    #[error("{}:{line}: missing field `{field}`", path.display())]
    MissingField {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The field (or the alternatives, `a|b`).
        field: String,
    },
    /// A field has the wrong JSON type.
    #[error("{}:{line}: field `{field}` must be {expected}", path.display())]
    WrongType {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The field, e.g. `chat_rounds[1].content`.
        field: String,
        /// What it should be, e.g. `a string`.
        expected: &'static str,
    },
    /// A field has a value outside its allowed set (e.g. `split: "dev2"`).
    #[error("{}:{line}: field `{field}` has invalid value {value:?} ({allowed})", path.display())]
    BadValue {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The field.
        field: String,
        /// The value found.
        value: String,
        /// What is allowed.
        allowed: &'static str,
    },
    /// A chat round names a role that is not system / human|user / bot|assistant|gpt.
    #[error("{}:{line}: field `{field}`: unknown role {role:?} (expected system, human|user or bot|assistant|gpt)", path.display())]
    UnknownRole {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The field, e.g. `chat_rounds[2].role`.
        field: String,
        /// The role found.
        role: String,
    },
    /// Chat rounds do not alternate human → assistant (after an optional leading system).
    #[error("{}:{line}: field `{field}`: {message}", path.display())]
    RoleOrder {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The field, e.g. `chat_rounds[3].role`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A data file has no samples at all.
    #[error("{}: empty file (no JSON lines)", path.display())]
    EmptyFile {
        /// The file.
        path: PathBuf,
    },
    /// A task path matched no `.jsonl` / `.jsonl.gz` file.
    #[error("task `{task}`: no .jsonl or .jsonl.gz files at {}", path.display())]
    NoFiles {
        /// The task.
        task: String,
        /// The configured path.
        path: PathBuf,
    },
    /// A task has no samples in a split after filtering (and after the validation carve-out).
    #[error("task `{task}`: no {split} samples left after filtering ({detail})")]
    EmptySplit {
        /// The task.
        task: String,
        /// `train`, `valid` or `test`.
        split: &'static str,
        /// Counts that explain why.
        detail: String,
    },
    /// The tokenizer file is missing or unreadable, or a template marker is not a token.
    #[error("tokenizer {}: {message}", path.display())]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// An inconsistent setting.
    #[error("data config: field `{field}`: {message}")]
    Config {
        /// The setting.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A cache file exists but cannot be used.
    #[error("{}: corrupt tokenization cache: {message}", path.display())]
    Cache {
        /// The cache file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl DataError {
    /// The reason under which `on_bad_line = "skip"` counts this error, or `None` when it is
    /// not a per-line error (those are never skipped).
    pub fn skip_reason(&self) -> Option<&'static str> {
        Some(match self {
            DataError::Json { .. } => "invalid_json",
            DataError::NotUtf8 { .. } => "not_utf8",
            DataError::LineTooLong { .. } => "too_long",
            DataError::MissingField { .. } => "missing_field",
            DataError::WrongType { .. } => "wrong_type",
            DataError::BadValue { .. } => "bad_value",
            DataError::UnknownRole { .. } => "unknown_role",
            DataError::RoleOrder { .. } => "role_order",
            _ => return None,
        })
    }

    pub(crate) fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            error,
        }
    }
}

/// Result with [`DataError`].
pub type Result<T, E = DataError> = std::result::Result<T, E>;
