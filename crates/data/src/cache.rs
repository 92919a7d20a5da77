//! On-disk tokenization cache, one file per task.
//!
//! The key is a SHA-256 over the cache format version, the task name, every data file's bytes
//! (in order), the tokenizer file's bytes and every setting that changes the result
//! (`max_seq_len`, `overlong`, `on_bad_line`, `max_line_bytes`, `valid_fraction`, `seed`, the
//! resolved template). Any change gives a new file name, so stale entries are never read.
//! An entry holds the task as loaded, before the emptiness checks of
//! [`Needs`](crate::dataset::Needs), so loads with different needs share it and each applies
//! its own check.
//!
//! Ranks on one host share the cache: the first to take `<file>.lock` (created exclusively)
//! tokenizes, writes `<file>.tmp.<pid>` and renames it into place atomically; the others wait
//! for the file and read it. A waiter that sees the lock vanish without a file retries; one that
//! waits longer than [`LOCK_WAIT`] (a builder killed mid-way leaves its lock) builds itself,
//! which is still safe because the rename is atomic. The lock holds the builder's host name and
//! pid: a waiter on the same host that finds the builder dead removes the lock and takes over,
//! so a restart after a crash does not wait.
//!
//! ```no_run
//! # fn demo(cfg: &data::config::DataConfig, enc: &data::tokenize::Encoder) -> data::Result<()> {
//! let task = data::cache::load_task_cached("/tmp/cache".as_ref(), &cfg.tasks[0], cfg, enc)?;
//! # let _ = task; Ok(()) }
//! ```

use crate::config::{DataConfig, TaskSpec};
use crate::dataset::{load_task_files, Sample, TaskData, TaskStats};
use crate::source::task_files;
use crate::tokenize::{hex, Encoded, Encoder};
use crate::{DataError, Result};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Bumped whenever the file layout, the stats or the tokenization logic changes.
/// 2: per-reason drop counts, records per split, `cut_before_tokenizing`, bounded
/// tokenization, `max_line_bytes` and BOM handling; entries hold tasks before the emptiness
/// checks of [`crate::dataset::Needs`].
pub const CACHE_VERSION: u32 = 2;
const MAGIC: &[u8; 8] = b"COBADAT1";
const TRAILER: &[u8; 4] = b"END!";

/// How long a rank waits for another rank's build before building itself.
pub const LOCK_WAIT: Duration = Duration::from_secs(1800);

