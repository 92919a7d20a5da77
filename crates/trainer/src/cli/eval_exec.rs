//! `coba-dist eval --metrics pass@1,accuracy`: what the model can do on the held-out test
//! problems, as the CoBa paper reports it. Greedy generation ([`super::eval_generate`],
//! sharded over ranks) or a completions file, then every program built and run in a sandbox
//! ([`codeexec`]) and every GSM8K answer matched. Prints the per-task, per-language table
//! (passed / total, Pass@1 or accuracy), writes it to `<out>/results.json` and each problem's
//! completion, program and outcome to `<out>/programs.jsonl`.

use super::eval::EvalArgs;
use super::model_path::{self, bad_input};
use super::ExitError;
use crate::functional::generate::{gather, generate_shard, Generated};
use crate::functional::{self, JudgeOptions};
use ::data::tokenize::Encoder;
use anyhow::{anyhow, Context};
use codeexec::score::{render, Row};
use codeexec::{Judgement, Metric, Problem, TimeLimits, ToolchainOptions};
use collectives::{exit_on_error, Communicator, InitOptions};
use serde::Serialize;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What to evaluate, resolved from the arguments.
struct Plan {
    problems: Vec<Problem>,
    /// Model, tokenizer and template (absent with --completions).
    model: Option<PathBuf>,
    tokenizer: Option<PathBuf>,
    template: ::data::config::TemplateConfig,
    out: PathBuf,
}

/// The `--metrics` list, without repeats.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricList(pub Vec<Metric>);

/// Parses `--metrics` (`pass@1,accuracy`).
pub fn parse_metrics(s: &str) -> Result<MetricList, String> {
    let mut out = Vec::new();
    for m in s.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let metric = Metric::parse(m)
            .ok_or_else(|| format!("unknown metric `{m}` (expected pass@1 or accuracy)"))?;
        if !out.contains(&metric) {
            out.push(metric);
        }
    }
    if out.is_empty() {
        return Err("--metrics needs pass@1, accuracy or both".into());
    }
    Ok(MetricList(out))
}

/// Runs the functional evaluation (every rank of a launch must call it; rank 0 reports).
///
/// # Errors
/// Exit code 2 for bad input (config, tasks without an eval bundle, a malformed bundle or
/// completions file, model or tokenizer paths); 1 for generation, sandbox or write failures.
pub fn run(args: &EvalArgs, metrics: &[Metric]) -> Result<(), ExitError> {
    let mut plan = plan(args, metrics)?;
    let start = std::time::Instant::now();
    let (completions, gen_stats) = match &args.completions {
        Some(path) => {
            let texts = read_completions(path, &mut plan.problems)?;
            let given = texts
                .into_iter()
                .enumerate()
                .map(|(index, completion)| Generated {
                    index,
                    completion,
                    tokens: 0,
                    finish: "given".into(),
                })
                .collect();
            (given, None)
        }
        None => {
            let (c, stats) = generate_all(args, &plan)?;
            match c {
                Some(c) => (c, Some(stats)),
                None => return Ok(()), // not rank 0
            }
        }
    };
    let gen_seconds = start.elapsed().as_secs_f64();
    let fail = |error: anyhow::Error| ExitError { code: 1, error };
    let opts = JudgeOptions {
        jobs: args
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
        limits: TimeLimits {
            run_seconds: args.timeout,
            ..TimeLimits::default()
        },
        toolchain: ToolchainOptions {
            python: args.python.clone(),
            node_path: args.node_path.clone(),
            go_module: args.go_module.clone(),
        },
        verbose: true,
    };
    let texts: Vec<&str> = completions.iter().map(|c| c.completion.as_str()).collect();
    let j = functional::judge(&plan.problems, &texts, &opts)
        .context("creating the sandbox directory")
        .map_err(fail)?;
    let rows = j.rows;
    let judged = j.judgements;
    let report = Report {
        model: plan.model.as_ref().map(|m| m.display().to_string()),
        completions: args.completions.as_ref().map(|p| p.display().to_string()),
        isolation: j.isolation,
        toolchains: j.toolchains,
        generation: gen_stats.map(|mut s| {
            s.seconds = gen_seconds;
            s
        }),
        execution_seconds: j.seconds,
        rows: &rows,
    };
    write_outputs(&plan.out, &report, &plan.problems, &completions, &judged).map_err(fail)?;
    let text = if args.json {
        let mut s = serde_json::to_string_pretty(&report)
            .context("serializing the report")
            .map_err(fail)?;
        s.push('\n');
        s
    } else {
        render(&rows)
    };
    tracing::info!(
        "wrote {} and {}",
        plan.out.join("results.json").display(),
        plan.out.join("programs.jsonl").display()
    );
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .context("writing to stdout")
        .map_err(fail)
}

