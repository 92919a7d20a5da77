//! Where rank 0's metrics go: `metrics.jsonl` always, TensorBoard event files under
//! `output_dir/tb/` when `metrics.tensorboard` is on (the default).
//!
//! TensorBoard layout: `tb/run/` holds the run's scalars (`loss`, `lr`, `grad_norm`,
//! `tokens_per_s`, `df`, `val_ratio_mean`, times, ...) and `tb/tasks/<task>/` each task's
//! values under the same tags for every task (`train_loss`, `val_ratio`, `weights`, `rcs`,
//! `acs`, `val_loss`, `probe_val_loss`); `<task>` is the task's name with `/`, `\\` and control
//! characters replaced, made unique ([`task_dir_names`]). TensorBoard draws one chart per tag with one line per
//! run, so each quantity is one chart with a line per task (as PyTorch's `add_scalars` does).

use super::jsonl::MetricsWriter;
use super::record::{Header, StepRecord};
use super::tensorboard::EventWriter;
use anyhow::Result;
use std::path::Path;

/// The TensorBoard sink: one event file for the run's scalars, one per task.
pub struct TensorBoard {
    run: EventWriter,
    tasks: Vec<(String, EventWriter)>,
}

/// A directory name for a task: its name with `/`, `\\`, control characters and a leading
/// `.` replaced by `_` (other characters, Unicode letters too, stay).
pub fn task_dir_name(task: &str) -> String {
    let mut s: String = task
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if s.starts_with('.') || s.is_empty() {
        s.insert(0, '_');
    }
    s
}

/// The directory names of `tasks`: [`task_dir_name`] of each, made unique by appending
/// `-<task index>` (then more `-<task index>`) where two tasks would share one (`a/b` and
/// `a\\b` both map to `a_b`).
pub fn task_dir_names(tasks: &[String]) -> Vec<String> {
    let mut used = std::collections::BTreeSet::new();
    let base: Vec<String> = tasks.iter().map(|t| task_dir_name(t)).collect();
    base.iter()
        .enumerate()
        .map(|(i, n)| {
            let shared = base.iter().filter(|m| *m == n).count() > 1;
            let mut name = if shared {
                format!("{n}-{i}")
            } else {
                n.clone()
            };
            while !used.insert(name.clone()) {
                name = format!("{name}-{i}");
            }
            name
        })
        .collect()
}

impl TensorBoard {
    /// Opens new event files under `dir` (`output_dir/tb`) for `tasks`, each starting a
    /// session at `start_step` (see [`EventWriter::create`]).
    ///
    /// # Errors
    /// A directory or file cannot be created.
    pub fn create(dir: &Path, tasks: &[String], start_step: u64) -> Result<Self> {
        let run = EventWriter::create(&dir.join("run"), start_step)?;
        let tasks = tasks
            .iter()
            .zip(task_dir_names(tasks))
            .map(|(t, d)| {
                let w = EventWriter::create(&dir.join("tasks").join(d), start_step)?;
                Ok((t.clone(), w))
            })
            .collect::<Result<_>>()?;
        Ok(Self { run, tasks })
    }

    /// Writes one step's values and flushes.
    ///
    /// # Errors
    /// A write failure.
    pub fn step(&mut self, r: &StepRecord) -> Result<()> {
        let run: Vec<(String, f64)> = r
            .scalar_fields()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        self.run.scalars(r.step, &run)?;
        self.run.flush()?;
        for (task, w) in &mut self.tasks {
            let values: Vec<(String, f64)> = r
                .per_task_fields()
                .into_iter()
                .filter_map(|(k, m)| Some((k.to_string(), m?.get(task.as_str()).copied()??)))
                .collect();
            w.scalars(r.step, &values)?;
            w.flush()?;
        }
        Ok(())
    }
}

/// Every sink of rank 0.
pub struct MetricSinks {
    /// `metrics.jsonl` (its offset goes into checkpoints).
    pub jsonl: MetricsWriter,
    /// TensorBoard, when on.
    pub tensorboard: Option<TensorBoard>,
}

impl MetricSinks {
    /// Writes the header (a fresh run) to `metrics.jsonl`.
    ///
    /// # Errors
    /// A write failure.
    pub fn header(&mut self, h: &Header) -> Result<()> {
        self.jsonl.write(h)
    }

    /// Writes one step to every sink.
    ///
    /// # Errors
    /// A write failure.
    pub fn step(&mut self, r: &StepRecord) -> Result<()> {
        self.jsonl.write(r)?;
        if let Some(tb) = &mut self.tensorboard {
            tb.step(r)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_names_become_safe_directory_names() {
        assert_eq!(task_dir_name("code_completion"), "code_completion");
        assert_eq!(task_dir_name("a/b c"), "a_b c");
        assert_eq!(task_dir_name("数学"), "数学");
        assert_eq!(task_dir_name(".."), "_..");
        assert_eq!(task_dir_name(""), "_");
        let tasks = ["a/b", "c", "a\\b", "a_b-0"].map(String::from);
        let names = task_dir_names(&tasks);
        assert_eq!(names, vec!["a_b-0", "c", "a_b-2", "a_b-0-3"]);
        let unique: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(unique.len(), tasks.len());
    }
}
