//! `output_dir/metrics.jsonl`, written by rank 0: one JSON object per line, flushed per line.
//!
//! Line 1 (only in a fresh run): the [`Header`](super::record::Header). Then one
//! [`StepRecord`](super::record::StepRecord) per optimizer step (the README's metrics table).
//! A resumed run truncates the file to the offset saved in its checkpoint, so every step
//! appears once.

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Appends JSON lines and knows the file's length (the checkpoint's metrics offset) and the
/// length of its header line (line 1, which a resume may rewrite).
pub struct MetricsWriter {
    path: PathBuf,
    file: File,
    offset: u64,
    header_len: u64,
}

impl MetricsWriter {
    /// Opens `path`, truncated to `keep_bytes` (0 for a fresh run). `saved_header_len` is the
    /// header line's length (with its newline) when `keep_bytes` was recorded; when line 1 has
    /// been rewritten since (another length), the cut moves by the difference. `None` (older
    /// checkpoints) keeps `keep_bytes` as it is.
    ///
    /// # Errors
    /// The file cannot be opened, read or truncated, or is shorter than `keep_bytes`.
    pub fn open(path: &Path, keep_bytes: u64, saved_header_len: Option<u64>) -> Result<Self> {
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
        let header_len = if keep_bytes > 0 {
            first_line(path)?.len() as u64
        } else {
            0
        };
        let keep_bytes = match saved_header_len {
            Some(saved) if keep_bytes > 0 => (keep_bytes + header_len).saturating_sub(saved),
            _ => keep_bytes,
        };
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
            header_len,
        };
        w.file.seek(SeekFrom::Start(keep_bytes))?;
        Ok(w)
    }

    /// Writes one record as a line and flushes it. The first line written to an empty file
    /// is the header.
    ///
    /// # Errors
    /// A write failure.
    pub fn write(&mut self, record: &impl Serialize) -> Result<()> {
        let mut line = serde_json::to_string(record)?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .with_context(|| format!("write {}", self.path.display()))?;
        if self.offset == 0 {
            self.header_len = line.len() as u64;
        }
        self.offset += line.len() as u64;
        Ok(())
    }

    /// Sets `key` to `value` in the header (line 1) and rewrites the file atomically (a
    /// temporary file renamed over it). The offset and header length change with it.
    ///
    /// # Errors
    /// No header line, or an IO failure.
    pub fn update_header(&mut self, key: &str, value: Value) -> Result<()> {
        let text =
            std::fs::read(&self.path).with_context(|| format!("read {}", self.path.display()))?;
        let split = text
            .iter()
            .position(|&b| b == b'\n')
            .with_context(|| format!("{}: no header line", self.path.display()))?;
        let mut header: Value = serde_json::from_slice(&text[..split])
            .with_context(|| format!("{}: line 1", self.path.display()))?;
        if let Some(m) = header.as_object_mut() {
            m.insert(key.to_string(), value);
        }
        let mut out = serde_json::to_vec(&header)?;
        out.push(b'\n');
        let header_len = out.len() as u64;
        out.extend_from_slice(&text[split + 1..]);
        let tmp = self.path.with_extension("jsonl.tmp");
        std::fs::write(&tmp, &out).with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("rename {} -> {}", tmp.display(), self.path.display()))?;
        self.file = OpenOptions::new()
            .write(true)
            .read(true)
            .open(&self.path)
            .with_context(|| format!("open {}", self.path.display()))?;
        self.offset = out.len() as u64;
        self.header_len = header_len;
        self.file.seek(SeekFrom::Start(self.offset))?;
        Ok(())
    }

    /// The value of `key` in the header (line 1), if the file has one and it parses.
    pub fn header_value(&self, key: &str) -> Option<Value> {
        if self.offset == 0 {
            return None;
        }
        let header: Value = serde_json::from_slice(&first_line(&self.path).ok()?).ok()?;
        header.get(key).cloned()
    }

    /// Bytes written so far (including what was kept).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Length of the header line with its newline (0 before it is written).
    pub fn header_len(&self) -> u64 {
        self.header_len
    }
}

/// Line 1 of `path` with its newline (the header).
fn first_line(path: &Path) -> Result<Vec<u8>> {
    use std::io::BufRead;
    let mut line = Vec::new();
    std::io::BufReader::new(File::open(path).with_context(|| format!("open {}", path.display()))?)
        .read_until(b'\n', &mut line)
        .with_context(|| format!("read {}", path.display()))?;
    Ok(line)
}
