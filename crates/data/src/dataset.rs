//! Loading tasks: files → records → tokenized samples per split, with the bad-line policy,
//! the overlong policy, the seeded validation carve-out and per-task accounting. [`load`]
//! requires what training needs (train and validation samples in every task);
//! [`load_with`] takes other [`Needs`] (one split for evaluation, nothing for reports).
//!
//! ```no_run
//! use data::{config::{DataConfig, TaskSpec}, dataset::load, tokenize::Encoder};
//! let cfg = DataConfig::with_tasks(vec![TaskSpec { name: "math".into(), paths: vec!["data/tasks/math_gsm8k.jsonl.gz".into()] }]);
//! let enc = Encoder::from_file("data/tokenizers/smollm2/tokenizer.json".as_ref(), &cfg.template).unwrap();
//! let ds = load(&cfg, &enc).unwrap();
//! println!("{} train samples", ds.tasks[0].train.len());
//! ```

use crate::config::{DataConfig, OnBadLine, Overlong, TaskSpec};
use crate::format::{parse_line, Record, Split};
use crate::rng::{str_key, SplitMix64};
use crate::source::{read_lines, task_files};
use crate::tokenize::{Encoded, Encoder};
use crate::{DataError, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A tokenized sample of one task (see [`Encoded`]): `tokens` and 0/1 `loss` per token,
/// at most `max_seq_len + 1` tokens, with at least one loss token after the first.
pub type Sample = Encoded;

/// Records per split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SplitCounts {
    /// Train records.
    pub train: usize,
    /// Validation records.
    pub valid: usize,
    /// Test records.
    pub test: usize,
}

impl SplitCounts {
    /// The count of `split`.
    pub fn get(&self, split: Split) -> usize {
        match split {
            Split::Train => self.train,
            Split::Valid => self.valid,
            Split::Test => self.test,
        }
    }

    /// Sum over the splits.
    pub fn total(&self) -> usize {
        self.train + self.valid + self.test
    }

    fn add(&mut self, split: Split) {
        match split {
            Split::Train => self.train += 1,
            Split::Valid => self.valid += 1,
            Split::Test => self.test += 1,
        }
    }
}

/// Per-task accounting. `train`, `valid`, `test` and the token counts are after filtering;
/// `records` is before. Every line is either skipped (`skipped`) or a record; every record is
/// either dropped (`dropped`) or kept in a split:
/// `lines = skipped_total + records.total()` and
/// `records.total() = dropped + train + valid + test`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct TaskStats {
    /// Task name.
    pub name: String,
    /// Train samples kept (after the carve-out).
    pub train: usize,
    /// Validation samples kept (including carved ones).
    pub valid: usize,
    /// Test samples kept.
    pub test: usize,
    /// Validation samples carved out of train (0 when the data had a valid split).
    pub carved_valid: usize,
    /// Non-blank lines read.
    pub lines: usize,
    /// Records parsed per split (by their `split` field; absent means train), before any drop
    /// and before the validation carve-out.
    #[serde(default)]
    pub records: SplitCounts,
    /// Lines skipped under `on_bad_line = "skip"`, by reason (see [`DataError::skip_reason`]).
    pub skipped: BTreeMap<String, usize>,
    /// Samples truncated to `max_seq_len` (and kept).
    pub truncated: usize,
    /// Samples dropped for any reason: `dropped_overlong + dropped_no_loss_token`.
    pub dropped: usize,
    /// Samples longer than `max_seq_len` dropped under `overlong = "drop"`.
    #[serde(default)]
    pub dropped_overlong: usize,
    /// Samples dropped for having no loss token after their first token: under
    /// `overlong = "truncate"` a prompt that alone fills `max_seq_len`.
    #[serde(default)]
    pub dropped_no_loss_token: usize,
    /// Samples whose text was cut before tokenizing (see [`Encoder::encode_bounded`]); every
    /// one of them is longer than `max_seq_len + 1` tokens, so it is also counted as
    /// truncated or dropped.
    #[serde(default)]
    pub cut_before_tokenizing: usize,
    /// Tokens with loss 0 (prompt and markers) over all kept samples, after truncation.
    pub prompt_tokens: u64,
    /// Tokens with loss 1 (completions and EOS) over all kept samples, after truncation.
    pub completion_tokens: u64,
    /// Loss tokens of the train split.
    pub train_completion_tokens: u64,
    /// Longest sample in tokens, before truncation but after the cut before tokenizing: when
    /// `cut_before_tokenizing > 0` it may be a lower bound (still above `max_seq_len + 1`).
    pub longest_sample: usize,
}

impl TaskStats {
    /// Lines skipped for any reason.
    pub fn skipped_total(&self) -> usize {
        self.skipped.values().sum()
    }

