//! Judging one generation: compose the program, build and run it in the sandbox with the
//! bundle's commands and limits (`data/eval/README.md`, "Commands": run limit 10 s, compile
//! limit 60 s), and classify the outcome; GSM8K is an exact match of the final number.

use crate::compose::{compose, Program};
use crate::problems::{Check, Lang, Problem};
use crate::sandbox::{Limits, RunOutput, Sandbox, Status};
use crate::toolchain::{Toolchains, JVM_FLAGS};
use serde::Serialize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The outcome of one generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Built, ran, every test passed (GSM8K: the final number matches).
    Passed,
    /// Ran and a test failed, or it crashed (GSM8K: another or no number).
    Failed,
    /// The run (or for Go the build and run) reached its time or CPU limit.
    Timeout,
    /// It did not build (compile error or compile timeout), or could not be started.
    Error,
    /// Not run: the language's toolchain is missing (counted apart, never as a failure).
    Skipped,
}

/// A judged generation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Judgement {
    /// The outcome.
    pub verdict: Verdict,
    /// Why, for anything but a pass: the first lines of the compiler's or program's stderr
    /// (else stdout), the limit reached, the skip reason, or the GSM8K numbers compared.
    pub detail: String,
    /// The composed source that was run (`None` for GSM8K and skips).
    pub program: Option<String>,
    /// Wall-clock seconds spent building and running.
    pub seconds: f64,
}

/// Time limits of the harness.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeLimits {
    /// Seconds a program may run (the bundle's 10).
    pub run_seconds: u64,
    /// Seconds a compile may take (the bundle's 60).
    pub compile_seconds: u64,
}

impl Default for TimeLimits {
    fn default() -> Self {
        Self {
            run_seconds: 10,
            compile_seconds: 60,
        }
    }
}

/// Lines of stderr/stdout kept in [`Judgement::detail`] (the first ones and the last).
const DETAIL_LINES: usize = 6;

