//! Runs one untrusted program: a fresh directory, a wall-clock timeout, rlimits (CPU seconds,
//! address space, file size, processes, no core dumps), a cleared environment, its own
//! process group (killed on timeout and after exit), capped output; and, when running as root
//! where namespaces are allowed, no network (a new network namespace with no interfaces up),
//! a private mount namespace whose `/tmp`, `/var/tmp` and `/dev/shm` are empty tmpfs, and a
//! fresh unprivileged uid per program directory (so `RLIMIT_NPROC` applies per program, nothing
//! outside the program's directory and those tmpfs is writable, and every process of that uid
//! is killed when a command ends, including ones that left the process group with `setsid`).
//!
//! The isolated mode is what HumanEval/CodeGeeX-style harnesses get from a throw-away
//! container; without it ([`Isolation::LimitsOnly`]) the programs run as the calling user
//! with the rlimits only, and [`Isolation::describe`] says so.

use std::ffi::CString;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The first uid (and gid) of the isolated mode, ids no account uses. Each program directory
/// gets its own id: `SANDBOX_IDS + (pid mod 1024) * 2^14 + (a process-wide counter mod 2^14)`,
/// unique within a process (for 16384 directories at a time) and, across processes, as long
/// as their pids differ modulo 1024.
pub const SANDBOX_IDS: u32 = 2_000_000_000;

/// The process-wide counter of program directories (all sandboxes of the process share it).
static NEXT_ID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn fresh_id(first_id: u32) -> u32 {
    let n = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % (1 << 14);
    first_id + (std::process::id() % 1024) * (1 << 14) + n
}

/// The directories replaced by an empty tmpfs in the isolated mode.
const PRIVATE_TMP: [&str; 3] = ["/tmp", "/var/tmp", "/dev/shm"];

/// PATH inside the sandbox.
pub const SANDBOX_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Resource limits of one command.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Wall-clock limit; the process group is killed at it.
    pub wall: Duration,
    /// `RLIMIT_CPU` in seconds (SIGXCPU, then SIGKILL one second later).
    pub cpu_seconds: u64,
    /// `RLIMIT_AS` in bytes (allocations beyond it fail).
    pub address_space: u64,
    /// `RLIMIT_FSIZE` in bytes (a larger write gets SIGXFSZ).
    pub file_size: u64,
    /// `RLIMIT_NPROC` per concurrent program: processes (threads count) of the sandbox user
    /// beyond those it already has. The count is per user, so the sandbox sets
    /// `processes * concurrency`; the kernel exempts root, so it binds only in the isolated
    /// mode or for a non-root caller.
    pub processes: u64,
    /// Bytes of stdout and of stderr kept; the rest is read and dropped.
    pub output_bytes: usize,
}

impl Limits {
    /// The limits of a program run: `wall` seconds of wall clock and as many of CPU, 4 GiB of
    /// address space (a JVM with `-Xmx512m` needs < 1 GiB), 64 MiB files, 128 processes,
    /// 64 KiB of output per stream.
    pub fn run(wall_seconds: u64) -> Self {
        Self {
            wall: Duration::from_secs(wall_seconds),
            cpu_seconds: wall_seconds.max(1),
            address_space: 4 << 30,
            file_size: 64 << 20,
            processes: 128,
            output_bytes: 64 << 10,
        }
    }
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// It exited with this code.
    Exited(i32),
    /// A signal ended it (SIGXCPU/SIGKILL from the CPU limit, SIGXFSZ, SIGSEGV, ...).
    Signaled(i32),
    /// The wall-clock limit was reached; the process group was killed.
    TimedOut,
}

/// What a command did.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutput {
    /// How it ended.
    pub status: Status,
    /// The first [`Limits::output_bytes`] of stdout (lossy UTF-8).
    pub stdout: String,
    /// The first [`Limits::output_bytes`] of stderr (lossy UTF-8).
    pub stderr: String,
    /// Whether either stream was longer than the cap.
    pub truncated: bool,
    /// Wall-clock time until it ended.
    pub wall: Duration,
}

impl RunOutput {
    /// Exited with code 0.
    pub fn success(&self) -> bool {
        self.status == Status::Exited(0)
    }
}

