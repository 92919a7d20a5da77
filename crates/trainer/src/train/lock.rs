//! The exclusive lock on an `output_dir`: one run at a time writes there.
//!
//! A double submit or an overlapping Slurm requeue used to start a second run in the same
//! directory: the first died with a misleading I/O error and its metrics were overwritten.
//! Rank 0 now takes an advisory `flock` on `output_dir/coba-dist.lock` before it writes
//! anything, and keeps it until the process ends. The file holds the holder's host, pid and
//! start time for the error message of a second run.
//!
//! Stale locks need no clean-up: the kernel drops a `flock` when its process dies (also on
//! SIGKILL or a node reboot), so a file left behind by a dead run is simply locked again. On a
//! filesystem without lock support the lock falls back to the file's contents: a holder on
//! this host whose pid is gone is stale and replaced; any other holder refuses the run.

use anyhow::{bail, Context, Result};
use collectives::host_name;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// File name of the lock inside `output_dir`.
pub const LOCK_FILE: &str = "coba-dist.lock";

/// Who holds (or held) a lock: the contents of the lock file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Holder {
    /// Host name of the process.
    pub host: String,
    /// Process id on that host.
    pub pid: u32,
    /// Start of the run, seconds since the Unix epoch.
    pub since_unix_s: u64,
}

impl Holder {
    /// This process.
    pub fn me() -> Self {
        Holder {
            host: host_name(),
            pid: std::process::id(),
            since_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    /// True when the holder is a process of this host that no longer exists.
    fn is_dead_here(&self) -> bool {
        self.host == host_name() && !Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} on host {} (started at unix time {})",
            self.pid, self.host, self.since_unix_s
        )
    }
}

/// A held lock; dropping it (or the process ending) releases it. The file stays behind, empty.
#[derive(Debug)]
pub struct OutputLock {
    file: File,
    path: PathBuf,
}

impl OutputLock {
    /// Takes the lock on `output_dir` (created if missing).
    ///
    /// # Errors
    /// Another live run holds it (the message names its host and pid and the lock file), or
    /// the directory or file cannot be created.
    pub fn acquire(output_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(output_dir)
            .with_context(|| format!("create {}", output_dir.display()))?;
        let path = output_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        let previous = read_holder(&mut file);
        match file.try_lock() {
            Ok(()) => {
                if let Some(h) = previous.filter(|h| h.pid != std::process::id()) {
                    tracing::info!(
                        "{}: taking over the lock of an ended run ({h})",
                        path.display()
                    );
                }
            }
            Err(TryLockError::WouldBlock) => bail!(
                "output_dir {} is in use by another run: {} holds {} (a double submit or an \
                 overlapping requeue?). Wait for it to end, or choose another output_dir",
                output_dir.display(),
                previous.map_or("a process".to_string(), |h| h.to_string()),
                path.display()
            ),
            Err(TryLockError::Error(e)) => {
                // No flock on this filesystem: trust the file's contents.
                if let Some(h) = previous.filter(|h| !h.is_dead_here()) {
                    bail!(
                        "output_dir {} may be in use by another run: {h} holds {} and this \
                         filesystem has no file locks ({e}) to tell whether it is alive; \
                         delete the file if that run has ended",
                        output_dir.display(),
                        path.display()
                    );
                }
            }
        }
        let mut lock = OutputLock { file, path };
        lock.write_holder(&Holder::me())?;
        Ok(lock)
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_holder(&mut self, h: &Holder) -> Result<()> {
        let text = serde_json::to_string(h)?;
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.file
            .write_all(text.as_bytes())
            .and_then(|()| self.file.flush())
            .with_context(|| format!("write {}", self.path.display()))
    }
}

impl Drop for OutputLock {
    /// Empties the file (so no stale holder is named later) and releases the lock.
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

fn read_holder(file: &mut File) -> Option<Holder> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(text.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_dir_lock_refuses_a_second_holder_and_names_the_first() {
        let d = tempfile::tempdir().unwrap();
        let a = OutputLock::acquire(d.path()).unwrap();
        // A second open file description (what a second process has) is refused.
        let e = OutputLock::acquire(d.path()).unwrap_err().to_string();
        assert!(e.contains("in use by another run"), "{e}");
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        drop(a);
        // Released: the file stays, empty, and the next run takes it.
        assert_eq!(std::fs::read(d.path().join(LOCK_FILE)).unwrap().len(), 0);
        let _b = OutputLock::acquire(d.path()).unwrap();
    }

    #[test]
    fn output_dir_lock_left_by_a_dead_run_is_taken_over() {
        let d = tempfile::tempdir().unwrap();
        let dead = Holder {
            host: host_name(),
            pid: u32::MAX - 7,
            since_unix_s: 1,
        };
        std::fs::write(
            d.path().join(LOCK_FILE),
            serde_json::to_string(&dead).unwrap(),
        )
        .unwrap();
        let lock = OutputLock::acquire(d.path()).unwrap();
        let now: Holder = serde_json::from_slice(&std::fs::read(lock.path()).unwrap()).unwrap();
        assert_eq!(now.pid, std::process::id());
    }
}
