//! Functional evaluation (Pass@1, GSM8K accuracy) shared by `coba-dist eval --metrics` and
//! evaluation during training (`[eval]`): the problems of the configured tasks
//! ([`problems`]), greedy generation sharded over ranks ([`generate`]), and judging on rank 0
//! in the `codeexec` sandbox ([`judge`]).

pub mod generate;
pub mod problems;

use codeexec::score::{table, Row};
use codeexec::{Isolation, Judgement, Metric, Problem, Sandbox, TimeLimits, ToolchainOptions};
use std::collections::BTreeMap;

/// How programs are judged.
#[derive(Debug, Clone, PartialEq)]
pub struct JudgeOptions {
    /// Programs run at once.
    pub jobs: usize,
    /// Run and compile limits.
    pub limits: TimeLimits,
    /// Interpreter and optional toolchain pieces.
    pub toolchain: ToolchainOptions,
    /// Log the isolation mode, toolchains and progress.
    pub verbose: bool,
}

/// What judging produced.
#[derive(Debug, Clone)]
pub struct Judged {
    /// The per-task, per-language table.
    pub rows: Vec<Row>,
    /// Per problem, in input order.
    pub judgements: Vec<Judgement>,
    /// [`Isolation::describe`] of the sandbox used.
    pub isolation: String,
    /// [`codeexec::Toolchains::summary`].
    pub toolchains: Vec<String>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Judges `completions[i]` for `problems[i]` in a fresh sandbox.
///
/// # Errors
/// The sandbox directory cannot be created.
pub fn judge(
    problems: &[Problem],
    completions: &[&str],
    opts: &JudgeOptions,
) -> anyhow::Result<Judged> {
    let start = std::time::Instant::now();
    let sandbox = Sandbox::new(Isolation::detect(), opts.jobs)?;
    let tc = codeexec::Toolchains::detect(&sandbox, opts.toolchain.clone());
    if opts.verbose {
        tracing::info!("programs: {}", sandbox.isolation().describe());
        for line in tc.summary() {
            tracing::info!("toolchain {line}");
        }
    }
    let items: Vec<(&Problem, &str)> = problems.iter().zip(completions.iter().copied()).collect();
    let n = items.len();
    let step = (n / 10).max(1);
    let verbose = opts.verbose;
    let progress = move |done: usize| {
        if verbose && (done.is_multiple_of(step) || done == n) {
            tracing::info!("judged {done}/{n}");
        }
    };
    let judgements = codeexec::judge_all(&sandbox, &tc, opts.limits, &items, opts.jobs, &progress);
    let refs: Vec<&Problem> = problems.iter().collect();
    Ok(Judged {
        rows: table(&refs, &judgements),
        judgements,
        isolation: sandbox.isolation().describe(),
        toolchains: tc.summary(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// One score per task and metric for metrics.jsonl: the task's `all` row when it has several
/// languages, else its only row; tasks whose rows judged nothing are left out.
pub fn task_scores(rows: &[Row]) -> BTreeMap<Metric, BTreeMap<String, f64>> {
    let mut out: BTreeMap<Metric, BTreeMap<String, f64>> = BTreeMap::new();
    let mut tasks: Vec<&str> = rows.iter().map(|r| r.task.as_str()).collect();
    tasks.dedup();
    for task in tasks {
        let rs: Vec<&Row> = rows.iter().filter(|r| r.task == task).collect();
        let row = rs.iter().find(|r| r.lang == "all").or(rs.first());
        if let Some(score) = row.and_then(|r| r.score.map(|s| (r.metric, s))) {
            out.entry(score.0)
                .or_default()
                .insert(task.to_string(), score.1);
        }
    }
    out
}
