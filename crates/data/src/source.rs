//! Finding a task's files and reading their lines (`.jsonl` or gzip `.jsonl.gz`), with a
//! per-line size limit so one huge line cannot exhaust memory.
//!
//! ```no_run
//! use data::source::{task_files, read_lines};
//! let files = task_files("math", &["data/tasks".into()]).unwrap();
//! for f in &files {
//!     read_lines(f, 16 << 20, |line_no, line| { let _ = (line_no, line); Ok(()) }).unwrap();
//! }
//! ```

use crate::{DataError, Result};
use flate2::read::MultiGzDecoder;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// True for names ending in `.jsonl` or `.jsonl.gz`.
pub fn is_data_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.ends_with(".jsonl") || name.ends_with(".jsonl.gz")
}

/// The data files of a task, in a stable order: each configured path in turn; a directory is
/// searched recursively and its files sorted by path. A file given explicitly is used whatever
/// its extension.
pub fn task_files(task: &str, paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| DataError::io(p, e))?;
        if meta.is_dir() {
            let mut found = Vec::new();
            walk(p, &mut found)?;
            found.sort();
            if found.is_empty() {
                return Err(DataError::NoFiles {
                    task: task.to_string(),
                    path: p.clone(),
                });
            }
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let path = entry.path();
        let ty = entry.file_type().map_err(|e| DataError::io(&path, e))?;
        if ty.is_dir() {
            walk(&path, out)?;
        } else if is_data_file(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// Opens a file, decompressing `.gz` transparently.
pub fn open(path: &Path) -> Result<Box<dyn BufRead>> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let gz = path.extension().is_some_and(|e| e == "gz");
    Ok(if gz {
        Box::new(BufReader::new(MultiGzDecoder::new(file)))
    } else {
        Box::new(BufReader::with_capacity(1 << 16, file))
    })
}

/// Reads all (decompressed) bytes of a file.
pub fn read_all(path: &Path) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    open(path)?
        .read_to_end(&mut buf)
        .map_err(|e| DataError::io(path, e))?;
    Ok(buf)
}

/// The UTF-8 byte-order mark, accepted (and removed) at the start of a file's first line.
pub const UTF8_BOM: &[u8; 3] = b"\xEF\xBB\xBF";

/// Calls `f(line_no, text)` for every non-blank line (1-based numbers, trailing `\r\n` or `\n`
/// removed, a UTF-8 byte-order mark at the start of line 1 removed). Returns the number of
/// non-blank lines; a file without any is [`DataError::EmptyFile`].
///
/// Per-line failures are passed to `f` as `Err` so the caller's bad-line policy applies:
/// * a line that is not UTF-8: [`DataError::NotUtf8`];
/// * a line longer than `max_line_bytes` bytes (not counting its `\n`):
///   [`DataError::LineTooLong`] with the line's full size. At most `max_line_bytes` bytes of
///   one line are ever held in memory: the rest of such a line is read in bounded chunks and
///   discarded up to the next newline.
///
/// # Errors
/// [`DataError::Io`] when the file cannot be opened or read, [`DataError::EmptyFile`], or
/// whatever `f` returns.
pub fn read_lines(
    path: &Path,
    max_line_bytes: usize,
    mut f: impl FnMut(usize, Result<&str>) -> Result<()>,
) -> Result<usize> {
    let mut reader = open(path)?;
    let mut buf = Vec::new();
    let mut line_no = 0;
    let mut non_blank = 0;
    loop {
        buf.clear();
        let Some(size) = read_line_bounded(&mut reader, &mut buf, max_line_bytes)
            .map_err(|e| DataError::io(path, e))?
        else {
            break;
        };
        line_no += 1;
        if size > max_line_bytes {
            // Never blank: it holds more than `max_line_bytes` bytes.
            non_blank += 1;
            f(
                line_no,
                Err(DataError::LineTooLong {
                    path: path.to_path_buf(),
                    line: line_no,
                    bytes: size,
                    limit: max_line_bytes,
                }),
            )?;
            continue;
        }
        if line_no == 1 && buf.starts_with(UTF8_BOM) {
            buf.drain(..UTF8_BOM.len());
        }
        while matches!(buf.last(), Some(b'\n' | b'\r')) {
            buf.pop();
        }
        if buf.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        non_blank += 1;
        match std::str::from_utf8(&buf) {
            Ok(s) => f(line_no, Ok(s))?,
            Err(_) => f(
                line_no,
                Err(DataError::NotUtf8 {
                    path: path.to_path_buf(),
                    line: line_no,
                }),
            )?,
        }
    }
    if non_blank == 0 {
        return Err(DataError::EmptyFile {
            path: path.to_path_buf(),
        });
    }
    Ok(non_blank)
}

/// Reads one line into `buf` (without its `\n`), storing at most `limit` bytes. Returns the
/// line's full size in bytes (without the `\n`; larger than `limit` when bytes were
/// discarded), or `None` at the end of the input.
fn read_line_bounded(
    reader: &mut dyn BufRead,
    buf: &mut Vec<u8>,
    limit: usize,
) -> std::io::Result<Option<usize>> {
    let mut size = 0usize;
    let mut any = false;
    loop {
        let chunk = match reader.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(any.then_some(size));
        }
        any = true;
        let (content, used, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], i + 1, true),
            None => (chunk, chunk.len(), false),
        };
        let room = limit.saturating_sub(size);
        buf.extend_from_slice(&content[..content.len().min(room)]);
        size += content.len();
        reader.consume(used);
        if done {
            return Ok(Some(size));
        }
    }
}
