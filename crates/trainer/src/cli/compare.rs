//! `coba-dist compare --config F --methods uniform,lbtw,famo,coba`: the CoBa paper's
//! experiment in small. The same job (same data, seed, model init, schedule) runs once per
//! weighting method into `output_dir/<method>/`; then a table per task: the best
//! validation-loss ratio over the run's evaluations, the step of that best, the ratio at the
//! checkpoint the average ratio selects (`best/`), the spread of the tasks' best steps (the
//! paper's convergence-balance measure: CoBa aims to make tasks peak together), and seconds per
//! step. Written to stdout and `output_dir/compare.md`.

use super::train::{fail, load_config, start_runtime};
use super::ExitError;
use crate::metrics::record::in_task_order;
use crate::metrics::{MetricsFile, StepRecord};
use crate::train::config::TrainConfig;
use anyhow::anyhow;
use clap::Args;
use coba::{MethodKind, Signal};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Options of `compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The job (default: the embedded configs/demo.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Comma-separated methods, run in this order: coba, uniform, lbtw, dwa, famo (on
    /// validation losses: the paper's LBTW*, DWA*, FAMO*), lbtw-train, dwa-train, famo-train
    /// (on training losses: the paper's plain LBTW, DWA, FAMO), stl (one model per task).
    #[arg(long, value_delimiter = ',', default_value = "uniform,lbtw,famo,coba")]
    methods: Vec<String>,
    /// Overrides applied to every run, e.g. `--set train.max_steps=200`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Do not train: tabulate the runs already in `output_dir/<method>/`.
    #[arg(long)]
    no_run: bool,
}

/// One run's numbers for the table.
#[derive(Debug, Clone, PartialEq)]
pub struct RunStats {
    /// Method name.
    pub method: String,
    /// Tasks in id order.
    pub tasks: Vec<String>,
    /// Per task: (best ratio, step of the best) over the evaluations.
    pub best: Vec<(f64, u64)>,
    /// Per task: the ratio at the evaluation with the lowest mean ratio.
    pub at_selected: Vec<f64>,
    /// Step (steps completed) of that evaluation.
    pub selected_step: u64,
    /// Mean seconds per optimizer step (`step_time_s` + probe + evaluation time).
    pub time_per_step_s: f64,
    /// Mean seconds of the training step proper (forward, backward, all-reduce, update).
    pub train_step_s: f64,
    /// Mean seconds per step spent in the probe (its forward and reduction).
    pub probe_per_step_s: f64,
    /// Mean seconds per step spent computing the weights (rank 0).
    pub weighting_per_step_s: f64,
    /// Per task: Pass@1 at the selected evaluation (`[eval] metrics`; `None` when not
    /// measured for the task).
    pub pass_at_1: Vec<Option<f64>>,
    /// Per task: accuracy at the selected evaluation, likewise.
    pub accuracy: Vec<Option<f64>>,
}

/// Reads a run's `metrics.jsonl` into [`RunStats`].
///
/// # Errors
/// A missing or malformed file, or a run without evaluations.
pub fn run_stats(method: &str, dir: &Path) -> anyhow::Result<RunStats> {
    let path = dir.join("metrics.jsonl");
    let file = MetricsFile::read(&path)?;
    if let Some(line) = file.truncated_line {
        tracing::warn!(
            "{}: line {line} is cut off (a crash while writing?) and was left out",
            path.display()
        );
    }
    let tasks = file.header.tasks.clone();
    let initial: Vec<f64> = file
        .initial_val_loss()
        .iter()
        .map(|v| v.unwrap_or(f64::NAN))
        .collect();
    let mut best = vec![(f64::INFINITY, 0u64); tasks.len()];
    let mut selected: Option<(f64, u64, Vec<f64>, &StepRecord)> = None;
    let steps = file.steps.len();
    let sum = |f: fn(&StepRecord) -> Option<f64>| -> f64 { file.steps.iter().filter_map(f).sum() };
    let train = sum(|r| r.step_time_s);
    let probe = sum(|r| r.probe_time_s);
    let weighting = sum(|r| r.weight_time_s);
    let time = train + probe + sum(|r| r.eval_time_s);
    for r in &file.steps {
        let Some(mean) = r.val_ratio_mean else {
            continue;
        };
        let done = r.step + 1;
        let val_loss = in_task_order(r.val_loss.as_ref(), &tasks).unwrap_or_default();
        let ratios: Vec<f64> = initial
            .iter()
            .enumerate()
            .map(|(i, l0)| val_loss.get(i).copied().flatten().unwrap_or(f64::NAN) / l0)
            .collect();
        for (b, r) in best.iter_mut().zip(&ratios) {
            if *r < b.0 {
                *b = (*r, done);
            }
        }
        if selected.as_ref().is_none_or(|s| mean < s.0) {
            selected = Some((mean, done, ratios, r));
        }
    }
    let (_, selected_step, at_selected, rec) =
        selected.ok_or_else(|| anyhow!("{}: the run has no evaluation", path.display()))?;
    let column = |m: Option<&crate::metrics::record::PerTask>| -> Vec<Option<f64>> {
        tasks
            .iter()
            .map(|t| m.and_then(|m| m.get(t).copied().flatten()))
            .collect()
    };
    let (pass_at_1, accuracy) = (
        column(rec.pass_at_1.as_ref()),
        column(rec.accuracy.as_ref()),
    );
    Ok(RunStats {
        method: method.to_string(),
        tasks,
        best,
        at_selected,
        selected_step,
        time_per_step_s: time / steps.max(1) as f64,
        train_step_s: train / steps.max(1) as f64,
        probe_per_step_s: probe / steps.max(1) as f64,
        weighting_per_step_s: weighting / steps.max(1) as f64,
        pass_at_1,
        accuracy,
    })
}

/// The runs must have the same tasks in the same order to share a table.
fn same_tasks(runs: &[RunStats]) -> anyhow::Result<()> {
    let Some(first) = runs.first() else {
        return Ok(());
    };
    match runs.iter().find(|r| r.tasks != first.tasks) {
        Some(r) => Err(anyhow!(
            "compare: method {} has tasks {:?}, method {} has {:?}: runs of other jobs cannot \
             share one table",
            first.method,
            first.tasks,
            r.method,
            r.tasks
        )),
        None => Ok(()),
    }
}

/// The comparison as a Markdown table: one row per (task, method), then per method the
/// spread of best steps and the time per step.
pub fn table(runs: &[RunStats]) -> String {
    let mut s = String::new();
    // Pass@1 / accuracy columns when any run measured them (`[eval] metrics`).
    let has = |f: fn(&RunStats) -> &Vec<Option<f64>>| {
        runs.iter().any(|r| f(r).iter().any(Option::is_some))
    };
    let (pass, acc) = (has(|r| &r.pass_at_1), has(|r| &r.accuracy));
    let mut head =
        "| task | method | best val ratio | step of best | ratio at selected ckpt |".to_string();
    let mut rule = "|---|---|---:|---:|---:|".to_string();
    for (on, name) in [(pass, "Pass@1 at selected"), (acc, "accuracy at selected")] {
        if on {
            head += &format!(" {name} |");
            rule += "---:|";
        }
    }
    let _ = writeln!(s, "{head}");
    let _ = writeln!(s, "{rule}");
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{:.1}%", 100.0 * x));
    if let Some(first) = runs.first() {
        for (i, task) in first.tasks.iter().enumerate() {
            for r in runs {
                let mut row = format!(
                    "| {task} | {} | {:.4} | {} | {:.4} |",
                    r.method, r.best[i].0, r.best[i].1, r.at_selected[i]
                );
                if pass {
                    row += &format!(" {} |", pct(r.pass_at_1.get(i).copied().flatten()));
                }
                if acc {
                    row += &format!(" {} |", pct(r.accuracy.get(i).copied().flatten()));
                }
                let _ = writeln!(s, "{row}");
            }
        }
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| method | selected step | mean ratio at selected | spread of best steps | s/step (all) | train step s | probe s/step | weighting µs/step |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in runs {
        let steps = r.best.iter().map(|b| b.1);
        let spread = steps.clone().max().unwrap_or(0) - steps.min().unwrap_or(0);
        let mean = r.at_selected.iter().sum::<f64>() / r.at_selected.len().max(1) as f64;
        let _ = writeln!(
            s,
            "| {} | {} | {:.4} | {} | {:.3} | {:.3} | {:.3} | {:.1} |",
            r.method,
            r.selected_step,
            mean,
            spread,
            r.time_per_step_s,
            r.train_step_s,
            r.probe_per_step_s,
            r.weighting_per_step_s * 1e6
        );
    }
    s
}

/// One `--methods` entry: a weighting method and the losses it observes, or STL.
#[derive(Debug, Clone, Copy, PartialEq)]
enum MethodSpec {
    /// One multi-task run weighted by `kind` on `signal`.
    Weighted { kind: MethodKind, signal: Signal },
    /// Single-task learning: one run per task (same schedule and steps), each task judged at
    /// its own best evaluation.
    Stl,
}

impl MethodSpec {
    /// `lbtw` (validation signal) or `lbtw-train` (training signal), ..., `stl`.
    fn parse(s: &str) -> Result<Self, String> {
        if s == "stl" {
            return Ok(MethodSpec::Stl);
        }
        let (name, signal) = match s.strip_suffix("-train") {
            Some(n) => (n, Signal::Train),
            None => (s, Signal::Valid),
        };
        let kind = name.parse::<MethodKind>()?;
        if !signal.allowed_for(kind) {
            return Err(format!(
                "`{s}`: only lbtw, dwa and famo have a training-loss variant (and stl)"
            ));
        }
        Ok(MethodSpec::Weighted { kind, signal })
    }

    /// The name used for its output directory and table rows (`lbtw`, `lbtw-train`, `stl`).
    fn name(self) -> String {
        match self {
            MethodSpec::Stl => "stl".into(),
            MethodSpec::Weighted { kind, signal } => match signal {
                Signal::Valid => kind.as_str().to_string(),
                Signal::Train => format!("{}-train", kind.as_str()),
            },
        }
    }
}

/// STL's row: task k's numbers from its own single-task run in `dir/<task>/`; the
/// "selected" checkpoint of a task is its own best evaluation (its mean ratio is its ratio),
/// `selected_step` the latest of those, times summed over the runs (the total compute).
fn stl_stats(tasks: &[String], dir: &Path) -> anyhow::Result<RunStats> {
    let mut out = RunStats {
        method: "stl".into(),
        tasks: tasks.to_vec(),
        best: Vec::new(),
        at_selected: Vec::new(),
        selected_step: 0,
        time_per_step_s: 0.0,
        train_step_s: 0.0,
        probe_per_step_s: 0.0,
        weighting_per_step_s: 0.0,
        pass_at_1: Vec::new(),
        accuracy: Vec::new(),
    };
    for task in tasks {
        let r = run_stats("stl", &dir.join(task))?;
        out.best.push(r.best[0]);
        out.at_selected.push(r.at_selected[0]);
        out.pass_at_1.push(r.pass_at_1[0]);
        out.accuracy.push(r.accuracy[0]);
        out.selected_step = out.selected_step.max(r.selected_step);
        out.time_per_step_s += r.time_per_step_s;
        out.train_step_s += r.train_step_s;
        out.probe_per_step_s += r.probe_per_step_s;
        out.weighting_per_step_s += r.weighting_per_step_s;
    }
    Ok(out)
}

/// The configurations one method runs: one, or for STL one per task (uniform weighting of a
/// single task, into `<output_dir>/stl/<task>/`).
fn method_configs(base: &TrainConfig, m: MethodSpec) -> Vec<TrainConfig> {
    let dir = base.output_dir.join(m.name());
    match m {
        MethodSpec::Weighted { kind, signal } => {
            let mut cfg = base.clone();
            cfg.coba.method = kind;
            cfg.coba.signal = signal;
            cfg.output_dir = dir;
            vec![cfg]
        }
        MethodSpec::Stl => base
            .data
            .tasks
            .iter()
            .map(|t| {
                let mut cfg = base.clone();
                cfg.data.tasks = vec![t.clone()];
                cfg.coba.method = MethodKind::Uniform;
                cfg.coba.signal = Signal::Valid;
                cfg.output_dir = dir.join(&t.name);
                // Pass@1 / accuracy only for a task the eval bundle has problems of.
                if codeexec::problems::bundle_path(&cfg.eval.data, &t.name).is_none() {
                    cfg.eval.metrics.clear();
                }
                cfg
            })
            .collect(),
    }
}

fn method_stats(base: &TrainConfig, m: MethodSpec) -> anyhow::Result<RunStats> {
    let dir = base.output_dir.join(m.name());
    match m {
        MethodSpec::Stl => stl_stats(&base.task_names(), &dir),
        MethodSpec::Weighted { .. } => run_stats(&m.name(), &dir),
    }
}

/// Runs the job once per method, then prints the table (rank 0).
pub fn run(args: &CompareArgs) -> Result<(), ExitError> {
    let base = load_config(args.config.as_ref(), &args.set)?;
    let methods: Vec<MethodSpec> = args
        .methods
        .iter()
        .map(|m| {
            MethodSpec::parse(m.trim()).map_err(|e| ExitError {
                code: 2,
                error: anyhow!("--methods: {e}"),
            })
        })
        .collect::<Result<_, _>>()?;
    let mut stats = Vec::new();
    if args.no_run {
        for m in &methods {
            stats.push(method_stats(&base, *m).map_err(|e| ExitError { code: 2, error: e })?);
        }
        same_tasks(&stats).map_err(|e| ExitError { code: 2, error: e })?;
        print!("{}", table(&stats));
        return Ok(());
    }
    let comm = start_runtime(&base)?;
    let comm: &dyn collectives::Communicator = &*comm;
    for spec in &methods {
        let m = spec.name();
        for cfg in method_configs(&base, *spec) {
            if comm.rank() == 0 {
                tracing::info!(
                    "compare: running method {m} into {}",
                    cfg.output_dir.display()
                );
            }
            let summary = crate::train::run(&cfg, comm, None).map_err(|e| fail(comm, e))?;
            if summary.stopped_by == "signal" {
                // Every rank saw the signal at the same step (it rides on the step's all-reduce).
                return Err(ExitError {
                    code: 1,
                    error: anyhow::anyhow!(
                        "compare: method {m} stopped by a signal after {} steps; the remaining \
                     methods were not run and no comparison was written (re-run compare, \
                     or `compare --no-run` to tabulate what finished)",
                        summary.steps
                    ),
                });
            }
        }
        if comm.rank() == 0 {
            stats.push(method_stats(&base, *spec).map_err(|e| ExitError { code: 1, error: e })?);
        }
    }
    if comm.rank() == 0 {
        let text = table(&stats);
        print!("{text}");
        let p = base.output_dir.join("compare.md");
        std::fs::write(&p, &text).map_err(|e| ExitError {
            code: 1,
            error: anyhow!(e).context(format!("write {}", p.display())),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// STL: one uniform single-task run per task under `<output_dir>/stl/<task>`, keeping
    /// `[eval] metrics` only for tasks the eval bundle has problems of (the demo's
    /// code_translation has none, and a single-task run with metrics but no problems is
    /// refused by `check`); a weighted method keeps the whole configuration.
    #[test]
    fn stl_runs_each_task_alone_and_keeps_eval_metrics_only_where_the_bundle_has_problems() {
        let eval_data = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/eval");
        let toml = format!(
            "output_dir = \"/tmp/cmp\"\n[model]\ntokenizer = \"t.json\"\n[model.arch]\nhidden_size = 16\nnum_hidden_layers = 1\n\
             num_attention_heads = 2\n[data]\ntasks = [\n\
             {{ name = \"code_completion\", paths = [\"a.jsonl\"] }},\n\
             {{ name = \"code_translation\", paths = [\"b.jsonl\"] }},\n\
             {{ name = \"math_gsm8k\", paths = [\"c.jsonl\"] }},\n]\n\
             [coba]\nmethod = \"coba\"\n[eval]\nmetrics = [\"pass@1\", \"accuracy\"]\n\
             data = {eval_data:?}\n"
        );
        let base = crate::train::config::load(&crate::train::config::Sources {
            toml: Some((toml, "test.toml".into())),
            env: Vec::new(),
            sets: Vec::new(),
        })
        .unwrap();
        let stl = method_configs(&base, MethodSpec::parse("stl").unwrap());
        assert_eq!(stl.len(), 3);
        for (cfg, (task, keeps)) in stl.iter().zip([
            ("code_completion", true),
            ("code_translation", false),
            ("math_gsm8k", true),
        ]) {
            assert_eq!(cfg.task_names(), [task]);
            assert_eq!(cfg.output_dir, Path::new("/tmp/cmp/stl").join(task));
            assert_eq!(cfg.coba.method, MethodKind::Uniform);
            assert_eq!(cfg.eval.metrics.is_empty(), !keeps, "{task}");
        }
        let famo = method_configs(&base, MethodSpec::parse("famo-train").unwrap());
        assert_eq!(famo.len(), 1);
        assert_eq!(famo[0].task_names().len(), 3);
        assert_eq!(famo[0].coba.signal, Signal::Train);
        assert_eq!(famo[0].eval.metrics.len(), 2);
        assert_eq!(famo[0].output_dir, Path::new("/tmp/cmp/famo-train"));
    }

    #[test]
    fn best_steps_selection_and_spread_follow_the_logged_evaluations() {
        let dir = tempfile::tempdir().unwrap();
        let lines = [
            r#"{"initial_val_loss": {"a": 2.0, "b": 4.0}, "tasks": ["a", "b"]}"#,
            r#"{"step": 0, "step_time_s": 1.0}"#,
            r#"{"step": 1, "step_time_s": 1.0, "probe_time_s": 0.5, "val_loss": {"a": 1.0, "b": 3.6}, "val_ratio_mean": 0.7}"#,
            r#"{"step": 2, "step_time_s": 1.0, "weight_time_s": 0.001}"#,
            r#"{"step": 3, "step_time_s": 1.0, "eval_time_s": 2.0, "val_loss": {"a": 1.2, "b": 2.0}, "val_ratio_mean": 0.55, "pass_at_1": {"a": 0.25, "b": null}}"#,
        ];
        std::fs::write(dir.path().join("metrics.jsonl"), lines.join("\n")).unwrap();
        let r = run_stats("coba", dir.path()).unwrap();
        // a: ratios 0.5 (step 2), 0.6 (step 4); b: 0.9 (step 2), 0.5 (step 4).
        assert_eq!(r.best, vec![(0.5, 2), (0.5, 4)]);
        assert_eq!(r.selected_step, 4);
        assert_eq!(r.at_selected, vec![0.6, 0.5]);
        assert!((r.time_per_step_s - 6.5 / 4.0).abs() < 1e-12);
        assert!((r.probe_per_step_s - 0.125).abs() < 1e-12);
        assert_eq!(r.pass_at_1, vec![Some(0.25), None]);
        let t = table(&[r]);
        assert!(
            t.contains("| a | coba | 0.5000 | 2 | 0.6000 | 25.0% |"),
            "{t}"
        );
        assert!(t.contains("| b | coba | 0.5000 | 4 | 0.5000 | - |"), "{t}");
        assert!(t.contains("| coba | 4 | 0.5500 | 2 |"), "{t}");
    }
}