/// Generation totals for the report.
#[derive(Debug, Clone, Serialize)]
struct GenStats {
    /// Tokens generated over all ranks.
    tokens: usize,
    /// Wall-clock seconds of generation (rank 0's view, including the gather).
    seconds: f64,
    /// Ranks that generated.
    world_size: usize,
    /// Token limit per problem.
    max_new_tokens: usize,
    /// How many stopped at EOS, at the problem's stop rule, at the token limit.
    finish: HashMap<String, usize>,
}

/// `results.json`.
#[derive(Debug, Serialize)]
struct Report<'a> {
    model: Option<String>,
    completions: Option<String>,
    isolation: String,
    toolchains: Vec<String>,
    generation: Option<GenStats>,
    execution_seconds: f64,
    rows: &'a [Row],
}

/// One line of `programs.jsonl`.
#[derive(Debug, Serialize)]
struct ProgramLine<'a> {
    task: &'a str,
    id: &'a str,
    lang: &'a str,
    completion: &'a str,
    /// Tokens generated (0 for given completions).
    tokens: usize,
    /// `eos`, `stop` (the problem's stop rule), `length` (the token limit) or `given`.
    finish: &'a str,
    #[serde(flatten)]
    judgement: &'a Judgement,
}

fn write_outputs(
    out: &Path,
    report: &Report<'_>,
    problems: &[Problem],
    completions: &[Generated],
    judged: &[Judgement],
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut json = serde_json::to_string_pretty(report)?;
    json.push('\n');
    write_atomic(&out.join("results.json"), json.as_bytes())?;
    let mut lines = String::new();
    for ((p, c), j) in problems.iter().zip(completions).zip(judged) {
        let line = ProgramLine {
            task: &p.task,
            id: &p.id,
            lang: p.check.lang().map_or("-", |l| l.as_str()),
            completion: &c.completion,
            tokens: c.tokens,
            finish: &c.finish,
            judgement: j,
        };
        lines.push_str(&serde_json::to_string(&line)?);
        lines.push('\n');
    }
    write_atomic(&out.join("programs.jsonl"), lines.as_bytes())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// Resolves tasks, problems, model and output directory.
fn plan(args: &EvalArgs, metrics: &[Metric]) -> Result<Plan, ExitError> {
    if !args.eval_data.is_dir() {
        return Err(bad_input(anyhow!(
            "--eval-data {}: no such directory (the eval bundle ships in the repository's \
             data/eval: run from the repository root or give its path)",
            args.eval_data.display()
        )));
    }
    if let Some(out) = args.out.as_ref().filter(|o| o.exists() && !o.is_dir()) {
        return Err(bad_input(anyhow!(
            "--out {}: exists and is not a directory",
            out.display()
        )));
    }
    let (tasks, model, tokenizer, template, default_out) = match &args.config {
        Some(path) => {
            let train = super::train::load_config(Some(path), &args.set)?;
            let model = args
                .model
                .clone()
                .unwrap_or_else(|| train.output_dir.join("best"));
            let data = train.data_config();
            let out = train.output_dir.join("eval");
            (
                data.tasks,
                Some(model),
                Some(train.model.tokenizer),
                data.template,
                out,
            )
        }
        None => {
            let tasks = if args.tasks.is_empty() {
                Vec::new()
            } else {
                ::data::config::DataConfig::from_task_args(&args.tasks)
                    .map_err(bad_input)?
                    .tasks
            };
            let (tok, template) = match &args.model {
                // Given completions need no model, tokenizer or template.
                Some(m) if args.completions.is_none() => (
                    Some(
                        model_path::tokenizer_for(m, args.tokenizer.as_deref())
                            .map_err(bad_input)?,
                    ),
                    model_path::template_for(m, args.template.as_deref()).map_err(bad_input)?,
                ),
                _ => (None, ::data::config::TemplateConfig::default()),
            };
            (
                tasks,
                args.model.clone(),
                tok,
                template,
                PathBuf::from("eval-results"),
            )
        }
    };
    let problems = if tasks.is_empty() {
        // --completions alone: every bundle file.
        let mut all = Vec::new();
        for t in functional::problems::bundle_tasks(&args.eval_data).map_err(bad_input)? {
            all.extend(codeexec::load_task(&args.eval_data, &t).map_err(bad_input)?);
        }
        all.retain(|p| metrics.contains(&p.check.metric()));
        if let Some(limit) = args.limit {
            all = functional::problems::limit_per_task(all, limit);
        }
        all
    } else if args.completions.is_some() {
        let mut all =
            functional::problems::problems_of(&tasks, &args.eval_data).map_err(bad_input)?;
        all.retain(|p| metrics.contains(&p.check.metric()));
        match args.limit {
            Some(limit) => functional::problems::limit_per_task(all, limit),
            None => all,
        }
    } else {
        functional::problems::load(&tasks, &args.eval_data, metrics, args.limit)
            .map_err(bad_input)?
    };
    if problems.is_empty() {
        return Err(bad_input(anyhow!(
            "no problems to evaluate for --metrics {} (tasks with an eval bundle in {}: {})",
            metrics
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(","),
            args.eval_data.display(),
            match functional::problems::bundle_tasks(&args.eval_data)
                .map_err(bad_input)?
                .join(", ")
            {
                t if t.is_empty() => "none".to_string(),
                t => t,
            }
        )));
    }
    Ok(Plan {
        problems,
        model,
        tokenizer,
        template,
        out: args.out.clone().unwrap_or(default_out),
    })
}

/// `--completions FILE`: JSONL lines `{"id": ..., "completion": ...}` (programs.jsonl of an
/// earlier run works). Keeps the problems that have one (in bundle order) and returns their
/// completions in the same order.
fn read_completions(path: &Path, problems: &mut Vec<Problem>) -> Result<Vec<String>, ExitError> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --completions {}", path.display()))
        .map_err(bad_input)?;
    let mut by_id: HashMap<String, String> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |msg: String| bad_input(anyhow!("{}, line {}: {msg}", path.display(), i + 1));
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let id = v["id"]
            .as_str()
            .ok_or_else(|| bad("no string field `id`".into()))?;
        let c = v["completion"]
            .as_str()
            .ok_or_else(|| bad("no string field `completion`".into()))?;
        if !problems.iter().any(|p| p.id == id) {
            return Err(bad(format!(
                "`id` {id} is not a problem of the evaluated tasks and metrics (--metrics \
                 {}: code problems count towards pass@1, GSM8K ones towards accuracy)",
                problems
                    .iter()
                    .map(|p| p.check.metric().as_str())
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect::<Vec<_>>()
                    .join(",")
            )));
        }
        if by_id.insert(id.to_string(), c.to_string()).is_some() {
            return Err(bad(format!("`id` {id} appears twice")));
        }
    }
    if by_id.is_empty() {
        return Err(bad_input(anyhow!(
            "--completions {}: no completions (expected JSONL lines {{\"id\": ..., \
             \"completion\": ...}})",
            path.display()
        )));
    }
    let missing = problems
        .iter()
        .filter(|p| !by_id.contains_key(&p.id))
        .count();
    if missing > 0 {
        tracing::info!(
            "{} has completions for {} of {} problems: judging those",
            path.display(),
            by_id.len(),
            problems.len()
        );
    }
    problems.retain(|p| by_id.contains_key(&p.id));
    Ok(problems
        .iter()
        .filter_map(|p| by_id.remove(&p.id))
        .collect())
}

