//! The held-out problems a run is judged on: the eval bundle's files of the configured tasks,
//! capped per task, with GSM8K prompts taken from the task files.

use ::data::config::TaskSpec;
use anyhow::{anyhow, Context};
use codeexec::Problem;
use std::collections::HashMap;
use std::path::Path;

/// The problems of `tasks` that have a bundle in `dir` and count towards `metrics`, at most
/// `limit` per task (evenly spaced), with their prompts.
///
/// # Errors
/// A malformed bundle, or a GSM8K id missing from the task files.
pub fn load(
    tasks: &[TaskSpec],
    dir: &Path,
    metrics: &[codeexec::Metric],
    limit: Option<usize>,
) -> anyhow::Result<Vec<Problem>> {
    let mut problems = problems_of(tasks, dir)?;
    problems.retain(|p| metrics.contains(&p.check.metric()));
    if let Some(limit) = limit {
        problems = limit_per_task(problems, limit);
    }
    fill_prompts(&mut problems, tasks)?;
    Ok(problems)
}

/// The task names that have a bundle file in `dir`.
pub fn bundle_tasks(dir: &Path) -> anyhow::Result<Vec<String>> {
    let entries = std::fs::read_dir(dir).with_context(|| {
        format!(
            "the eval bundle directory {} (--eval-data, [eval] data)",
            dir.display()
        )
    })?;
    let mut tasks: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix("_test.jsonl.gz")
                .or_else(|| name.strip_suffix("_test.jsonl"))
                .map(str::to_string)
        })
        .collect();
    tasks.sort();
    tasks.dedup();
    Ok(tasks)
}

/// The problems of every task that has a bundle file; the others are named in a warning.
pub fn problems_of(tasks: &[TaskSpec], dir: &Path) -> anyhow::Result<Vec<Problem>> {
    let mut out = Vec::new();
    for t in tasks {
        if codeexec::problems::bundle_path(dir, &t.name).is_none() {
            tracing::warn!(
                "task `{}`: no execution tests in {} (only loss-based eval applies)",
                t.name,
                dir.display()
            );
            continue;
        }
        out.extend(codeexec::load_task(dir, &t.name)?);
    }
    Ok(out)
}

/// At most `limit` problems per task, evenly spaced over the file (so every HumanEval-X
/// language keeps its share).
pub fn limit_per_task(problems: Vec<Problem>, limit: usize) -> Vec<Problem> {
    let mut by_task: Vec<(String, Vec<Problem>)> = Vec::new();
    for p in problems {
        match by_task.iter_mut().find(|(t, _)| *t == p.task) {
            Some((_, v)) => v.push(p),
            None => by_task.push((p.task.clone(), vec![p])),
        }
    }
    by_task
        .into_iter()
        .flat_map(|(_, v)| {
            let n = v.len();
            let keep: Vec<usize> = if limit >= n {
                (0..n).collect()
            } else {
                (0..limit).map(|k| k * n / limit).collect()
            };
            v.into_iter()
                .enumerate()
                .filter(move |(i, _)| keep.contains(i))
                .map(|(_, p)| p)
        })
        .collect()
}

/// GSM8K bundle records carry only the answer: their prompts come from the task's files
/// (the record with the same `id`).
pub fn fill_prompts(problems: &mut [Problem], tasks: &[TaskSpec]) -> anyhow::Result<()> {
    for spec in tasks {
        if !problems
            .iter()
            .any(|p| p.task == spec.name && p.prompt.is_empty())
        {
            continue;
        }
        let mut prompts: HashMap<String, String> = HashMap::new();
        for file in ::data::source::task_files(&spec.name, &spec.paths)? {
            let reader = ::data::source::open(&file)?;
            for line in std::io::BufRead::lines(reader) {
                let line = line.with_context(|| format!("reading {}", file.display()))?;
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue; // the data loader reports malformed lines
                };
                if let (Some(id), Some(prompt)) = (v["id"].as_str(), v["prompt"].as_str()) {
                    prompts.insert(id.to_string(), prompt.to_string());
                }
            }
        }
        for p in problems
            .iter_mut()
            .filter(|p| p.task == spec.name && p.prompt.is_empty())
        {
            p.prompt = prompts.get(&p.id).cloned().ok_or_else(|| {
                anyhow!(
                    "task `{}`: problem {} of the eval bundle has no record with that id (and a \
                     `prompt`) in the task's files",
                    spec.name,
                    p.id
                )
            })?;
        }
    }
    Ok(())
}