fn first_lines(out: &RunOutput) -> String {
    let text = if out.stderr.trim().is_empty() {
        &out.stdout
    } else {
        &out.stderr
    };
    let mut lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.len() > DETAIL_LINES {
        // Keep the last line too: a Python traceback ends with the exception.
        let last = lines[lines.len() - 1];
        lines.truncate(DETAIL_LINES - 1);
        lines.extend(["...", last]);
    }
    let mut s = lines.join("\n");
    if s.len() > 1000 {
        let mut cut = 1000;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

fn describe_status(status: Status) -> String {
    match status {
        Status::Exited(code) => format!("exit code {code}"),
        Status::Signaled(sig) if sig == libc::SIGXCPU => "CPU time limit (SIGXCPU)".into(),
        Status::Signaled(sig) if sig == libc::SIGXFSZ => "file size limit (SIGXFSZ)".into(),
        Status::Signaled(sig) => format!("killed by signal {sig}"),
        Status::TimedOut => "wall-clock limit".into(),
    }
}

fn judgement(
    verdict: Verdict,
    detail: String,
    program: Option<&Program>,
    t: Duration,
) -> Judgement {
    Judgement {
        verdict,
        detail,
        program: program.map(|p| p.source.clone()),
        seconds: t.as_secs_f64(),
    }
}

/// The compile step (if any) and the run command of a language.
fn commands(p: &Problem, prog: &Program, tc: &Toolchains) -> (Option<Vec<String>>, Vec<String>) {
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    match prog.lang {
        Lang::Python => (None, v(&[&tc.python, prog.file])),
        Lang::Js => (None, v(&["node", prog.file])),
        Lang::Cpp => {
            let mut c = v(&["g++", "-std=c++11", prog.file]);
            // As CodeGeeX: HumanEval-X #162 (md5) links OpenSSL.
            if p.id.contains("162") {
                c.extend(v(&["-lcrypto", "-lssl"]));
            }
            (Some(c), v(&["./a.out"]))
        }
        Lang::Java => {
            let mut c = vec!["javac".to_string()];
            c.extend(JVM_FLAGS.iter().map(|f| format!("-J{f}")));
            c.push(prog.file.to_string());
            let mut r = vec!["java".to_string()];
            r.extend(JVM_FLAGS.iter().map(|f| f.to_string()));
            r.extend(v(&["-cp", ".", "Main"]));
            (Some(c), r)
        }
        Lang::Go => (None, Vec::new()),
    }
}

/// Judges `completion` (the text generated after the prompt) for `problem`.
pub fn judge(
    sandbox: &Sandbox,
    tc: &Toolchains,
    limits: TimeLimits,
    problem: &Problem,
    completion: &str,
) -> Judgement {
    let start = std::time::Instant::now();
    if let Check::Gsm8k { answer } = &problem.check {
        let got = data::gsm8k::extract_answer(completion);
        let verdict = if got.as_deref() == Some(answer.as_str()) {
            Verdict::Passed
        } else {
            Verdict::Failed
        };
        let detail = match got {
            Some(g) => format!("final number {g}, answer {answer}"),
            None => format!("no number in the generation, answer {answer}"),
        };
        return judgement(verdict, detail, None, start.elapsed());
    }
    let Some(prog) = compose(problem, completion) else {
        return judgement(
            Verdict::Error,
            "nothing to run".into(),
            None,
            start.elapsed(),
        );
    };
    let needs_numpy = matches!(problem.check, Check::HumanEvalX { .. });
    if let Err(why) = tc.available(prog.lang, needs_numpy) {
        return judgement(Verdict::Skipped, why, None, start.elapsed());
    }
    let run = || -> std::io::Result<Judgement> {
        let dir = sandbox.workdir(&problem.id)?;
        std::fs::write(dir.join(prog.file), &prog.source)?;
        let result = run_in(sandbox, tc, limits, problem, &prog, &dir);
        let _ = std::fs::remove_dir_all(&dir);
        result.map(|(v, d)| judgement(v, d, Some(&prog), start.elapsed()))
    };
    run().unwrap_or_else(|e| {
        judgement(
            Verdict::Error,
            format!("could not start: {e}"),
            Some(&prog),
            start.elapsed(),
        )
    })
}

fn run_in(
    sandbox: &Sandbox,
    tc: &Toolchains,
    limits: TimeLimits,
    problem: &Problem,
    prog: &Program,
    dir: &std::path::Path,
) -> std::io::Result<(Verdict, String)> {
    let run_limits = Limits::run(limits.run_seconds);
    let compile_limits = Limits::run(limits.compile_seconds);
    let mut env = Vec::new();
    if let Some(p) = &tc.options.node_path {
        env.push(("NODE_PATH".to_string(), p.display().to_string()));
    }
    if prog.lang == Lang::Go {
        return run_go(sandbox, tc, limits, dir);
    }
    let (compile, run) = commands(problem, prog, tc);
    if let Some(c) = compile {
        let out = sandbox.run(dir, &c, &env, &compile_limits)?;
        if !out.success() {
            let why = match out.status {
                Status::TimedOut => "compile: wall-clock limit".to_string(),
                s => format!("compile: {}\n{}", describe_status(s), first_lines(&out)),
            };
            return Ok((Verdict::Error, why));
        }
    }
    let out = sandbox.run(dir, &run, &env, &run_limits)?;
    Ok(classify(&out, prog.lang == Lang::Js))
}

/// The verdict of a finished run; `quiet` (JavaScript, CodeGeeX's rule for `console.assert`)
/// also requires empty stdout and stderr.
fn classify(out: &RunOutput, quiet: bool) -> (Verdict, String) {
    match out.status {
        Status::TimedOut => (Verdict::Timeout, "wall-clock limit".into()),
        Status::Signaled(sig) if sig == libc::SIGXCPU || sig == libc::SIGKILL => {
            // SIGKILL follows SIGXCPU at the hard CPU limit.
            (Verdict::Timeout, describe_status(out.status))
        }
        Status::Exited(0) if !quiet || (out.stdout.is_empty() && out.stderr.is_empty()) => {
            (Verdict::Passed, String::new())
        }
        Status::Exited(0) => (
            Verdict::Failed,
            format!(
                "printed output (a failed console.assert)\n{}",
                first_lines(out)
            ),
        ),
        s => (
            Verdict::Failed,
            format!("{}\n{}", describe_status(s), first_lines(out)),
        ),
    }
}

/// Go: `go test -timeout=<run>s main_test.go` in a module directory (CodeGeeX's go.mod and
/// vendor/ linked in), build and run within compile + run seconds.
fn run_go(
    sandbox: &Sandbox,
    tc: &Toolchains,
    limits: TimeLimits,
    dir: &std::path::Path,
) -> std::io::Result<(Verdict, String)> {
    let module = tc.options.go_module.as_ref().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "no --go-module for Go")
    })?;
    std::fs::copy(module.join("go.mod"), dir.join("go.mod"))?;
    std::os::unix::fs::symlink(module.join("vendor"), dir.join("vendor"))?;
    let env = vec![
        ("GOFLAGS".to_string(), "-mod=vendor".to_string()),
        ("GOPROXY".to_string(), "off".to_string()),
        ("GO111MODULE".to_string(), "on".to_string()),
        (
            "GOCACHE".to_string(),
            dir.join(".gocache").display().to_string(),
        ),
        (
            "GOPATH".to_string(),
            dir.join(".gopath").display().to_string(),
        ),
    ];
    let argv: Vec<String> = [
        "go",
        "test",
        &format!("-timeout={}s", limits.run_seconds),
        "main_test.go",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = sandbox.run(
        dir,
        &argv,
        &env,
        &Limits::run(limits.compile_seconds + limits.run_seconds),
    )?;
    let text = format!("{}{}", out.stdout, out.stderr);
    if out.status == Status::Exited(0) {
        return Ok((Verdict::Passed, String::new()));
    }
    if out.status != Status::TimedOut
        && (text.contains("build failed") || text.contains("[setup failed]"))
    {
        return Ok((Verdict::Error, format!("compile: {}", first_lines(&out))));
    }
    Ok(classify(&out, false))
}

/// Judges every `(problem, completion)` on up to `jobs` threads; results in input order.
/// `progress` is called after each one with the number done.
pub fn judge_all(
    sandbox: &Sandbox,
    tc: &Toolchains,
    limits: TimeLimits,
    items: &[(&Problem, &str)],
    jobs: usize,
    progress: &(dyn Fn(usize) + Sync),
) -> Vec<Judgement> {
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let mut slots: Vec<Option<Judgement>> = vec![None; items.len()];
    let results = std::sync::Mutex::new(&mut slots);
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1).min(items.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((p, c)) = items.get(i) else { break };
                let j = judge(sandbox, tc, limits, p, c);
                if let Ok(mut r) = results.lock() {
                    r[i] = Some(j);
                }
                progress(done.fetch_add(1, Ordering::Relaxed) + 1);
            });
        }
    });
    slots
        .into_iter()
        .map(|j| {
            j.unwrap_or_else(|| Judgement {
                verdict: Verdict::Error,
                detail: "not judged (a worker failed)".into(),
                program: None,
                seconds: 0.0,
            })
        })
        .collect()
}
