//! Finding a task's files and reading their lines (`.jsonl` or gzip `.jsonl.gz`).
//!
//! ```no_run
//! use data::source::{task_files, read_lines};
//! let files = task_files("math", &["data/tasks".into()]).unwrap();
//! for f in &files {
//!     read_lines(f, |line_no, line| { let _ = (line_no, line); Ok(()) }).unwrap();
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

/// Calls `f(line_no, text)` for every non-blank line (1-based numbers, trailing `\r\n` or `\n`
/// removed). A line that is not UTF-8 is passed as `Err(NotUtf8)` so the caller's bad-line
/// policy applies. Returns the number of non-blank lines; a file without any is
/// [`DataError::EmptyFile`].
pub fn read_lines(
    path: &Path,
    mut f: impl FnMut(usize, Result<&str>) -> Result<()>,
) -> Result<usize> {
    let mut reader = open(path)?;
    let mut buf = Vec::new();
    let mut line_no = 0;
    let mut non_blank = 0;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            break;
        }
        line_no += 1;
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