/// Loads the model and generates every problem's completion (sharded); `None` off rank 0.
fn generate_all(
    args: &EvalArgs,
    plan: &Plan,
) -> Result<(Option<Vec<Generated>>, GenStats), ExitError> {
    let (Some(model_arg), Some(tokenizer)) = (&plan.model, &plan.tokenizer) else {
        return Err(bad_input(anyhow!(
            "give --model (or --config) to generate, or --completions FILE to judge given texts"
        )));
    };
    model_path::resolve(model_arg).map_err(bad_input)?;
    let enc = Encoder::from_file(tokenizer, &plan.template).map_err(bad_input)?;
    let mut stop_ids = vec![enc.eos_id()];
    stop_ids.extend(functional::generate::tokenizer_eos(
        enc.tokenizer(),
        tokenizer,
    ));
    stop_ids.dedup();
    let comm = collectives::init(&InitOptions::default()).map_err(|e| ExitError {
        code: 1,
        error: e.into(),
    })?;
    let comm: &dyn Communicator = &*comm;
    let (device, _, dtype) = args.device.select(comm.local_rank())?;
    let model = model_path::load(model_arg, args.base.as_deref(), dtype, &device)?;
    let refs: Vec<&Problem> = plan.problems.iter().collect();
    tracing::info!(
        "generating {} completions on {} rank(s), at most {} tokens each",
        refs.len(),
        comm.world_size(),
        args.max_new_tokens
    );
    let mine = generate_shard(
        &model,
        &enc,
        &stop_ids,
        &refs,
        args.max_new_tokens,
        args.gen_batch,
        comm,
    );
    let mine = if comm.world_size() > 1 {
        exit_on_error(comm, mine)
    } else {
        mine.map_err(|error| ExitError { code: 1, error })?
    };
    let all = gather(comm, mine);
    let all = if comm.world_size() > 1 {
        exit_on_error(comm, all)
    } else {
        all.map_err(|error| ExitError { code: 1, error })?
    };
    let Some(all) = all else {
        return Ok((None, empty_stats(comm.world_size(), args.max_new_tokens)));
    };
    let mut stats = empty_stats(comm.world_size(), args.max_new_tokens);
    for g in &all {
        stats.tokens += g.tokens;
        *stats.finish.entry(g.finish.clone()).or_default() += 1;
    }
    Ok((Some(all), stats))
}

fn empty_stats(world_size: usize, max_new_tokens: usize) -> GenStats {
    GenStats {
        tokens: 0,
        seconds: 0.0,
        world_size,
        max_new_tokens,
        finish: HashMap::new(),
    }
}