/// How far programs are isolated.
#[derive(Debug, Clone, PartialEq)]
pub enum Isolation {
    /// New network and mount namespaces, private tmpfs, a fresh uid/gid per program
    /// directory from `first_id` on.
    Full {
        /// The first of the unprivileged ids programs run as.
        first_id: u32,
    },
    /// Rlimits, process group, cleared environment and a fresh directory only.
    LimitsOnly {
        /// Why not isolated (not root, namespaces refused, ...).
        reason: String,
    },
}

impl Isolation {
    /// The strongest mode available: [`Isolation::Full`] when running as root and a probe
    /// command starts in new namespaces as `nobody`; else [`Isolation::LimitsOnly`] with the
    /// reason.
    pub fn detect() -> Self {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Isolation::LimitsOnly {
                reason: "not running as root (namespaces and a separate user need root)".into(),
            };
        }
        let full = Isolation::Full {
            first_id: SANDBOX_IDS,
        };
        let probe = Sandbox::new(full.clone(), 1).and_then(|sb| {
            let dir = sb.workdir("probe")?;
            sb.run(&dir, &["true".to_string()], &[], &Limits::run(10))
        });
        match probe {
            Ok(out) if out.success() => full,
            Ok(out) => Isolation::LimitsOnly {
                reason: format!("a sandboxed `true` ended with {:?}", out.status),
            },
            Err(e) => Isolation::LimitsOnly {
                reason: format!("new namespaces refused ({e})"),
            },
        }
    }

    /// Whether programs get no network and run as an unprivileged user.
    pub fn is_isolated(&self) -> bool {
        matches!(self, Isolation::Full { .. })
    }

    /// One line for logs and reports.
    pub fn describe(&self) -> String {
        match self {
            Isolation::Full { first_id } => format!(
                "isolated: no network (new network namespace), private /tmp, a fresh uid per \
                 program (from {first_id}), rlimits"
            ),
            Isolation::LimitsOnly { reason } => format!(
                "NOT isolated ({reason}): programs run as this user with rlimits only and can \
                 reach the network and this user's files; run as root (or in a throw-away \
                 container) for isolation"
            ),
        }
    }
}

/// A root directory holding one fresh directory per program, removed on drop.
#[derive(Debug)]
pub struct Sandbox {
    root: tempfile::TempDir,
    isolation: Isolation,
    /// Processes the sandbox user already has (the NPROC base in [`Isolation::LimitsOnly`]).
    base_processes: u64,
    /// Programs run at once (without isolation the NPROC limit is shared by this user's
    /// processes).
    concurrency: u64,
    /// Isolated mode: the uid/gid of each program directory.
    owners: std::sync::Mutex<std::collections::HashMap<PathBuf, u32>>,
    next: std::sync::atomic::AtomicU64,
}