    /// Samples kept in `split`.
    pub fn kept(&self, split: Split) -> usize {
        match split {
            Split::Train => self.train,
            Split::Valid => self.valid,
            Split::Test => self.test,
        }
    }
}

/// What a caller needs from every task; [`load_with`] fails when a task lacks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Training (what [`load`] checks): every task has at least one train and one
    /// validation sample, after the carve-out.
    Training,
    /// Evaluating one split: every task has at least one sample in it. The validation
    /// carve-out still applies, so `Split(Valid)` on a task without validation lines
    /// evaluates the samples carved out of train, exactly those training validates on.
    Split(Split),
    /// Nothing (reports such as `data stats`): a task reduced to zero samples in any split,
    /// or in all, is returned with zero counts instead of an error.
    Nothing,
}

/// One loaded task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskData {
    /// Task name.
    pub name: String,
    /// Training samples, in file order.
    pub train: Vec<Sample>,
    /// Validation samples, in file order.
    pub valid: Vec<Sample>,
    /// Test samples, in file order.
    pub test: Vec<Sample>,
    /// Accounting.
    pub stats: TaskStats,
}

impl TaskData {
    /// The samples of `split`.
    pub fn split(&self, split: Split) -> &[Sample] {
        match split {
            Split::Train => &self.train,
            Split::Valid => &self.valid,
            Split::Test => &self.test,
        }
    }
}

/// All tasks, in config order (the index is the task id).
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Tasks by id.
    pub tasks: Vec<TaskData>,
    /// `max_seq_len` the samples were cut to.
    pub max_seq_len: usize,
}

impl Dataset {
    /// Number of tasks.
    pub fn num_tasks(&self) -> usize {
        self.tasks.len()
    }

    /// Task names by id.
    pub fn task_names(&self) -> Vec<&str> {
        self.tasks.iter().map(|t| t.name.as_str()).collect()
    }
}

/// Loads every task of `cfg` for training (through the cache when `cfg.cache_dir` is set):
/// [`load_with`] and [`Needs::Training`].
///
/// # Errors
/// Bad input, IO and tokenizer errors (see [`DataError`]); [`DataError::EmptySplit`] when a
/// task has no train or no validation sample left.
pub fn load(cfg: &DataConfig, enc: &Encoder) -> Result<Dataset> {
    load_with(cfg, enc, Needs::Training)
}

