//! Where rank 0's metrics go: `metrics.jsonl` always, TensorBoard event files under
//! `output_dir/tb/` when `metrics.tensorboard` is on (the default).
//!
//! TensorBoard layout: `tb/run/` holds the run's scalars (`loss`, `lr`, `grad_norm`,
//! `tokens_per_s`, `df`, `val_ratio_mean`, times, ...) and `tb/tasks/<task>/` each task's
//! values under the same tags for every task (`train_loss`, `val_ratio`, `weights`, `rcs`,
//! `acs`, `val_loss`, `probe_val_loss`); `<task>` is the name with unsafe characters replaced
//! ([`task_dir_names`]). TensorBoard draws one chart per tag with one line per
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

/// A directory name for a task: its name with every character other than ASCII letters,
/// digits, `-`, `_` and `.` replaced by `_` (a leading `.` too).
pub fn task_dir_name(task: &str) -> String {
    let mut s: String = task
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.starts_with('.') || s.is_empty() {
        s.insert(0, '_');
    }
    s
}

/// The directory names of `tasks`: [`task_dir_name`] of each, with `-<task index>` appended
/// to every name that two tasks would share (`a b` and `a/b` both map to `a_b`).
pub fn task_dir_names(tasks: &[String]) -> Vec<String> {
    let names: Vec<String> = tasks.iter().map(|t| task_dir_name(t)).collect();
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            if names.iter().filter(|m| *m == n).count() > 1 {
                format!("{n}-{i}")
            } else {
                n.clone()
            }
        })
        .collect()
}

impl TensorBoard {
    /// Opens new event files under `dir` (`output_dir/tb`) for `tasks`; `resume_step` as in
    /// [`EventWriter::create`].
    ///
    /// # Errors
    /// A directory or file cannot be created.
    pub fn create(dir: &Path, tasks: &[String], resume_step: Option<u64>) -> Result<Self> {
        let run = EventWriter::create(&dir.join("run"), resume_step)?;
        let tasks = tasks
            .iter()
            .map(|t| {
                let w =
                    EventWriter::create(&dir.join("tasks").join(task_dir_name(t)), resume_step)?;
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
        assert_eq!(task_dir_name("a/b c"), "a_b_c");
        assert_eq!(task_dir_name(".."), "_..");
        assert_eq!(task_dir_name(""), "_");
        let tasks = ["a b", "c", "a/b"].map(String::from);
        assert_eq!(task_dir_names(&tasks), vec!["a_b-0", "c", "a_b-2"]);
    }
}
