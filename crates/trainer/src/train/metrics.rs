//! `output_dir/metrics.jsonl`, written by rank 0: one JSON object per line, flushed per line.
//!
//! Line 1 (only in a fresh run): `{"initial_val_loss": {task: nats}, "tasks": [...],
//! "world_size", "method", "global_batch_rows", "parameters"}`. Then one object per optimizer
//! step (see [`StepRecord`] and the README's metrics table). A resumed run truncates the file to
//! the offset saved in its checkpoint, so every step appears once.

use anyhow::{Context, Result};
use serde_json::{Map, Value};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Appends JSON lines and knows the file's length (the checkpoint's metrics offset).
pub struct MetricsWriter {
    path: PathBuf,
    file: File,
    offset: u64,
}

impl MetricsWriter {
    /// Opens `path`, truncated to `keep_bytes` (0 for a fresh run).
    ///
    /// # Errors
    /// The file cannot be opened or truncated.
    pub fn open(path: &Path, keep_bytes: u64) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .read(true)
            .open(path)
            .with_context(|| format!("open {}", path.display()))?;
        let len = file
            .metadata()
            .with_context(|| format!("stat {}", path.display()))?
            .len();
        if len < keep_bytes {
            anyhow::bail!(
                "{}: {len} bytes, but the checkpoint was written after {keep_bytes}: the file \
                 was truncated or replaced since",
                path.display()
            );
        }
        file.set_len(keep_bytes)
            .with_context(|| format!("truncate {}", path.display()))?;
        let mut w = Self {
            path: path.to_path_buf(),
            file,
            offset: keep_bytes,
        };
        use std::io::Seek;
        w.file.seek(std::io::SeekFrom::Start(keep_bytes))?;
        Ok(w)
    }

    /// Writes one record as a line and flushes it.
    ///
    /// # Errors
    /// A write failure.
    pub fn write(&mut self, record: &Value) -> Result<()> {
        let mut line = serde_json::to_string(record)?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .with_context(|| format!("write {}", self.path.display()))?;
        self.offset += line.len() as u64;
        Ok(())
    }

    /// Bytes written so far (including what was kept).
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

/// `{task: value}` with `null` for a missing (`None`) or non-finite value.
pub fn per_task(names: &[String], values: impl IntoIterator<Item = Option<f64>>) -> Value {
    let mut m = Map::new();
    for (n, v) in names.iter().zip(values) {
        m.insert(
            n.clone(),
            v.filter(|x| x.is_finite()).map_or(Value::Null, Value::from),
        );
    }
    Value::Object(m)
}