impl Sandbox {
    /// A sandbox with its root under the system temp directory, for up to `concurrency`
    /// programs at once.
    ///
    /// # Errors
    /// The root cannot be created.
    pub fn new(isolation: Isolation, concurrency: usize) -> io::Result<Self> {
        let root = tempfile::Builder::new().prefix("coba-eval-").tempdir()?;
        // Others may traverse (the sandbox user reaches its own directory) but not list.
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o711))?;
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        Ok(Self {
            root,
            base_processes: processes_of(uid),
            concurrency: concurrency.max(1) as u64,
            owners: Default::default(),
            isolation,
            next: Default::default(),
        })
    }

    /// The isolation mode.
    pub fn isolation(&self) -> &Isolation {
        &self.isolation
    }

    /// A fresh empty directory `<root>/<label>-<n>` owned by the sandbox user.
    ///
    /// # Errors
    /// It cannot be created or handed over.
    pub fn workdir(&self, label: &str) -> io::Result<PathBuf> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let safe: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let dir = self.root.path().join(format!("{safe}-{n}"));
        std::fs::create_dir(&dir)?;
        if let Isolation::Full { first_id } = self.isolation {
            let id = fresh_id(first_id);
            std::os::unix::fs::chown(&dir, Some(id), Some(id))?;
            if let Ok(mut owners) = self.owners.lock() {
                owners.insert(dir.clone(), id);
            }
        }
        Ok(dir)
    }

    /// Runs `argv` (looked up on [`SANDBOX_PATH`]) in `dir` (from [`Sandbox::workdir`]) with
    /// only `PATH`, `HOME` (= `dir`), `LANG=C.UTF-8` and `env` in its environment, under
    /// `limits`. Every process of its group is killed when it ends or times out.
    ///
    /// # Errors
    /// The command cannot be started (not found, namespaces refused, ...).
    pub fn run(
        &self,
        dir: &Path,
        argv: &[String],
        env: &[(String, String)],
        limits: &Limits,
    ) -> io::Result<RunOutput> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(dir)
            .env_clear()
            .env("PATH", SANDBOX_PATH)
            .env("HOME", dir)
            .env("LANG", "C.UTF-8")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let owner = match self.isolation {
            Isolation::Full { .. } => {
                let id = self
                    .owners
                    .lock()
                    .ok()
                    .and_then(|o| o.get(dir).copied())
                    .ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!("{} is not a directory of this sandbox", dir.display()),
                        )
                    })?;
                Some(id)
            }
            Isolation::LimitsOnly { .. } => None,
        };
        // Isolated: the uid is the program's own; else this user's processes count too.
        let nproc = match owner {
            Some(_) => limits.processes,
            None => self.base_processes + limits.processes * self.concurrency,
        };
        let setup = ChildSetup::new(dir, limits, owner, nproc)?;
        // SAFETY: the closure only makes async-signal-safe system calls on data prepared
        // before the fork (no allocation, no locks).
        unsafe {
            cmd.pre_exec(move || setup.apply());
        }
        let start = Instant::now();
        let mut child = cmd.spawn()?;
        let pid = child.id() as libc::pid_t;
        let out_rx = drain(child.stdout.take(), limits.output_bytes);
        let err_rx = drain(child.stderr.take(), limits.output_bytes);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break match (status.code(), status.signal()) {
                    (Some(code), _) => Status::Exited(code),
                    (None, Some(sig)) => Status::Signaled(sig),
                    (None, None) => Status::Signaled(0),
                };
            }
            if start.elapsed() >= limits.wall {
                kill_group(pid);
                let _ = child.wait();
                break Status::TimedOut;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let wall = start.elapsed();
        // Whatever the program left running in its group goes too, and (isolated) every
        // process of its uid, also ones that left the group.
        kill_group(pid);
        if let Some(id) = owner {
            kill_uid(id);
        }
        // A process that left the group may hold the pipes open: do not wait for it.
        let grace = Duration::from_secs(1);
        let (stdout, t1) = out_rx.recv_timeout(grace).unwrap_or_default();
        let (stderr, t2) = err_rx.recv_timeout(grace).unwrap_or_default();
        Ok(RunOutput {
            status,
            stdout,
            stderr,
            truncated: t1 || t2,
            wall,
        })
    }
}

/// Sends SIGKILL to process group `pgid` (no error when it is gone).
fn kill_group(pgid: libc::pid_t) {
    // SAFETY: kill has no memory preconditions; a stale group only yields ESRCH.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// Kills every process running as `id` (a sandbox uid): a short-lived child drops to that
/// uid and sends SIGKILL to all processes it may signal (`kill(-1)`), which excludes itself.
fn kill_uid(id: u32) {
    let mut cmd = Command::new("true");
    cmd.env_clear()
        .env("PATH", SANDBOX_PATH)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe system calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setgid(id))?;
            check(libc::setuid(id))?;
            libc::kill(-1, libc::SIGKILL);
            Ok(())
        });
    }
    if let Ok(mut child) = cmd.spawn() {
        let _ = child.wait();
    }
}

/// Reads a pipe to its end on a thread, keeping the first `cap` bytes; sends `(text, truncated)`.
fn drain<R: Read + Send + 'static>(pipe: Option<R>, cap: usize) -> mpsc::Receiver<(String, bool)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut truncated = false;
        if let Some(mut pipe) = pipe {
            let mut buf = [0u8; 8192];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let room = cap.saturating_sub(kept.len());
                        kept.extend_from_slice(&buf[..n.min(room)]);
                        truncated |= n > room;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
        let _ = tx.send((String::from_utf8_lossy(&kept).into_owned(), truncated));
    });
    rx
}