/// The cache file of `spec` under `dir` for these inputs.
pub fn cache_path(
    dir: &Path,
    spec: &TaskSpec,
    files: &[PathBuf],
    cfg: &DataConfig,
    enc: &Encoder,
) -> Result<PathBuf> {
    let mut h = Sha256::new();
    h.update(CACHE_VERSION.to_le_bytes());
    h.update((spec.name.len() as u64).to_le_bytes());
    h.update(spec.name.as_bytes());
    for f in files {
        let bytes = std::fs::read(f).map_err(|e| DataError::io(f, e))?;
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    h.update(enc.tokenizer_hash().as_bytes());
    let settings = serde_json::json!({
        "max_seq_len": cfg.max_seq_len,
        "overlong": cfg.overlong,
        "on_bad_line": cfg.on_bad_line,
        "max_line_bytes": cfg.max_line_bytes,
        "valid_fraction": cfg.valid_fraction,
        "seed": cfg.seed,
        "template": enc.template(),
    });
    h.update(settings.to_string().as_bytes());
    let key = hex(&h.finalize());
    let safe: String = spec
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Ok(dir.join(format!("{safe}-{}.bin", &key[..32])))
}

/// Loads a task from the cache, building (and sharing) the entry on a miss. No emptiness
/// checks (see [`crate::dataset::check_task`]).
pub fn load_task_cached(
    dir: &Path,
    spec: &TaskSpec,
    cfg: &DataConfig,
    enc: &Encoder,
) -> Result<TaskData> {
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let files = task_files(&spec.name, &spec.paths)?;
    let path = cache_path(dir, spec, &files, cfg, enc)?;
    let lock = path.with_extension("bin.lock");
    let started = Instant::now();
    loop {
        if path.exists() {
            return read(&path, &spec.name);
        }
        match OpenOptions::new().write(true).create_new(true).open(&lock) {
            Ok(mut f) => {
                // Owner identity, so a waiter on this host can detect a dead builder.
                let _ = write!(f, "{} {}", hostname(), std::process::id());
                let built = build(&path, spec, &files, cfg, enc);
                let _ = std::fs::remove_file(&lock);
                return built;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if started.elapsed() > LOCK_WAIT {
                    return build(&path, spec, &files, cfg, enc);
                }
                if lock_owner_is_dead(&lock) {
                    // Left by a killed builder on this host: take over.
                    let _ = std::fs::remove_file(&lock);
                    continue;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(DataError::io(&lock, e)),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// True when the lock names a process on this host that no longer exists (Linux `/proc`).
/// Unknown owners (other hosts, no `/proc`, a lock still being written) count as alive.
fn lock_owner_is_dead(lock: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(lock) else {
        return false;
    };
    let mut parts = text.split_whitespace();
    let (Some(host), Some(pid)) = (parts.next(), parts.next()) else {
        return false;
    };
    let here = hostname();
    if here.is_empty() || host != here || !Path::new("/proc/self").exists() {
        return false;
    }
    pid.parse::<u32>()
        .is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

fn build(
    path: &Path,
    spec: &TaskSpec,
    files: &[PathBuf],
    cfg: &DataConfig,
    enc: &Encoder,
) -> Result<TaskData> {
    let task = load_task_files(spec, files, cfg, enc)?;
    write(path, &task)?;
    Ok(task)
}

/// Writes `task` to `path` atomically (temporary file, fsync, rename).
pub fn write(path: &Path, task: &TaskData) -> Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let tmp = path.with_extension(format!(
        "bin.tmp.{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let io = |e| DataError::io(&tmp, e);
    let mut w = BufWriter::new(File::create(&tmp).map_err(io)?);
    let stats = serde_json::to_vec(&task.stats).map_err(|e| DataError::Cache {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    w.write_all(MAGIC).map_err(io)?;
    w.write_all(&(stats.len() as u64).to_le_bytes())
        .map_err(io)?;
    w.write_all(&stats).map_err(io)?;
    for split in [&task.train, &task.valid, &task.test] {
        w.write_all(&(split.len() as u64).to_le_bytes())
            .map_err(io)?;
        for s in split {
            w.write_all(&(s.tokens.len() as u32).to_le_bytes())
                .map_err(io)?;
            for t in &s.tokens {
                w.write_all(&t.to_le_bytes()).map_err(io)?;
            }
            w.write_all(&s.loss).map_err(io)?;
        }
    }
    w.write_all(TRAILER).map_err(io)?;
    let file = w.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| DataError::io(path, e))
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
    path: &'a Path,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        if self.buf.len() - self.at < n {
            return Err(DataError::Cache {
                path: self.path.to_path_buf(),
                message: "truncated file".into(),
            });
        }
        let s = &self.buf[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes([
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
        ]))
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Reads a cache file written by [`write`].
pub fn read(path: &Path, name: &str) -> Result<TaskData> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let corrupt = |m: &str| DataError::Cache {
        path: path.to_path_buf(),
        message: m.to_string(),
    };
    let mut r = Reader {
        buf: &bytes,
        at: 0,
        path,
    };
    if r.take(8)? != MAGIC {
        return Err(corrupt("bad magic"));
    }
    let n = r.u64()? as usize;
    let stats: TaskStats =
        serde_json::from_slice(r.take(n)?).map_err(|e| corrupt(&e.to_string()))?;
    let mut splits: [Vec<Sample>; 3] = Default::default();
    for split in &mut splits {
        let count = r.u64()? as usize;
        split.reserve(count.min(1 << 24));
        for _ in 0..count {
            let len = r.u32()? as usize;
            let tokens = r
                .take(len * 4)?
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let loss = r.take(len)?.to_vec();
            split.push(Encoded { tokens, loss });
        }
    }
    if r.take(4)? != TRAILER || r.at != bytes.len() {
        return Err(corrupt("bad trailer"));
    }
    let [train, valid, test] = splits;
    Ok(TaskData {
        name: name.to_string(),
        train,
        valid,
        test,
        stats,
    })
}