/// Loads every task of `cfg` (through the cache when `cfg.cache_dir` is set) and checks that
/// each has what `needs` asks for ([`check_task`]). The loaded data does not depend on
/// `needs` (the cache stores it before the check), only whether it is an error.
///
/// # Errors
/// Bad input, IO and tokenizer errors (see [`DataError`]); [`DataError::EmptySplit`] when a
/// task lacks a split `needs` asks for.
pub fn load_with(cfg: &DataConfig, enc: &Encoder, needs: Needs) -> Result<Dataset> {
    cfg.validate()?;
    let tasks = cfg
        .tasks
        .iter()
        .map(|spec| {
            let task = match &cfg.cache_dir {
                Some(dir) => crate::cache::load_task_cached(dir, spec, cfg, enc)?,
                None => load_task(spec, cfg, enc)?,
            };
            check_task(&task, needs)?;
            Ok(task)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Dataset {
        tasks,
        max_seq_len: cfg.max_seq_len,
    })
}

/// Checks that `task` has what `needs` asks for.
///
/// # Errors
/// [`DataError::EmptySplit`] naming the task, the empty split and the counts that explain it.
pub fn check_task(task: &TaskData, needs: Needs) -> Result<()> {
    let st = &task.stats;
    let detail = || {
        format!(
            "{} train, {} valid, {} test samples kept of {} lines: {} records \
             ({} train, {} valid, {} test), {} dropped as overlong, {} dropped without a loss \
             token, {} lines skipped",
            st.train,
            st.valid,
            st.test,
            st.lines,
            st.records.total(),
            st.records.train,
            st.records.valid,
            st.records.test,
            st.dropped_overlong,
            st.dropped_no_loss_token,
            st.skipped_total()
        )
    };
    let required: &[Split] = match needs {
        Needs::Nothing => &[],
        Needs::Split(split) => &[split],
        Needs::Training => {
            if st.train + st.valid + st.test == 0 {
                return Err(DataError::EmptySplit {
                    task: task.name.clone(),
                    split: "train",
                    detail: format!("a task reduced to zero samples: {}", detail()),
                });
            }
            &[Split::Train, Split::Valid]
        }
    };
    match required.iter().find(|&&s| task.split(s).is_empty()) {
        Some(s) => Err(DataError::EmptySplit {
            task: task.name.clone(),
            split: s.name(),
            detail: detail(),
        }),
        None => Ok(()),
    }
}

/// Loads one task without the cache and without emptiness checks (see [`check_task`]).
pub fn load_task(spec: &TaskSpec, cfg: &DataConfig, enc: &Encoder) -> Result<TaskData> {
    let files = task_files(&spec.name, &spec.paths)?;
    load_task_files(spec, &files, cfg, enc)
}

pub(crate) fn load_task_files(
    spec: &TaskSpec,
    files: &[PathBuf],
    cfg: &DataConfig,
    enc: &Encoder,
) -> Result<TaskData> {
    let mut stats = TaskStats {
        name: spec.name.clone(),
        ..Default::default()
    };
    // Parse every line first (errors name file and line), then tokenize in parallel.
    let mut records = Vec::new();
    for path in files {
        stats.lines += read_lines(path, cfg.max_line_bytes, |line_no, text| {
            match (
                text.and_then(|t| parse_line(t, path, line_no)),
                cfg.on_bad_line,
            ) {
                (Ok(r), _) => records.push(r),
                (Err(e), OnBadLine::Skip) if e.skip_reason().is_some() => {
                    let reason = e.skip_reason().unwrap_or("other");
                    *stats.skipped.entry(reason.to_string()).or_default() += 1;
                }
                (Err(e), _) => return Err(e),
            }
            Ok(())
        })?;
    }
    let encoded = encode_parallel(enc, &records, cfg.max_seq_len);
    let mut by_split: [Vec<Sample>; 3] = Default::default();
    for (record, (mut sample, cut)) in records.iter().zip(encoded) {
        let split = record.split.unwrap_or(Split::Train);
        stats.records.add(split);
        stats.cut_before_tokenizing += cut as usize;
        stats.longest_sample = stats.longest_sample.max(sample.tokens.len());
        let limit = cfg.max_seq_len + 1;
        let overlong = sample.tokens.len() > limit;
        if overlong {
            if cfg.overlong == Overlong::Drop {
                stats.dropped_overlong += 1;
                continue;
            }
            sample.tokens.truncate(limit);
            sample.loss.truncate(limit);
        }
        // A sample must leave at least one target with loss (labels are tokens[1..]).
        if !sample.loss.iter().skip(1).any(|&l| l == 1) {
            stats.dropped_no_loss_token += 1;
            continue;
        }
        stats.truncated += overlong as usize;
        by_split[split.index()].push(sample);
    }
    stats.dropped = stats.dropped_overlong + stats.dropped_no_loss_token;
    let [mut train, mut valid, test] = by_split;
    if valid.is_empty() && train.len() >= 2 {
        let k = carve_count(train.len(), cfg.valid_fraction);
        let chosen = carve_indices(train.len(), k, cfg.seed, &spec.name);
        let mut keep = Vec::with_capacity(train.len() - k);
        for (i, s) in train.into_iter().enumerate() {
            if chosen[i] {
                valid.push(s);
            } else {
                keep.push(s);
            }
        }
        train = keep;
        stats.carved_valid = k;
    }
    for (i, set) in [&train, &valid, &test].into_iter().enumerate() {
        for s in set {
            let c: u64 = s.loss.iter().map(|&l| l as u64).sum();
            stats.completion_tokens += c;
            stats.prompt_tokens += s.tokens.len() as u64 - c;
            if i == 0 {
                stats.train_completion_tokens += c;
            }
        }
    }
    stats.train = train.len();
    stats.valid = valid.len();
    stats.test = test.len();
    Ok(TaskData {
        name: spec.name.clone(),
        train,
        valid,
        test,
        stats,
    })
}

/// Tokenizes `records` on all available cores, preserving order, each bounded by
/// `max_seq_len` ([`Encoder::encode_bounded`]).
fn encode_parallel(enc: &Encoder, records: &[Record], max_seq_len: usize) -> Vec<(Sample, bool)> {
    let encode = |r: &Record| enc.encode_bounded(&r.content, max_seq_len);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(records.len().div_ceil(64).max(1));
    if threads <= 1 {
        return records.iter().map(encode).collect();
    }
    let chunk = records.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = records
            .chunks(chunk)
            .map(|c| s.spawn(move || c.iter().map(encode).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// Number of train samples carved out as validation: `round(n · fraction)`, at least 1 and at
/// most `n - 1`.
pub fn carve_count(n: usize, fraction: f64) -> usize {
    ((n as f64 * fraction).round() as usize).clamp(1, n.saturating_sub(1).max(1))
}

/// Which of `n` train samples go to validation: a seeded choice of `k` indices (the first `k`
/// of a permutation keyed by `seed` and the task name), so it is stable across runs and ranks.
pub fn carve_indices(n: usize, k: usize, seed: u64, task: &str) -> Vec<bool> {
    let mut idx: Vec<usize> = (0..n).collect();
    SplitMix64::from_keys(seed, &[0xCA27E, str_key(task)]).shuffle(&mut idx);
    let mut chosen = vec![false; n];
    for &i in &idx[..k.min(n)] {
        chosen[i] = true;
    }
    chosen
}