/// Number of processes (threads not counted) owned by `uid`, from `/proc`; 0 if unreadable.
fn processes_of(uid: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let needle = format!("Uid:\t{uid}\t");
    entries
        .flatten()
        .filter(|e| e.file_name().as_bytes().iter().all(u8::is_ascii_digit))
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .filter(|s| s.lines().any(|l| l.starts_with(&needle)))
        .map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:\t"))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .unwrap_or(1)
        })
        .sum()
}

/// Everything the child does between fork and exec, prepared in the parent.
struct ChildSetup {
    rlimits: Vec<(libc::__rlimit_resource_t, u64, u64)>,
    /// Isolated mode: (the program's uid = gid, tmpfs targets, the program dir and its
    /// ancestors to create inside the new tmpfs, the program dir).
    isolate: Option<Isolate>,
}

struct Isolate {
    id: u32,
    tmpfs: Vec<CString>,
    ancestors: Vec<CString>,
    dir: CString,
    dot: CString,
    tmpfs_type: CString,
    tmpfs_opts: CString,
    root: CString,
}

fn cstring(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))
}

impl ChildSetup {
    fn new(dir: &Path, limits: &Limits, owner: Option<u32>, nproc: u64) -> io::Result<Self> {
        let rlimits = vec![
            (libc::RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 1),
            (libc::RLIMIT_AS, limits.address_space, limits.address_space),
            (libc::RLIMIT_FSIZE, limits.file_size, limits.file_size),
            (libc::RLIMIT_NPROC, nproc, nproc),
            (libc::RLIMIT_CORE, 0, 0),
        ];
        let isolate = match owner {
            None => None,
            Some(id) => {
                let dir = dir.canonicalize()?;
                let mut ancestors: Vec<CString> = dir
                    .ancestors()
                    .skip(1)
                    .filter(|a| a.parent().is_some())
                    .map(cstring)
                    .collect::<io::Result<_>>()?;
                ancestors.reverse();
                Some(Isolate {
                    id,
                    tmpfs: PRIVATE_TMP
                        .iter()
                        .filter(|t| Path::new(t).is_dir())
                        .map(|t| cstring(Path::new(t)))
                        .collect::<io::Result<_>>()?,
                    ancestors,
                    dir: cstring(&dir)?,
                    dot: cstring(Path::new("."))?,
                    tmpfs_type: cstring(Path::new("tmpfs"))?,
                    tmpfs_opts: cstring(Path::new("mode=1777,size=256m"))?,
                    root: cstring(Path::new("/"))?,
                })
            }
        };
        Ok(Self { rlimits, isolate })
    }

    /// Runs in the child after fork (cwd is already the program directory).
    fn apply(&self) -> io::Result<()> {
        // SAFETY (whole fn): raw system calls on pointers to CStrings owned by `self`, which
        // lives until exec; no allocation happens here.
        unsafe {
            check(libc::setsid())?;
            if let Some(iso) = &self.isolate {
                check(libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWNS))?;
                check(libc::mount(
                    std::ptr::null(),
                    iso.root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                for t in &iso.tmpfs {
                    check(libc::mount(
                        iso.tmpfs_type.as_ptr(),
                        t.as_ptr(),
                        iso.tmpfs_type.as_ptr(),
                        libc::MS_NOSUID | libc::MS_NODEV,
                        iso.tmpfs_opts.as_ptr().cast(),
                    ))?;
                }
                // The program directory may now be hidden under a tmpfs: recreate its path
                // there and bind the real directory (still our cwd) onto it.
                for a in &iso.ancestors {
                    libc::mkdir(a.as_ptr(), 0o755);
                }
                libc::mkdir(iso.dir.as_ptr(), 0o755);
                check(libc::mount(
                    iso.dot.as_ptr(),
                    iso.dir.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ))?;
                check(libc::chdir(iso.dir.as_ptr()))?;
            }
            for &(resource, soft, hard) in &self.rlimits {
                let lim = libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
                };
                check(libc::setrlimit(resource, &lim))?;
            }
            if let Some(iso) = &self.isolate {
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setgid(iso.id))?;
                check(libc::setuid(iso.id))?;
            }
        }
        Ok(())
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
